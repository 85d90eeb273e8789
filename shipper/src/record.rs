//! The one shape every sink receives: an OpenTelemetry-style log record
//! (`docs/EVENTS.md`, "The three renderings").
use std::time::SystemTime;

use crate::{schema, text};

/// Severity of a record, in increasing order (`info`, `warn` in a configuration).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    /// Routine activity.
    Info,
    /// Worth a look (a process killed by a signal, a W^X change).
    Warn,
}

impl Severity {
    /// OpenTelemetry `SeverityNumber` (INFO = 9, WARN = 13).
    pub const fn number(self) -> i32 {
        match self {
            Severity::Info => 9,
            Severity::Warn => 13,
        }
    }

    /// OpenTelemetry severity text.
    pub const fn text(self) -> &'static str {
        match self {
            Severity::Info => "INFO",
            Severity::Warn => "WARN",
        }
    }

    /// syslog/journald priority (INFO = 6, WARNING = 4).
    pub const fn syslog_priority(self) -> u8 {
        match self {
            Severity::Info => 6,
            Severity::Warn => 4,
        }
    }
}

/// A typed attribute value.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    /// An integer (pids, uids, codes, sizes).
    Int(i64),
    /// A flag.
    Bool(bool),
    /// Text. Bytes from a monitored process are rendered by [`crate::text::rendered`]
    /// ([`push_text`]).
    Str(String),
    /// A list of texts (argv).
    StrArray(Vec<String>),
}

/// One event, ready for any sink.
#[derive(Debug, Clone)]
pub struct LogRecord {
    /// The event name, e.g. `process.exit`.
    pub event_name: &'static str,
    /// Severity.
    pub severity: Severity,
    /// When the kernel saw it, as wall-clock time.
    pub time: SystemTime,
    /// When ksense read it.
    pub observed_time: SystemTime,
    /// A one-line human message.
    pub body: String,
    /// Attributes, names from [`crate::schema`].
    pub attributes: Vec<(&'static str, Value)>,
}

impl LogRecord {
    /// The value of attribute `name`, if present.
    pub fn attribute(&self, name: &str) -> Option<&Value> {
        self.attributes.iter().find(|(k, _)| *k == name).map(|(_, v)| v)
    }
}

/// Appends attribute `name` holding `bytes` from a monitored process as text
/// ([`text::rendered`]): exactly when valid UTF-8, else escaped and named in `ksense.escaped`.
pub fn push_text(attrs: &mut Vec<(&'static str, Value)>, name: &'static str, bytes: &[u8]) {
    let (text, escaped) = text::rendered(bytes);
    attrs.push((name, Value::Str(text)));
    if escaped {
        mark_escaped(attrs, name);
    }
}

/// Names attribute `name` in `ksense.escaped` (added on the first escaped value).
pub fn mark_escaped(attrs: &mut Vec<(&'static str, Value)>, name: &'static str) {
    match attrs.iter_mut().find(|(key, _)| *key == schema::KSENSE_ESCAPED) {
        Some((_, Value::StrArray(names))) => names.push(name.to_owned()),
        _ => attrs.push((schema::KSENSE_ESCAPED, Value::StrArray(vec![name.to_owned()]))),
    }
}

/// `0x`-prefixed hex, the contract's rendering of addresses.
pub fn hex(value: u64) -> Value {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let width = (value.checked_ilog2().unwrap_or(0) / 4 + 1) as usize;
    let mut text = String::with_capacity(2 + width);
    text.push_str("0x");
    for nibble in (0..width).rev() {
        text.push(char::from(DIGITS[(value >> (nibble * 4)) as usize & 0xf]));
    }
    Value::Str(text)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_escaped_values_are_named_in_ksense_escaped() {
        let mut attrs = Vec::new();
        push_text(&mut attrs, schema::PROCESS_EXECUTABLE_NAME, b"C:\\x");
        assert_eq!(attrs, [(schema::PROCESS_EXECUTABLE_NAME, Value::Str("C:\\x".into()))]);
        push_text(&mut attrs, schema::PROCESS_EXECUTABLE_PATH, b"/tmp/\xff\\");
        mark_escaped(&mut attrs, schema::PROCESS_COMMAND_ARGS);
        assert_eq!(attrs[1], (schema::PROCESS_EXECUTABLE_PATH, Value::Str("/tmp/\\xff\\\\".into())));
        let names = [schema::PROCESS_EXECUTABLE_PATH, schema::PROCESS_COMMAND_ARGS].map(str::to_owned).to_vec();
        assert_eq!(attrs[2], (schema::KSENSE_ESCAPED, Value::StrArray(names)));
        assert_eq!(attrs.len(), 3);
    }

    #[test]
    fn hex_is_0x_and_lower_case_digits() {
        for value in [0, 1, 0xf, 0x10, 0x5555_5555_4000, u64::MAX] {
            assert_eq!(hex(value), Value::Str(format!("{value:#x}")));
        }
    }
}
