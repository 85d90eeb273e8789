//! The `ksense` binary: parse the command line, set up diagnostics, run, map errors to exit codes.
use std::{
    io::IsTerminal,
    os::{
        fd::AsFd,
        unix::fs::{FileTypeExt, MetadataExt},
    },
};

use clap::Parser;
use tracing_subscriber::{EnvFilter, layer::SubscriberExt, util::SubscriberInitExt};

fn main() -> std::process::ExitCode {
    let cli = ksense::cli::Cli::parse();
    init_diagnostics(cli.verbose);
    match ksense::main(cli) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("ksense: error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

/// ksense's own log: to the journal (structured, `SYSLOG_IDENTIFIER=ksense`) when it runs as a
/// systemd service, else to stderr. `KSENSE_LOG` (an `EnvFilter`) overrides `-v`.
fn init_diagnostics(verbose: u8) {
    let level = match verbose {
        0 => "info",
        1 => "debug",
        _ => "trace",
    };
    let filter = || EnvFilter::try_from_env("KSENSE_LOG").unwrap_or_else(|_| EnvFilter::new(level));
    let journal = run_by_systemd().then(|| {
        tracing_journald::layer().map(|layer| {
            let info = tracing_journald::Priority::Informational;
            let mappings = tracing_journald::PriorityMappings { info, ..Default::default() };
            layer.with_syslog_identifier("ksense".into()).with_priority_mappings(mappings)
        })
    });
    match journal {
        Some(Ok(layer)) => tracing_subscriber::registry().with(filter()).with(layer).init(),
        journal => {
            tracing_subscriber::fmt()
                .with_env_filter(filter())
                .with_writer(std::io::stderr)
                .with_ansi(std::io::stderr().is_terminal())
                .init();
            if let Some(Err(e)) = journal {
                tracing::warn!("cannot log to the journal ({e}); logging to stderr");
            }
        }
    }
}

/// Whether systemd runs ksense as a service: its stderr is the journal stream systemd names in
/// `JOURNAL_STREAM` (device:inode, checked, since children inherit the variable), or
/// `INVOCATION_ID` is set and stderr is neither a terminal nor a pipe (a service logging
/// elsewhere; a program started from a service's shell or test keeps its stderr).
fn run_by_systemd() -> bool {
    // fstat(2) of a duplicate of stderr.
    let Ok(stderr) = std::io::stderr().as_fd().try_clone_to_owned().and_then(|fd| std::fs::File::from(fd).metadata())
    else {
        return false;
    };
    let journal_stream = std::env::var("JOURNAL_STREAM").ok().and_then(|s| {
        let (dev, ino) = s.split_once(':')?;
        Some((dev.parse::<u64>().ok()?, ino.parse::<u64>().ok()?))
    });
    if journal_stream == Some((stderr.dev(), stderr.ino())) {
        return true;
    }
    std::env::var_os("INVOCATION_ID").is_some() && !std::io::stderr().is_terminal() && !stderr.file_type().is_fifo()
}
