//! The maps and the configuration global shared by every hook.
//!
//! # Scratch slots and preemption
//!
//! A record too large for the 512-byte BPF stack is built in a slot of a per-CPU array
//! (`EXEC_SCRATCH`, `MEMORY_SCRATCH`). Per-CPU means private to one run of one program only if
//! nothing else that writes the slot runs on that CPU between the program's start and its end,
//! and the kernel promises that for some program types only:
//!
//! - fentry/fexit programs run from the trampoline between `__bpf_prog_enter*` and
//!   `__bpf_prog_exit*` (kernel/bpf/trampoline.c), which take `rcu_read_lock()` and
//!   `migrate_disable()`, nothing more. Since 5.11 `migrate_disable()` pins the task to its CPU
//!   without disabling preemption (before, without PREEMPT_RT, it was `preempt_disable()`), so
//!   on a preemptible kernel (PREEMPT, PREEMPT_DYNAMIC booted `preempt=full`, PREEMPT_RT) a task
//!   can be preempted inside such a program and another task can then run another program on
//!   that CPU. The same program cannot run twice at once on one CPU: since 5.12 the trampoline
//!   counts runs in the per-CPU `prog->active` and skips one that finds it taken
//!   (`bpf_prog_inc_misses_counter`); a preempted run keeps it taken until it ends.
//! - BTF tracepoint programs run from `__bpf_trace_run` (kernel/trace/bpf_trace.c), called by
//!   the tracepoint with preemption disabled (`__DO_TRACE`; `cant_sleep()` checks it). Recent
//!   kernels also guard them with `prog->active`, which still keeps one program from running
//!   twice at once on a CPU should PREEMPT_RT tracepoints disable only migration (as proposed
//!   with SRCU-protected tracepoints). Plain tracepoint programs run from `trace_call_bpf`, under
//!   `perf_trace_*` and `perf_syscall_enter`/`perf_syscall_exit`, which disable preemption (the
//!   syscall ones do so themselves since those tracepoints may fault), and its per-CPU
//!   `bpf_prog_active` refuses to start any kprobe or tracepoint program while one runs there.
//! - No hook that uses a scratch slot fires in interrupt context: exec and mprotect happen in
//!   the task that asked for them, and the traced mprotect functions take the mmap lock, which
//!   sleeps. So no program on an interrupt can land in a slot a task was using.
//!
//! Hence the rule: **each program that builds in a scratch map has a slot of its own**, so two
//! programs, each preempted halfway, never write one record. (The memory kind attaches an fentry
//! and an fexit program together: with one slot between them, a task preempted in one could
//! resume to send a record the other had half overwritten.) The one kernel this leaves open is
//! 5.11, the only release where fentry is preemptible and `prog->active` did not exist yet.
use aya_ebpf::{
    bindings::BPF_RB_AVAIL_DATA,
    macros::map,
    maps::{HashMap, PerCpuArray, RingBuf},
};
use core::intrinsics::{AtomicOrdering::Relaxed, atomic_xadd};
use ksense_abi::{EXCLUDE_MAX, EventKind, LOST_SLOTS, TASK_COMM_LEN, Task, config::ProbeConfig};

/// Events to user space. Its size is set by the daemon at load time (`[limits] ring_buffer_bytes`).
#[map]
pub static EVENTS: RingBuf = RingBuf::with_byte_size(8 << 20, 0);

/// Per kind, events that did not fit in [`EVENTS`].
#[map]
pub static LOST: PerCpuArray<u64> = PerCpuArray::with_max_entries(LOST_SLOTS, 0);

/// Effective uids whose events are dropped here (filled by the daemon from `[filters]`); the
/// value holds the bits ([`EventKind::bit`]) of the kinds the rule drops.
#[map]
pub static EXCLUDE_UIDS: HashMap<u32, u8> = HashMap::with_max_entries(EXCLUDE_MAX, 0);

/// Exact comms whose events are dropped here; values as in [`EXCLUDE_UIDS`].
#[map]
pub static EXCLUDE_COMMS: HashMap<[u8; TASK_COMM_LEN], u8> = HashMap::with_max_entries(EXCLUDE_MAX, 0);

/// Whether an event of `kind` by `task` is dropped here: ksense's own, or excluded by a
/// kernel-side filter rule that applies to `kind`.
#[inline(always)]
pub fn excluded(task: &Task, kind: EventKind) -> bool {
    let own = config!(ignore_tgid);
    if own != 0 && task.tgid == own {
        return true;
    }
    let applies = |rule: Option<&u8>| rule.is_some_and(|kinds| kinds & kind.bit() != 0);
    // SAFETY: a looked-up value stays readable memory for the program's run (the kernel frees
    // map elements after an RCU grace period); if the daemon replaces a rule meanwhile, the byte
    // read is the old or the new one, both valid `u8`s.
    unsafe { applies(EXCLUDE_UIDS.get(&task.euid)) || applies(EXCLUDE_COMMS.get(&task.comm)) }
}

/// Set by the daemon before loading (read-only to the programs).
// `no_mangle`: the daemon finds the global by this name. No other symbol has it.
#[unsafe(no_mangle)]
// SAFETY: `ProbeConfig` is integers only, for which all zeros is a valid value.
pub static KSENSE_CONFIG: ProbeConfig = unsafe { core::mem::zeroed() };

/// Reads one field of [`KSENSE_CONFIG`]. Volatile, so the compiler does not fold in the zero
/// the object file holds: the real value is patched in at load time.
macro_rules! config {
    ($($field:tt)+) => {
        // SAFETY: an aligned read of an integer field of a static that lives as long as the
        // program; nothing writes it once the program is loaded (a frozen read-only map).
        unsafe { core::ptr::read_volatile(&raw const crate::maps::KSENSE_CONFIG.$($field)+) }
    };
}
pub(crate) use config;

/// Writes `bytes` as one record, counting it as lost for `kind` when the ring buffer is full.
/// Process events (fork, exec, exit) also count as lost when writing them would leave less
/// than the reserve free: a storm of them cannot crowd out module loads and memory changes.
#[inline(always)]
pub fn output(kind: EventKind, bytes: &[u8]) {
    let max = config!(process_data_max) as u64;
    let process = matches!(kind, EventKind::Fork | EventKind::Exec | EventKind::Exit);
    // A record takes its length plus the ring's 8-byte header, rounded up to 8 bytes.
    let footprint = (bytes.len() as u64 + 8 + 7) & !7;
    if process && max != 0 && EVENTS.query(BPF_RB_AVAIL_DATA as u64) + footprint > max {
        count_lost(kind);
        return;
    }
    if EVENTS.output::<[u8]>(bytes, 0).is_err() {
        count_lost(kind);
    }
}

/// Counts one event of `kind` that could not be written.
#[inline(always)]
pub fn count_lost(kind: EventKind) {
    if let Some(slot) = LOST.get_ptr_mut(kind as u32) {
        // Atomic (BPF_XADD) although the slot is this CPU's: two programs counting the same kind
        // can interleave on one CPU when one is preempted (see the module docs), and a plain
        // load-add-store would then lose a count.
        // SAFETY: `slot` points to this CPU's aligned u64 of `LOST`, valid for the program's run.
        unsafe { atomic_xadd::<u64, u64, { Relaxed }>(slot, 1) };
    }
}

/// Views a fixed-size record as bytes for [`output`].
#[inline(always)]
pub fn as_bytes<T>(record: &T) -> &[u8] {
    // SAFETY: the bytes of a live `&T`, borrowed for as long as it is. The records are
    // `#[repr(C)]` integers without padding (the ABI crate asserts their sizes), so every byte
    // is initialized.
    unsafe { core::slice::from_raw_parts((record as *const T).cast::<u8>(), size_of::<T>()) }
}
