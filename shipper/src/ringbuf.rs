//! The one reader of the kernel ring buffer: wait for readiness with epoll (no busy polling),
//! drain every record, then clear readiness (the pattern aya documents for `RingBuf`).
//!
//! Each record gets the next `ksense.event.seq`, is decoded and handed to the pipeline queue.
//! A record that does not decode is counted and dropped. When the queue is full the reader
//! pauses and leaves the records in the ring buffer: the ring buffer is the one place events
//! wait, its size (not a count of queued events) bounds ksense's memory, and what no longer fits
//! there is counted by the probes, per kind. Nothing already read is ever dropped.
use std::{io, sync::Arc, time::SystemTime};

use aya::maps::{MapData, RingBuf};
use tokio::{io::unix::AsyncFd, sync::mpsc};

use crate::{clock::Clock, decode::decode, event::Event, pipeline::Input, telemetry::Counters};

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
    seq: u64,
    /// A decoded event the full queue could not take yet; it goes before any other.
    pending: Option<Input>,
}

impl Reader {
    /// A reader of `ring` feeding `queue`.
    pub fn new(ring: RingBuf<MapData>, queue: mpsc::Sender<Input>, counters: Arc<Counters>) -> io::Result<Reader> {
        // SAFETY: the AsyncFd owns the RingBuf, which owns the fd: it stays open while registered.
        let ring = unsafe { AsyncFd::register(ring) }?;
        Ok(Reader { ring, out: Output { queue, counters, seq: 0, pending: None } })
    }

    /// Waits until the kernel signals records (and the queue has room), then reads until the
    /// ring buffer is empty or the queue is full. Cancel-safe: if dropped while waiting,
    /// nothing is lost.
    pub async fn wait_and_drain(&mut self) -> io::Result<Flow> {
        if self.out.pending.is_some() {
            let Ok(permit) = self.out.queue.reserve().await else {
                return Ok(Flow::Stop);
            };
            permit.send(self.out.pending.take().expect("checked above"));
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
            if let Some(event) = self.out.pending.take()
                && self.out.queue.send(event).await.is_err()
            {
                return Flow::Stop;
            }
            match self.out.read(self.ring.get_mut()) {
                (Flow::Stop, _) => return Flow::Stop,
                (Flow::Continue, true) => return Flow::Continue,
                (Flow::Continue, false) => {}
            }
        }
    }

    /// Ships records that did not come through the ring buffer (coalesced memory repeats swept
    /// from their map) exactly as if they had, waiting for room in the queue as needed.
    pub async fn inject(&mut self, records: Vec<ksense_abi::memory::Memory>) -> Flow {
        let clock = Clock::sample();
        for record in records {
            // SAFETY: Memory is plain old data; its bytes are the record the probes write.
            let bytes = unsafe {
                std::slice::from_raw_parts((&raw const record).cast::<u8>(), size_of::<ksense_abi::memory::Memory>())
            };
            let Some(event) = self.out.decode(bytes, &clock) else { continue };
            if self.out.queue.send(Input::Event(event)).await.is_err() {
                return Flow::Stop;
            }
        }
        Flow::Continue
    }
}

impl Output {
    /// Reads records from `ring` until it is empty (`true`) or the queue is full (`false`).
    fn read(&mut self, ring: &mut RingBuf<MapData>) -> (Flow, bool) {
        let clock = Clock::sample();
        while self.pending.is_none() {
            let Some(item) = ring.next() else {
                return (Flow::Continue, true);
            };
            let Some(event) = self.decode(&item, &clock) else { continue };
            match self.queue.try_send(Input::Event(event)) {
                Ok(()) => {}
                Err(mpsc::error::TrySendError::Full(event)) => self.pending = Some(event),
                Err(mpsc::error::TrySendError::Closed(_)) => return (Flow::Stop, false),
            }
        }
        (Flow::Continue, false)
    }

    /// Numbers and decodes one record (`None`, counted, when it does not decode).
    fn decode(&mut self, bytes: &[u8], clock: &Clock) -> Option<Event> {
        self.seq += 1;
        Counters::bump(&self.counters.read);
        match decode(bytes, self.seq, clock, SystemTime::now()) {
            Ok(event) => Some(event),
            Err(e) => {
                Counters::bump(&self.counters.decode_errors);
                tracing::debug!(seq = self.seq, "rejected a record: {e}");
                None
            }
        }
    }
}
