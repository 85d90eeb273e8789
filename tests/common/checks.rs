//! The checks of what ksense reports for real processes that run both on this host (the
//! end-to-end tests, `tests/*.rs`) and on other kernels in qemu (the VM guest,
//! `tests/vm/guest.rs`): one implementation each, so a check asserts the same wherever it runs.
//! Each drives a real process through a running [`Ksense`] and panics with what is wrong; what
//! holds only on this host (its users, its cgroups, default attach mode) stays in the host tests.
use std::{
    ffi::OsStr,
    os::unix::ffi::OsStrExt,
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use serde_json::Value;

use crate::{Ksense, attr, event_timeout, is, ksense_bin, printed, printed_hex, run_workload, workload_bin};

/// After a process's own exit event has arrived, how long to wait for an event it caused
/// earlier (they come through one ring buffer, in order, so this is only slack).
const AFTER_EXIT: Duration = Duration::from_secs(3);

/// How long a toggling loop's coalesced counts may take to add up once it has exited (the tail
/// is reported once the range has been idle a window).
const COALESCED_TAIL: Duration = Duration::from_secs(30);

/// The configuration that makes ksense report every memory protection change (`report = "all"`).
pub const MEMORY_REPORT_ALL: &str = "[memory]\nreport = \"all\"\n";

/// `ksense probes --json --attach <mode>`; with `mode` empty, the default mode.
pub fn probes_report(mode: &str) -> Value {
    let attach: &[&str] = if mode.is_empty() { &[] } else { &["--attach", mode] };
    let out = Command::new(ksense_bin()).args(["probes", "--json"]).args(attach).output().unwrap();
    assert!(out.status.success(), "ksense probes --attach {mode} failed ({}): {}", out.status, String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("ksense probes printed no JSON ({e}): {}", String::from_utf8_lossy(&out.stdout)))
}

/// The hook `ksense probes --json` chose for `event`, if any.
pub fn chosen<'a>(report: &'a Value, event: &str) -> Option<&'a str> {
    report["kinds"].as_array()?.iter().find(|k| k["event"] == event)?["chosen"].as_str()
}

/// Waits for the exit of `pid` (a process that has returned), then for an event it caused
/// before: they come through one ring buffer in order, so a missing one fails fast. The error
/// says what was missing, with the events of `pid` and its children.
pub fn try_caused_by(ksense: &Ksense, pid: u32, what: &str, predicate: impl Fn(&Value) -> bool) -> Result<Value, String> {
    let timeout = event_timeout();
    let exited = |e: &Value| is(e, "process.exit") && attr(e, "process.pid") == pid;
    if ksense.try_wait_for(timeout, exited).is_none() {
        return Err(format!("no exit of pid {pid} (to look for its {what}) within {timeout:?}; ksense said:\n{}", ksense.stderr()));
    }
    ksense.try_wait_for(AFTER_EXIT, predicate).ok_or_else(|| {
        let related: Vec<String> = ksense
            .events()
            .iter()
            .filter(|e| attr(e, "process.pid") == pid || attr(e, "process.parent_pid") == pid)
            .map(|e| format!("{} {}", e["event.name"].as_str().unwrap_or("?"), e["attributes"]))
            .collect();
        format!(
            "no {what}, although pid {pid} has exited and its exit was reported; events of pid {pid} and its children:\n{}\nksense said:\n{}",
            related.join("\n"),
            ksense.stderr()
        )
    })
}

/// [`try_caused_by`], panicking with its error.
pub fn caused_by(ksense: &Ksense, pid: u32, what: &str, predicate: impl Fn(&Value) -> bool) -> Value {
    try_caused_by(ksense, pid, what, predicate).unwrap_or_else(|reason| panic!("{reason}"))
}

/// A forked child is reported with its parent, as a process (not a thread), at INFO, by the
/// hook `probe` (the one `ksense probes` chose). Returns the event.
pub fn fork_names_parent_and_child(ksense: &Ksense, probe: &str) -> Value {
    let (out, parent) = run_workload(&["fork-exit", "1"]);
    let child = printed(&out, "child");
    let fork = caused_by(ksense, parent, "fork event of the child", |e| is(e, "process.fork") && attr(e, "process.pid") == child);
    assert_eq!(attr(&fork, "process.parent_pid"), parent, "parent pid: {fork}");
    assert_eq!(attr(&fork, "thread.id"), child, "{fork}");
    assert_eq!(attr(&fork, "process.executable.name"), "ksense-workload", "{fork}");
    assert_eq!(attr(&fork, "ksense.clone.thread"), false, "{fork}");
    assert_eq!(fork["severity"], "INFO", "{fork}");
    assert_eq!(attr(&fork, "ksense.probe"), probe, "the event came from another hook than `ksense probes` chose: {fork}");
    fork
}

/// A thread's creation is a `process.fork` flagged `ksense.clone.thread`, in its process; its
/// exit is not reported (thread exits are off by default).
pub fn thread_is_flagged_and_its_exit_not_reported(ksense: &Ksense) {
    let (out, pid) = run_workload(&["thread"]);
    let tid = printed(&out, "tid");
    let mut problems = Vec::new();
    let started = caused_by(ksense, pid, "exec", |e| is(e, "process.exec") && attr(e, "process.pid") == pid)["attributes"]
        ["process.creation.time"]
        .clone();
    match try_caused_by(ksense, pid, "fork event of the thread", |e| is(e, "process.fork") && attr(e, "thread.id") == tid) {
        Ok(fork) if attr(&fork, "ksense.clone.thread") != true => problems.push(format!("ksense.clone.thread is not true: {fork}")),
        Ok(fork) if attr(&fork, "process.pid") != pid => problems.push(format!("the thread is not in its process {pid}: {fork}")),
        Ok(fork) if attr(&fork, "process.creation.time") != &started => {
            problems.push(format!("the thread's fork has not its process's creation time {started}: {fork}"))
        }
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

/// A process whose main thread exits first, alone, and whose other thread then exits: the
/// exec, the thread's fork and the process's exit (reported by that last thread) are one
/// process, with one `process.creation.time`, and the exit is described by the exec's image.
pub fn main_thread_exiting_first_leaves_one_process(ksense: &Ksense) {
    let (out, pid) = run_workload(&["leader-exits-first"]);
    let tid = printed(&out, "tid");
    let exit = caused_by(ksense, pid, "exit", |e| is(e, "process.exit") && attr(e, "process.pid") == pid);
    let exec = caused_by(ksense, pid, "exec", |e| is(e, "process.exec") && attr(e, "process.pid") == pid);
    let fork = caused_by(ksense, pid, "thread's fork", |e| is(e, "process.fork") && attr(e, "thread.id") == tid);
    assert_eq!(attr(&exit, "thread.id"), tid, "the last thread reports the process's exit: {exit}");
    for event in [&fork, &exit] {
        assert_eq!(attr(event, "process.creation.time"), attr(&exec, "process.creation.time"), "{event}\nexec: {exec}");
    }
    assert!(attr(&exec, "process.executable.path").is_string(), "{exec}");
    for name in ["process.executable.path", "process.command_args"] {
        assert_eq!(attr(&exit, name), attr(&exec, name), "{name} of the exit:\n{exit}\nexec: {exec}");
    }
}

/// The workload run with awkward arguments (spaces, quotes, a line break, an empty one, a byte
/// that is not UTF-8): its exec event carries argv exactly (the escaped form only for what is
/// not UTF-8), the same joined as the command line, the path given to execve, the canonical path
/// and name of the file executed, its parent (this process) and its thread id. Returns the event.
pub fn exec_reports_exact_argv_and_path(ksense: &Ksense) -> Value {
    let args: [&[u8]; 6] = [b"marker", b"two words", b"\"quoted\" 'single'", b"line\nbreak", b"", b"bad\xffbyte"];
    let shown = ["marker", "two words", "\"quoted\" 'single'", "line\nbreak", "", "bad\\xffbyte"];
    let bin = workload_bin();
    let bin = bin.to_str().unwrap();
    let child = Command::new(bin).args(args.iter().map(|a| OsStr::from_bytes(a))).spawn().unwrap();
    let pid = child.id();
    let status = child.wait_with_output().unwrap().status;
    assert!(status.success(), "{bin} {args:?}: {status}");
    let exec = ksense.wait_for("exec of the marker", |e| is(e, "process.exec") && attr(e, "process.pid") == pid);
    let expected: Vec<&str> = [bin].into_iter().chain(shown.iter().copied()).collect();
    assert_eq!(attr(&exec, "process.command_args"), &serde_json::json!(expected), "argv: {exec}");
    assert_eq!(attr(&exec, "process.command_line"), expected.join(" ").as_str(), "command line: {exec}");
    assert_eq!(attr(&exec, "ksense.process.exec.path"), bin, "path given to execve: {exec}");
    let canonical = std::fs::canonicalize(bin).unwrap();
    assert_eq!(attr(&exec, "process.executable.path"), canonical.to_str().unwrap(), "canonical path: {exec}");
    assert_eq!(attr(&exec, "process.executable.name"), "ksense-workload", "{exec}");
    assert_eq!(attr(&exec, "process.parent_pid"), std::process::id(), "{exec}");
    assert_eq!(attr(&exec, "thread.id"), pid, "{exec}");
    exec
}

/// [`exec_reports_exact_argv_and_path`], then what the exec probe reads at offsets from this
/// kernel's BTF: the executed inode's link count (a file with a name is not fileless, a memfd
/// is, at WARN), the controlling terminal, and `LD_PRELOAD` from the new image's environment.
pub fn exec_reads_the_new_image(ksense: &Ksense) {
    let exec = exec_reports_exact_argv_and_path(ksense);
    assert_eq!(attr(&exec, "ksense.process.executable.fileless"), false, "a file with a name: {exec}");
    assert!(attr(&exec, "process.interactive").is_boolean(), "interactive: {exec}");

    let bin = workload_bin();
    let preload = "/nonexistent/ksense-preload.so";
    let out = Command::new(&bin).arg("memfd-exec").env("LD_PRELOAD", preload).stderr(Stdio::null()).output().unwrap();
    assert!(out.status.success(), "{} memfd-exec: {}", bin.display(), out.status);
    let fileless = ksense.wait_for("the exec from a memfd", |e| {
        is(e, "process.exec")
            && attr(e, "ksense.process.executable.fileless") == true
            && attr(e, "process.environment_variable.LD_PRELOAD") == preload
    });
    assert_eq!(fileless["severity"], "WARN", "{fileless}");
}

/// `sh -c 'exit 7'`: its exit carries code 7, no signal, no core dump, its time, at INFO.
/// Returns the event.
pub fn exit_code_seven(ksense: &Ksense) -> Value {
    let child = Command::new("/bin/sh").args(["-c", "exit 7"]).spawn().unwrap();
    let pid = child.id();
    assert_eq!(child.wait_with_output().unwrap().status.code(), Some(7));
    let exit = ksense.wait_for("exit of sh -c 'exit 7'", |e| is(e, "process.exit") && attr(e, "process.pid") == pid);
    assert_eq!(attr(&exit, "process.exit.code"), 7, "exit code: {exit}");
    assert_eq!(exit["severity"], "INFO", "severity: {exit}");
    assert!(attr(&exit, "ksense.process.exit.signal").is_null(), "{exit}");
    assert_eq!(attr(&exit, "ksense.process.exit.core_dumped"), false, "{exit}");
    assert_eq!(attr(&exit, "ksense.process.exit.thread"), false, "the process's exit: {exit}");
    assert!(attr(&exit, "process.exit.time").is_string(), "{exit}");
    exit
}

/// A process killed with SIGKILL: its exit carries signal 9 and no code, says SIGKILL, at WARN.
/// Returns the event.
pub fn kill_nine_is_reported_at_warn(ksense: &Ksense) -> Value {
    let mut sleeper = Command::new(workload_bin()).args(["sleep", "60"]).spawn().unwrap();
    let pid = sleeper.id();
    // Killed after its exec is seen, so it dies as the workload, not as the forked harness.
    ksense.wait_for("exec of the sleeper", |e| is(e, "process.exec") && attr(e, "process.pid") == pid);
    sleeper.kill().unwrap(); // SIGKILL
    sleeper.wait().unwrap();
    let exit = ksense.wait_for("exit of the killed sleeper", |e| is(e, "process.exit") && attr(e, "process.pid") == pid);
    assert_eq!(attr(&exit, "ksense.process.exit.signal"), 9, "signal: {exit}");
    assert_eq!(exit["severity"], "WARN", "severity: {exit}");
    assert!(attr(&exit, "process.exit.code").is_null(), "{exit}");
    assert!(exit["body"].as_str().unwrap_or_default().contains("SIGKILL"), "{exit}");
    exit
}

/// Runs `ksense-workload <workload>`, which changes the protection of the page it prints, and
/// returns the change reported at that page with protection `new`.
fn memory_change(ksense: &Ksense, workload: &str, new: &str) -> Value {
    let (out, pid) = run_workload(&[workload]);
    let page = format!("{:#x}", printed_hex(&out, "page"));
    caused_by(ksense, pid, &format!("{workload}: process.memory.protect to {new} at {page}"), |e| {
        is(e, "process.memory.protect")
            && attr(e, "process.pid") == pid
            && attr(e, "ksense.memory.start") == page.as_str()
            && attr(e, "ksense.memory.protection.new") == new
    })
}

/// A process's own text page made RWX: a W^X change of `main_code` from `r-x`, one page, at
/// WARN. Returns the event.
pub fn own_text_made_rwx_is_main_code_wx_at_warn(ksense: &Ksense) -> Value {
    let rwx = memory_change(ksense, "mprotect-text-rwx", "rwx");
    assert_eq!(attr(&rwx, "ksense.memory.length"), 4096, "{rwx}");
    assert_eq!(attr(&rwx, "ksense.memory.region"), "main_code", "{rwx}");
    assert_eq!(attr(&rwx, "ksense.memory.protection.old"), "r-x", "old protection: {rwx}");
    assert_eq!(attr(&rwx, "ksense.memory.wx"), true, "wx: {rwx}");
    assert_eq!(rwx["severity"], "WARN", "severity: {rwx}");
    rwx
}

/// An anonymous page made executable (RW -> RX): a W^X change of an `anonymous` region, by
/// `mprotect` (its `mmap`, read-write, is not reported). Returns the event.
pub fn anonymous_code_made_executable_is_wx(ksense: &Ksense) -> Value {
    let rx = memory_change(ksense, "mprotect-anon-rx", "r-x");
    assert_eq!(attr(&rx, "ksense.memory.region"), "anonymous", "{rx}");
    assert_eq!(attr(&rx, "ksense.memory.wx"), true, "wx: {rx}");
    assert_eq!(attr(&rx, "ksense.memory.operation"), "mprotect", "{rx}");
    let pid = attr(&rx, "process.pid").clone();
    let mappings = mappings_of(ksense, &pid);
    assert!(mappings.is_empty(), "the read-write mmap was reported: {mappings:?}");
    rx
}

/// The `mmap` records of process `pid` so far.
fn mappings_of(ksense: &Ksense, pid: &Value) -> Vec<Value> {
    ksense
        .events()
        .into_iter()
        .filter(|e| is(e, "process.memory.protect") && attr(e, "process.pid") == pid && attr(e, "ksense.memory.operation") == "mmap")
        .collect()
}

/// A mapping names the program that saw it: the fexit on `mmap_region` or the `mmap` syscall's
/// exit tracepoint, not the `mprotect` one of the same hook.
fn assert_mmap_probe(mapping: &Value) {
    let probe = attr(mapping, "ksense.probe");
    assert!(probe == "fexit/mmap_region" || probe == "tracepoint/syscalls/sys_exit_mmap", "{mapping}");
}

/// An anonymous page mapped RWX by `mmap`: a W^X mapping of an `anonymous` region, with no old
/// protection, at WARN. Returns the event.
pub fn anonymous_rwx_mapping_is_wx(ksense: &Ksense) -> Value {
    anonymous_rwx_mapping(ksense, "mmap-anon-rwx")
}

/// [`anonymous_rwx_mapping_is_wx`] for a shared anonymous page, which the kernel backs with a
/// file of its own: still `anonymous`, without a file. Returns the event.
pub fn shared_anonymous_rwx_mapping_is_wx(ksense: &Ksense) -> Value {
    let rwx = anonymous_rwx_mapping(ksense, "mmap-shared-anon-rwx");
    assert!(attr(&rwx, "ksense.memory.file.path").is_null(), "{rwx}");
    rwx
}

/// The checks of [`anonymous_rwx_mapping_is_wx`] on the mapping `workload` makes.
fn anonymous_rwx_mapping(ksense: &Ksense, workload: &str) -> Value {
    let rwx = memory_change(ksense, workload, "rwx");
    assert_eq!(attr(&rwx, "ksense.memory.operation"), "mmap", "{rwx}");
    assert_mmap_probe(&rwx);
    assert_eq!(attr(&rwx, "ksense.memory.length"), 4096, "{rwx}");
    assert_eq!(attr(&rwx, "ksense.memory.region"), "anonymous", "{rwx}");
    assert!(attr(&rwx, "ksense.memory.protection.old").is_null(), "a new mapping has no old protection: {rwx}");
    assert_eq!(attr(&rwx, "ksense.memory.wx"), true, "wx: {rwx}");
    assert_eq!(attr(&rwx, "ksense.memory.result"), 0, "{rwx}");
    assert_eq!(rwx["severity"], "WARN", "severity: {rwx}");
    rwx
}

/// A file page mapped read-only and executable (as every shared library is) is not reported;
/// one mapped writable and executable is, as W^X with its file (the program's own: `main_code`).
/// Returns the latter's event.
pub fn only_writable_executable_file_mappings_are_reported(ksense: &Ksense) -> Value {
    let (_, read_only) = run_workload(&["mmap-file-rx"]);
    let rwx = memory_change(ksense, "mmap-file-rwx", "rwx");
    assert_eq!(attr(&rwx, "ksense.memory.operation"), "mmap", "{rwx}");
    assert_mmap_probe(&rwx);
    assert_eq!(attr(&rwx, "ksense.memory.wx"), true, "wx: {rwx}");
    let file = attr(&rwx, "ksense.memory.file.path").as_str().unwrap_or_default();
    assert!(file.ends_with("/ksense-workload"), "file: {rwx}");
    // The syscall tracepoints' programs of kernels before 5.17 (no `bpf_find_vma`: they walk
    // the VMA tree, near the verifier's limit) tell only the mappings exec made as the
    // program's own.
    let own = if attr(&rwx, "ksense.probe") == "tracepoint/syscalls/sys_exit_mmap" && !kernel_at_least(5, 17) {
        "library_code"
    } else {
        "main_code"
    };
    assert_eq!(attr(&rwx, "ksense.memory.region"), own, "a mapping of the program's own file: {rwx}");
    // The read-only mapper exited before the other started: its events would be out by now.
    let reported = mappings_of(ksense, &Value::from(read_only));
    assert!(reported.is_empty(), "a read-only executable file mapping was reported: {reported:?}");
    rwx
}

/// Whether the running kernel is `major.minor` or newer.
fn kernel_at_least(major: u32, minor: u32) -> bool {
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").expect("/proc/sys/kernel/osrelease");
    let mut numbers = release.trim().split(['.', '-']).map(|n| n.parse::<u32>().unwrap_or(0));
    (numbers.next().unwrap_or(0), numbers.next().unwrap_or(0)) >= (major, minor)
}

/// `n` RW/RX round trips yield a handful of events whose `ksense.event.count` add up to every
/// transition. Returns the workload's output and the number of events.
pub fn toggling_is_coalesced(ksense: &Ksense, n: u64) -> (String, usize) {
    let (out, pid) = run_workload(&["mprotect-toggle", &n.to_string()]);
    let counted = || -> (u64, usize) {
        let events: Vec<Value> = ksense
            .events()
            .into_iter()
            .filter(|e| is(e, "process.memory.protect") && attr(e, "process.pid") == pid)
            .collect();
        (events.iter().map(|e| attr(e, "ksense.event.count").as_u64().unwrap_or(0)).sum(), events.len())
    };
    let deadline = Instant::now() + COALESCED_TAIL;
    while counted().0 < 2 * n && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(200));
    }
    let (total, events) = counted();
    assert_eq!(total, 2 * n, "counts of {events} events add up to {total}, not {}", 2 * n);
    assert!(events < 100, "{events} events for {} transitions: not coalesced", 2 * n);
    (out, events)
}

/// With [`MEMORY_REPORT_ALL`]: a harmless change (RW -> R) is reported, not as W^X, at INFO.
pub fn read_only_change_is_reported_with_all(ksense: &Ksense) {
    let ro = memory_change(ksense, "mprotect-anon-ro", "r--");
    assert_eq!(attr(&ro, "ksense.memory.wx"), false, "{ro}");
    assert_eq!(ro["severity"], "INFO", "{ro}");
}

/// With [`MEMORY_REPORT_ALL`]: a failed call is reported with its errno (ENOMEM). Returns the
/// event.
pub fn failed_call_reports_its_errno_with_all(ksense: &Ksense) -> Value {
    let bad = memory_change(ksense, "mprotect-bad-addr", "r--");
    assert_eq!(attr(&bad, "ksense.memory.result"), -12, "ENOMEM: {bad}");
    bad
}
