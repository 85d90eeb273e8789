//! ksense's own records in the stream: `ksense.loss`, which tells every sink what was lost
//! (so a backend learns of a gap, not only ksense's log), and `ksense.status`, a heartbeat a
//! backend can alert on when it stops.
//!
//! Every loss is counted under a [`LossKey`] (cause, event kind, sink). The [`Ledger`] turns
//! the counters into `ksense.loss` records: at each report, one per key whose count grew, with
//! the growth. Reports come once per loss interval and once at stop, so there is at most one
//! record per key per interval, and the counts of all records with one cause add up exactly to
//! that cause's counters in the stopped line (both are read from the same counters).
use std::{
    collections::HashMap,
    sync::atomic::{AtomicU64, Ordering::Relaxed},
    time::SystemTime,
};

use ksense_abi::EventKind;

use crate::{
    record::{LogRecord, Severity, Value},
    schema,
};

/// Why something was lost (`ksense.loss.cause`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Cause {
    /// The kernel ring buffer was full (`lost_ring_buffer`).
    RingBuffer,
    /// A sink's queue was full (`sink_<name>_queue_full`).
    QueueFull,
    /// A sink's share of the memory budget was used up (`sink_<name>_memory_budget`).
    MemoryBudget,
    /// `[limits] rate_per_second` (`rate_limited`).
    RateLimited,
    /// A sink could not deliver (`sink_<name>_failed`).
    SinkFailed,
    /// A sink's backend refused for good (`sink_<name>_rejected`).
    SinkRejected,
    /// A record from the kernel did not decode (`decode_errors`).
    DecodeError,
}

impl Cause {
    /// The `ksense.loss.cause` value.
    pub const fn name(self) -> &'static str {
        match self {
            Cause::RingBuffer => "ring_buffer",
            Cause::QueueFull => "queue_full",
            Cause::MemoryBudget => "memory_budget",
            Cause::RateLimited => "rate_limited",
            Cause::SinkFailed => "sink_failed",
            Cause::SinkRejected => "sink_rejected",
            Cause::DecodeError => "decode_error",
        }
    }
}

/// What one loss counter counts: a cause, the kind lost (`None` where the cause cannot tell:
/// `*`), and the sink (`None` for losses before the sinks).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct LossKey {
    /// Why.
    pub cause: Cause,
    /// Which kind, if known.
    pub kind: Option<EventKind>,
    /// Which sink, for sink causes.
    pub sink: Option<&'static str>,
}

/// The `ksense.loss.event_name` of an unknown kind.
pub const ANY_EVENT: &str = "*";

/// A counter per event kind.
#[derive(Debug, Default)]
pub struct KindCounts([AtomicU64; EventKind::ALL.len()]);

impl KindCounts {
    /// Adds `n` to `kind`'s counter.
    pub fn add(&self, kind: EventKind, n: u64) {
        self.0[kind as usize - 1].fetch_add(n, Relaxed);
    }

    /// Every kind's count now.
    pub fn read(&self) -> [u64; EventKind::ALL.len()] {
        std::array::from_fn(|i| self.0[i].load(Relaxed))
    }
}

/// Turns cumulative loss counts into `ksense.loss` records of what grew since the last report.
#[derive(Debug, Default)]
pub struct Ledger {
    reported: HashMap<LossKey, u64>,
}

impl Ledger {
    /// The losses of `counts` (cumulative, per key) not reported yet, as (key, count); each
    /// key at most once. Reported counts are remembered, so the next call gives only growth.
    pub fn report(&mut self, counts: &[(LossKey, u64)]) -> Vec<(LossKey, u64)> {
        let mut new = Vec::new();
        for &(key, total) in counts {
            let reported = self.reported.entry(key).or_default();
            if total > *reported {
                new.push((key, total - *reported));
                *reported = total;
            }
        }
        new
    }
}

/// `ksense.status.state`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    /// Once, when every probe is attached.
    Started,
    /// Every `[telemetry] status_interval_s`.
    Running,
    /// Once, at stop, after the last event.
    Stopping,
}

impl State {
    /// The `ksense.status.state` value.
    pub const fn name(self) -> &'static str {
        match self {
            State::Started => "started",
            State::Running => "running",
            State::Stopping => "stopping",
        }
    }
}

/// The `ksense.loss` record of `count` losses under `key`, numbered `seq`.
pub fn loss_record(key: LossKey, count: u64, seq: u64) -> LogRecord {
    let kind = key.kind.map_or(ANY_EVENT, EventKind::name);
    let mut attributes = vec![
        (schema::EVENT_NAME, Value::Str(schema::KSENSE_LOSS.to_owned())),
        (schema::KSENSE_LOSS_CAUSE, Value::Str(key.cause.name().to_owned())),
        (schema::KSENSE_LOSS_EVENT_NAME, Value::Str(kind.to_owned())),
        (schema::KSENSE_LOSS_COUNT, Value::Int(count as i64)),
    ];
    let body = match key.sink {
        Some(sink) => {
            attributes.push((schema::KSENSE_LOSS_SINK, Value::Str(sink.to_owned())));
            format!("{count} {kind} records lost by the {sink} sink: {}", key.cause.name())
        }
        None => format!("{count} {kind} events lost: {}", key.cause.name()),
    };
    attributes.push((schema::KSENSE_EVENT_SEQ, Value::Int(seq as i64)));
    own_record(schema::KSENSE_LOSS, Severity::Warn, body, attributes)
}

/// What a `ksense.status` record says.
#[derive(Debug, Clone)]
pub struct Status<'a> {
    /// Started, running or stopping.
    pub state: State,
    /// Events read from the kernel since start.
    pub events_read: u64,
    /// Events handed to the sinks since start.
    pub events_written: u64,
    /// Everything lost since start, before and in the sinks.
    pub lost_total: u64,
    /// `<event name>=<probe>` of each attached kind.
    pub probes: &'a [String],
}

/// The `ksense.status` record of `status`, numbered `seq`.
pub fn status_record(status: &Status, seq: u64) -> LogRecord {
    let body = format!(
        "ksense {}: {} events read, {} written, {} lost",
        status.state.name(),
        status.events_read,
        status.events_written,
        status.lost_total
    );
    let int = |v: u64| Value::Int(v as i64);
    let attributes = vec![
        (schema::EVENT_NAME, Value::Str(schema::KSENSE_STATUS.to_owned())),
        (schema::KSENSE_STATUS_STATE, Value::Str(status.state.name().to_owned())),
        (schema::KSENSE_STATUS_EVENTS_READ, int(status.events_read)),
        (schema::KSENSE_STATUS_EVENTS_WRITTEN, int(status.events_written)),
        (schema::KSENSE_STATUS_LOST_TOTAL, int(status.lost_total)),
        (schema::KSENSE_STATUS_PROBES, Value::StrArray(status.probes.to_vec())),
        (schema::KSENSE_EVENT_SEQ, int(seq)),
    ];
    own_record(schema::KSENSE_STATUS, Severity::Info, body, attributes)
}

fn own_record(event_name: &'static str, severity: Severity, body: String, attributes: Vec<(&'static str, Value)>) -> LogRecord {
    let now = SystemTime::now();
    LogRecord { event_name, severity, time: now, observed_time: now, body, attributes }
}

/// Whether `record` is one of ksense's own (`ksense.loss`, `ksense.status`) rather than a
/// kernel event: such records pass every selection, filter, rate limit and budget.
pub fn is_own(record: &LogRecord) -> bool {
    record.event_name == schema::KSENSE_LOSS || record.event_name == schema::KSENSE_STATUS
}

#[cfg(test)]
mod tests {
    use super::*;

    const RING_EXEC: LossKey = LossKey { cause: Cause::RingBuffer, kind: Some(EventKind::Exec), sink: None };
    const OTLP_FULL: LossKey = LossKey { cause: Cause::QueueFull, kind: None, sink: Some("otlp") };

    /// Counts reported over several intervals, then at stop, add up exactly to the counters,
    /// with one record per key per report and none for a key that did not grow.
    #[test]
    fn reports_add_up_exactly_once_per_key() {
        let mut ledger = Ledger::default();
        let mut sums: HashMap<LossKey, u64> = HashMap::new();
        let intervals = [vec![(RING_EXEC, 5)], vec![(RING_EXEC, 5), (OTLP_FULL, 3)], vec![], vec![(RING_EXEC, 12), (OTLP_FULL, 3)]];
        let mut records_per_report = Vec::new();
        for counts in &intervals {
            let report = ledger.report(counts);
            let mut keys: Vec<LossKey> = report.iter().map(|(k, _)| *k).collect();
            keys.dedup();
            assert_eq!(keys.len(), report.len(), "at most one record per key per report");
            records_per_report.push(report.len());
            for (key, n) in report {
                *sums.entry(key).or_default() += n;
            }
        }
        assert_eq!(records_per_report, [1, 1, 0, 1], "only keys that grew are reported");
        assert_eq!(sums[&RING_EXEC], 12);
        assert_eq!(sums[&OTLP_FULL], 3);
        assert!(ledger.report(&[(RING_EXEC, 12), (OTLP_FULL, 3)]).is_empty(), "nothing new, nothing said");
    }

    #[test]
    fn a_loss_record_names_cause_kind_count_and_sink() {
        let record = loss_record(OTLP_FULL, 3, 42);
        assert_eq!((record.event_name, record.severity), ("ksense.loss", Severity::Warn));
        assert_eq!(record.attribute(schema::KSENSE_LOSS_CAUSE), Some(&Value::Str("queue_full".into())));
        assert_eq!(record.attribute(schema::KSENSE_LOSS_EVENT_NAME), Some(&Value::Str("*".into())));
        assert_eq!(record.attribute(schema::KSENSE_LOSS_COUNT), Some(&Value::Int(3)));
        assert_eq!(record.attribute(schema::KSENSE_LOSS_SINK), Some(&Value::Str("otlp".into())));
        assert_eq!(record.attribute(schema::KSENSE_EVENT_SEQ), Some(&Value::Int(42)));
        let ring = loss_record(RING_EXEC, 7, 43);
        assert_eq!(ring.attribute(schema::KSENSE_LOSS_EVENT_NAME), Some(&Value::Str("process.exec".into())));
        assert_eq!(ring.attribute(schema::KSENSE_LOSS_SINK), None);
        assert!(is_own(&ring));
    }

    #[test]
    fn a_status_record_carries_counters_and_probes() {
        let probes = vec!["process.exec=tp_btf/sched_process_exec".to_owned()];
        let status = Status { state: State::Stopping, events_read: 10, events_written: 9, lost_total: 1, probes: &probes };
        let record = status_record(&status, 5);
        assert_eq!((record.event_name, record.severity), ("ksense.status", Severity::Info));
        assert_eq!(record.attribute(schema::KSENSE_STATUS_STATE), Some(&Value::Str("stopping".into())));
        assert_eq!(record.attribute(schema::KSENSE_STATUS_LOST_TOTAL), Some(&Value::Int(1)));
        assert_eq!(record.attribute(schema::KSENSE_STATUS_PROBES), Some(&Value::StrArray(probes.clone())));
        assert!(is_own(&record));
    }
}
