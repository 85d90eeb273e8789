//! `process.exec` end to end: argv and the execve path exactly as the process passed them (the
//! escaped form only for bytes that are not UTF-8), and the canonical path of the file the
//! kernel executed.
use std::{
    collections::BTreeSet,
    ffi::OsStr,
    os::unix::ffi::OsStrExt,
    process::{Command, Stdio},
};

use ksense::text::lossless_bytes;
use ksense_e2e::{
    Ksense, attr, checks, is,
    journald::{Run, short, values},
    workload_bin,
};
use serde_json::{Value, json};

#[test]
fn exec_reports_exact_argv_and_path() {
    let ksense = Ksense::start(&[]);
    let exec = checks::exec_reports_exact_argv_and_path(&ksense);
    assert_eq!(attr(&exec, "process.user.id"), 0, "{exec}");
    assert_eq!(attr(&exec, "process.owner"), "root", "{exec}");
    assert!(!exec["body"].as_str().unwrap().contains('\n'), "{exec}");
    let start = u64::from_str_radix(attr(&exec, "ksense.process.code.start").as_str().unwrap().trim_start_matches("0x"), 16).unwrap();
    let end = u64::from_str_radix(attr(&exec, "ksense.process.code.end").as_str().unwrap().trim_start_matches("0x"), 16).unwrap();
    assert!(0 < start && start < end, "{exec}");
    assert!(attr(&exec, "process.linux.cgroup").is_string(), "{exec}");
    ksense.stop();
}

/// Runs the workload with `args`, checks it succeeded, and returns its exec record and journal
/// entry.
fn exec_in(run: &Run, args: &[&[u8]]) -> (Value, Value) {
    let child = Command::new(workload_bin()).args(args.iter().map(|a| OsStr::from_bytes(a))).spawn().unwrap();
    let pid = child.id();
    assert!(child.wait_with_output().unwrap().status.success());
    let exec = run.ksense.wait_for("exec of the marker", |e| is(e, "process.exec") && attr(e, "process.pid") == pid);
    let entry = run.entry(&["SYSLOG_IDENTIFIER=ksense", "KSENSE_EVENT=process.exec", &format!("PROCESS_PID={pid}")]);
    (exec, entry)
}

/// The values of a repeated journal field, as a set (journald keeps each distinct value once).
fn journal_set(entry: &Value, field: &str) -> BTreeSet<Vec<u8>> {
    values(entry, field).into_iter().collect()
}

/// Backslashes in valid UTF-8 arguments come out as typed (a search for the command as it ran
/// finds it); one argument that is not UTF-8 makes argv escaped, said in `ksense.escaped`, and
/// decoding gives back every argument's bytes. In the JSON line and the journal entry alike.
#[test]
fn argv_is_exact_and_escaped_only_when_not_utf8() {
    let run = Run::start("exec-exact-argv");
    let bin = workload_bin();
    let bin = bin.to_str().unwrap();

    let (exec, entry) = exec_in(&run, &[b"marker", b"C:\\Windows\\path", b"\\d+"]);
    let typed = [bin, "marker", "C:\\Windows\\path", "\\d+"];
    assert_eq!(attr(&exec, "process.command_args"), &json!(typed), "{exec}");
    assert_eq!(attr(&exec, "process.command_line"), typed.join(" ").as_str(), "{exec}");
    assert!(exec["attributes"].get("ksense.escaped").is_none(), "nothing is escaped: {exec}");
    assert_eq!(journal_set(&entry, "PROCESS_COMMAND_ARGS"), typed.map(|a| a.as_bytes().to_vec()).into(), "{}", short(&entry));
    assert!(values(&entry, "KSENSE_ESCAPED").is_empty(), "{}", short(&entry));

    let (exec, entry) = exec_in(&run, &[b"marker", b"C:\\Windows\\path", b"\\d+", b"\xff"]);
    let escaped = [bin, "marker", "C:\\\\Windows\\\\path", "\\\\d+", "\\xff"];
    assert_eq!(attr(&exec, "process.command_args"), &json!(escaped), "{exec}");
    assert_eq!(attr(&exec, "process.command_line"), escaped.join(" ").as_str(), "{exec}");
    let names = json!(["process.command_line", "process.command_args"]);
    assert_eq!(attr(&exec, "ksense.escaped"), &names, "{exec}");
    let decoded: Vec<Vec<u8>> = escaped.iter().map(|a| lossless_bytes(a).unwrap()).collect();
    let ran: [&[u8]; 5] = [bin.as_bytes(), b"marker", b"C:\\Windows\\path", b"\\d+", b"\xff"];
    assert_eq!(decoded, ran);
    assert_eq!(journal_set(&entry, "PROCESS_COMMAND_ARGS"), escaped.map(|a| a.as_bytes().to_vec()).into(), "{}", short(&entry));
    let journal_names = journal_set(&entry, "KSENSE_ESCAPED");
    assert_eq!(journal_names, [b"process.command_line".to_vec(), b"process.command_args".to_vec()].into(), "{}", short(&entry));
    let stopped = run.ksense.stop();
    assert_eq!(stopped.counter("sink_journald_failed"), 0, "{}", stopped.stderr);
}

#[test]
fn exec_through_a_shell_keeps_the_command_line() {
    let ksense = Ksense::start(&[]);
    let child = Command::new("/bin/sh").args(["-c", "exec /bin/true 'a  b' c"]).spawn().unwrap();
    let pid = child.id();
    child.wait_with_output().unwrap();
    let exec = ksense.wait_for("exec of /bin/true", |e| {
        is(e, "process.exec") && attr(e, "process.pid") == pid && attr(e, "ksense.process.exec.path") == "/bin/true"
    });
    assert_eq!(attr(&exec, "process.command_args"), &serde_json::json!(["/bin/true", "a  b", "c"]), "{exec}");
    let canonical = std::fs::canonicalize("/bin/true").unwrap();
    assert_eq!(attr(&exec, "process.executable.path"), canonical.to_str().unwrap(), "{exec}");
    ksense.stop();
}

/// A program a shell runs by a relative path, which exits at once (so `/proc/<pid>/exe` is
/// likely gone when ksense looks): its path is the canonical one, resolved from the directory
/// the shell is in (while the shell is still there, as an interactive one or a script going on
/// with its next command is).
#[test]
fn exec_by_a_relative_path_has_the_canonical_path() {
    let ksense = Ksense::start(&[]);
    let workload = workload_bin();
    let (dir, name) = (workload.parent().unwrap(), workload.file_name().unwrap().to_str().unwrap());
    // A command after it keeps the shell from exec'ing the program itself: it forks.
    let script = format!("cd '{}' && ./{name} marker; sleep 1", dir.display());
    let shell = Command::new("/bin/sh").args(["-c", &script]).spawn().unwrap();
    let shell_pid = shell.id();
    assert!(shell.wait_with_output().unwrap().status.success());
    let relative = format!("./{name}");
    let exec = ksense.wait_for("exec of the workload", |e| {
        is(e, "process.exec") && attr(e, "process.parent_pid") == shell_pid && attr(e, "ksense.process.exec.path") == relative.as_str()
    });
    let canonical = std::fs::canonicalize(&workload).unwrap();
    assert_eq!(attr(&exec, "process.executable.path"), canonical.to_str().unwrap(), "{exec}");
    assert!(attr(&exec, "ksense.process.executable.sha256").is_string(), "hashed through the path found: {exec}");
    ksense.stop();
}

/// A process that starts its own session before it execs: the exec and exit events carry the
/// new process group and session (the kernel's values, right even though the process is gone
/// before ksense could look in /proc), and the cgroup it runs in, which is this test's.
#[test]
fn exec_after_setsid_has_the_new_session_and_the_cgroup() {
    use std::os::unix::process::CommandExt;
    let ksense = Ksense::start(&[]);
    let mut command = Command::new(workload_bin());
    command.args(["sleep", "0"]);
    // SAFETY: setsid is async-signal-safe.
    unsafe { command.pre_exec(|| if libc::setsid() < 0 { Err(std::io::Error::last_os_error()) } else { Ok(()) }) };
    let child = command.spawn().unwrap();
    let pid = child.id();
    assert!(child.wait_with_output().unwrap().status.success());

    let own_cgroups = std::fs::read_to_string("/proc/self/cgroup").unwrap();
    for kind in ["process.exec", "process.exit"] {
        let event = ksense.wait_for(kind, |e| is(e, kind) && attr(e, "process.pid") == pid);
        assert_eq!(attr(&event, "process.group_leader.pid"), pid, "{event}");
        assert_eq!(attr(&event, "process.session_leader.pid"), pid, "{event}");
        let cgroup = attr(&event, "process.linux.cgroup").as_str().unwrap_or_else(|| panic!("no cgroup: {event}"));
        assert!(own_cgroups.lines().any(|line| line == cgroup), "{cgroup:?} is not one of\n{own_cgroups}");
    }
    ksense.stop();
}

/// Runs the workload with `args` (with `env` added to the environment and `unset` removed from
/// it) in a session of its own, so without a controlling terminal; checks it succeeded and
/// returns its pid.
fn run_detached(args: &[&str], env: &[(&str, &str)], unset: &[&str]) -> u32 {
    use std::os::unix::process::CommandExt;
    let mut command = Command::new(workload_bin());
    command.args(args).envs(env.iter().copied()).stdout(Stdio::piped()).stderr(Stdio::piped());
    for name in unset {
        command.env_remove(name);
    }
    // SAFETY: setsid is async-signal-safe.
    unsafe { command.pre_exec(|| if libc::setsid() < 0 { Err(std::io::Error::last_os_error()) } else { Ok(()) }) };
    let child = command.spawn().unwrap();
    let pid = child.id();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "workload {args:?}: {:?} {}", out.status, String::from_utf8_lossy(&out.stderr));
    pid
}

/// An exec of a program with no name on any file system (a memfd, a deleted file; both run
/// through execveat(AT_EMPTY_PATH)) is fileless and WARN, in the JSON line and the journal; the
/// exec of the same program from its file before it is neither.
#[test]
fn an_exec_of_a_memfd_or_a_deleted_file_is_fileless_and_warn() {
    let run = Run::start("exec-fileless");
    for command in ["memfd-exec", "deleted-exec"] {
        let pid = run_detached(&[command], &[], &["LD_PRELOAD", "LD_AUDIT"]);
        let fileless = run.ksense.wait_for("the fileless exec", |e| {
            is(e, "process.exec") && attr(e, "process.pid") == pid && attr(e, "process.command_args") == &json!(["ksense-workload", "marker"])
        });
        assert_eq!(attr(&fileless, "ksense.process.executable.fileless"), true, "{command}: {fileless}");
        assert_eq!(fileless["severity"], "WARN", "{command}: {fileless}");
        let entry = run.entry(&[
            "SYSLOG_IDENTIFIER=ksense",
            "KSENSE_EVENT=process.exec",
            &format!("PROCESS_PID={pid}"),
            "KSENSE_PROCESS_EXECUTABLE_FILELESS=true",
        ]);
        assert_eq!(entry["PRIORITY"], "4", "{command}: {}", short(&entry));

        let from_file = run.ksense.wait_for("the exec from the file", |e| {
            is(e, "process.exec") && attr(e, "process.pid") == pid && attr(e, "process.command_args")[1] == command
        });
        assert_eq!(attr(&from_file, "ksense.process.executable.fileless"), false, "{command}: {from_file}");
        assert_eq!(from_file["severity"], "INFO", "{command}: {from_file}");
    }
    run.ksense.stop();
}

/// LD_PRELOAD is reported with the exec it applies to and makes it WARN; LD_LIBRARY_PATH alone
/// is reported and does not. Both in the JSON line and the journal.
#[test]
fn loader_variables_are_reported_and_ld_preload_is_warn() {
    let run = Run::start("exec-environment");
    let preload = "/nonexistent/ksense-test-preload.so";
    let pid = run_detached(&["marker", "preload"], &[("LD_PRELOAD", preload)], &["LD_AUDIT"]);
    let exec = run.ksense.wait_for("the exec with LD_PRELOAD", |e| is(e, "process.exec") && attr(e, "process.pid") == pid);
    assert_eq!(attr(&exec, "process.environment_variable.LD_PRELOAD"), preload, "{exec}");
    assert_eq!(exec["severity"], "WARN", "{exec}");
    let entry = run.entry(&["SYSLOG_IDENTIFIER=ksense", "KSENSE_EVENT=process.exec", &format!("PROCESS_PID={pid}")]);
    assert_eq!(values(&entry, "PROCESS_ENVIRONMENT_VARIABLE_LD_PRELOAD"), [preload.as_bytes()], "{}", short(&entry));

    let library_path = "/opt/ksense-test/lib:/tmp/a b";
    let pid = run_detached(&["marker", "library-path"], &[("LD_LIBRARY_PATH", library_path)], &["LD_PRELOAD", "LD_AUDIT"]);
    let exec = run.ksense.wait_for("the exec with LD_LIBRARY_PATH", |e| is(e, "process.exec") && attr(e, "process.pid") == pid);
    assert_eq!(attr(&exec, "process.environment_variable.LD_LIBRARY_PATH"), library_path, "{exec}");
    assert!(exec["attributes"].get("process.environment_variable.LD_PRELOAD").is_none(), "{exec}");
    assert_eq!(exec["severity"], "INFO", "{exec}");
    let entry = run.entry(&["SYSLOG_IDENTIFIER=ksense", "KSENSE_EVENT=process.exec", &format!("PROCESS_PID={pid}")]);
    assert_eq!(values(&entry, "PROCESS_ENVIRONMENT_VARIABLE_LD_LIBRARY_PATH"), [library_path.as_bytes()], "{}", short(&entry));
    run.ksense.stop();
}

/// A process in a session without a terminal is not interactive; one run under a pseudo-terminal
/// (`script`) is.
#[test]
fn interactive_is_whether_the_process_has_a_controlling_terminal() {
    let ksense = Ksense::start(&[]);
    let pid = run_detached(&["marker", "detached"], &[], &[]);
    let exec = ksense.wait_for("the detached exec", |e| is(e, "process.exec") && attr(e, "process.pid") == pid);
    assert_eq!(attr(&exec, "process.interactive"), false, "{exec}");

    if Command::new("script").arg("--version").output().is_err() {
        println!("skipped the pseudo-terminal half: `script` (util-linux) is not installed");
    } else {
        let bin = workload_bin();
        let command = format!("exec {} marker under-a-pty", bin.to_str().unwrap());
        let out = Command::new("script").args(["-qec", &command, "/dev/null"]).stdin(Stdio::null()).output().unwrap();
        assert!(out.status.success(), "script: {out:?}");
        let exec = ksense.wait_for("the exec under a pty", |e| {
            is(e, "process.exec") && attr(e, "process.command_args") == &json!([bin.to_str().unwrap(), "marker", "under-a-pty"])
        });
        assert_eq!(attr(&exec, "process.interactive"), true, "{exec}");
    }
    ksense.stop();
}
