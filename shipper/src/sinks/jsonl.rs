//! JSON lines: one object per record,
//! `{"time":..,"severity":..,"event.name":..,"body":..,"attributes":{..}}`.
//!
//! serde_json escapes every control character, so no byte of argv can end a line early.
use std::io::{self, BufWriter, Write};

use serde::ser::{SerializeMap, SerializeSeq, Serializer};

use std::sync::Arc;

use super::Sink;
use crate::{
    clock::Rfc3339,
    record::{LogRecord, Value},
    telemetry::{Counters, SinkStats},
};

/// Writes JSON lines to any writer (stdout, a file).
pub struct JsonlSink<W: Write + Send> {
    out: BufWriter<W>,
    stats: Arc<SinkStats>,
}

impl<W: Write + Send> JsonlSink<W> {
    /// A sink writing to `out`, counting into `stats`.
    pub fn new(out: W, stats: Arc<SinkStats>) -> Self {
        JsonlSink { out: BufWriter::with_capacity(64 * 1024, out), stats }
    }
}

impl<W: Write + Send> Sink for JsonlSink<W> {
    fn name(&self) -> &'static str {
        super::STDOUT
    }

    fn write(&mut self, record: &LogRecord) -> io::Result<()> {
        write_record(&mut self.out, record)?;
        self.out.write_all(b"\n")?;
        Counters::bump(&self.stats.delivered);
        Ok(())
    }

    fn flush(&mut self) -> io::Result<()> {
        self.out.flush()
    }
}

/// Serializes one record as a JSON object (no newline).
pub fn write_record(out: &mut impl Write, record: &LogRecord) -> io::Result<()> {
    let mut ser = serde_json::Serializer::new(out);
    let mut map = ser.serialize_map(Some(5))?;
    map.serialize_entry("time", Rfc3339::new(record.time).as_str())?;
    map.serialize_entry("severity", record.severity.text())?;
    map.serialize_entry("event.name", record.event_name)?;
    map.serialize_entry("body", &record.body)?;
    map.serialize_entry("attributes", &Attributes(&record.attributes))?;
    SerializeMap::end(map)?;
    Ok(())
}

struct Attributes<'a>(&'a [(&'static str, Value)]);

impl serde::Serialize for Attributes<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut map = s.serialize_map(Some(self.0.len()))?;
        for (key, value) in self.0 {
            map.serialize_entry(key, &JsonValue(value))?;
        }
        map.end()
    }
}

struct JsonValue<'a>(&'a Value);

impl serde::Serialize for JsonValue<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self.0 {
            Value::Int(v) => s.serialize_i64(*v),
            Value::Bool(v) => s.serialize_bool(*v),
            Value::Str(v) => s.serialize_str(v),
            Value::StrArray(items) => {
                let mut seq = s.serialize_seq(Some(items.len()))?;
                for item in items {
                    seq.serialize_element(item)?;
                }
                seq.end()
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::Severity;
    use std::time::{Duration, UNIX_EPOCH};

    #[test]
    fn one_line_per_record_with_typed_attributes() {
        let record = LogRecord {
            event_name: "process.exec",
            severity: Severity::Info,
            time: UNIX_EPOCH + Duration::from_nanos(1),
            observed_time: UNIX_EPOCH,
            body: "x executed a\nb".into(),
            attributes: vec![
                ("process.pid", Value::Int(5)),
                ("process.command_args", Value::StrArray(vec!["a\nb".into(), "\"}{".into()])),
                ("ksense.clone.thread", Value::Bool(false)),
            ],
        };
        let mut sink = JsonlSink::new(Vec::new(), Arc::default());
        sink.write(&record).unwrap();
        sink.flush().unwrap();
        let out = sink.out.into_inner().unwrap();
        let text = String::from_utf8(out).unwrap();
        assert_eq!(text.matches('\n').count(), 1);
        let v: serde_json::Value = serde_json::from_str(text.trim_end()).unwrap();
        assert_eq!(v["time"], "1970-01-01T00:00:00.000000001Z");
        assert_eq!(v["event.name"], "process.exec");
        assert_eq!(v["attributes"]["process.pid"], 5);
        assert_eq!(v["attributes"]["process.command_args"][0], "a\nb");
        assert_eq!(v["attributes"]["process.command_args"][1], "\"}{");
        assert_eq!(v["attributes"]["ksense.clone.thread"], false);
    }
}
