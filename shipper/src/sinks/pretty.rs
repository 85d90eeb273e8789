//! One readable line per record for a person at a terminal:
//! `16:43:24.123 INFO process.exec  bash[42] executed ls -la  uid=0 ppid=1 ...`.
//!
//! Colour only when the output is a terminal and `NO_COLOR` is unset. Every value is passed
//! through [`one_line`], so control characters from a monitored process are shown escaped and
//! cannot move the cursor or start a fake line.
use std::io::{self, BufWriter, IsTerminal, Write};

use std::sync::Arc;

use super::Sink;
use crate::{
    clock::rfc3339,
    record::{LogRecord, Severity, Value},
    schema,
    telemetry::{Counters, SinkStats},
    text::one_line,
};

/// Attributes shown after the body, in this order, when present, with their short labels.
const SHOWN: [(&str, &str); 7] = [
    (schema::PROCESS_PARENT_PID, "ppid"),
    (schema::KSENSE_PROCESS_PARENT_EXECUTABLE_PATH, "parent"),
    (schema::PROCESS_USER_ID, "uid"),
    (schema::PROCESS_OWNER, "user"),
    (schema::PROCESS_EXECUTABLE_PATH, "path"),
    (schema::CONTAINER_ID, "container"),
    (schema::KSENSE_PROBE, "probe"),
];

/// Writes pretty lines to any writer.
pub struct PrettySink<W: Write + Send> {
    out: BufWriter<W>,
    color: bool,
    stats: Arc<SinkStats>,
}

impl PrettySink<io::Stdout> {
    /// A sink on standard output, coloured if it is a terminal and NO_COLOR is unset.
    pub fn stdout(stats: Arc<SinkStats>) -> Self {
        let out = io::stdout();
        let color = out.is_terminal() && std::env::var_os("NO_COLOR").is_none();
        PrettySink { out: BufWriter::new(out), color, stats }
    }
}

impl<W: Write + Send> PrettySink<W> {
    fn paint(&self, code: &str, text: &str) -> String {
        if self.color { format!("\x1b[{code}m{text}\x1b[0m") } else { text.to_owned() }
    }
}

impl<W: Write + Send> Sink for PrettySink<W> {
    fn name(&self) -> &'static str {
        super::STDOUT
    }

    fn write(&mut self, record: &LogRecord) -> io::Result<()> {
        let time = rfc3339(record.time);
        // HH:MM:SS.micro from the RFC 3339 form.
        let clock = time.get(11..26).unwrap_or(&time);
        let severity = match record.severity {
            Severity::Info => self.paint("32", "INFO"),
            Severity::Warn => self.paint("1;33", "WARN"),
        };
        let name = self.paint("36", &format!("{:<14}", record.event_name));
        let mut line = format!("{} {severity} {name} {}", self.paint("2", clock), one_line(&record.body));
        for (key, label) in SHOWN {
            if let Some(value) = record.attribute(key) {
                let value = match value {
                    Value::Int(v) => v.to_string(),
                    Value::Bool(v) => v.to_string(),
                    Value::Str(v) => one_line(v),
                    Value::StrArray(v) => one_line(&v.join(" ")),
                };
                line.push_str(&format!(" {}={value}", self.paint("2", label)));
            }
        }
        if record.attribute(schema::KSENSE_PROCESS_EXECUTABLE_FILELESS) == Some(&Value::Bool(true)) {
            line.push_str(&format!(" {}", self.paint("1;33", "fileless")));
        }
        // Reported environment variables as NAME=value (`LD_PRELOAD=/tmp/x.so`).
        let (prefix, _) = schema::PROCESS_ENVIRONMENT_VARIABLE.split_once("<NAME>").unwrap_or_default();
        for (key, value) in &record.attributes {
            if let (Some(name), Value::Str(value)) = (key.strip_prefix(prefix), value) {
                line.push_str(&format!(" {}={}", self.paint("2", name), one_line(value)));
            }
        }
        line.push('\n');
        self.out.write_all(line.as_bytes())?;
        Counters::bump(&self.stats.delivered);
        Ok(())
    }

    fn flush(&mut self) -> io::Result<()> {
        self.out.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::SystemTime;

    #[test]
    fn hostile_values_stay_on_one_line() {
        let record = LogRecord {
            event_name: "process.exec",
            severity: Severity::Warn,
            time: SystemTime::now(),
            observed_time: SystemTime::now(),
            body: "x executed a\nFAKE LINE\x1b[2J".into(),
            attributes: vec![(schema::PROCESS_EXECUTABLE_PATH, Value::Str("/tmp/a\rb".into()))],
        };
        let mut sink = PrettySink { out: BufWriter::new(Vec::new()), color: false, stats: Arc::default() };
        sink.write(&record).unwrap();
        let text = String::from_utf8(sink.out.into_inner().unwrap()).unwrap();
        assert_eq!(text.matches('\n').count(), 1, "{text}");
        assert!(!text.contains('\x1b') && !text.contains('\r'), "{text}");
        assert!(text.contains("WARN process.exec"), "{text}");
        assert!(text.contains("path=/tmp/a\\rb"), "{text}");
    }

    #[test]
    fn fileless_and_environment_variables_are_shown() {
        let record = LogRecord {
            event_name: "process.exec",
            severity: Severity::Warn,
            time: SystemTime::now(),
            observed_time: SystemTime::now(),
            body: "x executed x".into(),
            attributes: vec![
                (schema::KSENSE_PROCESS_EXECUTABLE_FILELESS, Value::Bool(true)),
                ("process.environment_variable.LD_PRELOAD", Value::Str("/tmp/a.so\nb".into())),
            ],
        };
        let mut sink = PrettySink { out: BufWriter::new(Vec::new()), color: false, stats: Arc::default() };
        sink.write(&record).unwrap();
        let text = String::from_utf8(sink.out.into_inner().unwrap()).unwrap();
        assert!(text.ends_with(" fileless LD_PRELOAD=/tmp/a.so\\nb\n"), "{text}");
    }
}
