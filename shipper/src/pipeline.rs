//! The stages after the reader, on their own thread: enrich -> sinks. Records are flushed
//! whenever the queue runs dry, or after [`MAX_BATCH`] events if it never does, so output is
//! prompt when idle and batched under load.
use std::{io, sync::Arc};

use tokio::sync::mpsc;

use crate::{
    enrich::Enricher,
    event::Event,
    filter::{Filter, rate::RateLimiter},
    sinks::Sink,
    telemetry::{Counters, SinkStats},
};

/// A set of sinks with their counters.
pub type Sinks = Vec<(Box<dyn Sink>, Arc<SinkStats>)>;

/// The most events handled between two flushes. Under a load the pipeline only just keeps up
/// with, the queue may never run dry; the bound keeps sinks flushed all the same.
pub const MAX_BATCH: usize = 1024;

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
/// a configuration reloaded by SIGHUP. Riding the same queue, a reload wakes an idle pipeline
/// at once, and applies to exactly the events queued after it.
// Nearly every item is an event: boxing events to shrink the rare reload would allocate per event.
#[allow(clippy::large_enum_variant)]
pub enum Input {
    /// An event from the ring buffer.
    Event(Event),
    /// New filters, rate limits and sinks for every event after this one.
    Reload(Box<Outputs>),
}

/// Runs until the queue is closed and empty, or a sink's reader went away (broken pipe); then
/// closes every sink (which delivers what it still holds). An [`Input::Reload`] replaces the
/// current [`Outputs`]: the old sinks are closed first, so they deliver what they hold, and no
/// event is lost in the switch.
pub fn run(queue: mpsc::Receiver<Input>, enricher: Enricher, mut outputs: Outputs, counters: Arc<Counters>) {
    feed(queue, enricher, &mut outputs, &counters);
    close(&mut outputs.sinks);
}

fn close(sinks: &mut Sinks) {
    for (sink, _) in sinks.iter_mut() {
        sink.close();
    }
}

/// A sink's reader went away (`ksense run | head`): a normal end, not a failure.
struct ReaderGone;

fn feed(mut queue: mpsc::Receiver<Input>, mut enricher: Enricher, outputs: &mut Outputs, counters: &Counters) {
    while let Some(first) = queue.blocking_recv() {
        let mut next = Some(first);
        let mut handled = 0;
        while let Some(input) = next {
            handled += 1;
            next = if handled < MAX_BATCH { queue.try_recv().ok() } else { None };
            let outcome = match input {
                Input::Event(event) => ship(event, &mut enricher, outputs, counters),
                Input::Reload(new) => {
                    close(&mut outputs.sinks);
                    *outputs = *new;
                    let names: Vec<&str> = outputs.sinks.iter().map(|(s, _)| s.name()).collect();
                    tracing::info!(sinks = ?names, "filters and sinks reloaded");
                    Ok(())
                }
            };
            if outcome.is_err() {
                return;
            }
        }
        if flush(&mut outputs.sinks).is_err() {
            return;
        }
    }
}

/// Enriches, filters and writes one event to every sink.
fn ship(mut event: Event, enricher: &mut Enricher, outputs: &mut Outputs, counters: &Counters) -> Result<(), ReaderGone> {
    if !outputs.limiter.admit(&event) {
        Counters::bump(&counters.rate_limited);
        return Ok(());
    }
    // Enrich before filtering: path and container rules need what enrichment adds.
    enricher.enrich(&mut event);
    if !outputs.filter.allows(&event) {
        Counters::bump(&counters.filtered);
        return Ok(());
    }
    let record = event.to_record();
    for (sink, stats) in outputs.sinks.iter_mut() {
        if let Err(e) = sink.write(&record) {
            if e.kind() == io::ErrorKind::BrokenPipe {
                return Err(ReaderGone);
            }
            // Counted, and reported with the other losses every few seconds; the sink
            // itself says once when its backend goes away and when it is back.
            Counters::bump(&stats.failed);
            tracing::debug!(sink = sink.name(), "could not write an event: {e}");
        }
    }
    Counters::bump(&counters.written);
    // A kernel time stamp a little ahead of this clock reads as zero latency.
    let latency = std::time::SystemTime::now().duration_since(event.time).unwrap_or_default();
    counters.latency.record(latency.as_micros() as u64);
    Ok(())
}

fn flush(sinks: &mut Sinks) -> Result<(), ReaderGone> {
    for (sink, _) in sinks.iter_mut() {
        if let Err(e) = sink.flush() {
            if e.kind() == io::ErrorKind::BrokenPipe {
                return Err(ReaderGone);
            }
            tracing::warn!(sink = sink.name(), "could not flush: {e}");
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use ksense_abi::Hook;

    use super::*;
    use crate::{
        decode::fork::ProcessFork,
        event::{Detail, Process},
        record::LogRecord,
    };

    /// Counts what it is given: records written, and how many were written before each flush.
    #[derive(Clone, Default)]
    struct Recorder {
        written: Arc<Mutex<usize>>,
        flushed_at: Arc<Mutex<Vec<usize>>>,
    }

    impl Sink for Recorder {
        fn name(&self) -> &'static str {
            "recorder"
        }
        fn write(&mut self, _: &LogRecord) -> io::Result<()> {
            *self.written.lock().unwrap() += 1;
            Ok(())
        }
        fn flush(&mut self) -> io::Result<()> {
            self.flushed_at.lock().unwrap().push(*self.written.lock().unwrap());
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

    fn fork(seq: u64) -> Event {
        Event {
            seq,
            time: std::time::SystemTime::now(),
            observed_time: std::time::SystemTime::now(),
            hook: Hook::TpBtfTaskNewtask,
            process: Process { pid: u32::MAX - 1, tid: u32::MAX - 1, parent_pid: u32::MAX - 2, ..Process::default() },
            detail: Detail::Fork(ProcessFork { clone_flags: 0, code_start: 0, code_end: 0, parent_task: (0, 0) }),
        }
    }

    fn pipeline_on(queue: mpsc::Receiver<Input>, sink: &Recorder) -> Arc<Counters> {
        let proc_root = std::env::temp_dir().join("ksense-pipeline-test-no-proc");
        let enricher = Enricher::new(proc_root.clone(), proc_root.join("passwd"), None);
        let counters = Arc::new(Counters::starting_now());
        run(queue, enricher, outputs(sink), counters.clone());
        counters
    }

    /// A queue that never runs dry (here: three batches waiting at once) still has its sinks
    /// flushed after every batch, not only when the load stops.
    #[test]
    fn a_queue_that_never_runs_dry_is_flushed_after_every_batch() {
        let (tx, rx) = mpsc::channel(3 * MAX_BATCH);
        for seq in 0..3 * MAX_BATCH as u64 {
            tx.try_send(Input::Event(fork(seq))).unwrap();
        }
        drop(tx);
        let sink = Recorder::default();
        let counters = pipeline_on(rx, &sink);
        assert_eq!(*sink.written.lock().unwrap(), 3 * MAX_BATCH);
        assert_eq!(*sink.flushed_at.lock().unwrap(), [MAX_BATCH, 2 * MAX_BATCH, 3 * MAX_BATCH, 3 * MAX_BATCH], "after each batch, and at close");
        assert_eq!(counters.written.load(std::sync::atomic::Ordering::Relaxed), 3 * MAX_BATCH as u64);
    }

    /// The events queued before a reload go to the old sinks, which are closed (so flushed)
    /// before any event goes to the new ones; the events after it go to the new sinks.
    #[test]
    fn a_reload_applies_to_the_events_queued_after_it() {
        let (old, new) = (Recorder::default(), Recorder::default());
        let (tx, rx) = mpsc::channel(16);
        (0..5).for_each(|seq| tx.try_send(Input::Event(fork(seq))).unwrap());
        tx.try_send(Input::Reload(Box::new(outputs(&new)))).unwrap();
        (5..12).for_each(|seq| tx.try_send(Input::Event(fork(seq))).unwrap());
        drop(tx);
        pipeline_on(rx, &old);
        assert_eq!((*old.written.lock().unwrap(), old.flushed_at.lock().unwrap().clone()), (5, vec![5]));
        assert_eq!((*new.written.lock().unwrap(), new.flushed_at.lock().unwrap().clone()), (7, vec![7, 7]));
    }

    /// With no event coming, a reload still takes effect at once (the old sinks are closed).
    #[test]
    fn a_reload_wakes_an_idle_pipeline() {
        let (old, new) = (Recorder::default(), Recorder::default());
        let (tx, rx) = mpsc::channel(16);
        let pipeline = std::thread::spawn({
            let old = old.clone();
            move || pipeline_on(rx, &old)
        });
        tx.try_send(Input::Reload(Box::new(outputs(&new)))).unwrap();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while old.flushed_at.lock().unwrap().is_empty() {
            assert!(std::time::Instant::now() < deadline, "the idle pipeline never applied the reload");
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        drop(tx);
        pipeline.join().unwrap();
        assert_eq!(*old.flushed_at.lock().unwrap(), [0], "the old sinks were closed once, at the reload");
    }
}
