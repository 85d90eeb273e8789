//! The one shape every sink receives: an OpenTelemetry-style log record
//! (`docs/EVENTS.md`, "The three renderings").
use std::time::SystemTime;

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
    /// Text. Bytes from the kernel that are not UTF-8 are rendered by [`crate::text::lossless`].
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
    fn hex_is_0x_and_lower_case_digits() {
        for value in [0, 1, 0xf, 0x10, 0x5555_5555_4000, u64::MAX] {
            assert_eq!(hex(value), Value::Str(format!("{value:#x}")));
        }
    }
}
