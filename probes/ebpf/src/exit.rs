//! `process.exit` hooks: fentry on `do_exit` (the seed hook), else the `sched_process_exit`
//! tracepoint (BTF-typed, else plain). Thread exits are dropped here, before any copy, unless
//! the daemon asked for them.
//!
//! Which exit is the process's? `signal->live` counts threads not yet exiting, but reading it
//! is racy: a worker that exits first can wake the thread joining it, which then exits and
//! drops `live` to zero before the worker reaches the tracepoint, so both see zero. Rule used
//! here: the thread-group leader reports the process exit when it sees no live thread left; if
//! the leader went first (its exit saw other threads alive, noted in `EXIT_LEADER_GONE`), the
//! thread that then sees none left reports it. `EXIT_REPORTED` makes that once per process.
use aya_ebpf::{
    bindings::BPF_NOEXIST,
    macros::{btf_tracepoint, fentry, map, tracepoint},
    maps::LruHashMap,
    programs::{BtfTracePointContext, FEntryContext, TracePointContext},
};
use ksense_abi::{EventKind, Hook, exit::Exit};

use crate::{
    maps::{as_bytes, config, excluded, output},
    task::{current, fill_current, func_arg, have_offsets, header, live_threads, read, read_ptr},
};

/// A process, told apart from a later one with the same id by its leader's start time.
#[repr(C)]
#[derive(Clone, Copy)]
struct ProcessKey {
    tgid: u64,
    leader_start_ns: u64,
}

/// Processes whose leader exited while other threads lived.
#[map]
static EXIT_LEADER_GONE: LruHashMap<ProcessKey, u8> = LruHashMap::with_max_entries(16384, 0);

/// Processes whose exit was reported.
#[map]
static EXIT_REPORTED: LruHashMap<ProcessKey, u8> = LruHashMap::with_max_entries(16384, 0);

/// fentry `do_exit(long code)`. `signal->live` is decremented later in `do_exit`, so this
/// thread still counts itself here.
#[fentry(function = "do_exit")]
pub fn fentry_do_exit(ctx: FEntryContext) -> i32 {
    let code = func_arg(&ctx, config!(misc.do_exit_code_arg)) as u32;
    let live = live_threads(current());
    emit(Hook::FentryDoExit, code, if live < 0 { live } else { live - 1 });
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
    let code: u32 = read(current(), config!(task.exit_code));
    emit(hook, code, live_threads(current()));
}

/// `live_after`: threads of the process still alive once this one is gone (-1: unknown).
#[inline(always)]
fn emit(hook: Hook, exit_code: u32, live_after: i32) {
    let process_exit = is_process_exit(live_after);
    if !process_exit && config!(report_thread_exits) == 0 {
        return;
    }
    let mut ev = Exit::default();
    fill_current(&mut ev.task);
    if excluded(&ev.task, EventKind::Exit) {
        return;
    }
    ev.exit_code = exit_code;
    ev.group_dead = process_exit as u32;
    ev.header = header(hook, size_of::<Exit>());
    output(EventKind::Exit, as_bytes(&ev));
}

/// Whether this exit is the process's (see the module docs). Unknown counts as yes: better a
/// thread exit too many than a process exit missed.
#[inline(always)]
fn is_process_exit(live_after: i32) -> bool {
    if live_after < 0 || !have_offsets() {
        return true;
    }
    let task = current();
    let leader = read_ptr(task, config!(task.group_leader));
    let key = ProcessKey { tgid: read::<u32>(task, config!(task.tgid)) as u64, leader_start_ns: read(leader, config!(task.start_time)) };
    let is_leader = leader == task;
    if live_after > 0 {
        if is_leader {
            let _ = EXIT_LEADER_GONE.insert(&key, &1, 0);
        }
        return false;
    }
    // SAFETY: only whether the entry exists is used, not its value.
    if !is_leader && unsafe { EXIT_LEADER_GONE.get(&key) }.is_none() {
        return false;
    }
    let _ = EXIT_LEADER_GONE.remove(&key);
    // Only an entry already there means another thread reported it. Any other failure to note
    // the report (an LRU map can fail to find a free element under contention) reports the
    // exit all the same: at worst twice, never not at all.
    EXIT_REPORTED.insert(&key, &1, BPF_NOEXIST as u64) != Err(-EEXIST)
}

/// `-EEXIST`, what inserting with `BPF_NOEXIST` returns for a key already in the map.
const EEXIST: i32 = 17;
