//! The acting process of an event, as the kernel describes it and enrichment completes it.
use std::{sync::Arc, time::SystemTime};

use ksense_abi::{PF_KTHREAD, Task};

use crate::{
    clock::Clock,
    identity::IdentitySlot,
    kinds::exec::FileId,
    text::{lossless, one_line},
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
    /// When the process was created (its main thread's `start_time`, CLOCK_MONOTONIC ns) as the
    /// kernel gave it; 0 when unknown. What tells whether `/proc/<pid>` still is this process.
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
    /// The file the task's image runs, as the kernel said at the event (`None` when it did not:
    /// no BTF offsets, a kernel thread, an exiting task): what `/proc/<pid>` is checked against.
    pub executable: Option<FileId>,
    /// The executed file's build-id and hash, as the exec that started the image asked for
    /// them (`None` when it did not: identities off, or the exec was not seen).
    pub identity: Option<IdentitySlot>,
}

impl Process {
    /// The kernel-given part of a process, from the task a probe read.
    pub(crate) fn from_task(task: &Task, clock: &Clock) -> Process {
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
            executable: (task.exe_ino != 0).then(|| FileId::from_kernel(task.exe_ino, task.exe_dev)),
            ..Process::default()
        }
    }

    /// `comm[pid]` for a body message, safe on one line.
    pub fn who(&self) -> String {
        format!("{}[{}]", one_line(&lossless(&self.comm)), self.pid)
    }
}
