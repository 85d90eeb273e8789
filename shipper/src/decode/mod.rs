//! Ring-buffer records to typed [`Event`]s.
//!
//! Records are untrusted input as far as this module is concerned: a short, oversized or
//! unknown record is an error (counted by the caller and skipped), never a panic.
use std::time::SystemTime;

use ksense_abi::{ABI_VERSION, EventKind, Header, Hook, PF_KTHREAD, Task};

use crate::{
    clock::Clock,
    event::{Event, Process},
};

#[cfg(test)]
pub(crate) mod bench;
pub mod exec;
pub mod exit;
pub mod fork;
pub mod memory;
pub mod module;

/// Why a record was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// Shorter than the header or than its kind's fixed part.
    #[error("record of {len} bytes is shorter than the {need} its kind needs")]
    Short {
        /// Bytes received.
        len: usize,
        /// Bytes needed.
        need: usize,
    },
    /// The header's size disagrees with the record's length.
    #[error("record header says {header} bytes but {actual} arrived")]
    SizeMismatch {
        /// Size in the header.
        header: usize,
        /// Bytes received.
        actual: usize,
    },
    /// Written by probes of another ABI version.
    #[error("record has ABI version {0}, this ksense reads version {ABI_VERSION}")]
    Version(u16),
    /// Unknown event kind.
    #[error("record has unknown event kind {0}")]
    UnknownKind(u16),
    /// Unknown hook, or a hook that does not report this kind.
    #[error("record has hook {hook} which does not produce event kind {kind}")]
    BadHook {
        /// Hook value.
        hook: u16,
        /// Kind value.
        kind: u16,
    },
    /// A length field inside the payload is out of range.
    #[error("record field {0} is out of range")]
    Field(&'static str),
}

/// Plain-old-data types from the ABI crate: every bit pattern is a valid value.
pub(crate) trait Plain: Copy {}
impl Plain for Header {}
impl Plain for Task {}
impl Plain for ksense_abi::fork::Fork {}
impl Plain for ksense_abi::exit::Exit {}
impl Plain for ksense_abi::module::ModuleLoad {}
impl Plain for ksense_abi::memory::Memory {}
impl Plain for u32 {}
impl Plain for u64 {}

/// Reads a `T` at `offset`, or [`DecodeError::Short`].
pub(crate) fn read<T: Plain>(bytes: &[u8], offset: usize) -> Result<T, DecodeError> {
    let need = offset + size_of::<T>();
    if bytes.len() < need {
        return Err(DecodeError::Short { len: bytes.len(), need });
    }
    // SAFETY: in bounds (checked above); T is Plain, so any bytes are a valid T.
    Ok(unsafe { std::ptr::read_unaligned(bytes.as_ptr().add(offset).cast::<T>()) })
}

/// Reads a fixed-size record: exactly `size_of::<T>()` bytes.
pub(crate) fn read_whole<T: Plain>(bytes: &[u8]) -> Result<T, DecodeError> {
    if bytes.len() != size_of::<T>() {
        return Err(DecodeError::SizeMismatch { header: size_of::<T>(), actual: bytes.len() });
    }
    read(bytes, 0)
}

/// Decodes one record. `seq` becomes `ksense.event.seq`.
pub fn decode(bytes: &[u8], seq: u64, clock: &Clock, observed_time: SystemTime) -> Result<Event, DecodeError> {
    let header: Header = read(bytes, 0)?;
    if header.version != ABI_VERSION {
        return Err(DecodeError::Version(header.version));
    }
    let kind = EventKind::from_u16(header.kind).ok_or(DecodeError::UnknownKind(header.kind))?;
    let hook = Hook::from_u16(header.hook)
        .filter(|h| h.kind() == kind)
        .ok_or(DecodeError::BadHook { hook: header.hook, kind: header.kind })?;
    if header.size as usize != bytes.len() {
        return Err(DecodeError::SizeMismatch { header: header.size as usize, actual: bytes.len() });
    }
    let (process, detail) = match kind {
        EventKind::Fork => fork::decode(bytes, clock)?,
        EventKind::Exec => exec::decode(bytes, clock)?,
        EventKind::Exit => exit::decode(bytes, clock)?,
        EventKind::ModuleLoad => module::decode(bytes, clock)?,
        EventKind::MemoryProtect => memory::decode(bytes, clock)?,
    };
    let time = clock.wall(header.ktime_ns);
    let mut process = process;
    if process.start_time.is_none() && kind == EventKind::Fork {
        // The hook could not read the child's start time: it was created just now.
        process.start_time = Some(time);
    }
    Ok(Event { seq, time, observed_time, hook, process, detail })
}

/// The kernel-given part of a [`Process`].
pub(crate) fn process_from(task: &Task, clock: &Clock) -> Process {
    Process {
        pid: task.tgid,
        tid: task.tid,
        parent_pid: task.ppid,
        comm: crate::text::until_nul(&task.comm).to_vec(),
        uid: task.uid,
        euid: task.euid,
        kernel_thread: task.flags & PF_KTHREAD != 0,
        start_time: (task.start_ns != 0).then(|| clock.creation_time(task.start_ns)),
        start_ns: task.start_ns,
        // 0 is unknown: the probes could not read them (a kernel thread's are 0, and /proc
        // says so too).
        pgid: (task.pgid != 0).then_some(task.pgid),
        sid: (task.sid != 0).then_some(task.sid),
        cgroup_id: task.cgroup_id,
        ..Process::default()
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use ksense_abi::exec::Exec;
    use proptest::prelude::*;
    use std::mem::offset_of;

    /// A well-formed record of `kind` from `hook` with `payload` after the header.
    pub(crate) fn record(hook: Hook, payload: &[u8]) -> Vec<u8> {
        let header = Header::new(hook, size_of::<Header>() + payload.len(), 0, 1_000_000_000);
        let mut bytes = as_bytes(&header).to_vec();
        bytes.extend_from_slice(payload);
        bytes
    }

    /// An exec record of `task` running `filename` with the NUL-separated `args`, as the probe
    /// writes it (the fixed part, then the file name and the argv bytes it copied).
    pub(crate) fn exec_record(task: Task, filename: &[u8], args: &[u8]) -> Vec<u8> {
        let mut fixed = vec![0u8; Exec::fixed_size() - size_of::<Header>()];
        let rel = |off: usize| off - size_of::<Header>();
        fixed[rel(offset_of!(Exec, task))..][..size_of::<Task>()].copy_from_slice(as_bytes(&task));
        fixed[rel(offset_of!(Exec, filename_len))..][..4].copy_from_slice(&(filename.len() as u32).to_ne_bytes());
        fixed[rel(offset_of!(Exec, args_len))..][..4].copy_from_slice(&(args.len() as u32).to_ne_bytes());
        fixed[rel(offset_of!(Exec, code_start))..][..8].copy_from_slice(&0x5555_5555_4000u64.to_ne_bytes());
        fixed[rel(offset_of!(Exec, code_end))..][..8].copy_from_slice(&0x5555_5556_a000u64.to_ne_bytes());
        fixed.extend_from_slice(filename);
        fixed.extend_from_slice(args);
        record(Hook::TpBtfSchedProcessExec, &fixed)
    }

    /// The bytes of a plain value.
    pub(crate) fn as_bytes<T: Plain>(value: &T) -> &[u8] {
        // SAFETY: Plain types have no padding-dependent meaning; reading them as bytes is fine.
        unsafe { std::slice::from_raw_parts((value as *const T).cast::<u8>(), size_of::<T>()) }
    }

    fn decode_bytes(bytes: &[u8]) -> Result<Event, DecodeError> {
        decode(bytes, 1, &Clock::sample(), SystemTime::now())
    }

    #[test]
    fn rejects_short_header() {
        assert_eq!(decode_bytes(&[0u8; 10]).unwrap_err(), DecodeError::Short { len: 10, need: 24 });
    }

    #[test]
    fn rejects_other_versions_kinds_and_hooks() {
        let exit = ksense_abi::exit::Exit::default();
        let good = record(Hook::TracepointSchedProcessExit, &as_bytes(&exit)[24..]);
        assert!(decode_bytes(&good).is_ok());

        let mut bad = good.clone();
        bad[2] = 99; // version
        assert_eq!(decode_bytes(&bad).unwrap_err(), DecodeError::Version(99));

        let mut bad = good.clone();
        bad[0] = 77; // kind
        assert_eq!(decode_bytes(&bad).unwrap_err(), DecodeError::UnknownKind(77));

        let mut bad = good.clone();
        bad[4] = Hook::FexitKernelClone as u8; // a fork hook on an exit record
        assert!(matches!(decode_bytes(&bad).unwrap_err(), DecodeError::BadHook { .. }));
    }

    #[test]
    fn rejects_size_mismatch_and_truncation() {
        let exit = ksense_abi::exit::Exit::default();
        let good = record(Hook::TracepointSchedProcessExit, &as_bytes(&exit)[24..]);
        let mut longer = good.clone();
        longer.push(0);
        assert!(matches!(decode_bytes(&longer).unwrap_err(), DecodeError::SizeMismatch { .. }));
        for len in 0..good.len() {
            assert!(decode_bytes(&good[..len]).is_err(), "a {len}-byte prefix was accepted");
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(4096))]
        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..20_000)) {
            let _ = decode_bytes(&bytes);
        }

        #[test]
        fn arbitrary_payloads_behind_a_valid_header_never_panic(
            hook in proptest::sample::select(Hook::ALL.to_vec()),
            payload in proptest::collection::vec(any::<u8>(), 0..18_000),
        ) {
            let _ = decode_bytes(&record(hook, &payload));
        }
    }
}
