//! `process.fork` records.
use ksense_abi::fork::{CLONE_INTO_CGROUP, CLONE_THREAD, Fork};

use super::prelude::*;

/// A new task. The event's [`Process`] is the child; its `parent_pid` the forking process.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProcessFork {
    /// Raw clone flags.
    pub clone_flags: u64,
    /// `mm->start_code` of the child (its parent's image until it execs).
    pub code_start: u64,
    /// `mm->end_code`.
    pub code_end: u64,
    /// When the forking process started (CLOCK_MONOTONIC ns, 0 when unknown): what tells
    /// whether `/proc/<parent_pid>` still is the parent.
    pub parent_start_ns: u64,
}

impl ProcessFork {
    /// Whether the new task is a thread of the forking process.
    pub fn thread(&self) -> bool {
        self.clone_flags & CLONE_THREAD != 0
    }
}

fn decode(bytes: &[u8], clock: &Clock) -> Result<(Process, Detail), DecodeError> {
    let rec: Fork = read_whole(bytes)?;
    // The child inherits comm and credentials; its ids are its own, and so is its start time
    // unless it is a thread of the forking process, which started when that process did.
    let mut process = Process::from_task(&rec.parent, clock);
    process.pid = rec.child_tgid;
    process.tid = rec.child_tid;
    process.parent_pid = rec.parent.tgid;
    if rec.clone_flags & CLONE_THREAD == 0 {
        // A start time the hook could not read is the event's time: the child was created just now.
        process.start_time = Some(clock.creation_time(if rec.child_start_ns != 0 { rec.child_start_ns } else { rec.header.ktime_ns }));
        process.start_ns = rec.child_start_ns;
    }
    if rec.clone_flags & CLONE_INTO_CGROUP != 0 {
        // The parent's cgroup, which the record carries, is not the child's.
        process.cgroup_id = 0;
    }
    let fork = ProcessFork {
        clone_flags: rec.clone_flags,
        code_start: rec.code_start,
        code_end: rec.code_end,
        parent_start_ns: rec.parent.start_ns,
    };
    Ok((process, Detail::Fork(fork)))
}

/// `process.fork` in the table of kinds.
pub(super) static KIND: KindSpec = KindSpec {
    kind: EventKind::Fork,
    config_key: "fork",
    decode,
    offsets,
    message_id: "a11761e9a509483797e71c7de1d363fa",
    catalog_subject: "Process @PROCESS_PARENT_PID@ created process or thread @PROCESS_PID@",
    catalog: CATALOG,
};

/// The journald catalog entry (`journalctl -x`): what the event is and what its fields say.
const CATALOG: &str = r#"ksense saw a process.fork event: process @PROCESS_PARENT_PID@ created
@PROCESS_PID@ with clone(), fork() or vfork().

PROCESS_PID is the new child (for a thread, THREAD_ID is the new task and
PROCESS_PID the process it belongs to); PROCESS_PARENT_PID is the process that
forked. KSENSE_CLONE_FLAGS holds the raw clone flags and KSENSE_CLONE_THREAD
says whether a thread (CLONE_THREAD) was created rather than a process.
KSENSE_PROCESS_CODE_START and KSENSE_PROCESS_CODE_END give the child's code
range. PROCESS_EXECUTABLE_NAME, PROCESS_EXECUTABLE_PATH, PROCESS_USER_ID,
PROCESS_OWNER and PROCESS_LINUX_CGROUP describe the process, KSENSE_PROBE names
the kernel hook that reported it, and KSENSE_EVENT_SEQ grows by one per event
ksense read, so a gap shows a loss.

This is routine activity, logged at priority info.
"#;

/// Where `kernel_clone` keeps the clone flags and its return value (fexit), and the fields of
/// the plain `task_newtask` tracepoint.
fn offsets(r: &mut Resolver<'_>) {
    if let Some(btf) = r.btf() {
        let positions = || -> Result<_, crate::btf::BtfError> {
            Ok((
                btf.field_offset("kernel_clone_args", "flags")?,
                btf.func_param_index("kernel_clone", "args")? as u32,
                btf.func_param_count("kernel_clone")? as u32,
            ))
        };
        match positions() {
            Ok((flags, args, ret)) => {
                let misc = &mut r.config.misc;
                (misc.clone_args_flags, misc.kernel_clone_args_arg, misc.kernel_clone_ret_arg) = (flags, args, ret);
            }
            Err(e) => r.refuse(&[Hook::FexitKernelClone], &e.to_string()),
        }
    }
    r.tracepoint_fields(Hook::TracepointTaskNewtask, 0, &[
        ("pid", |c| &mut c.tracepoint.newtask_pid),
        ("clone_flags", |c| &mut c.tracepoint.newtask_clone_flags),
    ]);
}

impl Payload for ProcessFork {
    fn render(&self, process: &Process, _time: SystemTime, attrs: &mut Vec<(&'static str, Value)>) -> (Severity, String) {
        attrs.push((schema::KSENSE_CLONE_FLAGS, Value::Int(self.clone_flags as i64)));
        attrs.push((schema::KSENSE_CLONE_THREAD, Value::Bool(self.thread())));
        attrs.push((schema::KSENSE_PROCESS_CODE_START, hex(self.code_start)));
        attrs.push((schema::KSENSE_PROCESS_CODE_END, hex(self.code_end)));
        let p = process;
        let body = if self.thread() {
            format!("{} started thread {}", process.who(), p.tid)
        } else {
            let comm = crate::text::one_line(&crate::text::lossless(&p.comm));
            format!("{comm}[{}] forked child {}", p.parent_pid, p.pid)
        };
        (Severity::Info, body)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn thread_flag_follows_clone_thread() {
        let fork = ProcessFork { clone_flags: CLONE_THREAD | 0x100, code_start: 0, code_end: 0, parent_start_ns: 0 };
        assert!(fork.thread());
    }
}
