//! The maps and the configuration global shared by every hook.
use aya_ebpf::{
    bindings::BPF_RB_AVAIL_DATA,
    macros::map,
    maps::{HashMap, PerCpuArray, RingBuf},
};
use ksense_abi::{EXCLUDE_MAX, EventKind, LOST_SLOTS, TASK_COMM_LEN, Task, config::ProbeConfig, exec::Exec};

/// Events to user space. Its size is set by the daemon at load time (`[limits] ring_buffer_bytes`).
#[map]
pub static EVENTS: RingBuf = RingBuf::with_byte_size(8 << 20, 0);

/// Per kind, events that did not fit in [`EVENTS`].
#[map]
pub static LOST: PerCpuArray<u64> = PerCpuArray::with_max_entries(LOST_SLOTS, 0);

/// Per-CPU room to build an exec record, too large for the 512-byte BPF stack.
#[map]
pub static EXEC_SCRATCH: PerCpuArray<Exec> = PerCpuArray::with_max_entries(1, 0);

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
    unsafe { applies(EXCLUDE_UIDS.get(&task.euid)) || applies(EXCLUDE_COMMS.get(&task.comm)) }
}

/// Set by the daemon before loading (read-only to the programs).
#[unsafe(no_mangle)]
pub static KSENSE_CONFIG: ProbeConfig = unsafe { core::mem::zeroed() };

/// Reads one field of [`KSENSE_CONFIG`]. Volatile, so the compiler does not fold in the zero
/// the object file holds: the real value is patched in at load time.
macro_rules! config {
    ($($field:tt)+) => {
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
        // Per-CPU slot: no other writer can race this increment.
        unsafe { *slot += 1 };
    }
}

/// Views a fixed-size record as bytes for [`output`].
#[inline(always)]
pub fn as_bytes<T>(record: &T) -> &[u8] {
    unsafe { core::slice::from_raw_parts((record as *const T).cast::<u8>(), size_of::<T>()) }
}
