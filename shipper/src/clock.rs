//! Kernel timestamps to wall-clock time.
//!
//! `bpf_ktime_get_ns()` and `task->start_time` count CLOCK_MONOTONIC nanoseconds. For event
//! times the offset to CLOCK_REALTIME is sampled when needed (it moves when the wall clock is
//! stepped), so an event gets the wall time it had when it happened, give or take the sampling
//! interval. A process's creation time is an identity, not a measurement: it uses one offset,
//! sampled once per run, so every record of one process carries the same
//! `process.creation.time` (a sample's sub-microsecond jitter would otherwise show in its
//! nanoseconds).
use std::{
    sync::OnceLock,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

/// Converts CLOCK_MONOTONIC nanoseconds to wall-clock time.
#[derive(Debug, Clone, Copy)]
pub struct Clock {
    /// CLOCK_REALTIME - CLOCK_MONOTONIC, in ns, as sampled now.
    offset_ns: i128,
    /// The same, as sampled the first time in this run: for creation times.
    run_offset_ns: i128,
}

/// The offset of the first [`Clock::sample`] of this run.
static RUN_OFFSET_NS: OnceLock<i128> = OnceLock::new();

impl Clock {
    /// Samples the current offset (the first call also fixes the run's offset).
    pub fn sample() -> Clock {
        // Read monotonic on both sides of realtime and take the midpoint: the offset is then
        // off by at most half the (sub-microsecond) gap.
        let before = monotonic_ns();
        let real = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_nanos() as i128);
        let after = monotonic_ns();
        let offset_ns = real - (before + after) / 2;
        Clock { offset_ns, run_offset_ns: *RUN_OFFSET_NS.get_or_init(|| offset_ns) }
    }

    /// The wall-clock time of a CLOCK_MONOTONIC timestamp (an event's).
    pub fn wall(&self, monotonic_ns: u64) -> SystemTime {
        wall(self.offset_ns, monotonic_ns)
    }

    /// The wall-clock time a task started (`task->start_time`), with the run's one offset: the
    /// same for every record of the task, whichever sample read it.
    pub fn creation_time(&self, start_ns: u64) -> SystemTime {
        wall(self.run_offset_ns, start_ns)
    }
}

/// `monotonic_ns` plus `offset_ns` as wall-clock time (the epoch for times before it).
fn wall(offset_ns: i128, monotonic_ns: u64) -> SystemTime {
    let ns = offset_ns + monotonic_ns as i128;
    if ns <= 0 { UNIX_EPOCH } else { UNIX_EPOCH + Duration::from_nanos(ns as u64) }
}

/// CLOCK_MONOTONIC now, in ns (the clock `bpf_ktime_get_ns` reads).
pub fn monotonic_ns() -> i128 {
    now_ns(libc::CLOCK_MONOTONIC)
}

/// `clock` now, in ns (CLOCK_MONOTONIC, CLOCK_BOOTTIME: clocks that always exist on Linux).
pub fn now_ns(clock: libc::clockid_t) -> i128 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: valid pointer.
    unsafe { libc::clock_gettime(clock, &mut ts) };
    ts.tv_sec as i128 * 1_000_000_000 + ts.tv_nsec as i128
}

/// RFC 3339 UTC with nanoseconds, e.g. `2026-11-25T16:43:24.123456789Z`.
pub fn rfc3339(t: SystemTime) -> String {
    Rfc3339::new(t).as_str().to_owned()
}

/// [`rfc3339`]'s text in a buffer on the stack: sinks write it per record without allocating.
pub struct Rfc3339 {
    buf: [u8; 48],
    len: usize,
}

impl Rfc3339 {
    /// The text of `t` (the epoch for times before it).
    pub fn new(t: SystemTime) -> Rfc3339 {
        let d = t.duration_since(UNIX_EPOCH).unwrap_or_default();
        let secs = d.as_secs();
        let (days, rem) = (secs / 86_400, secs % 86_400);
        let (year, month, day) = civil_from_days(days as i64);
        let mut text = Rfc3339 { buf: [0; 48], len: 0 };
        // Four digits, more after the year 9999 (as `{year:04}` would).
        let year_digits = (year.max(0) as u64).checked_ilog10().map_or(1, |d| d as usize + 1).max(4);
        text.digits(year.max(0) as u64, year_digits);
        text.push(b'-');
        text.digits(u64::from(month), 2);
        text.push(b'-');
        text.digits(u64::from(day), 2);
        text.push(b'T');
        text.digits(rem / 3600, 2);
        text.push(b':');
        text.digits(rem / 60 % 60, 2);
        text.push(b':');
        text.digits(rem % 60, 2);
        text.push(b'.');
        text.digits(u64::from(d.subsec_nanos()), 9);
        text.push(b'Z');
        text
    }

    /// The text.
    pub fn as_str(&self) -> &str {
        // Only ASCII digits and separators were written.
        std::str::from_utf8(&self.buf[..self.len]).unwrap_or_default()
    }

    fn push(&mut self, b: u8) {
        self.buf[self.len] = b;
        self.len += 1;
    }

    /// `value` as exactly `width` decimal digits, zero-padded (`value` has at most `width`).
    fn digits(&mut self, mut value: u64, width: usize) {
        for slot in self.buf[self.len..self.len + width].iter_mut().rev() {
            *slot = b'0' + (value % 10) as u8;
            value /= 10;
        }
        self.len += width;
    }
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
        let far = UNIX_EPOCH + Duration::new(253_402_300_800, 7); // 10000-01-01
        assert_eq!(rfc3339(far), "10000-01-01T00:00:00.000000007Z");
    }

    #[test]
    fn creation_time_ignores_a_later_sample() {
        let first = Clock::sample();
        // A later sample whose offset moved (jitter, or the wall clock stepped).
        let later = Clock { offset_ns: first.offset_ns + 1_234, ..Clock::sample() };
        let start_ns = monotonic_ns() as u64;
        assert_eq!(rfc3339(first.creation_time(start_ns)), rfc3339(later.creation_time(start_ns)));
        assert_ne!(first.wall(start_ns), later.wall(start_ns), "event times follow the sample");
        let diff = first.creation_time(start_ns).duration_since(first.wall(start_ns)).unwrap_or_else(|e| e.duration());
        assert!(diff < Duration::from_secs(1), "the run's offset is a real one: {diff:?}");
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
