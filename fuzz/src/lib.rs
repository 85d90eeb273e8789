//! The properties the fuzz targets check, one function per target. Each panics when the
//! property fails, which libFuzzer reports as a crash; `tests/fuzz_regressions.rs` includes
//! this file to replay the committed corpus and every past finding under `cargo test`.
//!
//! Nothing here depends on libFuzzer, so the same checks run on stable.
use std::{path::Path, time::SystemTime};

use ksense::{clock::Clock, config::Config, decode::decode as decode_record, sinks::jsonl::write_record};

/// The file name the config target passes to the parser; every error must start with it.
pub const CONFIG_PATH: &str = "fuzz.toml";

/// `decode`: any bytes from the ring buffer either are rejected with an error or decode to an
/// event whose JSON line (what the jsonl sink writes before its newline) is exactly one line
/// of valid JSON, an object naming the event's kind.
pub fn decode(bytes: &[u8]) {
    let Ok(event) = decode_record(bytes, 1, &Clock::sample(), SystemTime::now()) else { return };
    let record = event.to_record();
    let mut line = Vec::new();
    write_record(&mut line, &record).expect("writing JSON into a Vec cannot fail");
    assert!(
        !line.iter().any(|&b| b == b'\n' || b == b'\r'),
        "the JSON line of a {} event has a line break: {}",
        record.event_name,
        String::from_utf8_lossy(&line)
    );
    let value: serde_json::Value = serde_json::from_slice(&line).unwrap_or_else(|e| {
        panic!("the JSON line of a {} event is not valid JSON ({e}): {}", record.event_name, String::from_utf8_lossy(&line))
    });
    assert_eq!(
        value.get("event.name").and_then(|v| v.as_str()),
        Some(event.kind().name()),
        "the JSON line does not name its event kind: {value}"
    );
}

/// `config`: any UTF-8 text is accepted or rejected with an error that names the file, and
/// whose line:column (when it has one) is inside the text.
pub fn config(bytes: &[u8]) {
    let text = match std::str::from_utf8(bytes) {
        Ok(text) => text,
        // The valid prefix: libFuzzer mutates bytes, and TOML is text.
        Err(e) => std::str::from_utf8(&bytes[..e.valid_up_to()]).expect("a valid prefix"),
    };
    let Err(error) = Config::parse(text, Path::new(CONFIG_PATH)) else { return };
    let message = error.to_string();
    assert!(message.starts_with(CONFIG_PATH), "the error does not name the file: {message:?}");
    if let Some((line, column)) = error.position {
        let lines = text.split('\n').count();
        assert!(
            (1..=lines).contains(&line) && column >= 1,
            "the error points at {line}:{column}, outside the {lines}-line text: {message:?}"
        );
    }
}
