//! OpenTelemetry logs over OTLP (gRPC or HTTP/protobuf).
//!
//! `config.rs` resolves the settings (file, then `OTEL_EXPORTER_OTLP_*`), `encoder.rs` writes
//! records as OTLP protobuf and builds the resource, `service.rs` is the worker that batches,
//! exports and retries. The sink encodes each record on the pipeline thread into a chunk and
//! hands the chunk to the worker when it holds a batch or the pipeline flushes (its queue ran
//! dry, or 1024 events went by): [`Sink::write`] never waits on the network, and what does not
//! fit in the worker's queue (`queue_events` records, and the sink's share of the memory budget
//! in bytes) is dropped and counted.
use std::{
    io,
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering::Relaxed},
    },
    thread::JoinHandle,
    time::Duration,
};

use tokio::sync::mpsc;

use super::Sink;
use crate::{record::LogRecord, telemetry::SinkStats};

pub mod config;
pub mod encoder;
pub mod service;

use config::OtlpSettings;
use encoder::Encoder;
use service::{Chunk, Closing};

/// A chunk is handed to the worker once it holds this many bytes, even short of a batch: the
/// bytes are charged to the sink's share of the memory budget, which a batch of long command
/// lines (512 of 32 KiB) would not fit in whole.
const CHUNK_BYTES: usize = 1 << 20;

/// How long, at shutdown, queued records may still be retried before they count as failed.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// Encodes records and queues them, a chunk at a time, for the OTLP worker.
pub struct OtlpSink {
    encoder: Encoder,
    /// Encoded records not yet handed to the worker, and how many.
    chunk: Chunk,
    /// Whether `chunk` holds one of ksense's own records (`ksense.loss`, `ksense.status`):
    /// then neither the queue's bound nor the memory budget drops it, so a loss report is not
    /// lost to the loss it reports.
    chunk_has_own: bool,
    /// Records per chunk at most: the batch size.
    chunk_records: u64,
    queue: Option<mpsc::UnboundedSender<Chunk>>,
    /// Records handed to the worker and not yet taken by it; at most `capacity`.
    queued: Arc<AtomicUsize>,
    capacity: usize,
    worker: Option<JoinHandle<()>>,
    closing: Arc<Closing>,
    stats: Arc<SinkStats>,
}

impl OtlpSink {
    /// Starts the worker for `settings`, counting into `stats`.
    pub fn start(settings: OtlpSettings, stats: Arc<SinkStats>) -> io::Result<OtlpSink> {
        tracing::info!(?settings, "exporting to an OTLP collector");
        let (queue, receiver) = mpsc::unbounded_channel();
        let (queued, closing) = (Arc::new(AtomicUsize::new(0)), Arc::new(Closing::default()));
        let (chunk_records, capacity) = (settings.batch_size as u64, settings.queue_events);
        let worker = {
            let (stats, closing, queued) = (stats.clone(), closing.clone(), queued.clone());
            std::thread::Builder::new()
                .name("ksense-otlp".into())
                .spawn(move || service::run(settings, receiver, queued, stats, closing))?
        };
        Ok(OtlpSink {
            encoder: Encoder::default(),
            chunk: Chunk::default(),
            chunk_has_own: false,
            chunk_records,
            queue: Some(queue),
            queued,
            capacity,
            worker: Some(worker),
            closing,
            stats,
        })
    }

    /// Hands the chunk to the worker, or drops and counts it when the worker's queue is full
    /// (or, failed, when the worker is gone: it only stops early by panicking).
    fn hand_over(&mut self) {
        let Some(queue) = &self.queue else { return };
        if self.chunk.records == 0 {
            return;
        }
        let mut chunk = std::mem::take(&mut self.chunk);
        let own = std::mem::take(&mut self.chunk_has_own);
        let records = chunk.records as usize;
        if own {
            chunk.charge = self.stats.held.charge(chunk.bytes.capacity());
        } else {
            if self.queued.load(Relaxed) + records > self.capacity {
                self.stats.queue_full.fetch_add(chunk.records, Relaxed);
                return;
            }
            match self.stats.held.try_charge(chunk.bytes.capacity()) {
                Some(charge) => chunk.charge = charge,
                None => {
                    self.stats.memory_budget.fetch_add(chunk.records, Relaxed);
                    return;
                }
            }
        }
        self.queued.fetch_add(records, Relaxed);
        if let Err(mpsc::error::SendError(chunk)) = queue.send(chunk) {
            self.queued.fetch_sub(records, Relaxed);
            self.stats.failed.fetch_add(chunk.records, Relaxed);
        }
    }
}

impl Sink for OtlpSink {
    fn name(&self) -> &'static str {
        "otlp"
    }

    fn write(&mut self, record: &LogRecord) -> io::Result<()> {
        if self.queue.is_none() {
            return Err(io::Error::other("the OTLP sink is closed"));
        }
        self.encoder.encode(record, &mut self.chunk.bytes);
        self.chunk.records += 1;
        self.chunk_has_own |= crate::loss::is_own(record);
        if self.chunk.records >= self.chunk_records || self.chunk.bytes.len() >= CHUNK_BYTES {
            self.hand_over();
        }
        Ok(())
    }

    fn flush(&mut self) -> io::Result<()> {
        self.hand_over();
        Ok(())
    }

    fn close(&mut self) {
        self.hand_over();
        self.closing.start(SHUTDOWN_GRACE);
        drop(self.queue.take());
        if let Some(worker) = self.worker.take()
            && worker.join().is_err()
        {
            tracing::error!("the OTLP worker panicked");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::decode::bench::{log_records, process_cpu_time};
    use std::{sync::atomic::Ordering::Relaxed, time::Instant};

    /// With the sink's share of the memory budget used up, its records are dropped and counted,
    /// but a chunk holding one of ksense's own records is handed over all the same.
    #[test]
    fn own_records_are_not_lost_to_the_memory_budget() {
        let config = config::OtlpConfig { endpoint: Some("http://127.0.0.1:1".into()), ..Default::default() };
        let settings = config.resolve(|_| None).unwrap().unwrap();
        let stats = Arc::new(SinkStats::default());
        stats.held.set_limit(1);
        let mut sink = OtlpSink::start(settings, stats.clone()).unwrap();
        let event = log_records(1).remove(0);
        let loss = crate::loss::loss_record(
            crate::loss::LossKey { cause: crate::loss::Cause::MemoryBudget, kind: None, sink: Some("otlp") },
            1,
            0,
        );
        // The first chunk fits alone (nothing else is held); it stays charged while the
        // worker tries to export it to a port nobody listens on.
        sink.write(&event).unwrap();
        sink.flush().unwrap();
        sink.write(&event).unwrap();
        sink.flush().unwrap();
        assert_eq!(stats.memory_budget.load(Relaxed), 1, "over the share: dropped and counted");
        sink.write(&loss).unwrap();
        sink.flush().unwrap();
        assert_eq!(stats.memory_budget.load(Relaxed), 1, "the loss record went through");
        sink.close();
        assert_eq!(stats.failed.load(Relaxed), 2, "both chunks handed over failed at stop (no collector)");
        assert_eq!(stats.held.used(), 0, "every charge is released");
    }

    /// Logs/s the sink delivers to a real collector, and the CPU this process spent per log
    /// (sink, encoder, exporter, transport; the records are rendered beforehand):
    /// `KSENSE_BENCH_OTLP=http://127.0.0.1:4317 cargo test --release -p ksense --lib otlp_throughput
    /// -- --ignored --nocapture` with `rotel-agent start --exporter blackhole` listening there.
    /// The standard `OTEL_EXPORTER_OTLP_*` variables apply (`..._PROTOCOL=http/protobuf`,
    /// `..._COMPRESSION=gzip`). `KSENSE_BENCH_N` records (default 500k) from the realistic mix.
    #[test]
    #[ignore]
    fn otlp_throughput() {
        let endpoint = std::env::var("KSENSE_BENCH_OTLP").expect("KSENSE_BENCH_OTLP=<collector URL>");
        let n: u64 = std::env::var("KSENSE_BENCH_N").ok().and_then(|n| n.parse().ok()).unwrap_or(500_000);
        let config = config::OtlpConfig { endpoint: Some(endpoint), ..Default::default() };
        let settings = config.resolve(|name| std::env::var(name).ok()).unwrap().unwrap();
        let headroom = settings.queue_events as u64 - 1;
        let records = log_records(4096);
        let stats = Arc::new(SinkStats::default());
        let (started, cpu_before) = (Instant::now(), process_cpu_time());
        let mut sink = OtlpSink::start(settings, stats.clone()).unwrap();
        for (written, record) in (0..n).zip(records.iter().cycle()) {
            // Keep within the queue, so the figure is delivery, not dropping.
            while written - stats.delivered.load(Relaxed) >= headroom {
                std::thread::sleep(Duration::from_micros(200));
            }
            sink.write(record).unwrap();
        }
        sink.close();
        let (elapsed, cpu) = (started.elapsed(), process_cpu_time() - cpu_before);
        let delivered = stats.delivered.load(Relaxed);
        eprintln!(
            "OTLP: {delivered} of {n} logs delivered in {:.2} s wall, {:.2} s CPU: {:.0} logs/s per CPU-second, \
             {:.0} ns CPU/log ({:.0} logs/s wall; dropped: {} queue full, {} failed)",
            elapsed.as_secs_f64(),
            cpu.as_secs_f64(),
            delivered as f64 / cpu.as_secs_f64(),
            cpu.as_nanos() as f64 / delivered as f64,
            delivered as f64 / elapsed.as_secs_f64(),
            stats.queue_full.load(Relaxed),
            stats.failed.load(Relaxed),
        );
        assert_eq!(delivered, n, "every log sent was delivered");
    }
}
