//! Throughput benchmarks of the user-space path (figures in `docs/THROUGHPUT.md`).
//! They print, they do not assert speed: run them in release with
//! `cargo test --release -p ksense --lib decode_json_throughput -- --ignored --nocapture`.
//!
//! The input is a realistic mix of raw kernel records built from the ABI types, and each event
//! carries what a process-table hit in enrichment adds (owner, session, cgroup; path and argv
//! on fork and exit), so records are as large as the pipeline's are. Enrichment's own work
//! (table lookups, `/proc` reads on a miss) is not measured here.
use std::{
    sync::Arc,
    time::{Duration, Instant, SystemTime},
};

use ksense_abi::{
    Header, Hook, Task,
    exit::Exit,
    fork::Fork,
    memory::{MEMORY_OLD_KNOWN, MEMORY_RESULT_KNOWN, Memory, PROT_EXEC, PROT_READ, PROT_WRITE, Region},
};

use super::{
    decode,
    tests::{exec_record, record},
};
use crate::{clock::Clock, event::Event, record::LogRecord, wire::as_bytes};

/// Processes in the mix; each contributes a fork, an exec, a memory change and an exit.
const PROCESSES: u32 = 64;
/// argv areas (NUL-terminated words back to back) and the executables they run.
const ARGV: [&[u8]; 5] = [
    b"ls\0-la\0--color=auto\0/tmp\0",
    b"git\0status\0--short\0",
    b"python3\0-m\0pytest\0-q\0tests/test_api.py\0",
    b"sh\0-c\0echo \"hello world\" > /dev/null\0",
    b"cc\0-O2\0-c\0-o\0main.o\0main.c\0",
];
const PATHS: [&[u8]; 5] = [b"/usr/bin/ls", b"/usr/bin/git", b"/usr/bin/python3.11", b"/usr/bin/dash", b"/usr/bin/cc"];

fn task(pid: u32, comm: &[u8]) -> Task {
    let mut task = Task { tid: pid, tgid: pid, ppid: 1000, uid: 1000, euid: 1000, start_ns: 5_000_000_000, ..Task::default() };
    task.comm[..comm.len()].copy_from_slice(comm);
    task
}

/// Raw records as the probes write them: per process a fork (from bash), an exec, a W^X memory
/// change and an exit, interleaved the way a busy shell produces them.
pub(crate) fn raw_records() -> Vec<Vec<u8>> {
    let mut records = Vec::new();
    for i in 0..PROCESSES {
        let pid = 20_000 + i;
        let (args, path) = (ARGV[i as usize % ARGV.len()], PATHS[i as usize % PATHS.len()]);
        let comm = &path[path.iter().rposition(|&b| b == b'/').map_or(0, |p| p + 1)..];
        let comm = &comm[..comm.len().min(15)];
        let fork = Fork {
            parent: task(1000, b"bash"),
            child_tid: pid,
            child_tgid: pid,
            clone_flags: 0x0120_0011,
            child_start_ns: 5_000_000_000 + u64::from(i),
            code_start: 0x5555_5555_4000,
            code_end: 0x5555_5556_a000,
            ..Fork::default()
        };
        records.push(record(Hook::TpBtfTaskNewtask, &as_bytes(&fork)[size_of::<Header>()..]));
        records.push(exec_record(task(pid, comm), path, args));
        let mut memory = Memory {
            header: Header::default(),
            task: task(pid, comm),
            start: 0x7f12_3456_7000,
            len: 8192,
            count: 1,
            old_prot: PROT_READ | PROT_EXEC,
            new_prot: PROT_READ | PROT_WRITE | PROT_EXEC,
            region: Region::LibraryCode as u32,
            result: 0,
            flags: MEMORY_OLD_KNOWN | MEMORY_RESULT_KNOWN,
            file_len: 0,
            file: [0; _],
        };
        let file = b"libffi.so.8.1.2";
        memory.file[..file.len()].copy_from_slice(file);
        memory.file_len = file.len() as u32;
        records.push(record(Hook::FentryMprotectFixup, &as_bytes(&memory)[size_of::<Header>()..]));
        let exit = Exit { task: task(pid, comm), exit_code: (i % 3) << 8, group_dead: 1, ..Exit::default() };
        records.push(record(Hook::TpBtfSchedProcessExit, &as_bytes(&exit)[size_of::<Header>()..]));
    }
    records
}

/// What a process-table hit in enrichment adds to `event`.
pub(crate) fn as_enriched(event: &mut Event, table: &Enriched) {
    let p = &mut event.process;
    p.owner = Some(table.owner.clone());
    p.pgid = Some(p.pid);
    p.sid = Some(1000);
    p.cgroup = Some(table.cgroup.clone());
    if p.exe.is_none() {
        p.exe = Some(table.exe.clone());
        p.args = Some(table.args.clone());
    }
}

/// The shared values a process table hands out.
pub(crate) struct Enriched {
    owner: Arc<str>,
    cgroup: Arc<str>,
    exe: Arc<[u8]>,
    args: Arc<[Vec<u8>]>,
}

impl Default for Enriched {
    fn default() -> Self {
        Enriched {
            owner: "alice".into(),
            cgroup: "0::/user.slice/user-1000.slice/session-3.scope".into(),
            exe: (*b"/usr/bin/bash").into(),
            args: vec![b"bash".to_vec(), b"--login".to_vec()].into(),
        }
    }
}

/// `count` records of the mix, decoded, enriched as above and rendered, in order.
pub(crate) fn log_records(count: usize) -> Vec<LogRecord> {
    let (raw, clock, table) = (raw_records(), Clock::sample(), Enriched::default());
    (0..count)
        .map(|seq| {
            let mut event = decode(&raw[seq % raw.len()], seq as u64, &clock, SystemTime::now()).unwrap();
            as_enriched(&mut event, &table);
            event.to_record()
        })
        .collect()
}

/// CPU time (user + system) this process has used so far.
pub(crate) fn process_cpu_time() -> Duration {
    cpu_time(libc::RUSAGE_SELF)
}

/// CPU time (user + system) the calling thread has used so far.
pub(crate) fn thread_cpu_time() -> Duration {
    cpu_time(libc::RUSAGE_THREAD)
}

fn cpu_time(who: libc::c_int) -> Duration {
    // SAFETY: getrusage fills the struct it is given; a zeroed rusage is a valid value.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: valid pointer; RUSAGE_SELF and RUSAGE_THREAD always exist on Linux.
    unsafe { libc::getrusage(who, &mut usage) };
    let tv = |t: libc::timeval| Duration::new(t.tv_sec as u64, t.tv_usec as u32 * 1000);
    tv(usage.ru_utime) + tv(usage.ru_stime)
}

/// Events/s through decode -> enrichment's additions -> `Event::to_record` -> the JSON lines
/// sink writing to /dev/null (or `KSENSE_BENCH_JSON_FILE`), one thread, flushing every 256
/// events as the pipeline does when its queue runs dry. `KSENSE_BENCH_N` events (default 2M).
#[test]
#[ignore = "benchmark: run in release with --ignored --nocapture"]
fn decode_json_throughput() {
    use crate::sinks::{Sink, jsonl::JsonlSink};
    let n: usize = std::env::var("KSENSE_BENCH_N").ok().and_then(|n| n.parse().ok()).unwrap_or(2_000_000);
    let path = std::env::var("KSENSE_BENCH_JSON_FILE").unwrap_or_else(|_| "/dev/null".into());
    let (raw, table, stats) = (raw_records(), Enriched::default(), Arc::new(crate::telemetry::SinkStats::default()));
    let mut sink = JsonlSink::new(std::fs::File::create(&path).unwrap(), stats.clone());
    let (started, cpu_before) = (Instant::now(), thread_cpu_time());
    let mut clock = Clock::sample();
    for seq in 0..n {
        if seq % 256 == 0 {
            sink.flush().unwrap();
            // The reader samples the clock once per drained batch.
            clock = Clock::sample();
        }
        let mut event = decode(&raw[seq % raw.len()], seq as u64, &clock, SystemTime::now()).unwrap();
        as_enriched(&mut event, &table);
        sink.write(&event.to_record()).unwrap();
    }
    sink.flush().unwrap();
    let (elapsed, cpu) = (started.elapsed(), thread_cpu_time() - cpu_before);
    let delivered = stats.delivered.load(std::sync::atomic::Ordering::Relaxed);
    assert_eq!(delivered, n as u64, "the JSON sink counted every event");
    eprintln!(
        "decode+JSON: {n} events in {:.3} s wall, {:.3} s CPU: {:.0} events/s per CPU-second, {:.0} ns/event ({:.0} events/s wall)",
        elapsed.as_secs_f64(),
        cpu.as_secs_f64(),
        n as f64 / cpu.as_secs_f64(),
        cpu.as_nanos() as f64 / n as f64,
        n as f64 / elapsed.as_secs_f64(),
    );
}
