//! `process.memory.protect` hooks: fentry on `mprotect_fixup` (the seed hook: it sees each VMA
//! whose protection changes, with the old flags), else the `mprotect`/`pkey_mprotect` syscall
//! tracepoints, which find the VMA on entry (with `bpf_find_vma`, else by walking the VMA tree)
//! and take the result on exit. Each also sees the mappings `mmap` creates executable: fexit on
//! `mmap_region` (its arguments and the new address at once), else the `mmap` syscall
//! tracepoints (the request on entry, the address and its VMA on exit).
//!
//! Both filter here, in the kernel: unless the daemon asked for every change, only changes that
//! matter leave (W^X, code made writable, exec added to anonymous/stack/heap memory); of the
//! mappings, only executable ones that are anonymous or writable, decided from the request
//! alone before anything is read or copied (every shared library is a read-only executable file
//! mapping). Repeats of one (process, range, transition, operation) within the coalescing window
//! only bump a counter, so a JIT or a toggling loop writes at most one record per window per
//! range.
use aya_ebpf::{
    helpers::{
        bpf_probe_read_kernel_str_bytes,
        generated::{bpf_find_vma, bpf_get_current_task_btf, bpf_ktime_get_ns},
    },
    macros::{fentry, fexit, map, tracepoint},
    maps::{HashMap, PerCpuArray},
    programs::{FEntryContext, FExitContext, TracePointContext},
};
use core::{
    ffi::c_void,
    intrinsics::{AtomicOrdering::Relaxed, atomic_xadd, atomic_xsub},
};
use ksense_abi::{
    EventKind, Hook,
    memory::{
        CoalesceKey, CoalesceState, MAP_ANONYMOUS, MEMORY_MMAP, MEMORY_OLD_KNOWN, MEMORY_RESULT_KNOWN, MEMORY_SPANS_VMAS,
        Memory, PROT_EXEC, PROT_WRITE, Region,
    },
};

use crate::{
    maps::{as_bytes, config, count_lost, excluded, output},
    task::{current, fill_current_with_image, func_arg, have_offsets, header, read, read_ptr},
};

/// Low `vm_flags`/`PROT_*` bits: read, write, exec.
const PROT_MASK: u32 = 7;

/// One entry per (process, range, transition) recently reported. A plain hash, not an LRU one:
/// an LRU hash would push out, unseen, an entry holding repeats not yet reported. Here a full
/// map only stops coalescing (a change with no entry is written as its own record), and user
/// space removes each entry once idle for a window.
#[map]
static MEMORY_COALESCE: HashMap<CoalesceKey, CoalesceState> = HashMap::with_max_entries(8192, 0);

/// Records begun at syscall entry (`mprotect` or `mmap`: a task is in one syscall at a time),
/// by task id, finished at exit.
#[map]
static SYSCALL_INFLIGHT: HashMap<u32, Memory> = HashMap::with_max_entries(16384, 0);

/// Per-CPU room to build a record and its coalescing state (too large for the stack): one slot
/// per [`Scratch`] user, since the fentry and fexit programs run together and either can be
/// preempted halfway (see "Scratch slots and preemption" in `maps`).
#[map]
static MEMORY_SCRATCH: PerCpuArray<CoalesceState> = PerCpuArray::with_max_entries(Scratch::SLOTS, 0);

/// The program building a record, which owns its slot of [`MEMORY_SCRATCH`]. The two syscall
/// enter programs share one: the daemon attaches one of them, never both.
#[derive(Clone, Copy)]
enum Scratch {
    /// `fentry_mprotect_fixup`.
    MprotectFixup,
    /// `fexit_do_mprotect_pkey`.
    DoMprotectPkey,
    /// `tracepoint_sys_enter_mprotect` or `tracepoint_sys_enter_mprotect_vma_tree`.
    SysEnter,
    /// `tracepoint_sys_exit_mprotect`.
    SysExit,
    /// `fexit_mmap_region`.
    MmapRegion,
    /// `tracepoint_sys_enter_mmap`.
    MmapEnter,
    /// `tracepoint_sys_exit_mmap` or `tracepoint_sys_exit_mmap_vma_tree`.
    MmapExit,
}

impl Scratch {
    /// Slots in [`MEMORY_SCRATCH`]: one per variant.
    const SLOTS: u32 = Scratch::MmapExit as u32 + 1;
}

/// fentry `mprotect_fixup(..., vma, ..., start, end, newflags)`; argument positions come from
/// its BTF prototype (they moved in 6.1 and again in 6.3).
#[fentry(function = "mprotect_fixup")]
pub fn fentry_mprotect_fixup(ctx: FEntryContext) -> i32 {
    let vma = func_arg(&ctx, config!(memory.fixup_vma_arg)) as *const u8;
    let start = func_arg(&ctx, config!(memory.fixup_start_arg));
    let end = func_arg(&ctx, config!(memory.fixup_end_arg));
    let newflags = func_arg(&ctx, config!(memory.fixup_newflags_arg)) as u32;
    let Some(state) = scratch(Scratch::MprotectFixup) else { return 0 };
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
    describe(rec, &vm, OwnFile::Inode);
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
    let Some(state) = scratch(Scratch::DoMprotectPkey) else { return 0 };
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
    enter_mprotect(&ctx, vma_found, OwnFile::Inode)
}

/// The current task's VMA holding `address`, with `bpf_find_vma` (5.17+).
#[inline(always)]
fn vma_found(address: u64) -> Option<Vma> {
    let mut vm = Vma { start: 0, end: 0, flags: 0, file: core::ptr::null() };
    // SAFETY: the task is the current one, valid for the run; the callback has the prototype
    // the helper calls (the verifier checks it) and gets `vm`, which outlives the call; no
    // flags.
    let found = unsafe {
        bpf_find_vma(bpf_get_current_task_btf(), address, find_vma_callback as *mut c_void, (&raw mut vm).cast(), 0)
    };
    (found == 0).then_some(vm)
}

/// The same on kernels without `bpf_find_vma` (before 5.17), whose VMAs are also in a red-black
/// tree (before 6.1): the VMA is found by walking `mm->mm_rb` as the kernel's `find_vma` does.
#[tracepoint]
pub fn tracepoint_sys_enter_mprotect_vma_tree(ctx: TracePointContext) -> i32 {
    enter_mprotect(&ctx, vma_in_tree, OwnFile::OpenFile)
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
fn enter_mprotect(ctx: &TracePointContext, find: impl FnOnce(u64) -> Option<Vma>, own: OwnFile) -> i32 {
    let (start_at, len_at, prot_at) = (config!(memory.tp_start), config!(memory.tp_len), config!(memory.tp_prot));
    // SAFETY: `bpf_probe_read_kernel` from the tracepoint record; a bad offset fails with an
    // error instead of faulting.
    let start = unsafe { ctx.read_at::<u64>(start_at as usize) }.unwrap_or(0);
    // SAFETY: as above.
    let len = unsafe { ctx.read_at::<u64>(len_at as usize) }.unwrap_or(0);
    // SAFETY: as above.
    let prot = unsafe { ctx.read_at::<u64>(prot_at as usize) }.unwrap_or(0) as u32;
    let found = find(start);
    // A repeat within the coalescing window (a JIT, a toggling loop) is counted from what the
    // call and the VMA say, before anything else is read: only a change that was reported,
    // so one the filter wants from a process not excluded, has an entry to count into.
    if let Some(vm) = &found {
        let tgid = (aya_ebpf::helpers::bpf_get_current_pid_tgid() >> 32) as u32;
        let old_prot = vm.flags as u32 & PROT_MASK;
        if counted_as_repeat(&key(tgid, old_prot, prot & PROT_MASK, 0, start, len)) {
            return 0;
        }
    }
    let Some(state) = scratch(Scratch::SysEnter) else { return 0 };
    let rec = &mut state.record;
    if !begin(rec, start, len, prot) {
        return 0;
    }
    if let Some(vm) = &found {
        describe(rec, vm, own);
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
    if SYSCALL_INFLIGHT.insert(&tid, &*rec, 0).is_err() {
        count_lost(EventKind::MemoryProtect);
    }
    0
}

/// `syscalls:sys_exit_mprotect` / `sys_exit_pkey_mprotect`: add the result and report.
#[tracepoint]
pub fn tracepoint_sys_exit_mprotect(ctx: TracePointContext) -> i32 {
    let ret_at = config!(memory.tp_ret);
    // SAFETY: `bpf_probe_read_kernel` from the tracepoint record; a bad offset fails with an
    // error instead of faulting.
    let ret = unsafe { ctx.read_at::<i64>(ret_at as usize) }.unwrap_or(0);
    let Some(state) = take_inflight(Scratch::SysExit) else { return 0 };
    if state.record.flags & MEMORY_MMAP != 0 {
        // Left by an `mmap` whose exit no program saw (its exit program was attached after the
        // call had begun).
        return 0;
    }
    state.record.result = ret as i32;
    state.record.flags |= MEMORY_RESULT_KNOWN;
    finish(Hook::TracepointMprotect, state);
    0
}

/// The current task's record begun at syscall entry, moved into this CPU's slot for `user`.
#[inline(always)]
fn take_inflight(user: Scratch) -> Option<&'static mut CoalesceState> {
    let tid = aya_ebpf::helpers::bpf_get_current_pid_tgid() as u32;
    let begun = SYSCALL_INFLIGHT.get_ptr(&tid)?;
    let state = scratch(user)?;
    // SAFETY: a value of the in-flight map, valid for the program's run; only this task's
    // programs write or remove the entry of its task id, and it is copied before removal.
    state.record = unsafe { *begun };
    let _ = SYSCALL_INFLIGHT.remove(&tid);
    Some(state)
}

/// Whether a mapping requested with protection `prot` (`PROT_*` or `VM_*` bits) is reported:
/// executable, and anonymous or writable. A read-only executable file mapping (every shared
/// library and executable loaded) is not.
#[inline(always)]
fn mapping_reported(prot: u32, anonymous: bool) -> bool {
    prot & PROT_EXEC != 0 && (anonymous || prot & PROT_WRITE != 0)
}

/// Values above this, as an unsigned return value, are -errno (the kernel's `IS_ERR_VALUE`).
const MAX_ERRNO_VALUE: u64 = -4096i64 as u64;

/// fexit `mmap_region(file, addr, len, vm_flags, ...)`, which every `mmap` (and `shmat`) that
/// gets as far as making a mapping calls; argument positions come from its BTF prototype. Its
/// return value is the new mapping's address, or -errno.
#[fexit(function = "mmap_region")]
pub fn fexit_mmap_region(ctx: FExitContext) -> i32 {
    let file = func_arg(&ctx, config!(memory.mmap_file_arg)) as *const u8;
    let vm_flags = func_arg(&ctx, config!(memory.mmap_vm_flags_arg)) as u32;
    if !mapping_reported(vm_flags, file.is_null()) {
        return 0;
    }
    let addr = func_arg(&ctx, config!(memory.mmap_addr_arg));
    let len = func_arg(&ctx, config!(memory.mmap_len_arg));
    let ret = func_arg(&ctx, config!(memory.mmap_ret_arg));
    let Some(state) = scratch(Scratch::MmapRegion) else { return 0 };
    if !begin_mapping(&mut state.record, addr, len, vm_flags, file.is_null()) {
        return 0;
    }
    let made = Vma { start: ret, end: ret.wrapping_add(len), flags: u64::from(vm_flags), file };
    mapped(&mut state.record, ret, Some(made), OwnFile::Inode);
    finish(Hook::FentryMprotectFixup, state);
    0
}

/// `syscalls:sys_enter_mmap`: note an executable mapping asked for, when it is one to report.
#[tracepoint]
pub fn tracepoint_sys_enter_mmap(ctx: TracePointContext) -> i32 {
    let (prot_at, flags_at) = (config!(memory.tp_mmap_prot), config!(memory.tp_mmap_flags));
    // SAFETY: `bpf_probe_read_kernel` from the tracepoint record; a bad offset fails with an
    // error instead of faulting.
    let prot = unsafe { ctx.read_at::<u64>(prot_at as usize) }.unwrap_or(0) as u32;
    // SAFETY: as above.
    let flags = unsafe { ctx.read_at::<u64>(flags_at as usize) }.unwrap_or(0) as u32;
    let anonymous = flags & MAP_ANONYMOUS != 0;
    if !mapping_reported(prot, anonymous) {
        return 0;
    }
    let (addr_at, len_at) = (config!(memory.tp_mmap_addr), config!(memory.tp_mmap_len));
    // SAFETY: as above.
    let addr = unsafe { ctx.read_at::<u64>(addr_at as usize) }.unwrap_or(0);
    // SAFETY: as above.
    let len = unsafe { ctx.read_at::<u64>(len_at as usize) }.unwrap_or(0);
    let Some(state) = scratch(Scratch::MmapEnter) else { return 0 };
    let rec = &mut state.record;
    if !begin_mapping(rec, addr, len, prot, anonymous) {
        return 0;
    }
    // Full: counted as lost, as for mprotect.
    if SYSCALL_INFLIGHT.insert(&rec.task.tid, &*rec, 0).is_err() {
        count_lost(EventKind::MemoryProtect);
    }
    0
}

/// `syscalls:sys_exit_mmap`: the mapping's address and its VMA (with `bpf_find_vma`), and
/// report.
#[tracepoint]
pub fn tracepoint_sys_exit_mmap(ctx: TracePointContext) -> i32 {
    exit_mmap(&ctx, vma_found, OwnFile::Inode)
}

/// The same on kernels without `bpf_find_vma` (before 5.17): the VMA from the VMA tree.
#[tracepoint]
pub fn tracepoint_sys_exit_mmap_vma_tree(ctx: TracePointContext) -> i32 {
    exit_mmap(&ctx, vma_in_tree, OwnFile::OpenFile)
}

/// Both exit programs: `find` looks up the VMA holding an address.
#[inline(always)]
fn exit_mmap(ctx: &TracePointContext, find: impl FnOnce(u64) -> Option<Vma>, own: OwnFile) -> i32 {
    let ret_at = config!(memory.tp_mmap_ret);
    // SAFETY: `bpf_probe_read_kernel` from the tracepoint record; a bad offset fails with an
    // error instead of faulting.
    let ret = unsafe { ctx.read_at::<u64>(ret_at as usize) }.unwrap_or(0);
    let Some(state) = take_inflight(Scratch::MmapExit) else { return 0 };
    if state.record.flags & MEMORY_MMAP == 0 {
        // Left by an `mprotect` whose exit no program saw.
        return 0;
    }
    let mut made = if ret < MAX_ERRNO_VALUE { find(ret) } else { None };
    if let Some(vm) = &mut made
        && state.record.region == Region::Anonymous as u32
    {
        // A shared anonymous mapping is backed by a file the kernel makes (shmem's `dev/zero`):
        // it stays anonymous, as the fexit program, which sees the call's null file, says.
        vm.file = core::ptr::null();
    }
    mapped(&mut state.record, ret, made, own);
    finish(Hook::TracepointMprotect, state);
    0
}

/// Starts the record of a mapping of `len` bytes asked for at `addr` with protection `prot`;
/// false when a filter excludes the task.
#[inline(always)]
fn begin_mapping(rec: &mut Memory, addr: u64, len: u64, prot: u32, anonymous: bool) -> bool {
    if !begin(rec, addr, len, prot) {
        return false;
    }
    rec.flags = MEMORY_MMAP;
    if anonymous {
        rec.region = Region::Anonymous as u32;
    }
    true
}

/// Adds the outcome of a mapping: the result and, once made (`ret` is its address), where it
/// is and what it is, from `made`, its VMA.
#[inline(always)]
fn mapped(rec: &mut Memory, ret: u64, made: Option<Vma>, own: OwnFile) {
    rec.flags |= MEMORY_RESULT_KNOWN;
    if ret >= MAX_ERRNO_VALUE {
        rec.result = ret as i32;
        return;
    }
    rec.start = ret;
    if let Some(vm) = &made {
        locate(rec, vm, own);
    }
}

/// How a program tells a mapping of the process's own executable (`main_code`) from another
/// file's (`library_code`). Always a constant where it is passed: the compiler keeps one way.
#[derive(Clone, Copy)]
enum OwnFile {
    /// The same inode as `mm->exe_file`: also a mapping through a descriptor of its own, a
    /// `struct file` other than the one exec opened.
    Inode,
    /// The same open file as `mm->exe_file` only (the mappings exec made): in the VMA-tree
    /// programs of kernels before 5.17, which two more reads take past the 5.10 verifier's
    /// limit.
    OpenFile,
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
    // SAFETY: `out` is the context the enter program handed to `bpf_find_vma`: its stack `Vma`,
    // live and not otherwise referenced while the helper calls back (synchronously).
    let out = unsafe { &mut *(out as *mut Vma) };
    out.start = read(vma, config!(memory.vma_start));
    out.end = read(vma, config!(memory.vma_end));
    out.flags = read(vma, config!(memory.vma_flags));
    out.file = read_ptr(vma, config!(memory.vma_file));
    0
}

/// This CPU's slot of [`MEMORY_SCRATCH`] for `user`. The reference must not outlive the
/// program's run.
#[inline(always)]
fn scratch(user: Scratch) -> Option<&'static mut CoalesceState> {
    if !have_offsets() {
        return None;
    }
    match MEMORY_SCRATCH.get_ptr_mut(user as u32) {
        // SAFETY: this CPU's slot for `user`, valid for the program's run. No other run writes
        // it until this one ends: only `user` uses the slot, and the kernel neither runs one
        // program twice at once on a CPU nor moves a running one to another CPU (see `maps`).
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
    fill_current_with_image(&mut rec.task);
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
fn describe(rec: &mut Memory, vma: &Vma, own: OwnFile) {
    rec.old_prot = vma.flags as u32 & PROT_MASK;
    rec.flags |= MEMORY_OLD_KNOWN;
    locate(rec, vma, own);
}

/// Fills the region and the backing file's name of `rec`'s range, held by `vma`.
#[inline(always)]
fn locate(rec: &mut Memory, vma: &Vma, own: OwnFile) {
    let mm = read_ptr(current(), config!(task.mm));
    let start_code: u64 = read(mm, config!(mm.start_code));
    let end_code: u64 = read(mm, config!(mm.end_code));
    let exec = (rec.old_prot | rec.new_prot) & PROT_EXEC != 0;
    let region = if rec.start < end_code && rec.start + rec.len > start_code {
        Region::MainCode
    } else if !vma.file.is_null() {
        let exe = read_ptr(mm, config!(mm.exe_file));
        let own = match own {
            OwnFile::Inode => {
                let mapped = read_ptr(vma.file, config!(misc.file_inode));
                !mapped.is_null() && mapped == read_ptr(exe, config!(misc.file_inode))
            }
            OwnFile::OpenFile => vma.file == exe,
        };
        match (exec, own) {
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
        // SAFETY: fills `rec.file`, sized by the slice; a bad kernel address fails with an error
        // instead of faulting.
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

/// The coalescing entry of `rec`'s (process, range, transition, operation).
#[inline(always)]
fn coalesce_key(rec: &Memory) -> CoalesceKey {
    key(rec.task.tgid, rec.old_prot, rec.new_prot, rec.flags & MEMORY_MMAP, rec.start, rec.len)
}

/// The coalescing key of a change of `start..start + len` in process `tgid` from `old_prot` to
/// `new_prot` (both already masked to rwx) by the operation `mmap` (`MEMORY_MMAP`, or 0 for
/// mprotect): the one layout the entry and exit paths share.
#[inline(always)]
fn key(tgid: u32, old_prot: u32, new_prot: u32, mmap: u32, start: u64, len: u64) -> CoalesceKey {
    CoalesceKey { tgid, transition: old_prot | new_prot << 8 | mmap << 16, start, len }
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
    // SAFETY: a helper without preconditions.
    let now = unsafe { bpf_ktime_get_ns() };
    // SAFETY: `known` points to the entry's value, memory the program may read and write for
    // its whole run. Other CPUs and the daemon update the same value at the same time, so it is
    // accessed through the pointer, one aligned load or store per field, never through a
    // reference: the timestamps race harmlessly (a lost update only moves a window's edge) and
    // the count changes atomically. (If the entry is evicted and reused meanwhile, the update
    // lands in another key's entry: a miscount, never a fault.)
    let emitted_ns = unsafe {
        (&raw mut (*known).seen_ns).write_volatile(now);
        (&raw const (*known).emitted_ns).read_volatile()
    };
    if now.wrapping_sub(emitted_ns) >= window {
        return false;
    }
    // Atomic (BPF_XADD): other CPUs may count repeats of the same key at the same time.
    // SAFETY: as above.
    unsafe { atomic_xadd::<u64, u64, { Relaxed }>(&raw mut (*known).pending, 1) };
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
    // SAFETY: a helper without preconditions.
    let now = unsafe { bpf_ktime_get_ns() };
    if let Some(known) = MEMORY_COALESCE.get_ptr_mut(&key) {
        // The window is over: this record also stands for the repeats counted in it.
        // SAFETY: as in `counted_as_repeat`.
        let repeats = unsafe {
            let repeats = (&raw const (*known).pending).read_volatile();
            atomic_xsub::<u64, u64, { Relaxed }>(&raw mut (*known).pending, repeats);
            (&raw mut (*known).emitted_ns).write_volatile(now);
            repeats
        };
        state.record.count = repeats + 1;
        output(EventKind::MemoryProtect, as_bytes(&state.record));
        return;
    }
    state.pending = 0;
    state.emitted_ns = now;
    state.seen_ns = now;
    state.record.count = 1;
    // Full: no entry, so no repeat is counted into one; each is written as this one is.
    let _ = MEMORY_COALESCE.insert(&key, &*state, 0);
    output(EventKind::MemoryProtect, as_bytes(&state.record));
}
