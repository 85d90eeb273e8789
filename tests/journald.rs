//! The journald sink end to end: ksense writes each event as a journal entry, and
//! `journalctl -o json` finds it by the contract's fields (`docs/EVENTS.md`, "The three
//! renderings"). Starts a real `systemd-journald` when none runs, and leaves it running.
use std::process::Command;

use ksense_e2e::{
    attr, is,
    journald::{self, Run, short, value, values},
    workload_bin,
};

/// The `MESSAGE_ID`s ksense promises (fixed: catalogs and saved queries depend on them).
const EXEC_MESSAGE_ID: &str = "40c8251563fd4f72b506462540d4bb5e";
const EXIT_MESSAGE_ID: &str = "2dee3ba51e464cb9b57f6bf8db8fffb6";

/// An argument that would set two fields if the sink framed values with newlines.
const EVIL: &str = "x\nSYSLOG_IDENTIFIER=evil\nPRIORITY=0";

#[test]
fn exit_code_seven_is_found_by_field() {
    let run = Run::start("journald-exit");
    let child = Command::new("/bin/sh").args(["-c", "exit 7"]).spawn().unwrap();
    let pid = child.id();
    assert_eq!(child.wait_with_output().unwrap().status.code(), Some(7));
    let event = run.ksense.wait_for("exit of sh", |e| is(e, "process.exit") && attr(e, "process.pid") == pid);

    let entry = run.entry(&[
        "SYSLOG_IDENTIFIER=ksense",
        "KSENSE_EVENT=process.exit",
        "PROCESS_EXIT_CODE=7",
        &format!("PROCESS_PID={pid}"),
    ]);
    assert_eq!(value(&entry, "PRIORITY"), "6", "{}", short(&entry));
    assert_eq!(value(&entry, "MESSAGE_ID"), EXIT_MESSAGE_ID, "{}", short(&entry));
    assert_eq!(value(&entry, "OBJECT_PID"), pid.to_string(), "{}", short(&entry));
    assert_eq!(value(&entry, "MESSAGE"), event["body"].as_str().unwrap(), "{}", short(&entry));
    assert_eq!(value(&entry, "KSENSE_TIME"), event["time"].as_str().unwrap(), "{}", short(&entry));
    let shell = std::fs::canonicalize("/bin/sh").unwrap();
    assert_eq!(value(&entry, "PROCESS_EXECUTABLE_PATH"), shell.to_str().unwrap(), "{}", short(&entry));
    assert_eq!(value(&entry, "KSENSE_PROCESS_EXIT_CORE_DUMPED"), "false", "{}", short(&entry));
    assert_eq!(value(&entry, "_TRANSPORT"), "journal", "native protocol: {}", short(&entry));

    let stopped = run.ksense.stop();
    assert!(stopped.counter("sink_journald_delivered") >= 1, "{}", stopped.stderr);
    assert_eq!(stopped.counter("sink_journald_failed"), 0, "{}", stopped.stderr);
}

#[test]
fn argv_cannot_inject_fields() {
    let run = Run::start("journald-inject");
    let argv = ["marker", EVIL, "y\n\nMESSAGE=fake", "dup", "dup"];
    let child = Command::new(workload_bin()).args(argv).spawn().unwrap();
    let pid = child.id();
    assert!(child.wait_with_output().unwrap().status.success());
    let event = run.ksense.wait_for("exec of the marker", |e| is(e, "process.exec") && attr(e, "process.pid") == pid);

    let entry = run.entry(&["SYSLOG_IDENTIFIER=ksense", "KSENSE_EVENT=process.exec", &format!("PROCESS_PID={pid}")]);
    assert_eq!(entry["SYSLOG_IDENTIFIER"], "ksense", "one value, not an array with \"evil\": {}", short(&entry));
    assert_eq!(entry["PRIORITY"], "6", "{}", short(&entry));
    assert_eq!(value(&entry, "MESSAGE"), event["body"].as_str().unwrap(), "{}", short(&entry));
    assert_eq!(value(&entry, "MESSAGE_ID"), EXEC_MESSAGE_ID, "{}", short(&entry));
    let args = values(&entry, "PROCESS_COMMAND_ARGS");
    for arg in argv {
        assert!(args.contains(&arg.as_bytes().to_vec()), "{arg:?} missing from {}", short(&entry));
    }
    // journald keeps the distinct values of a repeated field (the second "dup" goes); the JSON
    // event's argv, as a set, is what the journal holds.
    let mut from_json: Vec<Vec<u8>> = attr(&event, "process.command_args")
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap().as_bytes().to_vec())
        .collect();
    let mut from_journal = args.clone();
    for list in [&mut from_json, &mut from_journal] {
        list.sort();
        list.dedup();
    }
    assert_eq!(from_journal, from_json, "{}", short(&entry));
    assert_eq!(
        value(&entry, "PROCESS_COMMAND_LINE"),
        attr(&event, "process.command_line").as_str().unwrap(),
        "{}",
        short(&entry)
    );

    assert!(
        journald::entries(&run.since, &["SYSLOG_IDENTIFIER=evil"]).is_empty(),
        "an argv element became an entry's identifier"
    );
    assert!(journald::entries(&run.since, &["MESSAGE=fake"]).is_empty(), "an argv element became an entry's message");
    let stopped = run.ksense.stop();
    assert_eq!(stopped.counter("sink_journald_failed"), 0, "{}", stopped.stderr);
}

/// A ~15 KiB argv of 1,200 arguments: more fields than journald takes in one entry (1,024), so
/// the sink keeps what fits, marks the entry truncated, and journald stores it.
#[test]
fn a_large_argv_arrives_cut_to_the_field_limit() {
    let run = Run::start("journald-large");
    let argv: Vec<String> =
        std::iter::once("marker".to_string()).chain((0..1200).map(|i| format!("arg-{i:07}"))).collect();
    let child = Command::new(workload_bin()).args(&argv).spawn().unwrap();
    let pid = child.id();
    assert!(child.wait_with_output().unwrap().status.success());
    let event = run.ksense.wait_for("exec of the marker", |e| is(e, "process.exec") && attr(e, "process.pid") == pid);
    let json_args = attr(&event, "process.command_args").as_array().unwrap().len();
    assert_eq!(
        json_args,
        argv.len() + 1,
        "the probe kept all of argv (it holds 16 KiB): {}",
        attr(&event, "process.command_line")
    );

    let entry = run.entry(&["SYSLOG_IDENTIFIER=ksense", "KSENSE_EVENT=process.exec", &format!("PROCESS_PID={pid}")]);
    let args = values(&entry, "PROCESS_COMMAND_ARGS");
    assert!((900..1024).contains(&args.len()), "{} arguments in the entry", args.len());
    for arg in &args {
        assert!((arg.starts_with(b"arg-") || arg == b"marker" || arg.ends_with(b"ksense-workload")), "{arg:?}");
    }
    assert_eq!(value(&entry, "KSENSE_PROCESS_COMMAND_ARGS_TRUNCATED"), "true", "the entry says it was cut");
    assert_eq!(
        value(&entry, "PROCESS_COMMAND_LINE"),
        attr(&event, "process.command_line").as_str().unwrap(),
        "all of argv"
    );
    let stopped = run.ksense.stop();
    assert_eq!(stopped.counter("sink_journald_failed"), 0, "{}", stopped.stderr);
}

/// `[sinks.journald] events = ["process.exit"]`: the journal gets a process's exit and not its
/// exec, while stdout has both; the entries left out count neither as delivered nor as failed.
#[test]
fn a_narrowed_journald_sink_gets_only_the_events_it_selects() {
    let run = Run::start_with("journald-narrowed", "events = [\"process.exit\"]\n");
    let child = Command::new(workload_bin()).arg("marker").spawn().unwrap();
    let pid = child.id();
    assert!(child.wait_with_output().unwrap().status.success());
    for kind in ["process.exec", "process.exit"] {
        run.ksense.wait_for(kind, |e| is(e, kind) && attr(e, "process.pid") == pid);
    }

    let process = format!("PROCESS_PID={pid}");
    run.entry(&["SYSLOG_IDENTIFIER=ksense", "KSENSE_EVENT=process.exit", &process]);
    // The exec was written before the exit, so it would be in the journal by now.
    let execs: Vec<_> = journald::entries(&run.since, &["SYSLOG_IDENTIFIER=ksense", "KSENSE_EVENT=process.exec", &process])
        .into_iter()
        .filter(|e| e["_CMDLINE"].as_str().is_some_and(|c| c.contains(&run.config)))
        .collect();
    assert!(execs.is_empty(), "an exec entry although only exits are selected: {}", short(&execs[0]));

    let stopped = run.ksense.stop();
    let (written, delivered) = (stopped.counter("events_written"), stopped.counter("sink_journald_delivered"));
    assert!(0 < delivered && delivered < written, "{delivered} of {written} written: {}", stopped.stderr);
    assert_eq!(stopped.counter("sink_journald_failed"), 0, "{}", stopped.stderr);
    let offered = written + stopped.counter("own_records");
    assert_eq!(stopped.counter("sink_stdout_delivered"), offered, "{}", stopped.stderr);
}
