//! Executable identity end to end: the build-id and SHA-256 of the very file the kernel executed,
//! on the exec and the process's later events, in the JSON line and the journal entry; never the
//! hash of a file put in its place; the reason when a file is not hashed.
use std::{
    os::unix::fs::MetadataExt,
    path::{Path, PathBuf},
    process::{Command, Stdio},
};

use ksense_e2e::{
    Ksense, attr,
    collector::Collector,
    is,
    journald::{Run, value},
    temp_config, workload_bin,
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

/// What a record says of its executable's hash: the hash, or why there is none.
fn outcome(event: &Value) -> Result<String, String> {
    match (text(event, "ksense.process.executable.sha256"), text(event, "ksense.process.executable.hash_skipped")) {
        (Some(hash), None) => Ok(hash),
        (None, Some(why)) => Err(why),
        _ => panic!("a hash or a reason: {event}"),
    }
}

/// The exec and exit records of process `pid`. The exit (seconds later: the programs run here
/// sleep) carries the identity the worker found; the exec the same, or `pending` when the
/// worker took longer than `wait_ms` (a loaded machine).
fn exec_and_exit(ksense: &Ksense, pid: u32) -> (Value, Value) {
    let exec = ksense.wait_for("the exec", |e| is(e, "process.exec") && attr(e, "process.pid") == pid);
    let exit = ksense.wait_for("the exit", |e| is(e, "process.exit") && attr(e, "process.pid") == pid);
    assert_ne!(outcome(&exit), Err("pending".into()), "{exit}");
    assert!(outcome(&exec) == outcome(&exit) || outcome(&exec) == Err("pending".into()), "exec {exec}\nexit {exit}");
    (exec, exit)
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

/// Runs `program` with `args` to its end; its pid.
fn run_to_end(program: &Path, args: &[&str]) -> u32 {
    let mut child = spawn(Command::new(program).args(args));
    let pid = child.id();
    assert!(child.wait().unwrap().success(), "{} {args:?}", program.display());
    pid
}

/// An exec of the workload reports the SHA-256 `sha256sum` gives and the build-id `readelf`
/// shows, on the exec and the exit (a later event), in the JSON line, the journal entry and the
/// OTLP record (as strings).
#[test]
fn exec_reports_the_sha256_and_build_id_of_the_executed_file() {
    let collector = Collector::start();
    let otlp = format!("[sinks.otlp]\nendpoint = \"http://127.0.0.1:{}\"\n", collector.grpc_port);
    let run = Run::start_with("identity-exec", &otlp);
    let bin = workload_bin();
    let pid = run_to_end(&bin, &["sleep", "2"]);
    let (exec, exit) = exec_and_exit(&run.ksense, pid);
    let sha256 = sha256sum(&bin);
    assert_eq!(outcome(&exit), Ok(sha256.clone()), "{exit}");
    let build_id = readelf_build_id(&bin);
    if let Some(build_id) = &build_id {
        for event in [&exec, &exit] {
            assert_eq!(text(event, "process.executable.build_id.gnu").as_ref(), Some(build_id), "{event}");
        }
    }
    let entry = run.entry(&["SYSLOG_IDENTIFIER=ksense", "KSENSE_EVENT=process.exit", &format!("PROCESS_PID={pid}")]);
    assert_eq!(value(&entry, "KSENSE_PROCESS_EXECUTABLE_SHA256"), sha256);
    if let Some(build_id) = &build_id {
        assert_eq!(&value(&entry, "PROCESS_EXECUTABLE_BUILD_ID_GNU"), build_id);
    }
    let pid_attr = format!("Int({pid})");
    let record = collector.wait_for("the exit", |r| r.event_name == "process.exit" && r.attributes.get("process.pid") == Some(&pid_attr));
    assert_eq!(record.attributes.get("ksense.process.executable.sha256"), Some(&format!("Str({sha256})")), "{record:?}");
    if let Some(build_id) = build_id {
        assert_eq!(record.attributes.get("process.executable.build_id.gnu"), Some(&format!("Str({build_id})")), "{record:?}");
    }
    let stopped = run.ksense.stop();
    assert_eq!(stopped.counter("sink_otlp_failed"), 0, "{}", stopped.stderr);
}

/// A program whose file is replaced right after its exec: the hash is the executed content's,
/// or absent, never the new file's. Replaced by a rename while it runs, `/proc/<pid>/exe`
/// still leads to the executed inode, but the rename dropped its link count, which moved its
/// change time: ksense cannot tell that from a write, so unless it hashed the file before the
/// rename, it says `changed`. Rewritten in place once the process is gone, the same inode has
/// another change time too.
#[test]
fn a_file_replaced_after_exec_is_never_hashed_in_its_place() {
    let ksense = Ksense::start(&[]);
    let executed = sha256sum(&workload_bin());

    let running = Copy::new("renamed");
    let mut child = spawn(Command::new(&running.0).args(["sleep", "2"]));
    let pid = child.id();
    let other = running.0.with_file_name("other");
    std::fs::write(&other, b"#!/bin/sh\nexit 0\n").unwrap();
    std::fs::rename(&other, &running.0).unwrap();
    assert!(child.wait().unwrap().success());
    let (_, exit) = exec_and_exit(&ksense, pid);
    assert_executed_or(&exit, &executed, &sha256sum(&running.0), &["changed"]);

    let rewritten = Copy::new("rewritten");
    let pid = run_to_end(&rewritten.0, &["marker"]);
    // Change times have the clock's granularity (a timer tick on many file systems): the
    // rewrite must come after the copy's tick for its change time to differ.
    let meta = std::fs::metadata(&rewritten.0).unwrap();
    let changed = std::time::UNIX_EPOCH + std::time::Duration::new(meta.ctime() as u64, meta.ctime_nsec() as u32);
    while std::time::SystemTime::now() < changed + std::time::Duration::from_millis(20) {
        std::thread::sleep(std::time::Duration::from_millis(1));
    }
    let mut content = std::fs::read(&rewritten.0).unwrap();
    content.extend_from_slice(b"appended after the exec");
    std::fs::write(&rewritten.0, &content).unwrap();
    let exec = ksense.wait_for("the rewritten program's exec", |e| is(e, "process.exec") && attr(e, "process.pid") == pid);
    // The program exits at once: its exec may go out before the hash is done.
    assert_executed_or(&exec, &executed, &sha256sum(&rewritten.0), &["changed", "pending"]);
    ksense.stop();
}

/// `event` carries the executed content's hash, or one of the reasons `allowed`; never
/// `replacement`'s hash.
fn assert_executed_or(event: &Value, executed: &str, replacement: &str, allowed: &[&str]) {
    assert_ne!(executed, replacement, "the content changed");
    match outcome(event) {
        Ok(hash) => assert_eq!(hash, executed, "the executed content's: {event}"),
        Err(why) => assert!(allowed.contains(&why.as_str()), "{event}"),
    }
}

/// A file over `[identity] max_file_bytes` is not hashed and the record says why; its build-id
/// is still read. With `wait_ms = 0` an exec does not wait: a file not hashed before goes out
/// `pending` (unless the worker was quicker), and the process's later events carry its hash.
#[test]
fn a_file_over_the_size_cap_says_too_large_and_a_pending_hash_comes_later() {
    let config = temp_config("identity-cap", "[identity]\nmax_file_bytes = 4096\n");
    let ksense = Ksense::start(&["--config", config.to_str().unwrap()]);
    let pid = run_to_end(&workload_bin(), &["sleep", "2"]);
    let (exec, exit) = exec_and_exit(&ksense, pid);
    assert_eq!(outcome(&exit), Err("too_large".into()), "{exit}");
    if let Some(build_id) = readelf_build_id(&workload_bin()) {
        assert_eq!(text(&exit, "process.executable.build_id.gnu"), Some(build_id), "{exec}");
    }
    ksense.stop();

    let config = temp_config("identity-nowait", "[identity]\nwait_ms = 0\n");
    let ksense = Ksense::start(&["--config", config.to_str().unwrap()]);
    // A file of its own, so no earlier exec put it in the cache.
    let copy = Copy::new("pending");
    let pid = run_to_end(&copy.0, &["sleep", "2"]);
    let (_, exit) = exec_and_exit(&ksense, pid);
    assert_eq!(outcome(&exit), Ok(sha256sum(&copy.0)), "the exit, seconds later: {exit}");
    ksense.stop();
}

/// A file system mounted for a test under a directory of its own, unmounted (and the
/// directory removed) on drop.
struct Mounted(PathBuf);

impl Mounted {
    /// `mount ARGS... <dir>/mnt`, or why not.
    fn new(name: &str, prepare: impl FnOnce(&Path) -> Result<Vec<String>, String>) -> Result<Mounted, String> {
        let dir = std::env::temp_dir().join(format!("ksense-identity-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("mnt")).unwrap();
        let mounted = Mounted(dir.clone());
        let mut args = prepare(&dir)?;
        args.push(dir.join("mnt").display().to_string());
        let out = Command::new("mount").args(&args).output().map_err(|e| format!("mount: {e}"))?;
        if !out.status.success() {
            return Err(format!("mount {args:?}: {}", String::from_utf8_lossy(&out.stderr).trim()));
        }
        Ok(mounted)
    }

    fn at(&self) -> PathBuf {
        self.0.join("mnt")
    }
}

impl Drop for Mounted {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(self.at()).status();
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Whether this kernel has file system `name` (`/proc/filesystems`).
fn kernel_has(name: &str) -> bool {
    std::fs::read_to_string("/proc/filesystems").unwrap_or_default().lines().any(|l| l.split_whitespace().last() == Some(name))
}

/// A btrfs file system in an image file, with a subvolume `sub`.
fn btrfs(dir: &Path) -> Result<Vec<String>, String> {
    let image = dir.join("btrfs.img");
    std::fs::File::create(&image).unwrap().set_len(300 << 20).unwrap();
    let made = Command::new("mkfs.btrfs").arg("-q").arg(&image).output().map_err(|e| format!("mkfs.btrfs (btrfs-progs): {e}"))?;
    if !made.status.success() {
        return Err(format!("mkfs.btrfs: {}", String::from_utf8_lossy(&made.stderr).trim()));
    }
    Ok(vec!["-o".into(), "loop".into(), image.display().to_string()])
}

/// An overlay of an empty lower and upper directory on the temporary directory's file system.
fn overlay(dir: &Path) -> Result<Vec<String>, String> {
    for d in ["lower", "upper", "work"] {
        std::fs::create_dir_all(dir.join(d)).unwrap();
    }
    let at = |d: &str| dir.join(d).display().to_string();
    let options = format!("lowerdir={},upperdir={},workdir={}", at("lower"), at("upper"), at("work"));
    Ok(vec!["-t".into(), "overlay".into(), "overlay".into(), "-o".into(), options])
}

/// A program run from btrfs (top level and a subvolume) and from overlayfs (what container
/// images are) is named and hashed like any other, although `stat` gives btrfs files a device
/// number other than the one the kernel's inode holds. Skipped, saying why, for a file system
/// this kernel or host lacks.
#[test]
fn programs_on_btrfs_and_overlayfs_are_named_and_hashed() {
    let config = temp_config("identity-fs", "[sinks.journald]\nenabled = false\n");
    let ksense = Ksense::start(&["--config", config.to_str().unwrap()]);
    let sha256 = sha256sum(&workload_bin());
    let mut tried = 0;
    for (fs, prepare, dirs) in [("btrfs", btrfs as fn(&Path) -> _, &["", "sub"][..]), ("overlay", overlay, &[""][..])] {
        let mounted = match kernel_has(fs).then(|| Mounted::new(fs, prepare)) {
            None => {
                eprintln!("skipped {fs}: this kernel has no {fs} (/proc/filesystems)");
                continue;
            }
            Some(Err(why)) => {
                eprintln!("skipped {fs}: {why}");
                continue;
            }
            Some(Ok(mounted)) => mounted,
        };
        for dir in dirs {
            let at = mounted.at().join(dir);
            if !dir.is_empty() {
                let made = Command::new("btrfs").args(["subvolume", "create"]).arg(&at).output().expect("btrfs (btrfs-progs)");
                assert!(made.status.success(), "btrfs subvolume create: {}", String::from_utf8_lossy(&made.stderr));
            }
            let program = at.join("prog");
            std::fs::copy(workload_bin(), &program).unwrap();
            let pid = run_to_end(&program, &["marker"]);
            let exit = ksense.wait_for("the exit", |e| is(e, "process.exit") && attr(e, "process.pid") == pid);
            assert_eq!(text(&exit, "process.executable.path"), Some(program.display().to_string()), "{fs}: {exit}");
            assert_eq!(outcome(&exit), Ok(sha256.clone()), "{fs}: {exit}");
            tried += 1;
        }
    }
    eprintln!("programs run from {tried} mounts were named and hashed");
    ksense.stop();
}
