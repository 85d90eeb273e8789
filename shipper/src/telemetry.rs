//! ksense's own counters: every event read, written, or dropped anywhere, so no loss is silent.
//!
//! Losses in the kernel (ring buffer full) are counted per CPU by the probes and summed by
//! [`crate::attach::Probes::ring_lost`]; every other drop is counted here.
use std::{
    fmt,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering::Relaxed},
    },
};

use ksense_abi::EventKind;

/// Counters shared by the reader and the pipeline.
#[derive(Debug, Default)]
pub struct Counters {
    /// Records read from the ring buffer.
    pub read: AtomicU64,
    /// Records rejected by the decoder.
    pub decode_errors: AtomicU64,
    /// Events dropped because the queue to the sinks was full.
    pub queue_full: AtomicU64,
    /// Events that went through the pipeline to the sinks.
    pub written: AtomicU64,
    /// Events the `[filters]` rules kept from the sinks (by choice: not a loss).
    pub filtered: AtomicU64,
    /// Events dropped by `[limits] rate_per_second`.
    pub rate_limited: AtomicU64,
    /// Each sink's own counters, in the order the sinks were created.
    sinks: Mutex<Vec<(&'static str, Arc<SinkStats>)>>,
}

/// One sink's counters. A sink that queues (OTLP) counts its own queue overflows, retries and
/// failed deliveries; for the others the pipeline counts failed writes.
#[derive(Debug, Default)]
pub struct SinkStats {
    /// Records delivered.
    pub delivered: AtomicU64,
    /// Records dropped because the sink's queue was full.
    pub queue_full: AtomicU64,
    /// Records that could not be delivered (after retries, where the sink retries).
    pub failed: AtomicU64,
    /// Delivery attempts that were retried.
    pub retries: AtomicU64,
}

/// A point-in-time copy of one sink's counters.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct SinkSnapshot {
    /// Sink name.
    pub name: &'static str,
    /// See [`SinkStats::delivered`].
    pub delivered: u64,
    /// See [`SinkStats::queue_full`].
    pub queue_full: u64,
    /// See [`SinkStats::failed`].
    pub failed: u64,
    /// See [`SinkStats::retries`].
    pub retries: u64,
}

impl Counters {
    /// Adds one to `counter`.
    pub fn bump(counter: &AtomicU64) {
        counter.fetch_add(1, Relaxed);
    }

    /// The counters of the sink called `name` (the same ones again when a reload recreates it).
    pub fn register_sink(&self, name: &'static str) -> Arc<SinkStats> {
        let mut sinks = self.sinks.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((_, stats)) = sinks.iter().find(|(n, _)| *n == name) {
            return stats.clone();
        }
        let stats = Arc::new(SinkStats::default());
        sinks.push((name, stats.clone()));
        stats
    }

    /// The counters now, with the kernel's ring-buffer losses per kind.
    pub fn snapshot(&self, ring_lost: RingLost) -> Snapshot {
        let sinks = self.sinks.lock().unwrap_or_else(|e| e.into_inner());
        Snapshot {
            read: self.read.load(Relaxed),
            decode_errors: self.decode_errors.load(Relaxed),
            queue_full: self.queue_full.load(Relaxed),
            written: self.written.load(Relaxed),
            filtered: self.filtered.load(Relaxed),
            rate_limited: self.rate_limited.load(Relaxed),
            ring_lost,
            sinks: sinks
                .iter()
                .map(|(name, s)| SinkSnapshot {
                    name,
                    delivered: s.delivered.load(Relaxed),
                    queue_full: s.queue_full.load(Relaxed),
                    failed: s.failed.load(Relaxed),
                    retries: s.retries.load(Relaxed),
                })
                .collect(),
        }
    }
}

/// Events the probes could not write to the ring buffer, per kind.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct RingLost(pub [u64; EventKind::ALL.len()]);

impl RingLost {
    /// Lost events of `kind`.
    pub fn of(&self, kind: EventKind) -> u64 {
        self.0[kind as usize - 1]
    }

    /// All lost events.
    pub fn total(&self) -> u64 {
        self.0.iter().sum()
    }
}

/// A point-in-time copy of every counter.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Snapshot {
    /// See [`Counters::read`].
    pub read: u64,
    /// See [`Counters::decode_errors`].
    pub decode_errors: u64,
    /// See [`Counters::queue_full`].
    pub queue_full: u64,
    /// See [`Counters::written`].
    pub written: u64,
    /// See [`Counters::filtered`].
    pub filtered: u64,
    /// See [`Counters::rate_limited`].
    pub rate_limited: u64,
    /// Kernel-side losses.
    pub ring_lost: RingLost,
    /// Per sink.
    pub sinks: Vec<SinkSnapshot>,
}

impl Snapshot {
    /// Every event lost before the sinks (an event a sink loses is counted by that sink),
    /// rate-limited ones included; filtered ones are not lost, they were not wanted.
    pub fn lost(&self) -> u64 {
        self.ring_lost.total() + self.decode_errors + self.queue_full + self.rate_limited
    }

    /// Records the sinks dropped or could not deliver, all sinks together.
    pub fn sink_lost(&self) -> u64 {
        self.sinks.iter().map(|s| s.queue_full + s.failed).sum()
    }
}

impl fmt::Display for Snapshot {
    /// `key=value` pairs, stable names a script can parse.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "events_read={} events_written={} lost_total={}", self.read, self.written, self.lost())?;
        write!(f, " lost_ring_buffer={}", self.ring_lost.total())?;
        for kind in EventKind::ALL {
            write!(f, " lost_ring_buffer_{}={}", kind.name().replace('.', "_"), self.ring_lost.of(kind))?;
        }
        write!(
            f,
            " lost_queue_full={} decode_errors={} rate_limited={} filtered={}",
            self.queue_full, self.decode_errors, self.rate_limited, self.filtered
        )?;
        for s in &self.sinks {
            write!(
                f,
                " sink_{0}_delivered={1} sink_{0}_queue_full={2} sink_{0}_failed={3} sink_{0}_retries={4}",
                s.name, s.delivered, s.queue_full, s.failed, s.retries
            )?;
        }
        Ok(())
    }
}

/// Says, at most once per call, what was lost since the previous call.
#[derive(Debug, Default)]
pub struct LossReporter {
    last: Snapshot,
}

impl LossReporter {
    /// Logs a warning if anything was lost since the last report.
    pub fn report(&mut self, now: Snapshot) {
        let lost = |s: &Snapshot| s.lost() + s.sink_lost();
        if lost(&now) > lost(&self.last) {
            tracing::warn!(lost_since_last_report = lost(&now) - lost(&self.last), "events were lost: {now}");
        }
        self.last = now;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn snapshot_line_names_every_loss() {
        let counters = Counters::default();
        Counters::bump(&counters.queue_full);
        let sink = counters.register_sink("otlp");
        Counters::bump(&sink.queue_full);
        let line = counters.snapshot(RingLost([1, 2, 3, 0, 0])).to_string();
        assert!(line.contains("lost_total=7"), "{line}");
        assert!(line.contains("lost_ring_buffer_process_exit=3"), "{line}");
        assert!(line.contains("lost_queue_full=1"), "{line}");
        assert!(line.contains("sink_otlp_queue_full=1"), "{line}");
    }
}
