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

/// Runs until the queue is closed and empty, or a sink's reader went away (broken pipe); then
/// closes every sink (which delivers what it still holds).
pub fn run(queue: mpsc::Receiver<Event>, enricher: Enricher, mut sinks: Vec<(Box<dyn Sink>, Arc<SinkStats>)>, counters: Arc<Counters>) {
    feed(queue, enricher, &mut sinks, &counters);
    for (sink, _) in &mut sinks {
        sink.close();
    }
}

fn feed(mut queue: mpsc::Receiver<Event>, mut enricher: Enricher, sinks: &mut [(Box<dyn Sink>, Arc<SinkStats>)], counters: &Counters) {
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
                    Counters::bump(&stats.failed);
                    tracing::warn!(sink = sink.name(), "could not write an event: {e}");
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
    }
}
