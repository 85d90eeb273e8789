//! What the daemon tells the probes before they load: kernel structure offsets resolved from
//! the running kernel's BTF, tracepoint record offsets read from tracefs, and switches.
//!
//! The probes read it from the read-only global [`crate::CONFIG_GLOBAL`]; the verifier sees its
//! values as constants, so a switch that is off costs nothing.

/// Offsets into `struct task_struct`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct TaskOffsets {
    /// `pid`.
    pub pid: u32,
    /// `tgid`.
    pub tgid: u32,
    /// `real_parent` (a `task_struct *`).
    pub real_parent: u32,
    /// `comm`.
    pub comm: u32,
    /// `mm` (a `mm_struct *`).
    pub mm: u32,
    /// `real_cred` (a `const struct cred *`).
    pub real_cred: u32,
    /// `start_time` (u64 ns, CLOCK_MONOTONIC).
    pub start_time: u32,
    /// `exit_code`.
    pub exit_code: u32,
    /// `signal` (a `signal_struct *`).
    pub signal: u32,
    /// `flags`.
    pub flags: u32,
    /// `group_leader` (a `task_struct *`).
    pub group_leader: u32,
}

/// Offsets into `struct mm_struct`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct MmOffsets {
    /// `start_code`.
    pub start_code: u32,
    /// `end_code`.
    pub end_code: u32,
    /// `arg_start`.
    pub arg_start: u32,
    /// `arg_end`.
    pub arg_end: u32,
    /// `env_start`.
    pub env_start: u32,
    /// `env_end`; 0 when the environment is not to be read (no variable is reported).
    pub env_end: u32,
    /// `exe_file`: the file the image runs, which every event's task is described by.
    pub exe_file: u32,
}

/// Offsets and argument positions the fork/exec/exit hooks need beyond task and mm.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct MiscOffsets {
    /// `cred.uid.val`.
    pub cred_uid: u32,
    /// `cred.euid.val`.
    pub cred_euid: u32,
    /// `signal_struct.live.counter`.
    pub signal_live: u32,
    /// `signal_struct.pids`: an array of `struct pid *` indexed by `enum pid_type`.
    pub signal_pids: u32,
    /// `PIDTYPE_PGID`: the index of the process group's `struct pid` in `signal_struct.pids`.
    pub pidtype_pgid: u32,
    /// `PIDTYPE_SID`: the index of the session's.
    pub pidtype_sid: u32,
    /// `pid.numbers[0].nr`: the id in the initial pid namespace.
    pub pid_nr: u32,
    /// `kernel_clone_args.flags`.
    pub clone_args_flags: u32,
    /// `linux_binprm.filename`.
    pub binprm_filename: u32,
    /// `file.f_inode` (with `mm_struct.exe_file`, from [`MmOffsets::exe_file`], the
    /// executed file's inode).
    pub file_inode: u32,
    /// `inode.i_ino`.
    pub inode_ino: u32,
    /// `inode.i_sb`.
    pub inode_sb: u32,
    /// `super_block.s_dev`.
    pub sb_dev: u32,
    /// `inode.i_nlink` (0: the executed file has no name on any file system).
    pub inode_nlink: u32,
    /// The seconds of the inode's change time: `inode.i_ctime_sec` (6.11+),
    /// `inode.__i_ctime.tv_sec` (6.6-6.10) or `inode.i_ctime.tv_sec` (before); 0 when none
    /// exists (the exec probe then reads no change time).
    pub inode_ctime_sec: u32,
    /// Its nanoseconds: `i_ctime_nsec`, `__i_ctime.tv_nsec` or `i_ctime.tv_nsec` (read as 32
    /// bits: a `long` holding a nanosecond count, little-endian).
    pub inode_ctime_nsec: u32,
    /// `signal_struct.tty` (a `tty_struct *`, null without a controlling terminal).
    pub signal_tty: u32,
    /// Position of `kernel_clone`'s `struct kernel_clone_args *` parameter.
    pub kernel_clone_args_arg: u32,
    /// Position of `do_exit`'s `code` parameter.
    pub do_exit_code_arg: u32,
    /// Position of `kernel_clone`'s return value in an fexit context: its parameter count.
    pub kernel_clone_ret_arg: u32,
}

/// Offsets of fields in plain tracepoint records, from
/// `/sys/kernel/tracing/events/<group>/<name>/format`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct TracepointOffsets {
    /// `task_newtask`: `pid` (the new task's id).
    pub newtask_pid: u32,
    /// `task_newtask`: `clone_flags`.
    pub newtask_clone_flags: u32,
    /// `sched_process_exec`: `filename` (a `__data_loc char[]`).
    pub exec_filename: u32,
    /// `sched_process_exec`: `old_pid`.
    pub exec_old_pid: u32,
}

/// Offsets into `struct module`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct ModuleOffsets {
    /// `name`.
    pub name: u32,
    /// `taints`.
    pub taints: u32,
    /// First size field: `mem[0].size` (6.4+) or `core_layout.size` (older).
    pub size: u32,
    /// Bytes between consecutive size fields (`sizeof(struct module_memory)`), 0 if one field.
    pub size_stride: u32,
    /// Number of size fields to add up (the core text, data, rodata, ro_after_init regions).
    pub size_count: u32,
    /// Position of `do_init_module`'s `mod` parameter.
    pub init_mod_arg: u32,
    /// `module_load` tracepoint record: `taints`.
    pub tp_taints: u32,
    /// `module_load` tracepoint record: `name` (a `__data_loc char[]`).
    pub tp_name: u32,
}

/// Offsets and positions the memory-protection hooks need.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct MemoryOffsets {
    /// `vm_area_struct.vm_start`.
    pub vma_start: u32,
    /// `vm_area_struct.vm_end`.
    pub vma_end: u32,
    /// `vm_area_struct.vm_flags`.
    pub vma_flags: u32,
    /// `vm_area_struct.vm_file`.
    pub vma_file: u32,
    /// `mm_struct.start_brk`.
    pub mm_start_brk: u32,
    /// `mm_struct.brk`.
    pub mm_brk: u32,
    /// `mm_struct.start_stack`.
    pub mm_start_stack: u32,
    /// `file.f_path.dentry`.
    pub file_dentry: u32,
    /// `dentry.d_name.name`.
    pub dentry_name: u32,
    /// Position of `mprotect_fixup`'s `vma` parameter.
    pub fixup_vma_arg: u32,
    /// Position of its `start` parameter.
    pub fixup_start_arg: u32,
    /// Position of its `end` parameter.
    pub fixup_end_arg: u32,
    /// Position of its `newflags` parameter.
    pub fixup_newflags_arg: u32,
    /// `sys_enter_mprotect` record: `start`.
    pub tp_start: u32,
    /// `sys_enter_mprotect` record: `len`.
    pub tp_len: u32,
    /// `sys_enter_mprotect` record: `prot`.
    pub tp_prot: u32,
    /// `sys_exit_mprotect` record: `ret`.
    pub tp_ret: u32,
    /// Position of `do_mprotect_pkey`'s `start` parameter.
    pub pkey_start_arg: u32,
    /// Position of its `len` parameter.
    pub pkey_len_arg: u32,
    /// Position of its `prot` parameter.
    pub pkey_prot_arg: u32,
    /// Position of its return value in an fexit context: its parameter count.
    pub pkey_ret_arg: u32,
    /// `mm_struct.mm_rb.rb_node`, the root of the VMA tree (kernels before 6.1; 0 where VMAs
    /// are in a maple tree).
    pub mm_rb: u32,
    /// `vm_area_struct.vm_rb`, the VMA's node in that tree.
    pub vma_rb: u32,
    /// `rb_node.rb_left`.
    pub rb_left: u32,
    /// `rb_node.rb_right`.
    pub rb_right: u32,
    /// Position of `mmap_region`'s `file` parameter (null: an anonymous mapping).
    pub mmap_file_arg: u32,
    /// Position of its `addr` parameter.
    pub mmap_addr_arg: u32,
    /// Position of its `len` parameter.
    pub mmap_len_arg: u32,
    /// Position of its `vm_flags` parameter.
    pub mmap_vm_flags_arg: u32,
    /// Position of its return value (the mapping's address, or -errno) in an fexit context: its
    /// parameter count.
    pub mmap_ret_arg: u32,
    /// `sys_enter_mmap` record: `addr`.
    pub tp_mmap_addr: u32,
    /// `sys_enter_mmap` record: `len`.
    pub tp_mmap_len: u32,
    /// `sys_enter_mmap` record: `prot`.
    pub tp_mmap_prot: u32,
    /// `sys_enter_mmap` record: `flags`.
    pub tp_mmap_flags: u32,
    /// `sys_exit_mmap` record: `ret`.
    pub tp_mmap_ret: u32,
}

/// Everything the probes are told. All zero means "nothing resolved": the probes then report
/// only what BPF helpers give (pid, tgid, uid, comm, cgroup id).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct ProbeConfig {
    /// 1 when the `task`, `mm` and `misc` offsets were resolved from BTF.
    pub have_btf_offsets: u32,
    /// 1 to report every thread's exit, 0 to report only the last thread of a process.
    pub report_thread_exits: u32,
    /// `task_struct` offsets.
    pub task: TaskOffsets,
    /// `mm_struct` offsets.
    pub mm: MmOffsets,
    /// Other offsets and argument positions.
    pub misc: MiscOffsets,
    /// Plain tracepoint record offsets.
    pub tracepoint: TracepointOffsets,
    /// `struct module` offsets.
    pub module: ModuleOffsets,
    /// Memory-protection offsets.
    pub memory: MemoryOffsets,
    /// 1 to report every protection change, 0 for only those that matter (W^X, code made
    /// writable, exec added to anonymous, stack or heap memory).
    pub memory_report_all: u32,
    /// Events of this process (ksense itself) are dropped; 0 reports them.
    pub ignore_tgid: u32,
    /// Fork, exec and exit records are written only while the ring buffer holds at most this
    /// many unread bytes, so the rest stays free for module loads and memory-protection
    /// changes; 0: no limit. A record refused here is counted as lost, like one that did not fit.
    pub process_data_max: u32,
    /// Repeats of one (process, range, transition) within this many ns of its last record are
    /// counted into the next record instead of each writing one; 0 turns coalescing off.
    pub memory_coalesce_ns: u64,
}

// No padding: the daemon and the probes must agree byte for byte.
const _: () = assert!(core::mem::size_of::<ProbeConfig>() == 90 * 4 + 8);

// SAFETY: plain old data: u32 fields, then one u64 at an offset divisible by 8, so no padding
// (the size assert above proves it); every bit pattern is a valid value.
#[cfg(feature = "user")]
unsafe impl aya::Pod for ProbeConfig {}
