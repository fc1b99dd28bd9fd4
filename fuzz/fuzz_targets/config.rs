//! Config files: any text is a config or a clear error, never a panic; durations too.

#![no_main]

use std::path::Path;

use kabar::config::{Config, format_duration, parse_duration};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    // `${VAR}` look-ups answer for a few names, so expansion paths run too.
    let env = |name: &str| match name {
        "SET" => Some("https://chat.googleapis.com/v1/spaces/S/messages?key=k&token=t".to_owned()),
        "EMPTY" => Some(String::new()),
        _ => None,
    };
    if let Err(error) = Config::parse(text, Path::new("/nonexistent"), &env) {
        let _ = error.to_string();
    }
    if let Ok(duration) = parse_duration(text) {
        assert_eq!(parse_duration(&format_duration(duration)), Ok(duration));
    }
});
