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
/// with, the queue may never run dry; the bound keeps sinks flushed and lets a SIGHUP reload
/// take effect within one batch instead of waiting for a quiet moment that may never come.
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

/// Runs until the queue is closed and empty, or a sink's reader went away (broken pipe); then
/// closes every sink (which delivers what it still holds). New [`Outputs`] arriving on
/// `reloads` (SIGHUP) replace the current ones between two batches: the old sinks are closed,
/// so they deliver what they hold, and no event is lost in the switch.
pub fn run(queue: mpsc::Receiver<Event>, enricher: Enricher, mut outputs: Outputs, reloads: std::sync::mpsc::Receiver<Outputs>, counters: Arc<Counters>) {
    feed(queue, enricher, &mut outputs, &reloads, &counters);
    close(&mut outputs.sinks);
}

fn close(sinks: &mut Sinks) {
    for (sink, _) in sinks.iter_mut() {
        sink.close();
    }
}

fn feed(
    mut queue: mpsc::Receiver<Event>,
    mut enricher: Enricher,
    outputs: &mut Outputs,
    reloads: &std::sync::mpsc::Receiver<Outputs>,
    counters: &Counters,
) {
    while let Some(first) = queue.blocking_recv() {
        let mut next = Some(first);
        let mut handled = 0;
        while let Some(mut event) = next {
            handled += 1;
            next = if handled < MAX_BATCH { queue.try_recv().ok() } else { None };
            if !outputs.limiter.admit(event.kind()) {
                Counters::bump(&counters.rate_limited);
                continue;
            }
            // Enrich before filtering: path and container rules need what enrichment adds.
            enricher.enrich(&mut event);
            if !outputs.filter.allows(&event.process) {
                Counters::bump(&counters.filtered);
                continue;
            }
            let record = event.to_record();
            for (sink, stats) in outputs.sinks.iter_mut() {
                if let Err(e) = sink.write(&record) {
                    if e.kind() == io::ErrorKind::BrokenPipe {
                        // Whoever read our output is gone (`ksense run | head`): a normal end.
                        return;
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
        }
        for (sink, _) in outputs.sinks.iter_mut() {
            if let Err(e) = sink.flush() {
                if e.kind() == io::ErrorKind::BrokenPipe {
                    return;
                }
                tracing::warn!(sink = sink.name(), "could not flush: {e}");
            }
        }
        if let Some(new) = reloads.try_iter().last() {
            close(&mut outputs.sinks);
            *outputs = new;
            let names: Vec<&str> = outputs.sinks.iter().map(|(s, _)| s.name()).collect();
            tracing::info!(sinks = ?names, "filters and sinks reloaded");
        }
    }
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
            detail: Detail::Fork(ProcessFork { clone_flags: 0, code_start: 0, code_end: 0 }),
        }
    }

    /// A queue that never runs dry (here: three batches waiting at once) still gets its sinks
    /// flushed and a pending reload applied after one batch, not only when the load stops.
    #[test]
    fn a_queue_that_never_runs_dry_still_flushes_and_reloads_after_a_batch() {
        let (tx, rx) = mpsc::channel(3 * MAX_BATCH);
        for seq in 0..3 * MAX_BATCH as u64 {
            tx.try_send(fork(seq)).unwrap();
        }
        drop(tx);
        let (old, new) = (Recorder::default(), Recorder::default());
        let (reload_tx, reload_rx) = std::sync::mpsc::channel();
        reload_tx.send(outputs(&new)).unwrap();
        let proc_root = std::env::temp_dir().join("ksense-pipeline-test-no-proc");
        let enricher = Enricher::new(proc_root.clone(), proc_root.join("passwd"));
        let counters = Arc::new(Counters::starting_now());

        run(rx, enricher, outputs(&old), reload_rx, counters.clone());

        assert_eq!(*old.written.lock().unwrap(), MAX_BATCH, "the old sinks had one batch");
        assert_eq!(*old.flushed_at.lock().unwrap(), [MAX_BATCH, MAX_BATCH], "flushed after it, and at close");
        assert_eq!(*new.written.lock().unwrap(), 2 * MAX_BATCH, "the reloaded sinks had the rest");
        assert_eq!(*new.flushed_at.lock().unwrap(), [MAX_BATCH, 2 * MAX_BATCH, 2 * MAX_BATCH]);
        assert_eq!(counters.written.load(std::sync::atomic::Ordering::Relaxed), 3 * MAX_BATCH as u64);
    }
}
