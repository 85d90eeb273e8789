//! The memory budget (`[limits] memory_budget_bytes`): the bytes that events and records may
//! hold while they wait between the reader, the pipeline and the sinks. Sizes are estimated
//! from what each one actually holds (argv, paths, attribute values), so a flood of long
//! command lines fills the budget as fast as it fills memory.
//!
//! A quarter of the budget is for events read and not yet handled by the pipeline: when it is
//! used up the reader pauses and events wait in the ring buffer (nothing is lost there while
//! the ring buffer has room). The other three quarters are shared out equally among the sinks:
//! what a sink holds (records in its queue; for OTLP also the encoded records waiting for
//! export or being exported) is charged to its share, and a record that would go beyond it is dropped for that
//! sink and counted as `memory_budget`. The kernel ring buffer is not part of the budget.
use std::sync::{
    Arc,
    atomic::{AtomicUsize, Ordering::Relaxed},
};

use tokio::sync::Notify;

use crate::{
    event::Event,
    record::{LogRecord, Value},
};

/// The default of `[limits] memory_budget_bytes`.
pub const DEFAULT_BYTES: usize = 24 << 20;

/// The part of the budget for events between the reader and the pipeline: `total` / 4.
pub fn events_share(total: usize) -> usize {
    total / 4
}

/// Each sink's part of the budget: the other three quarters of `total`, split among `sinks`.
pub fn sink_share(total: usize, sinks: usize) -> usize {
    (total - events_share(total)) / sinks.max(1)
}

/// A number of bytes that may be held, and how many are.
#[derive(Debug)]
pub struct Budget {
    limit: AtomicUsize,
    used: AtomicUsize,
    released: Notify,
}

impl Default for Budget {
    /// No limit (until [`Budget::set_limit`]).
    fn default() -> Self {
        Budget::new(usize::MAX)
    }
}

impl Budget {
    /// A budget of `limit` bytes, none used.
    pub fn new(limit: usize) -> Budget {
        Budget { limit: AtomicUsize::new(limit), used: AtomicUsize::new(0), released: Notify::new() }
    }

    /// Changes the limit; what is held already stays charged.
    pub fn set_limit(&self, limit: usize) {
        self.limit.store(limit, Relaxed);
    }

    /// The limit, in bytes.
    pub fn limit(&self) -> usize {
        self.limit.load(Relaxed)
    }

    /// Bytes held now.
    pub fn used(&self) -> usize {
        self.used.load(Relaxed)
    }

    /// Charges `bytes` if they fit under the limit. One item alone always fits (when nothing
    /// else is held), so an item larger than the whole budget cannot wait forever.
    pub fn try_charge(self: &Arc<Self>, bytes: usize) -> Option<Charge> {
        let limit = self.limit.load(Relaxed);
        self.used
            .fetch_update(Relaxed, Relaxed, |used| (used == 0 || used.saturating_add(bytes) <= limit).then(|| used + bytes))
            .ok()?;
        Some(Charge { budget: Some(self.clone()), bytes })
    }

    /// Charges `bytes` whatever the limit: for ksense's own records, which must not be lost
    /// to the budget (they are few, and bounded elsewhere).
    pub fn charge(self: &Arc<Self>, bytes: usize) -> Charge {
        self.used.fetch_add(bytes, Relaxed);
        Charge { budget: Some(self.clone()), bytes }
    }

    /// Returns when bytes are released (at once if some were since the last call returned).
    pub async fn released(&self) {
        self.released.notified().await
    }
}

/// Bytes charged to a [`Budget`], released when this is dropped.
#[derive(Debug, Default)]
pub struct Charge {
    budget: Option<Arc<Budget>>,
    bytes: usize,
}

impl Drop for Charge {
    fn drop(&mut self) {
        if let Some(budget) = &self.budget {
            budget.used.fetch_sub(self.bytes, Relaxed);
            budget.released.notify_one();
        }
    }
}

/// What `event` holds in memory, in bytes (estimated: its own size and its byte strings).
pub fn event_bytes(event: &Event) -> usize {
    let p = &event.process;
    let len = |s: Option<&[u8]>| s.map_or(0, <[u8]>::len);
    let args = p.args.as_ref().map_or(0, |args| args.iter().map(|a| a.len() + size_of::<Vec<u8>>()).sum());
    size_of::<Event>()
        + p.comm.len()
        + len(p.exe.as_deref())
        + args
        + [&p.owner, &p.cgroup, &p.container_id].into_iter().map(|s| s.as_ref().map_or(0, |s| s.len())).sum::<usize>()
        + event.detail.payload().heap_bytes()
}

/// What `record` holds in memory, in bytes (estimated: its own size, body and attribute values).
pub fn record_bytes(record: &LogRecord) -> usize {
    let values: usize = record
        .attributes
        .iter()
        .map(|(_, value)| match value {
            Value::Str(s) => s.len(),
            Value::StrArray(items) => items.iter().map(|s| s.len() + size_of::<String>()).sum(),
            Value::Int(_) | Value::Bool(_) => 0,
        })
        .sum();
    size_of::<LogRecord>() + record.body.len() + record.attributes.capacity() * size_of::<(&str, Value)>() + values
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn charges_up_to_the_limit_and_releases_on_drop() {
        let budget = Arc::new(Budget::new(100));
        let a = budget.try_charge(60).expect("fits");
        assert!(budget.try_charge(41).is_none(), "60 + 41 is over 100");
        let b = budget.try_charge(40).expect("60 + 40 fits exactly");
        assert_eq!(budget.used(), 100);
        drop(a);
        assert_eq!(budget.used(), 40);
        drop(b);
        assert_eq!(budget.used(), 0);
    }

    #[test]
    fn one_item_larger_than_the_budget_fits_alone() {
        let budget = Arc::new(Budget::new(10));
        let big = budget.try_charge(1000).expect("alone, it fits");
        assert!(budget.try_charge(1).is_none());
        drop(big);
        assert_eq!(budget.used(), 0);
    }

    #[test]
    fn own_charges_go_beyond_the_limit() {
        let budget = Arc::new(Budget::new(10));
        let _full = budget.try_charge(10).unwrap();
        let own = budget.charge(5);
        assert_eq!(budget.used(), 15);
        drop(own);
        assert_eq!(budget.used(), 10);
    }

    #[tokio::test]
    async fn a_release_wakes_a_waiter_even_if_it_came_first() {
        let budget = Arc::new(Budget::new(10));
        drop(budget.try_charge(10).unwrap());
        // The release happened before anyone waited: the permit is kept.
        tokio::time::timeout(std::time::Duration::from_secs(5), budget.released()).await.expect("woken");
    }

    #[test]
    fn record_size_grows_with_its_argv() {
        let record = |argv: Vec<String>| LogRecord {
            event_name: "process.exec",
            severity: crate::record::Severity::Info,
            time: std::time::SystemTime::UNIX_EPOCH,
            observed_time: std::time::SystemTime::UNIX_EPOCH,
            body: String::new(),
            attributes: vec![("process.command_args", Value::StrArray(argv))],
        };
        let small = record_bytes(&record(vec!["a".into()]));
        let large = record_bytes(&record(vec!["a".repeat(16 << 10)]));
        assert_eq!(large - small, (16 << 10) - 1);
    }

    #[test]
    fn shares_add_up_to_at_most_the_budget() {
        for sinks in 1..=4 {
            assert!(events_share(DEFAULT_BYTES) + sinks * sink_share(DEFAULT_BYTES, sinks) <= DEFAULT_BYTES);
        }
    }
}
