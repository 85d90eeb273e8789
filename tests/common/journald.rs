//! A real systemd-journald for the tests that read entries back (`tests/journald.rs`,
//! `tests/package.rs`). PID 1 is not systemd on these machines, so one is started when none runs.
use std::{
    fs::File,
    io::Write as _,
    os::{
        fd::{AsRawFd, OwnedFd},
        unix::{
            fs::MetadataExt,
            net::{UnixDatagram, UnixStream},
        },
    },
    process::{Command, Stdio},
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use serde_json::Value;

use crate::{Ksense, event_timeout, temp_config};

/// journald's native-protocol socket.
pub const SOCKET: &str = "/run/systemd/journal/socket";
/// journald's stream socket: systemd connects a service's stdout and stderr to it.
pub const STDOUT_SOCKET: &str = "/run/systemd/journal/stdout";
/// The daemon (package systemd).
pub const JOURNALD: &str = "/usr/lib/systemd/systemd-journald";

/// Whether a journald takes datagrams on its socket (it discards an empty one).
pub fn listens() -> bool {
    UnixDatagram::unbound().and_then(|s| s.send_to(&[], SOCKET)).is_ok()
}

/// The lock every test takes before it starts or stops journald; released when dropped.
pub struct Lock {
    _locked: File,
}

/// Takes the lock, waiting for a test that holds it (in this process or another).
pub fn lock() -> Lock {
    let file = File::create(std::env::temp_dir().join("ksense-test-journald.lock")).unwrap();
    // SAFETY: flock on a valid descriptor; released when `file` is closed.
    assert_eq!(unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX) }, 0, "flock");
    Lock { _locked: file }
}

/// Makes sure a journald runs, starting one when none does. It is left running, for the other
/// tests and later runs; a lock keeps parallel tests from starting two.
pub fn ensure() {
    start_if_absent(&lock());
}

/// [`ensure`] for a test that already holds the [`Lock`].
pub fn start_if_absent(_lock: &Lock) {
    if listens() {
        return;
    }
    assert!(std::path::Path::new(JOURNALD).exists(), "{JOURNALD} is missing: run scripts/setup.sh (package systemd)");
    // Daemonized (`setsid --fork`: own session, parent init), so it outlives this test, a Ctrl-C
    // on the tests does not take it down, and no zombie is left when it stops.
    let status = Command::new("setsid")
        .args(["--fork", JOURNALD])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .expect("cannot run setsid");
    assert!(status.success(), "setsid --fork {JOURNALD}: {status}");
    let deadline = Instant::now() + event_timeout();
    while !listens() {
        assert!(Instant::now() < deadline, "systemd-journald did not open {SOCKET}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A stream to journald as systemd opens one for a service's stderr (systemd-journald.service(8),
/// "stream" protocol): each line written to it becomes an entry with `SYSLOG_IDENTIFIER`
/// `identifier`, at priority 6 unless the line starts with a `<N>` level prefix. Returns the
/// stream and the `JOURNAL_STREAM` value (`device:inode`) systemd gives the service with it.
/// journald must run ([`ensure`]).
pub fn service_stream(identifier: &str) -> (OwnedFd, String) {
    let mut stream = UnixStream::connect(STDOUT_SOCKET).unwrap_or_else(|e| panic!("{STDOUT_SOCKET}: {e}"));
    // Identifier, unit (none), priority, level prefix on, no forwarding to syslog, kmsg, console.
    stream.write_all(format!("{identifier}\n\n6\n1\n0\n0\n0\n").as_bytes()).unwrap();
    let stream = OwnedFd::from(stream);
    let meta = File::from(stream.try_clone().unwrap()).metadata().unwrap();
    (stream, format!("{}:{}", meta.dev(), meta.ino()))
}

/// Kills (SIGKILL, as in a crash) every running journald and waits until its socket refuses
/// datagrams. The socket file stays behind, as after a real crash.
pub fn kill(_lock: &Lock) {
    let journald = std::fs::canonicalize(JOURNALD).unwrap();
    let pids: Vec<i32> = std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(|entry| entry.ok()?.file_name().to_str()?.parse().ok())
        .filter(|pid| std::fs::read_link(format!("/proc/{pid}/exe")).is_ok_and(|exe| exe == journald))
        .collect();
    assert!(!pids.is_empty(), "no {JOURNALD} runs");
    for pid in pids {
        // SAFETY: kill(2) on a pid just read from /proc.
        unsafe { libc::kill(pid, libc::SIGKILL) };
    }
    let deadline = Instant::now() + event_timeout();
    while listens() {
        assert!(Instant::now() < deadline, "systemd-journald still takes datagrams after SIGKILL");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// `--since` for entries written from now on (a second early: journald's clock is the same one).
pub fn since_now() -> String {
    format!("@{}", SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs() - 1)
}

/// Entries matching `matches` (journalctl `FIELD=value` terms) written since `since`.
pub fn entries<S: AsRef<std::ffi::OsStr>>(since: &str, matches: &[S]) -> Vec<Value> {
    // Ask journald to write out what it holds; fine to fail on an old journalctl.
    let _ = Command::new("journalctl").arg("--sync").stderr(Stdio::null()).status();
    let out = Command::new("journalctl")
        .args(["-o", "json", "--all", "--no-pager", "--since", since])
        .args(matches)
        .output()
        .expect("cannot run journalctl");
    let terms: Vec<_> = matches.iter().map(|m| m.as_ref().to_string_lossy().into_owned()).collect();
    assert!(out.status.success(), "journalctl {terms:?}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("journalctl printed {l:?}: {e}")))
        .collect()
}

/// A ksense with the journald sink on (it would be anyway while the socket exists), and what
/// finds its entries: every ksense running (other tests' too) writes every event, so entries are
/// told apart by the writer's command line, which names this run's configuration file.
pub struct Run {
    /// The running ksense.
    pub ksense: Ksense,
    /// Its configuration file.
    pub config: String,
    /// `--since` for its entries.
    pub since: String,
}

impl Run {
    /// Starts a journald when none runs, then ksense with the journald sink on.
    pub fn start(name: &str) -> Run {
        Run::start_with(name, "")
    }

    /// [`Run::start`] with more configuration (other sinks) after the journald section.
    pub fn start_with(name: &str, more_config: &str) -> Run {
        ensure();
        let text = format!("[sinks.journald]\nenabled = true\n{more_config}");
        let config = temp_config(name, &text).to_str().unwrap().to_owned();
        let since = since_now();
        let ksense = Ksense::start(&["--config", &config]);
        Run { ksense, config, since }
    }

    /// Waits for the one entry of this ksense matching `matches`.
    pub fn entry(&self, matches: &[&str]) -> Value {
        let deadline = Instant::now() + event_timeout();
        loop {
            let mut found: Vec<Value> = entries(&self.since, matches)
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
pub fn short(entry: &Value) -> String {
    let text = entry.to_string();
    match text.char_indices().nth(3000) {
        Some((at, _)) => format!("{}... ({} bytes)", &text[..at], text.len()),
        None => text,
    }
}

/// Every value of `field` in a `journalctl -o json` entry, as bytes. journalctl prints a value
/// as a string, or as an array of byte numbers when it is not printable text; a field that
/// occurs more than once as an array of those.
pub fn values(entry: &Value, field: &str) -> Vec<Vec<u8>> {
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
pub fn value(entry: &Value, field: &str) -> String {
    match values(entry, field).as_slice() {
        [v] => String::from_utf8(v.clone()).unwrap(),
        other => panic!("{field}: expected one value, got {other:?} in {}", short(entry)),
    }
}
