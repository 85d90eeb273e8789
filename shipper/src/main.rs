//! The `ksense` binary: parse the command line, set up diagnostics, run, map errors to exit codes.
use std::{
    io::IsTerminal,
    os::{
        fd::AsFd,
        unix::fs::{FileTypeExt, MetadataExt},
    },
};

use clap::Parser;
use tracing::{Event, Level, Subscriber};
use tracing_journald::{Priority, PriorityMappings};
use tracing_subscriber::{
    EnvFilter,
    fmt::{FmtContext, FormatEvent, FormatFields, format::Writer},
    layer::SubscriberExt,
    registry::LookupSpan,
    util::SubscriberInitExt,
};

fn main() -> std::process::ExitCode {
    let cli = ksense::cli::Cli::parse();
    let diagnostics = init_diagnostics(cli.verbose);
    match ksense::main(cli) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            diagnostics.fatal(&e);
            std::process::ExitCode::FAILURE
        }
    }
}

/// How systemd runs ksense, as far as its log is concerned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Systemd {
    /// Not as a service (a terminal, a pipe, a test).
    No,
    /// As a service whose stderr is the journal stream systemd names in `JOURNAL_STREAM`.
    JournalStream,
    /// As a service whose stderr goes elsewhere (`StandardError=` a file, say).
    Service,
}

impl Systemd {
    /// Reports the error ksense exits with, at error priority under systemd, so
    /// `journalctl -p err -u ksense` shows why it stopped or did not start.
    fn fatal(self, e: &anyhow::Error) {
        match self {
            Systemd::No => eprintln!("ksense: error: {e:#}"),
            // On the journal stream even when ksense logs through the native protocol: journald
            // files a stream's lines under the unit systemd named when it opened the stream,
            // but a datagram under the unit it finds in the sender's /proc entry, which may be
            // gone by the time it reads one sent just before the exit (then `journalctl -u`
            // would not show it).
            Systemd::JournalStream => eprintln!("<{}>ksense: error: {e:#}", priority_digit(Level::ERROR)),
            Systemd::Service => tracing::error!("{e:#}"),
        }
    }
}

/// ksense's own log: to the journal (structured, `SYSLOG_IDENTIFIER=ksense`) when it runs as a
/// systemd service, else to stderr, with each line's priority as a `<N>` prefix when systemd
/// reads stderr (`SyslogLevelPrefix=`, on by default). `KSENSE_LOG` (an `EnvFilter`) overrides
/// `-v`.
fn init_diagnostics(verbose: u8) -> Systemd {
    let level = match verbose {
        0 => "info",
        1 => "debug",
        _ => "trace",
    };
    let filter = || EnvFilter::try_from_env("KSENSE_LOG").unwrap_or_else(|_| EnvFilter::new(level));
    let systemd = run_by_systemd();
    let journal = (systemd != Systemd::No).then(|| {
        tracing_journald::layer().map(|layer| {
            let mappings = PriorityMappings {
                error: priority(Level::ERROR),
                warn: priority(Level::WARN),
                info: priority(Level::INFO),
                debug: priority(Level::DEBUG),
                trace: priority(Level::TRACE),
            };
            layer.with_syslog_identifier("ksense".into()).with_priority_mappings(mappings)
        })
    });
    match journal {
        Some(Ok(layer)) => {
            tracing_subscriber::registry().with(filter()).with(layer).init();
            systemd
        }
        Some(Err(e)) => {
            // journald adds the time to each line.
            let format = SyslogLevelPrefix(tracing_subscriber::fmt::format().without_time());
            tracing_subscriber::fmt()
                .with_env_filter(filter())
                .with_writer(std::io::stderr)
                .with_ansi(false)
                .event_format(format)
                .init();
            tracing::warn!("cannot log to the journal ({e}); logging to stderr");
            systemd
        }
        None => {
            tracing_subscriber::fmt()
                .with_env_filter(filter())
                .with_writer(std::io::stderr)
                .with_ansi(std::io::stderr().is_terminal())
                .init();
            systemd
        }
    }
}

/// The syslog priority of ksense's log records of `level` (the journal's `PRIORITY`).
fn priority(level: Level) -> Priority {
    match level {
        Level::ERROR => Priority::Error,
        Level::WARN => Priority::Warning,
        Level::INFO => Priority::Informational,
        Level::DEBUG | Level::TRACE => Priority::Debug,
    }
}

/// [`priority`] as the digit of a `<N>` prefix.
fn priority_digit(level: Level) -> char {
    // Priority's values are the digits themselves.
    priority(level) as u8 as char
}

/// Formats a record with `F` and starts each of its lines with the record's priority as
/// sd-daemon(3) has it (`<3>` for an error), which journald strips and stores as `PRIORITY`.
struct SyslogLevelPrefix<F>(F);

impl<S, N, F> FormatEvent<S, N> for SyslogLevelPrefix<F>
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
    F: FormatEvent<S, N>,
{
    fn format_event(&self, ctx: &FmtContext<'_, S, N>, mut writer: Writer<'_>, event: &Event<'_>) -> std::fmt::Result {
        let mut text = String::new();
        self.0.format_event(ctx, Writer::new(&mut text), event)?;
        let digit = priority_digit(*event.metadata().level());
        for line in text.lines() {
            writeln!(writer, "<{digit}>{line}")?;
        }
        Ok(())
    }
}

/// How systemd runs ksense: its stderr is the journal stream systemd names in `JOURNAL_STREAM`
/// (device:inode, checked, since children inherit the variable), or `INVOCATION_ID` is set and
/// stderr is neither a terminal nor a pipe (a service logging elsewhere; a program started from
/// a service's shell or test keeps its stderr).
fn run_by_systemd() -> Systemd {
    // fstat(2) of a duplicate of stderr.
    let Ok(stderr) = std::io::stderr().as_fd().try_clone_to_owned().and_then(|fd| std::fs::File::from(fd).metadata())
    else {
        return Systemd::No;
    };
    let journal_stream = std::env::var("JOURNAL_STREAM").ok().and_then(|s| {
        let (dev, ino) = s.split_once(':')?;
        Some((dev.parse::<u64>().ok()?, ino.parse::<u64>().ok()?))
    });
    if journal_stream == Some((stderr.dev(), stderr.ino())) {
        Systemd::JournalStream
    } else if std::env::var_os("INVOCATION_ID").is_some()
        && !std::io::stderr().is_terminal()
        && !stderr.file_type().is_fifo()
    {
        Systemd::Service
    } else {
        Systemd::No
    }
}
