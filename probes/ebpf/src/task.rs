//! Reads of `task_struct` and friends at BTF-resolved offsets, shared by every hook.
use aya_ebpf::{
    EbpfContext,
    helpers::{
        bpf_get_current_comm, bpf_get_current_pid_tgid, bpf_get_current_uid_gid, bpf_probe_read_kernel,
        bpf_probe_read_kernel_buf,
        generated::{
            bpf_get_current_cgroup_id, bpf_get_current_task, bpf_get_smp_processor_id,
            bpf_ktime_get_ns,
        },
    },
};
use ksense_abi::{Header, Hook, Task};

use crate::maps::config;

/// Reads a `T` at byte offset `offset` from kernel pointer `base`; zero when unreadable.
#[inline(always)]
pub fn read<T: Default>(base: *const u8, offset: u32) -> T {
    if base.is_null() {
        return T::default();
    }
    // SAFETY: `bpf_probe_read_kernel` copies into a local `T` (the callers read integers and
    // pointers, valid for any bits); an unmapped or bad kernel address fails with an error
    // instead of faulting.
    unsafe { bpf_probe_read_kernel(base.wrapping_add(offset as usize).cast::<T>()) }.unwrap_or_default()
}

/// Reads a kernel pointer at byte offset `offset` from `base`; null when unreadable.
#[inline(always)]
pub fn read_ptr(base: *const u8, offset: u32) -> *const u8 {
    read::<u64>(base, offset) as *const u8
}

/// The current task.
#[inline(always)]
pub fn current() -> *const u8 {
    // SAFETY: a helper without preconditions; the pointer is only ever read through
    // `bpf_probe_read_kernel`.
    unsafe { bpf_get_current_task() as *const u8 }
}

/// Whether the daemon resolved structure offsets; without them only helpers are used.
#[inline(always)]
pub fn have_offsets() -> bool {
    config!(have_btf_offsets) != 0
}

/// A header for a record of `size` bytes from `hook`.
#[inline(always)]
pub fn header(hook: Hook, size: usize) -> Header {
    // SAFETY: helpers without preconditions.
    let (cpu, now) = unsafe { (bpf_get_smp_processor_id(), bpf_ktime_get_ns()) };
    Header::new(hook, size, cpu, now)
}

/// Fills `out` with the current task's identity (the image's file left as it is: see
/// [`fill_current_with_image`]).
#[inline(always)]
pub fn fill_current(out: &mut Task) {
    let task = current();
    if have_offsets() {
        fill_from(task, out);
    } else {
        let pid_tgid = bpf_get_current_pid_tgid();
        out.tid = pid_tgid as u32;
        out.tgid = (pid_tgid >> 32) as u32;
        let uid = bpf_get_current_uid_gid() as u32;
        out.uid = uid;
        out.euid = uid;
        out.comm = bpf_get_current_comm().unwrap_or_default();
        // Unknown without offsets; the record may be built in a reused scratch slot.
        (out.pgid, out.sid) = (0, 0);
    }
    (out.exe_ino, out.exe_dev) = (0, 0);
    // SAFETY: a helper without preconditions.
    out.cgroup_id = unsafe { bpf_get_current_cgroup_id() };
}

/// Fills `out` from `task` at BTF-resolved offsets (cgroup id excepted: only the current task's
/// is readable).
#[inline(always)]
pub fn fill_from(task: *const u8, out: &mut Task) {
    out.tid = read(task, config!(task.pid));
    out.tgid = read(task, config!(task.tgid));
    let parent = read_ptr(task, config!(task.real_parent));
    out.ppid = read(parent, config!(task.tgid));
    let cred = read_ptr(task, config!(task.real_cred));
    out.uid = read(cred, config!(misc.cred_uid));
    out.euid = read(cred, config!(misc.cred_euid));
    out.flags = read(task, config!(task.flags));
    // The process's start, its main thread's: the same in the events of all its threads.
    out.start_ns = read(read_ptr(task, config!(task.group_leader)), config!(task.start_time));
    let comm = task.wrapping_add(config!(task.comm) as usize);
    // SAFETY: fills `out.comm`, sized by the slice; a bad kernel address fails with an error
    // instead of faulting.
    let _ = unsafe { bpf_probe_read_kernel_buf(comm, &mut out.comm) };
    // Read here so enrichment need not open /proc/<pid>/stat for them on every exec.
    let signal = read_ptr(task, config!(task.signal));
    let pid_of = |pid_type: u32| read_ptr(signal, config!(misc.signal_pids) + pid_type * size_of::<u64>() as u32);
    out.pgid = read(pid_of(config!(misc.pidtype_pgid)), config!(misc.pid_nr));
    out.sid = read(pid_of(config!(misc.pidtype_sid)), config!(misc.pid_nr));
}

/// Fills `out` as [`fill_current`] does, and with the file the current task's image runs: for
/// the memory hooks, whose W^X records must not be described by an image an exec put in place
/// since. Only there: these reads' branches take the fork programs (5.10) and the module load's
/// BTF tracepoint program (6.1) past the verifier's limit; a forked child runs its parent's
/// image, and an exiting task's memory is gone by the exit tracepoint.
#[inline(always)]
pub fn fill_current_with_image(out: &mut Task) {
    fill_current(out);
    if have_offsets() {
        (out.exe_ino, out.exe_dev) = file_id(exe_inode(read_ptr(current(), config!(task.mm))));
    }
}

/// The inode of the file `mm` runs (`mm->exe_file->f_inode`); null when unknown (no `mm`: a
/// kernel thread, or an exiting task whose memory is gone).
#[inline(always)]
pub fn exe_inode(mm: *const u8) -> *const u8 {
    read_ptr(read_ptr(mm, config!(mm.exe_file)), config!(misc.file_inode))
}

/// Inode number and device (`s_dev`) of `inode`; zeros when it is null.
#[inline(always)]
pub fn file_id(inode: *const u8) -> (u64, u64) {
    let dev = read::<u32>(read_ptr(inode, config!(misc.inode_sb)), config!(misc.sb_dev));
    (read(inode, config!(misc.inode_ino)), u64::from(dev))
}

/// `mm->start_code` and `mm->end_code` of `task`'s address space; zeros for kernel threads.
#[inline(always)]
pub fn code_range(task: *const u8) -> (u64, u64) {
    if !have_offsets() {
        return (0, 0);
    }
    let mm = read_ptr(task, config!(task.mm));
    (read(mm, config!(mm.start_code)), read(mm, config!(mm.end_code)))
}

/// `task->signal->live.counter`: threads of the process not yet exiting; -1 when unknown.
#[inline(always)]
pub fn live_threads(task: *const u8) -> i32 {
    if !have_offsets() {
        return -1;
    }
    let signal = read_ptr(task, config!(task.signal));
    if signal.is_null() {
        return -1;
    }
    read(signal, config!(misc.signal_live))
}

/// Argument `n` of the traced function in an fentry/fexit program, or in an fexit program its
/// return value when `n` is the function's parameter count: slot `n` of the context, an array
/// of u64. Read straight from the context rather than with `bpf_get_func_arg` (5.17+), so the
/// programs load on older kernels with trampolines (5.5+). The verifier only allows context
/// loads at offsets fixed in the instruction, and `n` comes from BTF at run time: so one load
/// per position, each an asm statement the compiler cannot merge into a computed address. `n`
/// is a read-only global, a constant to the verifier, which follows only the matching arm.
#[inline(always)]
pub fn func_arg(ctx: &impl EbpfContext, n: u32) -> u64 {
    let ctx = ctx.as_ptr();
    macro_rules! slot {
        ($offset:literal) => {{
            let value: u64;
            // SAFETY: a load from the program's context, which the kernel keeps valid for the
            // run; the verifier rejects the program at load unless the offset is within the
            // traced function's arguments and return value.
            unsafe {
                core::arch::asm!(
                    concat!("{value} = *(u64 *)({ctx} + ", $offset, ")"),
                    value = out(reg) value,
                    ctx = in(reg) ctx,
                    options(nostack, readonly, preserves_flags),
                )
            };
            value
        }};
    }
    // Six register arguments, and the return value after them: x86-64 and arm64 trampolines
    // take no more.
    match n {
        0 => slot!(0),
        1 => slot!(8),
        2 => slot!(16),
        3 => slot!(24),
        4 => slot!(32),
        5 => slot!(40),
        6 => slot!(48),
        _ => 0,
    }
}
