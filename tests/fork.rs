//! `process.fork` end to end: real forks and threads on this kernel, seen through ksense.
use std::time::Instant;

use ksense_e2e::{Ksense, attr, checks, is, run_workload};

#[test]
fn fork_names_parent_and_child() {
    let ksense = Ksense::start(&[]);
    let probes = checks::probes_report("");
    let probe = checks::chosen(&probes, "process.fork").expect("ksense probes chose no hook for process.fork");
    let fork = checks::fork_names_parent_and_child(&ksense, probe);
    assert!(attr(&fork, "ksense.clone.flags").is_i64(), "{fork}");
    assert!(attr(&fork, "process.creation.time").is_string(), "{fork}");
    assert_ne!(attr(&fork, "ksense.process.code.start"), "0x0", "{fork}");
    assert!(attr(&fork, "ksense.probe").as_str().unwrap().ends_with("task_newtask")
        || attr(&fork, "ksense.probe") == "fexit/kernel_clone", "{fork}");
    ksense.stop();
}

#[test]
fn thread_creation_is_flagged() {
    let ksense = Ksense::start(&[]);
    checks::thread_is_flagged_and_its_exit_not_reported(&ksense);
    ksense.stop();
}

/// 2000 fork/exit pairs from one parent: every child's exit is reported, or the difference is
/// counted as lost. Prints the workload's cost with and without ksense (not asserted: speed is
/// for benchmarks).
#[test]
fn burst_of_2000_forks_is_accounted_for() {
    const N: usize = 2000;
    let started = Instant::now();
    run_workload(&["fork-exit", &N.to_string()]);
    let without = started.elapsed();

    let ksense = Ksense::start(&[]);
    let started = Instant::now();
    let (_, parent) = run_workload(&["fork-exit", &N.to_string()]);
    let with = started.elapsed();
    // The workload has exited: its own exit is the last event we need.
    ksense.wait_for("the workload's exit", |e| is(e, "process.exit") && attr(e, "process.pid") == parent);
    let stopped = ksense.stop();
    assert!(stopped.status.success(), "{}", stopped.stderr);

    let exits = stopped
        .events
        .iter()
        .filter(|e| is(e, "process.exit") && attr(e, "process.parent_pid") == parent)
        .count();
    let forks = stopped
        .events
        .iter()
        .filter(|e| is(e, "process.fork") && attr(e, "process.parent_pid") == parent)
        .count();
    let lost = stopped.counter("lost_total");
    eprintln!(
        "{N} fork/exit pairs: {:.1} us/pair without ksense, {:.1} us/pair with ksense; \
         {exits} exits and {forks} forks reported, {lost} events counted lost",
        without.as_secs_f64() * 1e6 / N as f64,
        with.as_secs_f64() * 1e6 / N as f64,
    );
    assert!(exits <= N && forks <= N, "more events than processes: {exits} exits, {forks} forks");
    assert!(exits as u64 + lost >= N as u64, "{exits} exits reported and {lost} counted lost: {N} expected");
    assert!(forks as u64 + lost >= N as u64, "{forks} forks reported and {lost} counted lost: {N} expected");
    // Sequence numbers: one more per event read, so gaps show loss after the kernel.
    let seqs: Vec<u64> = stopped.events.iter().map(|e| attr(e, "ksense.event.seq").as_u64().unwrap()).collect();
    assert!(seqs.windows(2).all(|w| w[0] < w[1]), "ksense.event.seq is not increasing");
    let read = stopped.counter("events_read");
    assert_eq!(seqs.last().copied(), Some(read), "last seq is the number of records read");
    assert_eq!(read - seqs.len() as u64, stopped.counter("decode_errors"), "every record read is shipped or counted");
}

/// A process's fork, exec, memory change and exit: read by the reader in different batches,
/// all carry the very same `process.creation.time` string, so (host, pid, creation time) joins
/// them.
#[test]
fn every_record_of_a_process_has_the_same_creation_time() {
    let ksense = Ksense::start(&[]);
    let child = std::process::Command::new(ksense_e2e::workload_bin()).arg("mprotect-text-rwx").spawn().unwrap();
    let pid = child.id();
    assert!(child.wait_with_output().unwrap().status.success());
    let kinds = ["process.fork", "process.exec", "process.memory.protect", "process.exit"];
    let times: Vec<(&str, String)> = kinds
        .iter()
        .map(|&kind| {
            let event = ksense.wait_for(kind, |e| is(e, kind) && attr(e, "process.pid") == pid);
            let time = attr(&event, "process.creation.time").as_str().unwrap_or_else(|| panic!("no creation time: {event}"));
            (kind, time.to_owned())
        })
        .collect();
    assert!(times.iter().all(|(_, time)| *time == times[0].1), "{times:?}");
    ksense.stop();
}
