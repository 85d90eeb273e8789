//! Where records go. Each sink owns its formatting, buffering and retries, and runs on a thread
//! of its own ([`queue`]): the pipeline offers every record to every sink's queue, the sink's
//! thread writes them, flushes when its queue runs dry (or every 1024 records under a steady
//! load), and closes the sink at exit.
//! A sink counts delivered records in its [`crate::telemetry::SinkStats`] (its queue counts
//! drops and failed writes); a sink with a queue of its own (OTLP) counts what that loses too.
//!
//! A sink's `events` and `min_severity` keys select among kernel events only: ksense's own
//! records (`ksense.loss`, `ksense.status`) go to every sink.
use std::{fmt, io, sync::Arc};

use anyhow::Context as _;

use serde::Deserialize;

use crate::{
    kinds::EventName,
    loss::is_own,
    record::{LogRecord, Severity},
    telemetry::{Counters, SinkStats},
};

pub mod file;
pub mod journald;
pub mod jsonl;
pub mod otlp;
pub mod pretty;
pub mod queue;

/// A set of sinks with their counters.
pub type Sinks = Vec<(Box<dyn Sink>, Arc<SinkStats>)>;

/// `[sinks]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SinksConfig {
    /// `[sinks.journald]`.
    pub journald: journald::JournaldConfig,
    /// `[sinks.otlp]`.
    pub otlp: otlp::config::OtlpConfig,
    /// `[sinks.file]`.
    pub file: file::FileConfig,
    /// `[sinks.stdout]`.
    pub stdout: StdoutConfig,
}

/// `[sinks.stdout]`: events as text on standard output.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StdoutConfig {
    /// `json`, `pretty` or `none`; `--output` overrides it. Unset: JSON lines when no other sink is on.
    pub format: Option<OutputFormat>,
}

/// A text rendering of events.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum OutputFormat {
    /// One JSON object per line (the format of docs/EVENTS.md).
    Json,
    /// One readable, coloured line per event.
    Pretty,
    /// Nothing on standard output, even when no other sink is enabled: events are then read,
    /// decoded, enriched, counted and discarded (what the benchmarks' kernel-side arm measures).
    None,
}

/// Whether a sink runs: always, never, or when its backend is there (`true`, `false`, `"auto"`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Enabled {
    /// `true` / `false`.
    Fixed(bool),
    /// `"auto"`: decide from the environment.
    #[default]
    Auto,
}

impl<'de> Deserialize<'de> for Enabled {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl serde::de::Visitor<'_> for Visitor {
            type Value = Enabled;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("true, false or \"auto\"")
            }
            fn visit_bool<E: serde::de::Error>(self, v: bool) -> Result<Enabled, E> {
                Ok(Enabled::Fixed(v))
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Enabled, E> {
                match v {
                    "auto" => Ok(Enabled::Auto),
                    other => Err(E::invalid_value(serde::de::Unexpected::Str(other), &self)),
                }
            }
        }
        deserializer.deserialize_any(Visitor)
    }
}

impl Enabled {
    /// Whether the sink runs, given whether its backend was detected.
    pub fn resolve(self, detected: bool) -> bool {
        match self {
            Enabled::Fixed(on) => on,
            Enabled::Auto => detected,
        }
    }
}

/// Which records a sink takes, from its `events` and `min_severity` keys: every record by
/// default. Narrowing an expensive sink (journald spends 40-50 us of CPU per entry) keeps its
/// cost down while the other sinks still get everything.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Selection {
    /// Only these kinds; all when `None`.
    pub events: Option<Vec<EventName>>,
    /// Only records of this severity or above; all when `None`.
    pub min_severity: Option<Severity>,
}

impl Selection {
    /// Whether the sink takes `record`.
    pub fn admits(&self, record: &LogRecord) -> bool {
        self.min_severity.is_none_or(|min| record.severity >= min)
            && self.events.as_ref().is_none_or(|kinds| kinds.iter().any(|k| k.0.name() == record.event_name))
    }

    /// Whether it takes every record.
    pub fn is_all(&self) -> bool {
        self.events.is_none() && self.min_severity.is_none()
    }
}

/// The name of the sink that writes to standard output (JSON lines or readable lines).
pub const STDOUT: &str = "stdout";

/// A destination for records.
pub trait Sink: Send {
    /// Its name in its counters (`sink_<name>_delivered`), `ksense.loss` records and its
    /// thread, as in its configuration section (`[sinks.<name>]`).
    fn name(&self) -> &'static str;
    /// Writes (or buffers) one record.
    fn write(&mut self, record: &LogRecord) -> io::Result<()>;
    /// Pushes buffered records out.
    fn flush(&mut self) -> io::Result<()>;
    /// Delivers what is still queued (within a bounded time) before ksense exits.
    fn close(&mut self) {
        let _ = self.flush();
    }
}

/// The sinks a configuration asks for, each with its counters. Text output runs when asked for
/// (`text`: `--output`, else `[sinks.stdout] format`); journald when its socket exists, OTLP when an endpoint is
/// configured (`[sinks.otlp]` or `OTEL_EXPORTER_OTLP_ENDPOINT`), or as configured. If
/// nothing at all is enabled, JSON lines go to stdout, so a bare `ksense run` shows something;
/// `none` turns that off too.
pub fn build(config: &SinksConfig, text: Option<OutputFormat>, counters: &Counters) -> anyhow::Result<Sinks> {
    let mut sinks = Sinks::new();
    let otlp = &config.otlp;
    if let Some(settings) = otlp.resolve(|name| std::env::var(name).ok())? {
        let stats = counters.register_sink("otlp");
        let sink = otlp::OtlpSink::start(settings, stats.clone()).context("cannot start the OTLP worker")?;
        sinks.push((selected(sink, &otlp.events, otlp.min_severity), stats));
    }
    let journald = &config.journald;
    if journald.enabled.resolve(journald.socket.exists()) {
        let stats = counters.register_sink("journald");
        let sink = journald::JournaldSink::new(journald.socket.clone(), journald.object_pid, stats.clone());
        sinks.push((selected(sink, &journald.events, journald.min_severity), stats));
    }
    let file = &config.file;
    if file.enabled {
        let stats = counters.register_sink("file");
        let sink = file::FileSink::open(file.clone(), stats.clone()).context("[sinks.file]")?;
        sinks.push((selected(sink, &file.events, file.min_severity), stats));
    }
    let text = text.or(sinks.is_empty().then_some(OutputFormat::Json));
    if let Some(format) = text.filter(|&f| f != OutputFormat::None) {
        let stats = counters.register_sink(STDOUT);
        let sink: Box<dyn Sink> = if format == OutputFormat::Pretty {
            Box::new(pretty::PrettySink::stdout(stats.clone()))
        } else {
            Box::new(jsonl::JsonlSink::new(io::stdout(), stats.clone()))
        };
        sinks.push((sink, stats));
    }
    Ok(sinks)
}

/// `sink`, taking only the records its `events` and `min_severity` keys select.
fn selected(sink: impl Sink + 'static, events: &Option<Vec<EventName>>, min_severity: Option<Severity>) -> Box<dyn Sink> {
    let selection = Selection { events: events.clone(), min_severity };
    if selection.is_all() { Box::new(sink) } else { Box::new(Selected { sink, selection }) }
}

/// A sink given only the records its configuration selects, and ksense's own. What it is not
/// given is neither delivered nor failed: the other sinks, and the `events_written` count,
/// still have it.
struct Selected<S> {
    sink: S,
    selection: Selection,
}

impl<S: Sink> Sink for Selected<S> {
    fn name(&self) -> &'static str {
        self.sink.name()
    }

    fn write(&mut self, record: &LogRecord) -> io::Result<()> {
        if is_own(record) || self.selection.admits(record) { self.sink.write(record) } else { Ok(()) }
    }

    fn flush(&mut self) -> io::Result<()> {
        self.sink.flush()
    }

    fn close(&mut self) {
        self.sink.close();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_selection_admits_by_kind_and_severity() {
        let record = |event_name, severity| LogRecord {
            event_name,
            severity,
            time: std::time::SystemTime::UNIX_EPOCH,
            observed_time: std::time::SystemTime::UNIX_EPOCH,
            body: String::new(),
            attributes: Vec::new(),
        };
        let exits = Selection { events: Some(vec![EventName(ksense_abi::EventKind::Exit)]), min_severity: None };
        assert!(exits.admits(&record("process.exit", Severity::Info)));
        assert!(!exits.admits(&record("process.exec", Severity::Info)));
        let warnings = Selection { events: None, min_severity: Some(Severity::Warn) };
        assert!(warnings.admits(&record("process.exit", Severity::Warn)));
        assert!(!warnings.admits(&record("process.exit", Severity::Info)));
        assert!(Selection::default().is_all() && !warnings.is_all());
    }
}
