//! Where records go. Each sink owns its formatting, buffering and retries, and runs on a thread
//! of its own ([`queue`]): the pipeline offers every record to every sink's queue, the sink's
//! thread writes them, flushes when its queue runs dry (or every 1024 records under a steady
//! load), and closes the sink at exit.
//! A sink counts delivered records in its [`crate::telemetry::SinkStats`] (its queue counts
//! drops and failed writes); a sink with a queue of its own (OTLP) counts what that loses too.
//!
//! A sink's `events` and `min_severity` keys select among kernel events only: ksense's own
//! records (`ksense.loss`, `ksense.status`) go to every sink.
use std::io;

use anyhow::Context as _;

use crate::{
    config::{Config, EventName, OutputFormat, Selection},
    loss::is_own,
    record::{LogRecord, Severity},
    telemetry::Counters,
};

pub mod file;
pub mod journald;
pub mod jsonl;
pub mod otlp;
pub mod pretty;
pub mod queue;

/// A destination for records.
pub trait Sink: Send {
    /// Short name for diagnostics, e.g. `stdout-json`.
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
/// (`output`, else `[output] format`); journald when its socket exists, OTLP when an endpoint is
/// configured (`[sinks.otlp]` or `OTEL_EXPORTER_OTLP_ENDPOINT`), or as configured. If
/// nothing at all is enabled, JSON lines go to stdout, so a bare `ksense run` shows something;
/// `none` turns that off too.
pub fn build(
    config: &Config,
    output: Option<OutputFormat>,
    counters: &Counters,
) -> anyhow::Result<crate::pipeline::Sinks> {
    let mut sinks = crate::pipeline::Sinks::new();
    let otlp = &config.sinks.otlp;
    if let Some(settings) = otlp.resolve(|name| std::env::var(name).ok())? {
        let stats = counters.register_sink("otlp");
        let sink = otlp::OtlpSink::start(settings, stats.clone()).context("cannot start the OTLP worker")?;
        sinks.push((selected(sink, &otlp.events, otlp.min_severity), stats));
    }
    let journald = &config.sinks.journald;
    if journald.enabled.resolve(journald.socket.exists()) {
        let stats = counters.register_sink("journald");
        let sink = journald::JournaldSink::new(journald.socket.clone(), journald.object_pid, stats.clone());
        sinks.push((selected(sink, &journald.events, journald.min_severity), stats));
    }
    let file = &config.sinks.file;
    if file.enabled {
        let stats = counters.register_sink("file");
        let sink = file::FileSink::open(file.clone(), stats.clone()).context("[sinks.file]")?;
        sinks.push((selected(sink, &file.events, file.min_severity), stats));
    }
    let text = output.or(config.output.format).or(sinks.is_empty().then_some(OutputFormat::Json));
    if let Some(format) = text.filter(|&f| f != OutputFormat::None) {
        let stats = counters.register_sink("stdout");
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
