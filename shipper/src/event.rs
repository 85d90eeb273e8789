//! The typed event every stage after decoding works on, and its rendering as a [`LogRecord`].
use std::{sync::Arc, time::SystemTime};

use ksense_abi::{EventKind, Hook};

use crate::{
    clock::rfc3339,
    decode::{
        exec::ProcessExec, exit::ProcessExit, fork::ProcessFork, memory::ProcessMemoryProtect,
        module::KernelModuleLoad,
    },
    record::{LogRecord, Severity, Value, mark_escaped, push_text},
    schema,
    text::{lossless, one_line, rendered_all},
};

/// The acting process of an event: the one that forked (for a fork, the new child), exec'd or
/// exited. Kernel-given fields are always set; the `Option`s are filled by enrichment.
#[derive(Debug, Clone, Default)]
pub struct Process {
    /// Thread-group id.
    pub pid: u32,
    /// Kernel task id.
    pub tid: u32,
    /// Parent's thread-group id (for a fork: the forking process).
    pub parent_pid: u32,
    /// `comm`, raw bytes without NUL.
    pub comm: Vec<u8>,
    /// Real uid.
    pub uid: u32,
    /// Effective uid.
    pub euid: u32,
    /// Whether it is a kernel thread.
    pub kernel_thread: bool,
    /// When the process was created.
    pub start_time: Option<SystemTime>,
    /// The task's `start_time` (CLOCK_MONOTONIC ns) as the kernel gave it; 0 when unknown.
    /// What tells whether `/proc/<pid>` still is this process.
    pub start_ns: u64,
    /// Executable path, raw bytes.
    pub exe: Option<Arc<[u8]>>,
    /// argv, raw bytes per argument.
    pub args: Option<Arc<[Vec<u8>]>>,
    /// argv was longer than [`ksense_abi::exec::ARGS_CAP`] bytes and was cut.
    pub args_truncated: bool,
    /// User name of the effective uid.
    pub owner: Option<Arc<str>>,
    /// Process group id: from the kernel when the probes could read it, else enrichment.
    pub pgid: Option<u32>,
    /// Session id: as `pgid`.
    pub sid: Option<u32>,
    /// cgroup v2 id of the process's cgroup, from the kernel; 0 when unknown.
    pub cgroup_id: u64,
    /// The cgroup (a `/proc/<pid>/cgroup` line).
    pub cgroup: Option<Arc<str>>,
    /// Container id found in the cgroup path.
    pub container_id: Option<Arc<str>>,
    /// The parent's executable path, from the process table.
    pub parent_exe: Option<Arc<[u8]>>,
    /// The parent's argv, from the process table.
    pub parent_args: Option<Arc<[Vec<u8>]>>,
    /// Ancestors from the parent upward, from the process table: pid and executable path.
    pub lineage: Vec<(u32, Option<Arc<[u8]>>)>,
}

/// What happened, per kind.
#[derive(Debug, Clone)]
pub enum Detail {
    /// `process.fork`.
    Fork(ProcessFork),
    /// `process.exec`.
    Exec(ProcessExec),
    /// `process.exit`.
    Exit(ProcessExit),
    /// `kernel.module.load`.
    ModuleLoad(KernelModuleLoad),
    /// `process.memory.protect`.
    MemoryProtect(ProcessMemoryProtect),
}

/// One decoded event.
#[derive(Debug, Clone)]
pub struct Event {
    /// `ksense.event.seq`: one more per record read from the kernel.
    pub seq: u64,
    /// When the kernel saw it (wall clock).
    pub time: SystemTime,
    /// When ksense read it.
    pub observed_time: SystemTime,
    /// The hook that produced it.
    pub hook: Hook,
    /// The acting process.
    pub process: Process,
    /// Kind-specific data.
    pub detail: Detail,
}

impl Event {
    /// The event kind.
    pub fn kind(&self) -> EventKind {
        self.hook.kind()
    }

    /// Whether it is a module load or a W^X memory change: the events an attacker most wants
    /// hidden. Filter rules drop them only when they name their kind (`events = [...]`), and no
    /// rate limit applies to them.
    pub fn is_critical(&self) -> bool {
        match &self.detail {
            Detail::ModuleLoad(_) => true,
            Detail::MemoryProtect(memory) => memory.wx(),
            _ => false,
        }
    }

    /// The `ksense.probe` value: family and target, e.g. `tracepoint/sched/sched_process_exec`.
    pub fn probe(&self) -> String {
        let (family, target) = (self.hook.family().name(), self.hook.target());
        let mut probe = String::with_capacity(family.len() + 1 + target.len());
        probe.push_str(family);
        probe.push('/');
        probe.push_str(target);
        probe
    }

    /// Renders the event as the contract's log record.
    pub fn to_record(&self) -> LogRecord {
        let p = &self.process;
        let mut attrs: Vec<(&'static str, Value)> = Vec::with_capacity(32);
        let int = |v: u32| Value::Int(i64::from(v));
        attrs.push((schema::EVENT_NAME, Value::Str(self.kind().name().to_owned())));
        attrs.push((schema::PROCESS_PID, int(p.pid)));
        attrs.push((schema::PROCESS_PARENT_PID, int(p.parent_pid)));
        attrs.push((schema::THREAD_ID, int(p.tid)));
        push_text(&mut attrs, schema::PROCESS_EXECUTABLE_NAME, &p.comm);
        if let Some(exe) = &p.exe {
            push_text(&mut attrs, schema::PROCESS_EXECUTABLE_PATH, exe);
        }
        if let Some(args) = &p.args {
            let (args, escaped) = rendered_all(args);
            attrs.push((schema::PROCESS_COMMAND_LINE, Value::Str(args.join(" "))));
            attrs.push((schema::PROCESS_COMMAND_ARGS, Value::StrArray(args)));
            if escaped {
                mark_escaped(&mut attrs, schema::PROCESS_COMMAND_LINE);
                mark_escaped(&mut attrs, schema::PROCESS_COMMAND_ARGS);
            }
            if p.args_truncated {
                attrs.push((schema::KSENSE_PROCESS_COMMAND_ARGS_TRUNCATED, Value::Bool(true)));
            }
        }
        attrs.push((schema::PROCESS_USER_ID, int(p.euid)));
        attrs.push((schema::PROCESS_REAL_USER_ID, int(p.uid)));
        if let Some(owner) = &p.owner {
            attrs.push((schema::PROCESS_OWNER, Value::Str(owner.to_string())));
        }
        if let Some(pgid) = p.pgid {
            attrs.push((schema::PROCESS_GROUP_LEADER_PID, int(pgid)));
        }
        if let Some(sid) = p.sid {
            attrs.push((schema::PROCESS_SESSION_LEADER_PID, int(sid)));
        }
        if let Some(start) = p.start_time {
            attrs.push((schema::PROCESS_CREATION_TIME, Value::Str(rfc3339(start))));
        }
        if let Some(cgroup) = &p.cgroup {
            attrs.push((schema::PROCESS_LINUX_CGROUP, Value::Str(cgroup.to_string())));
        }
        if let Some(id) = &p.container_id {
            attrs.push((schema::CONTAINER_ID, Value::Str(id.to_string())));
        }
        push_lineage(p, &mut attrs);
        let (severity, body) = match &self.detail {
            Detail::Fork(fork) => fork.render(self, &mut attrs),
            Detail::Exec(exec) => exec.render(self, &mut attrs),
            Detail::Exit(exit) => exit.render(self, &mut attrs),
            Detail::ModuleLoad(module) => module.render(self, &mut attrs),
            Detail::MemoryProtect(memory) => memory.render(self, &mut attrs),
        };
        attrs.push((schema::KSENSE_PROBE, Value::Str(self.probe())));
        attrs.push((schema::KSENSE_EVENT_SEQ, Value::Int(self.seq as i64)));
        LogRecord {
            event_name: self.kind().name(),
            severity,
            time: self.time,
            observed_time: self.observed_time,
            body,
            attributes: attrs,
        }
    }

    /// `comm[pid]` for a body message, safe on one line.
    pub fn who(&self) -> String {
        format!("{}[{}]", one_line(&lossless(&self.process.comm)), self.process.pid)
    }
}

/// Appends the parent's executable path and command line and the lineage (`<pid>:<path>` per
/// ancestor), each where the process table knew them.
fn push_lineage(p: &Process, attrs: &mut Vec<(&'static str, Value)>) {
    if let Some(exe) = &p.parent_exe {
        push_text(attrs, schema::KSENSE_PROCESS_PARENT_EXECUTABLE_PATH, exe);
    }
    if let Some(args) = &p.parent_args {
        let (args, escaped) = rendered_all(args);
        attrs.push((schema::KSENSE_PROCESS_PARENT_COMMAND_LINE, Value::Str(args.join(" "))));
        if escaped {
            mark_escaped(attrs, schema::KSENSE_PROCESS_PARENT_COMMAND_LINE);
        }
    }
    if !p.lineage.is_empty() {
        // One list, one flag, as for argv: every element escaped when any path is not UTF-8.
        let lineage: Vec<Vec<u8>> = p
            .lineage
            .iter()
            .map(|(pid, exe)| [format!("{pid}:").as_bytes(), exe.as_deref().unwrap_or_default()].concat())
            .collect();
        let (lineage, escaped) = rendered_all(&lineage);
        attrs.push((schema::KSENSE_PROCESS_LINEAGE, Value::StrArray(lineage)));
        if escaped {
            mark_escaped(attrs, schema::KSENSE_PROCESS_LINEAGE);
        }
    }
}

/// `0x`-prefixed hex, the contract's rendering of addresses.
pub fn hex(value: u64) -> Value {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let width = (value.checked_ilog2().unwrap_or(0) / 4 + 1) as usize;
    let mut text = String::with_capacity(2 + width);
    text.push_str("0x");
    for nibble in (0..width).rev() {
        text.push(char::from(DIGITS[(value >> (nibble * 4)) as usize & 0xf]));
    }
    Value::Str(text)
}

/// Renders a kind's own attributes and returns its severity and body.
pub(crate) trait Render {
    /// Appends this kind's attributes; returns (severity, body).
    fn render(&self, event: &Event, attrs: &mut Vec<(&'static str, Value)>) -> (Severity, String);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hex_is_0x_and_lower_case_digits() {
        for value in [0, 1, 0xf, 0x10, 0x5555_5555_4000, u64::MAX] {
            assert_eq!(hex(value), Value::Str(format!("{value:#x}")));
        }
    }
}
