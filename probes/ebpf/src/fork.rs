//! `process.fork` hooks: fexit on `kernel_clone` (the seed hook), else the `task_newtask`
//! tracepoint (BTF-typed, else plain). `task_newtask` rather than `sched_process_fork`, because
//! it carries the clone flags, which the contract reports and which tell a thread from a process.
use aya_ebpf::{
    macros::{btf_tracepoint, fexit, tracepoint},
    programs::{BtfTracePointContext, FExitContext, TracePointContext},
};
use ksense_abi::{
    EventKind, Hook,
    fork::{CLONE_THREAD, Fork},
};

use crate::{
    maps::{as_bytes, config, excluded, output},
    task::{code_range, current, fill_current, func_arg, header, read},
};

/// fexit `kernel_clone(struct kernel_clone_args *args)`: returns the child's pid (in the
/// caller's pid namespace) or a negative errno.
#[fexit(function = "kernel_clone")]
pub fn fexit_kernel_clone(ctx: FExitContext) -> i32 {
    let ret = func_arg(&ctx, config!(misc.kernel_clone_ret_arg)) as i32;
    if ret <= 0 {
        return 0;
    }
    let args = func_arg(&ctx, config!(misc.kernel_clone_args_arg)) as *const u8;
    let flags: u64 = read(args, config!(misc.clone_args_flags));
    emit(Hook::FexitKernelClone, flags, || Child { tid: ret as u32, tgid: None, start_ns: 0, code: code_range(current()) });
    0
}

/// BTF tracepoint `task_newtask(struct task_struct *task, u64 clone_flags)`, fired in
/// `copy_process` once the new task has its ids and address space, before it first runs.
#[btf_tracepoint(function = "task_newtask")]
pub fn tp_btf_task_newtask(ctx: BtfTracePointContext) -> i32 {
    let child: *const u8 = ctx.arg(0);
    let flags: u64 = ctx.arg(1);
    emit(Hook::TpBtfTaskNewtask, flags, || Child {
        tid: read(child, config!(task.pid)),
        tgid: Some(read(child, config!(task.tgid))),
        start_ns: read(child, config!(task.start_time)),
        code: code_range(child),
    });
    0
}

/// Plain tracepoint `task:task_newtask` (record fields: pid, comm, clone_flags).
#[tracepoint]
pub fn tracepoint_task_newtask(ctx: TracePointContext) -> i32 {
    let (tid_at, flags_at) = (config!(tracepoint.newtask_pid), config!(tracepoint.newtask_clone_flags));
    // SAFETY: `bpf_probe_read_kernel` from the tracepoint record; a bad offset fails with an
    // error instead of faulting.
    let tid = unsafe { ctx.read_at::<u32>(tid_at as usize) }.unwrap_or(0);
    // SAFETY: as above.
    let flags = unsafe { ctx.read_at::<u64>(flags_at as usize) }.unwrap_or(0);
    // The child's image is a copy of the parent's until it execs.
    emit(Hook::TracepointTaskNewtask, flags, || Child { tid, tgid: None, start_ns: 0, code: code_range(current()) });
    0
}

/// What a hook knows of the new task.
struct Child {
    tid: u32,
    /// Derived from the clone flags when the hook cannot read it.
    tgid: Option<u32>,
    start_ns: u64,
    /// Its `mm->start_code`, `mm->end_code`.
    code: (u64, u64),
}

/// Builds and writes one fork record. `child` reads the new task's fields only once the parent
/// is known not to be excluded: besides sparing the reads, the verifier then meets the branches
/// they add after the record's zeroing, not before (5.10's otherwise gives up at 1M
/// instructions, walking the zeroing loop once per path).
#[inline(always)]
fn emit(hook: Hook, flags: u64, child: impl FnOnce() -> Child) {
    let mut ev = Fork::default();
    fill_current(&mut ev.parent);
    // The child has its parent's comm and credentials until it execs.
    if excluded(&ev.parent, EventKind::Fork) {
        return;
    }
    let child = child();
    ev.child_tid = child.tid;
    ev.child_tgid = match child.tgid {
        Some(tgid) => tgid,
        None if flags & CLONE_THREAD != 0 => ev.parent.tgid,
        None => child.tid,
    };
    ev.clone_flags = flags;
    ev.child_start_ns = child.start_ns;
    (ev.code_start, ev.code_end) = child.code;
    ev.header = header(hook, size_of::<Fork>());
    output(EventKind::Fork, as_bytes(&ev));
}
