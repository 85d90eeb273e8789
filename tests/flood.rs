//! A flood of long command lines from an unprivileged user, end to end: ksense's memory stays
//! bounded by its memory budget whatever the user sends, and the sinks' room is shared fairly, so
//! another user's events still get through. Alone in its test binary, so that the
//! flood does not fall on the other tests' ksense instances (test binaries run one at a time),
//! and its tests take turns ([`ONE_FLOOD_AT_A_TIME`]) for the same reason.
//! docs/BENCHMARKS.md has the figure.
use std::{
    os::unix::process::CommandExt as _,
    process::{Command, Stdio},
    time::Instant,
};

use ksense_e2e::{Ksense, attr, collector::Collector, is, temp_config, workload_bin};

/// The uid the floods run as: `nobody`.
const FLOODER_UID: u32 = 65534;

/// Held by each test for its whole run: one flood at a time.
static ONE_FLOOD_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// An unprivileged user execs a program with 16 KiB of argv 1,500 times, as fast as four
/// threads can, while ksense (default limits and memory budget) writes JSON lines to stdout
/// and exports over OTLP: ksense's peak RSS stays within its target, whatever the user sends.
/// docs/BENCHMARKS.md has the figure.
#[test]
fn peak_rss_under_a_long_argv_exec_flood() {
    const EXECS: usize = 1500;
    let _turn = ONE_FLOOD_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let collector = Collector::start_discarding();
    // Default limits, batch size and request size: requests are cut under max_request_bytes.
    let config = temp_config(
        "flood",
        &format!("[sinks.otlp]\nendpoint = \"http://127.0.0.1:{}\"\n[sinks.journald]\nenabled = false\n", collector.grpc_port),
    );
    let ksense = Ksense::start(&["--config", config.to_str().unwrap()]);
    // Idle: what it holds once running (its peak so far is loading the probes, which parses
    // the kernel's BTF and frees it before any event flows).
    let idle_kib = vm_kib(ksense.pid(), "VmRSS");
    let started = Instant::now();
    long_argv_flood(EXECS);
    let flood = started.elapsed();
    let stopped = ksense.stop();
    assert!(stopped.status.success(), "{}", stopped.stderr);
    let peak_kib = stopped.counter("peak_rss_kib");
    eprintln!(
        "long-argv flood: {EXECS} execs of 16 KiB argv as uid {FLOODER_UID} in {flood:?}; ksense peak RSS {} MiB \
         (idle after start {} MiB resident); {} events written, lost {} before the sinks, OTLP delivered {} dropped {} \
         (memory budget {}), stdout delivered {}",
        peak_kib / 1024,
        idle_kib / 1024,
        stopped.counter("events_written"),
        stopped.counter("lost_total"),
        stopped.counter("sink_otlp_delivered"),
        stopped.counter("sink_otlp_queue_full"),
        stopped.counter("sink_otlp_memory_budget"),
        stopped.counter("sink_stdout_delivered"),
    );
    assert!(idle_kib <= 30 * 1024, "idle RSS {idle_kib} KiB is over 30 MiB");
    assert!(peak_kib <= 64 * 1024, "peak RSS {peak_kib} KiB under the flood is over 64 MiB: {}", stopped.stderr);
}

/// `execs` execs of 16 KiB of argv by [`FLOODER_UID`], four at a time.
fn long_argv_flood(execs: usize) {
    // 256 arguments of 63 bytes and a NUL: 16 KiB.
    let argv: Vec<String> = (0..256).map(|i| format!("{i:05}-{}", "a".repeat(57))).collect();
    std::thread::scope(|scope| {
        for _ in 0..4 {
            scope.spawn(|| {
                for _ in 0..execs / 4 {
                    let status = Command::new(workload_bin())
                        .arg("marker")
                        .args(&argv)
                        .uid(FLOODER_UID)
                        .gid(FLOODER_UID)
                        .stdout(Stdio::null())
                        .status()
                        .unwrap();
                    assert!(status.success());
                }
            });
        }
    });
}

/// While uid 65534 floods, root runs 300 markers: the sinks' queues are shared fairly among
/// users, so root's execs are not the ones dropped when stdout falls behind; only what the ring
/// buffer lost (counted, any user's) may be missing.
#[test]
fn another_users_flood_does_not_crowd_out_roots_events() {
    const MARKERS: usize = 300;
    let _turn = ONE_FLOOD_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let config = temp_config("fair", "[sinks.journald]\nenabled = false\n");
    let ksense = Ksense::start(&["--config", config.to_str().unwrap()]);
    std::thread::scope(|scope| {
        scope.spawn(|| long_argv_flood(1500));
        for _ in 0..MARKERS {
            let status = Command::new(workload_bin()).args(["marker", "root-marker"]).stdout(Stdio::null()).status().unwrap();
            assert!(status.success());
        }
    });
    let stopped = ksense.stop();
    let arrived = stopped
        .events
        .iter()
        .filter(|e| is(e, "process.exec") && attr(e, "process.user.id") == 0)
        .filter(|e| attr(e, "process.command_args").as_array().is_some_and(|args| args.iter().any(|a| a == "root-marker")))
        .count();
    let sink_dropped = stopped.counter("sink_stdout_queue_full") + stopped.counter("sink_stdout_memory_budget");
    let ring_lost = stopped.counter("lost_ring_buffer_process_exec");
    eprintln!(
        "fairness: {arrived} of root's {MARKERS} marker execs arrived on stdout while uid {FLOODER_UID} flooded; \
         stdout dropped {sink_dropped} (queue full or memory budget), the ring buffer lost {ring_lost} execs"
    );
    assert!(MARKERS - arrived <= ring_lost as usize, "root's execs were dropped at the sink: {}", stopped.stderr);
}

/// A `Vm*` figure of `/proc/<pid>/status`, KiB.
fn vm_kib(pid: u32, key: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix(key)?.strip_prefix(':')?.trim().strip_suffix("kB")?.trim().parse().ok())
        .unwrap_or_else(|| panic!("no {key} in /proc/{pid}/status"))
}
