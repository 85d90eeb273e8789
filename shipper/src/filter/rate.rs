//! `[limits] rate_per_second`: a token bucket per event kind and effective uid (burst = one
//! second's worth), so one user's storm of events uses up that user's budget, not everyone's.
//! Module loads and W^X memory changes ([`Event::is_critical`]) are never limited.
use std::{collections::HashMap, time::Instant};

use ksense_abi::EventKind;

use crate::{event::Event, lru::LruMap};

/// Buckets kept at most; a new (kind, uid) beyond it makes room by forgetting the bucket used
/// longest ago, never everyone's. Only that (kind, uid) notices, and only if it comes back: it
/// starts over with a full second's worth, as a newcomer does. So a user with many uids cannot
/// refill another user's spent budget, nor its own storm's, while they stay in use: it would
/// take 4,096 (kind, uid) budgets used more recently.
pub const BUCKETS_CAP: usize = 4096;

/// Per-kind rates and per-(kind, uid) token buckets.
#[derive(Debug)]
pub struct RateLimiter {
    rates: HashMap<EventKind, f64>,
    buckets: LruMap<(EventKind, u32), Bucket>,
}

#[derive(Debug)]
struct Bucket {
    tokens: f64,
    refilled: Instant,
}

impl RateLimiter {
    /// Limits from `[limits] rate_per_second` (event name -> events/s per uid; validated at load).
    pub fn new(rates: &std::collections::BTreeMap<String, u32>) -> RateLimiter {
        let rates = EventKind::ALL.into_iter().filter_map(|kind| Some((kind, f64::from(*rates.get(kind.name())?)))).collect();
        RateLimiter { rates, buckets: LruMap::new(BUCKETS_CAP) }
    }

    /// Whether `event` may pass now.
    pub fn admit(&mut self, event: &Event) -> bool {
        let kind = event.kind();
        let Some(&rate) = self.rates.get(&kind) else { return true };
        if event.is_critical() {
            return true;
        }
        let now = Instant::now();
        let bucket = self.buckets.get_or_insert_with((kind, event.process.euid), || Bucket { tokens: rate, refilled: now });
        bucket.tokens = (bucket.tokens + now.duration_since(bucket.refilled).as_secs_f64() * rate).min(rate);
        bucket.refilled = now;
        if bucket.tokens >= 1.0 {
            bucket.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        kinds::{Detail, fork::ProcessFork, memory::ProcessMemoryProtect},
        process::Process,
    };
    use ksense_abi::Hook;

    fn event(euid: u32, detail: Detail, hook: Hook) -> Event {
        let now = std::time::SystemTime::now();
        let process = Process { pid: 9, tid: 9, euid, ..Process::default() };
        Event { seq: 1, time: now, observed_time: now, hook, process, detail }
    }

    fn fork_by(euid: u32) -> Event {
        event(euid, Detail::Fork(ProcessFork { clone_flags: 0, code_start: 0, code_end: 0, parent_start_ns: 0 }), Hook::TpBtfTaskNewtask)
    }

    fn memory_change_by(euid: u32, new_prot: u32) -> Event {
        let change = ProcessMemoryProtect {
            operation: crate::kinds::memory::Operation::Mprotect,
            start: 0x1000,
            len: 4096,
            count: 1,
            old_prot: Some(3),
            new_prot,
            region: Some(ksense_abi::memory::Region::Anonymous),
            result: Some(0),
            file: None,
            spans_mappings: false,
        };
        event(euid, Detail::MemoryProtect(change), Hook::TracepointMprotect)
    }

    #[test]
    fn limits_only_listed_kinds() {
        let mut limiter = RateLimiter::new(&[("process.fork".to_owned(), 10)].into());
        let passed = (0..100).filter(|_| limiter.admit(&fork_by(0))).count();
        assert!((10..=11).contains(&passed), "{passed}");
        assert!((0..100).all(|_| limiter.admit(&memory_change_by(0, 1))));
    }

    /// One user's storm leaves another user's budget whole.
    #[test]
    fn each_uid_has_its_own_budget() {
        let mut limiter = RateLimiter::new(&[("process.fork".to_owned(), 10)].into());
        let storm = (0..1000).filter(|_| limiter.admit(&fork_by(65534))).count();
        assert!(storm <= 11, "{storm}");
        let other = (0..10).filter(|_| limiter.admit(&fork_by(1000))).count();
        assert_eq!(other, 10);
    }

    #[test]
    fn wx_changes_are_never_limited() {
        let mut limiter = RateLimiter::new(&[("process.memory.protect".to_owned(), 1)].into());
        assert!((0..100).all(|_| limiter.admit(&memory_change_by(65534, 5))), "RW -> RX");
        assert_eq!((0..100).filter(|_| limiter.admit(&memory_change_by(65534, 1))).count(), 1, "RW -> R");
    }

    /// New uids beyond the cap push out the buckets used longest ago, not everyone's: a storm
    /// that goes on while the table overflows many times over never gets its budget back.
    #[test]
    fn the_bucket_table_is_bounded_and_never_starts_over() {
        let mut limiter = RateLimiter::new(&[("process.fork".to_owned(), 10)].into());
        let spent = (0..20).filter(|_| limiter.admit(&fork_by(65534))).count();
        assert_eq!(spent, 10);
        let (mut storm, started) = (0, Instant::now());
        for uid in 0..10 * BUCKETS_CAP as u32 {
            limiter.admit(&fork_by(uid));
            storm += usize::from(limiter.admit(&fork_by(65534)));
        }
        assert!(limiter.buckets.len() <= BUCKETS_CAP);
        // What the storm gets back is what its rate refills while the loop runs, not a fresh
        // burst of 10 each time the table fills up (9 times here).
        let refilled = (started.elapsed().as_secs_f64() * 10.0).ceil() as usize;
        assert!(storm <= refilled + 1, "{storm} passed, {refilled} refilled");
    }
}
