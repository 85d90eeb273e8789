//! The fuzz targets' checks (fuzz/src/lib.rs) on stable, under `cargo test`: every input that
//! ever broke a property (`fuzz/regressions/<target>/`) and the committed seed corpus
//! (`fuzz/corpus/<target>/`) are replayed, so a finding fixed once stays fixed without nightly
//! or cargo-fuzz. docs/FUZZING.md says how the fuzzers run.
//!
//! `cargo test -p ksense-e2e --test fuzz_regressions -- --ignored` rewrites the decoder's
//! hand-made seeds from the ABI structs (see [`write_decode_seeds`]).
use std::{
    mem::{offset_of, size_of},
    panic::{AssertUnwindSafe, catch_unwind},
    path::{Path, PathBuf},
};

use ksense_abi::{
    Header, Hook, PF_KTHREAD, TASK_COMM_LEN, Task,
    exec::{ARGS_CAP, EXEC_ARGS_TRUNCATED, EXEC_ARGS_UNREADABLE, EXEC_CTIME_KNOWN, EXEC_FILENAME_TRUNCATED, Exec, FILENAME_CAP},
    exit::Exit,
    fork::{CLONE_THREAD, Fork},
    memory::{MEMORY_FILE_CAP, MEMORY_OLD_KNOWN, MEMORY_RESULT_KNOWN, Memory, PROT_EXEC, PROT_READ, PROT_WRITE, Region},
    module::{MODULE_NAME_CAP, MODULE_SIZE_KNOWN, MODULE_TAINTS_KNOWN, ModuleLoad},
};

#[path = "../fuzz/src/lib.rs"]
mod checks;

/// A fuzz target's property check.
type Check = fn(&[u8]);

/// The fuzz targets and their checks.
const TARGETS: [(&str, Check); 2] = [("decode", checks::decode), ("config", checks::config)];

fn fuzz_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz")
}

/// Runs every file under `fuzz/<dir>/<target>/` through its target's check; returns how many ran.
/// Fails listing every file that broke a property, not just the first.
fn replay(dir: &str) -> usize {
    let mut failures = Vec::new();
    let mut ran = 0;
    for (target, check) in TARGETS {
        let folder = fuzz_dir().join(dir).join(target);
        let Ok(entries) = std::fs::read_dir(&folder) else { continue };
        let mut files: Vec<PathBuf> = entries.map(|e| e.expect("readable directory").path()).collect();
        files.sort();
        for file in files.into_iter().filter(|f| f.is_file() && f.extension().is_none_or(|e| e != "md")) {
            let bytes = std::fs::read(&file).unwrap_or_else(|e| panic!("{}: {e}", file.display()));
            ran += 1;
            if let Err(panic) = catch_unwind(AssertUnwindSafe(|| check(&bytes))) {
                let why = panic
                    .downcast_ref::<String>()
                    .map(String::as_str)
                    .or_else(|| panic.downcast_ref::<&str>().copied())
                    .unwrap_or("(no message)");
                failures.push(format!("{target} {}: {why}", file.display()));
            }
        }
    }
    assert!(failures.is_empty(), "{} input(s) broke a property:\n{}", failures.len(), failures.join("\n"));
    ran
}

#[test]
fn past_findings_stay_fixed() {
    replay("regressions");
}

#[test]
fn seed_corpus_passes() {
    assert!(replay("corpus") > 0, "no seed corpus under {}", fuzz_dir().join("corpus").display());
}

// ---- The decoder's seeds: records as the probes write them, then broken copies. ----

/// The bytes of an ABI struct (all of them are integers and byte arrays without padding).
fn bytes_of<T: Copy>(value: &T) -> Vec<u8> {
    // SAFETY: the ABI records are #[repr(C)] integers and byte arrays with no padding (their
    // sizes are asserted in probes/abi), so every byte is initialised.
    unsafe { std::slice::from_raw_parts((value as *const T).cast::<u8>(), size_of::<T>()) }.to_vec()
}

fn header(hook: Hook, size: usize) -> Header {
    Header::new(hook, size, 1, 5_123_456_789_012)
}

fn comm(name: &[u8]) -> [u8; TASK_COMM_LEN] {
    let mut comm = [0; TASK_COMM_LEN];
    comm[..name.len()].copy_from_slice(name);
    comm
}

fn task(pid: u32, ppid: u32, uid: u32, name: &[u8]) -> Task {
    Task {
        tid: pid,
        tgid: pid,
        ppid,
        uid,
        euid: uid,
        flags: 0x0040_0000, // PF_RANDOMIZE, as a user process has
        start_ns: 5_100_000_000_000,
        cgroup_id: 4_211,
        comm: comm(name),
        pgid: ppid.max(1),
        sid: 1,
        exe_ino: 1_310_733,
        exe_dev: (254 << 20) | 1,
    }
}

fn fork(hook: Hook, parent: Task, child: u32, flags: u64, start_ns: u64) -> Vec<u8> {
    let child_tgid = if flags & CLONE_THREAD != 0 { parent.tgid } else { child };
    bytes_of(&Fork {
        header: header(hook, size_of::<Fork>()),
        parent,
        child_tid: child,
        child_tgid,
        clone_flags: flags,
        child_start_ns: start_ns,
        code_start: 0x5581_2a40_0000,
        code_end: 0x5581_2a4f_3a51,
    })
}

fn exec(hook: Hook, task: Task, flags: u32, filename: &[u8], args: &[u8]) -> Vec<u8> {
    let mut bytes = vec![0u8; Exec::fixed_size()];
    let mut put = |at: usize, data: &[u8]| bytes[at..at + data.len()].copy_from_slice(data);
    put(0, &bytes_of(&header(hook, Exec::fixed_size() + filename.len() + args.len())));
    put(offset_of!(Exec, task), &bytes_of(&task));
    put(offset_of!(Exec, old_tid), &task.tid.to_ne_bytes());
    put(offset_of!(Exec, flags), &flags.to_ne_bytes());
    put(offset_of!(Exec, filename_len), &(filename.len() as u32).to_ne_bytes());
    put(offset_of!(Exec, args_len), &(args.len() as u32).to_ne_bytes());
    put(offset_of!(Exec, code_start), &0x5603_1c80_0000u64.to_ne_bytes());
    put(offset_of!(Exec, code_end), &0x5603_1c81_9f21u64.to_ne_bytes());
    bytes.extend_from_slice(filename);
    bytes.extend_from_slice(args);
    bytes
}

fn exit(hook: Hook, task: Task, status: u32, group_dead: bool) -> Vec<u8> {
    bytes_of(&Exit { header: header(hook, size_of::<Exit>()), task, exit_code: status, group_dead: u32::from(group_dead) })
}

fn module(hook: Hook, name: &[u8], flags: u32) -> Vec<u8> {
    let mut field = [0; MODULE_NAME_CAP];
    field[..name.len()].copy_from_slice(name);
    bytes_of(&ModuleLoad {
        header: header(hook, size_of::<ModuleLoad>()),
        task: task(2301, 2300, 0, b"modprobe"),
        size: 16_384,
        taints: 0,
        flags,
        name_len: name.len() as u32,
        name: field,
    })
}

struct Change {
    start: u64,
    len: u64,
    count: u64,
    old: u32,
    new: u32,
    region: Region,
    result: i32,
    flags: u32,
    file: &'static [u8],
}

fn memory(hook: Hook, task: Task, c: Change) -> Vec<u8> {
    let mut file = [0; MEMORY_FILE_CAP];
    file[..c.file.len()].copy_from_slice(c.file);
    bytes_of(&Memory {
        header: header(hook, size_of::<Memory>()),
        task,
        start: c.start,
        len: c.len,
        count: c.count,
        old_prot: c.old,
        new_prot: c.new,
        region: c.region as u32,
        result: c.result,
        flags: c.flags,
        file_len: c.file.len() as u32,
        file,
    })
}

/// Named seeds for the decode target: a record of every hook, edge cases of each kind, and
/// records broken the ways a reader could meet them (cut short, resized, another version).
fn decode_seeds() -> Vec<(String, Vec<u8>)> {
    let bash = task(1207, 1100, 1000, b"bash");
    let mut seeds: Vec<(String, Vec<u8>)> = Vec::new();
    let mut add = |name: &str, bytes: Vec<u8>| seeds.push((name.to_owned(), bytes));

    // process.fork, every hook: a process, a thread (no child start time), a kernel thread.
    add("fork-fexit", fork(Hook::FexitKernelClone, bash, 1300, 0x0120_0011, 5_123_456_000_000));
    add("fork-tp-btf", fork(Hook::TpBtfTaskNewtask, bash, 1301, 0x0120_0011, 5_123_456_100_000));
    add("fork-tracepoint-thread", fork(Hook::TracepointTaskNewtask, bash, 1302, 0x003d_0f00, 0));
    let kthreadd = Task { flags: PF_KTHREAD, uid: 0, euid: 0, ..task(2, 0, 0, b"kthreadd") };
    add("fork-kernel-thread", fork(Hook::TpBtfTaskNewtask, kthreadd, 1303, 0x0080_0b00, 5_123_456_200_000));

    // process.exec, both hooks: argv as on the stack, hostile argv, unreadable, cut at the cap.
    add("exec-tp-btf", exec(Hook::TpBtfSchedProcessExec, bash, 0, b"/usr/bin/ls", b"ls\0-la\0/tmp\0"));
    add("exec-tracepoint", exec(Hook::TracepointSchedProcessExec, bash, 0, b"./run.sh", b"/bin/sh\0./run.sh\0"));
    let hostile = b"sh\0-c\0echo \"a b\" 'c'\nline\r\x1b[31m\\\0\xff\xfe\xc3\0\0caf\xc3\xa9 \xe2\x80\xa8\0";
    add("exec-hostile-argv", exec(Hook::TpBtfSchedProcessExec, bash, 0, b"/bin/sh\n\xff", hostile));
    // The executed file's inode, device and change time (a flag in the nanoseconds' bit 31).
    let mut identified = exec(Hook::TpBtfSchedProcessExec, bash, EXEC_CTIME_KNOWN, b"/usr/bin/ls", b"ls\0");
    for (at, value) in [
        (offset_of!(Exec, exe_ino), 1_234_567u64),
        (offset_of!(Exec, exe_dev), (254 << 20) | 1),
        (offset_of!(Exec, exe_ctime_sec), 1_700_000_000),
        (offset_of!(Exec, exe_ctime_nsec), (1 << 31) | 123_456_789),
    ] {
        identified[at..at + 8].copy_from_slice(&value.to_ne_bytes());
    }
    add("exec-executed-file", identified);
    add("exec-args-unreadable", exec(Hook::TpBtfSchedProcessExec, bash, EXEC_ARGS_UNREADABLE, b"/usr/bin/true", b""));
    let mut long: Vec<u8> = (0..ARGS_CAP).map(|i| if i % 64 == 63 { 0 } else { b'a' + (i % 26) as u8 }).collect();
    long[ARGS_CAP - 1] = b'z'; // cut mid-argument: no final NUL
    add("exec-args-truncated", exec(Hook::TpBtfSchedProcessExec, bash, EXEC_ARGS_TRUNCATED, b"/usr/bin/xargs", &long));
    let name = vec![b'd'; FILENAME_CAP - 1];
    add("exec-filename-truncated", exec(Hook::TpBtfSchedProcessExec, bash, EXEC_FILENAME_TRUNCATED, &name, b"x\0"));

    // process.exit, every hook: a code, a signal with a core, a thread.
    add("exit-fentry-code-7", exit(Hook::FentryDoExit, bash, 7 << 8, true));
    add("exit-tp-btf-sigsegv-core", exit(Hook::TpBtfSchedProcessExit, bash, 0x8b, true));
    add("exit-tracepoint-thread", exit(Hook::TracepointSchedProcessExit, Task { tid: 1210, ..bash }, 0, false));

    // kernel.module.load, every hook; a name filling the field; nothing but the name known.
    add("module-fentry", module(Hook::FentryDoInitModule, b"dummy", MODULE_SIZE_KNOWN | MODULE_TAINTS_KNOWN));
    add("module-tp-btf", module(Hook::TpBtfModuleLoad, b"nf_tables", MODULE_SIZE_KNOWN));
    add("module-tracepoint-long-name", module(Hook::TracepointModuleLoad, &[b'm'; MODULE_NAME_CAP - 1], 0));

    // process.memory.protect, both hooks: W^X, code made writable, a failed call, coalesced.
    let jit = task(3100, 1207, 1000, b"node");
    let change = |old, new, region, flags, file| Change {
        start: 0x7f3a_2c00_0000,
        len: 8192,
        count: 1,
        old,
        new,
        region,
        result: 0,
        flags,
        file,
    };
    let rw = PROT_READ | PROT_WRITE;
    let rx = PROT_READ | PROT_EXEC;
    add("memory-fentry-wx-anonymous", memory(Hook::FentryMprotectFixup, jit, change(rw, rw | PROT_EXEC, Region::Anonymous, MEMORY_OLD_KNOWN, b"")));
    add("memory-fentry-code-writable", memory(Hook::FentryMprotectFixup, jit, change(rx, rw, Region::MainCode, MEMORY_OLD_KNOWN, b"node")));
    add("memory-fentry-library", memory(Hook::FentryMprotectFixup, jit, change(rx, rw | PROT_EXEC, Region::LibraryCode, MEMORY_OLD_KNOWN, b"libc.so.6")));
    add("memory-fentry-stack", memory(Hook::FentryMprotectFixup, jit, change(rw, rw | PROT_EXEC, Region::Stack, MEMORY_OLD_KNOWN, b"")));
    add("memory-fentry-heap", memory(Hook::FentryMprotectFixup, jit, change(rw, rx, Region::Heap, MEMORY_OLD_KNOWN, b"")));
    add("memory-fentry-file", memory(Hook::FentryMprotectFixup, jit, change(PROT_READ, rw, Region::File, MEMORY_OLD_KNOWN, b"data\n\xff.bin")));
    add(
        "memory-tracepoint-failed",
        memory(Hook::TracepointMprotect, jit, Change { result: -13, ..change(0, rw | PROT_EXEC, Region::Unknown, MEMORY_RESULT_KNOWN, b"") }),
    );
    add(
        "memory-tracepoint-coalesced",
        memory(Hook::TracepointMprotect, jit, Change { count: 20_000, ..change(0, rx, Region::Unknown, MEMORY_RESULT_KNOWN, b"") }),
    );

    // Broken records: each must be rejected (or, where still well-formed, decode cleanly).
    let good = exit(Hook::TpBtfSchedProcessExit, bash, 0, true);
    add("bad-empty", Vec::new());
    add("bad-short-header", good[..10].to_vec());
    add("bad-header-only", good[..size_of::<Header>()].to_vec());
    add("bad-cut-in-task", good[..50].to_vec());
    add("bad-one-byte-short", good[..good.len() - 1].to_vec());
    let mut longer = good.clone();
    longer.push(0);
    add("bad-one-byte-long", longer);
    let mut version = good.clone();
    version[2] = 2;
    add("bad-version", version);
    let mut kind = good.clone();
    kind[0] = 9;
    add("bad-kind", kind);
    let mut hook = good.clone();
    hook[4] = Hook::FexitKernelClone as u8;
    add("bad-hook-of-another-kind", hook);
    let mut size = good.clone();
    size[8..12].copy_from_slice(&u32::MAX.to_ne_bytes());
    add("bad-size-field", size);
    let mut args_len = exec(Hook::TpBtfSchedProcessExec, bash, 0, b"/bin/ls", b"ls\0");
    args_len[offset_of!(Exec, args_len)..][..4].copy_from_slice(&(ARGS_CAP as u32 + 1).to_ne_bytes());
    add("bad-exec-args-len", args_len);
    let mut filename_len = exec(Hook::TpBtfSchedProcessExec, bash, 0, b"/bin/ls", b"ls\0");
    filename_len[offset_of!(Exec, filename_len)..][..4].copy_from_slice(&(FILENAME_CAP as u32).to_ne_bytes());
    add("bad-exec-filename-len", filename_len);
    let mut name_len = module(Hook::FentryDoInitModule, b"dummy", 0);
    name_len[offset_of!(ModuleLoad, name_len)..][..4].copy_from_slice(&(MODULE_NAME_CAP as u32).to_ne_bytes());
    add("bad-module-name-len", name_len);
    let mut file_len = memory(Hook::FentryMprotectFixup, jit, change(rw, rx, Region::Heap, MEMORY_OLD_KNOWN, b""));
    file_len[offset_of!(Memory, file_len)..][..4].copy_from_slice(&u32::MAX.to_ne_bytes());
    add("bad-memory-file-len", file_len);
    seeds
}

/// Rewrites `fuzz/corpus/decode/` from [`decode_seeds`] (inputs the fuzzer added are kept).
#[test]
#[ignore = "writes files: run by hand when the ABI changes"]
fn write_decode_seeds() {
    let dir = fuzz_dir().join("corpus/decode");
    std::fs::create_dir_all(&dir).unwrap();
    for (name, bytes) in decode_seeds() {
        std::fs::write(dir.join(name), bytes).unwrap();
    }
}

#[test]
fn decode_seeds_are_what_they_say() {
    // The good seeds decode and the bad ones are rejected: a seed that silently stopped
    // decoding (an ABI change) would leave the fuzzer starting from nothing.
    use ksense::{clock::Clock, decode::decode};
    for (name, bytes) in decode_seeds() {
        let decoded = decode(&bytes, 1, &Clock::sample(), std::time::SystemTime::now());
        assert_eq!(decoded.is_ok(), !name.starts_with("bad-"), "seed {name}: {decoded:?}");
    }
}
