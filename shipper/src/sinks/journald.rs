//! journald over its native protocol: each record becomes one journal entry, sent as one
//! datagram to journald's socket (`/run/systemd/journal/socket`), with the fields of
//! `docs/EVENTS.md` ("The three renderings"): `MESSAGE`, `PRIORITY`,
//! `SYSLOG_IDENTIFIER=ksense`, a `MESSAGE_ID` per event kind (explained by
//! `packaging/ksense.catalog`), `KSENSE_EVENT`, `KSENSE_TIME`, and every attribute under
//! [`field_name`], an array as the same field repeated once per element.
//!
//! `OBJECT_PID` (the process an event is about) only with `[sinks.journald] object_pid = true`:
//! journald then adds that process's `OBJECT_SYSTEMD_UNIT` and files the entry under its unit as
//! well, so `journalctl -u <service>` and `systemctl status <service>` of every service would
//! list ksense's entries about it.
//!
//! Why a client written here rather than `systemd-journal-logger` (or `tracing-journald`): those
//! are logging backends, installed once per process, that turn a log call into an entry. The
//! fields come from the call's key-values (one value per key, so no repeated fields for argv),
//! the backend adds its own (`CODE_FILE`, `TARGET`, ...), and a log call cannot return an error,
//! so ksense could not count an entry that did not get through or notice journald come back.
//! An entry here is the record's own field set, and delivery is per record. The protocol
//! (<https://systemd.io/JOURNAL_NATIVE_PROTOCOL/>) is small enough to write out:
//!
//! - A field is `NAME=value\n`, or, when the value holds a newline, `NAME\n` + the value's length
//!   as a 64-bit little-endian number + the value + `\n`. The second form is binary-safe: an argv
//!   element `x\nPRIORITY=0` stays inside its own field and sets nothing.
//! - An entry too large for one datagram (`send` fails with EMSGSIZE or ENOBUFS) is written to a
//!   memfd, sealed, and the descriptor sent with SCM_RIGHTS and an empty payload, as
//!   `sd_journal_sendv` does.
//! - journald ignores an entry of more than 1024 fields, so array elements past that budget are
//!   left out and the entry says `KSENSE_PROCESS_COMMAND_ARGS_TRUNCATED=true`
//!   (`PROCESS_COMMAND_LINE` still holds all of argv).
//!
//! journald stores the values of a repeated field as a set (seen with systemd 252): a value
//! repeated in one entry is kept once, and the values come back in the order the journal file
//! first stored each, not the order sent. So `PROCESS_COMMAND_ARGS` tells which arguments there
//! were; `PROCESS_COMMAND_LINE` (and `MESSAGE`) have argv in order.
//!
//! When the socket is missing or refuses (journald not running), the sink says so once, fails
//! each record (the pipeline counts them) and tries again with the next one, so writing resumes
//! by itself when journald is back. A journald that stops reading costs one
//! [`SEND_TIMEOUT`] stall; after that, sends fail at once until one gets through.
use std::{
    fs::File,
    io::{self, Write as _},
    os::{
        fd::{AsRawFd, FromRawFd, OwnedFd},
        unix::{ffi::OsStrExt, net::UnixDatagram},
    },
    path::{Path, PathBuf},
    sync::Arc,
    time::Duration,
};

use ksense_abi::EventKind;

use serde::Deserialize;

use super::{Enabled, Sink};
use crate::{
    clock::rfc3339,
    kinds::{self, EventName, KINDS},
    record::{LogRecord, Severity, Value},
    schema,
    telemetry::{Counters, SinkStats},
};

/// `MESSAGE_ID` of `ksense.loss` entries.
pub const KSENSE_LOSS_MESSAGE_ID: &str = "d7e5de717d704c2498c593c05f16a5a2";
/// `MESSAGE_ID` of `ksense.status` entries.
pub const KSENSE_STATUS_MESSAGE_ID: &str = "0339118d59ef492f86aa85044dcc969a";

/// ksense's own records, by event name: their `MESSAGE_ID` and catalog entry (subject, text).
const OWN_ENTRIES: [(&str, &str, (&str, &str)); 2] = [
    (schema::KSENSE_LOSS, KSENSE_LOSS_MESSAGE_ID, LOSS_CATALOG),
    (schema::KSENSE_STATUS, KSENSE_STATUS_MESSAGE_ID, STATUS_CATALOG),
];

/// The `MESSAGE_ID` of an event kind (its module's: fixed, catalogs and saved queries depend
/// on it).
pub fn message_id(kind: EventKind) -> &'static str {
    kinds::spec(kind).message_id
}

/// The journald message catalog (`packaging/ksense.catalog`): an entry per event kind, from
/// its module, and per record ksense writes about itself. `cargo run -p xtask -- gen-catalog`
/// writes it; a unit test checks the packaged file is this.
pub fn catalog() -> String {
    let kinds = KINDS.iter().map(|kind| (kind.message_id, (kind.catalog_subject, kind.catalog)));
    let own = OWN_ENTRIES.iter().map(|&(_, id, entry)| (id, entry));
    kinds.chain(own).fold(CATALOG_HEADER.to_owned(), |mut catalog, (id, (subject, text))| {
        catalog.push_str(&format!("\n-- {id}\nSubject: {subject}\nDefined-By: ksense\nSupport: {SUPPORT}\n\n{text}\n{WHO_WROTE_IT}"));
        catalog
    })
}

/// Where to ask about an entry.
const SUPPORT: &str = "https://example.invalid/ksense";

/// What every catalog entry ends with: anyone may write an entry that looks like ksense's.
const WHO_WROTE_IT: &str = "Only an entry with _UID=0 (or _SYSTEMD_UNIT=ksense.service) was written by
ksense: any local user can write one with SYSLOG_IDENTIFIER=ksense and this
MESSAGE_ID. Query with journalctl SYSLOG_IDENTIFIER=ksense _UID=0.
";

/// What the catalog says before its entries.
const CATALOG_HEADER: &str = r#"# Message catalog for ksense, the eBPF host-state sensor.
#
# One entry per event kind (and per record ksense writes about itself), under the MESSAGE_ID ksense gives it.
# Made from each kind's module (shipper/src/kinds/<kind>.rs) and shipper/src/sinks/journald.rs
# by `cargo run -p xtask -- gen-catalog`; a unit test there checks this file is up to date.
# Install as /usr/lib/systemd/catalog/ksense.catalog, then run
# `journalctl --update-catalog`; `journalctl -x` then shows these explanations.
# Format: https://www.freedesktop.org/wiki/Software/systemd/catalog
# Field names: the event's attributes (docs/EVENTS.md) upper-cased, '.' -> '_'.
#
# Any local user can write a journal entry with SYSLOG_IDENTIFIER=ksense and one of these
# MESSAGE_IDs (and so get this text shown for it); only journald's own _UID and _SYSTEMD_UNIT
# fields say who wrote it. Each entry below says so, for the reader of `journalctl -x`.
"#;

/// The catalog entry of `ksense.loss` records.
const LOSS_CATALOG: (&str, &str) = (
    "ksense lost @KSENSE_LOSS_COUNT@ @KSENSE_LOSS_EVENT_NAME@ events: @KSENSE_LOSS_CAUSE@",
    r#"ksense reports a ksense.loss: since its previous report of the same cause,
event kind and sink (at most one every 10 seconds, and a last one at stop),
KSENSE_LOSS_COUNT events of kind KSENSE_LOSS_EVENT_NAME (* when the cause
cannot tell the kind) were lost. KSENSE_LOSS_CAUSE says why: ring_buffer (the
kernel ring buffer was full), rate_limited ([limits] rate_per_second),
decode_error (a record from the kernel did not decode), or, for the sink named
in KSENSE_LOSS_SINK, queue_full (its queue was full), memory_budget (its share
of [limits] memory_budget_bytes was used up), sink_failed (delivery failed)
and sink_rejected (the backend refused for good). The counts of all entries of
one cause add up to that cause's counter in ksense's "ksense stopped:" line.

The events lost are missing from every backend (or, for the sink causes, from
that sink): the host was watched with a gap. Logged at priority warning.
"#,
);

/// The catalog entry of `ksense.status` records.
const STATUS_CATALOG: (&str, &str) = (
    "ksense is @KSENSE_STATUS_STATE@",
    r#"ksense's heartbeat, ksense.status: once at start (KSENSE_STATUS_STATE=started),
every [telemetry] status_interval_s seconds (running, 60 by default) and once
at stop (stopping). KSENSE_STATUS_EVENTS_READ, KSENSE_STATUS_EVENTS_WRITTEN and
KSENSE_STATUS_LOST_TOTAL count events since start, and KSENSE_STATUS_PROBES
repeats once per attached event kind as <event name>=<probe>.

Alert on its absence: a host whose ksense sends no status for a few intervals
is no longer watched. This is routine activity, logged at priority info.
"#,
);

/// `[sinks.journald]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct JournaldConfig {
    /// `true`, `false`, or `"auto"`: on when the socket exists.
    pub enabled: Enabled,
    /// journald's native-protocol socket.
    pub socket: PathBuf,
    /// Only these event kinds go to journald (see [`super::Selection`]); all when absent.
    pub events: Option<Vec<EventName>>,
    /// Only records of this severity or above go to journald.
    pub min_severity: Option<Severity>,
    /// Entries carry `OBJECT_PID`, the process they are about. journald then files each entry
    /// under that process's unit too, so `journalctl -u <service>` of any service shows
    /// ksense's entries about it: off by default.
    pub object_pid: bool,
}

impl Default for JournaldConfig {
    fn default() -> Self {
        JournaldConfig {
            enabled: Enabled::default(),
            socket: "/run/systemd/journal/socket".into(),
            events: None,
            min_severity: None,
            object_pid: false,
        }
    }
}

/// The identifier every entry carries.
const IDENTIFIER: &str = "ksense";

/// journald ignores an entry with more fields than this (`ENTRY_FIELD_COUNT_MAX`).
const MAX_FIELDS: usize = 1024;

/// Fields an entry has at most besides its attributes: MESSAGE, PRIORITY, SYSLOG_IDENTIFIER,
/// MESSAGE_ID, KSENSE_EVENT, KSENSE_TIME, and OBJECT_PID when asked for.
const FIXED_FIELDS: usize = 7;

/// How long one send may wait for journald to take an entry.
pub const SEND_TIMEOUT: Duration = Duration::from_secs(1);

/// The journald field for attribute `attr`: upper-cased, every character other than a letter,
/// digit or `_` (the `.` of a name) turned into `_` (`process.exit.code` -> `PROCESS_EXIT_CODE`).
pub fn field_name(attr: &str) -> String {
    attr.chars().map(|c| if c.is_ascii_alphanumeric() { c.to_ascii_uppercase() } else { '_' }).collect()
}

/// Appends one field, in the binary-safe form when the value holds a newline.
fn put(out: &mut Vec<u8>, name: &str, value: &[u8]) {
    out.extend_from_slice(name.as_bytes());
    if value.contains(&b'\n') {
        out.push(b'\n');
        out.extend_from_slice(&(value.len() as u64).to_le_bytes());
    } else {
        out.push(b'=');
    }
    out.extend_from_slice(value);
    out.push(b'\n');
}

/// Serializes `record` as one native-protocol entry into `out` (cleared first), with
/// `OBJECT_PID` when `object_pid` is set.
pub fn encode(record: &LogRecord, object_pid: bool, out: &mut Vec<u8>) {
    out.clear();
    put(out, "MESSAGE", record.body.as_bytes());
    put(out, "PRIORITY", record.severity.syslog_priority().to_string().as_bytes());
    put(out, "SYSLOG_IDENTIFIER", IDENTIFIER.as_bytes());
    let id = match EventKind::ALL.into_iter().find(|k| k.name() == record.event_name) {
        Some(kind) => Some(message_id(kind)),
        None => OWN_ENTRIES.iter().find(|(name, _, _)| *name == record.event_name).map(|(_, id, _)| *id),
    };
    if let Some(id) = id {
        put(out, "MESSAGE_ID", id.as_bytes());
    }
    put(out, "KSENSE_EVENT", record.event_name.as_bytes());
    put(out, "KSENSE_TIME", rfc3339(record.time).as_bytes());
    if object_pid && let Some(Value::Int(pid)) = record.attribute(schema::PROCESS_PID) {
        put(out, "OBJECT_PID", pid.to_string().as_bytes());
    }

    // What is left of journald's field budget for argv (one field is kept for the truncation
    // mark, written last: it is also set when this cuts argv). Every other array is a short list
    // kept whole like a scalar: `ksense.escaped` must survive a cut argv.
    let truncated = schema::KSENSE_PROCESS_COMMAND_ARGS_TRUNCATED;
    let argv = schema::PROCESS_COMMAND_ARGS;
    let kept_whole: usize = record
        .attributes
        .iter()
        .map(|(name, v)| match v {
            Value::StrArray(_) if *name == argv => 0,
            Value::StrArray(items) => items.len(),
            _ => 1,
        })
        .sum();
    let mut budget = MAX_FIELDS.saturating_sub(FIXED_FIELDS + kept_whole + 1);
    let mut cut = matches!(record.attribute(truncated), Some(Value::Bool(true)));
    for (name, value) in &record.attributes {
        let field = field_name(name);
        match value {
            _ if *name == truncated => {}
            Value::Int(v) => put(out, &field, v.to_string().as_bytes()),
            Value::Bool(v) => put(out, &field, if *v { b"true" } else { b"false" }),
            Value::Str(v) => put(out, &field, v.as_bytes()),
            Value::StrArray(items) if *name != argv => {
                for item in items {
                    put(out, &field, item.as_bytes());
                }
            }
            Value::StrArray(items) => {
                let kept = items.len().min(budget);
                cut |= kept < items.len();
                budget -= kept;
                for item in &items[..kept] {
                    put(out, &field, item.as_bytes());
                }
            }
        }
    }
    if cut || record.attribute(truncated).is_some() {
        put(out, &field_name(truncated), if cut { b"true" } else { b"false" });
    }
}

/// A datagram socket connected to journald's socket at `path`, with [`SEND_TIMEOUT`]. Sends on
/// it skip resolving the path, which is most of what a send to a named address costs.
pub fn connect(path: &Path) -> io::Result<UnixDatagram> {
    let socket = UnixDatagram::unbound()?;
    socket.set_write_timeout(Some(SEND_TIMEOUT))?;
    socket.connect(path)?;
    Ok(socket)
}

/// Sends one entry on `socket`, connected to journald at `path`: as a datagram, or through a
/// sealed memfd (addressed to `path`) when it is too large for one.
pub fn send(socket: &UnixDatagram, path: &Path, entry: &[u8]) -> io::Result<()> {
    loop {
        match socket.send(entry) {
            Ok(_) => return Ok(()),
            // A send with a timeout is not restarted when ksense is stopped and continued
            // (SIGSTOP, SIGCONT: signal(7)); it sent nothing, so send again.
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) if matches!(e.raw_os_error(), Some(libc::EMSGSIZE | libc::ENOBUFS)) => {
                return send_memfd(socket, path, entry);
            }
            Err(e) => return Err(e),
        }
    }
}

/// Writes `entry` into a memfd, seals it, and sends the descriptor to `path` with an empty
/// payload (journald maps a sealed memfd instead of copying it).
pub fn send_memfd(socket: &UnixDatagram, path: &Path, entry: &[u8]) -> io::Result<()> {
    // SAFETY: a NUL-terminated name; the result is checked.
    let fd = unsafe { libc::memfd_create(c"ksense-journal".as_ptr(), libc::MFD_CLOEXEC | libc::MFD_ALLOW_SEALING) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: a descriptor we just created and own.
    let mut file = File::from(unsafe { OwnedFd::from_raw_fd(fd) });
    file.write_all(entry)?;
    let seals = libc::F_SEAL_SHRINK | libc::F_SEAL_GROW | libc::F_SEAL_WRITE | libc::F_SEAL_SEAL;
    // SAFETY: fcntl on a valid descriptor.
    if unsafe { libc::fcntl(file.as_raw_fd(), libc::F_ADD_SEALS, seals) } < 0 {
        return Err(io::Error::last_os_error());
    }

    let (mut addr, addr_len) = sockaddr_un(path)?;
    // Room for one cmsghdr carrying one descriptor, aligned as cmsghdr needs.
    let mut control = [0u64; 4];
    // SAFETY: CMSG_SPACE is a pure computation.
    let control_len = unsafe { libc::CMSG_SPACE(size_of::<libc::c_int>() as u32) } as usize;
    assert!(control_len <= size_of_val(&control));
    // SAFETY: msghdr is plain data; every pointer set below outlives the sendmsg call.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_name = (&raw mut addr).cast();
    msg.msg_namelen = addr_len;
    msg.msg_control = control.as_mut_ptr().cast();
    msg.msg_controllen = control_len as _;
    // SAFETY: msg_control points at control_len zeroed, aligned bytes, enough for one header.
    unsafe {
        let cmsg = libc::CMSG_FIRSTHDR(&msg);
        (*cmsg).cmsg_level = libc::SOL_SOCKET;
        (*cmsg).cmsg_type = libc::SCM_RIGHTS;
        (*cmsg).cmsg_len = libc::CMSG_LEN(size_of::<libc::c_int>() as u32) as _;
        std::ptr::write_unaligned(libc::CMSG_DATA(cmsg).cast::<libc::c_int>(), file.as_raw_fd());
    }
    loop {
        // SAFETY: a valid socket and a fully initialised msghdr.
        if unsafe { libc::sendmsg(socket.as_raw_fd(), &msg, libc::MSG_NOSIGNAL) } >= 0 {
            return Ok(());
        }
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::Interrupted {
            return Err(e);
        }
    }
}

/// The `sockaddr_un` of a filesystem path.
fn sockaddr_un(path: &Path) -> io::Result<(libc::sockaddr_un, libc::socklen_t)> {
    // SAFETY: sockaddr_un is plain data.
    let mut addr: libc::sockaddr_un = unsafe { std::mem::zeroed() };
    addr.sun_family = libc::AF_UNIX as libc::sa_family_t;
    let bytes = path.as_os_str().as_bytes();
    if bytes.len() >= addr.sun_path.len() || bytes.contains(&0) {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{}: not usable as a socket path", path.display()),
        ));
    }
    for (dst, src) in addr.sun_path.iter_mut().zip(bytes) {
        *dst = *src as libc::c_char;
    }
    let len = std::mem::offset_of!(libc::sockaddr_un, sun_path) + bytes.len() + 1;
    Ok((addr, len as libc::socklen_t))
}

/// Writes each record as a journal entry.
pub struct JournaldSink {
    socket: PathBuf,
    /// Entries carry `OBJECT_PID`.
    object_pid: bool,
    stats: Arc<SinkStats>,
    /// Connected to `socket`; dropped when a send fails, so the next one connects again and
    /// finds a restarted journald.
    conn: Option<UnixDatagram>,
    /// The entry being sent (reused).
    entry: Vec<u8>,
    /// The last send failed: this has been logged once, and sends do not wait.
    down: bool,
    /// Whether `conn` is in non-blocking mode now (follows `down`).
    nonblocking: bool,
}

impl JournaldSink {
    /// A sink writing to journald's socket at `socket` (entries with `OBJECT_PID` when
    /// `object_pid` is set), counting into `stats`.
    pub fn new(socket: PathBuf, object_pid: bool, stats: Arc<SinkStats>) -> JournaldSink {
        let entry = Vec::with_capacity(4096);
        JournaldSink { socket, object_pid, stats, conn: None, entry, down: false, nonblocking: false }
    }

    fn try_send(&mut self) -> io::Result<()> {
        let reused = self.conn.is_some();
        match self.send_connected() {
            // The journald this connection led to is gone (restarted, with a new socket at the
            // path): a fresh connection reaches the new one, and the entry is not lost.
            Err(e) if reused && matches!(e.raw_os_error(), Some(libc::ECONNREFUSED | libc::ENOTCONN)) => {
                self.send_connected()
            }
            result => result,
        }
    }

    fn send_connected(&mut self) -> io::Result<()> {
        let conn = match &mut self.conn {
            Some(conn) => conn,
            None => {
                self.nonblocking = false;
                self.conn.insert(connect(&self.socket)?)
            }
        };
        // While journald is unreachable, fail at once rather than wait for it on every record.
        if self.nonblocking != self.down {
            conn.set_nonblocking(self.down)?;
            self.nonblocking = self.down;
        }
        let result = send(conn, &self.socket, &self.entry);
        if result.is_err() {
            self.conn = None;
        }
        result
    }
}

impl Sink for JournaldSink {
    fn name(&self) -> &'static str {
        "journald"
    }

    fn write(&mut self, record: &LogRecord) -> io::Result<()> {
        encode(record, self.object_pid, &mut self.entry);
        match self.try_send() {
            Ok(()) => {
                Counters::bump(&self.stats.delivered);
                if self.down {
                    self.down = false;
                    tracing::info!(socket = %self.socket.display(), "journald is reachable again");
                }
                Ok(())
            }
            Err(e) => {
                if !self.down {
                    self.down = true;
                    tracing::warn!(
                        socket = %self.socket.display(),
                        "journald is not reachable ({e}); its entries are counted as failed until it is back"
                    );
                }
                Err(io::Error::new(e.kind(), format!("journald at {}: {e}", self.socket.display())))
            }
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::Severity;
    use std::{
        sync::atomic::Ordering::Relaxed,
        time::{Instant, SystemTime, UNIX_EPOCH},
    };

    /// Parses native-protocol bytes back into (name, value) pairs, strictly.
    fn parse(mut bytes: &[u8]) -> Vec<(String, Vec<u8>)> {
        let mut fields = Vec::new();
        while !bytes.is_empty() {
            let end = bytes.iter().position(|&b| b == b'\n').expect("a field ends with a newline");
            let line = &bytes[..end];
            if let Some(eq) = line.iter().position(|&b| b == b'=') {
                fields.push((String::from_utf8(line[..eq].to_vec()).unwrap(), line[eq + 1..].to_vec()));
                bytes = &bytes[end + 1..];
            } else {
                let name = String::from_utf8(line.to_vec()).unwrap();
                let rest = &bytes[end + 1..];
                let len = u64::from_le_bytes(rest[..8].try_into().unwrap()) as usize;
                let value = rest[8..8 + len].to_vec();
                assert_eq!(rest[8 + len], b'\n', "binary field {name} ends with a newline");
                fields.push((name, value));
                bytes = &rest[8 + len + 1..];
            }
        }
        for (name, _) in &fields {
            assert!(
                !name.is_empty()
                    && name.len() <= 64
                    && name.bytes().all(|b| b.is_ascii_uppercase() || b.is_ascii_digit() || b == b'_'),
                "{name:?} is not a valid journal field name"
            );
        }
        fields
    }

    fn values<'a>(fields: &'a [(String, Vec<u8>)], name: &str) -> Vec<&'a [u8]> {
        fields.iter().filter(|(n, _)| n == name).map(|(_, v)| v.as_slice()).collect()
    }

    fn one<'a>(fields: &'a [(String, Vec<u8>)], name: &str) -> &'a str {
        match values(fields, name).as_slice() {
            [v] => std::str::from_utf8(v).unwrap(),
            other => panic!("{name}: expected one value, got {other:?}"),
        }
    }

    const EVIL: &str = "x\nSYSLOG_IDENTIFIER=evil\nPRIORITY=0";

    fn exec_record(argv: Vec<String>) -> LogRecord {
        LogRecord {
            event_name: EventKind::Exec.name(),
            severity: Severity::Info,
            time: UNIX_EPOCH + Duration::from_nanos(1_500_000_001),
            observed_time: UNIX_EPOCH,
            body: "sh[42] executed marker".into(),
            attributes: vec![
                (schema::PROCESS_PID, Value::Int(42)),
                (schema::PROCESS_COMMAND_LINE, Value::Str(argv.join(" "))),
                (schema::PROCESS_COMMAND_ARGS, Value::StrArray(argv)),
                (schema::KSENSE_CLONE_THREAD, Value::Bool(false)),
                (schema::KSENSE_PROCESS_EXIT_CORE_DUMPED, Value::Bool(true)),
                (schema::PROCESS_EXECUTABLE_PATH, Value::Str("/usr/bin/marker".into())),
            ],
        }
    }

    fn encoded(record: &LogRecord) -> Vec<(String, Vec<u8>)> {
        let mut out = Vec::new();
        encode(record, false, &mut out);
        parse(&out)
    }

    #[test]
    fn field_names_are_upper_case_with_underscores() {
        assert_eq!(field_name(schema::PROCESS_EXIT_CODE), "PROCESS_EXIT_CODE");
        assert_eq!(field_name(schema::PROCESS_PARENT_PID), "PROCESS_PARENT_PID");
        assert_eq!(field_name(schema::KSENSE_PROCESS_EXIT_CORE_DUMPED), "KSENSE_PROCESS_EXIT_CORE_DUMPED");
        assert_eq!(field_name("odd-name.x"), "ODD_NAME_X");
    }

    #[test]
    fn entry_has_the_contract_fields() {
        let record = exec_record(vec!["marker".into(), "a b".into()]);
        let fields = encoded(&record);
        assert_eq!(one(&fields, "MESSAGE"), "sh[42] executed marker");
        assert_eq!(one(&fields, "PRIORITY"), "6");
        assert_eq!(one(&fields, "SYSLOG_IDENTIFIER"), "ksense");
        assert_eq!(one(&fields, "MESSAGE_ID"), message_id(EventKind::Exec));
        assert_eq!(one(&fields, "KSENSE_EVENT"), "process.exec");
        assert_eq!(one(&fields, "KSENSE_TIME"), "1970-01-01T00:00:01.500000001Z");
        assert!(values(&fields, "OBJECT_PID").is_empty(), "no OBJECT_PID unless asked for");
        assert_eq!(one(&fields, &field_name(schema::PROCESS_PID)), "42");
        assert_eq!(one(&fields, &field_name(schema::KSENSE_CLONE_THREAD)), "false");
        assert_eq!(one(&fields, &field_name(schema::KSENSE_PROCESS_EXIT_CORE_DUMPED)), "true");
        assert_eq!(one(&fields, &field_name(schema::PROCESS_EXECUTABLE_PATH)), "/usr/bin/marker");
        assert_eq!(one(&fields, &field_name(schema::PROCESS_COMMAND_LINE)), "marker a b");
        assert!(values(&fields, &field_name(schema::KSENSE_PROCESS_COMMAND_ARGS_TRUNCATED)).is_empty());

        let warn = LogRecord { severity: Severity::Warn, event_name: EventKind::MemoryProtect.name(), ..record };
        let fields = encoded(&warn);
        assert_eq!(one(&fields, "PRIORITY"), "4");
        assert_eq!(one(&fields, "MESSAGE_ID"), message_id(EventKind::MemoryProtect));
    }

    /// `object_pid = true`: the entry names the process it is about, as before the option.
    #[test]
    fn object_pid_is_added_when_asked_for() {
        let mut out = Vec::new();
        encode(&exec_record(vec!["marker".into()]), true, &mut out);
        let with = parse(&out);
        assert_eq!(one(&with, "OBJECT_PID"), "42");
        let without = encoded(&exec_record(vec!["marker".into()]));
        assert_eq!(with.len(), without.len() + 1, "OBJECT_PID is the only difference");
    }

    #[test]
    fn ksense_own_records_have_their_message_ids_and_no_object_pid() {
        let key = crate::loss::LossKey { cause: crate::loss::Cause::RingBuffer, kind: Some(EventKind::Exec), sink: None };
        let fields = encoded(&crate::loss::loss_record(key, 12, 7));
        assert_eq!(one(&fields, "KSENSE_EVENT"), "ksense.loss");
        assert_eq!(one(&fields, "MESSAGE_ID"), KSENSE_LOSS_MESSAGE_ID);
        assert_eq!(one(&fields, "PRIORITY"), "4");
        assert_eq!(one(&fields, "KSENSE_LOSS_CAUSE"), "ring_buffer");
        assert_eq!(one(&fields, "KSENSE_LOSS_COUNT"), "12");
        assert!(values(&fields, "OBJECT_PID").is_empty());
        let probes = ["process.exec=tp_btf/sched_process_exec".to_owned()];
        let status = crate::loss::Status {
            state: crate::loss::State::Running,
            events_read: 1,
            events_written: 1,
            lost_total: 0,
            probes: &probes,
        };
        let fields = encoded(&crate::loss::status_record(&status, 1));
        assert_eq!(one(&fields, "MESSAGE_ID"), KSENSE_STATUS_MESSAGE_ID);
        assert_eq!(one(&fields, "KSENSE_STATUS_STATE"), "running");
        assert_eq!(values(&fields, "KSENSE_STATUS_PROBES"), [probes[0].as_bytes()]);
    }

    #[test]
    fn arrays_are_repeated_fields_in_order() {
        let argv: Vec<String> = ["marker", "b", "a", "a", ""].map(String::from).to_vec();
        let fields = encoded(&exec_record(argv.clone()));
        let args = values(&fields, &field_name(schema::PROCESS_COMMAND_ARGS));
        assert_eq!(args, argv.iter().map(|a| a.as_bytes()).collect::<Vec<_>>());
    }

    #[test]
    fn argv_cannot_inject_fields() {
        let argv = vec!["marker".to_string(), EVIL.to_string(), "y\n\nMESSAGE=fake".to_string()];
        let mut bytes = Vec::new();
        encode(&exec_record(argv.clone()), false, &mut bytes);
        let fields = parse(&bytes);
        assert_eq!(one(&fields, "SYSLOG_IDENTIFIER"), "ksense");
        assert_eq!(one(&fields, "PRIORITY"), "6");
        assert_eq!(one(&fields, "MESSAGE"), "sh[42] executed marker");
        let args = values(&fields, &field_name(schema::PROCESS_COMMAND_ARGS));
        assert_eq!(args, argv.iter().map(|a| a.as_bytes()).collect::<Vec<_>>());
        // The joined form holds the newlines too, and is binary-framed as well.
        assert_eq!(one(&fields, &field_name(schema::PROCESS_COMMAND_LINE)), argv.join(" "));
        // And the bytes really are the length-prefixed form, not `NAME=value`.
        let needle =
            [b"PROCESS_COMMAND_ARGS\n".as_slice(), &(EVIL.len() as u64).to_le_bytes(), EVIL.as_bytes()].concat();
        assert!(bytes.windows(needle.len()).any(|w| w == needle));
    }

    #[test]
    fn too_many_arguments_are_cut_to_journald_field_limit() {
        let argv: Vec<String> = (0..3000).map(|i| i.to_string()).collect();
        let mut record = exec_record(argv);
        // Named after argv: the list of escaped attributes is kept whole all the same.
        let escaped = vec![schema::PROCESS_COMMAND_LINE.to_owned(), schema::PROCESS_COMMAND_ARGS.to_owned()];
        record.attributes.push((schema::KSENSE_ESCAPED, Value::StrArray(escaped.clone())));
        let fields = encoded(&record);
        assert!(fields.len() <= MAX_FIELDS, "{} fields", fields.len());
        let args = values(&fields, &field_name(schema::PROCESS_COMMAND_ARGS));
        assert!(args.len() > 900, "{}", args.len());
        assert_eq!(args[..3], [b"0".as_slice(), b"1", b"2"]);
        assert_eq!(one(&fields, &field_name(schema::KSENSE_PROCESS_COMMAND_ARGS_TRUNCATED)), "true");
        assert_eq!(values(&fields, &field_name(schema::KSENSE_ESCAPED)), escaped.iter().map(|e| e.as_bytes()).collect::<Vec<_>>());

        // A record already marked truncated by the probe keeps one mark.
        let mut record = exec_record(vec!["marker".into()]);
        record.attributes.push((schema::KSENSE_PROCESS_COMMAND_ARGS_TRUNCATED, Value::Bool(true)));
        let fields = encoded(&record);
        assert_eq!(one(&fields, &field_name(schema::KSENSE_PROCESS_COMMAND_ARGS_TRUNCATED)), "true");
        record.attributes.last_mut().unwrap().1 = Value::Bool(false);
        let fields = encoded(&record);
        assert_eq!(one(&fields, &field_name(schema::KSENSE_PROCESS_COMMAND_ARGS_TRUNCATED)), "false");
    }

    #[test]
    fn message_ids_are_distinct_128_bit_hex() {
        let ids: Vec<&str> = EventKind::ALL.into_iter().map(message_id).chain(OWN_ENTRIES.map(|(_, id, _)| id)).collect();
        for id in &ids {
            assert_eq!(id.len(), 32, "{id}");
            assert!(id.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)), "{id}");
        }
        let mut unique = ids.clone();
        unique.sort();
        unique.dedup();
        assert_eq!(unique.len(), ids.len(), "{ids:?}");
    }

    #[test]
    fn catalog_explains_every_message_id() {
        let catalog = &catalog();
        assert!(
            catalog == include_str!("../../../packaging/ksense.catalog"),
            "packaging/ksense.catalog is not what the kinds say: cargo run -p xtask -- gen-catalog"
        );
        for kind in EventKind::ALL {
            let header = format!("-- {}\n", message_id(kind));
            let at = catalog
                .find(&header)
                .unwrap_or_else(|| panic!("packaging/ksense.catalog has no entry for {}", kind.name()));
            let entry = &catalog[at + header.len()..];
            let entry = &entry[..entry.find("\n-- ").unwrap_or(entry.len())];
            assert!(entry.contains("Subject: "), "{}: no Subject", kind.name());
            assert!(entry.contains("Defined-By: ksense"), "{}: no Defined-By", kind.name());
            assert!(entry.contains("Support: "), "{}: no Support", kind.name());
            assert!(entry.contains(kind.name()), "{}: the entry does not name its event", kind.name());
        }
        for (name, id, _) in OWN_ENTRIES {
            let header = format!("-- {id}\n");
            let at = catalog.find(&header).unwrap_or_else(|| panic!("packaging/ksense.catalog has no entry for {name}"));
            assert!(catalog[at..].contains(name), "{name}: the entry does not name its event");
        }
        let entries = EventKind::ALL.len() + OWN_ENTRIES.len();
        assert_eq!(catalog.matches("\n-- ").count() + usize::from(catalog.starts_with("-- ")), entries);
    }

    /// A datagram socket bound in a fresh directory, standing in for journald.
    struct FakeJournald {
        dir: PathBuf,
        path: PathBuf,
        socket: Option<UnixDatagram>,
    }

    impl FakeJournald {
        fn new(name: &str) -> FakeJournald {
            let dir = std::env::temp_dir().join(format!("ksense-journald-{name}-{}", std::process::id()));
            let _ = std::fs::remove_dir_all(&dir);
            std::fs::create_dir_all(&dir).unwrap();
            let path = dir.join("socket");
            FakeJournald { dir, path, socket: None }
        }

        fn bind(&mut self) -> &UnixDatagram {
            let socket = UnixDatagram::bind(&self.path).unwrap();
            socket.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
            self.socket.insert(socket)
        }

        /// Receives one datagram: its payload and the descriptors passed with it.
        fn receive(&self) -> (Vec<u8>, Vec<OwnedFd>) {
            let socket = self.socket.as_ref().unwrap();
            let mut data = vec![0u8; 512 * 1024];
            let mut control = [0u64; 8];
            let mut iov = libc::iovec { iov_base: data.as_mut_ptr().cast(), iov_len: data.len() };
            // SAFETY: plain data; pointers outlive the call.
            let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
            msg.msg_iov = &mut iov;
            msg.msg_iovlen = 1;
            msg.msg_control = control.as_mut_ptr().cast();
            msg.msg_controllen = size_of_val(&control) as _;
            // SAFETY: a valid socket and msghdr.
            let n = unsafe { libc::recvmsg(socket.as_raw_fd(), &mut msg, libc::MSG_CMSG_CLOEXEC) };
            assert!(n >= 0, "recvmsg: {}", io::Error::last_os_error());
            assert_eq!(msg.msg_flags & libc::MSG_TRUNC, 0, "datagram truncated");
            data.truncate(n as usize);
            let mut fds = Vec::new();
            // SAFETY: walking the control messages the kernel wrote.
            unsafe {
                let mut cmsg = libc::CMSG_FIRSTHDR(&msg);
                while !cmsg.is_null() {
                    if (*cmsg).cmsg_level == libc::SOL_SOCKET && (*cmsg).cmsg_type == libc::SCM_RIGHTS {
                        let count = ((*cmsg).cmsg_len as usize - libc::CMSG_LEN(0) as usize) / size_of::<libc::c_int>();
                        for i in 0..count {
                            let fd = std::ptr::read_unaligned(libc::CMSG_DATA(cmsg).cast::<libc::c_int>().add(i));
                            fds.push(OwnedFd::from_raw_fd(fd));
                        }
                    }
                    cmsg = libc::CMSG_NXTHDR(&msg, cmsg);
                }
            }
            (data, fds)
        }
    }

    impl Drop for FakeJournald {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }

    #[test]
    fn sink_sends_one_datagram_per_record() {
        let mut journald = FakeJournald::new("send");
        journald.bind();
        let stats = Arc::new(SinkStats::default());
        let mut sink = JournaldSink::new(journald.path.clone(), false, stats.clone());
        let record = exec_record(vec!["marker".into(), EVIL.into()]);
        sink.write(&record).unwrap();
        sink.flush().unwrap();
        let (data, fds) = journald.receive();
        assert!(fds.is_empty());
        let mut expected = Vec::new();
        encode(&record, false, &mut expected);
        assert_eq!(data, expected);
        assert_eq!(one(&parse(&data), "SYSLOG_IDENTIFIER"), "ksense");
        assert_eq!(stats.delivered.load(Relaxed), 1);
    }

    #[test]
    fn sink_fails_while_the_socket_is_absent_and_resumes_when_it_appears() {
        let mut journald = FakeJournald::new("resume");
        let stats = Arc::new(SinkStats::default());
        let mut sink = JournaldSink::new(journald.path.clone(), false, stats.clone());
        let record = exec_record(vec!["marker".into()]);
        let e = sink.write(&record).unwrap_err();
        assert_eq!(e.raw_os_error(), None, "wrapped with the socket path: {e}");
        assert_eq!(e.kind(), io::ErrorKind::NotFound, "{e}");
        assert!(sink.write(&record).is_err());
        assert_eq!(stats.delivered.load(Relaxed), 0);

        journald.bind();
        sink.write(&record).unwrap();
        assert!(!journald.receive().0.is_empty());
        assert_eq!(stats.delivered.load(Relaxed), 1);

        // Bound but nobody reading any more: refused.
        journald.socket = None;
        assert!(sink.write(&record).is_err());
    }

    /// journald restarted between two records (a new socket at the same path): the second
    /// record reaches the new journald at once, with nothing failed.
    #[test]
    fn a_restarted_journald_gets_the_next_record() {
        let mut journald = FakeJournald::new("restart");
        journald.bind();
        let stats = Arc::new(SinkStats::default());
        let mut sink = JournaldSink::new(journald.path.clone(), false, stats.clone());
        let record = exec_record(vec!["marker".into()]);
        sink.write(&record).unwrap();
        assert!(!journald.receive().0.is_empty());

        journald.socket = None;
        std::fs::remove_file(&journald.path).unwrap();
        journald.bind();
        sink.write(&record).unwrap();
        assert!(!journald.receive().0.is_empty());
        assert_eq!(stats.delivered.load(Relaxed), 2);
    }

    /// Reads a received memfd back and checks it is sealed for good.
    fn read_sealed(fd: OwnedFd) -> Vec<u8> {
        // SAFETY: fcntl on a valid descriptor.
        let seals = unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_GET_SEALS) };
        let want = libc::F_SEAL_SHRINK | libc::F_SEAL_GROW | libc::F_SEAL_WRITE | libc::F_SEAL_SEAL;
        assert_eq!(seals & want, want, "seals {seals:#x}");
        // The descriptor shares the sender's file offset (at the end): read from the start, as
        // journald does (it maps a sealed memfd).
        let mut file = File::from(fd);
        std::io::Seek::rewind(&mut file).unwrap();
        let mut data = Vec::new();
        std::io::Read::read_to_end(&mut file, &mut data).unwrap();
        data
    }

    #[test]
    fn memfd_carries_an_entry_with_an_empty_payload() {
        let mut journald = FakeJournald::new("memfd");
        journald.bind();
        let mut entry = Vec::new();
        encode(&exec_record(vec!["marker".into(), EVIL.into()]), false, &mut entry);
        send_memfd(&UnixDatagram::unbound().unwrap(), &journald.path, &entry).unwrap();
        let (data, fds) = journald.receive();
        assert!(data.is_empty(), "payload of {} bytes", data.len());
        let [fd] = <[OwnedFd; 1]>::try_from(fds).expect("one descriptor");
        assert_eq!(read_sealed(fd), entry);
    }

    #[test]
    fn an_entry_too_large_for_the_socket_goes_through_a_memfd() {
        let mut journald = FakeJournald::new("large");
        journald.bind();
        let socket = UnixDatagram::unbound().unwrap();
        // The smallest send buffer the kernel allows (a few KiB): a 64 KiB entry cannot fit.
        let one: libc::c_int = 1;
        // SAFETY: setsockopt with a valid int option.
        let r = unsafe {
            libc::setsockopt(
                socket.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_SNDBUF,
                (&raw const one).cast(),
                size_of_val(&one) as _,
            )
        };
        assert_eq!(r, 0);
        let mut entry = Vec::new();
        encode(&exec_record(vec!["marker".into(), "y".repeat(64 * 1024)]), false, &mut entry);
        socket.connect(&journald.path).unwrap();
        let direct = socket.send(&entry).unwrap_err();
        assert_eq!(direct.raw_os_error(), Some(libc::EMSGSIZE), "{direct}");

        send(&socket, &journald.path, &entry).unwrap();
        let (data, fds) = journald.receive();
        assert!(data.is_empty());
        let [fd] = <[OwnedFd; 1]>::try_from(fds).expect("one descriptor");
        let fields = parse(&read_sealed(fd));
        assert_eq!(values(&fields, &field_name(schema::PROCESS_COMMAND_ARGS))[1].len(), 64 * 1024);
    }

    fn real_journald() -> PathBuf {
        let socket = PathBuf::from("/run/systemd/journal/socket");
        assert!(socket.exists(), "needs a running journald ({} is missing)", socket.display());
        socket
    }

    /// `journalctl -o json` entries matching `matches`, after a sync.
    fn journal(matches: &[&str]) -> Vec<serde_json::Value> {
        let _ = std::process::Command::new("journalctl").arg("--sync").status();
        let out = std::process::Command::new("journalctl")
            .args(["-o", "json", "-a", "--no-pager"])
            .args(matches)
            .output()
            .unwrap();
        String::from_utf8(out.stdout).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect()
    }

    /// A large entry through the sink to the real journald: the datagram is refused as too
    /// large for the socket's default send buffer, and the memfd gets it through.
    /// `cargo test -p ksense --lib journald -- --ignored --nocapture`, with journald running.
    #[test]
    #[ignore = "needs a running journald"]
    fn real_journald_takes_a_large_entry() {
        let stats = Arc::new(SinkStats::default());
        let mut sink = JournaldSink::new(real_journald(), false, stats.clone());
        let tag =
            format!("{}-{}", std::process::id(), SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_nanos());
        let mut record = exec_record(vec!["marker".into(), "z".repeat(300 * 1024), tag.clone()]);
        record.attributes.push((schema::PROCESS_EXECUTABLE_NAME, Value::Str(tag.clone())));
        let mut entry = Vec::new();
        encode(&record, false, &mut entry);
        let direct = UnixDatagram::unbound().unwrap().send_to(&entry, real_journald()).unwrap_err();
        assert!(matches!(direct.raw_os_error(), Some(libc::EMSGSIZE | libc::ENOBUFS)), "{direct}");
        sink.write(&record).unwrap();
        let name_match = format!("{}={tag}", field_name(schema::PROCESS_EXECUTABLE_NAME));
        let deadline = Instant::now() + Duration::from_secs(10);
        let found = loop {
            if let Some(found) = journal(&["SYSLOG_IDENTIFIER=ksense", &name_match]).pop() {
                break found;
            }
            assert!(Instant::now() < deadline, "the large entry did not arrive");
            std::thread::sleep(Duration::from_millis(100));
        };
        let args = found[field_name(schema::PROCESS_COMMAND_ARGS)].as_array().unwrap();
        assert!(args.iter().any(|a| a.as_str().is_some_and(|a| a.len() == 300 * 1024)), "{:?}", args.len());
    }

    /// Entries per second the sink sustains against the real journald: `N` exec-sized records
    /// (20,000, or `$KSENSE_BENCH_N`), timed until sent and until journald has stored the last.
    /// `cargo test -p ksense --lib real_journald_throughput -- --ignored --nocapture`.
    #[test]
    #[ignore = "needs a running journald; a benchmark"]
    fn real_journald_throughput() {
        let n: usize = std::env::var("KSENSE_BENCH_N").ok().and_then(|n| n.parse().ok()).unwrap_or(20_000);
        let stats = Arc::new(SinkStats::default());
        let mut sink = JournaldSink::new(real_journald(), false, stats.clone());
        let tag = format!(
            "bench-{}-{}",
            std::process::id(),
            SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_millis()
        );
        let mut record = exec_record(["/usr/bin/make", "-j2", "all"].map(String::from).to_vec());
        record.attributes.extend([
            (schema::PROCESS_EXECUTABLE_NAME, Value::Str(tag.clone())),
            (schema::PROCESS_PARENT_PID, Value::Int(1)),
            (schema::THREAD_ID, Value::Int(42)),
            (schema::PROCESS_USER_ID, Value::Int(0)),
            (schema::PROCESS_REAL_USER_ID, Value::Int(0)),
            (schema::PROCESS_OWNER, Value::Str("root".into())),
            (schema::PROCESS_CREATION_TIME, Value::Str(rfc3339(SystemTime::now()))),
            (schema::PROCESS_LINUX_CGROUP, Value::Str("0::/user.slice/user-0.slice/session-1.scope".into())),
            (schema::KSENSE_PROBE, Value::Str("tp_btf/sched_process_exec".into())),
            (schema::KSENSE_EVENT_SEQ, Value::Int(0)),
        ]);
        let mut entry = Vec::new();
        encode(&record, false, &mut entry);
        let mut failed = 0;
        let start = Instant::now();
        for seq in 0..n {
            record.attributes.last_mut().unwrap().1 = Value::Int(seq as i64);
            failed += usize::from(sink.write(&record).is_err());
        }
        let sent = start.elapsed();
        let name_match = format!("{}={tag}", field_name(schema::PROCESS_EXECUTABLE_NAME));
        let last_match = format!("{}={}", field_name(schema::KSENSE_EVENT_SEQ), n - 1);
        let deadline = Instant::now() + Duration::from_secs(120);
        while journal(&["SYSLOG_IDENTIFIER=ksense", &name_match, &last_match]).is_empty() {
            assert!(Instant::now() < deadline, "the last entry was not stored");
            std::thread::sleep(Duration::from_millis(20));
        }
        let stored_after = start.elapsed();
        let stored = journal(&["SYSLOG_IDENTIFIER=ksense", &name_match]).len();
        println!(
            "{n} writes of {} bytes: sent in {sent:?} ({:.0}/s), {failed} failed; last stored after {stored_after:?} \
             ({:.0}/s); {stored} stored",
            entry.len(),
            n as f64 / sent.as_secs_f64(),
            n as f64 / stored_after.as_secs_f64()
        );
        assert_eq!(failed, 0);
        assert_eq!(stored, n, "journald dropped entries (rate limit?)");
    }
}
