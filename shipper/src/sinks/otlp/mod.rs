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
