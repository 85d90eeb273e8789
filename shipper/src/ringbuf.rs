//! The one reader of the kernel ring buffer: wait for readiness with epoll (no busy polling),
//! drain every record, then clear readiness (the pattern aya documents for `RingBuf`).
//!
//! Each record gets the next `ksense.event.seq`, is decoded and handed to the pipeline queue.
//! A record that does not decode, or finds the queue full, is counted and dropped: the reader
//! never blocks on the sinks, so the kernel side is drained as fast as it can be.
use std::{io, sync::Arc, time::SystemTime};

use aya::maps::{MapData, RingBuf};
use tokio::{io::unix::AsyncFd, sync::mpsc};

use crate::{
    clock::Clock,
    decode::decode,
    event::Event,
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
    queue: mpsc::Sender<Event>,
    counters: Arc<Counters>,
    seq: u64,
}

impl Reader {
    /// A reader of `ring` feeding `queue`.
    pub fn new(ring: RingBuf<MapData>, queue: mpsc::Sender<Event>, counters: Arc<Counters>) -> io::Result<Reader> {
        // SAFETY: the AsyncFd owns the RingBuf, which owns the fd: it stays open while registered.
        let ring = unsafe { AsyncFd::register(ring) }?;
        Ok(Reader { ring, queue, counters, seq: 0 })
    }

    /// Waits until the kernel signals records, then drains them all. Cancel-safe: if dropped
    /// while waiting, nothing was read.
    pub async fn wait_and_drain(&mut self) -> io::Result<Flow> {
        let mut guard = self.ring.readable_mut().await?;
        let flow = Self::drain_ring(guard.get_inner_mut(), &self.queue, &self.counters, &mut self.seq);
        guard.clear_ready();
        Ok(flow)
    }

    /// Drains whatever the ring buffer holds now, without waiting.
    pub fn drain(&mut self) -> Flow {
        Self::drain_ring(self.ring.get_mut(), &self.queue, &self.counters, &mut self.seq)
    }

    /// Ships records that did not come through the ring buffer (coalesced memory repeats swept
    /// from their map) exactly as if they had.
    pub fn inject(&mut self, records: Vec<ksense_abi::memory::Memory>) -> Flow {
        let clock = Clock::sample();
        for record in records {
            // SAFETY: Memory is plain old data; its bytes are the record the probes write.
            let bytes = unsafe {
                std::slice::from_raw_parts((&raw const record).cast::<u8>(), size_of::<ksense_abi::memory::Memory>())
            };
            if Self::ship(bytes, &clock, &self.queue, &self.counters, &mut self.seq) == Flow::Stop {
                return Flow::Stop;
            }
        }
        Flow::Continue
    }

    fn drain_ring(ring: &mut RingBuf<MapData>, queue: &mpsc::Sender<Event>, counters: &Counters, seq: &mut u64) -> Flow {
        let clock = Clock::sample();
        while let Some(item) = ring.next() {
            if Self::ship(&item, &clock, queue, counters, seq) == Flow::Stop {
                return Flow::Stop;
            }
        }
        Flow::Continue
    }

    /// Numbers, decodes and queues one record.
    fn ship(bytes: &[u8], clock: &Clock, queue: &mpsc::Sender<Event>, counters: &Counters, seq: &mut u64) -> Flow {
        *seq += 1;
        Counters::bump(&counters.read);
        let event = match decode(bytes, *seq, clock, SystemTime::now()) {
            Ok(event) => event,
            Err(e) => {
                Counters::bump(&counters.decode_errors);
                tracing::debug!(seq = *seq, "rejected a record: {e}");
                return Flow::Continue;
            }
        };
        match queue.try_send(event) {
            Ok(()) => Flow::Continue,
            Err(mpsc::error::TrySendError::Full(_)) => {
                Counters::bump(&counters.queue_full);
                Flow::Continue
            }
            Err(mpsc::error::TrySendError::Closed(_)) => Flow::Stop,
        }
    }
}
