//! The wire format between the ksense eBPF probes and the ksense daemon.
//!
//! Every record the probes write to the [`EVENTS_MAP`] ring buffer starts with a [`Header`]
//! naming its [`EventKind`], the [`Hook`] that produced it and its total size, followed by that
//! kind's payload ([`fork::Fork`], [`exec::Exec`], [`exit::Exit`]). The probes read kernel
//! structures at offsets the daemon resolved from the running kernel's BTF and handed over in
//! [`config::ProbeConfig`], so nothing in this crate depends on one kernel's layout.
//!
//! This crate is layout only: no decoding, no allocation. Decoding lives in the daemon.
#![no_std]
#![deny(missing_docs)]
#![deny(clippy::undocumented_unsafe_blocks)]

pub mod config;
pub mod exec;
pub mod exit;
pub mod fork;
pub mod memory;
pub mod module;

/// Version of this layout, written into every [`Header`]; the daemon rejects other versions.
pub const ABI_VERSION: u16 = 1;

/// Name of the ring buffer map the probes write events to.
pub const EVENTS_MAP: &str = "EVENTS";
/// Name of the per-CPU array counting, per [`EventKind`], events the probes could not write
/// because the ring buffer was full.
pub const LOST_MAP: &str = "LOST";
/// Name of the hash map of effective uids whose events the probes drop (`[filters] exclude`).
/// The value says of which kinds: bit `1 << kind` ([`EventKind`] value) for each.
pub const EXCLUDE_UIDS_MAP: &str = "EXCLUDE_UIDS";
/// Name of the hash map of exact comms (NUL-padded) whose events the probes drop; values as for
/// [`EXCLUDE_UIDS_MAP`].
pub const EXCLUDE_COMMS_MAP: &str = "EXCLUDE_COMMS";
/// Entries each exclusion map holds.
pub const EXCLUDE_MAX: u32 = 1024;
/// Name of the read-only global holding the [`config::ProbeConfig`].
pub const CONFIG_GLOBAL: &str = "KSENSE_CONFIG";
/// Number of slots in [`LOST_MAP`]: one per [`EventKind`] value (slot 0 is unused).
pub const LOST_SLOTS: u32 = EventKind::ALL.len() as u32 + 1;

/// Length of `task_struct::comm`, including its terminating NUL.
pub const TASK_COMM_LEN: usize = 16;

/// The kinds of event the probes emit. The value is the slot in [`LOST_MAP`].
#[repr(u16)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum EventKind {
    /// A task was created (fork, vfork, clone, clone3; threads included).
    Fork = 1,
    /// A process replaced its image with execve/execveat.
    Exec = 2,
    /// A task exited (by default only the last thread of a process is reported).
    Exit = 3,
    /// A kernel module is being initialised.
    ModuleLoad = 4,
    /// A process changed the protection of its memory.
    MemoryProtect = 5,
}

impl EventKind {
    /// Every kind, in value order.
    pub const ALL: [EventKind; 5] =
        [EventKind::Fork, EventKind::Exec, EventKind::Exit, EventKind::ModuleLoad, EventKind::MemoryProtect];

    /// The kind with this wire value, if any.
    pub const fn from_u16(value: u16) -> Option<EventKind> {
        match value {
            1 => Some(EventKind::Fork),
            2 => Some(EventKind::Exec),
            3 => Some(EventKind::Exit),
            4 => Some(EventKind::ModuleLoad),
            5 => Some(EventKind::MemoryProtect),
            _ => None,
        }
    }

    /// Its bit in the values of [`EXCLUDE_UIDS_MAP`] and [`EXCLUDE_COMMS_MAP`].
    pub const fn bit(self) -> u8 {
        1 << self as u16
    }

    /// The event name of the contract (`docs/EVENTS.md`), e.g. `process.fork`.
    pub const fn name(self) -> &'static str {
        match self {
            EventKind::Fork => "process.fork",
            EventKind::Exec => "process.exec",
            EventKind::Exit => "process.exit",
            EventKind::ModuleLoad => "kernel.module.load",
            EventKind::MemoryProtect => "process.memory.protect",
        }
    }
}

/// Which kernel hook produced a record. Each hook is one program in the eBPF object.
#[repr(u16)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Hook {
    /// fexit on `kernel_clone`: the child's pid is the return value.
    FexitKernelClone = 1,
    /// BTF-typed tracepoint `task_newtask` (the new task and its clone flags).
    TpBtfTaskNewtask = 2,
    /// Plain tracepoint `task:task_newtask`.
    TracepointTaskNewtask = 3,
    /// BTF-typed tracepoint `sched_process_exec`.
    TpBtfSchedProcessExec = 4,
    /// Plain tracepoint `sched:sched_process_exec`.
    TracepointSchedProcessExec = 5,
    /// fentry on `do_exit`.
    FentryDoExit = 6,
    /// BTF-typed tracepoint `sched_process_exit`.
    TpBtfSchedProcessExit = 7,
    /// Plain tracepoint `sched:sched_process_exit`.
    TracepointSchedProcessExit = 8,
    /// fentry on `do_init_module`.
    FentryDoInitModule = 9,
    /// BTF-typed tracepoint `module_load`.
    TpBtfModuleLoad = 10,
    /// Plain tracepoint `module:module_load`.
    TracepointModuleLoad = 11,
    /// fentry on `mprotect_fixup` (each VMA whose protection changes).
    FentryMprotectFixup = 12,
    /// Plain tracepoints `syscalls:sys_enter/sys_exit_mprotect` and `..._pkey_mprotect`.
    TracepointMprotect = 13,
}

impl Hook {
    /// Every hook, in value order.
    pub const ALL: [Hook; 13] = [
        Hook::FexitKernelClone,
        Hook::TpBtfTaskNewtask,
        Hook::TracepointTaskNewtask,
        Hook::TpBtfSchedProcessExec,
        Hook::TracepointSchedProcessExec,
        Hook::FentryDoExit,
        Hook::TpBtfSchedProcessExit,
        Hook::TracepointSchedProcessExit,
        Hook::FentryDoInitModule,
        Hook::TpBtfModuleLoad,
        Hook::TracepointModuleLoad,
        Hook::FentryMprotectFixup,
        Hook::TracepointMprotect,
    ];

    /// The hook with this wire value, if any.
    pub const fn from_u16(value: u16) -> Option<Hook> {
        match value {
            1 => Some(Hook::FexitKernelClone),
            2 => Some(Hook::TpBtfTaskNewtask),
            3 => Some(Hook::TracepointTaskNewtask),
            4 => Some(Hook::TpBtfSchedProcessExec),
            5 => Some(Hook::TracepointSchedProcessExec),
            6 => Some(Hook::FentryDoExit),
            7 => Some(Hook::TpBtfSchedProcessExit),
            8 => Some(Hook::TracepointSchedProcessExit),
            9 => Some(Hook::FentryDoInitModule),
            10 => Some(Hook::TpBtfModuleLoad),
            11 => Some(Hook::TracepointModuleLoad),
            12 => Some(Hook::FentryMprotectFixup),
            13 => Some(Hook::TracepointMprotect),
            _ => None,
        }
    }

    /// The event kind this hook reports.
    pub const fn kind(self) -> EventKind {
        match self {
            Hook::FexitKernelClone | Hook::TpBtfTaskNewtask | Hook::TracepointTaskNewtask => {
                EventKind::Fork
            }
            Hook::TpBtfSchedProcessExec | Hook::TracepointSchedProcessExec => EventKind::Exec,
            Hook::FentryDoExit | Hook::TpBtfSchedProcessExit | Hook::TracepointSchedProcessExit => {
                EventKind::Exit
            }
            Hook::FentryDoInitModule | Hook::TpBtfModuleLoad | Hook::TracepointModuleLoad => {
                EventKind::ModuleLoad
            }
            Hook::FentryMprotectFixup | Hook::TracepointMprotect => EventKind::MemoryProtect,
        }
    }

    /// The eBPF programs implementing this hook, where each attaches (a function for
    /// fentry/fexit, a tracepoint name for tp_btf, `group/name` for plain tracepoints) and as
    /// what. Most hooks are one program at one place. The memory-protection hooks also see the
    /// mappings `mmap` creates executable: the mprotect_fixup hook with an fexit program on
    /// `mmap_region` (where the new mapping's address is known), the syscall hook with an enter
    /// and an exit program on `mmap`, next to its own enter and exit programs, each on both
    /// `mprotect` and `pkey_mprotect`. Every program of a hook must attach, or none is used.
    pub const fn attachments(self) -> &'static [(&'static str, &'static str, HookFamily)] {
        use HookFamily::{Fentry, Fexit, TpBtf, Tracepoint};
        match self {
            Hook::FexitKernelClone => &[("fexit_kernel_clone", "kernel_clone", Fexit)],
            Hook::TpBtfTaskNewtask => &[("tp_btf_task_newtask", "task_newtask", TpBtf)],
            Hook::TracepointTaskNewtask => &[("tracepoint_task_newtask", "task/task_newtask", Tracepoint)],
            Hook::TpBtfSchedProcessExec => &[("tp_btf_sched_process_exec", "sched_process_exec", TpBtf)],
            Hook::TracepointSchedProcessExec => {
                &[("tracepoint_sched_process_exec", "sched/sched_process_exec", Tracepoint)]
            }
            Hook::FentryDoExit => &[("fentry_do_exit", "do_exit", Fentry)],
            Hook::TpBtfSchedProcessExit => &[("tp_btf_sched_process_exit", "sched_process_exit", TpBtf)],
            Hook::TracepointSchedProcessExit => {
                &[("tracepoint_sched_process_exit", "sched/sched_process_exit", Tracepoint)]
            }
            Hook::FentryDoInitModule => &[("fentry_do_init_module", "do_init_module", Fentry)],
            Hook::TpBtfModuleLoad => &[("tp_btf_module_load", "module_load", TpBtf)],
            Hook::TracepointModuleLoad => &[("tracepoint_module_load", "module/module_load", Tracepoint)],
            Hook::FentryMprotectFixup => &[
                ("fentry_mprotect_fixup", "mprotect_fixup", Fentry),
                ("fexit_mmap_region", "mmap_region", Fexit),
            ],
            Hook::TracepointMprotect => &[
                ("tracepoint_sys_enter_mprotect", "syscalls/sys_enter_mprotect", Tracepoint),
                ("tracepoint_sys_enter_mprotect", "syscalls/sys_enter_pkey_mprotect", Tracepoint),
                ("tracepoint_sys_exit_mprotect", "syscalls/sys_exit_mprotect", Tracepoint),
                ("tracepoint_sys_exit_mprotect", "syscalls/sys_exit_pkey_mprotect", Tracepoint),
                ("tracepoint_sys_enter_mmap", "syscalls/sys_enter_mmap", Tracepoint),
                ("tracepoint_sys_exit_mmap", "syscalls/sys_exit_mmap", Tracepoint),
            ],
        }
    }

    /// Programs attached alongside the hook when the kernel allows, `(program, target, family)`:
    /// they add detail the main program cannot see, and the hook works without them. The
    /// mprotect_fixup hook never sees a call that fails before reaching it; an fexit on
    /// `do_mprotect_pkey` reports those (with `report = "all"`).
    pub const fn companions(self) -> &'static [(&'static str, &'static str, HookFamily)] {
        match self {
            Hook::FentryMprotectFixup => &[("fexit_do_mprotect_pkey", "do_mprotect_pkey", HookFamily::Fexit)],
            _ => &[],
        }
    }

    /// The attach point named in `ksense.probe` (the first of [`Hook::attachments`]; for the
    /// mprotect syscall hook, the exit side, where the record is written).
    pub const fn target(self) -> &'static str {
        match self {
            Hook::TracepointMprotect => "syscalls/sys_exit_mprotect",
            hook => hook.attachments()[0].1,
        }
    }

    /// The hook's family: `fentry`, `fexit`, `tp_btf` or `tracepoint`.
    pub const fn family(self) -> HookFamily {
        match self {
            Hook::FexitKernelClone => HookFamily::Fexit,
            Hook::FentryDoExit | Hook::FentryDoInitModule | Hook::FentryMprotectFixup => HookFamily::Fentry,
            Hook::TpBtfTaskNewtask
            | Hook::TpBtfSchedProcessExec
            | Hook::TpBtfSchedProcessExit
            | Hook::TpBtfModuleLoad => HookFamily::TpBtf,
            Hook::TracepointTaskNewtask
            | Hook::TracepointSchedProcessExec
            | Hook::TracepointSchedProcessExit
            | Hook::TracepointModuleLoad
            | Hook::TracepointMprotect => HookFamily::Tracepoint,
        }
    }
}

/// `family/target`, e.g. `tracepoint/sched/sched_process_exec`: the hook's `ksense.probe`
/// value, and its name everywhere ksense reports on hooks.
impl core::fmt::Display for Hook {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(f, "{}/{}", self.family().name(), self.target())
    }
}

/// The kinds of BPF attachment ksense uses, in the order `auto` mode prefers them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum HookFamily {
    /// fentry: a BPF trampoline at a kernel function's entry (rides on ftrace).
    Fentry,
    /// fexit: a BPF trampoline at a kernel function's return.
    Fexit,
    /// A BTF-typed tracepoint (raw tracepoint with typed arguments).
    TpBtf,
    /// A plain tracepoint reading the tracefs record.
    Tracepoint,
}

impl HookFamily {
    /// Its name as used in `ksense.probe` (`fentry/kernel_clone`, `tracepoint/sched/...`).
    pub const fn name(self) -> &'static str {
        match self {
            HookFamily::Fentry => "fentry",
            HookFamily::Fexit => "fexit",
            HookFamily::TpBtf => "tp_btf",
            HookFamily::Tracepoint => "tracepoint",
        }
    }
}

/// Starts every record.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct Header {
    /// [`EventKind`] value.
    pub kind: u16,
    /// [`ABI_VERSION`] of the writer.
    pub version: u16,
    /// [`Hook`] value.
    pub hook: u16,
    /// Unused, zero.
    pub reserved: u16,
    /// Size in bytes of the whole record, header included.
    pub size: u32,
    /// CPU the event was recorded on.
    pub cpu: u32,
    /// `bpf_ktime_get_ns()` (CLOCK_MONOTONIC) when the hook fired.
    pub ktime_ns: u64,
}

impl Header {
    /// The header of a `size`-byte record (header included) from `hook`, recorded on `cpu` at
    /// `ktime_ns`.
    pub const fn new(hook: Hook, size: usize, cpu: u32, ktime_ns: u64) -> Header {
        Header {
            kind: hook.kind() as u16,
            version: ABI_VERSION,
            hook: hook as u16,
            reserved: 0,
            size: size as u32,
            cpu,
            ktime_ns,
        }
    }
}

/// What every record says about the task a hook saw.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct Task {
    /// Kernel task id (`task->pid`).
    pub tid: u32,
    /// Thread-group id (`task->tgid`), the process id.
    pub tgid: u32,
    /// Thread-group id of `task->real_parent`; 0 when unknown.
    pub ppid: u32,
    /// Real uid (`task->cred->uid`).
    pub uid: u32,
    /// Effective uid (`task->cred->euid`).
    pub euid: u32,
    /// `task->flags` (PF_KTHREAD and friends); 0 when unknown.
    pub flags: u32,
    /// `task->group_leader->start_time`: CLOCK_MONOTONIC ns when the process (its main thread)
    /// was created, the same for every thread of it; 0 when unknown.
    pub start_ns: u64,
    /// cgroup v2 id of the task (0 on hosts without cgroup v2 accounting).
    pub cgroup_id: u64,
    /// `task->comm`, NUL-padded.
    pub comm: [u8; TASK_COMM_LEN],
    /// Process group id (`task->signal->pids[PIDTYPE_PGID]`, in the initial pid namespace);
    /// 0 when unknown (no BTF offsets, or a new process whose ids are not set up yet).
    pub pgid: u32,
    /// Session id (`task->signal->pids[PIDTYPE_SID]`); 0 when unknown.
    pub sid: u32,
    /// Inode number of the file the task's image runs (`mm->exe_file`); 0 when unknown (no
    /// BTF offsets, a kernel thread, an exiting task whose memory is gone). With
    /// [`Task::exe_dev`], what tells whether `/proc/<pid>/exe` still shows the image the event
    /// was about (an exec since then replaces it).
    pub exe_ino: u64,
    /// That file's device, as the kernel's `s_dev` (major << 20 | minor).
    pub exe_dev: u64,
}

/// Value of `Task::flags` bit PF_KTHREAD (stable across kernels since 2.6).
pub const PF_KTHREAD: u32 = 0x0020_0000;

/// Asserts at compile time that a record type has the size the daemon expects.
macro_rules! assert_size {
    ($t:ty, $size:expr) => {
        const _: () = assert!(core::mem::size_of::<$t>() == $size);
    };
}
pub(crate) use assert_size;

assert_size!(Header, 24);
assert_size!(Task, 80);

// SAFETY: plain old data, integers only, no padding (the size asserted above is the sum of the
// fields): every bit pattern is a valid value.
#[cfg(feature = "user")]
unsafe impl aya::Pod for Header {}
// SAFETY: plain old data, integers and byte arrays only, no padding (the size asserted above is
// the sum of the fields): every bit pattern is a valid value.
#[cfg(feature = "user")]
unsafe impl aya::Pod for Task {}
