//! The journald sink end to end: ksense writes each event as a journal entry, and
//! `journalctl -o json` finds it by the contract's fields (`docs/EVENTS.md`, "The three
//! renderings"). Starts a real `systemd-journald` when none runs, and leaves it running.
use std::{
    io::Write as _,
    path::Path,
    process::{Command, Stdio},
    time::Instant,
};

use ksense_e2e::{
    attr, event_timeout, is,
    journald::{self, Run, short, value, values},
    ksense_bin, temp_config, workload_bin,
};
use serde_json::Value;

/// The `MESSAGE_ID`s ksense promises (fixed: catalogs and saved queries depend on them).
const EXEC_MESSAGE_ID: &str = "40c8251563fd4f72b506462540d4bb5e";
const EXIT_MESSAGE_ID: &str = "2dee3ba51e464cb9b57f6bf8db8fffb6";

/// The match the documentation gives for ksense's entries: `SYSLOG_IDENTIFIER=ksense` alone is
/// what any user can write; `_UID` is set by journald from the writer's credentials.
const DOCUMENTED_MATCH: [&str; 2] = ["SYSLOG_IDENTIFIER=ksense", "_UID=0"];

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
        "_UID=0",
        "KSENSE_EVENT=process.exit",
        "PROCESS_EXIT_CODE=7",
        &format!("PROCESS_PID={pid}"),
    ]);
    assert_eq!(value(&entry, "PRIORITY"), "6", "{}", short(&entry));
    assert_eq!(value(&entry, "MESSAGE_ID"), EXIT_MESSAGE_ID, "{}", short(&entry));
    // Not filed under the unit of the process it is about (object_pid is off by default).
    let objects: Vec<&String> = entry.as_object().unwrap().keys().filter(|k| k.starts_with("OBJECT_")).collect();
    assert!(objects.is_empty(), "{objects:?}: {}", short(&entry));
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

/// `object_pid = true`: the entry names the process it is about, so journald files it under
/// that process's unit as well.
#[test]
fn object_pid_when_asked_for() {
    let run = Run::start_with("journald-object-pid", "object_pid = true\n");
    let child = Command::new(workload_bin()).arg("marker").spawn().unwrap();
    let pid = child.id();
    assert!(child.wait_with_output().unwrap().status.success());
    run.ksense.wait_for("exec of the marker", |e| is(e, "process.exec") && attr(e, "process.pid") == pid);
    let entry = run.entry(&["SYSLOG_IDENTIFIER=ksense", "KSENSE_EVENT=process.exec", &format!("PROCESS_PID={pid}")]);
    assert_eq!(value(&entry, "OBJECT_PID"), pid.to_string(), "{}", short(&entry));
    run.ksense.stop();
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

/// Entries matching `matches` since `since` for which `accept` holds, once `count` of them are
/// there (or the timeout passed: then whatever there is).
fn wait_for_entries(since: &str, matches: &[String], count: usize, accept: impl Fn(&Value) -> bool) -> Vec<Value> {
    let deadline = Instant::now() + event_timeout();
    loop {
        let found: Vec<Value> = journald::entries(since, matches).into_iter().filter(&accept).collect();
        if found.len() >= count || Instant::now() >= deadline {
            return found;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
}

/// A user (uid 65534) forges ksense entries, through journald's stream socket (`systemd-cat`)
/// and its native protocol (`logger --journald`, with an exec entry's fields and `MESSAGE_ID`).
/// Matching `SYSLOG_IDENTIFIER=ksense` alone finds them; the documented match finds ksense's own
/// entry and not them.
#[test]
fn forged_entries_are_not_matched_by_the_documented_query() {
    let run = Run::start("journald-forged");
    let marker = format!("ksense-forged-{}", std::process::id());
    let as_nobody = |program: &str| {
        let mut command = Command::new("setpriv");
        command.args(["--reuid=65534", "--regid=65534", "--clear-groups", "--", program]);
        command
    };
    let status = as_nobody("systemd-cat").args(["-t", "ksense", "echo", &marker]).status().unwrap();
    assert!(status.success(), "systemd-cat as uid 65534: {status}");
    let mut logger = as_nobody("logger").arg("--journald").stdin(Stdio::piped()).spawn().unwrap();
    let fields = format!(
        "SYSLOG_IDENTIFIER=ksense\nMESSAGE={marker}\nMESSAGE_ID={EXEC_MESSAGE_ID}\nKSENSE_EVENT=process.exec\n\
         PRIORITY=6\nPROCESS_PID=1\nPROCESS_EXECUTABLE_PATH=/usr/bin/{marker}\n"
    );
    logger.stdin.take().unwrap().write_all(fields.as_bytes()).unwrap();
    assert!(logger.wait().unwrap().success(), "logger --journald as uid 65534");

    // ksense reports a real exec whose argument is the marker.
    let child = Command::new(workload_bin()).args(["marker", &marker]).spawn().unwrap();
    let pid = child.id();
    assert!(child.wait_with_output().unwrap().status.success());
    run.ksense.wait_for("exec of the marker", |e| is(e, "process.exec") && attr(e, "process.pid") == pid);
    let process = format!("PROCESS_PID={pid}");
    let real = run.entry(&[DOCUMENTED_MATCH[0], DOCUMENTED_MATCH[1], "KSENSE_EVENT=process.exec", &process]);
    assert!(real.to_string().contains(&marker), "{}", short(&real));

    let message = format!("MESSAGE={marker}");
    let identifier_only = ["SYSLOG_IDENTIFIER=ksense".to_owned(), message.clone()];
    let forged = wait_for_entries(&run.since, &identifier_only, 2, |_| true);
    assert_eq!(forged.len(), 2, "both forgeries are in the journal as SYSLOG_IDENTIFIER=ksense: {forged:?}");
    for entry in &forged {
        assert_eq!(value(entry, "_UID"), "65534", "{}", short(entry));
    }
    let documented: Vec<String> = DOCUMENTED_MATCH.iter().map(|m| m.to_string()).chain([message]).collect();
    let matched = journald::entries(&run.since, &documented);
    assert!(matched.is_empty(), "the documented match found a forged entry: {}", short(&Value::Array(matched)));
    run.ksense.stop();
}

/// Every `journalctl` line of the user documentation that matches `SYSLOG_IDENTIFIER=ksense`
/// also matches `_UID=0` or `_SYSTEMD_UNIT=ksense.service` (see the test above for why).
#[test]
fn documented_queries_match_the_writer_too() {
    let repo = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
    let mut files: Vec<_> = ["README.md", "ARCHITECTURE.md", "config/ksense.toml", "packaging/ksense.catalog"]
        .iter()
        .map(|f| repo.join(f))
        .collect();
    files.extend(std::fs::read_dir(repo.join("docs")).unwrap().map(|e| e.unwrap().path()));
    let mut queries = 0;
    for file in files {
        let text = std::fs::read_to_string(&file).unwrap();
        for (n, line) in text.lines().enumerate() {
            if line.contains("journalctl") && line.contains("SYSLOG_IDENTIFIER=ksense") {
                queries += 1;
                assert!(
                    line.contains("_UID=0") || line.contains("_SYSTEMD_UNIT=ksense.service"),
                    "{}:{}: a query any user's entries can match: {line}",
                    file.display(),
                    n + 1
                );
            }
        }
    }
    assert!(queries >= 2, "only {queries} journalctl queries found in the documentation");
}

/// Starts ksense the way systemd would start the unit, with `stderr` as its stdout and stderr
/// and `env`, on a configuration with an unknown key; checks it fails; returns its pid and the
/// predicate that finds its error's entry.
fn fail_to_start(
    name: &str,
    wrap: &[&str],
    env: &[(&str, &str)],
    stderr: std::os::fd::OwnedFd,
) -> (u32, impl Fn(&Value) -> bool + use<>) {
    let config = temp_config(name, "[probes]\nforkk = true\n").to_str().unwrap().to_owned();
    let (program, wrap) = match wrap.split_first() {
        Some((first, rest)) => (first.into(), rest.iter().map(Into::into).chain([ksense_bin().into_os_string()]).collect()),
        None => (ksense_bin().into_os_string(), Vec::new()),
    };
    let child = Command::new(program)
        .args(wrap)
        .args(["run", "--config", &config])
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .stdout(Stdio::from(stderr.try_clone().unwrap()))
        .stderr(Stdio::from(stderr))
        .spawn()
        .unwrap();
    let pid = child.id();
    let status = child.wait_with_output().unwrap().status;
    assert_eq!(status.code(), Some(1), "ksense with an unknown key: {status}");
    (pid, move |e: &Value| e["MESSAGE"].as_str().is_some_and(|m| m.contains(&config) && m.contains("forkk")))
}

/// ksense started by systemd with its stderr on the journal (`JOURNAL_STREAM`), which cannot
/// start (a bad configuration): the error reaches the journal at priority 3, so
/// `journalctl -p err -u ksense` shows it, once. It goes through the stream, which journald
/// files under the unit systemd opened it for even when ksense has exited by the time the line
/// is read.
#[test]
fn a_start_up_error_reaches_the_journal_at_error_priority() {
    let lock = journald::lock();
    journald::start_if_absent(&lock);
    let since = journald::since_now();
    let (stream, journal_stream) = journald::service_stream("ksense");
    let (pid, about_the_error) =
        fail_to_start("journald-start-error", &[], &[("JOURNAL_STREAM", &journal_stream)], stream);

    let matches = ["SYSLOG_IDENTIFIER=ksense".to_owned(), "_UID=0".to_owned(), format!("_PID={pid}")];
    let found = wait_for_entries(&since, &matches, 1, &about_the_error);
    let [entry] = found.as_slice() else { panic!("one entry for the error, got {}", short(&Value::Array(found))) };
    assert_eq!(value(entry, "PRIORITY"), "3", "{}", short(entry));
    assert_eq!(value(entry, "_TRANSPORT"), "stdout", "{}", short(entry));
    assert!(!value(entry, "MESSAGE").starts_with('<'), "the prefix is journald's, not the message's: {}", short(entry));
    drop(lock);
}

/// A service whose stderr is not the journal (`StandardError=file:...`; `INVOCATION_ID` tells
/// ksense systemd runs it): the error goes through journald's native protocol, at priority 3.
#[test]
fn a_start_up_error_of_a_service_logging_elsewhere_reaches_the_journal_at_error_priority() {
    let lock = journald::lock();
    journald::start_if_absent(&lock);
    let since = journald::since_now();
    let file = std::env::temp_dir().join(format!("ksense-start-error-{}.log", std::process::id()));
    let stderr = std::fs::File::create(&file).unwrap();
    let invocation = [("INVOCATION_ID", "0123456789abcdef0123456789abcdef")];
    let (pid, about_the_error) = fail_to_start("journald-start-error-file", &[], &invocation, stderr.into());

    let matches = ["SYSLOG_IDENTIFIER=ksense".to_owned(), "_UID=0".to_owned(), format!("_PID={pid}")];
    let found = wait_for_entries(&since, &matches, 1, &about_the_error);
    let [entry] = found.as_slice() else { panic!("one entry for the error, got {}", short(&Value::Array(found))) };
    assert_eq!(value(entry, "PRIORITY"), "3", "{}", short(entry));
    assert_eq!(value(entry, "_TRANSPORT"), "journal", "{}", short(entry));
    let _ = std::fs::remove_file(file);
    drop(lock);
}

/// The same where ksense cannot reach journald's socket but its stderr is the journal stream
/// (`/run/systemd/journal/socket` hidden in a mount namespace): each line of its log carries
/// its priority as a `<N>` prefix, so the warning about the journal is stored at 4 and the error
/// at 3.
#[test]
fn a_start_up_error_on_the_journal_stream_keeps_its_priority() {
    let lock = journald::lock();
    journald::start_if_absent(&lock);
    let since = journald::since_now();
    let (stream, journal_stream) = journald::service_stream("ksense");
    let hide_socket = format!("mount --bind /dev/null {} && exec \"$0\" \"$@\"", journald::SOCKET);
    // unshare and sh exec, so the child's pid is ksense's.
    let wrap = ["unshare", "--mount", "--propagation", "private", "--", "sh", "-c", &hide_socket];
    let (pid, about_the_error) =
        fail_to_start("journald-start-error-stream", &wrap, &[("JOURNAL_STREAM", &journal_stream)], stream);

    // journald takes the writer's pid from each message's credentials.
    let matches = ["SYSLOG_IDENTIFIER=ksense".to_owned(), "_TRANSPORT=stdout".to_owned(), format!("_PID={pid}")];
    let found = wait_for_entries(&since, &matches, 1, &about_the_error);
    let [entry] = found.as_slice() else { panic!("one entry for the error, got {}", short(&Value::Array(found))) };
    assert_eq!(value(entry, "PRIORITY"), "3", "{}", short(entry));
    assert!(!value(entry, "MESSAGE").starts_with('<'), "the prefix is journald's, not the message's: {}", short(entry));
    let about_the_journal = |e: &Value| e["MESSAGE"].as_str().is_some_and(|m| m.contains("cannot log to the journal"));
    let warnings = wait_for_entries(&since, &matches, 1, about_the_journal);
    assert!(!warnings.is_empty(), "no warning that the journal is unreachable");
    for warning in &warnings {
        assert_eq!(value(warning, "PRIORITY"), "4", "{}", short(warning));
    }
    drop(lock);
}
