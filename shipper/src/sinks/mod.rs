//! Where records go. Each sink owns its formatting, buffering and retries; the pipeline hands
//! every sink every record, asks them to flush when its queue runs dry, and closes them at exit.
//! A sink that delivers synchronously counts delivered records in its [`crate::telemetry::SinkStats`]
//! (the pipeline counts failed writes); a sink with its own queue counts everything itself.
use std::io;

use anyhow::Context as _;

use crate::{
    config::{Config, OutputFormat},
    record::LogRecord,
    telemetry::Counters,
};

pub mod file;
pub mod journald;
pub mod jsonl;
pub mod otlp;
pub mod pretty;

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
    if let Some(settings) = config.sinks.otlp.resolve(|name| std::env::var(name).ok())? {
        let stats = counters.register_sink("otlp");
        let sink = otlp::OtlpSink::start(settings, stats.clone()).context("cannot start the OTLP worker")?;
        sinks.push((Box::new(sink), stats));
    }
    let journald = &config.sinks.journald;
    if journald.enabled.resolve(journald.socket.exists()) {
        let stats = counters.register_sink("journald");
        sinks.push((Box::new(journald::JournaldSink::new(journald.socket.clone(), stats.clone())), stats));
    }
    if config.sinks.file.enabled {
        let stats = counters.register_sink("file");
        let sink = file::FileSink::open(config.sinks.file.clone(), stats.clone()).context("[sinks.file]")?;
        sinks.push((Box::new(sink), stats));
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
