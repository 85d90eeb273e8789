//! `[filters]` and `[limits] rate_per_second` end to end, and the `[sinks.file]` output; and
//! what an unprivileged process (uid 65534) does to slip past them: exec through `..` or a
//! symlink, take an excluded name, live in a cgroup named like a container.
use std::{
    ffi::OsStr,
    os::unix::{fs::PermissionsExt, process::CommandExt},
    path::{Path, PathBuf},
    process::{Command, Stdio},
};

use ksense_e2e::{Ksense, attr, is, printed_hex, run_workload, temp_config, workload_bin};

/// Runs `argv` as uid/gid 65534 (nobody) through setpriv (which execs as root first, then
/// `argv[0]` as nobody, in the same process); returns its stdout and pid.
fn run_as_nobody(argv: &[&OsStr]) -> (String, u32) {
    let child = Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups"])
        .args(argv)
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let pid = child.id();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "{argv:?} as nobody: {:?}", out.status);
    (String::from_utf8(out.stdout).unwrap(), pid)
}

/// Whether `event` is a module load or a W^X change, which rules without `events` never drop
/// (other tests on this host make W^X changes, as any uid).
fn critical(event: &&serde_json::Value) -> bool {
    is(event, "kernel.module.load") || attr(event, "ksense.memory.wx") == true
}

/// A directory for one test's files, readable and executable by nobody; removed on drop.
struct Scratch(PathBuf);

impl Scratch {
    fn new(name: &str) -> Scratch {
        let dir = std::env::temp_dir().join(format!("ksense-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
        Scratch(std::fs::canonicalize(dir).unwrap())
    }

    /// A copy of the workload binary at `name` (directories made as needed).
    fn program(&self, name: &str) -> PathBuf {
        let path = self.0.join(name);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::copy(workload_bin(), &path).unwrap();
        path
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The exec event of `pid` after setpriv's own (the one whose exec path is `exec_path`).
fn exec_event(ksense: &Ksense, pid: u32, exec_path: &str) -> serde_json::Value {
    ksense.wait_for(exec_path, |e| is(e, "process.exec") && attr(e, "process.pid") == pid && attr(e, "ksense.process.exec.path") == exec_path)
}

#[test]
fn excluded_uid_and_comm_are_dropped_in_the_kernel_and_path_globs_in_user_space() {
    let config = temp_config(
        "filters",
        "[filters]\nexclude = { uid = [65534], comm = [\"sleep\"], path = [\"/usr/bin/ti*\"] }\n",
    );
    let ksense = Ksense::start(&["--config", config.to_str().unwrap()]);
    let (_, nobody) = run_as_nobody(&[OsStr::new("/bin/true")]);
    let sleeper = Command::new("sleep").arg("0").spawn().unwrap();
    let sleep_pid = sleeper.id();
    sleeper.wait_with_output().unwrap();
    let timeout = Command::new("/usr/bin/timeout").args(["5", "/bin/true"]).spawn().unwrap();
    let timeout_pid = timeout.id();
    timeout.wait_with_output().unwrap();
    let (_, marker) = run_workload(&["marker"]);
    ksense.wait_for("the marker's exit", |e| is(e, "process.exit") && attr(e, "process.pid") == marker);
    let stopped = ksense.stop();
    // setpriv execs as root, then as nobody: only the latter is excluded.
    let excluded = [(nobody, "uid 65534", "/bin/true"), (sleep_pid, "comm sleep", "sleep"), (timeout_pid, "path /usr/bin/ti*", "/usr/bin/timeout")];
    for (pid, why, argv0) in excluded {
        let leaked: Vec<_> = stopped
            .events
            .iter()
            .filter(|e| attr(e, "process.pid") == pid && !is(e, "process.fork"))
            .filter(|e| attr(e, "process.command_args")[0] == argv0 || is(e, "process.exit"))
            .collect();
        assert!(leaked.is_empty(), "events of a process excluded by {why}: {leaked:?}");
    }
    // The path rule needs enrichment, so it runs in user space and is counted there; the uid and
    // comm rules ran in the kernel and never reached user space.
    assert!(stopped.counter("filtered") > 0, "{}", stopped.stderr);
    assert!(stopped.events.iter().filter(|e| !critical(e)).all(|e| attr(e, "process.user.id") != 65534));
}

#[test]
fn include_rules_narrow_to_matching_processes() {
    let config = temp_config("include", "[filters]\ninclude = { comm = [\"ksense-wor*\"] }\n");
    let ksense = Ksense::start(&["--config", config.to_str().unwrap()]);
    let (_, marker) = run_workload(&["marker"]);
    ksense.wait_for("the marker's exit", |e| is(e, "process.exit") && attr(e, "process.pid") == marker);
    Command::new("/bin/true").status().unwrap();
    let stopped = ksense.stop();
    let kept = stopped.events.iter().filter(|e| !critical(e));
    assert!(kept.into_iter().all(|e| attr(e, "process.executable.name").as_str().unwrap().starts_with("ksense-wor")));
}

#[test]
fn rate_limit_drops_and_counts_the_excess() {
    let config = temp_config("rate", "[limits]\nrate_per_second = { \"process.fork\" = 20 }\n");
    let ksense = Ksense::start(&["--config", config.to_str().unwrap()]);
    let (_, parent) = run_workload(&["fork-exit", "500"]);
    ksense.wait_for("the burst's exit", |e| is(e, "process.exit") && attr(e, "process.pid") == parent);
    let stopped = ksense.stop();
    let forks = stopped.events.iter().filter(|e| is(e, "process.fork") && attr(e, "process.parent_pid") == parent).count() as u64;
    let limited = stopped.counter("rate_limited");
    assert!(forks < 100, "{forks} forks passed a limit of 20/s");
    assert!(forks + limited >= 500, "{forks} passed + {limited} limited < 500");
}

#[test]
fn file_sink_writes_rotated_json_lines() {
    let dir = std::env::temp_dir().join(format!("ksense-file-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("events.json");
    let config = temp_config(
        "file",
        &format!("[sinks.file]\nenabled = true\npath = \"{}\"\nmax_bytes = 20000\nkeep = 3\n", path.display()),
    );
    let ksense = Ksense::start(&["--config", config.to_str().unwrap()]);
    let (_, parent) = run_workload(&["fork-exit", "200"]);
    ksense.wait_for("the burst's exit", |e| is(e, "process.exit") && attr(e, "process.pid") == parent);
    let stopped = ksense.stop();
    let mut lines = 0;
    for name in ["events.json", "events.json.1", "events.json.2", "events.json.3"] {
        let text = std::fs::read_to_string(dir.join(name)).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert!(text.len() <= 20_000, "{name} is {} bytes", text.len());
        for line in text.lines() {
            let event: serde_json::Value = serde_json::from_str(line).unwrap();
            assert!(event["event.name"].is_string());
            lines += 1;
        }
    }
    assert!(!dir.join("events.json.4").exists(), "keep = 3");
    assert!(lines > 0 && (lines as u64) < stopped.counter("sink_file_delivered"), "rotation dropped the oldest files");
    std::fs::remove_dir_all(dir).unwrap();
}

/// Path rules match the file the kernel executed, not the string given to execve: an exec
/// through `..` out of an excluded directory, or through a symlink in one, is reported, with the
/// real file's path; a program that really is in the excluded directory is dropped.
#[test]
fn path_rules_match_the_executed_file_not_the_execve_string() {
    let scratch = Scratch::new("path-evasion");
    let root = scratch.0.display().to_string();
    let evil = scratch.program("evil");
    let excluded = scratch.program("excluded/real");
    std::fs::create_dir_all(scratch.0.join("dir")).unwrap();
    std::os::unix::fs::symlink(&evil, scratch.0.join("excluded/x")).unwrap();
    let config = temp_config("path-evasion", &format!("[filters]\nexclude = {{ path = [\"{root}/dir/*\", \"{root}/excluded/*\"] }}\n"));
    let ksense = Ksense::start(&["--config", config.to_str().unwrap()]);

    let dotdot = format!("{root}/dir/../evil");
    let (_, dotdot_pid) = run_as_nobody(&[OsStr::new(&dotdot), OsStr::new("marker")]);
    let via_link = format!("{root}/excluded/x");
    let (_, link_pid) = run_as_nobody(&[OsStr::new(&via_link), OsStr::new("marker")]);
    let (_, excluded_pid) = run_as_nobody(&[excluded.as_os_str(), OsStr::new("marker")]);
    let (_, marker) = run_workload(&["marker"]);

    let evil_text = evil.to_str().unwrap();
    for (pid, exec_path) in [(dotdot_pid, &dotdot), (link_pid, &via_link)] {
        let exec = exec_event(&ksense, pid, exec_path);
        assert_eq!(attr(&exec, "process.executable.path"), evil_text, "{exec}");
        assert_eq!(attr(&exec, "process.user.id"), 65534, "{exec}");
    }
    ksense.wait_for("the marker's exit", |e| is(e, "process.exit") && attr(e, "process.pid") == marker);
    let stopped = ksense.stop();
    let leaked: Vec<_> = stopped
        .events
        .iter()
        .filter(|e| is(e, "process.exec") && attr(e, "process.pid") == excluded_pid && attr(e, "process.user.id") == 65534)
        .collect();
    assert!(leaked.is_empty(), "the program in the excluded directory was reported: {leaked:?}");
}

/// A program run by a relative path that at once execs a program in an excluded directory:
/// by the time ksense looks, `/proc/<pid>/exe` shows the successor, which is not the file the
/// first exec ran. The first exec is reported (without a path, which cannot be established),
/// not dropped as if it were the excluded program.
#[test]
fn an_exec_replaced_at_once_is_not_described_by_its_successor() {
    let scratch = Scratch::new("exec-again");
    let root = scratch.0.display().to_string();
    let real = scratch.program("excluded/real");
    let script = scratch.0.join("evil");
    std::fs::write(&script, format!("#!/bin/sh\nexec {} sleep 2\n", real.display())).unwrap();
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
    let config = temp_config("exec-again", &format!("[filters]\nexclude = {{ path = [\"{root}/excluded/*\"] }}\n"));
    let ksense = Ksense::start(&["--config", config.to_str().unwrap()]);
    let child = Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups", "./evil"])
        .current_dir(&scratch.0)
        .spawn()
        .unwrap();
    let pid = child.id();
    let exec = exec_event(&ksense, pid, "./evil");
    // What the kernel ran for the script is the shell; a relative path cannot be resolved later.
    let (path, shell) = (attr(&exec, "process.executable.path"), std::fs::canonicalize("/bin/sh").unwrap());
    assert!(path.is_null() || path == shell.to_str().unwrap(), "{exec}");
    assert!(child.wait_with_output().unwrap().status.success());
    let stopped = ksense.stop();
    let successor: Vec<_> = stopped
        .events
        .iter()
        .filter(|e| is(e, "process.exec") && attr(e, "process.pid") == pid && attr(e, "ksense.process.exec.path") == real.to_str().unwrap())
        .collect();
    assert!(successor.is_empty(), "the excluded successor was reported: {successor:?}");
}

/// `process.executable.path` is what `/proc/<pid>/exe` shows (`readlink -f` of the path), the
/// execve string is `ksense.process.exec.path`.
#[test]
fn exec_of_a_symlinked_shell_reports_the_real_binary() {
    let ksense = Ksense::start(&[]);
    let (_, pid) = run_as_nobody(&[OsStr::new("/usr/bin/sh"), OsStr::new("-c"), OsStr::new("exit 0")]);
    let exec = exec_event(&ksense, pid, "/usr/bin/sh");
    let real = std::fs::canonicalize("/usr/bin/sh").unwrap();
    assert_eq!(attr(&exec, "process.executable.path"), real.to_str().unwrap(), "{exec}");
    ksense.stop();
}

/// A program named like an excluded comm (run by nobody) loses its process events to the rule,
/// in the kernel, but not its W^X change, nor one made over a read-only page and a written one
/// (which the syscall tracepoints see only the first mapping of).
#[test]
fn an_excluded_comm_does_not_hide_a_wx_change() {
    let scratch = Scratch::new("comm-evasion");
    let x = scratch.program("x");
    let config = temp_config("comm-evasion", "[filters]\nexclude = { comm = [\"x\"] }\n");
    let ksense = Ksense::start(&["--config", config.to_str().unwrap()]);
    let (out, pid) = run_as_nobody(&[x.as_os_str(), OsStr::new("mprotect-anon-rx")]);
    let page = format!("{:#x}", printed_hex(&out, "page"));
    let change = ksense.wait_for("the W^X change of x", |e| {
        is(e, "process.memory.protect") && attr(e, "process.pid") == pid && attr(e, "ksense.memory.start") == page.as_str()
    });
    assert_eq!(attr(&change, "ksense.memory.wx"), true, "{change}");
    assert_eq!(attr(&change, "process.executable.name"), "x", "{change}");
    assert_eq!(attr(&change, "process.user.id"), 65534, "{change}");
    // One change over both mappings (syscall tracepoints), or the written page's own (fentry).
    let (_, span_pid) = run_as_nobody(&[x.as_os_str(), OsStr::new("mprotect-span")]);
    ksense.wait_for("the W^X change of x over two mappings", |e| {
        is(e, "process.memory.protect") && attr(e, "process.pid") == span_pid && attr(e, "ksense.memory.wx") == true
    });
    let stopped = ksense.stop();
    let exits: Vec<_> = stopped.events.iter().filter(|e| is(e, "process.exit") && attr(e, "process.pid") == pid).collect();
    assert!(exits.is_empty(), "the exit of x passed the comm rule: {exits:?}");
}

/// Where cgroup v2 is mounted with its root in view, if it is.
fn cgroup2_root() -> Option<PathBuf> {
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
    mountinfo.lines().find_map(|line| {
        let (mount, fs) = line.split_once(" - ")?;
        let fields: Vec<&str> = mount.split(' ').collect();
        (fs.starts_with("cgroup2 ") && fields.get(3) == Some(&"/")).then(|| PathBuf::from(fields[4]))
    })
}

/// A cgroup for one test, removed (after its processes are gone) on drop.
struct TestCgroup(PathBuf);

impl Drop for TestCgroup {
    fn drop(&mut self) {
        let mut dirs: Vec<PathBuf> = Vec::new();
        let mut stack = vec![self.0.clone()];
        while let Some(dir) = stack.pop() {
            stack.extend(std::fs::read_dir(&dir).into_iter().flatten().flatten().map(|e| e.path()).filter(|p| p.is_dir()));
            dirs.push(dir);
        }
        for dir in dirs.iter().rev() {
            let _ = std::fs::remove_dir(dir);
        }
    }
}

/// Starts the workload as nobody inside the cgroup `dir` (joined before the exec), sleeping
/// until killed: alive while enrichment reads its cgroup from /proc.
fn start_in_cgroup(dir: &Path) -> std::process::Child {
    std::fs::create_dir_all(dir).unwrap();
    let procs = dir.join("cgroup.procs");
    let mut command = Command::new("setpriv");
    command.args(["--reuid=65534", "--regid=65534", "--clear-groups"]).arg(workload_bin()).args(["sleep", "600"]);
    // SAFETY: only a write(2) to an already-built path between fork and exec.
    unsafe { command.pre_exec(move || std::fs::write(&procs, b"0")) };
    command.spawn().unwrap()
}

/// A cgroup named by 64 hex digits in a user's delegated subtree is no container, nor is one
/// named like docker's that uid 65534 made in a cgroup delegated to it (owned by it, as systemd
/// makes a `Delegate=yes` service's); the same id in docker's layout, made by root, is (which
/// shows the test can tell).
#[test]
fn a_user_cgroup_named_like_a_container_gets_no_container_id() {
    let Some(root) = cgroup2_root() else {
        eprintln!("skipped: cgroup v2 is not mounted with its root in view, so no test cgroup can be made");
        return;
    };
    let cgroup = TestCgroup(root.join(format!("ksense-e2e-{}.slice", std::process::id())));
    if let Err(e) = std::fs::create_dir(&cgroup.0) {
        eprintln!("skipped: cannot create a cgroup under {}: {e}", root.display());
        return;
    }
    let id = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";
    let delegated = cgroup.0.join("app.service");
    std::fs::create_dir(&delegated).unwrap();
    std::os::unix::fs::chown(&delegated, Some(65534), Some(65534)).unwrap();
    let forged = format!("app.service/docker-{id}.scope");
    let made = Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups", "mkdir"])
        .arg(cgroup.0.join(&forged))
        .status()
        .unwrap();
    assert!(made.success(), "uid 65534 could not make a cgroup in the one delegated to it");
    let ksense = Ksense::start(&[]);
    let cases = [
        (format!("user@65534.service/app.slice/{id}"), None),
        (id.to_owned(), None),
        (forged, None),
        (format!("docker-{id}.scope"), Some(id)),
    ];
    for (path, expected) in cases {
        let mut child = start_in_cgroup(&cgroup.0.join(&path));
        let pid = child.id();
        let exec = ksense.wait_for("the workload's exec", |e| {
            is(e, "process.exec") && attr(e, "process.pid") == pid && attr(e, "process.user.id") == 65534
        });
        child.kill().unwrap();
        child.wait().unwrap();
        let cgroup_line = attr(&exec, "process.linux.cgroup").as_str().unwrap_or_default();
        assert!(cgroup_line.ends_with(&path), "in {path}: {exec}");
        assert_eq!(attr(&exec, "container.id").as_str(), expected, "{exec}");
    }
    ksense.stop();
}

/// ksense's own threads (its pipeline and sink threads start after the probes) are not reported.
#[test]
fn ksense_does_not_report_itself() {
    let ksense = Ksense::start(&[]);
    let (_, marker) = run_workload(&["marker"]);
    ksense.wait_for("the marker's exit", |e| is(e, "process.exit") && attr(e, "process.pid") == marker);
    let pid = ksense.pid();
    let stopped = ksense.stop();
    let own: Vec<_> = stopped.events.iter().filter(|e| attr(e, "process.pid") == pid).collect();
    assert!(own.is_empty(), "ksense reported itself: {own:?}");
}

/// Under a storm of forks that overruns the ring buffer while ksense is stopped, a W^X change
/// made after the storm still finds room: the reserve is kept for it. (Without the reserve the
/// full ring would refuse it too.)
#[test]
fn a_wx_change_finds_room_after_a_process_event_storm() {
    let config = temp_config("reserve", "[limits]\nring_buffer_bytes = 65536\n");
    let ksense = Ksense::start(&["--config", config.to_str().unwrap()]);
    ksense.signal(libc::SIGSTOP);
    let (_, storm) = run_workload(&["fork-exit", "3000"]);
    let (out, pid) = run_as_nobody(&[workload_bin().as_os_str(), OsStr::new("mprotect-anon-rx")]);
    ksense.signal(libc::SIGCONT);
    let page = format!("{:#x}", printed_hex(&out, "page"));
    let change = ksense.wait_for("the W^X change after the storm", |e| {
        is(e, "process.memory.protect") && attr(e, "process.pid") == pid && attr(e, "ksense.memory.start") == page.as_str()
    });
    assert_eq!(attr(&change, "ksense.memory.wx"), true, "{change}");
    let stopped = ksense.stop();
    let lost = stopped.counter("lost_ring_buffer_process_fork") + stopped.counter("lost_ring_buffer_process_exit");
    assert!(lost > 0, "the storm of {storm} did not overrun the ring buffer: {}", stopped.stderr);
}
