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
    /// Events that went through the pipeline to the sinks.
    pub written: AtomicU64,
    /// Events the `[filters]` rules kept from the sinks (by choice: not a loss).
    pub filtered: AtomicU64,
    /// Events dropped by `[limits] rate_per_second`.
    pub rate_limited: AtomicU64,
    /// Kernel-to-sink latency of the events written.
    pub latency: Latency,
    /// Resource use when events started to flow: the CPU time reported is what ksense used
    /// after that (loading the probes, a one-off cost, is not charged to the events).
    pub baseline: Usage,
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
    /// See [`SinkStats::queue_full`].
    pub queue_full: u64,
    /// See [`SinkStats::failed`].
    pub failed: u64,
    /// See [`SinkStats::rejected`].
    pub rejected: u64,
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
            written: self.written.load(Relaxed),
            filtered: self.filtered.load(Relaxed),
            rate_limited: self.rate_limited.load(Relaxed),
            latency: self.latency.summary(),
            usage: Usage::now().since(&self.baseline),
            ring_lost,
            sinks: sinks
                .iter()
                .map(|(name, s)| SinkSnapshot {
                    name,
                    delivered: s.delivered.load(Relaxed),
                    queue_full: s.queue_full.load(Relaxed),
                    failed: s.failed.load(Relaxed),
                    rejected: s.rejected.load(Relaxed),
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
    /// See [`Counters::written`].
    pub written: u64,
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
}

impl Snapshot {
    /// Every event lost before the sinks (an event a sink loses is counted by that sink),
    /// rate-limited ones included; filtered ones are not lost, they were not wanted.
    pub fn lost(&self) -> u64 {
        self.ring_lost.total() + self.decode_errors + self.rate_limited
    }

    /// Records the sinks dropped or could not deliver, all sinks together.
    pub fn sink_lost(&self) -> u64 {
        self.sinks.iter().map(|s| s.queue_full + s.failed + s.rejected).sum()
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
            " decode_errors={} rate_limited={} filtered={}",
            self.decode_errors, self.rate_limited, self.filtered
        )?;
        for s in &self.sinks {
            write!(
                f,
                " sink_{0}_delivered={1} sink_{0}_queue_full={2} sink_{0}_failed={3} sink_{0}_rejected={4} sink_{0}_retries={5}",
                s.name, s.delivered, s.queue_full, s.failed, s.rejected, s.retries
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
/// been handed to every sink, in log-spaced microsecond buckets: recording is one atomic add,
/// with no allocation and no lock on the event path. For a sink that queues (OTLP) "handed"
/// means queued for export; journald, file and stdout have written the event by then.
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
