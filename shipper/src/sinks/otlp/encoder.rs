//! [`LogRecord`]s straight to OTLP protobuf bytes, and the agent's resource.
//!
//! Each record is written once, as a `LogRecord` message inside a batch's `ScopeLogs`; a batch
//! becomes an `ExportLogsServiceRequest` by putting the resource and scope in front of it
//! ([`Envelope::request`]). No intermediate SDK or protobuf structs are built: the field numbers
//! are those of `opentelemetry/proto/{collector/logs,logs,common,resource}/v1/*.proto`, and the
//! tests read the bytes back with the generated types of `opentelemetry-proto`.
use std::{borrow::Cow, time::SystemTime};

use opentelemetry::{Array, KeyValue, Value as OtelValue};
use opentelemetry_sdk::{
    Resource,
    resource::{EnvResourceDetector, TelemetryResourceDetector},
};

use crate::{
    record::{LogRecord, Value},
    schema,
};

/// Protobuf wire types.
const VARINT: u32 = 0;
const FIXED64: u32 = 1;
const LEN: u32 = 2;

/// `ExportLogsServiceRequest.resource_logs`.
const REQUEST_RESOURCE_LOGS: u32 = 1;
/// `ResourceLogs.resource`, `.scope_logs`, `.schema_url`.
const RESOURCE_LOGS_RESOURCE: u32 = 1;
const RESOURCE_LOGS_SCOPE_LOGS: u32 = 2;
const RESOURCE_LOGS_SCHEMA_URL: u32 = 3;
/// `Resource.attributes`.
const RESOURCE_ATTRIBUTES: u32 = 1;
/// `ScopeLogs.scope`, `.log_records`.
const SCOPE_LOGS_SCOPE: u32 = 1;
const SCOPE_LOGS_LOG_RECORDS: u32 = 2;
/// `InstrumentationScope.name`, `.version`.
const SCOPE_NAME: u32 = 1;
const SCOPE_VERSION: u32 = 2;
/// `LogRecord` fields.
const LOG_TIME_UNIX_NANO: u32 = 1;
const LOG_SEVERITY_NUMBER: u32 = 2;
const LOG_SEVERITY_TEXT: u32 = 3;
const LOG_BODY: u32 = 5;
const LOG_ATTRIBUTES: u32 = 6;
const LOG_OBSERVED_TIME_UNIX_NANO: u32 = 11;
const LOG_EVENT_NAME: u32 = 12;
/// `KeyValue.key`, `.value`.
const KEY_VALUE_KEY: u32 = 1;
const KEY_VALUE_VALUE: u32 = 2;
/// `AnyValue` oneof members.
const ANY_STRING: u32 = 1;
const ANY_BOOL: u32 = 2;
const ANY_INT: u32 = 3;
const ANY_DOUBLE: u32 = 4;
const ANY_ARRAY: u32 = 5;
/// `ArrayValue.values`.
const ARRAY_VALUES: u32 = 1;

/// Writes records as `ScopeLogs.log_records` entries.
#[derive(Default)]
pub struct Encoder {
    /// One record's fields, reused so encoding allocates nothing once warm.
    scratch: Vec<u8>,
}

/// What goes around a batch of records to make a request: the resource and the scope, encoded
/// once.
pub struct Envelope {
    /// `ResourceLogs` fields before `scope_logs`: the resource and its schema URL.
    resource: Vec<u8>,
    /// The `ScopeLogs.scope` field: `ksense` and its version.
    scope: Vec<u8>,
}

impl Envelope {
    /// The envelope of requests on behalf of `resource`.
    pub fn new(resource: &Resource) -> Envelope {
        let mut attributes = Vec::new();
        for (key, value) in resource.iter() {
            let mut kv = Vec::new();
            put_str(&mut kv, KEY_VALUE_KEY, key.as_str());
            put_message(&mut kv, KEY_VALUE_VALUE, &otel_any(value));
            put_message(&mut attributes, RESOURCE_ATTRIBUTES, &kv);
        }
        let mut fields = Vec::new();
        put_message(&mut fields, RESOURCE_LOGS_RESOURCE, &attributes);
        if let Some(url) = resource.schema_url() {
            put_str(&mut fields, RESOURCE_LOGS_SCHEMA_URL, url);
        }
        let mut scope = Vec::new();
        put_str(&mut scope, SCOPE_NAME, "ksense");
        put_str(&mut scope, SCOPE_VERSION, env!("CARGO_PKG_VERSION"));
        let mut scope_field = Vec::new();
        put_message(&mut scope_field, SCOPE_LOGS_SCOPE, &scope);
        Envelope { resource: fields, scope: scope_field }
    }

    /// The `ExportLogsServiceRequest` carrying the records `batch` holds ([`Encoder::encode`]).
    pub fn request(&self, batch: &[u8]) -> Vec<u8> {
        let scope_logs_len = self.scope.len() + batch.len();
        let resource_logs_len = self.resource.len() + field_len(RESOURCE_LOGS_SCOPE_LOGS, scope_logs_len);
        let mut out = Vec::with_capacity(self.request_len(batch.len()));
        put_key(&mut out, REQUEST_RESOURCE_LOGS, LEN);
        put_varint(&mut out, resource_logs_len as u64);
        out.extend_from_slice(&self.resource);
        put_key(&mut out, RESOURCE_LOGS_SCOPE_LOGS, LEN);
        put_varint(&mut out, scope_logs_len as u64);
        out.extend_from_slice(&self.scope);
        out.extend_from_slice(batch);
        out
    }

    /// Bytes of the request [`Envelope::request`] makes of `batch_len` bytes of records.
    pub fn request_len(&self, batch_len: usize) -> usize {
        let scope_logs_len = self.scope.len() + batch_len;
        let resource_logs_len = self.resource.len() + field_len(RESOURCE_LOGS_SCOPE_LOGS, scope_logs_len);
        field_len(REQUEST_RESOURCE_LOGS, resource_logs_len)
    }

    /// The most bytes of records a request of at most `max_request` bytes can carry.
    pub fn batch_limit(&self, max_request: usize) -> usize {
        // The envelope's share grows with the batch (its length prefixes), so what it takes
        // around `max_request` bytes is the most it takes around fewer.
        max_request.saturating_sub(self.request_len(max_request) - max_request)
    }
}

/// How [`Encoder::encode_within`] fitted a record into its limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fit {
    /// As it is.
    Whole,
    /// With its command line shortened (and flagged as cut).
    Cut,
    /// Not at all, even without a command line: nothing was written.
    TooLarge,
}

impl Encoder {
    /// Appends `record` to `batch` as one `ScopeLogs.log_records` entry: event name (also the
    /// `event.name` attribute, already among the attributes), severity, both timestamps, body,
    /// typed attributes.
    pub fn encode(&mut self, record: &LogRecord, batch: &mut Vec<u8>) {
        self.encode_fields(record);
        put_message(batch, SCOPE_LOGS_LOG_RECORDS, &self.scratch);
    }

    /// [`Encoder::encode`], appending at most `limit` bytes: a record too large for that gets
    /// its argv, command line and body shortened (and `ksense.process.command_args.truncated`),
    /// as little as needed; one still too large without them is left out.
    pub fn encode_within(&mut self, record: &LogRecord, limit: usize, batch: &mut Vec<u8>) -> Fit {
        self.encode_fields(record);
        let len = field_len(SCOPE_LOGS_LOG_RECORDS, self.scratch.len());
        if len <= limit {
            put_message(batch, SCOPE_LOGS_LOG_RECORDS, &self.scratch);
            return Fit::Whole;
        }
        // Cut as many bytes as the record is over (and a little for the flag), then more if
        // the encoding still is.
        let lengths: Vec<usize> = command_lengths(record).collect();
        let mut cut = len - limit;
        loop {
            cut += CUT_MARGIN;
            let keep = keep_for(&lengths, cut);
            self.encode_fields(&cut_command(record, keep));
            let len = field_len(SCOPE_LOGS_LOG_RECORDS, self.scratch.len());
            if len <= limit {
                put_message(batch, SCOPE_LOGS_LOG_RECORDS, &self.scratch);
                return Fit::Cut;
            }
            if keep == 0 {
                return Fit::TooLarge;
            }
            cut += len - limit;
        }
    }

    /// Fills `scratch` with `record`'s `LogRecord` fields.
    fn encode_fields(&mut self, record: &LogRecord) {
        let out = &mut self.scratch;
        out.clear();
        put_fixed64(out, LOG_TIME_UNIX_NANO, unix_nanos(record.time));
        put_varint_field(out, LOG_SEVERITY_NUMBER, record.severity.number() as u64);
        put_str(out, LOG_SEVERITY_TEXT, record.severity.text());
        put_key(out, LOG_BODY, LEN);
        let body_len = any_str_len(&record.body);
        put_varint(out, body_len as u64);
        put_str(out, ANY_STRING, &record.body);
        for (key, value) in &record.attributes {
            let value_len = any_len(value);
            put_key(out, LOG_ATTRIBUTES, LEN);
            put_varint(out, (field_len(KEY_VALUE_KEY, key.len()) + field_len(KEY_VALUE_VALUE, value_len)) as u64);
            put_str(out, KEY_VALUE_KEY, key);
            put_key(out, KEY_VALUE_VALUE, LEN);
            put_varint(out, value_len as u64);
            put_any(out, value);
        }
        put_fixed64(out, LOG_OBSERVED_TIME_UNIX_NANO, unix_nanos(record.observed_time));
        put_str(out, LOG_EVENT_NAME, record.event_name);
    }
}

/// Bytes cut beyond a record's excess: the flag attribute the cut adds, and length prefixes.
const CUT_MARGIN: usize = 64;

/// The most bytes each of `lengths` may keep so that at least `cut` bytes go in all.
fn keep_for(lengths: &[usize], cut: usize) -> usize {
    let removed = |keep: usize| lengths.iter().map(|&len| len.saturating_sub(keep)).sum::<usize>();
    // `removed` falls as `keep` grows: the largest keep that still removes enough.
    let (mut low, mut high) = (0, lengths.iter().copied().max().unwrap_or(0));
    while low < high {
        let mid = (low + high).div_ceil(2);
        if removed(mid) >= cut { low = mid } else { high = mid - 1 }
    }
    low
}

/// Bytes of what [`cut_command`] shortens: the body, the command line, all of argv.
fn command_lengths(record: &LogRecord) -> impl Iterator<Item = usize> + '_ {
    let attributes = record.attributes.iter().map(|(name, value)| match (*name, value) {
        (schema::PROCESS_COMMAND_LINE, Value::Str(line)) => line.len(),
        (schema::PROCESS_COMMAND_ARGS, Value::StrArray(args)) => args.iter().map(String::len).sum(),
        _ => 0,
    });
    std::iter::once(record.body.len()).chain(attributes)
}

/// `record` with at most `keep` bytes of body, of command line and of argv (whole arguments
/// first, then as much of the next as fits), flagged as cut when it has a command line.
fn cut_command(record: &LogRecord, keep: usize) -> LogRecord {
    let cut = |s: &str| s[..s.floor_char_boundary(keep)].to_owned();
    let mut record = LogRecord { body: cut(&record.body), ..record.clone() };
    for (name, value) in &mut record.attributes {
        match (*name, value) {
            (schema::PROCESS_COMMAND_LINE, Value::Str(line)) => *line = cut(line),
            (schema::PROCESS_COMMAND_ARGS, Value::StrArray(args)) => {
                let mut left = keep;
                args.retain_mut(|arg| {
                    let kept = left > 0;
                    arg.truncate(arg.floor_char_boundary(left));
                    left -= arg.len();
                    kept
                });
            }
            _ => {}
        }
    }
    let has_command = record.attributes.iter().any(|(name, _)| [schema::PROCESS_COMMAND_ARGS, schema::PROCESS_COMMAND_LINE].contains(name));
    let flag = schema::KSENSE_PROCESS_COMMAND_ARGS_TRUNCATED;
    match record.attributes.iter_mut().find(|(name, _)| *name == flag) {
        Some((_, value)) => *value = Value::Bool(true),
        None if has_command => record.attributes.push((flag, Value::Bool(true))),
        None => {}
    }
    record
}

fn unix_nanos(t: SystemTime) -> u64 {
    t.duration_since(SystemTime::UNIX_EPOCH).map_or(0, |d| d.as_nanos() as u64)
}

fn varint_len(v: u64) -> usize {
    // 7 payload bits per byte; 0 still takes one byte.
    (64 - (v | 1).leading_zeros() as usize).div_ceil(7)
}

/// Bytes of a length-delimited field `field` holding `len` bytes (field numbers here are < 16,
/// so the key is one byte).
fn field_len(field: u32, len: usize) -> usize {
    debug_assert!(field < 16);
    1 + varint_len(len as u64) + len
}

fn any_str_len(s: &str) -> usize {
    field_len(ANY_STRING, s.len())
}

/// Bytes of the `AnyValue` message holding `value`.
fn any_len(value: &Value) -> usize {
    match value {
        Value::Int(v) => 1 + varint_len(*v as u64),
        Value::Bool(_) => 2,
        Value::Str(s) => any_str_len(s),
        Value::StrArray(items) => {
            field_len(ANY_ARRAY, items.iter().map(|s| field_len(ARRAY_VALUES, any_str_len(s))).sum())
        }
    }
}

fn put_any(out: &mut Vec<u8>, value: &Value) {
    match value {
        Value::Int(v) => put_varint_field(out, ANY_INT, *v as u64),
        Value::Bool(v) => put_varint_field(out, ANY_BOOL, u64::from(*v)),
        Value::Str(s) => put_str(out, ANY_STRING, s),
        Value::StrArray(items) => {
            put_key(out, ANY_ARRAY, LEN);
            put_varint(out, items.iter().map(|s| field_len(ARRAY_VALUES, any_str_len(s))).sum::<usize>() as u64);
            for s in items {
                put_key(out, ARRAY_VALUES, LEN);
                put_varint(out, any_str_len(s) as u64);
                put_str(out, ANY_STRING, s);
            }
        }
    }
}

/// An OpenTelemetry API value (a resource attribute) as an `AnyValue` message.
fn otel_any(value: &OtelValue) -> Vec<u8> {
    let mut any = Vec::new();
    match value {
        OtelValue::Bool(v) => put_varint_field(&mut any, ANY_BOOL, u64::from(*v)),
        OtelValue::I64(v) => put_varint_field(&mut any, ANY_INT, *v as u64),
        OtelValue::F64(v) => {
            put_key(&mut any, ANY_DOUBLE, FIXED64);
            any.extend_from_slice(&v.to_le_bytes());
        }
        OtelValue::String(v) => put_str(&mut any, ANY_STRING, v.as_str()),
        OtelValue::Array(array) => {
            let elements: Vec<OtelValue> = match array {
                Array::Bool(items) => items.iter().map(|&v| OtelValue::Bool(v)).collect(),
                Array::I64(items) => items.iter().map(|&v| OtelValue::I64(v)).collect(),
                Array::F64(items) => items.iter().map(|&v| OtelValue::F64(v)).collect(),
                Array::String(items) => items.iter().cloned().map(OtelValue::String).collect(),
                _ => Vec::new(),
            };
            let mut values = Vec::new();
            for element in &elements {
                put_message(&mut values, ARRAY_VALUES, &otel_any(element));
            }
            put_message(&mut any, ANY_ARRAY, &values);
        }
        _ => put_str(&mut any, ANY_STRING, &value.to_string()),
    }
    any
}

fn put_key(out: &mut Vec<u8>, field: u32, wire_type: u32) {
    put_varint(out, u64::from((field << 3) | wire_type));
}

fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push(v as u8 | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

fn put_varint_field(out: &mut Vec<u8>, field: u32, v: u64) {
    put_key(out, field, VARINT);
    put_varint(out, v);
}

fn put_fixed64(out: &mut Vec<u8>, field: u32, v: u64) {
    put_key(out, field, FIXED64);
    out.extend_from_slice(&v.to_le_bytes());
}

fn put_str(out: &mut Vec<u8>, field: u32, s: &str) {
    put_message(out, field, s.as_bytes());
}

fn put_message(out: &mut Vec<u8>, field: u32, bytes: &[u8]) {
    put_key(out, field, LEN);
    put_varint(out, bytes.len() as u64);
    out.extend_from_slice(bytes);
}

/// The agent's resource: `service.name=ksense` (or `OTEL_SERVICE_NAME`), `service.version`,
/// `service.instance.id`, `host.name`, `host.id`, `os.type`, `os.version`, then whatever
/// `OTEL_RESOURCE_ATTRIBUTES` says (it wins, as in every SDK).
pub fn resource() -> Resource {
    let read = |path: &str| std::fs::read_to_string(path).map(|s| s.trim().to_owned()).unwrap_or_default();
    let service_name = std::env::var("OTEL_SERVICE_NAME").ok().filter(|s| !s.is_empty()).unwrap_or_else(|| "ksense".into());
    let ours = [
        KeyValue::new("service.name", service_name),
        KeyValue::new("service.version", env!("CARGO_PKG_VERSION")),
        KeyValue::new("service.instance.id", instance_id()),
        KeyValue::new("host.name", read("/proc/sys/kernel/hostname")),
        KeyValue::new("host.id", read("/etc/machine-id")),
        KeyValue::new("os.type", "linux"),
        KeyValue::new("os.version", read("/proc/sys/kernel/osrelease")),
    ];
    Resource::builder_empty()
        .with_detector(Box::new(TelemetryResourceDetector))
        .with_attributes(ours)
        .with_detector(Box::new(EnvResourceDetector::new()))
        .build()
}

/// A random id for this run of the agent (a v4 UUID from the kernel).
fn instance_id() -> Cow<'static, str> {
    std::fs::read_to_string("/proc/sys/kernel/random/uuid")
        .map(|s| Cow::Owned(s.trim().to_owned()))
        .unwrap_or_else(|_| Cow::Owned(format!("{}-{}", std::process::id(), unix_nanos(SystemTime::now()))))
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;
    use crate::record::Severity;
    use opentelemetry_proto::tonic::{
        collector::logs::v1::ExportLogsServiceRequest,
        common::v1::{AnyValue, any_value},
    };
    use prost::Message as _;
    use std::time::Duration;

    fn string(s: &str) -> Option<AnyValue> {
        Some(AnyValue { value: Some(any_value::Value::StringValue(s.into())) })
    }

    #[test]
    fn requests_read_back_as_the_records_and_resource() {
        let exit = LogRecord {
            event_name: "process.exit",
            severity: Severity::Warn,
            time: SystemTime::UNIX_EPOCH + Duration::from_secs(1),
            observed_time: SystemTime::UNIX_EPOCH + Duration::new(2, 5),
            body: "sh[7] was killed by signal 9 (SIGKILL)".into(),
            attributes: vec![
                ("process.pid", Value::Int(7)),
                ("ksense.memory.result", Value::Int(-13)),
                ("process.command_args", Value::StrArray(vec!["sh".into(), "-c".into(), "".into(), "é\n".into()])),
                ("ksense.process.exit.core_dumped", Value::Bool(false)),
                ("process.command_line", Value::Str("x".repeat(300))),
            ],
        };
        let fork = LogRecord { event_name: "process.fork", severity: Severity::Info, attributes: Vec::new(), ..exit.clone() };
        let mut batch = Vec::new();
        let mut encoder = Encoder::default();
        encoder.encode(&exit, &mut batch);
        encoder.encode(&fork, &mut batch);
        let request = Envelope::new(&resource()).request(&batch);

        let request = ExportLogsServiceRequest::decode(request.as_slice()).unwrap();
        let [resource_logs] = &request.resource_logs[..] else { panic!("{request:?}") };
        let resource = resource_logs.resource.as_ref().unwrap();
        let os_type = resource.attributes.iter().find(|kv| kv.key == "os.type").unwrap();
        assert_eq!(os_type.value, string("linux"));
        let [scope_logs] = &resource_logs.scope_logs[..] else { panic!("{resource_logs:?}") };
        let scope = scope_logs.scope.as_ref().unwrap();
        assert_eq!((scope.name.as_str(), scope.version.as_str()), ("ksense", env!("CARGO_PKG_VERSION")));
        let [got, got_fork] = &scope_logs.log_records[..] else { panic!("{scope_logs:?}") };
        assert_eq!(got.event_name, "process.exit");
        assert_eq!((got.severity_number, got.severity_text.as_str()), (13, "WARN"));
        assert_eq!((got.time_unix_nano, got.observed_time_unix_nano), (1_000_000_000, 2_000_000_005));
        assert_eq!(got.body, string(&exit.body));
        let attribute = |name: &str| got.attributes.iter().find(|kv| kv.key == name).and_then(|kv| kv.value.clone());
        let int = |v: i64| Some(AnyValue { value: Some(any_value::Value::IntValue(v)) });
        assert_eq!(attribute("process.pid"), int(7));
        assert_eq!(attribute("ksense.memory.result"), int(-13));
        assert_eq!(attribute("ksense.process.exit.core_dumped"), Some(AnyValue { value: Some(any_value::Value::BoolValue(false)) }));
        assert_eq!(attribute("process.command_line"), string(&"x".repeat(300)));
        let Some(any_value::Value::ArrayValue(args)) = attribute("process.command_args").and_then(|v| v.value) else {
            panic!("{got:?}")
        };
        let args: Vec<_> = args.values.into_iter().map(Some).collect();
        assert_eq!(args, [string("sh"), string("-c"), string(""), string("é\n")]);
        assert_eq!(got.attributes.len(), exit.attributes.len());
        assert_eq!((got_fork.event_name.as_str(), got_fork.severity_number, got_fork.attributes.len()), ("process.fork", 9, 0));
    }

    /// An exec record with `n` arguments of `len` bytes, its command line and a body quoting it.
    pub(crate) fn long_exec(n: usize, len: usize) -> LogRecord {
        let args: Vec<String> = (0..n).map(|i| format!("{i:x}").repeat(len)[..len].to_owned()).collect();
        let line = args.join(" ");
        LogRecord {
            event_name: "process.exec",
            severity: Severity::Info,
            time: SystemTime::UNIX_EPOCH,
            observed_time: SystemTime::UNIX_EPOCH,
            body: format!("user 65534 executed {line}"),
            attributes: vec![
                ("process.pid", Value::Int(7)),
                (schema::PROCESS_COMMAND_ARGS, Value::StrArray(args)),
                (schema::PROCESS_COMMAND_LINE, Value::Str(line)),
            ],
        }
    }

    #[test]
    fn a_record_too_large_is_cut_flagged_or_left_out() {
        use opentelemetry_proto::tonic::logs::v1::LogRecord as Proto;
        let record = long_exec(16, 1000);
        let mut encoder = Encoder::default();
        let (mut whole, mut within) = (Vec::new(), Vec::new());
        encoder.encode(&record, &mut whole);
        assert_eq!(encoder.encode_within(&record, whole.len(), &mut within), Fit::Whole);
        assert_eq!(within, whole);

        for limit in [whole.len() - 1, 20_000, 5_000, 600] {
            let mut out = b"before".to_vec();
            assert_eq!(encoder.encode_within(&record, limit, &mut out), Fit::Cut, "{limit}");
            let written = &out[6..];
            assert!(written.len() <= limit, "{} > {limit}", written.len());
            // Cut as little as needed: within 2 KiB of the limit when there is room to spare.
            if limit > 5_000 {
                assert!(written.len() + 2048 > limit, "{} bytes for a limit of {limit}", written.len());
            }
            // One `ScopeLogs.log_records` field: its key, then the record, length-delimited.
            let got = Proto::decode_length_delimited(&written[1..]).unwrap();
            let attribute = |name: &str| got.attributes.iter().find(|kv| kv.key == name).and_then(|kv| kv.value.clone()?.value);
            assert_eq!(attribute(schema::KSENSE_PROCESS_COMMAND_ARGS_TRUNCATED), Some(any_value::Value::BoolValue(true)));
            let Some(any_value::Value::StringValue(line)) = attribute(schema::PROCESS_COMMAND_LINE) else { panic!() };
            let Some(Value::Str(original)) = record.attribute(schema::PROCESS_COMMAND_LINE) else { unreachable!() };
            assert!(original.starts_with(&line) && line.len() < original.len(), "{limit}");
            assert_eq!(attribute("process.pid"), Some(any_value::Value::IntValue(7)), "the rest is kept");
        }
        // Not even the record without its command line fits: nothing is written.
        let mut out = Vec::new();
        assert_eq!(encoder.encode_within(&record, 100, &mut out), Fit::TooLarge);
        assert!(out.is_empty());
    }

    #[test]
    fn varint_lengths() {
        for v in [0, 1, 127, 128, 16_383, 16_384, u64::from(u32::MAX), u64::MAX] {
            let mut out = Vec::new();
            put_varint(&mut out, v);
            assert_eq!(out.len(), varint_len(v), "{v}");
        }
    }

    #[test]
    fn resource_names_the_agent_and_host() {
        let resource = resource();
        let get = |k: &'static str| resource.get(&opentelemetry::Key::from_static_str(k)).map(|v| v.to_string());
        assert_eq!(get("os.type").as_deref(), Some("linux"));
        assert!(get("service.instance.id").is_some_and(|id| !id.is_empty()));
        assert!(get("host.name").is_some());
    }
}
