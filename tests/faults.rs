//! Faults under load, end to end with the real ksense, a real collector (rotel) and a real
//! journald: a collector away for 30 s, journald killed and restarted, SIGHUP and SIGTERM in the
//! middle of a burst, a ring buffer overrun on purpose (reported in the stream as `ksense.loss`
//! records), and a stdout pipe nobody reads. In each, ksense
//! keeps running (or exits cleanly when told to), and every event is either delivered or
//! counted as lost: the counters of the final `ksense stopped:` line add up exactly.
//! docs/FAULTS.md has the numbers.
use std::{
    collections::HashSet,
    os::unix::process::CommandExt as _,
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use ksense_e2e::{
    Ksense, Stopped, attr,
    collector::{Collector, Received, check_outage_accounting, free_port, small_queue_config},
    event_timeout, is, journald,
    load::Load,
    printed_hex, run_workload, temp_config, workload_bin,
};
use serde_json::Value;

/// Keeps journald out of the tests that are not about it: the sink is on by default whenever
/// journald's socket exists, and the journald test kills that journald.
const NO_JOURNALD: &str = "[sinks.journald]\nenabled = false\n";

/// Runs of `fork-exit 20` (about 40 events each) in each phase of a test: before a fault,
/// during it, after it.
const RUNS_PER_PHASE: usize = 100;

/// How long the collector stays away in [`otlp_collector_away_30_s_under_load`].
const OUTAGE: Duration = Duration::from_secs(30);

/// Runs markers until `arrived(pid)` finds one in a backend (each gets a few seconds): under
/// load a backend that has just come back may still be catching up, and a marker's event can
/// be dropped and counted meanwhile. Returns how many markers it took.
fn first_marker_to_arrive(what: &str, arrived: impl Fn(u32) -> bool) -> usize {
    let deadline = Instant::now() + event_timeout();
    for attempt in 1.. {
        let (_, pid) = run_workload(&["marker"]);
        let waited = Instant::now() + Duration::from_secs(3);
        while Instant::now() < waited {
            if arrived(pid) {
                return attempt;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        assert!(Instant::now() < deadline, "no marker reached {what} in {attempt} attempts");
    }
    unreachable!()
}

/// The `process.fork`, `process.exec` and `process.exit` of every process in `pids` are in
/// `events`, what `sink` delivered, except at most as many as that sink counted as dropped
/// (queue full, memory budget): a test's reader of stdout can fall behind on a loaded machine,
/// and a record the sink drops then is counted, not lost. A record lost in a switch of sinks,
/// or never sent, shows up as missing.
fn assert_every_run_reported(events: &[Value], pids: &[u32], stopped: &Stopped, sink: &str) {
    let seen: HashSet<(String, u64)> = events
        .iter()
        .filter_map(|e| Some((e["event.name"].as_str()?.to_owned(), attr(e, "process.pid").as_u64()?)))
        .collect();
    let missing: Vec<(u32, &str)> = pids
        .iter()
        .flat_map(|&pid| ["process.fork", "process.exec", "process.exit"].map(|name| (pid, name)))
        .filter(|&(pid, name)| !seen.contains(&(name.to_owned(), pid.into())))
        .collect();
    let dropped = ["queue_full", "memory_budget"].map(|c| stopped.counter(&format!("sink_{sink}_{c}"))).iter().sum::<u64>();
    if dropped > 0 {
        eprintln!("the {sink} sink dropped {dropped} records (counted); {} of the runs' events are missing", missing.len());
    }
    assert!(
        missing.len() as u64 <= dropped,
        "not from the {sink} sink, which counted {dropped} dropped, (pid, event) of {} runs: {missing:?}\n{}",
        pids.len(),
        stopped.stderr.lines().rev().find(|l| l.contains("ksense stopped: ")).unwrap_or(&stopped.stderr)
    );
}

/// Events lost after they were read from the ring buffer (decode errors, rate limits, a full
/// queue where the pipeline has one): every record read is written, filtered, or one of these.
fn lost_after_read(stopped: &Stopped) -> u64 {
    stopped.counter("lost_total") - stopped.counter("lost_ring_buffer")
}

/// The collector is absent for 30 s while processes fork and exit without pause, then starts on
/// the same port. ksense keeps running and writing stdout, export resumes by itself, and at
/// stop the OTLP sink's counters account for every event.
#[test]
fn otlp_collector_away_30_s_under_load() {
    let (grpc_port, http_port) = (free_port(), free_port());
    let config = temp_config("faults-otlp", &format!("{}{NO_JOURNALD}", small_queue_config(grpc_port)));
    let ksense = Ksense::start(&["--config", config.to_str().unwrap()]);
    let load = Load::start(&["fork-exit", "20"]);

    // Down for the whole window; every few seconds ksense shows it is still at work by
    // printing the exit of a run that ended after the look began. Any such run will do: under
    // this load the test's own reader falls behind, and stdout then drops some events, counted.
    let back_at = Instant::now() + OUTAGE;
    while Instant::now() < back_at {
        std::thread::sleep(Duration::from_secs(5).min(back_at.saturating_duration_since(Instant::now())));
        let gave_up_at = Instant::now() + event_timeout();
        loop {
            let before = load.reaped().len();
            load.wait_for_runs(before + 1);
            let fresh = load.reaped().split_off(before);
            let shown = ksense.try_wait_for(Duration::from_secs(3), |e| {
                is(e, "process.exit") && fresh.iter().any(|&pid| attr(e, "process.pid") == pid)
            });
            if shown.is_some() {
                break;
            }
            assert!(Instant::now() < gave_up_at, "no run's exit during the outage on stdout:\n{}", ksense.stderr());
        }
    }
    let runs_in_outage = load.reaped().len();

    // Back, on the same port, with the load still on: the backlog arrives, then new events.
    let collector = Collector::start_on(grpc_port, http_port);
    collector.wait_for("the backlog", |_| true);
    let markers = first_marker_to_arrive("the collector after the outage", |pid| {
        let pid = format!("Int({pid})");
        collector
            .received()
            .iter()
            .any(|r| r.event_name == "process.exit" && r.attributes.get("process.pid") == Some(&pid))
    });
    let runs = load.stop().len();
    let totals = check_outage_accounting(&ksense.stop(), &collector);
    eprintln!(
        "collector away {OUTAGE:?}: {runs_in_outage} runs of fork-exit 20 meanwhile, {runs} in all; \
         {markers} marker(s) until one arrived after the outage"
    );
    assert!(totals.dropped > 0, "a queue of 200 overflows in a 30 s outage under load");
}

/// journald is killed in the middle of a load and started again: ksense keeps running, counts
/// what it could not send, says once that journald went away and once that it is back, and
/// entries written after the restart are in the journal.
#[test]
fn journald_killed_and_restarted_under_load() {
    journald::ensure();
    let since = journald::since_now();
    let config = temp_config("faults-journald", "[sinks.journald]\nenabled = true\n");
    let config = config.to_str().unwrap();
    let ksense = Ksense::start(&["--config", config]);
    let load = Load::start(&["fork-exit", "20"]);
    load.wait_for_runs(RUNS_PER_PHASE);

    // The lock keeps any other test from starting a journald while this one is away.
    let lock = journald::lock();
    journald::kill(&lock);
    // An event handled while journald is surely away: its entry fails and is counted (the
    // journald sink is written before stdout, so once stdout has it, the send was tried).
    let (_, during) = run_workload(&["marker"]);
    ksense.wait_for("a marker's exit while journald is away", |e| {
        is(e, "process.exit") && attr(e, "process.pid") == during
    });
    load.wait_for_runs(load.reaped().len() + RUNS_PER_PHASE);
    journald::start_if_absent(&lock);
    drop(lock);
    load.wait_for_runs(load.reaped().len() + RUNS_PER_PHASE);

    // Entries of this ksense (others may be running) written after the restart.
    let markers = first_marker_to_arrive("the restarted journald", |pid| {
        journald::entries(
            &since,
            &["SYSLOG_IDENTIFIER=ksense", "KSENSE_EVENT=process.exec", &format!("PROCESS_PID={pid}")],
        )
        .iter()
        .any(|e| e["_CMDLINE"].as_str().is_some_and(|c| c.contains(config)))
    });
    let runs = load.stop().len();
    let stopped = ksense.stop();
    assert!(stopped.status.success(), "{}", stopped.stderr);
    let written = stopped.counter("events_written");
    // Every sink is offered the events and ksense's records about itself.
    let offered = written + stopped.counter("own_records");
    let delivered = stopped.counter("sink_journald_delivered");
    let failed = stopped.counter("sink_journald_failed");
    let dropped = stopped.counter("sink_journald_queue_full");
    let went_away = stopped.stderr.matches("journald is not reachable").count();
    let came_back = stopped.stderr.matches("journald is reachable again").count();
    eprintln!(
        "journald restart: {runs} runs of fork-exit 20; {written} events written, {delivered} delivered to journald, \
         {failed} failed, {dropped} dropped; said away {went_away}x, back {came_back}x; {markers} marker(s) until one \
         was in the journal"
    );
    assert_eq!(stopped.sink_accounted("journald"), offered, "every record is delivered to journald or counted");
    assert!(failed > 0, "the marker's entry while journald was away must count as failed");
    assert_eq!((went_away, came_back), (1, 1), "one outage, said once each way:\n{}", stopped.stderr);
    // stdout has its own queue: what the test's reader could not keep up with is counted.
    assert_eq!(stopped.sink_accounted("stdout"), offered, "stdout got or counted every record all along");
    journald::ensure();
}

/// SIGHUP adds the file sink while processes start one after another: nothing is lost in the
/// switch, stdout has every run before and after it, and the file every run after it.
#[test]
fn sighup_under_load_loses_nothing() {
    let dir = std::env::temp_dir().join(format!("ksense-faults-sighup-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("events.json");
    let config = temp_config("faults-sighup", NO_JOURNALD);
    let ksense = Ksense::start(&["--config", config.to_str().unwrap()]);
    let load = Load::start(&["fork-exit", "20"]);
    load.wait_for_runs(RUNS_PER_PHASE);

    let with_file = format!("{NO_JOURNALD}[sinks.file]\nenabled = true\npath = \"{}\"\n", file.display());
    std::fs::write(&config, with_file).unwrap();
    ksense.signal(libc::SIGHUP);
    // The pipeline has switched: a run that starts after this goes to the new sinks. (The run
    // under way now may have forked before the switch.)
    ksense.wait_for_log("filters and sinks reloaded");
    let first_after = load.reaped().len() + 1;
    load.wait_for_runs(first_after + RUNS_PER_PHASE);
    let pids = load.stop();
    let stopped = ksense.stop();
    assert!(stopped.status.success(), "{}", stopped.stderr);

    let (read, written, filtered) =
        (stopped.counter("events_read"), stopped.counter("events_written"), stopped.counter("filtered"));
    eprintln!(
        "SIGHUP under load: {} runs, {first_after} before the switch; {read} events read, {written} written",
        pids.len()
    );
    assert_eq!(stopped.counter("lost_total"), 0, "{}", stopped.stderr);
    assert_eq!(written, read - filtered, "{}", stopped.stderr);
    assert_eq!((stopped.events.len() + stopped.own.len()) as u64, stopped.counter("sink_stdout_delivered"));
    let offered = written + stopped.counter("own_records");
    assert_eq!(stopped.sink_accounted("stdout"), offered, "stdout got or counted every record:\n{}", stopped.stderr);
    assert_every_run_reported(&stopped.events, &pids, &stopped, "stdout");
    let in_file: Vec<Value> =
        std::fs::read_to_string(&file).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(in_file.len() as u64, stopped.counter("sink_file_delivered"));
    assert_every_run_reported(&in_file, &pids[first_after..], &stopped, "file");
    let _ = std::fs::remove_dir_all(&dir);
}

/// SIGTERM while processes start one after another: ksense exits 0 after shipping everything
/// it read, and every process that had exited before the signal is in the output.
#[test]
fn sigterm_under_load_ships_what_was_read() {
    let config = temp_config("faults-sigterm", NO_JOURNALD);
    let ksense = Ksense::start(&["--config", config.to_str().unwrap()]);
    let load = Load::start(&["fork-exit", "20"]);
    load.wait_for_runs(RUNS_PER_PHASE);
    let before_signal = load.reaped();
    let stopped = ksense.stop();
    let runs = load.stop().len();
    assert!(stopped.status.success(), "{}", stopped.stderr);

    let read = stopped.counter("events_read");
    let written = stopped.counter("events_written");
    eprintln!(
        "SIGTERM under load: {} runs before the signal, {runs} in all; {read} events read, {written} written",
        before_signal.len()
    );
    assert_eq!(read, written + stopped.counter("filtered") + lost_after_read(&stopped), "{}", stopped.stderr);
    assert_eq!((stopped.events.len() + stopped.own.len()) as u64, stopped.counter("sink_stdout_delivered"), "{}", stopped.stderr);
    // Nothing lost anywhere, so every event the kernel wrote before the signal was shipped.
    assert_eq!(stopped.counter("lost_total"), 0, "{}", stopped.stderr);
    let offered = written + stopped.counter("own_records");
    assert_eq!(stopped.sink_accounted("stdout"), offered, "stdout got or counted every record:\n{}", stopped.stderr);
    assert_every_run_reported(&stopped.events, &before_signal, &stopped, "stdout");
}

/// The uid the toggler runs as in [`ring_buffer_overrun_is_counted_exactly`]: in no passwd entry.
const TOGGLER_UID: u32 = 64_123;

/// A 64 KiB ring buffer overrun on purpose by 400,000 uncoalesced memory-protection changes:
/// what arrived plus what was counted lost is exactly what the toggler did, and the backend
/// (stdout and an OTLP collector) learns of the ring buffer's losses from `ksense.loss` records,
/// and gets `ksense.status` records at start, every second (`status_interval_s = 1`) and at stop.
///
/// Loss counters are per event kind, not per process, so the equation only holds if no other
/// process's memory-protection change was lost. To make that so rather than likely, the toggler
/// runs as a uid of its own and every other uid (those in /etc/passwd and those running a
/// process now) is excluded in the kernel, where an excluded task's change never reaches the
/// ring buffer. The output then holds the toggler's changes only, which is checked too.
#[test]
fn ring_buffer_overrun_is_counted_exactly() {
    const N: u64 = 200_000;
    let collector = Collector::start();
    let mut others = other_uids();
    others.retain(|&uid| uid != TOGGLER_UID);
    let uids: Vec<String> = others.iter().map(u32::to_string).collect();
    let config = temp_config(
        "faults-overrun",
        &format!(
            "[probes]\nfork = false\nexec = false\nexit = false\nmodule = false\n\
             [memory]\nreport = \"wx\"\ncoalesce_window_ms = 0\n\
             [limits]\nring_buffer_bytes = 65536\nqueue_events = 64\n\
             [filters]\nexclude = {{ uid = [{}], events = [\"process.memory.protect\"] }}\n{NO_JOURNALD}\
             [sinks.otlp]\nendpoint = \"http://127.0.0.1:{}\"\n[telemetry]\nstatus_interval_s = 1\n",
            uids.join(", "),
            collector.grpc_port
        ),
    );
    let ksense = Ksense::start(&["--config", config.to_str().unwrap()]);
    let toggler = Command::new(workload_bin())
        .args(["mprotect-toggle", &N.to_string()])
        .uid(TOGGLER_UID)
        .gid(TOGGLER_UID)
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let pid = toggler.id();
    let out = toggler.wait_with_output().unwrap();
    assert!(out.status.success(), "the toggler failed: {:?}", out.status);
    let out = String::from_utf8(out.stdout).unwrap();
    let page = format!("{:#x}", printed_hex(&out, "page"));
    // The heartbeat comes every second whatever the load.
    let deadline = Instant::now() + event_timeout();
    while !ksense.own().iter().any(|r| is(r, "ksense.status") && attr(r, "ksense.status.state") == "running") {
        assert!(Instant::now() < deadline, "no ksense.status running on stdout:\n{}", ksense.stderr());
        std::thread::sleep(Duration::from_millis(50));
    }
    let stopped = ksense.stop();
    assert!(stopped.status.success(), "{}", stopped.stderr);

    let changes: Vec<&Value> = stopped.events.iter().filter(|e| is(e, "process.memory.protect")).collect();
    for change in &changes {
        assert_eq!(attr(change, "process.pid"), pid, "only the toggler's changes: {change}");
        assert_eq!(attr(change, "ksense.memory.start"), page.as_str(), "only its page: {change}");
    }
    let delivered: u64 = changes.iter().map(|e| attr(e, "ksense.event.count").as_u64().unwrap()).sum();
    let ring_lost = stopped.counter("lost_ring_buffer_process_memory_protect");
    // Everything counted lost: before the sinks (the ring buffer's losses and any after
    // reading), and what the stdout sink dropped (it falls behind: its queue holds 64 records).
    let lost = stopped.counter("lost_total");
    let dropped = ["queue_full", "memory_budget", "failed"].map(|c| stopped.counter(&format!("sink_stdout_{c}"))).iter().sum::<u64>();
    eprintln!(
        "overrun: {} changes made, {delivered} delivered ({} events), {lost} counted lost of which {ring_lost} in the \
         ring buffer, {dropped} dropped by stdout; {} ns per mprotect",
        2 * N,
        changes.len(),
        printed_hex(&out, "ns_per_call")
    );
    assert_eq!(delivered + lost + dropped, 2 * N, "{}", stopped.stderr);
    assert!(ring_lost > 0, "the 64 KiB ring buffer was not overrun: {}", stopped.stderr);
    assert_eq!(
        stopped.counter("lost_ring_buffer"),
        ring_lost,
        "only memory-protection changes were lost: {}",
        stopped.stderr
    );

    // The backend learns of the gap: ksense.loss records on stdout and over OTLP add up to
    // the ring buffer's losses, and the status records of start and stop arrive.
    let on_stdout = lost_in_json(&stopped.own, "ring_buffer", None);
    assert_eq!(on_stdout, ring_lost, "ksense.loss records on stdout: {:?}", stopped.own);
    let over_otlp = wait_for_otlp_losses(&collector, "ring_buffer", None, ring_lost);
    assert_eq!(over_otlp, ring_lost, "ksense.loss records over OTLP");
    for state in ["started", "running", "stopping"] {
        assert!(
            stopped.own.iter().any(|r| is(r, "ksense.status") && attr(r, "ksense.status.state") == state),
            "no ksense.status {state} on stdout: {:?}",
            stopped.own
        );
        let printed = format!("Str({state})");
        collector.wait_for(&format!("ksense.status {state}"), |r| {
            r.event_name == "ksense.status" && r.attributes.get("ksense.status.state") == Some(&printed)
        });
    }
    eprintln!("overrun: ksense.loss records report {on_stdout} lost in the ring buffer on stdout, {over_otlp} over OTLP");
}

/// The sum of `ksense.loss.count` of the `ksense.loss` JSON records of `cause` (and `sink`).
fn lost_in_json(records: &[Value], cause: &str, sink: Option<&str>) -> u64 {
    records
        .iter()
        .filter(|r| is(r, "ksense.loss") && attr(r, "ksense.loss.cause") == cause)
        .filter(|r| sink.is_none_or(|sink| attr(r, "ksense.loss.sink") == sink))
        .map(|r| attr(r, "ksense.loss.count").as_u64().unwrap_or_else(|| panic!("no count: {r}")))
        .sum()
}

/// The sum of `ksense.loss.count` of the `ksense.loss` records of `cause` (and `sink`) the
/// collector printed, once it is `expected` or after a timeout (rotel prints a batch after it
/// has answered the export).
fn wait_for_otlp_losses(collector: &Collector, cause: &str, sink: Option<&str>, expected: u64) -> u64 {
    let (cause, sink) = (format!("Str({cause})"), sink.map(|s| format!("Str({s})")));
    let sum = |records: Vec<Received>| -> u64 {
        records
            .iter()
            .filter(|r| r.event_name == "ksense.loss" && r.attributes.get("ksense.loss.cause") == Some(&cause))
            .filter(|r| sink.is_none() || r.attributes.get("ksense.loss.sink") == sink.as_ref())
            .map(|r| {
                let count = r.attributes.get("ksense.loss.count").unwrap_or_else(|| panic!("no count: {r:?}"));
                count.strip_prefix("Int(").and_then(|c| c.strip_suffix(')')).and_then(|c| c.parse::<u64>().ok()).unwrap()
            })
            .sum()
    };
    let deadline = Instant::now() + event_timeout();
    loop {
        let got = sum(collector.received());
        if got == expected || Instant::now() > deadline {
            return got;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// ksense's stdout is a pipe nobody reads (the reader of `ksense run | reader` stopped): the
/// pipe fills and the stdout sink blocks, but the OTLP sink keeps delivering, stdout's losses
/// are counted (its queue is full) and reported to the collector, and SIGTERM still ends
/// ksense with status 0.
#[test]
fn a_blocked_stdout_pipe_stalls_only_stdout() {
    let collector = Collector::start();
    let config = temp_config(
        "faults-blocked-stdout",
        &format!(
            "[sinks.otlp]\nendpoint = \"http://127.0.0.1:{}\"\n[limits]\nqueue_events = 64\n{NO_JOURNALD}",
            collector.grpc_port
        ),
    );
    let ksense = Ksense::start_with_stdout_unread(&["--config", config.to_str().unwrap()]);
    let load = Load::start(&["fork-exit", "20"]);
    let deadline = Instant::now() + event_timeout();
    while !ksense.stdout_is_blocked() {
        assert!(Instant::now() < deadline, "the stdout pipe never filled:\n{}", ksense.stderr());
        std::thread::sleep(Duration::from_millis(20));
    }
    // A marker run now reaches the collector, with stdout blocked throughout. (Other tests'
    // floods may be running: a marker can then be dropped, and counted, for OTLP too.)
    let markers = first_marker_to_arrive("the collector with stdout blocked", |pid| {
        let pid = format!("Int({pid})");
        collector.received().iter().any(|r| r.event_name == "process.exit" && r.attributes.get("process.pid") == Some(&pid))
    });
    assert!(ksense.stdout_is_blocked(), "nobody read the pipe");
    let runs = load.stop().len();
    let started = Instant::now();
    let stopped = ksense.stop();
    let took = started.elapsed();
    assert!(stopped.status.success(), "{}", stopped.stderr);
    let queue_full = stopped.counter("sink_stdout_queue_full");
    let reported = wait_for_otlp_losses(&collector, "queue_full", Some("stdout"), queue_full);
    eprintln!(
        "blocked stdout: {runs} runs of fork-exit 20, {markers} marker(s) until one was delivered over OTLP; stdout delivered {}, \
         dropped {queue_full} (queue full), failed {} at stop; OTLP delivered {}; ksense.loss reported {reported} \
         stdout drops; SIGTERM to exit {took:?}",
        stopped.counter("sink_stdout_delivered"),
        stopped.counter("sink_stdout_failed"),
        stopped.counter("sink_otlp_delivered"),
    );
    assert!(queue_full > 0, "the blocked stdout's queue overflowed: {}", stopped.stderr);
    assert_eq!(reported, queue_full, "the collector learned of every record stdout dropped");
}


/// Every uid in /etc/passwd and every effective uid running a process now.
fn other_uids() -> Vec<u32> {
    let passwd = std::fs::read_to_string("/etc/passwd").unwrap();
    let mut uids: Vec<u32> = passwd.lines().filter_map(|l| l.split(':').nth(2)?.parse().ok()).collect();
    assert!(!uids.contains(&TOGGLER_UID), "uid {TOGGLER_UID} is in /etc/passwd: pick another for the toggler");
    for entry in std::fs::read_dir("/proc").unwrap().filter_map(Result::ok) {
        let Ok(status) = std::fs::read_to_string(entry.path().join("status")) else { continue };
        // "Uid:\treal\teffective\tsaved\tfs"
        if let Some(euid) = status.lines().find_map(|l| l.strip_prefix("Uid:")?.split_whitespace().nth(1)?.parse().ok())
        {
            uids.push(euid);
        }
    }
    uids.sort();
    uids.dedup();
    uids
}
