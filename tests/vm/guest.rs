//! The VM test's driver inside the guest (`tests/vm/host.rs` boots it): run by `/init` in a
//! busybox initramfs on another kernel, it starts the real ksense once per attach mode
//! (`--attach fentry`, then `--attach tracepoint`), drives real processes and checks the events,
//! with the same harness as the end-to-end tests on the host (`tests/common/mod.rs`).
//!
//! It prints, on the console, one line per hook chosen and one line per check; the host reads
//! them back:
//!
//! ```text
//! vm-probe kernel=6.1.0-56-amd64 mode=fentry event=process.fork probe=fexit/kernel_clone
//! vm-check kernel=6.1.0-56-amd64 mode=fentry check=fork: ok
//! vm-check kernel=6.1.0-56-amd64 mode=fentry check=module: FAIL <first line of the reason>
//!     <the rest of the reason, indented>
//! vm-summary: 13 passed, 1 failed
//! ```
//!
//! With `$KSENSE_VM_BENCH` set (only the benchmark's `/init` sets it) it runs the module
//! load/unload benchmark instead (`guest_bench.rs`).
//!
//! A check that panics fails alone: each runs under `catch_unwind`. The exit status is 0 when
//! every check passed. Binaries are found through `$KSENSE_BIN` and `$KSENSE_WORKLOAD_BIN`, and
//! waits are bounded by `$KSENSE_TEST_TIMEOUT_SECS` (`/init` sets all three).
use std::{
    cell::RefCell,
    panic::{AssertUnwindSafe, catch_unwind},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use ksense_e2e::{Ksense, attr, is, ksense_bin, printed, run_workload, workload_bin};
use serde_json::Value;

mod guest_bench;
mod shared;
use shared::{BENCH_ENV, CHECKS, MODES, PROBES_JSON};
/// The module the `module` check loads (from the kernel's own package).
const MODULE: &str = "/lib/modules/dummy.ko";
/// After a process's own exit event has arrived, how long to wait for an event it caused
/// earlier (they come through one ring buffer, in order, so this is only slack).
const AFTER_EXIT: Duration = Duration::from_secs(3);

thread_local! {
    /// The message and place of the last panic on this thread (the hook keeps it quiet).
    static PANIC: RefCell<Option<String>> = const { RefCell::new(None) };
}

fn main() {
    let started = Instant::now();
    std::panic::set_hook(Box::new(|info| {
        let message = info
            .payload()
            .downcast_ref::<String>()
            .cloned()
            .or_else(|| info.payload().downcast_ref::<&str>().map(|s| s.to_string()))
            .unwrap_or_else(|| "panic".into());
        let at = info.location().map(|l| format!(" (at {}:{})", l.file(), l.line())).unwrap_or_default();
        let name = std::thread::current().name().unwrap_or("?").to_owned();
        if name == "main" {
            PANIC.with(|p| *p.borrow_mut() = Some(format!("{message}{at}")));
        } else {
            // A harness reader thread: not a check, but worth seeing.
            println!("vm-note thread {name} panicked: {message}{at}");
        }
    }));

    if let Ok(spec) = std::env::var(BENCH_ENV) {
        let ok = guest_bench::run(&spec);
        println!("vm-note guest ran for {:.1} s", started.elapsed().as_secs_f64());
        std::process::exit(if ok { 0 } else { 1 });
    }

    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").map(|s| s.trim().to_owned()).unwrap_or_default();
    let mut passed = 0;
    let mut failed = 0;
    for mode in MODES {
        let mut report = |check: &str, result: Result<(), String>| match result {
            Ok(()) => {
                passed += 1;
                println!("vm-check kernel={kernel} mode={mode} check={check}: ok");
            }
            Err(reason) => {
                failed += 1;
                let mut lines = reason.lines();
                println!("vm-check kernel={kernel} mode={mode} check={check}: FAIL {}", lines.next().unwrap_or(""));
                for line in lines {
                    println!("    {line}");
                }
            }
        };

        // `probes` first: the fork check needs the hook it reports.
        let probes = catch(|| probes_report(mode));
        if let Ok(report) = &probes {
            println!("{PROBES_JSON} mode={mode} {report}");
            for kind in report["kinds"].as_array().into_iter().flatten() {
                println!(
                    "vm-probe kernel={kernel} mode={mode} event={} probe={}",
                    kind["event"].as_str().unwrap_or("?"),
                    kind["chosen"].as_str().unwrap_or("none")
                );
            }
        }
        let checked = probes.as_ref().map_err(Clone::clone).and_then(|p| catch(|| check_probes(mode, p)));
        // The default mode must choose what fentry mode does (trampolines first).
        let checked = match (mode, &probes) {
            ("fentry", Ok(fentry)) => checked.and_then(|()| catch(|| check_default_is_fentry(fentry))),
            _ => checked,
        };
        report("probes", checked);
        let probes = probes.ok();
        if mode == "fentry" && probes.as_ref().is_some_and(|p| !any_trampoline(p)) {
            // A kernel without trampolines for kernel functions (arm64 before 6.4): each check
            // would only wait out its timeout.
            for check in &CHECKS[1..] {
                report(check, Err("not run: no fentry/fexit hook attached on this kernel (see the probes check)".into()));
            }
            continue;
        }

        let ksense = match catch(|| Ksense::start(&["--attach", mode])) {
            Ok(ksense) => ksense,
            Err(reason) => {
                for check in &CHECKS[1..] {
                    report(check, Err(format!("ksense --attach {mode} did not start: {reason}")));
                }
                continue;
            }
        };
        report("fork", catch(|| check_fork(&ksense, probes.as_ref())));
        report("exec", catch(|| check_exec(&ksense)));
        report("exit", catch(|| check_exit(&ksense)));
        report("thread", catch(|| check_thread(&ksense)));
        report("module", catch(|| check_module(&ksense, probes.as_ref())));
        report("memory", catch(|| check_memory(&ksense)));
        report("memory-coalesce", catch(|| check_memory_coalesce(&ksense)));
        match catch(|| ksense.stop()) {
            Ok(stopped) => {
                let totals = stopped.stderr.lines().rev().find(|l| l.contains("ksense stopped:")).unwrap_or("(no totals line)");
                println!("vm-note kernel={kernel} mode={mode} exit={} {}", stopped.status, totals.trim());
            }
            Err(reason) => println!("vm-note kernel={kernel} mode={mode} ksense did not stop cleanly: {reason}"),
        }
        report("memory-all", catch(|| check_memory_all(&kernel, mode)));
    }
    println!("vm-note guest ran for {:.1} s", started.elapsed().as_secs_f64());
    println!("vm-summary: {passed} passed, {failed} failed");
    std::process::exit(if failed == 0 { 0 } else { 1 });
}

/// Runs `f`, turning a panic into its message.
fn catch<T>(f: impl FnOnce() -> T) -> Result<T, String> {
    PANIC.with(|p| p.borrow_mut().take());
    catch_unwind(AssertUnwindSafe(f))
        .map_err(|_| PANIC.with(|p| p.borrow_mut().take()).unwrap_or_else(|| "panicked".into()))
}

/// `ksense probes --json --attach <mode>`; with `mode` empty, the default mode.
fn probes_report(mode: &str) -> Value {
    let attach: &[&str] = if mode.is_empty() { &[] } else { &["--attach", mode] };
    let out = Command::new(ksense_bin()).args(["probes", "--json"]).args(attach).output().unwrap();
    assert!(out.status.success(), "ksense probes --attach {mode} failed ({}): {}", out.status, String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("ksense probes printed no JSON ({e}): {}", String::from_utf8_lossy(&out.stdout)))
}

/// The hook chosen for `event`, if any.
fn chosen<'a>(report: &'a Value, event: &str) -> Option<&'a str> {
    report["kinds"].as_array()?.iter().find(|k| k["event"] == event)?["chosen"].as_str()
}

/// Whether any kind chose an fentry or fexit hook.
fn any_trampoline(report: &Value) -> bool {
    report["kinds"].as_array().into_iter().flatten().filter_map(|k| k["chosen"].as_str()).any(|c| c.starts_with("fentry/") || c.starts_with("fexit/"))
}

fn check_probes(mode: &str, report: &Value) {
    let kinds = report["kinds"].as_array().expect("no kinds in the report");
    let mut problems = Vec::new();
    for kind in kinds {
        if kind["enabled"] == false {
            continue;
        }
        let event = kind["event"].as_str().unwrap_or("?");
        let why = || {
            kind["hooks"].as_array().into_iter().flatten()
                .map(|h| format!("{}: {} {}", h["probe"].as_str().unwrap_or("?"), h["status"].as_str().unwrap_or("?"), h["reason"].as_str().unwrap_or("")))
                .collect::<Vec<_>>()
                .join("; ")
        };
        let Some(chosen) = kind["chosen"].as_str() else {
            problems.push(format!("{event}: no hook attached ({})", why()));
            continue;
        };
        let expected = match (mode, event) {
            ("fentry", "process.fork") => Some("fexit/kernel_clone"),
            ("fentry", "process.exec") => Some("tp_btf/sched_process_exec"),
            ("fentry", "process.exit") => Some("fentry/do_exit"),
            _ => None,
        };
        if let Some(expected) = expected
            && chosen != expected
        {
            problems.push(format!("{event}: chose {chosen}, expected {expected} ({})", why()));
        }
        if mode == "tracepoint" && !(chosen.starts_with("tp_btf/") || chosen.starts_with("tracepoint/")) {
            problems.push(format!("{event}: chose {chosen} in tracepoint mode"));
        }
    }
    for event in ["process.fork", "process.exec", "process.exit"] {
        if !kinds.iter().any(|k| k["event"] == event) {
            problems.push(format!("{event}: not in the report"));
        }
    }
    if !problems.is_empty() {
        problems.push(verifier_logs(mode));
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

/// Without `--attach`, ksense chooses per kind the hook fentry mode chose.
fn check_default_is_fentry(fentry: &Value) {
    let default = probes_report("");
    let kinds = fentry["kinds"].as_array().expect("no kinds in the report");
    let differ: Vec<String> = kinds
        .iter()
        .filter_map(|k| {
            let event = k["event"].as_str().unwrap_or("?");
            let chosen = chosen(&default, event);
            (chosen != k["chosen"].as_str()).then(|| format!("{event}: default mode chose {chosen:?}, fentry mode {}", k["chosen"]))
        })
        .collect();
    assert!(differ.is_empty(), "{}", differ.join("\n"));
}

/// The tail of each verifier log that `ksense -v probes` prints for a refused program.
fn verifier_logs(mode: &str) -> String {
    let Ok(out) = Command::new(ksense_bin()).args(["-v", "probes", "--attach", mode]).output() else {
        return "(could not rerun ksense -v probes)".into();
    };
    let stderr = String::from_utf8_lossy(&out.stderr);
    let mut logs = String::new();
    let mut block: Vec<&str> = Vec::new();
    let mut flush = |block: &mut Vec<&str>| {
        if !block.is_empty() {
            logs.push_str(&format!("{}\n", block[0]));
            let tail = block.len().saturating_sub(25).max(1);
            if tail > 1 {
                logs.push_str(&format!("  ... ({} lines)\n", tail - 1));
            }
            for line in &block[tail..] {
                logs.push_str(&format!("  {line}\n"));
            }
            block.clear();
        }
    };
    for line in stderr.lines() {
        if line.contains("the verifier log ends:") {
            flush(&mut block);
            block.push(line);
        } else if !block.is_empty() && !line.starts_with("20") {
            block.push(line);
        } else {
            flush(&mut block);
        }
    }
    flush(&mut block);
    if logs.is_empty() { "(ksense -v probes printed no verifier log)".into() } else { format!("verifier logs (ksense -v probes --attach {mode}):\n{logs}") }
}

/// Waits for the exit of `pid` (the workload, once it returned), then for an event it caused
/// before: they come through one ring buffer in order, so a missing one fails fast.
fn caused_by(ksense: &Ksense, pid: u32, what: &str, predicate: impl Fn(&Value) -> bool) -> Value {
    ksense.wait_for(&format!("exit of pid {pid} (to look for its {what})"), |e| {
        is(e, "process.exit") && attr(e, "process.pid") == pid
    });
    ksense.try_wait_for(AFTER_EXIT, predicate).unwrap_or_else(|| {
        let related: Vec<String> = ksense
            .events()
            .iter()
            .filter(|e| attr(e, "process.pid") == pid || attr(e, "process.parent_pid") == pid)
            .map(|e| format!("{} {}", e["event.name"].as_str().unwrap_or("?"), e["attributes"]))
            .collect();
        panic!(
            "no {what}, although pid {pid} has exited and its exit was reported; events of pid {pid} and its children:\n{}\nksense said:\n{}",
            related.join("\n"),
            ksense.stderr()
        )
    })
}

fn check_fork(ksense: &Ksense, probes: Option<&Value>) {
    let (out, parent) = run_workload(&["fork-exit", "1"]);
    let child = printed(&out, "child");
    let fork = caused_by(ksense, parent, "fork event of the child", |e| is(e, "process.fork") && attr(e, "process.pid") == child);
    assert_eq!(attr(&fork, "process.parent_pid"), parent, "parent pid: {fork}");
    assert_eq!(attr(&fork, "ksense.clone.thread"), false, "{fork}");
    let expected = probes.and_then(|p| chosen(p, "process.fork")).expect("ksense probes reported no hook for process.fork");
    assert_eq!(attr(&fork, "ksense.probe"), expected, "the event came from another hook than `ksense probes` chose: {fork}");
}

fn check_exec(ksense: &Ksense) {
    let bin = workload_bin();
    let bin = bin.to_str().unwrap();
    let args = ["marker", "two words", "line\nbreak"];
    let child = Command::new(bin).args(args).spawn().unwrap();
    let pid = child.id();
    let status = child.wait_with_output().unwrap().status;
    assert!(status.success(), "{bin} marker: {status}");
    let exec = ksense.wait_for("exec of the marker", |e| is(e, "process.exec") && attr(e, "process.pid") == pid);
    let mut expected = vec![bin];
    expected.extend(args);
    assert_eq!(attr(&exec, "process.command_args"), &serde_json::json!(expected), "argv: {exec}");
    assert_eq!(attr(&exec, "ksense.process.exec.path"), bin, "path given to execve: {exec}");
    let canonical = std::fs::canonicalize(bin).unwrap();
    assert_eq!(attr(&exec, "process.executable.path"), canonical.to_str().unwrap(), "canonical path: {exec}");
    // What the exec probe reads at offsets from this kernel's BTF: the executed inode's link
    // count, the controlling terminal and the environment.
    assert_eq!(attr(&exec, "ksense.process.executable.fileless"), false, "a file with a name: {exec}");
    assert!(attr(&exec, "process.interactive").is_boolean(), "interactive: {exec}");

    let preload = "/nonexistent/ksense-vm-preload.so";
    let out = Command::new(bin).args(["memfd-exec"]).env("LD_PRELOAD", preload).stderr(Stdio::null()).output().unwrap();
    assert!(out.status.success(), "{bin} memfd-exec: {}", out.status);
    let fileless = ksense.wait_for("the exec from a memfd", |e| {
        is(e, "process.exec") && attr(e, "ksense.process.executable.fileless") == true
            && attr(e, "process.environment_variable.LD_PRELOAD") == preload
    });
    assert_eq!(fileless["severity"], "WARN", "{fileless}");
}

fn check_exit(ksense: &Ksense) {
    let child = Command::new("/bin/sh").args(["-c", "exit 7"]).spawn().unwrap();
    let pid = child.id();
    assert_eq!(child.wait_with_output().unwrap().status.code(), Some(7));
    let exit = ksense.wait_for("exit of sh -c 'exit 7'", |e| is(e, "process.exit") && attr(e, "process.pid") == pid);
    assert_eq!(attr(&exit, "process.exit.code"), 7, "exit code: {exit}");

    let mut sleeper = Command::new(workload_bin()).args(["sleep", "60"]).spawn().unwrap();
    let pid = sleeper.id();
    // Killed after its exec is seen, so it dies as the workload, not as the forked harness.
    ksense.wait_for("exec of the sleeper", |e| is(e, "process.exec") && attr(e, "process.pid") == pid);
    sleeper.kill().unwrap(); // SIGKILL
    sleeper.wait().unwrap();
    let exit = ksense.wait_for("exit of the killed sleeper", |e| is(e, "process.exit") && attr(e, "process.pid") == pid);
    assert_eq!(attr(&exit, "ksense.process.exit.signal"), 9, "signal: {exit}");
    assert_eq!(exit["severity"], "WARN", "severity: {exit}");
}

fn check_thread(ksense: &Ksense) {
    let (out, pid) = run_workload(&["thread"]);
    let tid = printed(&out, "tid");
    let mut problems = Vec::new();
    match catch(|| caused_by(ksense, pid, "fork event of the thread", |e| is(e, "process.fork") && attr(e, "thread.id") == tid)) {
        Ok(fork) if attr(&fork, "ksense.clone.thread") != true => problems.push(format!("ksense.clone.thread is not true: {fork}")),
        Ok(_) => {}
        Err(reason) => problems.push(reason),
    }
    // The process's exit (awaited above) comes after its thread's would have.
    std::thread::sleep(Duration::from_millis(200));
    let thread_exits: Vec<String> = ksense
        .events()
        .iter()
        .filter(|e| is(e, "process.exit") && attr(e, "thread.id") == tid)
        .map(|e| format!("{} {}", e["body"], e["attributes"]))
        .collect();
    if !thread_exits.is_empty() {
        problems.push(format!("the exit of thread {tid} was reported although thread exits are off by default: {}", thread_exits.join("\n")));
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

/// The kinds `ksense probes` listed, for failure messages.
fn kinds(probes: Option<&Value>) -> String {
    probes
        .and_then(|p| p["kinds"].as_array())
        .map(|k| k.iter().map(|k| format!("{}={}", k["event"].as_str().unwrap_or("?"), k["chosen"].as_str().unwrap_or("none"))).collect::<Vec<_>>().join(", "))
        .unwrap_or_else(|| "no report".into())
}

fn check_module(ksense: &Ksense, probes: Option<&Value>) {
    // Loaded by the previous mode's check if that one failed half-way.
    let _ = Command::new("/bin/rmmod").arg("dummy").stderr(Stdio::null()).status();
    let insmod = Command::new("/bin/insmod").arg(MODULE).stderr(Stdio::piped()).spawn().unwrap();
    let pid = insmod.id();
    let out = insmod.wait_with_output().unwrap();
    let unload = Command::new("/bin/rmmod").arg("dummy").output();
    assert!(out.status.success(), "insmod {MODULE}: {}: {}", out.status, String::from_utf8_lossy(&out.stderr));
    let load = catch(|| {
        caused_by(ksense, pid, "kernel.module.load of dummy", |e| {
            is(e, "kernel.module.load") && attr(e, "ksense.kernel.module.name") == "dummy"
        })
    })
    .unwrap_or_else(|reason| panic!("ksense probes kinds: {}\n{reason}", kinds(probes)));
    assert_eq!(attr(&load, "process.executable.name"), "insmod", "{load}");
    assert_eq!(attr(&load, "process.pid"), pid, "{load}");
    assert_eq!(load["severity"], "WARN", "{load}");
    let unload = unload.unwrap();
    assert!(unload.status.success(), "rmmod dummy: {}", String::from_utf8_lossy(&unload.stderr));
}

fn check_memory(ksense: &Ksense) {
    let mut problems = Vec::new();
    for (workload, region) in [("mprotect-text-rwx", "main_code"), ("mprotect-anon-rx", "anonymous")] {
        if let Err(reason) = catch(|| memory_case(ksense, workload, region)) {
            problems.push(format!("{workload}: {reason}"));
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

/// A toggling loop (RW -> RX -> RW ...) yields a handful of events whose `ksense.event.count`
/// add up to every transition (the tail is reported once the range has been idle a window).
fn check_memory_coalesce(ksense: &Ksense) {
    const N: u64 = 20_000;
    let (_, pid) = run_workload(&["mprotect-toggle", &N.to_string()]);
    let counted = || -> (u64, usize) {
        let events: Vec<Value> = ksense
            .events()
            .into_iter()
            .filter(|e| is(e, "process.memory.protect") && attr(e, "process.pid") == pid)
            .collect();
        (events.iter().map(|e| attr(e, "ksense.event.count").as_u64().unwrap_or(0)).sum(), events.len())
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    while counted().0 < 2 * N && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(200));
    }
    let (total, events) = counted();
    assert_eq!(total, 2 * N, "counts of {events} events add up to {total}, not {}", 2 * N);
    assert!(events < 100, "{events} events for {} transitions: not coalesced", 2 * N);
}

/// With `report = "all"`: a harmless change (RW -> R) is reported, and a failed call carries its
/// errno (on the fentry path through the fexit companion on `do_mprotect_pkey`).
fn check_memory_all(kernel: &str, mode: &str) {
    let config = "/tmp/ksense-memory-all.toml";
    std::fs::write(config, "[memory]\nreport = \"all\"\n").unwrap();
    let ksense = Ksense::start(&["--attach", mode, "--config", config]);
    let (_, pid) = run_workload(&["mprotect-anon-ro"]);
    let ro = caused_by(&ksense, pid, "RW -> R change", |e| {
        is(e, "process.memory.protect") && attr(e, "process.pid") == pid && attr(e, "ksense.memory.protection.new") == "r--"
    });
    assert_eq!(attr(&ro, "ksense.memory.wx"), false, "{ro}");
    assert_eq!(ro["severity"], "INFO", "{ro}");
    let (_, pid) = run_workload(&["mprotect-bad-addr"]);
    let bad = caused_by(&ksense, pid, "failed mprotect", |e| {
        is(e, "process.memory.protect") && attr(e, "process.pid") == pid && attr(e, "ksense.memory.result") == -12
    });
    assert_eq!(attr(&bad, "ksense.memory.protection.new"), "r--", "{bad}");
    println!("vm-note kernel={kernel} mode={mode} memory-all: failed mprotect reported by {}", attr(&bad, "ksense.probe"));
    ksense.stop();
}

/// Runs `ksense-workload <workload>` and checks its `process.memory.protect` event on `region`.
fn memory_case(ksense: &Ksense, workload: &str, region: &str) {
    let (_, pid) = run_workload(&[workload]);
    let on_region = |e: &Value| {
        is(e, "process.memory.protect") && attr(e, "process.pid") == pid && attr(e, "ksense.memory.region") == region
    };
    caused_by(ksense, pid, &format!("process.memory.protect on region {region}"), on_region);
    // The one that made it writable and executable, if several changed that region.
    let events = ksense.events();
    let event = events
        .iter()
        .find(|e| on_region(e) && attr(e, "ksense.memory.wx") == true)
        .or_else(|| events.iter().find(|e| on_region(e)))
        .unwrap();
    assert_eq!(attr(event, "ksense.memory.wx"), true, "wx: {event}");
    if region == "main_code" {
        assert_eq!(event["severity"], "WARN", "severity: {event}");
        assert_eq!(attr(event, "ksense.memory.protection.old"), "r-x", "old protection: {event}");
    }
}
