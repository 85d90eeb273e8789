//! `process.memory.protect` hooks: fentry on `mprotect_fixup` (the seed hook: it sees each VMA
//! whose protection changes, with the old flags), else the `mprotect`/`pkey_mprotect` syscall
//! tracepoints, which find the VMA on entry (with `bpf_find_vma`, else by walking the VMA tree)
//! and take the result on exit.
//!
//! Both filter here, in the kernel: unless the daemon asked for every change, only changes that
//! matter leave (W^X, code made writable, exec added to anonymous/stack/heap memory). Repeats of
//! one (process, range, transition) within the coalescing window only bump a counter, so a JIT
//! or a toggling loop writes at most one record per window per range.
use aya_ebpf::{
    helpers::{
        bpf_probe_read_kernel_str_bytes,
        generated::{bpf_find_vma, bpf_get_current_task_btf, bpf_ktime_get_ns},
    },
    macros::{fentry, fexit, map, tracepoint},
    maps::{HashMap, LruHashMap, PerCpuArray},
    programs::{FEntryContext, FExitContext, TracePointContext},
};
use core::{
    ffi::c_void,
    intrinsics::{AtomicOrdering::Relaxed, atomic_xadd, atomic_xsub},
};
use ksense_abi::{
    EventKind, Hook,
    memory::{
        CoalesceKey, CoalesceState, MEMORY_OLD_KNOWN, MEMORY_RESULT_KNOWN, MEMORY_SPANS_VMAS, Memory, PROT_EXEC, PROT_WRITE,
        Region,
    },
};

use crate::{
    maps::{as_bytes, config, count_lost, excluded, output},
    task::{current, func_arg, fill_current, have_offsets, header, read, read_ptr},
};

/// Low `vm_flags`/`PROT_*` bits: read, write, exec.
const PROT_MASK: u32 = 7;

/// One entry per (process, range, transition) recently reported.
#[map]
static MEMORY_COALESCE: LruHashMap<CoalesceKey, CoalesceState> = LruHashMap::with_max_entries(8192, 0);

/// Records begun at syscall entry, by task id, finished at exit.
#[map]
static MPROTECT_INFLIGHT: HashMap<u32, Memory> = HashMap::with_max_entries(16384, 0);

/// Per-CPU room to build a record and its coalescing state (too large for the stack).
#[map]
static MEMORY_SCRATCH: PerCpuArray<CoalesceState> = PerCpuArray::with_max_entries(1, 0);

/// fentry `mprotect_fixup(..., vma, ..., start, end, newflags)`; argument positions come from
/// its BTF prototype (they moved in 6.1 and again in 6.3).
#[fentry(function = "mprotect_fixup")]
pub fn fentry_mprotect_fixup(ctx: FEntryContext) -> i32 {
    let vma = func_arg(&ctx, config!(memory.fixup_vma_arg)) as *const u8;
    let start = func_arg(&ctx, config!(memory.fixup_start_arg));
    let end = func_arg(&ctx, config!(memory.fixup_end_arg));
    let newflags = func_arg(&ctx, config!(memory.fixup_newflags_arg)) as u32;
    let Some(state) = scratch() else { return 0 };
    let rec = &mut state.record;
    if !begin(rec, start, end.saturating_sub(start), newflags) {
        return 0;
    }
    let vm = Vma {
        start: read(vma, config!(memory.vma_start)),
        end: read(vma, config!(memory.vma_end)),
        flags: read(vma, config!(memory.vma_flags)),
        file: read_ptr(vma, config!(memory.vma_file)),
    };
    describe(rec, &vm);
    finish(Hook::FentryMprotectFixup, state);
    0
}

/// fexit `do_mprotect_pkey(start, len, prot, pkey)`, companion of the fentry hook: a call that
/// fails before reaching `mprotect_fixup` (an unmapped address, say) is reported here, with its
/// errno, when every change is reported. Successful calls were seen per VMA by the fentry.
#[fexit(function = "do_mprotect_pkey")]
pub fn fexit_do_mprotect_pkey(ctx: FExitContext) -> i32 {
    if config!(memory_report_all) == 0 {
        return 0;
    }
    let ret = func_arg(&ctx, config!(memory.pkey_ret_arg)) as i32;
    if ret >= 0 {
        return 0;
    }
    let start = func_arg(&ctx, config!(memory.pkey_start_arg));
    let len = func_arg(&ctx, config!(memory.pkey_len_arg));
    let prot = func_arg(&ctx, config!(memory.pkey_prot_arg)) as u32;
    let Some(state) = scratch() else { return 0 };
    if !begin(&mut state.record, start, len, prot) {
        return 0;
    }
    state.record.result = ret;
    state.record.flags |= MEMORY_RESULT_KNOWN;
    finish(Hook::FentryMprotectFixup, state);
    0
}

/// `syscalls:sys_enter_mprotect` / `sys_enter_pkey_mprotect` (start, len, prot at the same
/// record offsets): note the request and the VMA as it is before the change, found with
/// `bpf_find_vma` (5.17+).
#[tracepoint]
pub fn tracepoint_sys_enter_mprotect(ctx: TracePointContext) -> i32 {
    enter_mprotect(&ctx, |start| {
        let mut vm = Vma { start: 0, end: 0, flags: 0, file: core::ptr::null() };
        let found = unsafe {
            bpf_find_vma(
                bpf_get_current_task_btf(),
                start,
                find_vma_callback as *mut c_void,
                (&raw mut vm).cast(),
                0,
            )
        };
        (found == 0).then_some(vm)
    })
}

/// The same on kernels without `bpf_find_vma` (before 5.17), whose VMAs are also in a red-black
/// tree (before 6.1): the VMA is found by walking `mm->mm_rb` as the kernel's `find_vma` does.
#[tracepoint]
pub fn tracepoint_sys_enter_mprotect_vma_tree(ctx: TracePointContext) -> i32 {
    enter_mprotect(&ctx, vma_in_tree)
}

/// At most this many tree levels are walked: a red-black tree of n nodes is at most
/// 2 log2(n + 1) deep, so 32 covers 65535 VMAs (the default `vm.max_map_count`).
const VMA_TREE_DEPTH: u32 = 32;

/// The current task's VMA holding `address`, from `mm->mm_rb`.
#[inline(always)]
fn vma_in_tree(address: u64) -> Option<Vma> {
    let mm = read_ptr(current(), config!(task.mm));
    let mut node = read_ptr(mm, config!(memory.mm_rb));
    let mut below: *const u8 = core::ptr::null();
    for _ in 0..VMA_TREE_DEPTH {
        if node.is_null() {
            break;
        }
        let vma = node.wrapping_sub(config!(memory.vma_rb) as usize);
        if read::<u64>(vma, config!(memory.vma_end)) > address {
            below = vma;
            if read::<u64>(vma, config!(memory.vma_start)) <= address {
                break;
            }
            node = read_ptr(node, config!(memory.rb_left));
        } else {
            node = read_ptr(node, config!(memory.rb_right));
        }
    }
    let vm = Vma {
        start: read(below, config!(memory.vma_start)),
        end: read(below, config!(memory.vma_end)),
        flags: read(below, config!(memory.vma_flags)),
        file: read_ptr(below, config!(memory.vma_file)),
    };
    (!below.is_null() && vm.start <= address).then_some(vm)
}

/// Both enter programs: `find` looks up the VMA holding an address.
#[inline(always)]
fn enter_mprotect(ctx: &TracePointContext, find: impl FnOnce(u64) -> Option<Vma>) -> i32 {
    let (start_at, len_at, prot_at) = (config!(memory.tp_start), config!(memory.tp_len), config!(memory.tp_prot));
    let start = unsafe { ctx.read_at::<u64>(start_at as usize) }.unwrap_or(0);
    let len = unsafe { ctx.read_at::<u64>(len_at as usize) }.unwrap_or(0);
    let prot = unsafe { ctx.read_at::<u64>(prot_at as usize) }.unwrap_or(0) as u32;
    let found = find(start);
    // A repeat within the coalescing window (a JIT, a toggling loop) is counted from what the
    // call and the VMA say, before anything else is read: only a change that was reported,
    // so one the filter wants from a process not excluded, has an entry to count into.
    if let Some(vm) = &found {
        let tgid = (aya_ebpf::helpers::bpf_get_current_pid_tgid() >> 32) as u32;
        let old_prot = vm.flags as u32 & PROT_MASK;
        if counted_as_repeat(&key(tgid, old_prot, prot & PROT_MASK, start, len)) {
            return 0;
        }
    }
    let Some(state) = scratch() else { return 0 };
    let rec = &mut state.record;
    if !begin(rec, start, len, prot) {
        return 0;
    }
    if let Some(vm) = &found {
        describe(rec, vm);
        if start.saturating_add(len) > vm.end {
            // The kernel changes every VMA in the range, and the others may be anonymous or
            // writable: what the first one says must not decide that the change is harmless.
            rec.flags = (rec.flags & !MEMORY_OLD_KNOWN) | MEMORY_SPANS_VMAS;
            rec.region = Region::Unknown as u32;
        }
    }
    // Decided here, not at exit, whenever the result does not matter: a change the filter
    // drops costs no in-flight entry and leaves the exit program a failed lookup.
    if !wanted(rec) {
        return 0;
    }
    let tid = rec.task.tid;
    // Full (16,384 threads inside mprotect at once): the change cannot be followed to its
    // result, so it is counted as lost rather than dropped unseen.
    if MPROTECT_INFLIGHT.insert(&tid, &*rec, 0).is_err() {
        count_lost(EventKind::MemoryProtect);
    }
    0
}

/// `syscalls:sys_exit_mprotect` / `sys_exit_pkey_mprotect`: add the result and report.
#[tracepoint]
pub fn tracepoint_sys_exit_mprotect(ctx: TracePointContext) -> i32 {
    let ret_at = config!(memory.tp_ret);
    let ret = unsafe { ctx.read_at::<i64>(ret_at as usize) }.unwrap_or(0);
    let tid = aya_ebpf::helpers::bpf_get_current_pid_tgid() as u32;
    let Some(begun) = MPROTECT_INFLIGHT.get_ptr(&tid) else { return 0 };
    let Some(state) = scratch() else { return 0 };
    state.record = unsafe { *begun };
    let _ = MPROTECT_INFLIGHT.remove(&tid);
    state.record.result = ret as i32;
    state.record.flags |= MEMORY_RESULT_KNOWN;
    finish(Hook::TracepointMprotect, state);
    0
}

/// What the VMA lookups hand back.
#[repr(C)]
struct Vma {
    start: u64,
    end: u64,
    flags: u64,
    file: *const u8,
}

/// Called by `bpf_find_vma` with the VMA holding the address; copies what we need.
#[inline(never)]
extern "C" fn find_vma_callback(_task: *mut c_void, vma: *mut c_void, out: *mut c_void) -> i64 {
    let vma = vma as *const u8;
    let out = unsafe { &mut *(out as *mut Vma) };
    out.start = read(vma, config!(memory.vma_start));
    out.end = read(vma, config!(memory.vma_end));
    out.flags = read(vma, config!(memory.vma_flags));
    out.file = read_ptr(vma, config!(memory.vma_file));
    0
}

#[inline(always)]
fn scratch() -> Option<&'static mut CoalesceState> {
    if !have_offsets() {
        return None;
    }
    match MEMORY_SCRATCH.get_ptr_mut(0) {
        // SAFETY: a per-CPU map value, used by one program at a time on this CPU.
        Some(p) => Some(unsafe { &mut *p }),
        None => {
            count_lost(EventKind::MemoryProtect);
            None
        }
    }
}

/// Starts a record for the current task; false when a filter excludes the task.
#[inline(always)]
fn begin(rec: &mut Memory, start: u64, len: u64, new_prot: u32) -> bool {
    rec.task = Default::default();
    fill_current(&mut rec.task);
    if excluded(&rec.task, EventKind::MemoryProtect) {
        return false;
    }
    rec.start = start;
    rec.len = len;
    rec.count = 1;
    rec.old_prot = 0;
    rec.new_prot = new_prot & PROT_MASK;
    rec.region = Region::Unknown as u32;
    rec.result = 0;
    rec.flags = 0;
    rec.file_len = 0;
    rec.file[0] = 0;
    true
}

/// Fills the old protection, the region and the backing file's name from the VMA.
#[inline(always)]
fn describe(rec: &mut Memory, vma: &Vma) {
    rec.old_prot = vma.flags as u32 & PROT_MASK;
    rec.flags |= MEMORY_OLD_KNOWN;
    let mm = read_ptr(current(), config!(task.mm));
    let start_code: u64 = read(mm, config!(mm.start_code));
    let end_code: u64 = read(mm, config!(mm.end_code));
    let exec = (rec.old_prot | rec.new_prot) & PROT_EXEC != 0;
    let region = if rec.start < end_code && rec.start + rec.len > start_code {
        Region::MainCode
    } else if !vma.file.is_null() {
        let exe: *const u8 = read_ptr(mm, config!(memory.mm_exe_file));
        match (exec, vma.file == exe) {
            (true, true) => Region::MainCode,
            (true, false) => Region::LibraryCode,
            (false, _) => Region::File,
        }
    } else {
        let stack: u64 = read(mm, config!(memory.mm_start_stack));
        let (brk_start, brk): (u64, u64) = (read(mm, config!(memory.mm_start_brk)), read(mm, config!(memory.mm_brk)));
        if vma.start <= stack && stack < vma.end {
            Region::Stack
        } else if vma.start < brk && vma.end > brk_start {
            Region::Heap
        } else {
            Region::Anonymous
        }
    };
    rec.region = region as u32;
    if !vma.file.is_null() {
        let dentry = read_ptr(vma.file, config!(memory.file_dentry));
        let name = read_ptr(dentry, config!(memory.dentry_name));
        if let Ok(bytes) = unsafe { bpf_probe_read_kernel_str_bytes(name, &mut rec.file) } {
            rec.file_len = bytes.len() as u32;
        }
    }
}

/// Whether the change is one the default filter reports.
#[inline(always)]
fn matters(rec: &Memory) -> bool {
    let (old, new) = (rec.old_prot, rec.new_prot);
    let old_known = rec.flags & MEMORY_OLD_KNOWN != 0;
    let writable_and_exec = new & PROT_WRITE != 0 && new & PROT_EXEC != 0;
    let adds_exec = new & PROT_EXEC != 0 && (!old_known || old & PROT_EXEC == 0);
    let adds_write_to_code = old_known && old & PROT_EXEC != 0 && old & PROT_WRITE == 0 && new & PROT_WRITE != 0;
    let exec_after_write = adds_exec && old_known && old & PROT_WRITE != 0;
    let data_region = matches!(
        Region::from_u32(rec.region),
        Region::Anonymous | Region::Stack | Region::Heap | Region::Unknown
    );
    // Over several VMAs, code may be among them: making the range writable may make code so.
    let spans_write = rec.flags & MEMORY_SPANS_VMAS != 0 && new & PROT_WRITE != 0;
    writable_and_exec || adds_write_to_code || exec_after_write || (adds_exec && data_region) || spans_write
}

/// Whether the configured filter reports `rec`.
#[inline(always)]
fn wanted(rec: &Memory) -> bool {
    config!(memory_report_all) != 0 || matters(rec)
}

/// The coalescing entry of `rec`'s (process, range, transition).
#[inline(always)]
fn coalesce_key(rec: &Memory) -> CoalesceKey {
    key(rec.task.tgid, rec.old_prot, rec.new_prot, rec.start, rec.len)
}

/// The coalescing key of a change of `start..start + len` in process `tgid` from `old_prot` to
/// `new_prot` (both already masked to rwx): the one layout the entry and exit paths share.
#[inline(always)]
fn key(tgid: u32, old_prot: u32, new_prot: u32, start: u64, len: u64) -> CoalesceKey {
    CoalesceKey { tgid, transition: old_prot | new_prot << 8, start, len }
}

/// Counts a change as a repeat when its (process, range, transition) `key` was reported within
/// the coalescing window; true when it was (nothing is to be written).
#[inline(always)]
fn counted_as_repeat(key: &CoalesceKey) -> bool {
    let window = config!(memory_coalesce_ns);
    if window == 0 {
        return false;
    }
    let Some(known) = MEMORY_COALESCE.get_ptr_mut(key) else {
        return false;
    };
    let known = unsafe { &mut *known };
    let now = unsafe { bpf_ktime_get_ns() };
    known.seen_ns = now;
    if now.wrapping_sub(known.emitted_ns) >= window {
        return false;
    }
    // Atomic (BPF_XADD): other CPUs may count repeats of the same key at the same time.
    unsafe { atomic_xadd::<u64, u64, { Relaxed }>(&raw mut known.pending, 1) };
    true
}

/// Filters, coalesces and writes the record in `state`.
#[inline(always)]
fn finish(hook: Hook, state: &mut CoalesceState) {
    if !wanted(&state.record) || counted_as_repeat(&coalesce_key(&state.record)) {
        return;
    }
    state.record.header = header(hook, size_of::<Memory>());
    if config!(memory_coalesce_ns) == 0 {
        output(EventKind::MemoryProtect, as_bytes(&state.record));
        return;
    }
    let key = coalesce_key(&state.record);
    let now = unsafe { bpf_ktime_get_ns() };
    if let Some(known) = MEMORY_COALESCE.get_ptr_mut(&key) {
        let known = unsafe { &mut *known };
        // The window is over: this record also stands for the repeats counted in it.
        let repeats = known.pending;
        unsafe { atomic_xsub::<u64, u64, { Relaxed }>(&raw mut known.pending, repeats) };
        known.emitted_ns = now;
        state.record.count = repeats + 1;
        output(EventKind::MemoryProtect, as_bytes(&state.record));
        return;
    }
    state.pending = 0;
    state.emitted_ns = now;
    state.seen_ns = now;
    state.record.count = 1;
    let _ = MEMORY_COALESCE.insert(&key, &*state, 0);
    output(EventKind::MemoryProtect, as_bytes(&state.record));
}
