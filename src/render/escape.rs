//! Escaping alert data for its destination, and fitting text into Chat's limits.
//! Pure text functions: no templates, no config, nothing that can fail on input.
//!
//! Two destinations: Chat text markup, where `<users/all>` pings a room and `<url|label>`
//! can disguise a link, and card JSON, where a value sits inside a JSON string that Chat
//! reads as a small HTML subset.

/// What a cut message ends with, so readers know something is missing.
pub const TRUNCATION_MARKER: &str = "\n… truncated";

/// Escapes a value for Chat text: `<` and `>` become look-alike angle quotes, so
/// `<users/all>` and `<https://evil|bank>` show as text and do nothing; bidirectional
/// controls, which can make text read differently than it is, are dropped; Markdown and
/// Chat formatting (`*bold*`, `_italic_`, `~strike~`, backticks, `[text](url)` links) become
/// look-alikes too, since Chat apps may read text as Markdown. An `_` between two letters
/// or digits (`node_exporter`) cannot start or end emphasis and stays.
pub fn escape_text(value: &str) -> String {
    let chars: Vec<char> = value.chars().filter(|c| !is_bidi_control(*c)).collect();
    let mut out = String::with_capacity(value.len());
    let mut line_start = 0;
    for (i, &c) in chars.iter().enumerate() {
        let before = i.checked_sub(1).and_then(|j| chars.get(j)).copied();
        let after = chars.get(i + 1).copied();
        out.push(match c {
            '<' => '‹',
            '>' => '›',
            '\n' => {
                line_start = i + 1;
                '\n'
            }
            c if is_markdown_syntax(before, c, after) => markdown_look_alike(c),
            // A line that starts `[ref]: url` defines a link for `[ref]` elsewhere.
            '[' if starts_link_definition(&chars[line_start..i], &chars[i + 1..]) => '［',
            other => other,
        });
    }
    out
}

/// Whether `c`, between `before` and `after`, can take part in Markdown or Chat formatting.
fn is_markdown_syntax(before: Option<char>, c: char, after: Option<char>) -> bool {
    let word = |c: Option<char>| c.is_some_and(char::is_alphanumeric);
    match c {
        '*' | '~' | '`' => true,
        '_' => !(word(before) && word(after)),
        // `[text](url)`, `[text][ref]` and `![alt](src)` need `]` right before `(` or `[`.
        ']' => matches!(after, Some('(' | '[')),
        _ => false,
    }
}

fn markdown_look_alike(c: char) -> char {
    match c {
        '*' => '∗',
        '~' => '∼',
        '`' => 'ˋ',
        '_' => '＿',
        ']' => '］',
        other => other,
    }
}

/// `[` opening a line (`indent` before it: at most three spaces) of the shape
/// `[label]: ...`; `rest` is the text after the `[`.
fn starts_link_definition(indent: &[char], rest: &[char]) -> bool {
    if indent.len() > 3 || indent.iter().any(|&c| c != ' ') {
        return false;
    }
    rest.iter()
        .position(|&c| c == ']' || c == '\n')
        .is_some_and(|close| rest[close] == ']' && rest.get(close + 1) == Some(&':'))
}

/// Escapes a value for a card template, where it lands inside a JSON string that Chat
/// reads as HTML: JSON string escaping (quotes, backslashes, control characters) plus
/// `<` and `>` as entities, so no value can open a tag, close the string or mention
/// anyone. Bidirectional controls are dropped as in text.
pub fn escape_card(value: &str) -> String {
    let mut out = String::with_capacity(value.len() + 8);
    for c in value.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            c if is_bidi_control(c) => {}
            c if (c as u32) < 0x20 || c == '\u{7f}' => {
                out.push_str(&format!("\\u{:04x}", c as u32));
            }
            // JSON allows these raw, but some JavaScript-based readers do not.
            '\u{2028}' => out.push_str("\\u2028"),
            '\u{2029}' => out.push_str("\\u2029"),
            c => out.push(c),
        }
    }
    out
}

pub(crate) fn is_bidi_control(c: char) -> bool {
    matches!(c, '\u{202A}'..='\u{202E}' | '\u{2066}'..='\u{2069}' | '\u{200E}' | '\u{200F}' | '\u{061C}')
}

/// Turns any `<users/...>` a template wrote itself into inert text: mentions come only
/// from config and are added after rendering.
pub fn neutralise_mentions(text: &str) -> String {
    const NEEDLE: &str = "<users/";
    let lower = text.to_ascii_lowercase();
    if !lower.contains(NEEDLE) {
        return text.to_owned();
    }
    let mut out = String::with_capacity(text.len());
    let mut last = 0;
    for (pos, _) in lower.match_indices(NEEDLE) {
        out.push_str(&text[last..pos]);
        out.push('‹');
        last = pos + 1;
    }
    out.push_str(&text[last..]);
    out
}

/// Makes a URL safe inside Chat's `<url|label>` syntax and inside a JSON string, or None
/// if it is not http(s). What would end the link or the string, white space of every
/// kind, and whatever `escape_text` would turn into a look-alike is percent-encoded (an
/// encoded `_` or `~` is the same URL), so a link survives text escaping unchanged.
pub fn safe_link(url: &str) -> Option<String> {
    let url = url.trim();
    let lower = url.to_ascii_lowercase();
    if !(lower.starts_with("https://") || lower.starts_with("http://")) || url.len() > 2048 {
        return None;
    }
    let chars: Vec<char> = url
        .chars()
        .filter(|&c| !(c.is_control() || is_bidi_control(c)))
        .collect();
    let mut out = String::with_capacity(url.len());
    for (i, &c) in chars.iter().enumerate() {
        let before = i.checked_sub(1).and_then(|j| chars.get(j)).copied();
        let after = chars.get(i + 1).copied();
        let encode = matches!(c, '<' | '>' | '|' | '"' | '`' | '\\')
            || c.is_whitespace()
            || is_markdown_syntax(before, c, after);
        if encode {
            let mut utf8 = [0u8; 4];
            for byte in c.encode_utf8(&mut utf8).bytes() {
                out.push_str(&format!("%{byte:02X}"));
            }
        } else {
            out.push(c);
        }
    }
    Some(out)
}

/// Characters kept as they are in a URL query value; everything else is percent-encoded.
const QUERY_VALUE: &percent_encoding::AsciiSet = &percent_encoding::NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'_')
    .remove(b'.')
    .remove(b'~');

pub fn url_encode(value: &str) -> String {
    percent_encoding::utf8_percent_encode(value, QUERY_VALUE).to_string()
}

/// A label name as Alertmanager's matchers write it: bare when it is a classic name
/// (`[a-zA-Z_][a-zA-Z0-9_]*`), otherwise (Prometheus 3 allows any UTF-8) in double quotes
/// with escapes, as `{"service.name"="api"}`.
fn matcher_name(name: &str) -> String {
    let mut chars = name.chars();
    let plain = chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_');
    if plain {
        name.to_owned()
    } else {
        matcher_quoted(name)
    }
}

/// A double-quoted matcher string: `\`, `"` and control characters escaped the way Go's
/// `strconv.Unquote` (which Alertmanager's parser uses) reads them.
fn matcher_quoted(text: &str) -> String {
    let mut out = String::with_capacity(text.len() + 2);
    out.push('"');
    for c in text.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if c.is_control() => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// Alertmanager's new-silence form, prefilled with the alert's labels as matchers. A
/// label without a name cannot be matched and is left out.
pub fn silence_link(external_url: &str, labels: &crate::payload::LabelSet) -> Option<String> {
    if external_url.trim().is_empty() || labels.is_empty() {
        return None;
    }
    let matchers: Vec<String> = labels
        .iter()
        .filter(|(name, _)| !name.is_empty())
        .map(|(name, value)| format!("{}={}", matcher_name(name), matcher_quoted(value)))
        .collect();
    let filter = format!("{{{}}}", matchers.join(","));
    safe_link(&format!(
        "{}/#/silences/new?filter={}",
        external_url.trim_end_matches('/'),
        url_encode(&filter)
    ))
}

/// Alertmanager's alert list, filtered to a receiver.
pub fn alerts_link(external_url: &str, receiver: &str) -> Option<String> {
    if external_url.trim().is_empty() {
        return None;
    }
    let mut url = format!("{}/#/alerts", external_url.trim().trim_end_matches('/'));
    if !receiver.is_empty() {
        url.push_str("?receiver=");
        url.push_str(&url_encode(receiver));
    }
    safe_link(&url)
}

/// Length as Chat counts it, or more: UTF-16 code units.
pub fn utf16_len(text: &str) -> usize {
    text.chars().map(char::len_utf16).sum()
}

/// Cuts `text` to at most `limit` UTF-16 units, marker included, on a character boundary.
pub fn fit_text(text: &str, limit: usize) -> (String, bool) {
    if utf16_len(text) <= limit {
        return (text.to_owned(), false);
    }
    let budget = limit.saturating_sub(utf16_len(TRUNCATION_MARKER));
    let mut used = 0;
    let mut end = 0;
    for (i, c) in text.char_indices() {
        if used + c.len_utf16() > budget {
            break;
        }
        used += c.len_utf16();
        end = i + c.len_utf8();
    }
    let mut cut = text[..end].trim_end().to_owned();
    // Never leave half a `<url|label>` link or half an `&lt;` entity behind: Chat would
    // show broken markup.
    if let Some(open) = cut.rfind('<')
        && !cut[open..].contains('>')
    {
        cut.truncate(open);
    }
    if let Some(amp) = cut.rfind('&')
        && cut.len() - amp <= 8
        && !cut[amp..].contains(';')
        && cut[amp + 1..]
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '#')
    {
        cut.truncate(amp);
    }
    cut.push_str(TRUNCATION_MARKER);
    (cut, true)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_escaping_defuses_mentions_links_and_bidi() {
        assert_eq!(
            escape_text("<users/all> <https://evil|bank> \u{202E}x"),
            "‹users/all› ‹https://evil|bank› x"
        );
    }

    #[test]
    fn card_escaping_keeps_json_valid_and_html_inert() {
        let hostile = "\"}]} <b>x</b> \\ \n\t\u{1}\u{202E} <users/all>";
        let escaped = escape_card(hostile);
        let parsed: serde_json::Value =
            serde_json::from_str(&format!("{{\"v\": \"{escaped}\"}}")).expect("valid JSON");
        let value = parsed["v"].as_str().expect("string");
        assert_eq!(
            value,
            "\"}]} &lt;b&gt;x&lt;/b&gt; \\ \n\t\u{1} &lt;users/all&gt;"
        );
        assert!(!value.contains('<'));
    }

    #[test]
    fn fit_text_does_not_leave_half_a_link_or_entity() {
        let text = format!("{}<https://example.com/very/long|Source>", "a".repeat(20));
        let (cut, truncated) = fit_text(&text, 40);
        assert!(truncated);
        assert_eq!(cut, format!("{}{TRUNCATION_MARKER}", "a".repeat(20)));
        let text = format!("{}&lt;b&gt;{}", "a".repeat(20), "c".repeat(20));
        let (cut, _) = fit_text(&text, 23 + utf16_len(TRUNCATION_MARKER));
        assert_eq!(cut, format!("{}{TRUNCATION_MARKER}", "a".repeat(20)));
    }

    #[test]
    fn url_encoding_and_links() {
        assert_eq!(url_encode("a b&c=d/é"), "a%20b%26c%3Dd%2F%C3%A9");
        assert_eq!(safe_link("javascript:alert(1)"), None);
        assert_eq!(
            safe_link("https://x.example/a\\b|c").as_deref(),
            Some("https://x.example/a%5Cb%7Cc")
        );
        assert_eq!(
            alerts_link("http://am:9093/", "team a").as_deref(),
            Some("http://am:9093/#/alerts?receiver=team%20a")
        );
        assert_eq!(alerts_link(" ", "x"), None);
    }

    #[test]
    fn silence_link_escapes_matcher_values() {
        let mut labels = crate::payload::LabelSet::new();
        labels.insert("alertname".into(), "A \"quoted\" | pipe".into());
        let link = silence_link("http://am:9093/", &labels).expect("link");
        assert_eq!(
            link,
            "http://am:9093/#/silences/new?filter=%7Balertname%3D%22A%20%5C%22quoted%5C%22%20%7C%20pipe%22%7D"
        );
        assert_eq!(silence_link("", &labels), None);
    }

    #[test]
    fn markdown_from_alert_data_is_inert_in_text() {
        let hostile = "*bold* _it_ ~strike~ `code` ```block``` [click](https://evil.example) ![i](https://evil.example/i.png) [a][ref]\n[ref]: https://evil.example";
        let escaped = escape_text(hostile);
        for live in ["*", "~", "`", "](", "][", "\n[ref]"] {
            assert!(!escaped.contains(live), "{live:?} survived: {escaped}");
        }
        assert!(
            !escaped.contains(" _") && !escaped.contains("_ "),
            "{escaped}"
        );
        // The text still reads the same, and words joined by `_` stay as they are.
        assert_eq!(
            escape_text("*x* _y_ ~z~ `c` [t](u)"),
            "∗x∗ ＿y＿ ∼z∼ ˋcˋ [t］(u)"
        );
        assert_eq!(
            escape_text("node_exporter_up rate(x[5m])"),
            "node_exporter_up rate(x[5m])"
        );
    }

    #[test]
    fn links_keep_working_through_text_escaping() {
        for url in [
            "https://grafana.example/d/a_b/_dash?var-x=~re*&from=now-1h",
            "https://runbooks.example/~team/`x`/[a](b)[c]",
            "http://[::1]:9093/#/alerts?_x=1",
        ] {
            let link = safe_link(url).expect("http(s)");
            assert_eq!(escape_text(&link), link, "text escaping would break {link}");
            let decoded = percent_encoding::percent_decode_str(&link)
                .decode_utf8()
                .expect("utf-8");
            assert_eq!(decoded, url, "only encoded, never changed");
        }
        let link = alerts_link("http://am.example/~ops_", "team_a~b").expect("link");
        assert_eq!(escape_text(&link), link);
    }

    #[test]
    fn links_cannot_change_scheme_or_leave_their_markup() {
        for hostile in [
            "javascript:alert(1)",
            " JavaScript:alert(1)",
            "java\tscript:alert(1)",
            "\u{0}https://x.example",
            "data:text/html,<script>",
            "//evil.example/x",
            "https:evil.example",
            "vbscript:x",
            "file:///etc/passwd",
        ] {
            assert_eq!(safe_link(hostile), None, "{hostile:?}");
        }
        let link = safe_link("https://x.example/a|<users/all>\u{a0}\u{3000}\u{202e}\"b\n\\")
            .expect("link");
        for breaking in [
            '|', '<', '>', ' ', '"', '\n', '\\', '\u{a0}', '\u{3000}', '\u{202e}',
        ] {
            assert!(!link.contains(breaking), "{breaking:?} in {link}");
        }
        assert!(silence_link("javascript:alert(1)//", &labels(&[("a", "b")])).is_none());
        assert!(alerts_link("javascript:alert(1)//", "r").is_none());
    }

    fn labels(pairs: &[(&str, &str)]) -> crate::payload::LabelSet {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    /// The silence filter of `link`, percent-decoded.
    fn filter_of(link: &str) -> String {
        let encoded = link.split_once("?filter=").expect("filter").1;
        percent_encoding::percent_decode_str(encoded)
            .decode_utf8()
            .expect("utf-8")
            .into_owned()
    }

    #[test]
    fn silence_filter_quotes_label_names_that_are_not_plain() {
        let link = silence_link(
            "http://am:9093",
            &labels(&[
                ("alertname", "Disk"),
                ("service.name", "api"),
                ("évé", "x"),
                ("a\"}, evil=\"1", "v"),
                ("new\nline", "v"),
                ("_ok9", "y"),
                ("9lives", "z"),
                ("", "empty name"),
            ]),
        )
        .expect("link");
        assert_eq!(
            filter_of(&link),
            r#"{"9lives"="z",_ok9="y","a\"}, evil=\"1"="v",alertname="Disk","new\nline"="v","service.name"="api","évé"="x"}"#
        );
        assert!(
            !link.contains('"') && !link.contains('{') && !link.contains(' '),
            "{link}"
        );
    }
}
