//! Executable identity end to end: the build-id and SHA-256 of the very file the kernel executed,
//! on the exec and the process's later events, in the JSON line and the journal entry; never the
//! hash of a file put in its place; the reason when a file is not hashed.
use std::{
    path::{Path, PathBuf},
    process::{Command, Stdio},
};

use ksense_e2e::{
    Ksense, attr, is,
    journald::{Run, value},
    run_workload, temp_config, workload_bin,
};
use serde_json::Value;

/// `sha256sum` of `path`.
fn sha256sum(path: &Path) -> String {
    let out = Command::new("sha256sum").arg(path).output().expect("sha256sum");
    assert!(out.status.success(), "sha256sum {}", path.display());
    String::from_utf8(out.stdout).unwrap().split_whitespace().next().unwrap().to_owned()
}

/// The build-id `readelf -n` shows for `path`; `None` (said on stderr) without readelf.
fn readelf_build_id(path: &Path) -> Option<String> {
    let Ok(out) = Command::new("readelf").arg("-n").arg(path).output() else {
        eprintln!("readelf is not installed: the build-id is not compared");
        return None;
    };
    let text = String::from_utf8_lossy(&out.stdout);
    Some(text.lines().find_map(|l| l.trim().strip_prefix("Build ID: ")).expect("the workload has a build-id").to_owned())
}

/// An attribute as text, `None` when absent.
fn text(event: &Value, name: &str) -> Option<String> {
    event["attributes"].get(name).map(|v| v.as_str().unwrap_or_else(|| panic!("{name} is not a string: {event}")).to_owned())
}

/// A copy of the workload in a directory of its own (removed with [`Copy`]'s drop).
struct Copy(PathBuf);

impl Copy {
    fn new(name: &str) -> Copy {
        let dir = std::env::temp_dir().join(format!("ksense-identity-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("prog");
        std::fs::copy(workload_bin(), &path).unwrap();
        Copy(path)
    }
}

impl Drop for Copy {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(self.0.parent().unwrap());
    }
}

/// An exec of the workload reports the SHA-256 `sha256sum` gives and the build-id `readelf`
/// shows, in the JSON line and the journal entry; its exit (a later event) carries them too.
#[test]
fn exec_reports_the_sha256_and_build_id_of_the_executed_file() {
    let run = Run::start("identity-exec");
    let bin = workload_bin();
    let (_, pid) = run_workload(&["marker"]);
    let exec = run.ksense.wait_for("the workload's exec", |e| is(e, "process.exec") && attr(e, "process.pid") == pid);
    let exit = run.ksense.wait_for("the workload's exit", |e| is(e, "process.exit") && attr(e, "process.pid") == pid);
    let sha256 = sha256sum(&bin);
    let build_id = readelf_build_id(&bin);
    assert_eq!(text(&exec, "ksense.process.executable.sha256").as_deref(), Some(sha256.as_str()), "{exec}");
    assert_eq!(text(&exec, "ksense.process.executable.hash_skipped"), None, "{exec}");
    if let Some(build_id) = &build_id {
        assert_eq!(text(&exec, "process.executable.build_id.gnu").as_ref(), Some(build_id), "{exec}");
        assert_eq!(text(&exit, "process.executable.build_id.gnu").as_ref(), Some(build_id), "{exit}");
    }
    assert_eq!(text(&exit, "ksense.process.executable.sha256").as_deref(), Some(sha256.as_str()), "{exit}");
    let entry = run.entry(&["SYSLOG_IDENTIFIER=ksense", "KSENSE_EVENT=process.exec", &format!("PROCESS_PID={pid}")]);
    assert_eq!(value(&entry, "KSENSE_PROCESS_EXECUTABLE_SHA256"), sha256);
    if let Some(build_id) = build_id {
        assert_eq!(value(&entry, "PROCESS_EXECUTABLE_BUILD_ID_GNU"), build_id);
    }
    run.ksense.stop();
}

/// A program whose file is replaced right after its exec: the hash is the executed content's,
/// never the new file's. While it runs, `/proc/<pid>/exe` still leads to what it executed (a
/// rename over its path changes nothing); once it is gone, a file rewritten in place since has
/// another change time, so it is not hashed (`changed`), unless ksense hashed it before.
#[test]
fn a_file_replaced_after_exec_is_never_hashed_in_its_place() {
    let ksense = Ksense::start(&[]);
    let executed = sha256sum(&workload_bin());

    // Still running: replaced by a rename over its path.
    let running = Copy::new("renamed");
    let mut child = spawn(Command::new(&running.0).args(["sleep", "2"]));
    let pid = child.id();
    let other = running.0.with_file_name("other");
    std::fs::write(&other, b"#!/bin/sh\nexit 0\n").unwrap();
    std::fs::rename(&other, &running.0).unwrap();
    assert!(child.wait().unwrap().success());
    let exec = ksense.wait_for("the replaced program's exec", |e| is(e, "process.exec") && attr(e, "process.pid") == pid);
    let exit = ksense.wait_for("the replaced program's exit", |e| is(e, "process.exit") && attr(e, "process.pid") == pid);
    for event in [&exec, &exit] {
        assert_eq!(text(event, "ksense.process.executable.sha256").as_deref(), Some(executed.as_str()), "the executed content's: {event}");
    }

    // Gone, then rewritten in place (same inode): its hash or none, never the new content's.
    let rewritten = Copy::new("rewritten");
    let (_, pid) = run_workload_at(&rewritten.0);
    let mut content = std::fs::read(&rewritten.0).unwrap();
    content.extend_from_slice(b"appended after the exec");
    std::fs::write(&rewritten.0, &content).unwrap();
    assert_ne!(sha256sum(&rewritten.0), executed, "the content changed");
    let exec = ksense.wait_for("the rewritten program's exec", |e| is(e, "process.exec") && attr(e, "process.pid") == pid);
    match (text(&exec, "ksense.process.executable.sha256"), text(&exec, "ksense.process.executable.hash_skipped")) {
        (Some(hash), None) => assert_eq!(hash, executed, "hashed before the rewrite: the executed content's: {exec}"),
        (None, Some(why)) => assert!(["changed", "pending"].contains(&why.as_str()), "{exec}"),
        _ => panic!("a hash or a reason: {exec}"),
    }
    ksense.stop();
}

/// Starts `command`, its stdout piped. A copy just written may be refused for a moment
/// (`ETXTBSY`): a test running beside this one may have forked while the copy was open for
/// writing, and its child holds that descriptor until it execs.
fn spawn(command: &mut Command) -> std::process::Child {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    loop {
        match command.stdout(Stdio::piped()).spawn() {
            Err(e) if e.raw_os_error() == Some(libc::ETXTBSY) && std::time::Instant::now() < deadline => {
                std::thread::sleep(std::time::Duration::from_millis(10))
            }
            spawned => return spawned.unwrap(),
        }
    }
}

/// Runs the program at `path` in its `marker` mode, which exits at once.
fn run_workload_at(path: &Path) -> (String, u32) {
    let child = spawn(Command::new(path).arg("marker"));
    let pid = child.id();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "{} marker: {:?}", path.display(), out.status);
    (String::from_utf8(out.stdout).unwrap(), pid)
}

/// A file over `[identity] max_file_bytes` is not hashed and the record says why; its build-id
/// is still read. With `wait_ms = 0` an exec does not wait: a file not hashed before goes out
/// `pending`, and the process's later events carry its hash.
#[test]
fn a_file_over_the_size_cap_says_too_large_and_a_pending_hash_comes_later() {
    let config = temp_config("identity-cap", "[identity]\nmax_file_bytes = 4096\n");
    let ksense = Ksense::start(&["--config", config.to_str().unwrap()]);
    let (_, pid) = run_workload(&["marker"]);
    let exec = ksense.wait_for("the workload's exec", |e| is(e, "process.exec") && attr(e, "process.pid") == pid);
    assert_eq!(text(&exec, "ksense.process.executable.hash_skipped").as_deref(), Some("too_large"), "{exec}");
    assert_eq!(text(&exec, "ksense.process.executable.sha256"), None, "{exec}");
    if let Some(build_id) = readelf_build_id(&workload_bin()) {
        assert_eq!(text(&exec, "process.executable.build_id.gnu"), Some(build_id), "{exec}");
    }
    ksense.stop();

    let config = temp_config("identity-nowait", "[identity]\nwait_ms = 0\n");
    let ksense = Ksense::start(&["--config", config.to_str().unwrap()]);
    // A file of its own, so no earlier exec put it in the cache.
    let copy = Copy::new("pending");
    let mut child = spawn(Command::new(&copy.0).args(["sleep", "1"]));
    let pid = child.id();
    assert!(child.wait().unwrap().success());
    let exec = ksense.wait_for("the copy's exec", |e| is(e, "process.exec") && attr(e, "process.pid") == pid);
    let exit = ksense.wait_for("the copy's exit", |e| is(e, "process.exit") && attr(e, "process.pid") == pid);
    let executed = sha256sum(&copy.0);
    // The worker may be quicker than the pipeline: then the exec has it too.
    let on_exec = text(&exec, "ksense.process.executable.sha256");
    assert!(on_exec.as_ref() == Some(&executed) || text(&exec, "ksense.process.executable.hash_skipped").as_deref() == Some("pending"), "{exec}");
    assert_eq!(text(&exit, "ksense.process.executable.sha256"), Some(executed), "the exit, a second later: {exit}");
    ksense.stop();
}
