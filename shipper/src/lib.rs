//! ksense: a host-state sensor. eBPF probes in the kernel report process fork, exec and exit,
//! kernel module loads and memory-protection changes; this library loads them and runs the
//! pipeline:
//!
//! ```text
//! probes (kernel) -> ring buffer -> ringbuf::Reader -> decode -> queue -> pipeline thread:
//!     rate limit -> enrich -> filter -> record -> a queue per sink -> the sink's own thread
//! ```
//!
//! Main types: [`attach::Probes`] (load, choose and attach hooks), [`ringbuf::Reader`],
//! [`decode::decode`] (bytes to [`event::Event`]), the table of event kinds [`kinds::KINDS`]
//! (each kind's decoding, rendering and offsets), [`enrich::Enricher`], [`record::LogRecord`]
//! (the one shape every sink takes) and the [`sinks`]. Attribute names live in [`schema`];
//! ksense's own counters and records in [`telemetry`] and [`loss`].
#![deny(missing_docs)]

use std::{path::Path, sync::Arc, time::Duration};

use anyhow::Context as _;
use ksense_abi::EventKind;
use tokio::{
    signal::unix::{SignalKind, signal},
    sync::mpsc,
};

pub mod attach;
pub mod btf;
pub mod budget;
pub mod cli;
pub mod clock;
pub mod config;
pub mod decode;
pub mod enrich;
pub mod event;
pub mod filter;
pub mod identity;
pub mod kinds;
pub mod loss;
pub mod lru;
pub mod notify;
pub mod offsets;
pub mod pipeline;
pub mod process;
pub mod record;
pub mod ringbuf;
pub mod schema;
pub mod sinks;
pub mod telemetry;
pub mod text;
pub mod wire;

use attach::{AttachOptions, Outcome, Probes};
use config::{AttachMode, Config};
use kinds::exec::ReportedVariables;
use sinks::OutputFormat;
use ringbuf::{Flow, Reader};
use telemetry::{Counters, LossReporter};

/// How often losses are checked and, when there are new ones, reported (in the log, and to
/// every sink as `ksense.loss` records).
const LOSS_REPORT_INTERVAL: Duration = Duration::from_secs(10);

/// Runs a parsed command line.
pub fn main(cli: cli::Cli) -> anyhow::Result<()> {
    match cli.command {
        cli::Command::Run { config, output, attach } => run(config.as_deref(), output, attach),
        cli::Command::Probes { config, attach, json } => {
            let config = Config::load(config.as_deref())?;
            probes(&config, attach, json)
        }
        cli::Command::CheckConfig { file } => {
            let path = file.unwrap_or_else(|| config::DEFAULT_PATH.into());
            Config::from_file(&path)?;
            println!("{}: ok", path.display());
            Ok(())
        }
    }
}

fn attach_options(config: &Config, attach: Option<AttachMode>) -> AttachOptions {
    let p = &config.probes;
    let kinds = EventKind::ALL.into_iter().filter(|&kind| p.enabled(kind)).collect();
    AttachOptions {
        mode: attach.unwrap_or(p.attach),
        kinds,
        ring_buffer_bytes: *config.limits.ring_buffer_bytes.get_ref(),
        switches: offsets::Switches {
            thread_exits: p.thread_exits,
            memory_report_all: config.memory.report == config::MemoryReport::All,
            memory_coalesce_ns: config.memory.coalesce_window_ms * 1_000_000,
            ignore_tgid: if p.report_self { 0 } else { std::process::id() },
            process_data_max: process_data_max(*config.limits.ring_buffer_bytes.get_ref()),
            exec_environment: !p.environment.get_ref().is_empty(),
        },
    }
}

/// The most unread bytes the ring buffer may hold for a fork, exec or exit record to be
/// written: an eighth of it stays free for module loads and memory-protection changes, so a
/// storm of process events cannot crowd them out (512 KiB of the default 4 MiB: some 2,500
/// memory-protection records).
pub fn process_data_max(ring_buffer_bytes: u32) -> u32 {
    ring_buffer_bytes - ring_buffer_bytes / 8
}

/// `ksense run`: attach, read, ship; on SIGHUP re-read the configuration and switch sinks; on
/// SIGINT/SIGTERM detach, drain what the ring buffer holds to the sinks, and report totals.
pub fn run(config_path: Option<&Path>, output: Option<OutputFormat>, attach: Option<AttachMode>) -> anyhow::Result<()> {
    let config = Config::load(config_path)?;
    // SAFETY: mallopt only tunes the allocator, before any other thread exists.
    unsafe {
        // One arena per thread that allocates (the pipeline and every sink) would each keep
        // the memory freed in it; two arenas keep the peak RSS close to what is in use.
        libc::mallopt(libc::M_ARENA_MAX, 2);
        // Large buffers (long records, encoded requests) are mapped and unmapped with their
        // use, rather than left in the heap after a burst (glibc otherwise raises this
        // threshold as such buffers are freed).
        libc::mallopt(libc::M_MMAP_THRESHOLD, 256 << 10);
    }
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the tokio runtime")?;
    runtime.block_on(run_async(config_path, &config, output, attach))
}

async fn run_async(
    config_path: Option<&Path>,
    config: &Config,
    output: Option<OutputFormat>,
    attach: Option<AttachMode>,
) -> anyhow::Result<()> {
    let mut sigint = signal(SignalKind::interrupt())?;
    let mut sigterm = signal(SignalKind::terminate())?;
    let mut sighup = signal(SignalKind::hangup())?;

    let mut probes = Probes::attach(&attach_options(config, attach))?;
    for kind in &probes.report {
        if let Some(hook) = kind.chosen() {
            tracing::info!(event = kind.kind.name(), probe = %hook, "attached");
        }
    }
    // Loading parsed the kernel's BTF (10-20 MiB, freed by now): give that memory back to the
    // system before the ring buffer is mapped, so the two never add up in the peak RSS.
    // SAFETY: malloc_trim only releases free heap memory.
    unsafe { libc::malloc_trim(0) };
    let ring = probes.take_ring_buffer()?;

    let counters = Arc::new(Counters::starting_now());
    let (queue_tx, queue_rx) = mpsc::channel(*config.limits.queue_events.get_ref());
    probes.set_exclusions(&config.filters)?;
    let outputs = outputs(config, output, &counters)?;
    let attached: Vec<String> = probes
        .report
        .iter()
        .filter_map(|k| Some(format!("{}={}", k.kind.name(), k.chosen()?)))
        .collect();
    let memory_budget_bytes = *config.limits.memory_budget_bytes.get_ref();
    // SIGHUP's new outputs and the requests for ksense's own records ride the event queue:
    // see pipeline::Input.
    let requests = queue_tx.clone();
    // The process table is seeded with the probes attached, before ksense says it is ready:
    // what happens meanwhile waits in the ring buffer and applies after what /proc told (an
    // exit takes its entry away), and a process that was running when ksense became ready has
    // its entry.
    let identities = identities(&config.identity);
    let mut enricher = enrich::Enricher::default();
    if identities.is_some() {
        enricher.report_unseen_identities();
    }
    let seeding = std::time::Instant::now();
    let seeded = enricher.seed();
    tracing::info!(processes = seeded, elapsed_ms = seeding.elapsed().as_millis() as u64, "process table seeded from /proc");
    let pipeline = {
        let context = pipeline::Context {
            counters: counters.clone(),
            probes: attached.clone(),
            sink_queue_records: *config.limits.queue_events.get_ref(),
            memory_budget_bytes,
            environment: ReportedVariables::new(config.probes.environment.get_ref()),
            identities,
        };
        std::thread::Builder::new()
            .name("ksense-pipeline".into())
            .spawn(move || pipeline::run(queue_rx, enricher, outputs, context))
            .context("cannot start the pipeline thread")?
    };

    let events_budget = Arc::new(budget::Budget::new(budget::events_share(memory_budget_bytes)));
    let mut reader = Reader::new(ring, queue_tx, counters.clone(), events_budget)?;
    let mut losses = LossReporter::default();
    let mut tick = tokio::time::interval(LOSS_REPORT_INTERVAL);
    let status_interval = Duration::from_secs(*config.telemetry.status_interval_s.get_ref());
    let mut status_tick = tokio::time::interval_at(tokio::time::Instant::now() + status_interval, status_interval);
    let notifier = notify::Notifier::from_env();
    let status = |snapshot: &telemetry::Snapshot| {
        format!("STATUS=attached {}; events {}; lost {}", attached.join(" "), snapshot.written, snapshot.lost() + snapshot.sink_lost())
    };
    let _ = requests.send(pipeline::Input::Status(loss::State::Started, probes.ring_lost()?)).await;
    notifier.send(&format!("READY=1\n{}", status(&counters.snapshot(probes.ring_lost()?))));
    let mut watchdog = tokio::time::interval(notify::Notifier::watchdog_interval().unwrap_or(Duration::from_secs(3600)));
    let watchdog_on = notify::Notifier::watchdog_interval().is_some();
    let mut heartbeat = notify::Heartbeat::default();
    let window = Duration::from_millis(config.memory.coalesce_window_ms);
    let mut coalesced = kinds::memory::Coalesced::new(probes.take_map(ksense_abi::memory::COALESCE_MAP)?);
    // Coalesced memory repeats are swept at the window's pace (never if coalescing is off).
    let mut sweep = tokio::time::interval(window.max(Duration::from_millis(100)));
    // Reading at most once per interval turns one wakeup per event into one per batch under
    // load; when idle, the first event is read at once.
    let read_interval = Duration::from_millis(config.limits.read_interval_ms);
    let mut next_read = tokio::time::Instant::now();
    tracing::info!("ksense is running");
    loop {
        tokio::select! {
            flow = async {
                tokio::time::sleep_until(next_read).await;
                reader.wait_and_drain().await
            } => {
                next_read = tokio::time::Instant::now() + read_interval;
                if flow? == Flow::Stop {
                    break;
                }
            }
            _ = tick.tick() => {
                let ring_lost = probes.ring_lost()?;
                let snapshot = counters.snapshot(ring_lost);
                notifier.send(&status(&snapshot));
                losses.report(snapshot);
                if requests.send(pipeline::Input::Losses(ring_lost)).await.is_err() {
                    break;
                }
            }
            _ = status_tick.tick() => {
                if requests.send(pipeline::Input::Status(loss::State::Running, probes.ring_lost()?)).await.is_err() {
                    break;
                }
            }
            _ = watchdog.tick(), if watchdog_on => {
                // Only while the pipeline is alive and idle or getting on: a stuck one is
                // restarted by systemd.
                let idle = requests.capacity() == requests.max_capacity();
                if !pipeline.is_finished() && heartbeat.beats(counters.heartbeat.load(std::sync::atomic::Ordering::Relaxed), idle) {
                    notifier.send("WATCHDOG=1");
                }
            }
            _ = sweep.tick(), if !window.is_zero() => {
                if reader.inject(coalesced.take_idle(window.as_nanos() as u64)).await == Flow::Stop {
                    break;
                }
            }
            _ = sighup.recv() => {
                if let Some(new) = reload(config_path, config, output, &counters, &mut probes)
                    && requests.send(pipeline::Input::Reload(Box::new(new))).await.is_err()
                {
                    break;
                }
            }
            _ = sigint.recv() => break,
            _ = sigterm.recv() => break,
        }
    }

    // Stop new events at the source, then ship everything already in the ring buffer.
    notifier.send("STOPPING=1");
    probes.detach();
    if reader.drain().await == Flow::Continue {
        // Repeats still counted in the kernel are reported rather than lost with it.
        reader.inject(coalesced.take_idle(0)).await;
    }
    // The last reports, after the last event: every loss until now is in them. (A sink that
    // fails while delivering what it still holds after this is counted in the stopped line.)
    let ring_lost = probes.ring_lost()?;
    let _ = requests.send(pipeline::Input::Losses(ring_lost)).await;
    let _ = requests.send(pipeline::Input::Status(loss::State::Stopping, ring_lost)).await;
    drop((reader, requests));
    pipeline.join().map_err(|_| anyhow::anyhow!("the pipeline thread panicked"))?;
    let totals = counters.snapshot(probes.ring_lost()?);
    losses.report(totals.clone());
    tracing::info!("ksense stopped: {totals}");
    Ok(())
}

/// The executables' identities as `[identity]` asks; `None` when off, or when the hashing
/// thread cannot start (said in the log: events are reported without them).
fn identities(config: &identity::IdentityConfig) -> Option<identity::Identities> {
    if !config.enabled {
        return None;
    }
    identity::Identities::start(config, "/proc".into())
        .inspect_err(|e| tracing::error!("cannot start the hashing thread, executables are not hashed: {e}"))
        .ok()
}

/// What runs after enrichment for `config`: filter, rate limits, sinks.
fn outputs(config: &Config, output: Option<OutputFormat>, counters: &Counters) -> anyhow::Result<pipeline::Outputs> {
    Ok(pipeline::Outputs {
        filter: filter::Filter::new(config.filters.clone()),
        limiter: filter::rate::RateLimiter::new(&config.limits.rate_per_second),
        sinks: sinks::build(&config.sinks, output.or(config.sinks.stdout.format), counters)?,
    })
}

/// SIGHUP: re-reads the configuration; a valid one gives the filters, rate limits and sinks
/// that replace the running ones (the probes stay attached, so no event is missed); an invalid
/// one is rejected (`None`) and the running configuration stays.
fn reload(
    path: Option<&Path>,
    running: &Config,
    output: Option<OutputFormat>,
    counters: &Counters,
    probes: &mut Probes,
) -> Option<pipeline::Outputs> {
    let new = match Config::load(path) {
        Ok(new) => new,
        Err(e) => {
            tracing::error!("SIGHUP: the new configuration is rejected, the running one stays: {e}");
            return None;
        }
    };
    let restart_only = |c: &Config| {
        let l = &c.limits;
        let sizes = (l.ring_buffer_bytes.clone(), l.queue_events.clone(), l.memory_budget_bytes.clone(), l.read_interval_ms);
        (c.probes.clone(), c.memory.clone(), c.telemetry.clone(), c.identity.clone(), sizes)
    };
    if restart_only(&new) != restart_only(running) {
        tracing::warn!(
            "SIGHUP: changes to [probes], [memory], [telemetry], [identity] and the [limits] sizes, memory budget and read interval take effect when ksense restarts"
        );
    }
    match outputs(&new, output, counters) {
        Ok(built) => {
            if let Err(e) = probes.set_exclusions(&new.filters) {
                tracing::error!("SIGHUP: cannot update the in-kernel filters: {e}");
            }
            tracing::info!("SIGHUP: configuration reloaded");
            Some(built)
        }
        Err(e) => {
            tracing::error!("SIGHUP: the new configuration is rejected, the running one stays: {e:#}");
            None
        }
    }
}

/// `ksense probes`: attach every enabled kind as `run` would, print the choices, detach.
pub fn probes(config: &Config, attach: Option<AttachMode>, json: bool) -> anyhow::Result<()> {
    let mut probes = Probes::attach(&attach_options(config, attach))?;
    probes.detach();
    if json {
        let kinds: Vec<serde_json::Value> = probes
            .report
            .iter()
            .map(|r| {
                let hooks: Vec<serde_json::Value> = r
                    .hooks
                    .iter()
                    .map(|(hook, outcome)| {
                        serde_json::json!({"probe": hook.to_string(), "status": outcome.status(), "reason": outcome.reason()})
                    })
                    .collect();
                serde_json::json!({
                    "event": r.kind.name(),
                    "enabled": r.enabled,
                    "chosen": r.chosen().map(|hook| hook.to_string()),
                    "hooks": hooks,
                })
            })
            .collect();
        let report = serde_json::json!({
            "kernel": kernel_release(),
            "missing_helpers": probes.missing_helpers,
            "kinds": kinds,
        });
        println!("{}", serde_json::to_string_pretty(&report)?);
        return Ok(());
    }
    println!("kernel {}", kernel_release());
    match &probes.missing_helpers {
        Some(missing) if missing.is_empty() => println!("BPF helpers: none that ksense can use is missing"),
        Some(missing) => println!("BPF helpers this kernel lacks: {}", missing.join(", ")),
        None => println!("BPF helpers: unknown (the kernel's BTF has no enum bpf_func_id)"),
    }
    println!("{:<24} {:<40} STATUS", "EVENT", "HOOK");
    for r in &probes.report {
        for (i, (hook, outcome)) in r.hooks.iter().enumerate() {
            let kind = if i == 0 { r.kind.name() } else { "" };
            let status = if *outcome == Outcome::Attached { "CHOSEN".to_owned() } else { outcome.to_string() };
            println!("{kind:<24} {:<40} {status}", hook.to_string());
        }
    }
    Ok(())
}

/// `uname -r`.
pub fn kernel_release() -> String {
    std::fs::read_to_string("/proc/sys/kernel/osrelease").map(|s| s.trim().to_owned()).unwrap_or_default()
}

