//! A real systemd-journald for the tests that read entries back (`tests/journald.rs`,
//! `tests/package.rs`). PID 1 is not systemd on these machines, so one is started when none runs.
use std::{
    fs::File,
    os::{fd::AsRawFd, unix::net::UnixDatagram},
    process::{Command, Stdio},
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use serde_json::Value;

use crate::event_timeout;

/// journald's native-protocol socket.
pub const SOCKET: &str = "/run/systemd/journal/socket";
/// The daemon (package systemd).
pub const JOURNALD: &str = "/usr/lib/systemd/systemd-journald";

/// Whether a journald takes datagrams on its socket (it discards an empty one).
pub fn listens() -> bool {
    UnixDatagram::unbound().and_then(|s| s.send_to(&[], SOCKET)).is_ok()
}

/// Makes sure a journald runs, starting one when none does. It is left running, for the other
/// tests and later runs; a lock keeps parallel tests from starting two.
pub fn ensure() {
    let lock = File::create(std::env::temp_dir().join("ksense-test-journald.lock")).unwrap();
    // SAFETY: flock on a valid descriptor; released when `lock` is closed.
    assert_eq!(unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_EX) }, 0, "flock");
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
