//! Ring-buffer records to typed [`Event`]s: the header is checked here, the rest is decoded by
//! the record's kind ([`crate::kinds`]).
//!
//! Records are untrusted input as far as this module is concerned: a short, oversized or
//! unknown record is an error (counted by the caller and skipped), never a panic.
use std::time::SystemTime;

use ksense_abi::{ABI_VERSION, EventKind, Header, Hook};

pub use crate::wire::DecodeError;
use crate::{clock::Clock, event::Event, kinds, wire::read};

#[cfg(test)]
pub(crate) mod bench;

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
    let (process, detail) = (kinds::spec(kind).decode)(bytes, clock)?;
    Ok(Event { seq, time: clock.wall(header.ktime_ns), observed_time, hook, process, detail })
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::{
        record::Value,
        schema,
        wire::as_bytes,
    };
    use ksense_abi::{
        Task,
        exec::{Exec, FILENAME_CAP},
        fork::Fork,
    };
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

    #[test]
    fn a_fork_has_the_child_as_the_acting_process() {
        let mut rec = Fork::default();
        rec.parent.tgid = 100;
        rec.parent.tid = 101;
        rec.parent.comm[..4].copy_from_slice(b"bash");
        rec.child_tid = 200;
        rec.child_tgid = 200;
        rec.clone_flags = 0x11; // SIGCHLD
        let bytes = record(Hook::TpBtfTaskNewtask, &as_bytes(&rec)[24..]);
        let event = decode(&bytes, 7, &Clock::sample(), SystemTime::now()).unwrap();
        assert_eq!((event.process.pid, event.process.tid, event.process.parent_pid), (200, 200, 100));
        let record = event.to_record();
        assert_eq!(record.attribute(schema::KSENSE_CLONE_THREAD), Some(&Value::Bool(false)));
        assert_eq!(record.attribute(schema::KSENSE_EVENT_SEQ), Some(&Value::Int(7)));
        assert_eq!(record.body, "bash[100] forked child 200");
        assert!(record.attribute(schema::PROCESS_CREATION_TIME).is_some());
    }

    fn marker_exec_record(filename: &[u8], args: &[u8]) -> Vec<u8> {
        let mut task = Task { tgid: 42, tid: 42, ..Task::default() };
        task.comm[..6].copy_from_slice(b"marker");
        exec_record(task, filename, args)
    }

    #[test]
    fn exec_argv_is_kept_exactly() {
        let bytes = marker_exec_record(b"/usr/bin/marker", b"marker\0a b\0\"q\"\0line\nbreak\0\0\xff\0");
        let event = decode(&bytes, 1, &Clock::sample(), SystemTime::now()).unwrap();
        let record = event.to_record();
        assert_eq!(
            record.attribute(schema::PROCESS_COMMAND_ARGS),
            Some(&Value::StrArray(vec![
                "marker".into(),
                "a b".into(),
                "\"q\"".into(),
                "line\nbreak".into(),
                "".into(),
                "\\xff".into()
            ]))
        );
        // The string given to execve; the canonical path is enrichment's (from /proc/<pid>/exe).
        assert_eq!(record.attribute(schema::KSENSE_PROCESS_EXEC_PATH), Some(&Value::Str("/usr/bin/marker".into())));
        assert_eq!(record.attribute(schema::PROCESS_EXECUTABLE_PATH), None);
        assert!(!record.body.contains('\n'), "{}", record.body);
    }

    #[test]
    fn exec_with_inconsistent_lengths_is_rejected() {
        let mut bytes = marker_exec_record(b"/bin/true", b"true\0");
        let at = offset_of!(Exec, args_len);
        bytes[at..at + 4].copy_from_slice(&99u32.to_ne_bytes());
        let err = decode(&bytes, 1, &Clock::sample(), SystemTime::now()).unwrap_err();
        assert_eq!(err, DecodeError::Field("args_len"));
        let mut bytes = marker_exec_record(b"/bin/true", b"true\0");
        let at = offset_of!(Exec, filename_len);
        bytes[at..at + 4].copy_from_slice(&(FILENAME_CAP as u32).to_ne_bytes());
        let err = decode(&bytes, 1, &Clock::sample(), SystemTime::now()).unwrap_err();
        assert_eq!(err, DecodeError::Field("filename_len"));
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
