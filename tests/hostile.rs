//! Hostile input end to end: strings a monitored process chooses (argv, executable names and
//! paths, the comm the kernel derives from them) cannot break or inject a JSON line, a journald
//! entry or an OTLP record, and come back byte for byte: as they are when valid UTF-8, else
//! through `ksense::text::lossless_bytes` (the escaped form's inverse) of the values that
//! `ksense.escaped` names. Also: an argv far beyond what the probe copies, a deep process chain,
//! and processes gone from /proc before the pipeline sees their events.
use std::{
    collections::BTreeSet,
    ffi::OsStr,
    os::unix::ffi::OsStrExt,
    path::{Path, PathBuf},
    process::{Command, Stdio},
};

use ksense::{kinds::exec::split_args, sinks::journald::field_name, text::lossless_bytes};
use ksense_abi::exec::ARGS_CAP;
use ksense_e2e::{
    Ksense, attr,
    collector::{Collector, Received},
    is,
    journald::{self, Run, short, value, values},
    workload_bin,
};
use serde_json::Value;

/// The fields every ksense journal entry has besides one per attribute (`sinks/journald.rs`;
/// `OBJECT_PID` only with `object_pid = true`, which these tests leave off).
const FIXED_FIELDS: [&str; 6] = ["MESSAGE", "PRIORITY", "SYSLOG_IDENTIFIER", "MESSAGE_ID", "KSENSE_EVENT", "KSENSE_TIME"];

/// The keys of every JSON line.
const JSON_KEYS: [&str; 5] = ["time", "severity", "event.name", "body", "attributes"];

/// Arguments that would break or forge something if a sink framed values naively, and every
/// byte value 0x01..=0xff: all in one argument, and each alone.
fn hostile_argv() -> Vec<Vec<u8>> {
    let every_byte: Vec<u8> = (1..=255).collect();
    let mut argv: Vec<Vec<u8>> = vec![
        b"marker".to_vec(),
        b"\nPRIORITY=0\nKSENSE_EVENT=forged".to_vec(),
        b"MESSAGE=forged".to_vec(),
        b"\",\"severity\":\"FATAL".to_vec(),
        b"\"}\n{\"event.name\":\"forged\",\"attributes\":{}}".to_vec(),
        b"\r\n\r\n=\\\"\x1b[2J\x1b]0;title\x07".to_vec(),
        // The typed escape and the byte it names must come back different.
        b"\\xff".to_vec(),
        b"\xff".to_vec(),
        b"\\\\".to_vec(),
        // Invalid UTF-8: a cut sequence, an overlong '/', a surrogate, a lone continuation byte.
        b"\xe2\x82".to_vec(),
        b"\xc0\xaf".to_vec(),
        b"\xed\xa0\x80".to_vec(),
        b"\x80".to_vec(),
        every_byte.clone(),
    ];
    argv.extend(every_byte.iter().map(|&b| vec![b]));
    argv
}

/// The bytes behind `text`, a value of attribute `name`: `text` itself, or what it stands for
/// when `escaped` (the record's `ksense.escaped`) names the attribute.
fn value_bytes(text: &str, name: &str, escaped: &[String]) -> Vec<u8> {
    if !escaped.iter().any(|e| e == name) {
        return text.as_bytes().to_vec();
    }
    lossless_bytes(text).unwrap_or_else(|| panic!("{name}: not an escaped text: {text:?}"))
}

/// The names in a JSON line's `ksense.escaped` (none when absent).
fn json_escaped(event: &Value) -> Vec<String> {
    let names = event["attributes"]["ksense.escaped"].as_array().map(Vec::as_slice).unwrap_or_default();
    names.iter().map(|n| n.as_str().unwrap_or_else(|| panic!("ksense.escaped: {n}")).to_owned()).collect()
}

/// The bytes behind a string value (`value`) of attribute `name` of a JSON line.
fn json_bytes(event: &Value, name: &str, value: &Value) -> Vec<u8> {
    let text = value.as_str().unwrap_or_else(|| panic!("not a string: {value}"));
    value_bytes(text, name, &json_escaped(event))
}

/// The bytes behind the string value of attribute `name` of a JSON line.
fn json_attr_bytes(event: &Value, name: &str) -> Vec<u8> {
    json_bytes(event, name, attr(event, name))
}

/// The bytes behind a value of attribute `name` in a journal entry.
fn journal_bytes(entry: &Value, name: &str, value: &[u8]) -> Vec<u8> {
    let text = std::str::from_utf8(value).unwrap_or_else(|e| panic!("journal value {value:?} is not UTF-8: {e}"));
    let escaped: Vec<String> =
        values(entry, "KSENSE_ESCAPED").into_iter().map(|n| String::from_utf8(n).unwrap()).collect();
    value_bytes(text, name, &escaped)
}

/// The one value of attribute `name` in a journal entry, as the bytes it stands for.
fn journal_value(entry: &Value, name: &str) -> Vec<u8> {
    match values(entry, &field_name(name)).as_slice() {
        [v] => journal_bytes(entry, name, v),
        other => panic!("{name}: expected one value, got {} in {}", other.len(), short(entry)),
    }
}

/// The attribute names of a JSON line.
fn attribute_names(event: &Value) -> BTreeSet<String> {
    event["attributes"].as_object().unwrap_or_else(|| panic!("no attributes: {event}")).keys().cloned().collect()
}

/// Checks a JSON line's shape: exactly the contract's keys, a known kind and severity, a
/// one-line body, and the attribute names of an event of the same kind from a plain process.
fn check_json_shape(event: &Value, plain: &Value) {
    let keys: BTreeSet<&str> = event.as_object().unwrap().keys().map(String::as_str).collect();
    assert_eq!(keys, BTreeSet::from(JSON_KEYS), "{event}");
    assert_eq!(event["event.name"], plain["event.name"], "{event}");
    assert_eq!(event["severity"], plain["severity"], "{event}");
    let body = event["body"].as_str().unwrap();
    assert!(!body.chars().any(char::is_control), "the body is one printable line: {body:?}");
    let (mut names, mut plain_names) = (attribute_names(event), attribute_names(plain));
    // Present only when argv was cut (the long-argv test checks it), or when a value is escaped
    // (what it names is checked value by value).
    for optional in ["ksense.process.command_args.truncated", "ksense.escaped"] {
        names.remove(optional);
        plain_names.remove(optional);
    }
    assert_eq!(names, plain_names, "same attributes as for a plain process: {event}");
}

/// Checks that a journal entry holds exactly the fields ksense sends for `event` (its JSON
/// line): the fixed ones and one per attribute. Every other field is journald's own: the trusted
/// `_...` fields (without `OBJECT_PID` journald adds no `OBJECT_...` ones either).
fn check_entry_fields(entry: &Value, event: &Value) {
    let fields: BTreeSet<String> = entry.as_object().unwrap().keys().filter(|k| !k.starts_with('_')).cloned().collect();
    let sent: BTreeSet<String> = FIXED_FIELDS
        .iter()
        .map(|f| f.to_string())
        .chain(event["attributes"].as_object().unwrap().keys().map(|k| field_name(k)))
        .collect();
    assert_eq!(fields, sent, "{}", short(entry));
    assert_eq!(value(entry, "PRIORITY"), "6", "{}", short(entry));
    assert_eq!(value(entry, "SYSLOG_IDENTIFIER"), "ksense", "{}", short(entry));
    assert_eq!(value(entry, "KSENSE_EVENT"), event["event.name"].as_str().unwrap(), "{}", short(entry));
    assert_eq!(value(entry, "MESSAGE"), event["body"].as_str().unwrap(), "{}", short(entry));
}

/// Runs `program` with `args` (its output dropped), checks it succeeded, returns its pid.
fn exec_and_wait(program: &Path, args: &[&[u8]]) -> u32 {
    let child = Command::new(program)
        .args(args.iter().map(|a| OsStr::from_bytes(a)))
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let pid = child.id();
    let status = child.wait_with_output().unwrap().status;
    assert!(status.success(), "{} {args:?}: {status}", program.display());
    pid
}

/// The exec event of `pid` in the JSON lines.
fn exec_of(ksense: &Ksense, pid: u32) -> Value {
    ksense.wait_for(&format!("exec of {pid}"), |e| is(e, "process.exec") && attr(e, "process.pid") == pid)
}

/// The journal entry of `pid`'s exec.
fn exec_entry(run: &Run, pid: u32) -> Value {
    run.entry(&["SYSLOG_IDENTIFIER=ksense", "KSENSE_EVENT=process.exec", &format!("PROCESS_PID={pid}")])
}

/// Checks the exec of `pid` against the argv it was given (`expected`, argv[0] included): the
/// JSON line (one valid line: the harness parses every line) has the shape of `plain`'s and
/// argv byte for byte, in order and joined; the journal entry exactly ksense's fields and the
/// same arguments (as a set: journald keeps a repeated field's values once each) and command
/// line. Returns both.
fn check_argv(run: &Run, pid: u32, plain: &Value, expected: &[Vec<u8>]) -> (Value, Value) {
    let event = exec_of(&run.ksense, pid);
    check_json_shape(&event, plain);
    let args: Vec<Vec<u8>> = attr(&event, "process.command_args")
        .as_array()
        .unwrap()
        .iter()
        .map(|arg| json_bytes(&event, "process.command_args", arg))
        .collect();
    assert_eq!(args, expected, "{event}");
    let line = json_attr_bytes(&event, "process.command_line");
    assert_eq!(line, expected.join(&b' '), "{event}");

    let entry = exec_entry(run, pid);
    check_entry_fields(&entry, &event);
    let journal_args: BTreeSet<Vec<u8>> =
        values(&entry, "PROCESS_COMMAND_ARGS").iter().map(|v| journal_bytes(&entry, "process.command_args", v)).collect();
    assert_eq!(journal_args, expected.iter().cloned().collect(), "{}", short(&entry));
    assert_eq!(journal_value(&entry, "process.command_line"), line, "{}", short(&entry));
    (event, entry)
}

/// No entry of this run names an event kind ksense does not have, or claims a priority above
/// WARNING.
fn check_nothing_forged(run: &Run) {
    let forged = journald::entries(&run.since, &["SYSLOG_IDENTIFIER=ksense", "KSENSE_EVENT=forged"]);
    assert!(forged.is_empty(), "a forged KSENSE_EVENT: {}", short(&Value::Array(forged)));
    for priority in 0..4 {
        let terms = ["SYSLOG_IDENTIFIER=ksense".to_owned(), format!("PRIORITY={priority}")];
        let found = journald::entries(&run.since, &terms);
        assert!(found.is_empty(), "PRIORITY={priority}: {}", short(&Value::Array(found)));
    }
}

#[test]
fn argv_with_every_byte_value_round_trips_in_every_sink() {
    let collector = Collector::start();
    let otlp = format!("[sinks.otlp]\nendpoint = \"http://127.0.0.1:{}\"\n", collector.grpc_port);
    let run = Run::start_with("hostile-argv", &otlp);
    let bin = workload_bin();
    let plain = exec_of(&run.ksense, exec_and_wait(&bin, &[b"marker", b"plain"]));
    let argv = hostile_argv();
    let pid = exec_and_wait(&bin, &argv.iter().map(Vec::as_slice).collect::<Vec<_>>());
    let mut expected = vec![bin.as_os_str().as_bytes().to_vec()];
    expected.extend(argv);

    let (event, _) = check_argv(&run, pid, &plain, &expected);
    let rendered = attr(&event, "process.command_args");
    assert_ne!(rendered[7], rendered[8], "the typed \\xff and the byte 0xff render the same");
    let escaped = json_escaped(&event);
    assert!(escaped.iter().any(|n| n == "process.command_args") && escaped.iter().any(|n| n == "process.command_line"), "{event}");
    check_nothing_forged(&run);

    // OTLP: the record, its arguments still an array.
    let pid_attr = format!("Int({pid})");
    let record = collector.wait_for("exec of the hostile argv", |r| {
        r.event_name == "process.exec" && r.attributes.get("process.pid") == Some(&pid_attr)
    });
    assert_eq!(record.severity, "INFO", "{record:?}");
    let otlp_args = record.attributes.get("process.command_args").unwrap_or_else(|| panic!("no argv: {record:?}"));
    assert!(otlp_args.starts_with("Slice(Str(") && otlp_args.contains("Str(marker)"), "{otlp_args}");
    let otlp_escaped = record.attributes.get("ksense.escaped").unwrap_or_else(|| panic!("no ksense.escaped: {record:?}"));
    assert!(otlp_escaped.starts_with("Slice(Str(") && otlp_escaped.contains("Str(process.command_args)"), "{otlp_escaped}");
    let kinds: BTreeSet<String> = collector.received().iter().map(|r: &Received| r.event_name.clone()).collect();
    assert!(!kinds.contains("forged"), "{kinds:?}");

    let stopped = run.ksense.stop();
    assert!(stopped.status.success(), "{}", stopped.stderr);
    assert!(stopped.events.iter().all(|e| e["event.name"] != "forged" && e["severity"] != "FATAL"));
    for counter in ["lost_total", "sink_journald_failed", "sink_otlp_failed"] {
        assert_eq!(stopped.counter(counter), 0, "{counter}: {}", stopped.stderr);
    }
}

/// Hard links to the workload binary under hostile names, in a directory beside it (the same
/// file system), removed when dropped.
struct HostileNames {
    dir: PathBuf,
}

impl HostileNames {
    /// Links under names that together hold every byte except NUL and `/`: one name of all 254,
    /// and one per 15 of them, the length of a comm, so every byte also reaches a comm.
    fn create() -> (HostileNames, Vec<PathBuf>) {
        let bin = workload_bin();
        let dir = bin.parent().unwrap().join(format!("hostile-names-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir(&dir).unwrap();
        let every_byte: Vec<u8> = (1..=255).filter(|&b| b != b'/').collect();
        let names = std::iter::once(every_byte.as_slice()).chain(every_byte.chunks(COMM_LEN));
        let paths = names
            .map(|name| {
                let path = dir.join(OsStr::from_bytes(name));
                std::fs::hard_link(&bin, &path).unwrap_or_else(|e| panic!("link {}: {e}", path.display()));
                path
            })
            .collect();
        (HostileNames { dir }, paths)
    }
}

impl Drop for HostileNames {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Bytes of a comm (`TASK_COMM_LEN` less the NUL).
const COMM_LEN: usize = ksense_abi::TASK_COMM_LEN - 1;

/// Checks the exec of `path` by `pid`: path and comm byte for byte in the JSON line and the
/// journal entry, which hold nothing else than for a plain process.
fn check_exec_of_path(run: &Run, pid: u32, path: &Path, plain: &Value) {
    let path_bytes = path.as_os_str().as_bytes();
    let comm = comm_of(path);
    let event = exec_of(&run.ksense, pid);
    check_json_shape(&event, plain);
    assert_eq!(json_attr_bytes(&event, "process.executable.path"), path_bytes, "{event}");
    assert_eq!(json_attr_bytes(&event, "process.executable.name"), comm, "{event}");
    let arg0 = &attr(&event, "process.command_args")[0];
    assert_eq!(json_bytes(&event, "process.command_args", arg0), path_bytes, "{event}");

    let entry = exec_entry(run, pid);
    check_entry_fields(&entry, &event);
    assert_eq!(journal_value(&entry, "process.executable.path"), path_bytes, "{}", short(&entry));
    assert_eq!(journal_value(&entry, "process.executable.name"), comm, "{}", short(&entry));
}

/// Checks the change `pid` (running `path mprotect-text-rwx`) made to its own code page: it
/// names the mapped file by its whole path.
fn check_code_change(ksense: &Ksense, pid: u32, path: &Path) {
    let change = ksense.wait_for("the code page made writable", |e| {
        is(e, "process.memory.protect") && attr(e, "process.pid") == pid
    });
    assert_eq!(json_attr_bytes(&change, "process.executable.name"), comm_of(path), "{change}");
    assert_eq!(json_attr_bytes(&change, "ksense.memory.file.path"), path.as_os_str().as_bytes(), "{change}");
}

/// The comm the kernel gives a process exec'd from `path`: the file name, cut to 15 bytes.
fn comm_of(path: &Path) -> &[u8] {
    let name = path.file_name().unwrap().as_bytes();
    &name[..name.len().min(COMM_LEN)]
}

#[test]
fn executable_names_with_every_byte_value_round_trip() {
    let run = Run::start("hostile-exe");
    let bin = workload_bin();
    let plain = exec_of(&run.ksense, exec_and_wait(&bin, &[b"mprotect-text-rwx"]));
    let (_names, paths) = HostileNames::create();

    // Alive until ksense has reported its code change: the mapped file's path comes from
    // /proc/<pid>/maps (which writes a newline as `\012`).
    for path in &paths {
        let mut child = Command::new(path)
            .args(["mprotect-text-rwx", "hold"])
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .spawn()
            .unwrap();
        let pid = child.id();
        check_code_change(&run.ksense, pid, path);
        drop(child.stdin.take());
        assert!(child.wait().unwrap().success(), "{}", path.display());
        check_exec_of_path(&run, pid, path, &plain);
    }

    // Gone before ksense handles its events (ksense is stopped meanwhile): the path comes from
    // the exec record.
    run.ksense.signal(libc::SIGSTOP);
    let pids: Vec<u32> = paths.iter().map(|path| exec_and_wait(path, &[b"mprotect-text-rwx"])).collect();
    run.ksense.signal(libc::SIGCONT);
    for (path, &pid) in paths.iter().zip(&pids) {
        check_code_change(&run.ksense, pid, path);
        check_exec_of_path(&run, pid, path, &plain);
    }

    check_nothing_forged(&run);
    let stopped = run.ksense.stop();
    assert!(stopped.status.success(), "{}", stopped.stderr);
    assert_eq!(stopped.counter("lost_total"), 0, "{}", stopped.stderr);
    assert_eq!(stopped.counter("sink_journald_failed"), 0, "{}", stopped.stderr);
}

/// A 128 KiB argv (the probe copies [`ARGS_CAP`] = 16 KiB): the event goes out with argv cut
/// exactly at the cap and says so, in the JSON line and in the journal entry.
#[test]
fn argv_of_128_kib_is_cut_at_the_probe_cap_and_says_so() {
    let run = Run::start("hostile-long-argv");
    let bin = workload_bin();
    let plain = exec_of(&run.ksense, exec_and_wait(&bin, &[b"marker", b"plain"]));
    // 2,048 arguments of 63 bytes and a NUL: 128 KiB, each argument distinct.
    let long: Vec<Vec<u8>> = (0..2048).map(|i| format!("{i:05}-{}", "a".repeat(57)).into_bytes()).collect();
    let argv: Vec<&[u8]> = std::iter::once(&b"marker"[..]).chain(long.iter().map(Vec::as_slice)).collect();
    let pid = exec_and_wait(&bin, &argv);

    // What the kernel has on the new stack: each argument NUL-terminated, back to back.
    let mut area: Vec<u8> = bin.as_os_str().as_bytes().to_vec();
    area.push(0);
    for arg in &argv {
        area.extend_from_slice(arg);
        area.push(0);
    }
    assert!(area.len() > 128 * 1024, "{} bytes", area.len());
    let expected = split_args(&area[..ARGS_CAP]);

    let (event, entry) = check_argv(&run, pid, &plain, &expected);
    assert_eq!(attr(&event, "ksense.process.command_args.truncated"), true, "the event says argv was cut");
    assert_eq!(value(&entry, "KSENSE_PROCESS_COMMAND_ARGS_TRUNCATED"), "true", "{}", short(&entry));
    let stopped = run.ksense.stop();
    assert_eq!(stopped.counter("lost_total"), 0, "{}", stopped.stderr);
    assert_eq!(stopped.counter("sink_journald_failed"), 0, "{}", stopped.stderr);
}

/// Links of the chain below the workload the test starts.
const CHAIN_DEPTH: u32 = 200;

/// 201 nested processes, each running the next and waiting for it: every fork, exec and exit
/// is reported, each link's parent is the link above, and nothing is lost.
#[test]
fn a_deep_process_chain_is_reported_link_by_link() {
    let ksense = Ksense::start(&[]);
    let bin = workload_bin();
    let top = exec_and_wait(&bin, &[b"chain", CHAIN_DEPTH.to_string().as_bytes()]);
    ksense.wait_for("the chain's top exit", |e| is(e, "process.exit") && attr(e, "process.pid") == top);
    let stopped = ksense.stop();
    assert!(stopped.status.success(), "{}", stopped.stderr);
    assert_eq!(stopped.counter("lost_total"), 0, "{}", stopped.stderr);

    let of = |kind: &str, pid: u32| -> Vec<&Value> {
        stopped.events.iter().filter(|e| is(e, kind) && attr(e, "process.pid") == pid).collect()
    };
    let mut parent = top;
    for depth in (0..CHAIN_DEPTH).rev() {
        let forks: Vec<&Value> = stopped
            .events
            .iter()
            .filter(|e| is(e, "process.fork") && attr(e, "process.parent_pid") == parent)
            .filter(|e| attr(e, "ksense.clone.thread") == false)
            .collect();
        let [fork] = forks.as_slice() else { panic!("chain {depth}: {} forks by {parent}: {forks:?}", forks.len()) };
        let child = attr(fork, "process.pid").as_u64().unwrap() as u32;
        let execs = of("process.exec", child);
        let [exec] = execs.as_slice() else { panic!("chain {depth}: {} execs of {child}", execs.len()) };
        assert_eq!(attr(exec, "process.parent_pid"), parent, "{exec}");
        let args = attr(exec, "process.command_args");
        assert_eq!(args[1], "chain", "{exec}");
        assert_eq!(args[2], depth.to_string().as_str(), "{exec}");
        let exits = of("process.exit", child);
        let [exit] = exits.as_slice() else { panic!("chain {depth}: {} exits of {child}", exits.len()) };
        assert_eq!(attr(exit, "process.parent_pid"), parent, "{exit}");
        assert_eq!(attr(exit, "process.exit.code"), 0, "{exit}");
        parent = child;
    }
    let below_leaf = stopped.events.iter().filter(|e| is(e, "process.fork") && attr(e, "process.parent_pid") == parent);
    assert_eq!(below_leaf.count(), 0, "the leaf ran nothing");
}

/// Processes that exec and exit while ksense is stopped (SIGSTOP): by the time the pipeline
/// handles their events, /proc has nothing of them. Each event still goes out with what the
/// kernel gave (pid, parent, comm, path, argv), and nothing is lost or logged as an error.
#[test]
fn processes_gone_before_enrichment_are_reported_from_the_kernel_record() {
    const N: usize = 100;
    let ksense = Ksense::start(&[]);
    let bin = workload_bin();
    ksense.signal(libc::SIGSTOP);
    let pids: Vec<u32> = (0..N).map(|i| exec_and_wait(&bin, &[b"marker", format!("gone-{i}").as_bytes()])).collect();
    let still_in_proc = pids.iter().filter(|pid| Path::new(&format!("/proc/{pid}")).exists()).count();
    ksense.signal(libc::SIGCONT);
    let last = *pids.last().unwrap();
    ksense.wait_for("the last one's exit", |e| is(e, "process.exit") && attr(e, "process.pid") == last);
    let stopped = ksense.stop();
    assert!(stopped.status.success(), "{}", stopped.stderr);
    eprintln!("{still_in_proc} of {N} pids were in /proc again (reused) when ksense resumed");

    let me = std::process::id();
    let bin_text = bin.to_str().unwrap();
    for (i, &pid) in pids.iter().enumerate() {
        let find = |kind: &str| {
            stopped
                .events
                .iter()
                .find(|e| is(e, kind) && attr(e, "process.pid") == pid)
                .unwrap_or_else(|| panic!("no {kind} of {pid}; ksense said:\n{}", stopped.stderr))
        };
        let exec = find("process.exec");
        assert_eq!(attr(exec, "process.parent_pid"), me, "{exec}");
        assert_eq!(attr(exec, "process.executable.name"), "ksense-workload", "{exec}");
        assert_eq!(attr(exec, "process.executable.path"), bin_text, "{exec}");
        let argv = serde_json::json!([bin_text, "marker", format!("gone-{i}")]);
        assert_eq!(attr(exec, "process.command_args"), &argv, "{exec}");
        let exit = find("process.exit");
        assert_eq!(attr(exit, "process.exit.code"), 0, "{exit}");
        assert_eq!(attr(exit, "process.executable.path"), bin_text, "the exec told the process table: {exit}");
        find("process.fork");
    }
    assert_eq!(stopped.counter("lost_total"), 0, "{}", stopped.stderr);
    // Before it runs, ksense warns of hooks this kernel lacks; after that, nothing may go wrong.
    let running = stopped.stderr.split_once("ksense is running").map_or("", |(_, after)| after);
    for level in [" ERROR ", " WARN "] {
        assert!(!running.contains(level), "ksense logged a {level}:\n{}", stopped.stderr);
    }
}
