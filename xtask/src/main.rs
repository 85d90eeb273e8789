//! Packaging tasks that need ksense's command-line definition (`ksense::cli::Cli`), so the man
//! pages and shell completions say exactly what the binary accepts.
//!
//! ```text
//! cargo run -p xtask -- gen-docs [OUT_DIR]     # default: target/package
//! cargo run -p xtask -- gen-catalog
//! ```
//!
//! `gen-docs` writes `OUT_DIR/man/ksense.1` (with a page per subcommand, `ksense-run.1`, ...) and
//! `OUT_DIR/completions/{ksense.bash,_ksense,ksense.fish}`. scripts/package.sh runs it and
//! compresses the pages; the .deb and .rpm metadata in shipper/Cargo.toml install them.
//! `gen-catalog` writes `packaging/ksense.catalog`, the journald catalog, from the event kinds'
//! modules (`ksense::sinks::journald::catalog`).
use std::{
    io::Write as _,
    path::{Path, PathBuf},
    process::ExitCode,
};

use clap::CommandFactory as _;
use clap_complete::Shell;
use clap_mangen::{
    Man,
    roff::{Roff, bold, italic, roman},
};

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if let [task] = args.as_slice()
        && task == "gen-catalog"
    {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../packaging/ksense.catalog");
        return match std::fs::write(&path, ksense::sinks::journald::catalog()) {
            Ok(()) => {
                println!("{}", path.display());
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("xtask: {}: {e}", path.display());
                ExitCode::FAILURE
            }
        };
    }
    let out = match args.as_slice() {
        [task] if task == "gen-docs" => default_out_dir(),
        [task, dir] if task == "gen-docs" => PathBuf::from(dir),
        _ => {
            eprintln!("usage: cargo run -p xtask -- gen-docs [OUT_DIR]   (default: target/package)");
            eprintln!("       cargo run -p xtask -- gen-catalog");
            return ExitCode::from(2);
        }
    };
    match gen_docs(&out) {
        Ok(files) => {
            for f in files {
                println!("{}", f.display());
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("xtask: {}: {e}", out.display());
            ExitCode::FAILURE
        }
    }
}

/// `$CARGO_TARGET_DIR/package`, or `target/package` at the workspace root.
fn default_out_dir() -> PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../target"));
    target.join("package")
}

/// Writes the man pages and completions under `out`; returns the files written.
fn gen_docs(out: &Path) -> std::io::Result<Vec<PathBuf>> {
    let man_dir = out.join("man");
    let completions_dir = out.join("completions");
    std::fs::create_dir_all(&man_dir)?;
    std::fs::create_dir_all(&completions_dir)?;
    let mut written = Vec::new();

    // One page per subcommand (ksense-run.1, ...), which ksense.1's COMMANDS section names,
    // then ksense.1 itself with the sections a service's page needs.
    let cmd = ksense::cli::Cli::command().disable_help_subcommand(true);
    let mut built = cmd.clone();
    built.build();
    for sub in built.get_subcommands().filter(|s| !s.is_hide_set()) {
        written.push(Man::new(sub.clone()).date(date()).generate_to(&man_dir)?);
    }
    let page = man_dir.join("ksense.1");
    let mut text = Vec::new();
    render_main_page(Man::new(cmd.clone()).date(date()), &mut text)?;
    std::fs::write(&page, once_preamble(&String::from_utf8_lossy(&text)))?;
    written.push(page);

    for (shell, name) in [(Shell::Bash, "ksense.bash"), (Shell::Zsh, "_ksense"), (Shell::Fish, "ksense.fish")] {
        let path = completions_dir.join(name);
        let mut file = std::fs::File::create(&path)?;
        clap_complete::generate(shell, &mut cmd.clone(), "ksense", &mut file);
        file.flush()?;
        written.push(path);
    }
    Ok(written)
}

/// The page date: `SOURCE_DATE_EPOCH` when set (reproducible builds), else none (man shows
/// the package's date then).
fn date() -> String {
    let Some(secs) = std::env::var("SOURCE_DATE_EPOCH").ok().and_then(|s| s.parse::<i64>().ok()) else {
        return String::new();
    };
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = secs.div_euclid(86_400) + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!("{year:04}-{month:02}-{day:02}")
}

/// Each roff document clap_mangen renders starts with the same two lines defining `\*(Aq`;
/// a page put together from several keeps the first pair only.
fn once_preamble(page: &str) -> String {
    const PREAMBLE: [&str; 2] = [".ie \\n(.g .ds Aq \\(aq", ".el .ds Aq '"];
    let mut seen = [false; 2];
    let mut out = String::with_capacity(page.len());
    for line in page.lines() {
        if let Some(i) = PREAMBLE.iter().position(|p| *p == line)
            && std::mem::replace(&mut seen[i], true)
        {
            continue;
        }
        out.push_str(line);
        out.push('\n');
    }
    out
}

/// ksense.1: clap_mangen's sections (name, synopsis, description, options, commands), then
/// what the command line cannot say: files, signals, environment, exit status, see also.
fn render_main_page(man: Man, w: &mut dyn std::io::Write) -> std::io::Result<()> {
    man.render_title(w)?;
    man.render_name_section(w)?;
    man.render_synopsis_section(w)?;
    man.render_description_section(w)?;
    man.render_options_section(w)?;
    man.render_subcommands_section(w)?;

    let mut roff = Roff::new();
    let para = |roff: &mut Roff, text: &str| {
        roff.control("PP", []).text([roman(text)]);
    };
    let item = |roff: &mut Roff, term: &str, text: &str| {
        roff.control("TP", []).text([bold(term)]).text([roman(text)]);
    };

    roff.control("SH", ["FILES"]);
    item(
        &mut roff,
        "/etc/ksense/ksense.toml",
        "The configuration (every key shown with its default and commented). ksense check-config \
         validates it; unknown keys and bad values are errors naming the file, line and key.",
    );
    item(
        &mut roff,
        "/usr/lib/systemd/system/ksense.service",
        "The systemd unit: Type=notify, reload by SIGHUP, only the capabilities ksense needs.",
    );
    item(
        &mut roff,
        "/usr/lib/systemd/catalog/ksense.catalog",
        "Explanations of ksense's journal entries (by MESSAGE_ID) for journalctl -x.",
    );
    item(
        &mut roff,
        "/sys/kernel/btf/vmlinux, /sys/kernel/tracing",
        "Read at start-up: kernel structure offsets (BTF) and tracepoint record formats (tracefs).",
    );

    roff.control("SH", ["SIGNALS"]);
    item(&mut roff, "SIGINT, SIGTERM", "Detach, drain what the kernel already reported, print the totals, exit.");
    item(
        &mut roff,
        "SIGHUP",
        "Reload the configuration: filters and sinks change without detaching the probes; a bad \
         configuration is rejected and the running one stays.",
    );

    roff.control("SH", ["ENVIRONMENT"]);
    item(&mut roff, "KSENSE_LOG", "Filter for ksense's own diagnostics (tracing EnvFilter syntax); overrides -v.");
    item(
        &mut roff,
        "OTEL_EXPORTER_OTLP_ENDPOINT, OTEL_EXPORTER_OTLP_*, OTEL_RESOURCE_ATTRIBUTES, OTEL_SERVICE_NAME",
        "Standard OpenTelemetry exporter settings, used where [sinks.otlp] leaves a key unset.",
    );
    item(
        &mut roff,
        "NOTIFY_SOCKET, WATCHDOG_USEC",
        "Set by systemd: ksense sends READY=1 once its probes are attached, STATUS= lines, and \
         WATCHDOG=1 keep-alives.",
    );

    roff.control("SH", ["EXIT STATUS"]);
    para(
        &mut roff,
        "0 on a clean stop; 1 on an error (a bad configuration, no hook attached for any enabled event kind), which is printed on standard error.",
    );

    roff.control("SH", ["EXAMPLES"]);
    item(&mut roff, "systemctl enable --now ksense", "Run ksense as a service (the packages install the unit).");
    item(
        &mut roff,
        "journalctl -o json SYSLOG_IDENTIFIER=ksense KSENSE_EVENT=process.exit",
        "The process exits ksense reported, as JSON (every attribute is a field).",
    );
    item(&mut roff, "ksense probes", "Which hook each event kind uses on this kernel, and why not the others.");

    roff.control("SH", ["SEE ALSO"]);
    roff.text([
        italic("ksense-run"),
        roman("(1), "),
        italic("ksense-probes"),
        roman("(1), "),
        italic("ksense-check-config"),
        roman("(1), "),
        italic("systemd.exec"),
        roman("(5), "),
        italic("journalctl"),
        roman("(1), "),
        italic("capabilities"),
        roman("(7)"),
    ]);
    roff.to_writer(w)?;

    man.render_version_section(w)
}
