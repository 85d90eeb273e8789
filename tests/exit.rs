//! `process.exit` end to end: exit codes, signals, thread exits, and ksense's own shutdown.
use ksense_e2e::{Ksense, attr, checks, is, printed, run_workload};

#[test]
fn exit_code_seven() {
    let ksense = Ksense::start(&[]);
    let exit = checks::exit_code_seven(&ksense);
    let canonical = std::fs::canonicalize("/bin/sh").unwrap();
    assert_eq!(attr(&exit, "process.executable.path"), canonical.to_str().unwrap(), "known from the exec: {exit}");
    ksense.stop();
}

#[test]
fn kill_nine_is_reported_at_warn() {
    let ksense = Ksense::start(&[]);
    checks::kill_nine_is_reported_at_warn(&ksense);
    ksense.stop();
}

#[test]
fn thread_exits_are_not_reported_by_default() {
    let ksense = Ksense::start(&[]);
    let (out, pid) = run_workload(&["thread"]);
    let tid = printed(&out, "tid");
    ksense.wait_for("exit of the process", |e| is(e, "process.exit") && attr(e, "process.pid") == pid);
    let stopped = ksense.stop();
    let thread_exits: Vec<_> = stopped
        .events
        .iter()
        .filter(|e| is(e, "process.exit") && attr(e, "thread.id") == tid)
        .collect();
    assert!(thread_exits.is_empty(), "thread exit reported: {thread_exits:?}");
}

#[test]
fn thread_exits_are_reported_when_configured() {
    let config = std::env::temp_dir().join(format!("ksense-thread-exits-{}.toml", std::process::id()));
    std::fs::write(&config, "[probes]\nthread_exits = true\n").unwrap();
    let ksense = Ksense::start(&["--config", config.to_str().unwrap()]);
    let (out, pid) = run_workload(&["thread"]);
    let tid = printed(&out, "tid");
    let exit = ksense.wait_for("exit of the thread", |e| is(e, "process.exit") && attr(e, "thread.id") == tid);
    assert_eq!(attr(&exit, "process.pid"), pid, "{exit}");
    assert_eq!(attr(&exit, "ksense.process.exit.thread"), true, "{exit}");
    let exit = ksense.wait_for("exit of the process", |e| is(e, "process.exit") && attr(e, "thread.id") == pid);
    assert_eq!(attr(&exit, "ksense.process.exit.thread"), false, "{exit}");
    ksense.stop();
    std::fs::remove_file(config).unwrap();
}

#[test]
fn main_thread_exiting_first_leaves_one_process() {
    let ksense = Ksense::start(&[]);
    checks::main_thread_exiting_first_leaves_one_process(&ksense);
    ksense.stop();
}

#[test]
fn sigterm_stops_cleanly_with_totals() {
    let ksense = Ksense::start(&[]);
    let (_, pid) = run_workload(&["marker"]);
    ksense.wait_for("exit of the marker", |e| is(e, "process.exit") && attr(e, "process.pid") == pid);
    let stopped = ksense.stop();
    assert!(stopped.status.success(), "ksense exited with {:?}:\n{}", stopped.status, stopped.stderr);
    assert!(stopped.counter("events_read") >= 3, "{}", stopped.stderr);
    assert_eq!(stopped.counter("decode_errors"), 0, "{}", stopped.stderr);
}
