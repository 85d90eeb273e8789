//! The stages after the reader, on their own thread: enrich -> sinks. Records are flushed
//! whenever the queue runs dry, so output is prompt when idle and batched under load.
use std::{io, sync::Arc};

use tokio::sync::mpsc;

use crate::{enrich::Enricher, event::Event, sinks::Sink, telemetry::Counters};

/// Runs until the queue is closed and empty, or a sink's reader went away (broken pipe).
pub fn run(mut queue: mpsc::Receiver<Event>, mut enricher: Enricher, mut sinks: Vec<Box<dyn Sink>>, counters: Arc<Counters>) {
    while let Some(first) = queue.blocking_recv() {
        let mut next = Some(first);
        while let Some(mut event) = next {
            enricher.enrich(&mut event);
            let record = event.to_record();
            let mut delivered = true;
            for sink in &mut sinks {
                if let Err(e) = sink.write(&record) {
                    if e.kind() == io::ErrorKind::BrokenPipe {
                        // Whoever read our output is gone (`ksense run | head`): a normal end.
                        return;
                    }
                    delivered = false;
                    Counters::bump(&counters.sink_errors);
                    tracing::warn!(sink = sink.name(), "could not write an event: {e}");
                }
            }
            if delivered {
                Counters::bump(&counters.written);
            }
            next = queue.try_recv().ok();
        }
        for sink in &mut sinks {
            if let Err(e) = sink.flush() {
                if e.kind() == io::ErrorKind::BrokenPipe {
                    return;
                }
                tracing::warn!(sink = sink.name(), "could not flush: {e}");
            }
        }
    }
}
