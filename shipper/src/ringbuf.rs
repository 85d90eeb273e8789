//! The one reader of the kernel ring buffer: wait for readiness with epoll (no busy polling),
//! drain every record, then clear readiness (the pattern aya documents for `RingBuf`).
//!
//! Each record gets the next `ksense.event.seq`, is decoded and handed to the pipeline queue.
//! A record that does not decode is counted and dropped. When the queue is full, or the events
//! in it hold their whole share of the memory budget ([`crate::budget`]), the reader pauses and
//! leaves the records in the ring buffer: the ring buffer is where events wait, and what no
//! longer fits there is counted by the probes, per kind. Nothing already read is ever dropped.
use std::{io, sync::Arc, time::SystemTime};

use aya::maps::{MapData, RingBuf};
use tokio::{io::unix::AsyncFd, sync::mpsc};

use crate::{
    budget::{Budget, event_bytes},
    clock::Clock,
    decode::decode,
    event::Event,
    pipeline::Input,
    telemetry::Counters,
};

/// Whether the pipeline still takes events.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flow {
    /// Keep reading.
    Continue,
    /// The pipeline is gone (e.g. stdout closed): stop.
    Stop,
}

/// Reads the ring buffer into the pipeline queue.
pub struct Reader {
    ring: AsyncFd<RingBuf<MapData>>,
    out: Output,
}

/// What the reader hands events to (apart from the ring buffer, so both can be borrowed at once).
struct Output {
    queue: mpsc::Sender<Input>,
    counters: Arc<Counters>,
    /// The events' share of the memory budget.
    budget: Arc<Budget>,
    /// A decoded event the queue or the budget could not take yet; it goes before any other.
    pending: Option<Event>,
}

impl Reader {
    /// A reader of `ring` feeding `queue`, the events in it holding at most `budget`.
    pub fn new(
        ring: RingBuf<MapData>,
        queue: mpsc::Sender<Input>,
        counters: Arc<Counters>,
        budget: Arc<Budget>,
    ) -> io::Result<Reader> {
        // SAFETY: the AsyncFd owns the RingBuf, which owns the fd: it stays open while registered.
        let ring = unsafe { AsyncFd::register(ring) }?;
        Ok(Reader { ring, out: Output { queue, counters, budget, pending: None } })
    }

    /// Waits until the kernel signals records (and the queue and budget have room), then reads
    /// until the ring buffer is empty or the queue or budget is full. Cancel-safe: if dropped
    /// while waiting, nothing is lost.
    pub async fn wait_and_drain(&mut self) -> io::Result<Flow> {
        if self.out.send_pending().await == Flow::Stop {
            return Ok(Flow::Stop);
        }
        let mut guard = self.ring.readable_mut().await?;
        let (flow, emptied) = self.out.read(guard.get_inner_mut());
        // With the queue full, readiness stays set: the next call reads on as soon as the
        // queue has room, without waiting for the kernel to signal again.
        if emptied {
            guard.clear_ready();
        }
        Ok(flow)
    }

    /// Reads everything the ring buffer holds now, waiting for room in the queue as needed
    /// (after the probes are detached, so that everything they wrote reaches the sinks).
    pub async fn drain(&mut self) -> Flow {
        loop {
            if self.out.send_pending().await == Flow::Stop {
                return Flow::Stop;
            }
            match self.out.read(self.ring.get_mut()) {
                (Flow::Stop, _) => return Flow::Stop,
                (Flow::Continue, true) => return Flow::Continue,
                (Flow::Continue, false) => {}
            }
        }
    }

    /// Ships records that did not come through the ring buffer (the coalesced repeats that
    /// [`crate::kinds::memory::Coalesced`] takes from the probes) exactly as if they had,
    /// waiting for room in the queue as needed.
    pub async fn inject(&mut self, records: Vec<Vec<u8>>) -> Flow {
        let clock = Clock::sample();
        for bytes in records {
            let Some(event) = self.out.decode(&bytes, &clock) else { continue };
            self.out.pending = Some(event);
            if self.out.send_pending().await == Flow::Stop {
                return Flow::Stop;
            }
        }
        Flow::Continue
    }
}

impl Output {
    /// Sends the pending event, if there is one, waiting for room in the budget and the queue.
    /// Cancel-safe: the event stays pending until it is sent.
    async fn send_pending(&mut self) -> Flow {
        let Some(event) = &self.pending else { return Flow::Continue };
        let bytes = event_bytes(event);
        let charge = loop {
            if let Some(charge) = self.budget.try_charge(bytes) {
                break charge;
            }
            self.budget.released().await;
        };
        let Ok(permit) = self.queue.reserve().await else {
            return Flow::Stop;
        };
        permit.send(Input::Event(self.pending.take().expect("checked above"), charge));
        Flow::Continue
    }

    /// Reads records from `ring` until it is empty (`true`) or the queue or the budget is full
    /// (`false`).
    fn read(&mut self, ring: &mut RingBuf<MapData>) -> (Flow, bool) {
        let clock = Clock::sample();
        while self.pending.is_none() {
            let Some(item) = ring.next() else {
                return (Flow::Continue, true);
            };
            let Some(event) = self.decode(&item, &clock) else { continue };
            let Some(charge) = self.budget.try_charge(event_bytes(&event)) else {
                self.pending = Some(event);
                break;
            };
            match self.queue.try_send(Input::Event(event, charge)) {
                Ok(()) => {}
                Err(mpsc::error::TrySendError::Full(input)) => {
                    if let Input::Event(event, _) = input {
                        self.pending = Some(event);
                    }
                }
                Err(mpsc::error::TrySendError::Closed(_)) => return (Flow::Stop, false),
            }
        }
        (Flow::Continue, false)
    }

    /// Numbers and decodes one record (`None`, counted, when it does not decode).
    fn decode(&mut self, bytes: &[u8], clock: &Clock) -> Option<Event> {
        let seq = self.counters.next_seq();
        Counters::bump(&self.counters.read);
        match decode(bytes, seq, clock, SystemTime::now()) {
            Ok(event) => Some(event),
            Err(e) => {
                Counters::bump(&self.counters.decode_errors);
                tracing::debug!(seq, "rejected a record: {e}");
                None
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, SystemTime};

    use ksense_abi::Hook;

    use super::*;
    use crate::{
        kinds::{Detail, fork::ProcessFork},
        process::Process,
    };

    fn fork() -> Event {
        Event {
            seq: 1,
            time: SystemTime::now(),
            observed_time: SystemTime::now(),
            hook: Hook::TpBtfTaskNewtask,
            process: Process::default(),
            detail: Detail::Fork(ProcessFork { clone_flags: 0, code_start: 0, code_end: 0, parent_start_ns: 0 }),
        }
    }

    /// With the events' share of the memory budget used up, the reader keeps its event (it is
    /// not dropped) and sends it as soon as the pipeline releases bytes.
    #[tokio::test]
    async fn a_full_budget_pauses_the_reader_without_loss() {
        let budget = Arc::new(Budget::new(1000));
        let held = budget.try_charge(1000).unwrap();
        let (queue, mut pipeline) = mpsc::channel(4);
        let mut out = Output { queue, counters: Arc::default(), budget: budget.clone(), pending: Some(fork()) };
        let send = out.send_pending();
        tokio::pin!(send);
        assert!(tokio::time::timeout(Duration::from_millis(50), &mut send).await.is_err(), "waits while the budget is full");
        drop(held);
        assert_eq!(tokio::time::timeout(Duration::from_secs(5), send).await.expect("sent once bytes are released"), Flow::Continue);
        let Some(Input::Event(event, charge)) = pipeline.recv().await else { panic!("no event") };
        assert_eq!(event.seq, 1);
        assert_eq!(budget.used(), event_bytes(&event));
        drop(charge);
        assert_eq!(budget.used(), 0);
    }
}
