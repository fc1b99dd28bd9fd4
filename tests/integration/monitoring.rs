//! kabar's alerting rules and Grafana dashboard (monitoring/, copied into helm/kabar/files/)
//! against the metrics kabar really exports: every query must name only series that a
//! running kabar's /metrics exposes, every panel must have a query, the dashboard must
//! show every kabar_ family, and the rules must pass promtool's own unit tests.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use crate::common::config::{ConfigBuilder, Space};
use crate::common::kabar::{InProcess, TestConfig, metrics_text};
use serde_json::Value;

fn repo_file(relative: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(relative)
}

fn read(relative: &str) -> String {
    std::fs::read_to_string(repo_file(relative))
        .unwrap_or_else(|e| panic!("cannot read {relative}: {e}"))
}

/// Series names in an exposition: what a query may select. Histograms appear with their
/// _bucket, _sum and _count suffixes, as Prometheus stores them.
fn exposed_series(exposition: &str) -> BTreeSet<String> {
    exposition
        .lines()
        .filter(|line| !line.starts_with('#') && !line.trim().is_empty())
        .filter_map(|line| line.split(['{', ' ']).next())
        .map(str::to_owned)
        .collect()
}

/// Metric family names from `# TYPE` lines, with their type.
fn families(exposition: &str) -> Vec<(String, String)> {
    exposition
        .lines()
        .filter_map(|line| line.strip_prefix("# TYPE "))
        .filter_map(|rest| {
            let mut parts = rest.split_whitespace();
            Some((parts.next()?.to_owned(), parts.next()?.to_owned()))
        })
        .collect()
}

const KEYWORDS_WITH_LABEL_LIST: [&str; 6] = [
    "by",
    "without",
    "on",
    "ignoring",
    "group_left",
    "group_right",
];
const OPERATOR_KEYWORDS: [&str; 5] = ["and", "or", "unless", "bool", "offset"];
/// Aggregations may put `by (...)` between their name and their parenthesis.
const AGGREGATIONS: [&str; 14] = [
    "sum",
    "min",
    "max",
    "avg",
    "group",
    "stddev",
    "stdvar",
    "count",
    "count_values",
    "bottomk",
    "topk",
    "quantile",
    "limitk",
    "limit_ratio",
];

/// The metric names a PromQL expression selects: identifiers outside strings, label
/// matchers and range brackets that are not functions, keywords, label lists or Grafana
/// variables ($space, $__rate_interval).
fn metric_names(expr: &str) -> Vec<String> {
    let chars: Vec<char> = expr.chars().collect();
    let mut names = Vec::new();
    let mut i = 0;
    let skip_string = |mut i: usize, quote: char| {
        i += 1;
        while i < chars.len() && chars[i] != quote {
            if chars[i] == '\\' {
                i += 1;
            }
            i += 1;
        }
        i + 1
    };
    let skip_group = |mut i: usize, open: char, close: char| {
        let mut depth = 0;
        while i < chars.len() {
            match chars[i] {
                '"' | '\'' | '`' => {
                    i = skip_string(i, chars[i]);
                    continue;
                }
                c if c == open => depth += 1,
                c if c == close => {
                    depth -= 1;
                    if depth == 0 {
                        return i + 1;
                    }
                }
                _ => {}
            }
            i += 1;
        }
        i
    };
    while i < chars.len() {
        let c = chars[i];
        match c {
            '"' | '\'' | '`' => i = skip_string(i, c),
            '{' => i = skip_group(i, '{', '}'),
            '[' => i = skip_group(i, '[', ']'),
            '$' => {
                i += 1;
                while i < chars.len() && (chars[i].is_ascii_alphanumeric() || chars[i] == '_') {
                    i += 1;
                }
            }
            c if c.is_ascii_digit() || c == '.' => {
                // Numbers, including 1e3 and durations such as 5m after `offset`.
                while i < chars.len() && (chars[i].is_ascii_alphanumeric() || chars[i] == '.') {
                    i += 1;
                }
            }
            c if c.is_ascii_alphabetic() || c == '_' || c == ':' => {
                let start = i;
                while i < chars.len()
                    && (chars[i].is_ascii_alphanumeric() || chars[i] == '_' || chars[i] == ':')
                {
                    i += 1;
                }
                let word: String = chars[start..i].iter().collect();
                let mut next = i;
                while next < chars.len() && chars[next].is_whitespace() {
                    next += 1;
                }
                let followed_by_paren = chars.get(next) == Some(&'(');
                if KEYWORDS_WITH_LABEL_LIST.contains(&word.as_str()) {
                    if followed_by_paren {
                        i = skip_group(next, '(', ')');
                    }
                } else if OPERATOR_KEYWORDS.contains(&word.as_str())
                    || AGGREGATIONS.contains(&word.as_str())
                    || followed_by_paren
                {
                    // An operator, or a function or aggregation name.
                } else {
                    names.push(word);
                }
            }
            _ => i += 1,
        }
    }
    names
}

/// Problems with one query: names not exposed (unless `allowed_extra`), or no metric at all.
fn query_problems(
    what: &str,
    expr: &str,
    exposed: &BTreeSet<String>,
    allowed_extra: &[&str],
) -> Vec<String> {
    let names = metric_names(expr);
    let mut problems: Vec<String> = names
        .iter()
        .filter(|name| !exposed.contains(*name) && !allowed_extra.contains(&name.as_str()))
        .map(|name| format!("{what}: {name} is not exported by kabar (query: {expr})"))
        .collect();
    if names.is_empty() {
        problems.push(format!("{what}: the query names no metric: {expr}"));
    }
    problems
}

/// Every panel of a dashboard, rows' nested panels included.
fn panels(dashboard: &Value) -> Vec<&Value> {
    let mut out = Vec::new();
    let mut stack: Vec<&Value> = dashboard["panels"]
        .as_array()
        .map(|a| a.iter().collect())
        .unwrap_or_default();
    while let Some(panel) = stack.pop() {
        if let Some(nested) = panel["panels"].as_array() {
            stack.extend(nested.iter());
        }
        out.push(panel);
    }
    out
}

/// What the dashboard gets wrong against an exposition: unknown metrics, panels without
/// queries, variables on unknown metrics, kabar families it never shows.
fn dashboard_problems(dashboard: &Value, exposition: &str) -> Vec<String> {
    let exposed = exposed_series(exposition);
    let mut problems = Vec::new();
    let mut shown = BTreeSet::new();
    for panel in panels(dashboard) {
        if panel["type"] == "row" {
            continue;
        }
        let title = panel["title"].as_str().unwrap_or("(untitled)");
        let targets = panel["targets"].as_array().cloned().unwrap_or_default();
        if targets.is_empty() {
            problems.push(format!("panel {title:?} has no query"));
        }
        for target in &targets {
            let expr = target["expr"].as_str().unwrap_or("");
            if expr.trim().is_empty() {
                problems.push(format!("panel {title:?} has an empty query"));
                continue;
            }
            // `up` is Prometheus's own series for every target: the "Up" stat shows it.
            problems.extend(query_problems(
                &format!("panel {title:?}"),
                expr,
                &exposed,
                &["up"],
            ));
            shown.extend(metric_names(expr));
        }
    }
    let variables = dashboard["templating"]["list"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    for variable in variables.iter().filter(|v| v["type"] == "query") {
        let query = variable["query"]["query"]
            .as_str()
            .or_else(|| variable["query"].as_str())
            .unwrap_or("");
        let inner = query
            .strip_prefix("label_values(")
            .and_then(|rest| rest.rsplit_once(','))
            .map(|(selector, _label)| selector)
            .unwrap_or("");
        problems.extend(query_problems(
            &format!("variable {}", variable["name"]),
            inner,
            &exposed,
            &[],
        ));
    }
    let annotations = dashboard["annotations"]["list"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    for annotation in annotations.iter().filter(|a| a["builtIn"] != 1) {
        let expr = annotation["expr"].as_str().unwrap_or("");
        problems.extend(query_problems(
            &format!("annotation {}", annotation["name"]),
            expr,
            &exposed,
            &[],
        ));
    }
    for (family, kind) in families(exposition) {
        if !family.starts_with("kabar_") {
            continue;
        }
        let shown_as = if kind == "histogram" {
            format!("{family}_bucket")
        } else {
            family.clone()
        };
        if !shown.contains(&shown_as) {
            problems.push(format!("the dashboard never shows {shown_as}"));
        }
    }
    problems
}

/// Expressions of every rule in a Prometheus rules file.
fn rule_exprs(rules_yaml: &str) -> Vec<(String, String)> {
    let rules: serde_yaml_ng::Value =
        serde_yaml_ng::from_str(rules_yaml).expect("the rules file is YAML");
    let mut out = Vec::new();
    for group in rules["groups"].as_sequence().expect("groups") {
        for rule in group["rules"].as_sequence().expect("rules") {
            let name = rule["alert"]
                .as_str()
                .or_else(|| rule["record"].as_str())
                .unwrap_or("?")
                .to_owned();
            let expr = rule["expr"].as_str().expect("every rule has an expr");
            out.push((name, expr.to_owned()));
        }
    }
    out
}

async fn live_exposition() -> String {
    // Two spaces so every per-space series exists, as it does from start-up, and an app
    // space with events and Silence buttons, whose series exist from start-up too.
    let kabar = InProcess::start(TestConfig::build(
        ConfigBuilder::new()
            .chat_app_dry_run()
            .chat_app_option("project_number", serde_json::json!("123456789012"))
            .chat_app_option(
                "alertmanager",
                serde_json::json!({"url": "http://127.0.0.1:9093"}),
            )
            .space("ops", Space::dry_run())
            .space("dev", Space::dry_run())
            .space("oncall", Space::app("spaces/AAAAmonitoring")),
    ))
    .await;
    let text = metrics_text(&kabar.url("")).await;
    kabar.stop().await;
    text
}

#[test]
fn metric_names_are_found_in_promql() {
    assert_eq!(
        metric_names(
            r#"histogram_quantile(0.99, sum by (le, space) (rate(kabar_x_bucket{space=~"$space", a="b{c}"}[$__rate_interval])))"#
        ),
        vec!["kabar_x_bucket"]
    );
    assert_eq!(
        metric_names(
            "kabar_a{job=\"kabar\"} > 0 and increase(kabar_b[10m]) == 0 or on (space) group_left (x) up offset 5m"
        ),
        vec!["kabar_a", "kabar_b", "up"]
    );
    assert_eq!(
        metric_names("time() - max(kabar_ts{instance=~\"$instance\"})"),
        vec!["kabar_ts"]
    );
    assert!(metric_names("sum(rate(x[5m])) by (le)").contains(&"x".to_owned()));
    assert!(metric_names("vector(1)").is_empty());
}

#[tokio::test]
async fn dashboard_queries_name_only_metrics_kabar_exports() {
    let exposition = live_exposition().await;
    let dashboard: Value = serde_json::from_str(&read("monitoring/kabar-dashboard.json"))
        .expect("the dashboard is JSON");
    let problems = dashboard_problems(&dashboard, &exposition);
    assert!(
        problems.is_empty(),
        "dashboard problems:\n  {}\n\nexposition:\n{exposition}",
        problems.join("\n  ")
    );
    assert!(
        panels(&dashboard).len() > 10,
        "the dashboard lost its panels"
    );
}

/// The checker itself: a dashboard with a misspelt metric, a foreign metric and an empty
/// panel must be refused, so the test above cannot pass vacuously.
#[tokio::test]
async fn dashboard_check_refuses_unknown_metrics_and_empty_panels() {
    let exposition = live_exposition().await;
    let bad = serde_json::json!({
        "panels": [
            {"type": "timeseries", "title": "typo", "targets": [{"expr": "rate(kabar_messages_sent[5m])"}]},
            {"type": "timeseries", "title": "bucket of a gauge", "targets": [{"expr": "kabar_outbox_messages_bucket"}]},
            {"type": "timeseries", "title": "foreign", "targets": [{"expr": "process_made_up_total + node_load1"}]},
            {"type": "row", "title": "row", "panels": [{"type": "stat", "title": "empty", "targets": []}]},
        ],
        "templating": {"list": [{"type": "query", "name": "space", "query": {"query": "label_values(kabar_nope, space)"}}]}
    });
    let problems = dashboard_problems(&bad, &exposition).join("\n");
    for expected in [
        "kabar_messages_sent is not exported",
        "kabar_outbox_messages_bucket is not exported",
        "process_made_up_total is not exported",
        "node_load1 is not exported",
        "panel \"empty\" has no query",
        "kabar_nope is not exported",
        "never shows kabar_delivery_latency_seconds_bucket",
    ] {
        assert!(
            problems.contains(expected),
            "missing {expected:?} in:\n{problems}"
        );
    }
}

#[tokio::test]
async fn alert_rules_name_only_metrics_kabar_exports() {
    let exposition = live_exposition().await;
    let exposed = exposed_series(&exposition);
    let rules = rule_exprs(&read("monitoring/kabar.rules.yml"));
    assert!(rules.len() >= 8, "rules went missing: {rules:?}");
    // `up` is not kabar's: Prometheus records it for every scrape target.
    let problems: Vec<String> = rules
        .iter()
        .flat_map(|(name, expr)| query_problems(&format!("rule {name}"), expr, &exposed, &["up"]))
        .collect();
    assert!(
        problems.is_empty(),
        "rule problems:\n  {}",
        problems.join("\n  ")
    );
}

/// The chart cannot read files outside its folder, so it carries copies; they must not
/// drift from the canonical files under monitoring/.
#[test]
fn chart_carries_identical_copies_of_rules_and_dashboard() {
    for file in ["kabar.rules.yml", "kabar-dashboard.json"] {
        assert!(
            read(&format!("monitoring/{file}")) == read(&format!("helm/kabar/files/{file}")),
            "helm/kabar/files/{file} differs from monitoring/{file}: copy it over \
             (cp monitoring/{file} helm/kabar/files/)"
        );
    }
}

fn run_promtool(promtool: &Path, args: &[&str]) {
    let output = std::process::Command::new(promtool)
        .args(args)
        .current_dir(repo_file("monitoring"))
        .output()
        .expect("run promtool");
    assert!(
        output.status.success(),
        "promtool {} failed:\n{}{}",
        args.join(" "),
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

/// promtool validates the rules and runs their unit tests (kabar.rules.test.yml): every
/// alert fires on its failure and stays quiet in a healthy case. CI installs promtool and
/// sets KABAR_REQUIRE_E2E, so this cannot skip there.
#[test]
fn alert_rules_pass_promtool_checks_and_unit_tests() {
    let Some(promtool) = crate::common::tools::require_tool(&["promtool"], "prometheus") else {
        return;
    };
    run_promtool(&promtool, &["check", "rules", "kabar.rules.yml"]);
    run_promtool(&promtool, &["test", "rules", "kabar.rules.test.yml"]);
    let tests = read("monitoring/kabar.rules.test.yml");
    for (alert, _) in rule_exprs(&read("monitoring/kabar.rules.yml")) {
        let cases = tests.matches(&format!("alertname: {alert}\n")).count();
        assert!(
            cases >= 2,
            "{alert} needs a firing and a not-firing case in kabar.rules.test.yml, has {cases}"
        );
    }
}

/// Every query of the dashboard: panels' targets and annotations, with where they are.
fn dashboard_queries(dashboard: &Value) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for panel in panels(dashboard) {
        for target in panel["targets"].as_array().into_iter().flatten() {
            if let Some(expr) = target["expr"].as_str() {
                out.push((format!("panel {}", panel["title"]), expr.to_owned()));
            }
        }
    }
    for annotation in dashboard["annotations"]["list"]
        .as_array()
        .into_iter()
        .flatten()
    {
        if let Some(expr) = annotation["expr"].as_str() {
            out.push((
                format!("annotation {}", annotation["name"]),
                expr.to_owned(),
            ));
        }
    }
    out
}

fn dashboard() -> Value {
    serde_json::from_str(&read("monitoring/kabar-dashboard.json")).expect("the dashboard is JSON")
}

fn panel<'a>(dashboard: &'a Value, title: &str) -> &'a Value {
    panels(dashboard)
        .into_iter()
        .find(|p| p["title"] == title)
        .unwrap_or_else(|| panic!("the dashboard has no panel {title:?}"))
}

/// The threshold a panel draws: the value of its last non-base step.
fn panel_threshold(panel: &Value) -> Option<f64> {
    panel["fieldConfig"]["defaults"]["thresholds"]["steps"]
        .as_array()?
        .iter()
        .filter_map(|step| step["value"].as_f64())
        .next_back()
}

/// The number an alert's expression compares against (`... > 100`).
fn rule_threshold(rules_yaml: &str, alert: &str) -> f64 {
    let (_, expr) = rule_exprs(rules_yaml)
        .into_iter()
        .find(|(name, _)| name == alert)
        .unwrap_or_else(|| panic!("no rule {alert}"));
    let tail = expr
        .trim()
        .rsplit_once('>')
        .map(|(_, n)| n.trim())
        .unwrap_or("");
    tail.parse()
        .unwrap_or_else(|_| panic!("{alert}: no `> N` at the end of {expr}"))
}

/// An operator running several kabars (or one per cluster) narrows every panel by job and
/// cluster, and sees restarts and reloads on every graph.
#[test]
fn dashboard_filters_by_job_and_cluster_and_marks_restarts_and_reloads() {
    let dashboard = dashboard();
    let variables: Vec<&str> = dashboard["templating"]["list"]
        .as_array()
        .expect("variables")
        .iter()
        .filter_map(|v| v["name"].as_str())
        .collect();
    for wanted in ["datasource", "cluster", "job", "instance", "space"] {
        assert!(
            variables.contains(&wanted),
            "no ${wanted} variable: {variables:?}"
        );
    }
    for (place, expr) in dashboard_queries(&dashboard) {
        for matcher in [
            "job=~\"$job\"",
            "cluster=~\"$cluster\"",
            "instance=~\"$instance\"",
        ] {
            assert!(expr.contains(matcher), "{place} lacks {matcher}: {expr}");
        }
    }
    let annotated: Vec<String> = dashboard["annotations"]["list"]
        .as_array()
        .expect("annotations")
        .iter()
        .filter_map(|a| a["expr"].as_str())
        .flat_map(metric_names)
        .collect();
    for metric in [
        "process_start_time_seconds",
        "kabar_config_last_reload_success_timestamp_seconds",
    ] {
        assert!(
            annotated.iter().any(|m| m == metric),
            "no annotation on {metric}: {annotated:?}"
        );
    }
}

/// The first row answers "is kabar up, can it write, has it given up on anything", and the
/// lines the graphs draw are the rules' thresholds, so a panel turns red when an alert would.
#[test]
fn dashboard_stats_and_thresholds_match_the_alerting_rules() {
    let dashboard = dashboard();
    let rules = read("monitoring/kabar.rules.yml");
    let first_row: Vec<&Value> = panels(&dashboard)
        .into_iter()
        .filter(|p| p["type"] == "stat" && p["gridPos"]["y"] == 1)
        .collect();
    for metric in ["up", "kabar_store_writable", "kabar_dead_letters"] {
        assert!(
            first_row.iter().any(|p| p["targets"][0]["expr"]
                .as_str()
                .is_some_and(|e| metric_names(e).iter().any(|m| m == metric))),
            "the first stat row does not show {metric}"
        );
    }
    for (title, alert) in [
        ("Outbox depth", "KabarOutboxBacklog"),
        ("Messages waiting", "KabarOutboxBacklog"),
        ("Oldest waiting message", "KabarOutboxMessageTooOld"),
        (
            "Failing deliveries (429s excluded)",
            "KabarDeliveryFailuresRising",
        ),
    ] {
        assert_eq!(
            panel_threshold(panel(&dashboard, title)),
            Some(rule_threshold(&rules, alert)),
            "panel {title:?} draws another threshold than {alert}"
        );
    }
    assert_eq!(
        panel_threshold(panel(&dashboard, "Dead letters")),
        Some(1.0)
    );
    let ratio = panel(&dashboard, "Failing deliveries (429s excluded)")["targets"][0]["expr"]
        .as_str()
        .expect("expr")
        .to_owned();
    assert!(ratio.contains("reason!=\"rateLimited\""), "{ratio}");

    // Virtual memory is hundreds of MiB of reserved address space; on one axis with the
    // resident set it would flatten the line that matters.
    let memory = panel(&dashboard, "Memory");
    let virtual_ref = memory["targets"]
        .as_array()
        .expect("targets")
        .iter()
        .find(|t| {
            t["expr"]
                .as_str()
                .is_some_and(|e| e.contains("process_virtual_memory_bytes"))
        })
        .and_then(|t| t["refId"].as_str())
        .expect("the memory panel shows virtual memory");
    let on_right = memory["fieldConfig"]["overrides"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|o| o["matcher"]["options"] == virtual_ref)
        .flat_map(|o| o["properties"].as_array().cloned().unwrap_or_default())
        .any(|p| p["id"] == "custom.axisPlacement" && p["value"] == "right");
    assert!(on_right, "virtual memory is not on an axis of its own");
}

/// Every alert links to its own section of docs/alerts.md in the repository the chart
/// names, and that section exists.
#[test]
fn every_alert_has_a_runbook_section_in_docs_alerts() {
    let chart = read("helm/kabar/Chart.yaml");
    let home = chart
        .lines()
        .find_map(|l| l.strip_prefix("home: "))
        .expect("Chart.yaml names the project's home")
        .trim();
    let runbooks = read("docs/alerts.md");
    let headings: Vec<&str> = runbooks
        .lines()
        .filter_map(|l| l.strip_prefix("## "))
        .map(str::trim)
        .collect();
    let rules: serde_yaml_ng::Value =
        serde_yaml_ng::from_str(&read("monitoring/kabar.rules.yml")).expect("rules are YAML");
    let mut alerts = 0;
    for group in rules["groups"].as_sequence().expect("groups") {
        for rule in group["rules"].as_sequence().expect("rules") {
            let Some(alert) = rule["alert"].as_str() else {
                continue;
            };
            alerts += 1;
            let url = rule["annotations"]["runbook_url"]
                .as_str()
                .unwrap_or_else(|| panic!("{alert} has no runbook_url"));
            let expected = format!("{home}/blob/main/docs/alerts.md#{}", alert.to_lowercase());
            assert_eq!(url, expected, "{alert}'s runbook_url");
            assert!(
                headings.contains(&alert),
                "docs/alerts.md has no section \"## {alert}\" (has {headings:?})"
            );
        }
    }
    assert!(alerts >= 10, "alerts went missing");
}
