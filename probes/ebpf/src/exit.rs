//! `process.exit` hooks: fentry on `do_exit` (the seed hook), else the `sched_process_exit`
//! tracepoint (BTF-typed, else plain). Thread exits are dropped here, before any copy, unless
//! the daemon asked for them.
use aya_ebpf::{
    macros::{btf_tracepoint, fentry, tracepoint},
    programs::{BtfTracePointContext, FEntryContext, TracePointContext},
};
use ksense_abi::{EventKind, Hook, exit::Exit};

use crate::{
    maps::{as_bytes, config, output},
    task::{arg_at, current, fill_current, header, live_threads, read},
};

/// fentry `do_exit(long code)`. `signal->live` is decremented later in `do_exit`, so the last
/// thread still counts itself here.
#[fentry(function = "do_exit")]
pub fn fentry_do_exit(ctx: FEntryContext) -> i32 {
    let code = arg_at!(ctx, config!(misc.do_exit_code_arg)) as u32;
    emit(Hook::FentryDoExit, code, live_threads(current()) <= 1);
    0
}

/// BTF tracepoint `sched_process_exit(struct task_struct *p, ...)`, after `exit_code` is set
/// and `signal->live` decremented.
#[btf_tracepoint(function = "sched_process_exit")]
pub fn tp_btf_sched_process_exit(_ctx: BtfTracePointContext) -> i32 {
    exit_tracepoint(Hook::TpBtfSchedProcessExit);
    0
}

/// Plain tracepoint `sched:sched_process_exit`; the task is the current one.
#[tracepoint]
pub fn tracepoint_sched_process_exit(_ctx: TracePointContext) -> i32 {
    exit_tracepoint(Hook::TracepointSchedProcessExit);
    0
}

/// Both tracepoint flavours fire in the exiting task with its `exit_code` already set.
#[inline(always)]
fn exit_tracepoint(hook: Hook) {
    let task = current();
    let code: u32 = read(task, config!(task.exit_code));
    // Unknown (-1, no BTF offsets) counts as the last thread: better a thread exit too many
    // than a process exit missed.
    emit(hook, code, live_threads(task) <= 0);
}

#[inline(always)]
fn emit(hook: Hook, exit_code: u32, group_dead: bool) {
    if !group_dead && config!(report_thread_exits) == 0 {
        return;
    }
    let mut ev = Exit::default();
    fill_current(&mut ev.task);
    ev.exit_code = exit_code;
    ev.group_dead = group_dead as u32;
    ev.header = header(hook, size_of::<Exit>());
    output(EventKind::Exit, as_bytes(&ev));
}
