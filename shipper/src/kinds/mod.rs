//! The event kinds, one module each: a kind's module owns its payload (the kind-specific part
//! of an event), the decoding of its kernel record, the rendering of
//! its attributes and body, the offsets its probes ask for, its journald `MESSAGE_ID` and the
//! text of its catalog entry. [`KINDS`] is the one table every other part of ksense walks;
//! the payloads' behaviour is reached through [`Payload`].
//!
//! Adding a kind: its record in `probes/abi/src/<kind>.rs`, its programs in
//! `probes/ebpf/src/<kind>.rs`, its module here (with a [`KindSpec`] in [`KINDS`] and a
//! variant of [`Detail`]), its test file `tests/<kind>.rs`, its entry in `docs/EVENTS.md`.
use std::{path::Path, time::SystemTime};

use ksense_abi::{EventKind, Hook};
use serde::Deserialize;

use crate::{
    btf::{Btf, BtfError},
    clock::Clock,
    offsets::{self, Resolved, Resolver, Switches},
    process::Process,
    record::{Severity, Value},
    wire::DecodeError,
};

pub mod exec;
pub mod exit;
pub mod fork;
pub mod memory;
pub mod module;

/// What every kind's module works with.
mod prelude {
    pub(super) use std::time::SystemTime;

    pub(super) use ksense_abi::{EventKind, Hook};

    pub(super) use super::{Detail, KindSpec, Payload};
    pub(super) use crate::{
        clock::Clock,
        offsets::Resolver,
        process::Process,
        record::{Severity, Value, hex, push_text},
        schema,
        text::{lossless, one_line},
        wire::{DecodeError, read, read_whole},
    };
}

/// A record's acting process and payload.
pub type Decoded = (Process, Detail);

/// What ksense knows of an event kind, in one place.
#[derive(Debug)]
pub struct KindSpec {
    /// The kind.
    pub kind: EventKind,
    /// Its switch in `[probes]` (`fork = true`).
    pub config_key: &'static str,
    /// Its kernel record (header checked) to the acting process and the payload.
    pub decode: fn(&[u8], &Clock) -> Result<Decoded, DecodeError>,
    /// Resolves the offsets and argument positions its probes read (after the ones every
    /// kind shares), refusing its hooks that cannot work on this kernel.
    pub offsets: fn(&mut Resolver<'_>),
    /// Its journald `MESSAGE_ID` (fixed: catalogs and saved queries depend on it).
    pub message_id: &'static str,
    /// The `Subject:` of its journald catalog entry (`packaging/ksense.catalog` is made of
    /// these entries).
    pub catalog_subject: &'static str,
    /// The text of its catalog entry: what the event is and what its fields say.
    pub catalog: &'static str,
}

/// Every kind, in [`EventKind::ALL`] order.
pub static KINDS: [&KindSpec; EventKind::ALL.len()] = [&fork::KIND, &exec::KIND, &exit::KIND, &module::KIND, &memory::KIND];

/// The table entry of `kind`.
pub fn spec(kind: EventKind) -> &'static KindSpec {
    KINDS[kind as usize - 1]
}

/// The probes' configuration for this kernel: the offsets every kind shares, then each kind's
/// (see [`offsets::resolve`]).
pub fn resolve_offsets<'a>(btf: Result<&'a Btf, &BtfError>, tracefs: Option<&'a Path>, switches: &Switches) -> Resolved {
    offsets::resolve(btf, tracefs, switches, KINDS.iter().map(|kind| kind.offsets))
}

/// An event kind named in a configuration, e.g. `"process.exec"`; any other string is refused
/// with the place it is at and the names there are.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EventName(pub EventKind);

impl<'de> Deserialize<'de> for EventName {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let name = String::deserialize(deserializer)?;
        let kinds = EventKind::ALL;
        kinds.into_iter().find(|k| k.name() == name).map(EventName).ok_or_else(|| {
            let names: Vec<&str> = kinds.iter().map(|k| k.name()).collect();
            serde::de::Error::custom(format!("unknown event kind {name:?}, expected one of {names:?}"))
        })
    }
}

/// What happened, per kind.
#[derive(Debug, Clone)]
pub enum Detail {
    /// `process.fork`.
    Fork(fork::ProcessFork),
    /// `process.exec`.
    Exec(exec::ProcessExec),
    /// `process.exit`.
    Exit(exit::ProcessExit),
    /// `kernel.module.load`.
    ModuleLoad(module::KernelModuleLoad),
    /// `process.memory.protect`.
    MemoryProtect(memory::ProcessMemoryProtect),
}

impl Detail {
    /// The payload, for what every kind does its own way.
    pub fn payload(&self) -> &dyn Payload {
        match self {
            Detail::Fork(fork) => fork,
            Detail::Exec(exec) => exec,
            Detail::Exit(exit) => exit,
            Detail::ModuleLoad(module) => module,
            Detail::MemoryProtect(memory) => memory,
        }
    }
}

/// What a kind's payload does its own way.
pub trait Payload {
    /// Appends this kind's attributes (after the process's); returns the record's severity and
    /// body. `time`: when the kernel saw the event.
    fn render(&self, process: &Process, time: SystemTime, attrs: &mut Vec<(&'static str, Value)>) -> (Severity, String);

    /// Whether it is one of the events an attacker most wants hidden (a module load, a W^X
    /// change): filter rules drop it only when they name its kind, and no rate limit applies.
    fn critical(&self) -> bool {
        false
    }

    /// Bytes it holds on the heap, for the memory budget.
    fn heap_bytes(&self) -> usize {
        0
    }

    /// The `ksense.probe` value of this event from `hook`: the hook, unless one of the hook's
    /// other programs wrote the record.
    fn probe(&self, hook: Hook) -> String {
        hook.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::offsets::tracefs_root;
    use ksense_abi::Hook;

    #[test]
    fn the_table_follows_event_kind_order() {
        for (entry, kind) in KINDS.iter().zip(EventKind::ALL) {
            assert_eq!(entry.kind, kind);
            assert_eq!(spec(kind).kind, kind);
        }
    }

    #[test]
    fn this_kernel_resolves_everything_the_host_path_needs() {
        let btf = Btf::from_sys_fs();
        let resolved = resolve_offsets(btf.as_ref(), tracefs_root().as_deref(), &Switches::default());
        assert_eq!(resolved.config.have_btf_offsets, 1, "{:?}", resolved.unusable);
        for hook in [
            Hook::TpBtfTaskNewtask,
            Hook::TpBtfSchedProcessExec,
            Hook::TpBtfSchedProcessExit,
            Hook::TracepointMprotect,
        ] {
            assert!(!resolved.unusable.contains_key(&hook), "{hook:?}: {:?}", resolved.unusable);
        }
        assert_ne!(resolved.config.task.pid, resolved.config.task.tgid);
        assert!(resolved.config.mm.start_code < resolved.config.mm.end_code);
    }

    #[test]
    fn without_btf_only_plain_tracepoints_remain() {
        let missing = Btf::parse(&[]).unwrap_err();
        let switches = Switches { thread_exits: true, ..Switches::default() };
        let resolved = resolve_offsets(Err(&missing), None, &switches);
        assert_eq!(resolved.config.have_btf_offsets, 0);
        assert_eq!(resolved.config.report_thread_exits, 1);
        assert_eq!(resolved.unusable.len(), Hook::ALL.len());
    }
}
