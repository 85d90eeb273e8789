//! Kernel timestamps to wall-clock time.
//!
//! `bpf_ktime_get_ns()` and `task->start_time` count CLOCK_MONOTONIC nanoseconds. The offset to
//! CLOCK_REALTIME is sampled when needed (it moves when the wall clock is stepped), so an event
//! gets the wall time it had when it happened, give or take the sampling interval.
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Converts CLOCK_MONOTONIC nanoseconds to wall-clock time.
#[derive(Debug, Clone, Copy)]
pub struct Clock {
    /// CLOCK_REALTIME - CLOCK_MONOTONIC, in ns.
    offset_ns: i128,
}

impl Clock {
    /// Samples the current offset.
    pub fn sample() -> Clock {
        // Read monotonic on both sides of realtime and take the midpoint: the offset is then
        // off by at most half the (sub-microsecond) gap.
        let before = monotonic_ns();
        let real = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_nanos() as i128);
        let after = monotonic_ns();
        Clock { offset_ns: real - (before + after) / 2 }
    }

    /// The wall-clock time of a CLOCK_MONOTONIC timestamp.
    pub fn wall(&self, monotonic_ns: u64) -> SystemTime {
        let ns = self.offset_ns + monotonic_ns as i128;
        if ns <= 0 { UNIX_EPOCH } else { UNIX_EPOCH + Duration::from_nanos(ns as u64) }
    }
}

/// CLOCK_MONOTONIC now, in ns (the clock `bpf_ktime_get_ns` reads).
pub fn monotonic_ns() -> i128 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: valid pointer; CLOCK_MONOTONIC always exists on Linux.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as i128 * 1_000_000_000 + ts.tv_nsec as i128
}

/// RFC 3339 UTC with nanoseconds, e.g. `2026-11-25T16:43:24.123456789Z`.
pub fn rfc3339(t: SystemTime) -> String {
    let d = t.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = d.as_secs();
    let (days, rem) = (secs / 86_400, secs % 86_400);
    let (year, month, day) = civil_from_days(days as i64);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:09}Z",
        rem / 3600,
        rem / 60 % 60,
        rem % 60,
        d.subsec_nanos()
    )
}

/// (year, month, day) of a day count since 1970-01-01 (Howard Hinnant's algorithm).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_known_instants() {
        assert_eq!(rfc3339(UNIX_EPOCH), "1970-01-01T00:00:00.000000000Z");
        let t = UNIX_EPOCH + Duration::new(1_795_624_204, 123_456_789);
        assert_eq!(rfc3339(t), "2026-11-25T16:30:04.123456789Z");
        let leap = UNIX_EPOCH + Duration::from_secs(951_782_400); // 2000-02-29
        assert_eq!(rfc3339(leap), "2000-02-29T00:00:00.000000000Z");
    }

    #[test]
    fn monotonic_now_maps_to_wall_now() {
        let clock = Clock::sample();
        let wall = clock.wall(monotonic_ns() as u64);
        let now = SystemTime::now();
        let diff = now.duration_since(wall).unwrap_or_else(|e| e.duration());
        assert!(diff < Duration::from_millis(50), "{diff:?}");
    }
}
