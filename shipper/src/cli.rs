//! The command line, defined once: `--help`, the man pages and the shell completions
//! (`cargo run -p xtask -- gen-docs`) all come from it.
use std::path::PathBuf;

use clap::{Parser, Subcommand};

use crate::{config::AttachMode, sinks::OutputFormat};

/// ksense: process fork, exec and exit, kernel module loads and memory-protection changes, seen
/// in the kernel (eBPF), as JSON lines or readable lines on standard output, journald entries,
/// a JSON-lines file and OpenTelemetry logs.
#[derive(Debug, Parser)]
#[command(name = "ksense", version, about, max_term_width = 100)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
    /// More diagnostics on stderr (-v: debug, -vv: trace, including verifier logs).
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    pub verbose: u8,
}

/// Subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Attach the probes and ship events until SIGINT/SIGTERM.
    Run {
        /// Configuration file [default: /etc/ksense/ksense.toml if it exists, else built-in defaults].
        #[arg(short, long, value_name = "FILE")]
        config: Option<PathBuf>,
        /// Print events on standard output in this format (overrides [sinks.stdout] format).
        #[arg(short, long, value_enum)]
        output: Option<OutputFormat>,
        /// Hook family (overrides [probes] attach).
        #[arg(long, value_enum)]
        attach: Option<AttachMode>,
    },
    /// Show, for each event kind, the hook this kernel accepts and why the others were not used.
    Probes {
        /// Configuration file (its [probes] section decides what is tried).
        #[arg(short, long, value_name = "FILE")]
        config: Option<PathBuf>,
        /// Hook family (overrides [probes] attach).
        #[arg(long, value_enum)]
        attach: Option<AttachMode>,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Validate a configuration file without running; exits non-zero on any error.
    CheckConfig {
        /// The file [default: /etc/ksense/ksense.toml].
        file: Option<PathBuf>,
    },
}
