//! The VM test's driver inside the guest (`tests/vm/host.rs` boots it): run by `/init` in a
//! busybox initramfs on another kernel, it starts the real ksense once per attach mode
//! (`--attach fentry`, then `--attach tracepoint`), drives real processes and checks the events,
//! with the same harness and the same checks as the end-to-end tests on the host
//! (`tests/common/mod.rs`, `tests/common/checks.rs`).
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
    time::Instant,
};

use ksense_e2e::{Ksense, attr, checks, is, ksense_bin, temp_config};
use serde_json::Value;

mod guest_bench;
mod shared;
use shared::{BENCH_ENV, CHECKS, MODES, PROBES_JSON};
/// The module the `module` check loads (from the kernel's own package).
const MODULE: &str = "/lib/modules/dummy.ko";
/// The RW/RX round trips of the `memory-coalesce` check (fewer than on the host: qemu's
/// software emulation is slow).
const COALESCE_ROUND_TRIPS: u64 = 20_000;

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
        let probes = catch(|| checks::probes_report(mode));
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
        report("exec", catch(|| checks::exec_reads_the_new_image(&ksense)));
        report("exit", catch(|| check_exit(&ksense)));
        report("thread", catch(|| {
            checks::thread_is_flagged_and_its_exit_not_reported(&ksense);
            checks::main_thread_exiting_first_leaves_one_process(&ksense);
        }));
        report("module", catch(|| check_module(&ksense, probes.as_ref())));
        report("memory", catch(|| check_memory(&ksense)));
        report("memory-mmap", catch(|| check_memory_mmap(&ksense)));
        report("memory-coalesce", catch(|| {
            checks::toggling_is_coalesced(&ksense, COALESCE_ROUND_TRIPS);
        }));
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
    let default = checks::probes_report("");
    let kinds = fentry["kinds"].as_array().expect("no kinds in the report");
    let differ: Vec<String> = kinds
        .iter()
        .filter_map(|k| {
            let event = k["event"].as_str().unwrap_or("?");
            let chosen = checks::chosen(&default, event);
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

/// The fork check with the hook `ksense probes` chose for `process.fork`.
fn check_fork(ksense: &Ksense, probes: Option<&Value>) {
    let probe = probes.and_then(|p| checks::chosen(p, "process.fork")).expect("ksense probes reported no hook for process.fork");
    checks::fork_names_parent_and_child(ksense, probe);
}

/// An exit code, then a SIGKILL.
fn check_exit(ksense: &Ksense) {
    checks::exit_code_seven(ksense);
    checks::kill_nine_is_reported_at_warn(ksense);
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
    let load = checks::try_caused_by(ksense, pid, "kernel.module.load of dummy", |e| {
        is(e, "kernel.module.load") && attr(e, "ksense.kernel.module.name") == "dummy"
    })
    .unwrap_or_else(|reason| panic!("ksense probes kinds: {}\n{reason}", kinds(probes)));
    assert_eq!(attr(&load, "process.executable.name"), "insmod", "{load}");
    assert_eq!(attr(&load, "process.pid"), pid, "{load}");
    assert_eq!(load["severity"], "WARN", "{load}");
    let unload = unload.unwrap();
    assert!(unload.status.success(), "rmmod dummy: {}", String::from_utf8_lossy(&unload.stderr));
}

/// A process's own text made RWX, and anonymous memory made executable, are each reported as
/// W^X changes of their region.
fn check_memory(ksense: &Ksense) {
    each_case(ksense, &[
        ("mprotect-text-rwx", checks::own_text_made_rwx_is_main_code_wx_at_warn),
        ("mprotect-anon-rx", checks::anonymous_code_made_executable_is_wx),
    ]);
}

/// Executable mappings made by `mmap`: an anonymous RWX one, private or shared, is reported as a
/// W^X `mmap`, a writable executable file mapping too and a read-only executable one not at all.
fn check_memory_mmap(ksense: &Ksense) {
    each_case(ksense, &[
        ("mmap-anon-rwx", checks::anonymous_rwx_mapping_is_wx),
        ("mmap-shared-anon-rwx", checks::shared_anonymous_rwx_mapping_is_wx),
        ("mmap-file-rx, mmap-file-rwx", checks::only_writable_executable_file_mappings_are_reported),
    ]);
}

/// Runs every `(workloads, check)` case, whatever the others gave, and fails with the problems
/// of all that failed.
fn each_case(ksense: &Ksense, cases: &[(&str, fn(&Ksense) -> Value)]) {
    let problems: Vec<String> =
        cases.iter().filter_map(|(workload, check)| catch(|| check(ksense)).err().map(|reason| format!("{workload}: {reason}"))).collect();
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

/// With `report = "all"`: a harmless change (RW -> R) is reported, and a failed call carries its
/// errno (on the fentry path through the fexit companion on `do_mprotect_pkey`).
fn check_memory_all(kernel: &str, mode: &str) {
    let config = temp_config("memory-all", checks::MEMORY_REPORT_ALL);
    let ksense = Ksense::start(&["--attach", mode, "--config", config.to_str().unwrap()]);
    checks::read_only_change_is_reported_with_all(&ksense);
    let bad = checks::failed_call_reports_its_errno_with_all(&ksense);
    println!("vm-note kernel={kernel} mode={mode} memory-all: failed mprotect reported by {}", attr(&bad, "ksense.probe"));
    ksense.stop();
}
