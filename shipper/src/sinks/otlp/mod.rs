//! OpenTelemetry logs over OTLP (gRPC or HTTP/protobuf), with the opentelemetry crates.
//!
//! `config.rs` resolves the settings (file, then `OTEL_EXPORTER_OTLP_*`), `encoder.rs` turns
//! records into SDK log records and builds the resource, `service.rs` is the worker that
//! batches, exports and retries. The sink itself only queues: [`Sink::write`] never waits on the
//! network; a full queue drops the record and counts it.
use std::{
    io,
    sync::Arc,
    thread::JoinHandle,
    time::Duration,
};

use tokio::sync::mpsc;

use super::Sink;
use crate::{
    record::LogRecord,
    telemetry::{Counters, SinkStats},
};

pub mod config;
pub mod encoder;
pub mod service;

use config::OtlpSettings;
use service::Closing;

/// How long, at shutdown, queued records may still be retried before they count as failed.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// Queues records for the OTLP worker.
pub struct OtlpSink {
    queue: Option<mpsc::Sender<LogRecord>>,
    worker: Option<JoinHandle<()>>,
    closing: Arc<Closing>,
    stats: Arc<SinkStats>,
}

impl OtlpSink {
    /// Starts the worker for `settings`, counting into `stats`.
    pub fn start(settings: OtlpSettings, stats: Arc<SinkStats>) -> io::Result<OtlpSink> {
        tracing::info!(?settings, "exporting to an OTLP collector");
        let (queue, receiver) = mpsc::channel(settings.queue_events);
        let closing = Arc::new(Closing::default());
        let worker = {
            let (stats, closing) = (stats.clone(), closing.clone());
            std::thread::Builder::new()
                .name("ksense-otlp".into())
                .spawn(move || service::run(settings, receiver, stats, closing))?
        };
        Ok(OtlpSink { queue: Some(queue), worker: Some(worker), closing, stats })
    }
}

impl Sink for OtlpSink {
    fn name(&self) -> &'static str {
        "otlp"
    }

    fn write(&mut self, record: &LogRecord) -> io::Result<()> {
        let Some(queue) = &self.queue else { return Err(io::Error::other("the OTLP sink is closed")) };
        match queue.try_send(record.clone()) {
            Ok(()) => Ok(()),
            Err(mpsc::error::TrySendError::Full(_)) => {
                Counters::bump(&self.stats.queue_full);
                Ok(())
            }
            Err(mpsc::error::TrySendError::Closed(_)) => Err(io::Error::other("the OTLP worker has stopped")),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }

    fn close(&mut self) {
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
    use crate::record::{Severity, Value};
    use std::{sync::atomic::Ordering::Relaxed, time::{Instant, SystemTime}};

    /// Records/s the sink delivers to a real collector: `KSENSE_BENCH_OTLP=http://127.0.0.1:4317
    /// cargo test --release -p ksense --lib otlp_throughput -- --ignored --nocapture`
    /// (with e.g. `rotel-agent start --exporter blackhole` listening there).
    #[test]
    #[ignore]
    fn otlp_throughput() {
        let endpoint = std::env::var("KSENSE_BENCH_OTLP").expect("KSENSE_BENCH_OTLP=<collector URL>");
        let n: u64 = std::env::var("KSENSE_BENCH_N").ok().and_then(|n| n.parse().ok()).unwrap_or(200_000);
        let config = config::OtlpConfig { endpoint: Some(endpoint), enabled: crate::config::Enabled::Fixed(true), ..Default::default() };
        let settings = config.resolve(|_| None).unwrap().unwrap();
        let stats = Arc::new(SinkStats::default());
        let mut sink = OtlpSink::start(settings, stats.clone()).unwrap();
        let record = LogRecord {
            event_name: "process.exec",
            severity: Severity::Info,
            time: SystemTime::now(),
            observed_time: SystemTime::now(),
            body: "bash[4242] executed /usr/bin/ls -la /tmp".into(),
            attributes: (0..20)
                .map(|i| (crate::schema::PROCESS_PID, if i % 2 == 0 { Value::Int(4242) } else { Value::Str("/usr/bin/ls".into()) }))
                .collect(),
        };
        let started = Instant::now();
        for written in 0..n {
            // Keep within the queue, so the figure is delivery, not dropping.
            while written - stats.delivered.load(Relaxed) >= 60_000 {
                std::thread::sleep(std::time::Duration::from_micros(200));
            }
            sink.write(&record).unwrap();
        }
        sink.close();
        let elapsed = started.elapsed();
        let delivered = stats.delivered.load(Relaxed);
        eprintln!(
            "OTLP: {delivered} of {n} records delivered in {:.2} s: {:.0} records/s ({} dropped: queue full)",
            elapsed.as_secs_f64(),
            delivered as f64 / elapsed.as_secs_f64(),
            stats.queue_full.load(Relaxed)
        );
    }
}
