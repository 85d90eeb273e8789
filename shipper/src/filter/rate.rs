//! `[limits] rate_per_second`: a token bucket per event kind (burst = one second's worth).
use std::{collections::HashMap, time::Instant};

use ksense_abi::EventKind;

/// Per-kind token buckets.
#[derive(Debug, Default)]
pub struct RateLimiter {
    buckets: HashMap<EventKind, Bucket>,
}

#[derive(Debug)]
struct Bucket {
    rate: f64,
    tokens: f64,
    refilled: Instant,
}

impl RateLimiter {
    /// Limits from `[limits] rate_per_second` (event name -> events/s; validated at load).
    pub fn new(rates: &std::collections::BTreeMap<String, u32>) -> RateLimiter {
        let buckets = EventKind::ALL
            .into_iter()
            .filter_map(|kind| {
                let rate = f64::from(*rates.get(kind.name())?);
                Some((kind, Bucket { rate, tokens: rate, refilled: Instant::now() }))
            })
            .collect();
        RateLimiter { buckets }
    }

    /// Whether one more event of `kind` may pass now.
    pub fn admit(&mut self, kind: EventKind) -> bool {
        let Some(bucket) = self.buckets.get_mut(&kind) else { return true };
        let now = Instant::now();
        bucket.tokens = (bucket.tokens + now.duration_since(bucket.refilled).as_secs_f64() * bucket.rate).min(bucket.rate);
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

    #[test]
    fn limits_only_listed_kinds() {
        let mut limiter = RateLimiter::new(&[("process.exec".to_owned(), 10)].into());
        let passed = (0..100).filter(|_| limiter.admit(EventKind::Exec)).count();
        assert!((10..=11).contains(&passed), "{passed}");
        assert!((0..100).all(|_| limiter.admit(EventKind::Fork)));
    }
}
