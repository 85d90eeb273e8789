//! The typed event every stage after decoding works on, and its rendering as a [`LogRecord`].
use std::time::SystemTime;

use ksense_abi::{EventKind, Hook};

use crate::{
    clock::rfc3339,
    kinds::Detail,
    process::Process,
    record::{LogRecord, Value, mark_escaped, push_text},
    schema,
    text::rendered_all,
};

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
        self.detail.payload().critical()
    }

    /// The `ksense.probe` value: family and target, e.g. `tracepoint/sched/sched_process_exec`.
    pub fn probe(&self) -> String {
        self.detail.payload().probe(self.hook)
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
        if let Some(identity) = &p.identity {
            identity.render(&mut attrs);
        }
        let (severity, body) = self.detail.payload().render(p, self.time, &mut attrs);
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
