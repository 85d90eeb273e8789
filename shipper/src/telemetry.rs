//! ksense's own counters: every event read, written, or dropped anywhere, so no loss is silent.
//!
//! Losses in the kernel (ring buffer full) are counted per CPU by the probes and summed by
//! `Probes::ring_lost` (when the run loop asks: this module reads no map); every other drop is counted here.
use std::{
    fmt,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering::Relaxed},
    },
};

use ksense_abi::EventKind;

use crate::{
    budget::Budget,
    loss::{Cause, KindCounts, LossKey},
};

/// Counters shared by the reader and the pipeline.
#[derive(Debug, Default)]
pub struct Counters {
    /// Records read from the ring buffer.
    pub read: AtomicU64,
    /// Records rejected by the decoder.
    pub decode_errors: AtomicU64,
    /// Events that went through the pipeline to the sinks.
    pub written: AtomicU64,
    /// Events the `[filters]` rules kept from the sinks (by choice: not a loss).
    pub filtered: AtomicU64,
    /// Events dropped by `[limits] rate_per_second`, per kind.
    pub rate_limited: KindCounts,
    /// ksense's own records (`ksense.loss`, `ksense.status`) handed to the sinks: with
    /// `written`, what every sink was offered.
    pub own_records: AtomicU64,
    /// The last `ksense.event.seq` given to an event read from the kernel (ksense's own records
    /// carry it too, to say where in the stream they were written).
    pub seq: AtomicU64,
    /// One more per input the pipeline handles: the watchdog sees it move.
    pub heartbeat: AtomicU64,
    /// Kernel-to-sink latency of the events written.
    pub latency: Latency,
    /// Resource use when events started to flow: the CPU time reported is what ksense used
    /// after that (loading the probes, a one-off cost, is not charged to the events).
    pub baseline: Usage,
    /// Each sink's own counters, in the order the sinks were created.
    sinks: Mutex<Vec<(&'static str, Arc<SinkStats>)>>,
}

/// One sink's counters, and the memory it holds. The sink's queue (sinks::queue) counts the
/// records it drops, per kind, and the writes that fail; a sink with a queue of its own (OTLP)
/// counts what that drops or cannot deliver in the plain counters, where the kind is no longer
/// known. A total is the plain counter plus the per-kind ones.
#[derive(Debug, Default)]
pub struct SinkStats {
    /// Records delivered.
    pub delivered: AtomicU64,
    /// Records dropped because the sink's queue was full (kind unknown).
    pub queue_full: AtomicU64,
    /// Records dropped because the sink's queue was full, per kind.
    pub queue_full_by_kind: KindCounts,
    /// Records that could not be delivered (after retries, where the sink retries; kind unknown).
    pub failed: AtomicU64,
    /// Records that could not be written, per kind.
    pub failed_by_kind: KindCounts,
    /// Records dropped because the sink's share of the memory budget was used up (kind unknown).
    pub memory_budget: AtomicU64,
    /// Records dropped because the sink's share of the memory budget was used up, per kind.
    pub memory_budget_by_kind: KindCounts,
    /// The bytes the sink holds (its queue, and what it keeps itself), against its share of
    /// `[limits] memory_budget_bytes`.
    pub held: Arc<Budget>,
    /// Records the backend refused for good: an answer that retrying cannot change (a
    /// non-retryable status, records a partial success names as rejected, a record larger
    /// than a request may be).
    pub rejected: AtomicU64,
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
    /// See [`SinkStats::queue_full`], with the per-kind counts.
    pub queue_full: u64,
    /// See [`SinkStats::failed`], with the per-kind counts.
    pub failed: u64,
    /// See [`SinkStats::rejected`].
    pub rejected: u64,
    /// See [`SinkStats::memory_budget`], with the per-kind counts.
    pub memory_budget: u64,
    /// See [`SinkStats::retries`].
    pub retries: u64,
}

impl Counters {
    /// Zeroed counters whose CPU time starts now ([`Counters::baseline`]).
    pub fn starting_now() -> Counters {
        Counters { baseline: Usage::now(), ..Counters::default() }
    }

    /// Adds one to `counter`.
    pub fn bump(counter: &AtomicU64) {
        counter.fetch_add(1, Relaxed);
    }

    /// The next `ksense.event.seq`, for an event read from the kernel.
    pub fn next_seq(&self) -> u64 {
        self.seq.fetch_add(1, Relaxed) + 1
    }

    /// The last `ksense.event.seq` given.
    pub fn last_seq(&self) -> u64 {
        self.seq.load(Relaxed)
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

    /// The counters now, with the kernel's ring-buffer losses per kind. Each loss counter is
    /// read once, and both the totals and [`Snapshot::losses`] come from that read.
    pub fn snapshot(&self, ring_lost: RingLost) -> Snapshot {
        let sinks = self.sinks.lock().unwrap_or_else(|e| e.into_inner());
        let mut losses = Losses::default();
        losses.per_kind(Cause::RingBuffer, None, ring_lost.0);
        let rate_limited = losses.per_kind(Cause::RateLimited, None, self.rate_limited.read());
        let sink_snapshots: Vec<SinkSnapshot> = sinks
            .iter()
            .map(|(name, s)| {
                let sink = Some(*name);
                let queue_full = losses.per_kind(Cause::QueueFull, sink, s.queue_full_by_kind.read());
                let failed = losses.per_kind(Cause::SinkFailed, sink, s.failed_by_kind.read());
                let memory_budget = losses.per_kind(Cause::MemoryBudget, sink, s.memory_budget_by_kind.read());
                SinkSnapshot {
                    name,
                    delivered: s.delivered.load(Relaxed),
                    queue_full: queue_full + losses.add(Cause::QueueFull, None, sink, s.queue_full.load(Relaxed)),
                    failed: failed + losses.add(Cause::SinkFailed, None, sink, s.failed.load(Relaxed)),
                    rejected: losses.add(Cause::SinkRejected, None, sink, s.rejected.load(Relaxed)),
                    memory_budget: memory_budget + losses.add(Cause::MemoryBudget, None, sink, s.memory_budget.load(Relaxed)),
                    retries: s.retries.load(Relaxed),
                }
            })
            .collect();
        let decode_errors = losses.add(Cause::DecodeError, None, None, self.decode_errors.load(Relaxed));
        Snapshot {
            read: self.read.load(Relaxed),
            decode_errors,
            written: self.written.load(Relaxed),
            own_records: self.own_records.load(Relaxed),
            filtered: self.filtered.load(Relaxed),
            rate_limited,
            latency: self.latency.summary(),
            usage: Usage::now().since(&self.baseline),
            ring_lost,
            sinks: sink_snapshots,
            losses: losses.0,
        }
    }
}

/// Loss counts as a snapshot gathers them, under their keys.
#[derive(Default)]
struct Losses(Vec<(LossKey, u64)>);

impl Losses {
    /// Notes `count` under the key (when not zero) and returns it.
    fn add(&mut self, cause: Cause, kind: Option<EventKind>, sink: Option<&'static str>, count: u64) -> u64 {
        if count > 0 {
            self.0.push((LossKey { cause, kind, sink }, count));
        }
        count
    }

    /// Notes each kind's count and returns their sum.
    fn per_kind(&mut self, cause: Cause, sink: Option<&'static str>, counts: [u64; EventKind::ALL.len()]) -> u64 {
        EventKind::ALL.into_iter().zip(counts).map(|(kind, n)| self.add(cause, Some(kind), sink, n)).sum()
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
    /// See [`Counters::written`].
    pub written: u64,
    /// See [`Counters::own_records`].
    pub own_records: u64,
    /// See [`Counters::filtered`].
    pub filtered: u64,
    /// See [`Counters::rate_limited`].
    pub rate_limited: u64,
    /// Kernel-to-sink latency percentiles.
    pub latency: LatencySummary,
    /// ksense's own CPU time since [`Counters::baseline`], and its peak memory.
    pub usage: Usage,
    /// Kernel-side losses.
    pub ring_lost: RingLost,
    /// Per sink.
    pub sinks: Vec<SinkSnapshot>,
    /// Every loss counter that is not zero, cumulative, under its key (what `ksense.loss`
    /// records report): per cause they add up to the totals above.
    pub losses: Vec<(LossKey, u64)>,
}

impl Snapshot {
    /// Every event lost before the sinks (an event a sink loses is counted by that sink),
    /// rate-limited ones included; filtered ones are not lost, they were not wanted.
    pub fn lost(&self) -> u64 {
        self.ring_lost.total() + self.decode_errors + self.rate_limited
    }

    /// Records the sinks dropped or could not deliver, all sinks together.
    pub fn sink_lost(&self) -> u64 {
        self.sinks.iter().map(|s| s.queue_full + s.failed + s.rejected + s.memory_budget).sum()
    }

    /// Records the sinks dropped because their share of the memory budget was used up.
    pub fn memory_budget(&self) -> u64 {
        self.sinks.iter().map(|s| s.memory_budget).sum()
    }
}

impl fmt::Display for Snapshot {
    /// `key=value` pairs, stable names a script can parse.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "events_read={} events_written={} own_records={} lost_total={}",
            self.read,
            self.written,
            self.own_records,
            self.lost()
        )?;
        write!(f, " lost_ring_buffer={}", self.ring_lost.total())?;
        for kind in EventKind::ALL {
            write!(f, " lost_ring_buffer_{}={}", kind.name().replace('.', "_"), self.ring_lost.of(kind))?;
        }
        write!(
            f,
            " decode_errors={} rate_limited={} filtered={} memory_budget={}",
            self.decode_errors,
            self.rate_limited,
            self.filtered,
            self.memory_budget()
        )?;
        for s in &self.sinks {
            write!(
                f,
                " sink_{0}_delivered={1} sink_{0}_queue_full={2} sink_{0}_failed={3} sink_{0}_rejected={4} \
                 sink_{0}_memory_budget={5} sink_{0}_retries={6}",
                s.name, s.delivered, s.queue_full, s.failed, s.rejected, s.memory_budget, s.retries
            )?;
        }
        let l = &self.latency;
        write!(
            f,
            " latency_p50_us={} latency_p90_us={} latency_p99_us={} latency_max_us={}",
            l.p50_us, l.p90_us, l.p99_us, l.max_us
        )?;
        let u = &self.usage;
        write!(f, " cpu_user_us={} cpu_system_us={} peak_rss_kib={}", u.cpu_user_us, u.cpu_system_us, u.peak_rss_kib)
    }
}

/// Buckets per doubling of the latency: 4 gives percentiles within 19% of the truth.
const SUB_BUCKETS: u32 = 4;
/// Latencies up to 2^40 us (about 12 days) have their own bucket; longer ones share the last.
const LATENCY_BUCKETS: usize = 41 * SUB_BUCKETS as usize;

/// A histogram of how long events took from the kernel (the event's own time stamp) to having
/// been offered to every sink's queue, in log-spaced microsecond buckets: recording is one
/// atomic add, with no allocation and no lock on the event path. Each sink writes from its
/// queue on its own thread, so a sink that is behind adds its own delay after this.
#[derive(Debug)]
pub struct Latency {
    buckets: [AtomicU64; LATENCY_BUCKETS],
    max_us: AtomicU64,
}

impl Default for Latency {
    fn default() -> Self {
        Latency { buckets: std::array::from_fn(|_| AtomicU64::new(0)), max_us: AtomicU64::new(0) }
    }
}

/// Percentiles of [`Latency`], in microseconds (each the upper bound of its bucket).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct LatencySummary {
    /// Median.
    pub p50_us: u64,
    /// 90th percentile.
    pub p90_us: u64,
    /// 99th percentile.
    pub p99_us: u64,
    /// The longest seen.
    pub max_us: u64,
}

impl Latency {
    /// Records one event that took `us` microseconds.
    pub fn record(&self, us: u64) {
        self.buckets[Self::bucket(us)].fetch_add(1, Relaxed);
        self.max_us.fetch_max(us, Relaxed);
    }

    /// The bucket of `us`: below `SUB_BUCKETS` one per value, then `SUB_BUCKETS` per doubling.
    fn bucket(us: u64) -> usize {
        if us < u64::from(SUB_BUCKETS) {
            return us as usize;
        }
        let log = 63 - us.leading_zeros();
        let sub = (us >> (log - SUB_BUCKETS.ilog2())) as u32 - SUB_BUCKETS;
        (((log - SUB_BUCKETS.ilog2() + 1) * SUB_BUCKETS + sub) as usize).min(LATENCY_BUCKETS - 1)
    }

    /// The largest value that falls in bucket `index`.
    fn upper_bound(index: usize) -> u64 {
        let (index, sub_buckets) = (index as u32, SUB_BUCKETS);
        if index < sub_buckets {
            return u64::from(index);
        }
        let log = index / sub_buckets - 1 + sub_buckets.ilog2();
        let sub = u64::from(index % sub_buckets + sub_buckets);
        ((sub + 1) << (log - sub_buckets.ilog2())) - 1
    }

    /// The percentiles so far.
    pub fn summary(&self) -> LatencySummary {
        let counts: Vec<u64> = self.buckets.iter().map(|b| b.load(Relaxed)).collect();
        let total: u64 = counts.iter().sum();
        let max_us = self.max_us.load(Relaxed);
        let percentile = |p: u64| {
            if total == 0 {
                return 0;
            }
            // The smallest bucket holding at least p% of the events (rounded up).
            let rank = (total * p).div_ceil(100);
            let mut seen = 0;
            for (i, n) in counts.iter().enumerate() {
                seen += n;
                if seen >= rank {
                    return Self::upper_bound(i).min(max_us);
                }
            }
            max_us
        };
        LatencySummary { p50_us: percentile(50), p90_us: percentile(90), p99_us: percentile(99), max_us }
    }
}

/// ksense's own resource use: CPU time from `getrusage` (all threads, since start), peak RSS from
/// `VmHWM` in `/proc/self/status`. (Not `ru_maxrss`: after an exec, Linux keeps there the peak of
/// the process before the exec, so ksense started by a large parent would report the parent's.)
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Usage {
    /// CPU time in user mode, microseconds.
    pub cpu_user_us: u64,
    /// CPU time in the kernel on ksense's behalf, microseconds.
    pub cpu_system_us: u64,
    /// Peak resident set size, KiB.
    pub peak_rss_kib: u64,
}

impl Usage {
    /// The usage now (zeros if the kernel will not say).
    pub fn now() -> Usage {
        // SAFETY: getrusage fills the struct it is given; zeroed is a valid rusage.
        let mut r: libc::rusage = unsafe { std::mem::zeroed() };
        if unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut r) } != 0 {
            return Usage::default();
        }
        let us = |t: libc::timeval| t.tv_sec as u64 * 1_000_000 + t.tv_usec as u64;
        Usage { cpu_user_us: us(r.ru_utime), cpu_system_us: us(r.ru_stime), peak_rss_kib: peak_rss_kib().unwrap_or(0) }
    }

    /// The CPU time used since `earlier`; the peak RSS is the one of `self`.
    pub fn since(&self, earlier: &Usage) -> Usage {
        Usage {
            cpu_user_us: self.cpu_user_us.saturating_sub(earlier.cpu_user_us),
            cpu_system_us: self.cpu_system_us.saturating_sub(earlier.cpu_system_us),
            peak_rss_kib: self.peak_rss_kib,
        }
    }
}

/// `VmHWM` of this process, KiB.
fn peak_rss_kib() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    status.lines().find_map(|l| l.strip_prefix("VmHWM:")?.trim().strip_suffix("kB")?.trim().parse().ok())
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
        Counters::bump(&counters.decode_errors);
        let sink = counters.register_sink("otlp");
        Counters::bump(&sink.queue_full);
        let line = counters.snapshot(RingLost([1, 2, 3, 0, 0])).to_string();
        assert!(line.contains("lost_total=7"), "{line}");
        assert!(line.contains("lost_ring_buffer_process_exit=3"), "{line}");
        assert!(line.contains("decode_errors=1"), "{line}");
        assert!(line.contains("sink_otlp_queue_full=1"), "{line}");
        assert!(line.contains(" peak_rss_kib="), "{line}");
        assert!(!line.contains(" peak_rss_kib=0 "), "getrusage reports this test's own memory: {line}");
    }

    #[test]
    fn latency_buckets_cover_every_value_in_order() {
        let mut last = 0;
        for us in (0..100_000).chain([u64::MAX / 2, u64::MAX]) {
            let b = Latency::bucket(us);
            assert!(b >= last, "bucket of {us} went backwards");
            last = b;
            if b < LATENCY_BUCKETS - 1 {
                assert!(us <= Latency::upper_bound(b), "{us} above its bucket's bound {}", Latency::upper_bound(b));
                assert!(b == 0 || us > Latency::upper_bound(b - 1), "{us} belongs to an earlier bucket");
            }
        }
    }

    #[test]
    fn latency_percentiles_are_within_a_bucket_of_the_truth() {
        let latency = Latency::default();
        for us in 1..=1000 {
            latency.record(us);
        }
        let s = latency.summary();
        assert_eq!(s.max_us, 1000);
        for (got, want) in [(s.p50_us, 500), (s.p90_us, 900), (s.p99_us, 990)] {
            assert!(got >= want && got <= want + want / 4, "got {got}, want about {want}");
        }
        assert_eq!(Latency::default().summary(), LatencySummary::default());
    }
}
