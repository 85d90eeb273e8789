//! ksense's own counters: every event read, written, or dropped anywhere, so no loss is silent.
//!
//! Losses in the kernel (ring buffer full) are counted per CPU by the probes and summed by
//! [`crate::attach::Probes::ring_lost`]; every other drop is counted here.
use std::{
    fmt,
    sync::atomic::{AtomicU64, Ordering::Relaxed},
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
    /// Events handed to every sink.
    pub written: AtomicU64,
    /// Records a sink failed to write.
    pub sink_errors: AtomicU64,
}

impl Counters {
    /// Adds one to `counter`.
    pub fn bump(counter: &AtomicU64) {
        counter.fetch_add(1, Relaxed);
    }

    /// The counters now, with the kernel's ring-buffer losses per kind.
    pub fn snapshot(&self, ring_lost: RingLost) -> Snapshot {
        Snapshot {
            read: self.read.load(Relaxed),
            decode_errors: self.decode_errors.load(Relaxed),
            queue_full: self.queue_full.load(Relaxed),
            written: self.written.load(Relaxed),
            sink_errors: self.sink_errors.load(Relaxed),
            ring_lost,
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
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Snapshot {
    /// See [`Counters::read`].
    pub read: u64,
    /// See [`Counters::decode_errors`].
    pub decode_errors: u64,
    /// See [`Counters::queue_full`].
    pub queue_full: u64,
    /// See [`Counters::written`].
    pub written: u64,
    /// See [`Counters::sink_errors`].
    pub sink_errors: u64,
    /// Kernel-side losses.
    pub ring_lost: RingLost,
}

impl Snapshot {
    /// Every event lost anywhere.
    pub fn lost(&self) -> u64 {
        self.ring_lost.total() + self.decode_errors + self.queue_full + self.sink_errors
    }
}

impl fmt::Display for Snapshot {
    /// `key=value` pairs, stable names a script can parse.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "events_read={} events_written={} lost_total={}", self.read, self.written, self.lost())?;
        write!(f, " lost_ring_buffer={}", self.ring_lost.total())?;
        for kind in EventKind::ALL {
            let name = kind.name().rsplit('.').next().unwrap_or_default();
            write!(f, " lost_ring_buffer_{name}={}", self.ring_lost.of(kind))?;
        }
        write!(
            f,
            " lost_queue_full={} decode_errors={} sink_errors={}",
            self.queue_full, self.decode_errors, self.sink_errors
        )
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
        if now.lost() > self.last.lost() {
            tracing::warn!(
                lost_since_last_report = now.lost() - self.last.lost(),
                "events were lost: {now}"
            );
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
        let line = counters.snapshot(RingLost([1, 2, 3])).to_string();
        assert!(line.contains("lost_total=7"), "{line}");
        assert!(line.contains("lost_ring_buffer_exit=3"), "{line}");
        assert!(line.contains("lost_queue_full=1"), "{line}");
    }
}
