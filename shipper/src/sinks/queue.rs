//! Each sink on its own thread, draining its own bounded queue, so that a sink that blocks (a
//! stdout pipe nobody reads, a slow disk, journald gone) delays only itself. The pipeline
//! offers every record to every sink's queue without waiting: a full queue, or a sink whose
//! share of the memory budget is used up, drops the record for that sink only and counts it
//! (`queue_full`, `memory_budget`, per kind). ksense's own records (`ksense.loss`,
//! `ksense.status`) have a reserve of their own in every queue, outside both bounds, so they
//! cannot be lost to the losses they report.
//!
//! A full queue is shared fairly among the users whose processes the records are about
//! (`process.user.id`): a record of a user that, with it, holds no more than an equal share of
//! the queue's records (or, when the memory share is used up, of its bytes) takes the place of
//! the oldest records of the user holding the most, which are dropped and counted as if they
//! had arrived to a full queue (`queue_full`, or `memory_budget`). So one user's storm fills the queue with its
//! records only while nobody else needs room. Module loads and W^X changes are never the ones
//! dropped to make room.
//!
//! The thread writes records one after the other and flushes the sink when the queue runs dry,
//! or after [`MAX_BATCH`] records if it never does: prompt when idle, batched under load.
use std::{
    collections::{HashMap, VecDeque},
    io,
    sync::{
        Arc, Condvar, Mutex, MutexGuard,
        atomic::{AtomicBool, Ordering::Relaxed},
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

use ksense_abi::EventKind;

use super::Sink;
use crate::{
    budget::Charge,
    record::{LogRecord, Value},
    schema,
    telemetry::SinkStats,
};

/// The most records written between two flushes. Under a load the sink only just keeps up
/// with, the queue may never run dry; the bound keeps it flushed all the same.
pub const MAX_BATCH: usize = 1024;

/// Room in every queue for ksense's own records, beyond `queue_events`.
pub const OWN_RESERVE: usize = 256;

/// How long closing waits for a sink that makes no progress (writes nothing) to deliver what it
/// holds (the OTLP sink retries for up to 5 s of it). A sink still blocked then is left behind
/// and what it held is counted as failed; one that is slow but writing is waited for.
pub const CLOSE_TIMEOUT: Duration = Duration::from_secs(10);

/// One record waiting in a queue.
struct Queued {
    record: Arc<LogRecord>,
    /// Its kind, for the loss counters (`None`: one of ksense's own records).
    kind: Option<EventKind>,
    /// The user it is about, for fairness (`None`: one of ksense's own records, or none said).
    uid: Option<u32>,
    /// A module load or a W^X change: never dropped to make room.
    critical: bool,
    bytes: usize,
    _charge: Charge,
}

/// What one user's records hold in a queue.
#[derive(Debug, Default, Clone, Copy)]
struct Held {
    records: usize,
    bytes: usize,
}

/// Which bound a record is made room under.
#[derive(Clone, Copy)]
enum Bound {
    Records,
    Bytes,
}

impl Held {
    fn of(&self, bound: Bound) -> usize {
        match bound {
            Bound::Records => self.records,
            Bound::Bytes => self.bytes,
        }
    }
}

#[derive(Default)]
struct State {
    records: VecDeque<Queued>,
    /// How many of `records` are ksense's own.
    own: usize,
    /// What each user's records in `records` hold.
    by_uid: HashMap<u32, Held>,
    /// Set by [`Worker::close`]: deliver what is queued, then close the sink.
    closing: bool,
    /// The thread has closed the sink and ended.
    done: bool,
    /// Closing timed out: the thread is left behind and counts nothing more.
    abandoned: bool,
    /// The kind of the record being written now, if one is.
    writing: Option<Option<EventKind>>,
    /// The thread waits for a record: an offer must wake it (and only then, as a wakeup is a
    /// system call).
    idle: bool,
    /// When the thread last finished a write, or closing started if later.
    progressed: Option<Instant>,
}

/// The queue a sink's thread drains.
struct Queue {
    state: Mutex<State>,
    /// Signalled when a record is queued, when closing starts, and when the thread ends.
    changed: Condvar,
    capacity: usize,
    stats: Arc<SinkStats>,
}

impl Queue {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl State {
    fn push(&mut self, queued: Queued) {
        self.own += usize::from(queued.kind.is_none());
        if let Some(uid) = queued.uid {
            let held = self.by_uid.entry(uid).or_default();
            held.records += 1;
            held.bytes += queued.bytes;
        }
        self.records.push_back(queued);
    }

    /// Takes the record at `at` out of the queue.
    fn take(&mut self, at: usize) -> Option<Queued> {
        let queued = self.records.remove(at)?;
        self.own -= usize::from(queued.kind.is_none());
        if let Some(uid) = queued.uid
            && let Some(held) = self.by_uid.get_mut(&uid)
        {
            held.records -= 1;
            held.bytes -= queued.bytes;
            if held.records == 0 {
                self.by_uid.remove(&uid);
            }
        }
        Some(queued)
    }

    /// The user whose oldest records give way to one of `uid` holding `amount` (1 record, or
    /// its bytes) under `bound` of `limit`: with it, `uid` holds no more than an equal share
    /// of `limit` among the users in the queue (itself included), and the user holding the
    /// most, another one, holds more than that share. `None`: the arriving record is the one
    /// dropped.
    fn displaced_for(&self, uid: u32, bound: Bound, limit: usize, amount: usize) -> Option<u32> {
        let mine = self.by_uid.get(&uid).map_or(0, |held| held.of(bound));
        let users = self.by_uid.len() + usize::from(!self.by_uid.contains_key(&uid));
        let share = limit / users.max(1);
        if mine + amount > share {
            return None;
        }
        let (&most, held) = self.by_uid.iter().filter(|(other, _)| **other != uid).max_by_key(|(_, held)| held.of(bound))?;
        (held.of(bound) > share).then_some(most)
    }

    /// Drops the oldest record of `uid` that is not critical, returning its kind and bytes.
    fn drop_oldest_of(&mut self, uid: u32) -> Option<(Option<EventKind>, usize)> {
        let at = self.records.iter().position(|q| q.uid == Some(uid) && !q.critical)?;
        self.take(at).map(|q| (q.kind, q.bytes))
    }
}

/// What happened to a record offered to a sink.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Offered {
    /// Queued.
    Queued,
    /// Dropped and counted: the queue was full.
    QueueFull,
    /// Dropped and counted: the sink's share of the memory budget is used up.
    MemoryBudget,
}

/// A sink running on its own thread.
pub struct Worker {
    name: &'static str,
    queue: Arc<Queue>,
    thread: Option<JoinHandle<()>>,
}

impl Worker {
    /// Starts `sink` on a thread of its own with a queue of `capacity` records (plus
    /// [`OWN_RESERVE`]). A broken pipe (the reader of stdout went away) sets `reader_gone`
    /// and ends the thread.
    pub fn start(
        sink: Box<dyn Sink>,
        stats: Arc<SinkStats>,
        capacity: usize,
        reader_gone: Arc<AtomicBool>,
    ) -> io::Result<Worker> {
        let worker = Worker::queued(sink.name(), stats, capacity);
        worker.run(sink, reader_gone)
    }

    /// A worker with its queue, not yet running (records offered now wait for [`Worker::run`]).
    fn queued(name: &'static str, stats: Arc<SinkStats>, capacity: usize) -> Worker {
        let queue = Arc::new(Queue { state: Mutex::default(), changed: Condvar::new(), capacity, stats });
        Worker { name, queue, thread: None }
    }

    fn run(mut self, sink: Box<dyn Sink>, reader_gone: Arc<AtomicBool>) -> io::Result<Worker> {
        let queue = self.queue.clone();
        self.thread = Some(
            std::thread::Builder::new()
                .name(format!("sink-{}", self.name))
                .spawn(move || drain(sink, &queue, &reader_gone))?,
        );
        Ok(self)
    }

    /// The sink's name.
    pub fn name(&self) -> &'static str {
        self.name
    }

    /// Queues `record` (of `kind`, `None` for ksense's own) without waiting, charging `bytes` to
    /// the sink's share of the memory budget; or drops and counts it. When the queue or the
    /// memory share is full, a record of a user within an equal share takes the place of the
    /// oldest records of the user holding the most (dropped and counted in its stead).
    pub fn offer(&self, record: &Arc<LogRecord>, kind: Option<EventKind>, bytes: usize) -> Offered {
        let stats = &self.queue.stats;
        let mut state = self.queue.lock();
        let uid = match record.attribute(schema::PROCESS_USER_ID) {
            Some(Value::Int(uid)) if kind.is_some() => u32::try_from(*uid).ok(),
            _ => None,
        };
        let charge = match kind {
            None if state.own < OWN_RESERVE => stats.held.charge(bytes),
            None => {
                stats.queue_full.fetch_add(1, Relaxed);
                return Offered::QueueFull;
            }
            Some(kind) => {
                if state.records.len() - state.own >= self.queue.capacity {
                    let most = uid.and_then(|uid| state.displaced_for(uid, Bound::Records, self.queue.capacity, 1));
                    let Some((Some(dropped), _)) = most.and_then(|most| state.drop_oldest_of(most)) else {
                        stats.queue_full_by_kind.add(kind, 1);
                        return Offered::QueueFull;
                    };
                    stats.queue_full_by_kind.add(dropped, 1);
                }
                match self.charge_fairly(&mut state, uid, bytes) {
                    Some(charge) => charge,
                    None => {
                        stats.memory_budget_by_kind.add(kind, 1);
                        return Offered::MemoryBudget;
                    }
                }
            }
        };
        let critical = kind == Some(EventKind::ModuleLoad) || record.attribute(schema::KSENSE_MEMORY_WX) == Some(&Value::Bool(true));
        state.push(Queued { record: record.clone(), kind, uid, critical, bytes, _charge: charge });
        let wake = std::mem::take(&mut state.idle);
        drop(state);
        if wake {
            self.queue.changed.notify_all();
        }
        Offered::Queued
    }

    /// Charges `bytes` of a record of `uid` to the memory share; when it is used up and `uid`
    /// holds no more than an equal share of it with them, the oldest records of the user holding
    /// the most bytes give way (each counted as `memory_budget`), if that makes room: never more.
    fn charge_fairly(&self, state: &mut State, uid: Option<u32>, bytes: usize) -> Option<Charge> {
        let held = &self.queue.stats.held;
        if let Some(charge) = held.try_charge(bytes) {
            return Some(charge);
        }
        let most = state.displaced_for(uid?, Bound::Bytes, held.limit(), bytes)?;
        let needed = (held.used() + bytes).saturating_sub(held.limit());
        let evictable: usize = state.records.iter().filter(|q| q.uid == Some(most) && !q.critical).map(|q| q.bytes).sum();
        if evictable < needed {
            return None;
        }
        let mut freed = 0;
        while freed < needed
            && let Some((kind, dropped)) = state.drop_oldest_of(most)
        {
            if let Some(kind) = kind {
                self.queue.stats.memory_budget_by_kind.add(kind, 1);
            }
            freed += dropped;
        }
        held.try_charge(bytes)
    }

    /// Starts closing: the thread delivers what is queued, closes the sink and ends.
    pub fn start_closing(&self) {
        let mut state = self.queue.lock();
        if !state.closing {
            state.closing = true;
            state.progressed = Some(Instant::now());
        }
        drop(state);
        self.queue.changed.notify_all();
    }

    /// Waits until the thread has closed the sink, or has made no progress for `patience`; a
    /// sink still blocked then is left behind, and what it held (queued, and the record it is
    /// writing) counts as failed.
    pub fn finish(mut self, patience: Duration) {
        self.start_closing();
        let mut state = self.queue.lock();
        while !state.done {
            let since = state.progressed.unwrap_or_else(Instant::now);
            let left = (since + patience).saturating_duration_since(Instant::now());
            if left.is_zero() {
                break;
            }
            state = self.queue.changed.wait_timeout(state, left).unwrap_or_else(|e| e.into_inner()).0;
        }
        if !state.done {
            state.abandoned = true;
            let stats = &self.queue.stats;
            let writing = state.writing.take();
            let held: Vec<Option<EventKind>> = state.records.drain(..).map(|q| q.kind).chain(writing).collect();
            for kind in &held {
                match kind {
                    Some(kind) => stats.failed_by_kind.add(*kind, 1),
                    None => {
                        stats.failed.fetch_add(1, Relaxed);
                    }
                }
            }
            tracing::warn!(
                sink = self.name,
                records = held.len(),
                "the sink made no progress for {patience:?} while closing: what it held is counted as failed"
            );
            // The thread is blocked in the sink: it is left behind, detached.
            drop(self.thread.take());
            return;
        }
        drop(state);
        if let Some(thread) = self.thread.take()
            && thread.join().is_err()
        {
            tracing::error!(sink = self.name, "the sink's thread panicked");
        }
    }
}

/// Closes `workers`: all start closing at once, then each is waited for while it makes
/// progress (a blocked one for [`CLOSE_TIMEOUT`] at most, all of them in the same 10 s).
pub fn close_all(workers: Vec<Worker>) {
    workers.iter().for_each(Worker::start_closing);
    workers.into_iter().for_each(|w| w.finish(CLOSE_TIMEOUT));
}

/// What the thread does next.
enum Step {
    Write(Queued),
    Flush,
    Close,
}

/// The sink's thread: writes what is queued, flushes when the queue runs dry or after a
/// batch, closes the sink when told to and the queue is empty.
fn drain(mut sink: Box<dyn Sink>, queue: &Queue, reader_gone: &AtomicBool) {
    let mut unflushed = 0;
    loop {
        let step = {
            let mut state = queue.lock();
            loop {
                if let Some(queued) = state.take(0) {
                    state.writing = Some(queued.kind);
                    break Step::Write(queued);
                }
                if unflushed > 0 {
                    break Step::Flush;
                }
                if state.closing {
                    break Step::Close;
                }
                state.idle = true;
                state = queue.changed.wait(state).unwrap_or_else(|e| e.into_inner());
            }
        };
        let result = match step {
            Step::Write(queued) => {
                let result = sink.write(&queued.record);
                let mut state = queue.lock();
                state.writing = None;
                if state.closing {
                    state.progressed = Some(Instant::now());
                }
                if state.abandoned {
                    return;
                }
                if let Err(e) = &result
                    && e.kind() != io::ErrorKind::BrokenPipe
                {
                    match queued.kind {
                        Some(kind) => queue.stats.failed_by_kind.add(kind, 1),
                        None => {
                            queue.stats.failed.fetch_add(1, Relaxed);
                        }
                    }
                }
                unflushed += 1;
                if result.is_ok() && unflushed >= MAX_BATCH {
                    unflushed = 0;
                    drop(state);
                    sink.flush()
                } else {
                    result
                }
            }
            Step::Flush => {
                unflushed = 0;
                sink.flush()
            }
            Step::Close => {
                sink.close();
                break;
            }
        };
        match result {
            Err(e) if e.kind() == io::ErrorKind::BrokenPipe => {
                reader_gone.store(true, Relaxed);
                break;
            }
            // Counted (a write), and reported with the other losses every few seconds; the
            // sink itself says once when its backend goes away and when it is back.
            Err(e) => tracing::debug!(sink = sink.name(), "could not write or flush: {e}"),
            Ok(()) => {}
        }
    }
    queue.lock().done = true;
    queue.changed.notify_all();
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::Ordering::Relaxed;

    /// Counts what it is given: records written, and how many were written before each flush;
    /// `blocked` holds every write until it is cleared; each write takes `delay`.
    #[derive(Clone, Default)]
    struct Recorder {
        written: Arc<Mutex<usize>>,
        flushed_at: Arc<Mutex<Vec<usize>>>,
        blocked: Arc<AtomicBool>,
        delay: Duration,
    }

    impl Sink for Recorder {
        fn name(&self) -> &'static str {
            "recorder"
        }
        fn write(&mut self, _: &LogRecord) -> io::Result<()> {
            while self.blocked.load(Relaxed) {
                std::thread::sleep(Duration::from_millis(1));
            }
            std::thread::sleep(self.delay);
            *self.written.lock().unwrap() += 1;
            Ok(())
        }
        fn flush(&mut self) -> io::Result<()> {
            self.flushed_at.lock().unwrap().push(*self.written.lock().unwrap());
            Ok(())
        }
    }

    fn record() -> Arc<LogRecord> {
        Arc::new(crate::loss::loss_record(
            crate::loss::LossKey { cause: crate::loss::Cause::RingBuffer, kind: None, sink: None },
            1,
            1,
        ))
    }

    /// A queue that never runs dry (here: three batches waiting at once) still has its sink
    /// flushed after every batch, not only when the load stops.
    #[test]
    fn a_queue_that_never_runs_dry_is_flushed_after_every_batch() {
        let stats = Arc::new(SinkStats::default());
        let worker = Worker::queued("recorder", stats.clone(), 3 * MAX_BATCH);
        let record = record();
        for _ in 0..3 * MAX_BATCH {
            assert_eq!(worker.offer(&record, Some(EventKind::Fork), 100), Offered::Queued);
        }
        worker.start_closing();
        let sink = Recorder::default();
        let worker = worker.run(Box::new(sink.clone()), Arc::default()).unwrap();
        worker.finish(CLOSE_TIMEOUT);
        assert_eq!(*sink.written.lock().unwrap(), 3 * MAX_BATCH);
        assert_eq!(*sink.flushed_at.lock().unwrap(), [MAX_BATCH, 2 * MAX_BATCH, 3 * MAX_BATCH, 3 * MAX_BATCH], "after each batch, and at close");
        assert_eq!(stats.held.used(), 0, "every record's bytes are released once written");
    }

    /// A full queue drops for its sink and counts per kind; the reserve still takes ksense's
    /// own records; the memory share drops and counts too.
    #[test]
    fn a_full_queue_drops_and_counts_but_keeps_room_for_own_records() {
        let stats = Arc::new(SinkStats::default());
        let worker = Worker::queued("recorder", stats.clone(), 2);
        let record = record();
        assert_eq!(worker.offer(&record, Some(EventKind::Exec), 10), Offered::Queued);
        assert_eq!(worker.offer(&record, Some(EventKind::Exec), 10), Offered::Queued);
        assert_eq!(worker.offer(&record, Some(EventKind::Exec), 10), Offered::QueueFull);
        assert_eq!(stats.queue_full_by_kind.read()[EventKind::Exec as usize - 1], 1);
        for _ in 0..OWN_RESERVE {
            assert_eq!(worker.offer(&record, None, 10), Offered::Queued, "the reserve takes own records");
        }
        assert_eq!(worker.offer(&record, None, 10), Offered::QueueFull, "the reserve is bounded too");
        assert_eq!(stats.queue_full.load(Relaxed), 1);

        let stats = Arc::new(SinkStats::default());
        stats.held.set_limit(100);
        let worker = Worker::queued("recorder", stats.clone(), 100);
        assert_eq!(worker.offer(&record, Some(EventKind::Exec), 60), Offered::Queued);
        assert_eq!(worker.offer(&record, Some(EventKind::Exec), 60), Offered::MemoryBudget);
        assert_eq!(stats.memory_budget_by_kind.read()[EventKind::Exec as usize - 1], 1);
        assert_eq!(worker.offer(&record, None, 60), Offered::Queued, "own records are not lost to the budget");
        assert_eq!(stats.held.used(), 120);
    }

    /// A sink that never returns from a write is left behind at close, within the timeout,
    /// and what it held counts as failed.
    #[test]
    fn a_blocked_sink_is_left_behind_at_close_and_its_records_fail() {
        let stats = Arc::new(SinkStats::default());
        let sink = Recorder::default();
        sink.blocked.store(true, Relaxed);
        let worker = Worker::start(Box::new(sink.clone()), stats.clone(), 10, Arc::default()).unwrap();
        let record = record();
        for _ in 0..3 {
            worker.offer(&record, Some(EventKind::Exit), 10);
        }
        let started = Instant::now();
        worker.finish(Duration::from_millis(300));
        assert!(started.elapsed() < Duration::from_secs(5));
        assert_eq!(stats.failed_by_kind.read()[EventKind::Exit as usize - 1], 3, "the one being written and the two queued");
        sink.blocked.store(false, Relaxed);
    }

    /// A sink that is slow but writing is waited for at close, however long it takes in all.
    #[test]
    fn a_slow_sink_that_makes_progress_is_waited_for() {
        let stats = Arc::new(SinkStats::default());
        let sink = Recorder { delay: Duration::from_millis(20), ..Recorder::default() };
        let worker = Worker::start(Box::new(sink.clone()), stats.clone(), 20, Arc::default()).unwrap();
        let record = record();
        for _ in 0..20 {
            worker.offer(&record, Some(EventKind::Exit), 10);
        }
        // 400 ms of writes in all, never 100 ms without one.
        worker.finish(Duration::from_millis(100));
        assert_eq!(*sink.written.lock().unwrap(), 20);
        assert_eq!(stats.failed_by_kind.read(), [0; EventKind::ALL.len()]);
    }

    /// A record about `uid`'s process, of `kind`; W^X when `wx`.
    fn record_of(uid: u32, kind: EventKind, wx: bool) -> Arc<LogRecord> {
        let mut attributes = vec![(schema::PROCESS_USER_ID, Value::Int(i64::from(uid)))];
        if wx {
            attributes.push((schema::KSENSE_MEMORY_WX, Value::Bool(true)));
        }
        let now = std::time::SystemTime::now();
        Arc::new(LogRecord {
            event_name: kind.name(),
            severity: crate::record::Severity::Info,
            time: now,
            observed_time: now,
            body: String::new(),
            attributes,
        })
    }

    /// The users whose records are queued, oldest first.
    fn queued_uids(worker: &Worker) -> Vec<Option<u32>> {
        worker.queue.lock().records.iter().map(|q| q.uid).collect()
    }

    /// In a queue full of one user's records, another user's record takes the place of the
    /// oldest of them (counted as queue_full), up to an equal share; then that user's own
    /// records are the ones dropped. A W^X change is never the one that gives way.
    #[test]
    fn a_full_queue_makes_room_for_a_user_below_an_equal_share() {
        let stats = Arc::new(SinkStats::default());
        let worker = Worker::queued("recorder", stats.clone(), 4);
        assert_eq!(worker.offer(&record_of(65534, EventKind::MemoryProtect, true), Some(EventKind::MemoryProtect), 10), Offered::Queued);
        for _ in 0..3 {
            assert_eq!(worker.offer(&record_of(65534, EventKind::Exec, false), Some(EventKind::Exec), 10), Offered::Queued);
        }
        assert_eq!(worker.offer(&record_of(65534, EventKind::Exec, false), Some(EventKind::Exec), 10), Offered::QueueFull, "the storm's own record is dropped");
        for _ in 0..2 {
            assert_eq!(worker.offer(&record_of(0, EventKind::Exit, false), Some(EventKind::Exit), 10), Offered::Queued, "root is below its share");
        }
        assert_eq!(worker.offer(&record_of(0, EventKind::Exit, false), Some(EventKind::Exit), 10), Offered::QueueFull, "root has its equal share");
        assert_eq!(queued_uids(&worker), [Some(65534), Some(65534), Some(0), Some(0)]);
        assert!(worker.queue.lock().records[0].critical, "the W^X change stayed");
        let full = stats.queue_full_by_kind.read();
        assert_eq!((full[EventKind::Exec as usize - 1], full[EventKind::Exit as usize - 1]), (3, 1), "one storm record arrived to a full queue, two gave way");
        assert_eq!(stats.held.used(), 40, "the bytes of those that gave way are released");
    }

    /// When the memory share is used up by one user's records, another user's record takes the
    /// place of as many of the oldest of them as it needs (counted as memory_budget), not more.
    #[test]
    fn a_used_up_memory_share_makes_room_for_a_user_below_an_equal_share() {
        let stats = Arc::new(SinkStats::default());
        stats.held.set_limit(100);
        let worker = Worker::queued("recorder", stats.clone(), 100);
        for _ in 0..3 {
            assert_eq!(worker.offer(&record_of(65534, EventKind::Exec, false), Some(EventKind::Exec), 30), Offered::Queued);
        }
        assert_eq!(worker.offer(&record_of(65534, EventKind::Exec, false), Some(EventKind::Exec), 30), Offered::MemoryBudget);
        assert_eq!(worker.offer(&record_of(0, EventKind::Exec, false), Some(EventKind::Exec), 45), Offered::Queued);
        assert_eq!(queued_uids(&worker), [Some(65534), Some(0)], "two of the storm's records made room for 45 bytes");
        assert_eq!(stats.memory_budget_by_kind.read()[EventKind::Exec as usize - 1], 3);
        assert_eq!(stats.held.used(), 75);
        assert_eq!(worker.offer(&record_of(0, EventKind::Exec, false), Some(EventKind::Exec), 45), Offered::MemoryBudget, "root is at its share");
    }
}
