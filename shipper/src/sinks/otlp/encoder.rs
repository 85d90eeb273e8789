//! [`LogRecord`] to OpenTelemetry SDK log records, and the agent's resource.
use std::{borrow::Cow, time::SystemTime};

use opentelemetry::{
    Key, KeyValue, StringValue,
    logs::{AnyValue, LogRecord as _, Logger as _, LoggerProvider as _, Severity as OtelSeverity},
};
use opentelemetry_sdk::{
    Resource,
    logs::{SdkLogRecord, SdkLogger, SdkLoggerProvider},
    resource::{EnvResourceDetector, TelemetryResourceDetector},
};

use crate::record::{LogRecord, Severity, Value};

/// Builds SDK records. The SDK only makes records through a logger; this one has no processor
/// (the sink batches and exports itself, so it can bound its queue and count every drop).
pub struct Encoder {
    logger: SdkLogger,
    _provider: SdkLoggerProvider,
}

impl Default for Encoder {
    fn default() -> Self {
        let provider = SdkLoggerProvider::builder().build();
        Encoder { logger: provider.logger("ksense"), _provider: provider }
    }
}

impl Encoder {
    /// The SDK record for `record`: event name (also as the `event.name` attribute, already
    /// among the attributes), severity, both timestamps, body, typed attributes.
    pub fn encode(&self, record: &LogRecord) -> SdkLogRecord {
        let mut out = self.logger.create_log_record();
        out.set_event_name(record.event_name);
        out.set_severity_number(match record.severity {
            Severity::Info => OtelSeverity::Info,
            Severity::Warn => OtelSeverity::Warn,
        });
        out.set_severity_text(record.severity.text());
        out.set_timestamp(record.time);
        out.set_observed_timestamp(record.observed_time);
        out.set_body(AnyValue::String(record.body.clone().into()));
        for (key, value) in &record.attributes {
            out.add_attribute(Key::from_static_str(key), any_value(value));
        }
        out
    }
}

fn any_value(value: &Value) -> AnyValue {
    match value {
        Value::Int(v) => AnyValue::Int(*v),
        Value::Bool(v) => AnyValue::Boolean(*v),
        Value::Str(v) => AnyValue::String(StringValue::from(v.clone())),
        Value::StrArray(items) => {
            AnyValue::ListAny(Box::new(items.iter().map(|s| AnyValue::String(s.clone().into())).collect()))
        }
    }
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
        .unwrap_or_else(|_| Cow::Owned(format!("{}-{}", std::process::id(), nanos_now())))
}

fn nanos_now() -> u128 {
    SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).map_or(0, |d| d.as_nanos())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn typed_attributes_and_fields() {
        let record = LogRecord {
            event_name: "process.exit",
            severity: Severity::Warn,
            time: SystemTime::UNIX_EPOCH + Duration::from_secs(1),
            observed_time: SystemTime::UNIX_EPOCH + Duration::from_secs(2),
            body: "sh[7] was killed by signal 9 (SIGKILL)".into(),
            attributes: vec![
                ("process.pid", Value::Int(7)),
                ("process.command_args", Value::StrArray(vec!["sh".into(), "-c".into()])),
                ("ksense.process.exit.core_dumped", Value::Bool(false)),
            ],
        };
        let out = Encoder::default().encode(&record);
        assert_eq!(out.event_name(), Some("process.exit"));
        assert_eq!(out.severity_number(), Some(OtelSeverity::Warn));
        assert_eq!(out.timestamp(), Some(record.time));
        let attrs: Vec<_> = out.attributes_iter().collect();
        assert!(attrs.iter().any(|(k, v)| k.as_str() == "process.pid" && *v == AnyValue::Int(7)));
        assert!(attrs.iter().any(|(k, v)| k.as_str() == "process.command_args" && matches!(v, AnyValue::ListAny(l) if l.len() == 2)));
    }

    #[test]
    fn resource_names_the_agent_and_host() {
        let resource = resource();
        let get = |k: &'static str| resource.get(&Key::from_static_str(k)).map(|v| v.to_string());
        assert_eq!(get("os.type").as_deref(), Some("linux"));
        assert!(get("service.instance.id").is_some_and(|id| !id.is_empty()));
        assert!(get("host.name").is_some());
    }
}
