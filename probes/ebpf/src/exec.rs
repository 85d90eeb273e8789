//! `process.exec` hooks: the `sched_process_exec` tracepoint, BTF-typed else plain (the seed had
//! no exec hook; there is no fentry choice because the tracepoint already fires at the one
//! point where the new image, its argv and the old task id are all known).
use core::ffi::c_void;

use aya_ebpf::{
    EbpfContext,
    helpers::generated::{bpf_probe_read_kernel_str, bpf_probe_read_user},
    macros::{btf_tracepoint, map, tracepoint},
    maps::PerCpuArray,
    programs::{BtfTracePointContext, TracePointContext},
};
use ksense_abi::{
    EventKind, Hook,
    exec::{
        ARGS_CAP, ENV_CAP, EXEC_ARGS_TRUNCATED, EXEC_ARGS_UNREADABLE, EXEC_CTIME_KNOWN, EXEC_ENV_TRUNCATED,
        EXEC_FILENAME_TRUNCATED, EXEC_TTY, EXEC_TTY_KNOWN, Exec, FILENAME_CAP,
    },
};

use crate::{
    maps::{config, count_lost, excluded, output},
    task::{code_range, current, exe_inode, file_id, fill_current, have_offsets, header, read, read_ptr},
};

/// Per-CPU room to build an exec record, too large for the 512-byte BPF stack. One slot: the
/// daemon attaches one of the two programs below, never both, and a tracepoint program cannot
/// be preempted or run twice at once on one CPU (see "Scratch slots and preemption" in `maps`).
#[map]
static EXEC_SCRATCH: PerCpuArray<Exec> = PerCpuArray::with_max_entries(1, 0);

/// BTF tracepoint `sched_process_exec(struct task_struct *p, pid_t old_pid,
/// struct linux_binprm *bprm)`.
#[btf_tracepoint(function = "sched_process_exec")]
pub fn tp_btf_sched_process_exec(ctx: BtfTracePointContext) -> i32 {
    let old_tid = ctx.arg::<u64>(1) as u32;
    let bprm: *const u8 = ctx.arg(2);
    let filename = read_ptr(bprm, config!(misc.binprm_filename));
    emit(Hook::TpBtfSchedProcessExec, old_tid, filename);
    0
}

/// Plain tracepoint `sched:sched_process_exec` (record fields: filename, pid, old_pid).
#[tracepoint]
pub fn tracepoint_sched_process_exec(ctx: TracePointContext) -> i32 {
    let (old_tid_at, loc_at) = (config!(tracepoint.exec_old_pid), config!(tracepoint.exec_filename));
    // SAFETY: `bpf_probe_read_kernel` from the tracepoint record; a bad offset fails with an
    // error instead of faulting.
    let old_tid = unsafe { ctx.read_at::<u32>(old_tid_at as usize) }.unwrap_or(0);
    // __data_loc: low 16 bits are the string's offset in the record, high 16 its length.
    // SAFETY: as above.
    let loc = unsafe { ctx.read_at::<u32>(loc_at as usize) }.unwrap_or(0);
    let filename = (ctx.as_ptr() as *const u8).wrapping_add((loc & 0xffff) as usize);
    emit(Hook::TracepointSchedProcessExec, old_tid, filename);
    0
}

#[inline(always)]
fn emit(hook: Hook, old_tid: u32, filename: *const u8) {
    let Some(ev) = EXEC_SCRATCH.get_ptr_mut(0) else {
        count_lost(EventKind::Exec);
        return;
    };
    // SAFETY: this CPU's slot, valid for the program's run, and no other run writes it until
    // this one ends: the only program using it cannot be preempted or re-entered on this CPU
    // (see `EXEC_SCRATCH`).
    let ev = unsafe { &mut *ev };
    ev.task = Default::default();
    fill_current(&mut ev.task);
    if excluded(&ev.task, EventKind::Exec) {
        return;
    }
    ev.old_tid = old_tid;
    ev.flags = 0;

    // SAFETY: writes at most FILENAME_CAP bytes, the start of `data`; reading the kernel
    // address `filename` fails with an error instead of faulting.
    let n = unsafe { bpf_probe_read_kernel_str(ev.data.as_mut_ptr().cast(), FILENAME_CAP as u32, filename.cast()) };
    // The mask changes nothing (n <= FILENAME_CAP) but shows the verifier that argv, written
    // right after the name, stays inside `data`.
    let filename_len = if n > 0 { (n as usize - 1) & (FILENAME_CAP - 1) } else { 0 };
    if filename_len == FILENAME_CAP - 1 {
        ev.flags |= EXEC_FILENAME_TRUNCATED;
    }
    ev.filename_len = filename_len as u32;

    let task = current();
    (ev.code_start, ev.code_end) = code_range(task);
    (ev.exe_ino, ev.exe_dev, ev.exe_nlink) = (0, 0, 0);
    (ev.exe_ctime_sec, ev.exe_ctime_nsec) = (0, 0);
    let mut args_len = 0usize;
    let mut env_len = 0usize;
    if have_offsets() {
        let mm = read_ptr(task, config!(task.mm));
        // The file the kernel executed (set by this exec), as user space can check it
        // against /proc/<pid>/exe: the execve string may name it through `..` or a symlink.
        // Its link count says whether it has a name at all: 0 for a memfd (created unlinked)
        // and for a file deleted before the exec, whatever path string named it.
        let inode = exe_inode(mm);
        if !inode.is_null() {
            (ev.exe_ino, ev.exe_dev) = file_id(inode);
            (ev.task.exe_ino, ev.task.exe_dev) = (ev.exe_ino, ev.exe_dev);
            ev.exe_nlink = read(inode, config!(misc.inode_nlink));
            // Its change time: user space hashes the file only if what it opens still has it
            // (a write since the exec moves it), and keys its cache of hashes on it.
            let ctime_sec_at = config!(misc.inode_ctime_sec);
            if ctime_sec_at != 0 {
                ev.exe_ctime_sec = read(inode, ctime_sec_at);
                ev.exe_ctime_nsec = u64::from(read::<u32>(inode, config!(misc.inode_ctime_nsec)));
                ev.flags |= EXEC_CTIME_KNOWN;
            }
        }
        let signal = read_ptr(task, config!(task.signal));
        if !signal.is_null() {
            ev.flags |= EXEC_TTY_KNOWN;
            if !read_ptr(signal, config!(misc.signal_tty)).is_null() {
                ev.flags |= EXEC_TTY;
            }
        }
        let (start, len, cut) = user_range(mm, config!(mm.arg_start), config!(mm.arg_end), ARGS_CAP);
        if cut {
            ev.flags |= EXEC_ARGS_TRUNCATED;
        }
        if len > 0 {
            // SAFETY: writes `len` bytes from `filename_len`: inside `data`, as filename_len <
            // FILENAME_CAP and len <= ARGS_CAP. The user address range is not trusted:
            // `bpf_probe_read_user` fails with an error on any unmapped page.
            let read = unsafe {
                let at = ev.data.as_mut_ptr().add(filename_len);
                bpf_probe_read_user(at.cast(), len as u32, start as *const c_void)
            };
            if read == 0 {
                args_len = len;
            } else {
                ev.flags |= EXEC_ARGS_UNREADABLE;
            }
        }
        // The environment the new image starts with, read here rather than from
        // /proc/<pid>/environ later: by then a short-lived process is gone, or has rewritten
        // its environment, or exec'd again. Only when the daemon reports some variable
        // (`env_end` is 0 otherwise); a read that fails leaves it out.
        let env_end_at = config!(mm.env_end);
        if env_end_at != 0 {
            let (start, len, cut) = user_range(mm, config!(mm.env_start), env_end_at, ENV_CAP);
            if cut {
                ev.flags |= EXEC_ENV_TRUNCATED;
            }
            if len > 0 {
                // SAFETY: writes `len` <= ENV_CAP bytes from `filename_len + args_len`, with
                // filename_len < FILENAME_CAP and args_len <= ARGS_CAP: inside `data`. The user
                // range is untrusted: a bad page fails the read.
                let read = unsafe {
                    bpf_probe_read_user(
                        ev.data.as_mut_ptr().add(filename_len + args_len).cast(),
                        len as u32,
                        start as *const c_void,
                    )
                };
                if read == 0 {
                    env_len = len;
                }
            }
        }
    }
    ev.args_len = args_len as u32;
    ev.env_len = env_len as u32;

    let size = Exec::fixed_size() + filename_len + args_len + env_len;
    ev.header = header(hook, size);
    // SAFETY: the first `size` bytes of `*ev`, all initialized (the fixed fields were written
    // above, `data` up to `filename_len + args_len + env_len` by the reads), and size <=
    // size_of::<Exec>() as filename_len < FILENAME_CAP, args_len <= ARGS_CAP, env_len <= ENV_CAP.
    let bytes = unsafe { core::slice::from_raw_parts((ev as *const Exec).cast::<u8>(), size) };
    output(EventKind::Exec, bytes);
}

/// Start and length of the user range `mm->[start_at]..mm->[end_at]` to copy, at most `cap`
/// bytes, and whether it was cut to `cap`.
#[inline(always)]
fn user_range(mm: *const u8, start_at: u32, end_at: u32, cap: usize) -> (u64, usize, bool) {
    let start: u64 = read(mm, start_at);
    let end: u64 = read(mm, end_at);
    let len = end.saturating_sub(start) as usize;
    if len > cap { (start, cap, true) } else { (start, len, false) }
}
