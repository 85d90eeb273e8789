//! The stages after the reader, on their own thread: enrich -> sinks. Records are flushed
//! whenever the queue runs dry, so output is prompt when idle and batched under load.
use std::{io, sync::Arc};

use tokio::sync::mpsc;

use crate::{
    enrich::Enricher,
    event::Event,
    sinks::Sink,
    telemetry::{Counters, SinkStats},
};

/// A set of sinks with their counters.
pub type Sinks = Vec<(Box<dyn Sink>, Arc<SinkStats>)>;

/// Runs until the queue is closed and empty, or a sink's reader went away (broken pipe); then
/// closes every sink (which delivers what it still holds). A new set of sinks arriving on
/// `reloads` (SIGHUP) replaces the current one between two batches: the old sinks are closed,
/// so they deliver what they hold, and no event is lost in the switch.
pub fn run(queue: mpsc::Receiver<Event>, enricher: Enricher, mut sinks: Sinks, reloads: std::sync::mpsc::Receiver<Sinks>, counters: Arc<Counters>) {
    feed(queue, enricher, &mut sinks, &reloads, &counters);
    close(&mut sinks);
}

fn close(sinks: &mut Sinks) {
    for (sink, _) in sinks.iter_mut() {
        sink.close();
    }
}

fn feed(
    mut queue: mpsc::Receiver<Event>,
    mut enricher: Enricher,
    sinks: &mut Sinks,
    reloads: &std::sync::mpsc::Receiver<Sinks>,
    counters: &Counters,
) {
    while let Some(first) = queue.blocking_recv() {
        let mut next = Some(first);
        while let Some(mut event) = next {
            enricher.enrich(&mut event);
            let record = event.to_record();
            for (sink, stats) in sinks.iter_mut() {
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
            next = queue.try_recv().ok();
        }
        for (sink, _) in sinks.iter_mut() {
            if let Err(e) = sink.flush() {
                if e.kind() == io::ErrorKind::BrokenPipe {
                    return;
                }
                tracing::warn!(sink = sink.name(), "could not flush: {e}");
            }
        }
        if let Some(new) = reloads.try_iter().last() {
            close(sinks);
            *sinks = new;
            let names: Vec<&str> = sinks.iter().map(|(s, _)| s.name()).collect();
            tracing::info!(sinks = ?names, "sinks reloaded");
        }
    }
}
