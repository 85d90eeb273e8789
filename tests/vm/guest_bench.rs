//! The VM benchmark's guest side (`tests/vm/host_bench.rs` boots it): module load/unload, `N`
//! times in a row, beside no agent and beside ksense in each attach mode, interleaved in pairs
//! (each pair runs every arm once, the order rotated from one pair to the next so no arm always
//! comes first), each ksense started fresh and stopped after its run.
//!
//! It prints one line per run on the console, which the host turns into the report:
//!
//! ```text
//! vm-bench workload=insmod-rmmod pair=1 arm=fentry ops=200 total_us=... op_p50_us=... op_max_us=... generated=200 delivered=200 probe=fentry/do_init_module events_written=... lost_total=0 ...
//! vm-bench workload=finit-delete pair=2 arm=tracepoint: FAIL <reason on one line>
//! ```
//!
//! `generated` is the module loads the run made (one per op), `delivered` the
//! `kernel.module.load` events of `dummy` in ksense's output, and the rest of the line ksense's
//! own `ksense stopped:` counters (CPU since the probes attached, peak RSS, latency, losses).
use std::{
    ffi::CStr,
    fs::File,
    io::{BufRead, BufReader},
    os::fd::AsRawFd,
    path::Path,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use ksense_e2e::{attr, event_timeout, is, ksense_bin, stopped_totals};
use serde_json::Value;

use crate::{
    MODULE, catch,
    shared::{BENCH_ARMS, BENCH_WORKLOADS},
};

/// The module's name, as `delete_module` and the events know it.
const NAME: &CStr = c"dummy";
/// A pause before each timed loop, so what starting ksense set going (and the previous run's
/// teardown) is not billed to the loop.
const SETTLE: Duration = Duration::from_secs(2);
/// The counters of ksense's stop line the host reports.
const TOTALS: [&str; 8] = [
    "events_written",
    "lost_total",
    "lost_ring_buffer_kernel_module_load",
    "cpu_user_us",
    "cpu_system_us",
    "peak_rss_kib",
    "latency_p50_us",
    "latency_p99_us",
];

/// Runs the benchmark described by `spec` (`loads,pairs`); false when a run failed.
pub fn run(spec: &str) -> bool {
    let parsed = spec.split_once(',').and_then(|(l, p)| Some((l.trim().parse::<u64>().ok()?, p.trim().parse::<usize>().ok()?)));
    let Some((loads, pairs)) = parsed.filter(|&(l, p)| l > 0 && p > 0) else {
        println!("vm-note bench: {spec:?} is not `loads,pairs`");
        return false;
    };
    // Loaded by an earlier run that failed half-way; then one untimed load and unload, so the
    // first timed run does not pay for the first load's cold paths.
    let _ = unload();
    if let Err(reason) = catch(|| op("insmod-rmmod", None)) {
        println!("vm-note bench: the module does not load and unload: {reason}");
        return false;
    }
    let mut ok = true;
    for pair in 1..=pairs {
        for workload in BENCH_WORKLOADS {
            for i in 0..BENCH_ARMS.len() {
                let arm = BENCH_ARMS[(pair - 1 + i) % BENCH_ARMS.len()];
                let head = format!("vm-bench workload={workload} pair={pair} arm={arm}");
                match catch(|| run_one(workload, arm, loads)) {
                    Ok(fields) => println!("{head} {fields}"),
                    Err(reason) => {
                        ok = false;
                        let _ = unload();
                        println!("{head}: FAIL {}", reason.replace('\n', " / "));
                    }
                }
            }
        }
    }
    ok
}

/// One run: the arm's ksense started, `loads` ops timed, ksense stopped; the line's fields.
fn run_one(workload: &str, arm: &str, loads: u64) -> String {
    let agent = (arm != "none").then(|| Agent::start(arm));
    std::thread::sleep(SETTLE);
    let module = File::open(MODULE).unwrap_or_else(|e| panic!("{MODULE}: {e}"));
    let mut times = Vec::with_capacity(loads as usize);
    let started = Instant::now();
    for _ in 0..loads {
        let before = Instant::now();
        op(workload, Some(&module));
        times.push(before.elapsed());
    }
    let total = started.elapsed();
    times.sort();
    let mut fields = format!(
        "ops={loads} total_us={} op_p50_us={} op_max_us={} generated={loads}",
        total.as_micros(),
        times[times.len() / 2].as_micros(),
        times[times.len() - 1].as_micros()
    );
    if let Some(agent) = agent {
        fields.push(' ');
        fields.push_str(&agent.stop());
    }
    fields
}

/// One load and one unload of the module, by `workload`'s means (`finit-delete` loads from
/// `module`, opened once outside the timed loop).
fn op(workload: &str, module: Option<&File>) {
    match workload {
        "insmod-rmmod" => {
            for (tool, arg) in [("/bin/insmod", MODULE), ("/bin/rmmod", "dummy")] {
                let out = Command::new(tool).arg(arg).stdout(Stdio::null()).stderr(Stdio::piped()).output().unwrap();
                assert!(out.status.success(), "{tool} {arg}: {}: {}", out.status, String::from_utf8_lossy(&out.stderr));
            }
        }
        "finit-delete" => {
            let fd = module.expect("finit-delete needs the module file").as_raw_fd();
            // SAFETY: an open descriptor and a NUL-terminated empty parameter string.
            let loaded = unsafe { libc::syscall(libc::SYS_finit_module, fd, c"".as_ptr(), 0) };
            assert_eq!(loaded, 0, "finit_module({MODULE}): {}", std::io::Error::last_os_error());
            assert!(unload().is_ok(), "delete_module(dummy): {}", std::io::Error::last_os_error());
        }
        other => panic!("no workload {other:?}"),
    }
}

/// `delete_module("dummy", O_NONBLOCK)`, as `rmmod` calls it.
fn unload() -> Result<(), std::io::Error> {
    // SAFETY: a NUL-terminated module name.
    let rc = unsafe { libc::syscall(libc::SYS_delete_module, NAME.as_ptr(), libc::O_NONBLOCK) };
    if rc == 0 { Ok(()) } else { Err(std::io::Error::last_os_error()) }
}

/// A ksense writing its events to a file on the guest's tmpfs. Not the harness's `Ksense`,
/// which parses each event as it comes on a thread of its own: in a guest with one CPU that
/// parsing would be billed to the workload.
struct Agent {
    child: Child,
    mode: String,
}

impl Agent {
    fn events(mode: &str) -> String {
        format!("/tmp/bench-{mode}.json")
    }

    fn stderr(mode: &str) -> String {
        format!("/tmp/bench-{mode}.stderr")
    }

    /// Starts `ksense run --output json --attach <mode>` and waits until it runs.
    fn start(mode: &str) -> Agent {
        let create = |path: String| File::create(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
        let child = Command::new(ksense_bin())
            .args(["run", "--output", "json", "--attach", mode])
            .stdin(Stdio::null())
            .stdout(create(Agent::events(mode)))
            .stderr(create(Agent::stderr(mode)))
            .spawn()
            .expect("cannot start ksense");
        let mut agent = Agent { child, mode: mode.to_owned() };
        let deadline = Instant::now() + event_timeout();
        while !agent.said().contains("ksense is running") {
            if let Ok(Some(status)) = agent.child.try_wait() {
                panic!("ksense --attach {mode} exited ({status}) before it ran:\n{}", agent.said());
            }
            assert!(Instant::now() < deadline, "ksense --attach {mode} did not start:\n{}", agent.said());
            std::thread::sleep(Duration::from_millis(50));
        }
        agent
    }

    /// What ksense has logged so far.
    fn said(&self) -> String {
        std::fs::read_to_string(Agent::stderr(&self.mode)).unwrap_or_default()
    }

    /// Stops it with SIGTERM and returns the line's fields: the module loads it delivered, the
    /// hook they came from, and its stop-line counters.
    fn stop(mut self) -> String {
        // SAFETY: signalling our own child, which has not been waited for.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let status = self.child.wait().unwrap();
        let said = self.said();
        assert!(status.success(), "ksense --attach {} exited with {status}:\n{said}", self.mode);
        let totals = stopped_totals(&said).unwrap_or_else(|| panic!("no `ksense stopped:` line:\n{said}"));
        let (delivered, probe) = module_loads(Path::new(&Agent::events(&self.mode)));
        let mut fields = format!("delivered={delivered} probe={probe}");
        for key in TOTALS {
            let value = totals.get(key).unwrap_or_else(|| panic!("no {key} in the `ksense stopped:` line:\n{said}"));
            fields.push_str(&format!(" {key}={value}"));
        }
        fields
    }
}

/// The `kernel.module.load` events of `dummy` in ksense's JSON output, and the hook the first
/// came from (`none` when there were none).
fn module_loads(events: &Path) -> (u64, String) {
    let file = File::open(events).unwrap_or_else(|e| panic!("{}: {e}", events.display()));
    let mut count = 0;
    let mut probe = None;
    for line in BufReader::new(file).split(b'\n') {
        let line = line.unwrap();
        let event: Value = serde_json::from_slice(&line)
            .unwrap_or_else(|e| panic!("ksense printed a line that is not JSON ({e}): {}", String::from_utf8_lossy(&line)));
        if is(&event, "kernel.module.load") && attr(&event, "ksense.kernel.module.name") == "dummy" {
            count += 1;
            probe.get_or_insert_with(|| attr(&event, "ksense.probe").as_str().unwrap_or("?").to_owned());
        }
    }
    (count, probe.unwrap_or_else(|| "none".into()))
}
