//! The stages after the reader, on their own thread: enrich -> sinks. Records are flushed
//! whenever the queue runs dry, so output is prompt when idle and batched under load.
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
        while let Some(mut event) = next {
            next = queue.try_recv().ok();
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
