//! OpenTelemetry logs over OTLP (gRPC or HTTP/protobuf).
//!
//! `config.rs` resolves the settings (file, then `OTEL_EXPORTER_OTLP_*`), `encoder.rs` writes
//! records as OTLP protobuf and builds the resource, `service.rs` is the worker that batches,
//! exports and retries, `response.rs` reads the collector's answers. The sink encodes each
//! record on the pipeline thread into a chunk and hands the chunk to the worker when it holds a
//! batch, when the next record would make it larger than a request may be (`max_request_bytes`),
//! or when the pipeline flushes (its queue ran dry, or 1024 events went by): [`Sink::write`]
//! never waits on the network, and what does not fit in the worker's queue (`queue_events`
//! records, and the sink's share of the memory budget in bytes) is dropped and counted. A record too large for a request on its own is cut (its
//! command line) or, if that is not enough, dropped and counted as rejected.
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
pub mod response;
pub mod service;

use config::OtlpSettings;
use encoder::{Encoder, Envelope, Fit};
use service::{Chunk, Closing};

/// A chunk is handed to the worker once it holds this many bytes, even short of a batch: the
/// bytes are charged to the sink's share of the memory budget, which a batch of long command
/// lines (512 of 32 KiB) would not fit in whole.
const CHUNK_BYTES: usize = 1 << 20;

/// How long, at shutdown, queued records may still be retried before they count as failed.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// Records encoded into chunks of at most a batch's records and a request's bytes.
pub struct Chunker {
    encoder: Encoder,
    /// Encoded records not yet handed on, and how many.
    chunk: Chunk,
    /// Records per chunk at most: the batch size.
    records: u64,
    /// Bytes of records per chunk at most: what a request of `max_request_bytes` carries.
    limit: usize,
}

impl Chunker {
    /// Chunks of `records` records and `limit` bytes at most.
    pub fn new(records: u64, limit: usize) -> Chunker {
        Chunker { encoder: Encoder::default(), chunk: Chunk::default(), records, limit }
    }

    /// Encodes `record` (cut to fit, [`Encoder::encode_within`]); returns how it fitted, and
    /// the chunk it completed, if it did: the one before it when it did not fit there too, or
    /// the one it filled up.
    pub fn add(&mut self, record: &LogRecord) -> (Fit, Option<Chunk>) {
        let before = self.chunk.bytes.len();
        let fit = self.encoder.encode_within(record, self.limit, &mut self.chunk.bytes);
        if fit == Fit::TooLarge {
            return (fit, None);
        }
        let mut done = None;
        if self.chunk.bytes.len() > self.limit {
            let next = self.chunk.bytes.split_off(before);
            done = self.take();
            self.chunk.bytes = next;
        }
        self.chunk.records += 1;
        self.chunk.own |= crate::loss::is_own(record);
        if done.is_none() && self.chunk.records >= self.records {
            done = self.take();
        }
        (fit, done)
    }

    /// Bytes of the records encoded so far and not taken.
    pub fn bytes(&self) -> usize {
        self.chunk.bytes.len()
    }

    /// The chunk so far, if it holds any record.
    pub fn take(&mut self) -> Option<Chunk> {
        (self.chunk.records > 0).then(|| std::mem::take(&mut self.chunk))
    }
}

/// Encodes records and queues them, a chunk at a time, for the OTLP worker.
pub struct OtlpSink {
    chunker: Chunker,
    /// Whether a cut record, and a record too large even cut, were logged (once each).
    logged_cut: bool,
    logged_too_large: bool,
    max_request_bytes: usize,
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
        for warning in settings.exposed_secrets() {
            tracing::warn!("{warning}");
        }
        let (queue, receiver) = mpsc::unbounded_channel();
        let (queued, closing) = (Arc::new(AtomicUsize::new(0)), Arc::new(Closing::default()));
        let capacity = settings.queue_events;
        let max_request_bytes = settings.max_request_bytes;
        let envelope = Envelope::new(&encoder::resource());
        let chunker = Chunker::new(settings.batch_size as u64, envelope.batch_limit(max_request_bytes));
        let worker = {
            let (stats, closing, queued) = (stats.clone(), closing.clone(), queued.clone());
            std::thread::Builder::new()
                .name("ksense-otlp".into())
                .spawn(move || service::run(settings, envelope, receiver, queued, stats, closing))?
        };
        Ok(OtlpSink {
            chunker,
            logged_cut: false,
            logged_too_large: false,
            max_request_bytes,
            queue: Some(queue),
            queued,
            capacity,
            worker: Some(worker),
            closing,
            stats,
        })
    }

    /// Hands `chunk` to the worker, or drops and counts it when the worker's queue is full
    /// (or, failed, when the worker is gone: it only stops early by panicking).
    fn hand_over(&mut self, chunk: Option<Chunk>) {
        let (Some(queue), Some(mut chunk)) = (&self.queue, chunk) else { return };
        let own = chunk.own;
        let records = chunk.records as usize;
        if own {
            chunk.charges.push(self.stats.held.charge(chunk.bytes.capacity()));
        } else {
            if self.queued.load(Relaxed) + records > self.capacity {
                self.stats.queue_full.fetch_add(chunk.records, Relaxed);
                return;
            }
            match self.stats.held.try_charge(chunk.bytes.capacity()) {
                Some(charge) => chunk.charges.push(charge),
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
        let (fit, done) = self.chunker.add(record);
        match fit {
            Fit::Whole => {}
            Fit::Cut if !self.logged_cut => {
                self.logged_cut = true;
                tracing::warn!(
                    "a {} record was larger than an OTLP request may be (max_request_bytes = {}): its command line was cut \
                     (ksense.process.command_args.truncated); logged once",
                    record.event_name,
                    self.max_request_bytes
                );
            }
            Fit::Cut => {}
            Fit::TooLarge => {
                self.stats.rejected.fetch_add(1, Relaxed);
                if !self.logged_too_large {
                    self.logged_too_large = true;
                    tracing::error!(
                        "a {} record is larger than an OTLP request may be (max_request_bytes = {}) even with its command line \
                         cut: not exported, counted in sink_otlp_rejected; logged once",
                        record.event_name,
                        self.max_request_bytes
                    );
                }
            }
        }
        // A chunk is handed on at CHUNK_BYTES even short of a batch (see there).
        let done = done.or_else(|| if self.chunker.bytes() >= CHUNK_BYTES { self.chunker.take() } else { None });
        self.hand_over(done);
        Ok(())
    }

    fn flush(&mut self) -> io::Result<()> {
        let chunk = self.chunker.take();
        self.hand_over(chunk);
        Ok(())
    }

    fn close(&mut self) {
        let _ = self.flush();
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
    use proptest::prelude::*;
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

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]
        /// Records of any size through the sink's chunks and the worker's batches: no request
        /// is larger than the maximum, and every record offered is in exactly one request or
        /// counted as too large.
        #[test]
        fn requests_never_exceed_the_maximum_and_lose_nothing_uncounted(
            records in prop::collection::vec((0usize..20, 0usize..1500, any::<bool>()), 1..100),
            batch_size in 1u64..40,
            max_request in 1_500usize..120_000,
        ) {
            use opentelemetry_proto::tonic::collector::logs::v1::ExportLogsServiceRequest;
            use prost::Message as _;
            let envelope = Envelope::new(&encoder::resource());
            let limit = envelope.batch_limit(max_request);
            let (mut chunker, mut batches) = (Chunker::new(batch_size, limit), service::Batches::new(batch_size, limit));
            let (mut requests, mut too_large) = (Vec::new(), 0u64);
            let pushed = |chunk: Option<Chunk>, batches: &mut service::Batches, requests: &mut Vec<Vec<u8>>| {
                let Some(chunk) = chunk else { return };
                requests.extend(batches.push(chunk).map(|batch| envelope.request(&batch.bytes)));
                if batches.is_full() {
                    requests.extend(batches.take().map(|batch| envelope.request(&batch.bytes)));
                }
            };
            for (i, &(args, len, flush)) in records.iter().enumerate() {
                let mut record = encoder::tests::long_exec(args, len);
                record.attributes.push(("ksense.event.seq", crate::record::Value::Int(i as i64)));
                let (fit, done) = chunker.add(&record);
                too_large += u64::from(fit == Fit::TooLarge);
                pushed(done, &mut batches, &mut requests);
                if flush {
                    pushed(chunker.take(), &mut batches, &mut requests);
                }
            }
            pushed(chunker.take(), &mut batches, &mut requests);
            requests.extend(batches.take().map(|batch| envelope.request(&batch.bytes)));

            let mut seen = Vec::new();
            for request in &requests {
                prop_assert!(request.len() <= max_request, "a request of {} bytes, over {max_request}", request.len());
                let request = ExportLogsServiceRequest::decode(request.as_slice()).unwrap();
                for record in &request.resource_logs[0].scope_logs[0].log_records {
                    let seq = record.attributes.iter().find(|kv| kv.key == "ksense.event.seq").unwrap();
                    seen.push(format!("{:?}", seq.value));
                }
            }
            let distinct: std::collections::BTreeSet<_> = seen.iter().collect();
            prop_assert_eq!(distinct.len(), seen.len(), "a record in two requests");
            prop_assert_eq!(seen.len() as u64 + too_large, records.len() as u64);
        }
    }

    /// An OTLP/HTTP collector scripted to answer 503 with `Retry-After`, then a partial
    /// success, then 400: the first is retried after the delay it asked for, the rejected
    /// records and the refused batch are counted as rejected (not retried), the rest as
    /// delivered, and every request says `User-Agent: ksense/<version>`.
    #[test]
    fn http_answers_are_followed_as_the_specification_says() {
        use opentelemetry_proto::tonic::collector::logs::v1::{ExportLogsPartialSuccess, ExportLogsServiceResponse};
        use prost::Message as _;
        use std::io::{BufRead as _, BufReader, Read as _, Write as _};
        let partial = ExportLogsServiceResponse {
            partial_success: Some(ExportLogsPartialSuccess { rejected_log_records: 2, error_message: "too old".into() }),
        }
        .encode_to_vec();
        let answers = std::sync::Mutex::new(std::collections::VecDeque::from([
            (503, "Retry-After: 1\r\n", Vec::new()),
            (200, "", partial),
            (400, "", b"bad request".to_vec()),
        ]));
        let agents = Arc::new(std::sync::Mutex::new(Vec::new()));
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let seen = agents.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let mut reader = BufReader::new(stream.unwrap());
                loop {
                    let mut length = 0;
                    let mut line = String::new();
                    while reader.read_line(&mut line).unwrap_or(0) > 0 && line != "\r\n" {
                        let lower = line.to_ascii_lowercase();
                        if let Some(value) = lower.strip_prefix("content-length:") {
                            length = value.trim().parse().unwrap();
                        }
                        if let Some(value) = lower.strip_prefix("user-agent:") {
                            seen.lock().unwrap().push(value.trim().to_owned());
                        }
                        line.clear();
                    }
                    if line.is_empty() {
                        break;
                    }
                    reader.read_exact(&mut vec![0; length]).unwrap();
                    let (status, headers, body) = answers.lock().unwrap().pop_front().expect("more requests than answers");
                    let answer = format!("HTTP/1.1 {status} X\r\n{headers}content-length: {}\r\n\r\n", body.len());
                    let stream = reader.get_mut();
                    stream.write_all(answer.as_bytes()).and_then(|()| stream.write_all(&body)).unwrap();
                }
            }
        });
        let config = config::OtlpConfig {
            endpoint: Some(format!("http://127.0.0.1:{port}")),
            protocol: Some(config::Protocol::HttpProtobuf),
            batch_size: 5,
            ..Default::default()
        };
        let stats = Arc::new(SinkStats::default());
        let mut sink = OtlpSink::start(config.resolve(|_| None).unwrap().unwrap(), stats.clone()).unwrap();
        let records = log_records(10);
        let wait_for = |what: &str, done: &dyn Fn() -> bool| {
            let deadline = Instant::now() + Duration::from_secs(10);
            while !done() {
                assert!(Instant::now() < deadline, "{what}: {stats:?}");
                std::thread::sleep(Duration::from_millis(20));
            }
        };
        let started = Instant::now();
        for record in &records[..5] {
            sink.write(record).unwrap();
        }
        wait_for("the first batch", &|| stats.delivered.load(Relaxed) + stats.rejected.load(Relaxed) == 5);
        assert!(started.elapsed() >= Duration::from_secs(1), "Retry-After: 1 was not waited for");
        for record in &records[5..] {
            sink.write(record).unwrap();
        }
        wait_for("the second batch", &|| stats.rejected.load(Relaxed) == 7);
        sink.close();
        let count = |c: &std::sync::atomic::AtomicU64| c.load(Relaxed);
        assert_eq!(
            (count(&stats.delivered), count(&stats.rejected), count(&stats.failed), count(&stats.queue_full), count(&stats.retries)),
            (3, 7, 0, 0, 1)
        );
        let agents = agents.lock().unwrap();
        assert_eq!(agents.len(), 3);
        assert!(agents.iter().all(|a| *a == format!("ksense/{}", env!("CARGO_PKG_VERSION"))), "{agents:?}");
    }

    /// A collector that accepts connections and never answers (over gRPC and over HTTP): no
    /// attempt lasts longer than `timeout_ms`, so retries go on rather than one attempt holding
    /// its slot for ever; at close, within the shutdown grace, what was not delivered counts as
    /// failed, and every record offered is counted once.
    #[test]
    fn a_collector_that_never_answers_holds_no_attempt_beyond_the_timeout() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        // Accept, then neither read nor write: the connections stay open until the test ends.
        std::thread::spawn(move || {
            let held: Vec<_> = listener.incoming().collect();
            drop(held);
        });
        let exporters: Vec<_> = [config::Protocol::Grpc, config::Protocol::HttpProtobuf]
            .into_iter()
            .map(|protocol| {
                std::thread::spawn(move || {
                    let config = config::OtlpConfig {
                        endpoint: Some(format!("http://127.0.0.1:{port}")),
                        protocol: Some(protocol),
                        timeout_ms: Some(200),
                        ..Default::default()
                    };
                    let settings = config.resolve(|_| None).unwrap().unwrap();
                    let stats = Arc::new(SinkStats::default());
                    let mut sink = OtlpSink::start(settings, stats.clone()).unwrap();
                    let records = log_records(10);
                    for record in &records {
                        sink.write(record).unwrap();
                    }
                    sink.flush().unwrap();
                    let deadline = Instant::now() + Duration::from_secs(10);
                    while stats.retries.load(Relaxed) < 3 {
                        assert!(Instant::now() < deadline, "{protocol:?}: an attempt did not end within its timeout");
                        std::thread::sleep(Duration::from_millis(20));
                    }
                    let closing = Instant::now();
                    sink.close();
                    assert!(closing.elapsed() < SHUTDOWN_GRACE + Duration::from_secs(2), "{protocol:?}: {:?}", closing.elapsed());
                    let counted = |c: &std::sync::atomic::AtomicU64| c.load(Relaxed);
                    assert_eq!(counted(&stats.failed), records.len() as u64, "{protocol:?}");
                    let all = counted(&stats.delivered) + counted(&stats.queue_full) + counted(&stats.failed) + counted(&stats.rejected);
                    assert_eq!(all, records.len() as u64, "{protocol:?}");
                })
            })
            .collect();
        for exporter in exporters {
            exporter.join().unwrap();
        }
    }

    /// Logs/s the sink delivers to a real collector, and the CPU this process spent per log
    /// (sink, encoder, exporter, transport; the records are rendered beforehand):
    /// `KSENSE_BENCH_OTLP=http://127.0.0.1:4317 cargo test --release -p ksense --lib otlp_throughput
    /// -- --ignored --nocapture` with `rotel-agent start --exporter blackhole` listening there.
    /// The standard `OTEL_EXPORTER_OTLP_*` variables apply (`..._PROTOCOL=http/protobuf`,
    /// `..._COMPRESSION=gzip`). `KSENSE_BENCH_N` records (default 500k) from the realistic mix.
    #[test]
    #[ignore = "benchmark: needs a collector at KSENSE_BENCH_OTLP; run in release with --ignored --nocapture"]
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
