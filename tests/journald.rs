//! The journald sink end to end: ksense writes each event as a journal entry, and
//! `journalctl -o json` finds it by the contract's fields (`../shared/EVENTS.md`, "The three
//! renderings"). Starts a real `systemd-journald` when none runs, and leaves it running.
use std::{
    process::Command,
    time::{Duration, Instant},
};

use ksense_e2e::{Ksense, attr, event_timeout, is, journald, temp_config, workload_bin};
use serde_json::Value;


/// The `MESSAGE_ID`s ksense promises (fixed: catalogs and saved queries depend on them).
const EXEC_MESSAGE_ID: &str = "40c8251563fd4f72b506462540d4bb5e";
const EXIT_MESSAGE_ID: &str = "2dee3ba51e464cb9b57f6bf8db8fffb6";

/// An argument that would set two fields if the sink framed values with newlines.
const EVIL: &str = "x\nSYSLOG_IDENTIFIER=evil\nPRIORITY=0";

/// A ksense with the journald sink on (it would be anyway while the socket exists), and what
/// finds its entries: every ksense running (other tests' too) writes every event, so entries are
/// told apart by the writer's command line, which names this test's configuration file.
struct Run {
    ksense: Ksense,
    config: String,
    since: String,
}

impl Run {
    fn start(name: &str) -> Run {
        journald::ensure();
        let config = temp_config(name, "[sinks.journald]\nenabled = true\n").to_str().unwrap().to_owned();
        let since = journald::since_now();
        let ksense = Ksense::start(&["--config", &config]);
        Run { ksense, config, since }
    }

    /// Waits for the one entry of this ksense matching `matches`.
    fn entry(&self, matches: &[&str]) -> Value {
        let deadline = Instant::now() + event_timeout();
        loop {
            let mut found: Vec<Value> = journald::entries(&self.since, matches)
                .into_iter()
                .filter(|e| e["_CMDLINE"].as_str().is_some_and(|c| c.contains(&self.config)))
                .collect();
            match found.len() {
                0 if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(100)),
                0 => panic!(
                    "no journal entry {matches:?} within {:?}; ksense said:\n{}",
                    event_timeout(),
                    self.ksense.stderr()
                ),
                1 => return found.pop().unwrap(),
                n => panic!("{n} journal entries {matches:?}: {}", short(&Value::Array(found))),
            }
        }
    }
}

/// An entry for a failure message, long values cut.
fn short(entry: &Value) -> String {
    let text = entry.to_string();
    match text.char_indices().nth(3000) {
        Some((at, _)) => format!("{}... ({} bytes)", &text[..at], text.len()),
        None => text,
    }
}

/// Every value of `field` in a `journalctl -o json` entry, as bytes. journalctl prints a value
/// as a string, or as an array of byte numbers when it is not printable text; a field that
/// occurs more than once as an array of those.
fn values(entry: &Value, field: &str) -> Vec<Vec<u8>> {
    fn one(v: &Value) -> Option<Vec<u8>> {
        match v {
            Value::String(s) => Some(s.as_bytes().to_vec()),
            Value::Array(bytes) => bytes.iter().map(|b| b.as_u64().and_then(|b| u8::try_from(b).ok())).collect(),
            _ => None,
        }
    }
    match &entry[field] {
        Value::Null => Vec::new(),
        Value::Array(items) if items.iter().any(|i| !i.is_number()) => {
            items.iter().map(|i| one(i).unwrap_or_else(|| panic!("{field}: {i}"))).collect()
        }
        v => vec![one(v).unwrap_or_else(|| panic!("{field}: {v}"))],
    }
}

/// The one value of `field`, as text.
fn value(entry: &Value, field: &str) -> String {
    match values(entry, field).as_slice() {
        [v] => String::from_utf8(v.clone()).unwrap(),
        other => panic!("{field}: expected one value, got {other:?} in {}", short(entry)),
    }
}

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
    assert_eq!(value(&entry, "PROCESS_EXECUTABLE_PATH"), "/bin/sh", "{}", short(&entry));
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
