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
    let ret = ctx.ret::<i64>().unwrap_or(0) as i32;
    if ret <= 0 {
        return 0;
    }
    let args = func_arg(&ctx, config!(misc.kernel_clone_args_arg)) as *const u8;
    let flags: u64 = read(args, config!(misc.clone_args_flags));
    emit(Hook::FexitKernelClone, ret as u32, None, flags, 0, code_range(current()));
    0
}

/// BTF tracepoint `task_newtask(struct task_struct *task, u64 clone_flags)`, fired in
/// `copy_process` once the new task has its ids and address space, before it first runs.
#[btf_tracepoint(function = "task_newtask")]
pub fn tp_btf_task_newtask(ctx: BtfTracePointContext) -> i32 {
    let child: *const u8 = ctx.arg(0);
    let flags: u64 = ctx.arg(1);
    emit(
        Hook::TpBtfTaskNewtask,
        read(child, config!(task.pid)),
        Some(read(child, config!(task.tgid))),
        flags,
        read(child, config!(task.start_time)),
        code_range(child),
    );
    0
}

/// Plain tracepoint `task:task_newtask` (record fields: pid, comm, clone_flags).
#[tracepoint]
pub fn tracepoint_task_newtask(ctx: TracePointContext) -> i32 {
    let (tid_at, flags_at) = (config!(tracepoint.newtask_pid), config!(tracepoint.newtask_clone_flags));
    let tid = unsafe { ctx.read_at::<u32>(tid_at as usize) }.unwrap_or(0);
    let flags = unsafe { ctx.read_at::<u64>(flags_at as usize) }.unwrap_or(0);
    // The child's image is a copy of the parent's until it execs.
    emit(Hook::TracepointTaskNewtask, tid, None, flags, 0, code_range(current()));
    0
}

/// Builds and writes one fork record. `child_tgid` is derived from the clone flags when the
/// hook cannot read it.
#[inline(always)]
fn emit(hook: Hook, child_tid: u32, child_tgid: Option<u32>, flags: u64, child_start_ns: u64, code: (u64, u64)) {
    let mut ev = Fork::default();
    fill_current(&mut ev.parent);
    // The child has its parent's comm and credentials until it execs.
    if excluded(&ev.parent, EventKind::Fork) {
        return;
    }
    ev.child_tid = child_tid;
    ev.child_tgid = match child_tgid {
        Some(tgid) => tgid,
        None if flags & CLONE_THREAD != 0 => ev.parent.tgid,
        None => child_tid,
    };
    ev.clone_flags = flags;
    ev.child_start_ns = child_start_ns;
    (ev.code_start, ev.code_end) = code;
    ev.header = header(hook, size_of::<Fork>());
    output(EventKind::Fork, as_bytes(&ev));
}
