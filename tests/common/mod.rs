//! Harness for the end-to-end tests: start the real `ksense` binary (built by `cargo build`),
//! collect the JSON lines it prints, drive real processes, and stop it like a user would.
//!
//! The tests need root (they load eBPF programs), as in CI.
use std::{
    collections::BTreeMap,
    io::{BufRead, BufReader},
    path::PathBuf,
    process::{Child, Command, Stdio},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use serde_json::Value;

pub mod checks;
pub mod collector;
pub mod journald;
pub mod load;
pub mod receiver;
pub mod stats;

/// How long to wait for ksense to start, or for an event, before failing, unless
/// `$KSENSE_TEST_TIMEOUT_SECS` says otherwise (the VM test sets it: under qemu's software
/// emulation everything is about ten times slower).
pub const EVENT_TIMEOUT: Duration = Duration::from_secs(20);

/// [`EVENT_TIMEOUT`], or `$KSENSE_TEST_TIMEOUT_SECS` seconds when set.
pub fn event_timeout() -> Duration {
    match std::env::var("KSENSE_TEST_TIMEOUT_SECS") {
        Ok(secs) => Duration::from_secs(
            secs.trim().parse().unwrap_or_else(|_| panic!("KSENSE_TEST_TIMEOUT_SECS={secs:?} is not a number of seconds")),
        ),
        Err(_) => EVENT_TIMEOUT,
    }
}

/// The `ksense` binary: `$KSENSE_BIN`, else the one in this test's target directory.
pub fn ksense_bin() -> PathBuf {
    match std::env::var_os("KSENSE_BIN") {
        Some(bin) => bin.into(),
        None => target_bin("ksense", "cargo build -p ksense"),
    }
}

/// The workload binary: `$KSENSE_WORKLOAD_BIN`, else the one built with these tests.
pub fn workload_bin() -> PathBuf {
    match std::env::var_os("KSENSE_WORKLOAD_BIN") {
        Some(bin) => bin.into(),
        None => target_bin("ksense-workload", "cargo build -p ksense-e2e"),
    }
}

/// `name` in the target directory this test runs from (target/<profile>/deps/<test>).
pub fn target_bin(name: &str, build: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("current_exe");
    let bin = exe.parent().and_then(|d| d.parent()).expect("target dir").join(name);
    assert!(bin.exists(), "{} is missing: build it first with `{build}`", bin.display());
    bin
}

fn require_root() {
    assert_eq!(
        unsafe { libc::geteuid() },
        0,
        "the end-to-end tests load eBPF programs: run them as root (sudo make test)"
    );
}

/// A running ksense and what it has printed so far.
pub struct Ksense {
    child: Child,
    /// ksense's stdout when nobody reads it ([`Ksense::start_with_stdout_unread`]): kept open,
    /// so the pipe fills rather than breaks.
    unread_stdout: Option<std::process::ChildStdout>,
    events: Arc<Mutex<Vec<Value>>>,
    own: Arc<Mutex<Vec<Value>>>,
    stderr: Arc<Mutex<String>>,
    readers: Vec<std::thread::JoinHandle<()>>,
}

/// What a stopped ksense left.
pub struct Stopped {
    /// Every event it printed.
    pub events: Vec<Value>,
    /// Every record it printed about itself (`ksense.loss`, `ksense.status`).
    pub own: Vec<Value>,
    /// Its diagnostics.
    pub stderr: String,
    /// Its exit status.
    pub status: std::process::ExitStatus,
}

impl Stopped {
    /// What sink `name` delivered or counted as dropped (queue full, memory budget, failed,
    /// rejected): every record it was offered, when nothing went uncounted.
    pub fn sink_accounted(&self, name: &str) -> u64 {
        ["delivered", "queue_full", "memory_budget", "failed", "rejected"].iter().map(|c| self.counter(&format!("sink_{name}_{c}"))).sum()
    }

    /// The value of `key=N` in the final counters line.
    pub fn counter(&self, key: &str) -> u64 {
        let totals = stopped_totals(&self.stderr)
            .unwrap_or_else(|| panic!("no final counters line in ksense's stderr:\n{}", self.stderr));
        *totals.get(key).unwrap_or_else(|| panic!("no {key} in the final counters line: {totals:?}"))
    }
}

/// The `key=N` pairs of the last `ksense stopped:` line in ksense's diagnostics (the counters it
/// logs at exit: events_written, lost_total, cpu_user_us, peak_rss_kib, latency_p99_us, ...);
/// `None` when there is no such line.
pub fn stopped_totals(stderr: &str) -> Option<BTreeMap<String, u64>> {
    let line = stderr.lines().rev().find_map(|l| l.split_once("ksense stopped: ").map(|(_, rest)| rest))?;
    Some(
        line.split_whitespace()
            .filter_map(|pair| {
                let (key, value) = pair.split_once('=')?;
                Some((key.to_owned(), value.parse().ok()?))
            })
            .collect(),
    )
}

impl Ksense {
    /// Starts `ksense run --output json` with `extra` arguments and waits until it runs.
    pub fn start(extra: &[&str]) -> Ksense {
        Ksense::start_with_env(extra, &[])
    }

    /// [`Ksense::start`] with extra environment variables.
    pub fn start_with_env(extra: &[&str], env: &[(&str, &str)]) -> Ksense {
        Ksense::spawn("json", extra, env, true)
    }

    /// `ksense run --output none` with `extra` arguments: for a test that looks only at other
    /// sinks, where JSON lines on stdout would cost more than what is tested (no events are
    /// collected).
    pub fn start_without_stdout(extra: &[&str]) -> Ksense {
        Ksense::spawn("none", extra, &[], true)
    }

    /// [`Ksense::start`], but nobody reads ksense's stdout: the pipe fills up and ksense's
    /// writes to it block, as when the reader of `ksense run | reader` stops reading.
    /// [`Ksense::stdout_is_blocked`] says when it has.
    pub fn start_with_stdout_unread(extra: &[&str]) -> Ksense {
        Ksense::spawn("json", extra, &[], false)
    }

    /// Whether ksense's writes to its unread stdout pipe block: the pipe holds data, and a
    /// thread of ksense waits in the kernel's pipe write (`pipe_write`, `anon_pipe_write`; its other
    /// pipe, stderr, is read all along).
    pub fn stdout_is_blocked(&self) -> bool {
        use std::os::fd::AsRawFd;
        let fd = self.unread_stdout.as_ref().expect("stdout is read").as_raw_fd();
        let mut queued: libc::c_int = 0;
        // SAFETY: FIONREAD writes one int; F_GETPIPE_SZ takes no argument.
        let (read, size) = unsafe { (libc::ioctl(fd, libc::FIONREAD, &mut queued), libc::fcntl(fd, libc::F_GETPIPE_SZ)) };
        assert!(read == 0 && size > 0, "cannot query ksense's stdout pipe");
        let tasks = std::fs::read_dir(format!("/proc/{}/task", self.child.id())).into_iter().flatten().flatten();
        let waiting = tasks.filter_map(|t| std::fs::read_to_string(t.path().join("wchan")).ok()).any(|w| w.ends_with("pipe_write"));
        queued > size / 2 && waiting
    }

    fn spawn(output: &str, extra: &[&str], env: &[(&str, &str)], read_stdout: bool) -> Ksense {
        require_root();
        let mut child = Command::new(ksense_bin())
            .args(["run", "--output", output])
            .args(extra)
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("cannot start ksense");
        let events = Arc::new(Mutex::new(Vec::new()));
        let own = Arc::new(Mutex::new(Vec::new()));
        let stderr = Arc::new(Mutex::new(String::new()));
        let out = child.stdout.take().unwrap();
        let err = child.stderr.take().unwrap();
        let (out, unread_stdout) = if read_stdout { (Some(out), None) } else { (None, Some(out)) };
        let readers = out
            .map(|out| {
                let (events, own) = (events.clone(), own.clone());
                std::thread::spawn(move || {
                    for line in BufReader::new(out).split(b'\n') {
                        let line = line.unwrap();
                        let value: Value = serde_json::from_slice(&line).unwrap_or_else(|e| {
                            panic!("ksense printed a line that is not JSON ({e}): {}", String::from_utf8_lossy(&line))
                        });
                        let list = if is_own(&value) { &own } else { &events };
                        list.lock().unwrap().push(value);
                    }
                })
            })
            .into_iter()
            .chain([{
                let stderr = stderr.clone();
                std::thread::spawn(move || {
                    for line in BufReader::new(err).lines() {
                        let line = line.unwrap();
                        let mut s = stderr.lock().unwrap();
                        s.push_str(&line);
                        s.push('\n');
                    }
                })
            }])
            .collect();
        let mut ksense = Ksense { child, unread_stdout, events, own, stderr, readers };
        let deadline = Instant::now() + event_timeout();
        while !ksense.stderr().contains("ksense is running") {
            if let Ok(Some(status)) = ksense.child.try_wait() {
                // Let the reader drain what it said before it went.
                std::thread::sleep(Duration::from_millis(200));
                panic!("ksense exited ({status}) before it ran:\n{}", ksense.stderr());
            }
            if Instant::now() > deadline {
                panic!("ksense did not start:\n{}", ksense.stderr());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        ksense
    }

    /// ksense's process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Diagnostics so far.
    pub fn stderr(&self) -> String {
        self.stderr.lock().unwrap().clone()
    }

    /// Waits for the first event matching `predicate`.
    pub fn wait_for(&self, what: &str, predicate: impl Fn(&Value) -> bool) -> Value {
        let timeout = event_timeout();
        self.try_wait_for(timeout, predicate)
            .unwrap_or_else(|| panic!("no {what} within {timeout:?}; ksense said:\n{}", self.stderr()))
    }

    /// The first event matching `predicate`, waiting at most `timeout` for it.
    pub fn try_wait_for(&self, timeout: Duration, predicate: impl Fn(&Value) -> bool) -> Option<Value> {
        let deadline = Instant::now() + timeout;
        // Only events that arrived since the last look are examined: a scan of the whole list
        // under its lock every few milliseconds would slow the reader enough under load that
        // ksense's stdout queue fills.
        let mut examined = 0;
        loop {
            {
                let events = self.events.lock().unwrap();
                if let Some(found) = events[examined..].iter().find(|e| predicate(e)) {
                    return Some(found.clone());
                }
                examined = events.len();
            }
            if Instant::now() > deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Waits until ksense's diagnostics contain `text`.
    pub fn wait_for_log(&self, text: &str) {
        let deadline = Instant::now() + event_timeout();
        while !self.stderr().contains(text) {
            assert!(Instant::now() < deadline, "ksense never said {text:?}:\n{}", self.stderr());
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Every event printed so far.
    pub fn events(&self) -> Vec<Value> {
        self.events.lock().unwrap().clone()
    }

    /// Every record about itself (`ksense.loss`, `ksense.status`) printed so far.
    pub fn own(&self) -> Vec<Value> {
        self.own.lock().unwrap().clone()
    }

    /// Sends `signal` (e.g. `libc::SIGHUP`) to ksense.
    pub fn signal(&self, signal: i32) {
        unsafe { libc::kill(self.child.id() as i32, signal) };
    }

    /// Sends SIGTERM and waits for ksense to exit.
    pub fn stop(mut self) -> Stopped {
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let status = self.child.wait().unwrap();
        for reader in self.readers.drain(..) {
            reader.join().expect("an output reader panicked");
        }
        let events = std::mem::take(&mut *self.events.lock().unwrap());
        let own = std::mem::take(&mut *self.own.lock().unwrap());
        let stderr = self.stderr();
        Stopped { events, own, stderr, status }
    }
}

impl Drop for Ksense {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// An attribute of an event.
pub fn attr<'a>(event: &'a Value, name: &str) -> &'a Value {
    &event["attributes"][name]
}

/// Whether `record` is one ksense writes about itself (`ksense.loss`, `ksense.status`) rather
/// than a kernel event.
pub fn is_own(record: &Value) -> bool {
    record["event.name"].as_str().is_some_and(|name| name.starts_with("ksense."))
}

/// Whether `event` is the named kind.
pub fn is(event: &Value, name: &str) -> bool {
    event["event.name"] == name
}

/// Runs the workload with `args`, returning its stdout and pid.
pub fn run_workload(args: &[&str]) -> (String, u32) {
    let child = Command::new(workload_bin()).args(args).stdout(Stdio::piped()).spawn().unwrap();
    let pid = child.id();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "workload {args:?} failed: {:?}", out.status);
    (String::from_utf8(out.stdout).unwrap(), pid)
}

/// The number after `key=` in a workload's output.
pub fn printed(out: &str, key: &str) -> u32 {
    let needle = format!("{key}=");
    out.lines()
        .find_map(|l| l.strip_prefix(&needle))
        .unwrap_or_else(|| panic!("workload printed no {key}: {out}"))
        .trim()
        .parse()
        .unwrap()
}

/// The hex number after `key=` (with or without `0x`) in a workload's output.
pub fn printed_hex(out: &str, key: &str) -> u64 {
    let needle = format!("{key}=");
    let text = out
        .lines()
        .find_map(|l| l.strip_prefix(&needle))
        .unwrap_or_else(|| panic!("workload printed no {key}: {out}"))
        .trim();
    match text.strip_prefix("0x") {
        Some(hex) => u64::from_str_radix(hex, 16).unwrap(),
        None => text.parse().unwrap(),
    }
}

/// Writes a configuration file for one test and returns its path.
pub fn temp_config(name: &str, text: &str) -> PathBuf {
    let path = std::env::temp_dir().join(format!("ksense-{name}-{}.toml", std::process::id()));
    std::fs::write(&path, text).unwrap();
    path
}
