//! The stages after the reader, on their own thread: rate limit -> enrich -> filter -> record
//! (the rate limit only decides whether a record is made: the process table follows every fork,
//! exec and exit),
//! then the record is offered to every sink's queue ([`crate::sinks::queue`]), each drained by
//! the sink's own thread: the pipeline never waits on a sink. The pipeline also writes
//! ksense's own records (`ksense.loss`, `ksense.status`: [`crate::loss`]) when the run loop
//! asks, in order with the events, so a report made after the last event counts every loss.
//!
//! An exec whose executable is being hashed ([`crate::identity`]) is held back for at most
//! `[identity] wait_ms`, and everything queued after it waits behind it, so records keep their
//! order and no event waits longer than that for any exec before it.
use std::{
    collections::VecDeque,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering::Relaxed},
    },
    time::Instant,
};

use tokio::sync::mpsc;

use crate::{
    budget::{Charge, record_bytes, sink_share},
    enrich::Enricher,
    event::Event,
    kinds::{Detail, exec::ReportedVariables},
    filter::{Filter, rate::RateLimiter},
    identity::{Identities, IdentitySlot},
    loss::{Ledger, State, Status, loss_record, status_record},
    record::LogRecord,
    sinks::{
        Sinks,
        queue::{Worker, close_all},
    },
    telemetry::{Counters, RingLost},
};

/// What a configuration decides after enrichment: which events pass, how many, and where to.
pub struct Outputs {
    /// `[filters]`.
    pub filter: Filter,
    /// `[limits] rate_per_second`.
    pub limiter: RateLimiter,
    /// The sinks.
    pub sinks: Sinks,
}

/// What the pipeline queue carries: events in the order they were read, and, between them,
/// a configuration reloaded by SIGHUP and the run loop's requests for ksense's own records.
/// Riding the same queue, a reload wakes an idle pipeline at once, and applies to exactly the
/// events queued after it; a report counts every loss of the events queued before it.
// Nearly every item is an event: boxing events to shrink the rare reload would allocate per event.
#[allow(clippy::large_enum_variant)]
pub enum Input {
    /// An event from the ring buffer, with the bytes it holds charged to the memory budget.
    Event(Event, Charge),
    /// New filters, rate limits and sinks for every event after this one.
    Reload(Box<Outputs>),
    /// Report what was lost since the last report (`ksense.loss`), given the kernel's
    /// ring-buffer losses now.
    Losses(RingLost),
    /// Send every sink a `ksense.status` record.
    Status(State, RingLost),
}

/// What the pipeline needs besides its configuration.
pub struct Context {
    /// ksense's counters.
    pub counters: Arc<Counters>,
    /// `<event name>=<probe>` of every attached kind, for `ksense.status`.
    pub probes: Vec<String>,
    /// Records each sink's queue holds (`[limits] queue_events`).
    pub sink_queue_records: usize,
    /// `[limits] memory_budget_bytes`: the sinks share three quarters of it.
    pub memory_budget_bytes: usize,
    /// `[probes] environment`: what an exec reports of its environment.
    pub environment: ReportedVariables,
    /// The executables' identities (`[identity]`); `None` when off.
    pub identities: Option<Identities>,
}

/// The outputs at work: the sinks are running, each on its thread.
struct Running {
    filter: Filter,
    limiter: RateLimiter,
    workers: Vec<Worker>,
}

/// Runs until the queue is closed and empty, or a sink's reader went away (broken pipe); then
/// closes every sink (which delivers what it still holds). An [`Input::Reload`] replaces the
/// current [`Outputs`]: the old sinks are closed first, so they deliver what they hold, and no
/// event is lost in the switch.
pub fn run(mut queue: mpsc::Receiver<Input>, mut enricher: Enricher, outputs: Outputs, mut context: Context) {
    let reader_gone = Arc::new(AtomicBool::new(false));
    let mut running = start(outputs, &context, &reader_gone);
    let mut ledger = Ledger::default();
    // Waiting for a hash or a new input, whichever comes first, takes a timer.
    let timer = tokio::runtime::Builder::new_current_thread().enable_time().build();
    if let Err(e) = &timer
        && context.identities.take().is_some()
    {
        tracing::error!("cannot start the pipeline's timer, executables are not hashed: {e}");
    }
    let mut held = Held::default();
    let mut closed = false;
    loop {
        let woke = match (held.waiting(), &timer) {
            (None, _) if closed => break,
            (Some(deadline), Ok(timer)) => {
                let done = context.identities.as_ref().map(|i| i.done.clone()).unwrap_or_default();
                // Beyond the queue's size, nothing more is taken: events wait in the queue (and
                // then the ring buffer), as when the pipeline is slow.
                let room = !closed && held.inputs.len() < context.sink_queue_records;
                timer.block_on(async {
                    tokio::select! {
                        input = queue.recv(), if room => Some(input),
                        _ = done.notified() => None,
                        _ = tokio::time::sleep_until(deadline.into()) => None,
                    }
                })
            }
            _ => Some(queue.blocking_recv()),
        };
        match woke {
            Some(Some(input)) => {
                Counters::bump(&context.counters.heartbeat);
                held.admit(input, &context, &enricher);
            }
            Some(None) => closed = true,
            None => {}
        }
        let counters = &context.counters;
        while let Some(input) = held.next_ready() {
            match input {
                Input::Event(event, _charge) => ship(event, &mut enricher, &mut running, counters),
                Input::Reload(new) => {
                    close_all(std::mem::take(&mut running.workers));
                    running = start(*new, &context, &reader_gone);
                    let names: Vec<&str> = running.workers.iter().map(Worker::name).collect();
                    tracing::info!(sinks = ?names, "filters and sinks reloaded");
                }
                Input::Losses(ring_lost) => {
                    for (key, count) in ledger.report(&counters.snapshot(ring_lost).losses) {
                        own(loss_record(key, count, counters.last_seq()), &running, counters);
                    }
                }
                Input::Status(state, ring_lost) => {
                    let snapshot = counters.snapshot(ring_lost);
                    let status = Status {
                        state,
                        events_read: snapshot.read,
                        events_written: snapshot.written,
                        lost_total: snapshot.lost() + snapshot.sink_lost(),
                        probes: &context.probes,
                    };
                    own(status_record(&status, counters.last_seq()), &running, counters);
                }
            }
        }
        // A sink's reader went away (`ksense run | head`): a normal end, not a failure.
        if reader_gone.load(Relaxed) {
            break;
        }
    }
    close_all(running.workers);
}

/// The inputs taken from the queue and not handled yet, in order: the first is an exec waiting
/// for its executable's hash (until its deadline), the others wait behind it.
#[derive(Default)]
struct Held {
    /// Each input, and for an exec that waits, its identity slot and until when it waits.
    inputs: VecDeque<(Input, Option<(IdentitySlot, Instant)>)>,
}

impl Held {
    /// Takes `input` in: an exec's environment is picked, its executable located and its
    /// identity asked for (a file not hashed before makes it wait).
    fn admit(&mut self, mut input: Input, context: &Context, enricher: &Enricher) {
        let mut waits = None;
        if let Input::Event(event, _) = &mut input
            && let Detail::Exec(exec) = &mut event.detail
        {
            context.environment.pick(exec);
            enricher.locate_executable(&mut event.process, exec);
            if let Some(identities) = &context.identities
                && let Some(key) = exec.identity_key()
            {
                // Where the file is once the process is gone: the path located, else the one
                // given to execve.
                let path = event.process.exe.as_deref().or(exec.exec_path.as_deref());
                let (slot, wait) = identities.request(key, event.process.pid, path);
                waits = wait.then(|| (slot.clone(), Instant::now() + identities.wait));
                event.process.identity = Some(slot);
            }
        }
        self.inputs.push_back((input, waits));
    }

    /// Until when the first input waits, if it waits.
    fn waiting(&self) -> Option<Instant> {
        self.inputs.front().map(|(_, waits)| waits.as_ref().map_or_else(Instant::now, |(_, deadline)| *deadline))
    }

    /// The first input, unless it waits for a hash not known yet and its deadline is ahead.
    fn next_ready(&mut self) -> Option<Input> {
        let (_, waits) = self.inputs.front()?;
        if let Some((slot, deadline)) = waits
            && slot.get().is_none()
            && Instant::now() < *deadline
        {
            return None;
        }
        self.inputs.pop_front().map(|(input, _)| input)
    }
}

/// Starts a thread per sink of `outputs`, each with its share of the memory budget.
fn start(outputs: Outputs, context: &Context, reader_gone: &Arc<AtomicBool>) -> Running {
    let share = sink_share(context.memory_budget_bytes, outputs.sinks.len());
    let workers = outputs
        .sinks
        .into_iter()
        .filter_map(|(sink, stats)| {
            stats.held.set_limit(share);
            let name = sink.name();
            Worker::start(sink, stats, context.sink_queue_records, reader_gone.clone())
                .inspect_err(|e| tracing::error!(sink = name, "cannot start the sink's thread: {e}"))
                .ok()
        })
        .collect();
    Running { filter: outputs.filter, limiter: outputs.limiter, workers }
}

/// Rate-limits, enriches, filters and offers one event to every sink.
fn ship(mut event: Event, enricher: &mut Enricher, running: &mut Running, counters: &Counters) {
    let kind = event.kind();
    if !running.limiter.admit(&event) {
        // No record, but the process table still follows the process: a later event of it or
        // of its children is described as if this one had passed, and a gone one leaves no entry.
        enricher.track(&mut event);
        counters.rate_limited.add(kind, 1);
        return;
    }
    // Enrich before filtering: path and container rules need what enrichment adds.
    enricher.enrich(&mut event);
    if !running.filter.allows(&event) {
        Counters::bump(&counters.filtered);
        return;
    }
    let record = Arc::new(event.to_record());
    let bytes = record_bytes(&record);
    for worker in &running.workers {
        worker.offer(&record, Some(kind), bytes);
    }
    Counters::bump(&counters.written);
    // A kernel time stamp a little ahead of this clock reads as zero latency.
    let latency = std::time::SystemTime::now().duration_since(event.time).unwrap_or_default();
    counters.latency.record(latency.as_micros() as u64);
}

/// Offers one of ksense's own records to every sink: no rate limit, filter or budget applies.
fn own(record: LogRecord, running: &Running, counters: &Counters) {
    let record = Arc::new(record);
    let bytes = record_bytes(&record);
    for worker in &running.workers {
        worker.offer(&record, None, bytes);
    }
    Counters::bump(&counters.own_records);
}

#[cfg(test)]
mod tests {
    use std::{
        sync::Mutex,
        time::{Duration, Instant},
    };

    use ksense_abi::{EventKind, Hook};

    use super::*;
    use crate::{
        kinds::{exit::ProcessExit, fork::ProcessFork},
        loss::Cause,
        process::Process,
        record::Value,
        schema,
        sinks::Sink,
    };

    /// Keeps every record it is given, and how many it had at each flush.
    #[derive(Clone, Default)]
    struct Recorder {
        records: Arc<Mutex<Vec<LogRecord>>>,
        flushed_at: Arc<Mutex<Vec<usize>>>,
    }

    impl Recorder {
        fn written(&self) -> usize {
            self.records.lock().unwrap().len()
        }
    }

    impl Sink for Recorder {
        fn name(&self) -> &'static str {
            "recorder"
        }
        fn write(&mut self, record: &LogRecord) -> std::io::Result<()> {
            self.records.lock().unwrap().push(record.clone());
            Ok(())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            self.flushed_at.lock().unwrap().push(self.written());
            Ok(())
        }
    }

    fn outputs(sink: &Recorder) -> Outputs {
        Outputs {
            filter: Filter::new(Default::default()),
            limiter: RateLimiter::new(&Default::default()),
            sinks: vec![(Box::new(sink.clone()), Arc::default())],
        }
    }

    fn fork(seq: u64) -> Input {
        let event = Event {
            seq,
            time: std::time::SystemTime::now(),
            observed_time: std::time::SystemTime::now(),
            hook: Hook::TpBtfTaskNewtask,
            process: Process { pid: u32::MAX - 1, tid: u32::MAX - 1, parent_pid: u32::MAX - 2, ..Process::default() },
            detail: Detail::Fork(ProcessFork { clone_flags: 0, code_start: 0, code_end: 0, parent_start_ns: 0 }),
        };
        Input::Event(event, Charge::default())
    }

    fn pipeline_on(queue: mpsc::Receiver<Input>, outputs: Outputs, counters: Arc<Counters>) {
        let proc_root = std::env::temp_dir().join("ksense-pipeline-test-no-proc");
        let enricher = Enricher::new(proc_root.clone(), proc_root.join("passwd"), Default::default());
        let context =
            Context { counters, probes: vec!["process.fork=test".into()], sink_queue_records: 64, memory_budget_bytes: 1 << 20, environment: Default::default(), identities: None };
        run(queue, enricher, outputs, context);
    }

    /// The events queued before a reload go to the old sinks, which are closed (so flushed)
    /// before any event goes to the new ones; the events after it go to the new sinks.
    #[test]
    fn a_reload_applies_to_the_events_queued_after_it() {
        let (old, new) = (Recorder::default(), Recorder::default());
        let (tx, rx) = mpsc::channel(16);
        (0..5).for_each(|seq| tx.try_send(fork(seq)).unwrap());
        tx.try_send(Input::Reload(Box::new(outputs(&new)))).unwrap();
        (5..12).for_each(|seq| tx.try_send(fork(seq)).unwrap());
        drop(tx);
        let counters = Arc::new(Counters::starting_now());
        pipeline_on(rx, outputs(&old), counters.clone());
        assert_eq!((old.written(), old.flushed_at.lock().unwrap().last().copied()), (5, Some(5)));
        assert_eq!((new.written(), new.flushed_at.lock().unwrap().last().copied()), (7, Some(7)));
        assert_eq!(counters.written.load(Relaxed), 12);
    }

    /// With no event coming, a reload still takes effect at once (the old sinks are closed).
    #[test]
    fn a_reload_wakes_an_idle_pipeline() {
        let (old, new) = (Recorder::default(), Recorder::default());
        let (tx, rx) = mpsc::channel(16);
        let pipeline = std::thread::spawn({
            let old = old.clone();
            move || pipeline_on(rx, outputs(&old), Arc::new(Counters::starting_now()))
        });
        tx.try_send(Input::Reload(Box::new(outputs(&new)))).unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        while old.flushed_at.lock().unwrap().is_empty() {
            assert!(Instant::now() < deadline, "the idle pipeline never applied the reload");
            std::thread::sleep(Duration::from_millis(5));
        }
        drop(tx);
        pipeline.join().unwrap();
        assert_eq!(*old.flushed_at.lock().unwrap(), [0], "the old sinks were closed once, at the reload");
    }

    /// Rate-limited events are reported to every sink as `ksense.loss` records that add up to
    /// the counter, once per report, with a final report after the last event; status records
    /// pass a sink's selection of kinds.
    #[test]
    fn losses_and_status_reach_every_sink_and_add_up() {
        let (a, b) = (Recorder::default(), Recorder::default());
        let limits = [("process.fork".to_owned(), 2)].into();
        let outputs = Outputs {
            filter: Filter::new(Default::default()),
            limiter: RateLimiter::new(&limits),
            sinks: vec![(Box::new(a.clone()), Arc::default()), (Box::new(b.clone()), Arc::default())],
        };
        let (tx, rx) = mpsc::channel(64);
        tx.try_send(Input::Status(State::Started, RingLost::default())).unwrap();
        (0..10).for_each(|seq| tx.try_send(fork(seq)).unwrap());
        tx.try_send(Input::Losses(RingLost::default())).unwrap();
        tx.try_send(Input::Losses(RingLost::default())).unwrap();
        (10..15).for_each(|seq| tx.try_send(fork(seq)).unwrap());
        let mut ring = RingLost::default();
        ring.0[EventKind::Exec as usize - 1] = 3;
        tx.try_send(Input::Losses(ring)).unwrap();
        tx.try_send(Input::Status(State::Stopping, ring)).unwrap();
        drop(tx);
        let counters = Arc::new(Counters::starting_now());
        pipeline_on(rx, outputs, counters.clone());

        let rate_limited: u64 = counters.rate_limited.read().iter().sum();
        assert!(rate_limited >= 8, "a limit of 2 a second drops most of 15 events at once: {rate_limited}");
        for sink in [&a, &b] {
            let records = sink.records.lock().unwrap();
            let count_of = |cause: Cause| -> u64 {
                records
                    .iter()
                    .filter(|r| r.event_name == schema::KSENSE_LOSS)
                    .filter(|r| r.attribute(schema::KSENSE_LOSS_CAUSE) == Some(&Value::Str(cause.name().into())))
                    .map(|r| match r.attribute(schema::KSENSE_LOSS_COUNT) {
                        Some(Value::Int(n)) => *n as u64,
                        other => panic!("no count: {other:?}"),
                    })
                    .sum()
            };
            assert_eq!(count_of(Cause::RateLimited), rate_limited, "loss records add up to rate_limited");
            assert_eq!(count_of(Cause::RingBuffer), 3, "and to the ring buffer's losses");
            let losses = records.iter().filter(|r| r.event_name == schema::KSENSE_LOSS).count();
            assert_eq!(losses, 3, "one record per key per report: fork rate-limited twice (the second report had nothing new), exec lost once");
            let states: Vec<&Value> =
                records.iter().filter(|r| r.event_name == schema::KSENSE_STATUS).filter_map(|r| r.attribute(schema::KSENSE_STATUS_STATE)).collect();
            assert_eq!(states, [&Value::Str("started".into()), &Value::Str("stopping".into())]);
            let seqs: Vec<&Value> = records.iter().filter(|r| r.event_name.starts_with("ksense.")).filter_map(|r| r.attribute(schema::KSENSE_EVENT_SEQ)).collect();
            assert_eq!(seqs.len(), 5, "every own record has a ksense.event.seq");
        }
        assert_eq!(counters.own_records.load(Relaxed), 5);
    }

    /// Rate-limited forks and exits still keep the process table in step: every child of a
    /// burst is in it, and once every one has exited, none is (only the parent, read from
    /// /proc, stays).
    #[test]
    fn rate_limited_forks_and_exits_keep_the_process_table_in_step() {
        let proc_root = std::env::temp_dir().join(format!("ksense-pipeline-table-{}", std::process::id()));
        std::fs::create_dir_all(proc_root.join("10")).unwrap();
        std::fs::write(proc_root.join("10/stat"), b"10 (parent) S 1 10 10 0 -1").unwrap();
        let mut enricher = Enricher::new(proc_root.clone(), proc_root.join("passwd"), Default::default());
        let limits = [("process.fork".to_owned(), 1), ("process.exit".to_owned(), 1)].into();
        let outputs = Outputs { filter: Filter::new(Default::default()), limiter: RateLimiter::new(&limits), sinks: Vec::new() };
        let context = Context { counters: Arc::default(), probes: Vec::new(), sink_queue_records: 64, memory_budget_bytes: 1 << 20, environment: Default::default(), identities: None };
        let mut running = start(outputs, &context, &Arc::default());
        let event = |pid: u32, detail: Detail, hook: Hook| Event {
            seq: 0,
            time: std::time::SystemTime::now(),
            observed_time: std::time::SystemTime::now(),
            hook,
            process: Process { pid, tid: pid, parent_pid: 10, ..Process::default() },
            detail,
        };
        let counters = Counters::starting_now();
        for child in 11..=20 {
            let fork = ProcessFork { clone_flags: 0, code_start: 0, code_end: 0, parent_start_ns: 0 };
            ship(event(child, Detail::Fork(fork), Hook::TpBtfTaskNewtask), &mut enricher, &mut running, &counters);
        }
        assert_eq!(counters.rate_limited.read().iter().sum::<u64>(), 9, "all forks but the first are rate limited");
        assert_eq!(enricher.len(), 11, "the parent and its 10 children");
        for child in 11..=20 {
            let exit = ProcessExit { status: 0, process_exit: true };
            ship(event(child, Detail::Exit(exit), Hook::TpBtfSchedProcessExit), &mut enricher, &mut running, &counters);
        }
        assert_eq!(counters.rate_limited.read().iter().sum::<u64>(), 18);
        assert_eq!(enricher.len(), 1, "no entry for a child gone");
        close_all(running.workers);
        std::fs::remove_dir_all(proc_root).unwrap();
    }

    /// An exec whose executable is being hashed is held, and what follows waits behind it: the
    /// records keep their order. Hashed in time, the exec carries the hash; past `wait_ms`
    /// (a worker that never answers) it goes out `pending`, and the events behind it with it.
    #[test]
    fn an_exec_waits_for_its_hash_at_most_wait_ms_and_order_is_kept() {
        use crate::{identity::Identities, kinds::exec::{FileId, ProcessExec}};
        use std::os::unix::fs::MetadataExt;
        let file = std::env::temp_dir().join(format!("ksense-pipeline-identity-{}", std::process::id()));
        std::fs::write(&file, b"the program").unwrap();
        let meta = std::fs::metadata(&file).unwrap();
        let exec = |seq: u64| {
            let detail = ProcessExec {
                exec_path: Some(file.as_os_str().as_encoded_bytes().to_vec()),
                executed_file: Some(FileId::of(&meta)),
                executed_ctime: Some((meta.ctime(), meta.ctime_nsec() as u64)),
                ..ProcessExec::default()
            };
            let process = Process { pid: u32::MAX - 1, tid: u32::MAX - 1, parent_pid: u32::MAX - 2, ..Process::default() };
            let time = std::time::SystemTime::now();
            Input::Event(Event { seq, time, observed_time: time, hook: Hook::TpBtfSchedProcessExec, process, detail: Detail::Exec(detail) }, Charge::default())
        };
        let run_with = |identities: Identities| {
            let sink = Recorder::default();
            let (tx, rx) = mpsc::channel(16);
            tx.try_send(exec(1)).unwrap();
            tx.try_send(fork(2)).unwrap();
            drop(tx);
            let proc_root = std::env::temp_dir().join("ksense-pipeline-test-no-proc");
            let enricher = Enricher::new(proc_root.clone(), proc_root.join("passwd"), Default::default());
            let context = Context {
                counters: Arc::default(),
                probes: Vec::new(),
                sink_queue_records: 64,
                memory_budget_bytes: 1 << 20,
                environment: Default::default(),
                identities: Some(identities),
            };
            let started = Instant::now();
            run(rx, enricher, outputs(&sink), context);
            let records = sink.records.lock().unwrap().clone();
            let seqs: Vec<_> = records.iter().map(|r| r.attribute(schema::KSENSE_EVENT_SEQ).cloned()).collect();
            assert_eq!(seqs, [Some(Value::Int(1)), Some(Value::Int(2))], "in order");
            (records, started.elapsed())
        };
        let sha256 = crate::identity::hex(ring::digest::digest(&ring::digest::SHA256, b"the program").as_ref());
        let hashed = Identities::start(&crate::identity::IdentityConfig { wait_ms: 60_000, ..Default::default() }, "/nonexistent".into()).unwrap();
        let (records, elapsed) = run_with(hashed);
        assert_eq!(records[0].attribute(schema::KSENSE_PROCESS_EXECUTABLE_SHA256), Some(&Value::Str(sha256)), "{:?}", records[0]);
        assert!(elapsed < Duration::from_secs(30), "released when hashed, not at the deadline: {elapsed:?}");

        let (stalled, _queue) = Identities::stalled(Duration::from_millis(50));
        let (records, elapsed) = run_with(stalled);
        let skipped = records[0].attribute(schema::KSENSE_PROCESS_EXECUTABLE_HASH_SKIPPED);
        assert_eq!(skipped, Some(&Value::Str("pending".into())), "{:?}", records[0]);
        assert!(elapsed >= Duration::from_millis(50), "held until the deadline: {elapsed:?}");
        std::fs::remove_file(file).unwrap();
    }
}
