//! systemd's service notification protocol (`sd_notify`): `READY=1` once every probe is
//! attached, `STATUS=` with what is attached and what was lost, `WATCHDOG=1` when the unit sets
//! `WatchdogSec=` and the pipeline is making progress ([`Heartbeat`]), `STOPPING=1` at shutdown. A no-op outside a `Type=notify` service.
use std::{
    os::{linux::net::SocketAddrExt, unix::net::{SocketAddr, UnixDatagram}},
    time::Duration,
};

/// A connection to `$NOTIFY_SOCKET`, if systemd gave one.
pub struct Notifier {
    socket: Option<(UnixDatagram, SocketAddr)>,
}

impl Notifier {
    /// Reads `$NOTIFY_SOCKET` (a path, or `@name` for the abstract namespace).
    pub fn from_env() -> Notifier {
        let socket = std::env::var("NOTIFY_SOCKET").ok().and_then(|path| {
            let addr = match path.strip_prefix('@') {
                Some(name) => SocketAddr::from_abstract_name(name.as_bytes()).ok()?,
                None => SocketAddr::from_pathname(&path).ok()?,
            };
            Some((UnixDatagram::unbound().ok()?, addr))
        });
        Notifier { socket }
    }

    /// Sends `state` (newline-separated `KEY=value` lines); failures are logged, never fatal.
    pub fn send(&self, state: &str) {
        if let Some((socket, addr)) = &self.socket
            && let Err(e) = socket.send_to_addr(state.as_bytes(), addr)
        {
            tracing::debug!("sd_notify failed: {e}");
        }
    }

    /// How often to send `WATCHDOG=1`: half of `$WATCHDOG_USEC`, if it is set for this process.
    pub fn watchdog_interval() -> Option<Duration> {
        let usec: u64 = std::env::var("WATCHDOG_USEC").ok()?.parse().ok()?;
        if let Ok(pid) = std::env::var("WATCHDOG_PID")
            && pid.parse::<u32>().ok() != Some(std::process::id())
        {
            return None;
        }
        (usec > 0).then(|| Duration::from_micros(usec / 2))
    }
}

/// Decides whether the pipeline deserves a `WATCHDOG=1`: it does when its heartbeat (a counter
/// it bumps per input) moved since the last check, or when it is idle (nothing queued for it).
/// A pipeline with work queued and no beat since the last check is stuck.
#[derive(Debug, Default)]
pub struct Heartbeat {
    last: Option<u64>,
}

impl Heartbeat {
    /// Whether the pipeline is alive, given its heartbeat counter now and whether it is idle.
    pub fn beats(&mut self, now: u64, idle: bool) -> bool {
        let moved = self.last != Some(now);
        self.last = Some(now);
        moved || idle
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_pipeline_with_work_and_no_beat_is_stuck() {
        let mut heartbeat = Heartbeat::default();
        assert!(heartbeat.beats(0, false), "the first check has nothing to compare with");
        assert!(heartbeat.beats(5, false), "moved");
        assert!(heartbeat.beats(5, true), "idle");
        assert!(!heartbeat.beats(5, false), "work queued and no progress");
        assert!(heartbeat.beats(6, false));
    }

    #[test]
    fn sends_state_to_the_socket() {
        let dir = std::env::temp_dir().join(format!("ksense-notify-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("notify");
        let listener = UnixDatagram::bind(&path).unwrap();
        let notifier = Notifier { socket: Some((UnixDatagram::unbound().unwrap(), SocketAddr::from_pathname(&path).unwrap())) };
        notifier.send("READY=1\nSTATUS=attached");
        let mut buf = [0u8; 64];
        let n = listener.recv(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"READY=1\nSTATUS=attached");
        std::fs::remove_dir_all(dir).unwrap();
    }
}
