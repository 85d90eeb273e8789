//! Lineage end to end: the parent's executable and command line and the chain of ancestors
//! (`ksense.process.lineage`) on every event, from ksense's process table, in the JSON line, the
//! journal entry and the OTLP record; and for processes that started before ksense, from the
//! table it seeds from `/proc` at start.
use std::{
    collections::BTreeSet,
    process::Command,
    time::{Duration, Instant},
};

use ksense_e2e::{
    Ksense, attr, is,
    collector::Collector,
    journald::{Run, short, value, values},
    workload_bin,
};
use serde_json::Value;

/// The canonical path of `path`, as ksense reports executables.
fn canonical(path: impl AsRef<std::path::Path>) -> String {
    std::fs::canonicalize(path).unwrap().to_str().unwrap().to_owned()
}

/// The lineage of a JSON record, as texts.
fn lineage(event: &Value) -> Vec<String> {
    let items = attr(event, "ksense.process.lineage").as_array().unwrap_or_else(|| panic!("no lineage: {event}"));
    items.iter().map(|item| item.as_str().unwrap().to_owned()).collect()
}

/// Checks that `lineage` continues with this test process and ends at pid 1 (processes that
/// started before ksense, so known from the table it seeded).
fn ends_with_this_test_and_pid_1(lineage: &[String], from: usize, event: &Value) {
    let this = format!("{}:{}", std::process::id(), canonical(std::env::current_exe().unwrap()));
    assert_eq!(lineage.get(from), Some(&this), "{event}");
    assert!(lineage.last().unwrap().starts_with("1:"), "a complete chain ends at pid 1: {event}");
    assert!(lineage.len() <= 16, "{event}");
}

/// Three shells, one inside the other, the innermost running a marker (`; true` keeps each
/// shell from exec'ing its last command in its own place): the marker's exec record names the
/// innermost shell as its parent, with its command line, and its lineage is the three shells,
/// innermost first, then this test, up to pid 1. The same in all three sinks.
#[test]
fn a_chain_of_shells_is_the_lineage_of_its_marker() {
    let collector = Collector::start();
    let otlp = format!("[sinks.otlp]\nendpoint = \"http://127.0.0.1:{}\"\n", collector.grpc_port);
    let run = Run::start_with("lineage-chain", &otlp);
    let marker = format!("{} marker lineage-chain; true", workload_bin().to_str().unwrap());
    let inner = format!("sh -c '{marker}'; true");
    let script = format!("sh -c \"{inner}\"; true");
    let child = Command::new("/bin/sh").args(["-c", &script]).spawn().unwrap();
    let outer = child.id();
    assert!(child.wait_with_output().unwrap().status.success());

    let exec = run.ksense.wait_for("exec of the marker", |e| {
        is(e, "process.exec") && attr(e, "process.command_args").get(2).is_some_and(|a| a == "lineage-chain")
    });
    let shell = canonical("/bin/sh");
    assert_eq!(attr(&exec, "ksense.process.parent.executable.path"), shell.as_str(), "{exec}");
    assert_eq!(attr(&exec, "ksense.process.parent.command_line"), format!("sh -c {marker}").as_str(), "{exec}");
    let lineage = lineage(&exec);
    let innermost = attr(&exec, "process.parent_pid").as_u64().unwrap();
    assert_eq!(lineage[0], format!("{innermost}:{shell}"), "{exec}");
    let middle = run.ksense.wait_for("exec of the innermost shell", |e| is(e, "process.exec") && attr(e, "process.pid") == innermost);
    let middle = attr(&middle, "process.parent_pid").as_u64().unwrap();
    assert_eq!(lineage[1], format!("{middle}:{shell}"), "{exec}");
    assert_eq!(lineage[2], format!("{outer}:{shell}"), "{exec}");
    ends_with_this_test_and_pid_1(&lineage, 3, &exec);

    let pid = attr(&exec, "process.pid").as_u64().unwrap();
    let entry = run.entry(&["SYSLOG_IDENTIFIER=ksense", "KSENSE_EVENT=process.exec", &format!("PROCESS_PID={pid}")]);
    assert_eq!(value(&entry, "KSENSE_PROCESS_PARENT_EXECUTABLE_PATH"), shell, "{}", short(&entry));
    assert_eq!(value(&entry, "KSENSE_PROCESS_PARENT_COMMAND_LINE"), format!("sh -c {marker}"), "{}", short(&entry));
    // journalctl prints a repeated field's values in an order of its own.
    let journal: BTreeSet<Vec<u8>> = values(&entry, "KSENSE_PROCESS_LINEAGE").into_iter().collect();
    assert_eq!(journal, lineage.iter().map(|l| l.as_bytes().to_vec()).collect(), "{}", short(&entry));

    let pid_attr = format!("Int({pid})");
    let record = collector.wait_for("exec of the marker", |r| r.event_name == "process.exec" && r.attributes.get("process.pid") == Some(&pid_attr));
    assert_eq!(record.attributes.get("ksense.process.parent.executable.path"), Some(&format!("Str({shell})")), "{record:?}");
    let otlp_lineage = record.attributes.get("ksense.process.lineage").unwrap_or_else(|| panic!("no lineage: {record:?}"));
    assert!(otlp_lineage.starts_with(&format!("Slice(Str({})", lineage[0])), "a typed array: {otlp_lineage}");
    let stopped = run.ksense.stop();
    assert_eq!(stopped.counter("sink_otlp_failed") + stopped.counter("sink_journald_failed"), 0, "{}", stopped.stderr);
}

/// A shell that started `sleep` before ksense ran: neither was ever seen forking or exec'ing,
/// yet the sleep's exit (killed) names the shell as its parent, and its lineage, like that of
/// the marker the shell runs next, goes up to pid 1 through this test, from the table seeded
/// from `/proc` at start.
#[test]
fn processes_older_than_ksense_have_a_lineage() {
    let marker = format!("{} marker lineage-seeded", workload_bin().to_str().unwrap());
    let script = format!("sleep 30; {marker}");
    let mut shell = Command::new("/bin/sh").args(["-c", &script]).spawn().unwrap();
    let shell_pid = shell.id();
    let children = format!("/proc/{shell_pid}/task/{shell_pid}/children");
    let deadline = Instant::now() + Duration::from_secs(10);
    let sleep: u32 = loop {
        let listed = std::fs::read_to_string(&children).unwrap();
        if let Some(pid) = listed.split_whitespace().next() {
            let pid = pid.parse().unwrap();
            // The child runs sleep once it exec'd (before, it is a copy of the shell).
            if std::fs::read_to_string(format!("/proc/{pid}/comm")).is_ok_and(|c| c.trim() == "sleep") {
                break pid;
            }
        }
        assert!(Instant::now() < deadline, "the shell started no sleep");
        std::thread::sleep(Duration::from_millis(20));
    };
    let ksense = Ksense::start(&[]);
    // SAFETY: kill has no memory effects; `sleep` is this test's grandchild, still running.
    assert_eq!(unsafe { libc::kill(sleep as i32, libc::SIGKILL) }, 0);
    assert!(shell.wait().unwrap().success());

    let shell_path = canonical("/bin/sh");
    let exit = ksense.wait_for("exit of the sleep", |e| is(e, "process.exit") && attr(e, "process.pid") == sleep);
    assert_eq!(attr(&exit, "ksense.process.parent.executable.path"), shell_path.as_str(), "{exit}");
    assert_eq!(attr(&exit, "ksense.process.parent.command_line"), format!("/bin/sh -c {script}").as_str(), "{exit}");
    let sleep_lineage = lineage(&exit);
    assert_eq!(sleep_lineage[0], format!("{shell_pid}:{shell_path}"), "{exit}");
    ends_with_this_test_and_pid_1(&sleep_lineage, 1, &exit);
    assert_eq!(attr(&exit, "ksense.process.executable.hash_skipped"), "unseen", "its exec was before ksense: {exit}");

    let exec = ksense.wait_for("exec of the marker", |e| {
        is(e, "process.exec") && attr(e, "process.command_args").get(2).is_some_and(|a| a == "lineage-seeded")
    });
    assert_eq!(lineage(&exec), sleep_lineage, "the marker and the sleep are siblings: {exec}");
    ksense.stop();
}
