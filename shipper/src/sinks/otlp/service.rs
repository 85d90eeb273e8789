//! The OTLP sink's worker: its own thread and tokio runtime (so a slow collector never stalls
//! the pipeline), taking records from the sink's bounded queue in batches and exporting them,
//! retrying a failed batch with exponential backoff until the collector answers again.
//! While it retries, the queue fills and the sink counts what it has to drop.
use std::{
    collections::HashMap,
    sync::{Arc, OnceLock},
    time::{Duration, Instant},
};

use opentelemetry::InstrumentationScope;
use opentelemetry_otlp::{LogExporter, WithExportConfig, WithHttpConfig, WithTonicConfig};
use opentelemetry_sdk::logs::{LogBatch, LogExporter as _, SdkLogRecord};
use tokio::sync::mpsc;

use super::{
    config::{Compression, OtlpSettings, Protocol},
    encoder::{Encoder, resource},
};
use crate::{
    record::LogRecord,
    telemetry::{Counters, SinkStats},
};

/// First wait after a failed export; doubles up to [`MAX_BACKOFF`].
const FIRST_BACKOFF: Duration = Duration::from_millis(200);
/// Longest wait between attempts, so export resumes within seconds of the collector's return.
const MAX_BACKOFF: Duration = Duration::from_secs(5);

/// Set once when ksense shuts down: until then a failing batch is retried; after it, retrying
/// stops at this deadline and what is left is counted as failed.
#[derive(Debug, Default)]
pub struct Closing(OnceLock<Instant>);

impl Closing {
    /// Starts the shutdown grace period.
    pub fn start(&self, grace: Duration) {
        let _ = self.0.set(Instant::now() + grace);
    }

    fn deadline(&self) -> Option<Instant> {
        self.0.get().copied()
    }
}

/// Runs the worker until the queue is closed and drained (or the shutdown deadline passes).
pub fn run(settings: OtlpSettings, queue: mpsc::Receiver<LogRecord>, stats: Arc<SinkStats>, closing: Arc<Closing>) {
    let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(e) => {
            tracing::error!("OTLP sink cannot start its runtime: {e}; its records will be counted as failed");
            return drain_as_failed(queue, &stats);
        }
    };
    runtime.block_on(async move {
        let mut exporter = match build_exporter(&settings) {
            Ok(exporter) => exporter,
            Err(e) => {
                tracing::error!("OTLP sink: {e}; its records will be counted as failed");
                return drain_as_failed(queue, &stats);
            }
        };
        exporter.set_resource(&resource());
        let mut worker = Worker { exporter, encoder: Encoder::default(), settings, stats, closing, failing: false };
        worker.serve(queue).await;
    });
}

fn drain_as_failed(mut queue: mpsc::Receiver<LogRecord>, stats: &SinkStats) {
    while queue.blocking_recv().is_some() {
        Counters::bump(&stats.failed);
    }
}

struct Worker {
    exporter: LogExporter,
    encoder: Encoder,
    settings: OtlpSettings,
    stats: Arc<SinkStats>,
    closing: Arc<Closing>,
    /// Whether the last attempt failed (to log an outage once, and its end once).
    failing: bool,
}

impl Worker {
    async fn serve(&mut self, mut queue: mpsc::Receiver<LogRecord>) {
        let mut batch = Vec::with_capacity(self.settings.batch_size);
        while let Some(first) = queue.recv().await {
            batch.push(first);
            let deadline = tokio::time::Instant::now() + self.settings.batch_interval;
            while batch.len() < self.settings.batch_size {
                match tokio::time::timeout_at(deadline, queue.recv()).await {
                    Ok(Some(record)) => batch.push(record),
                    Ok(None) | Err(_) => break,
                }
            }
            self.export(&batch).await;
            batch.clear();
        }
    }

    /// Exports one batch, retrying until it is delivered or the shutdown deadline passes.
    async fn export(&mut self, batch: &[LogRecord]) {
        let records: Vec<SdkLogRecord> = batch.iter().map(|r| self.encoder.encode(r)).collect();
        let scope = InstrumentationScope::builder("ksense").with_version(env!("CARGO_PKG_VERSION")).build();
        let pairs: Vec<(&SdkLogRecord, &InstrumentationScope)> = records.iter().map(|r| (r, &scope)).collect();
        let count = batch.len() as u64;
        let mut backoff = FIRST_BACKOFF;
        loop {
            match self.exporter.export(LogBatch::new(&pairs)).await {
                Ok(()) => {
                    if self.failing {
                        tracing::info!(endpoint = %self.settings.endpoint, "OTLP export works again");
                        self.failing = false;
                    }
                    self.stats.delivered.fetch_add(count, std::sync::atomic::Ordering::Relaxed);
                    return;
                }
                Err(e) => {
                    if !self.failing {
                        tracing::warn!(endpoint = %self.settings.endpoint, "OTLP export failed, retrying with backoff: {e}");
                        self.failing = true;
                    }
                    let mut wait = backoff;
                    if let Some(deadline) = self.closing.deadline() {
                        let left = deadline.saturating_duration_since(Instant::now());
                        if left.is_zero() {
                            tracing::warn!("ksense is stopping: {count} records not delivered to the OTLP collector");
                            self.stats.failed.fetch_add(count, std::sync::atomic::Ordering::Relaxed);
                            return;
                        }
                        wait = wait.min(left);
                    }
                    Counters::bump(&self.stats.retries);
                    tokio::time::sleep(wait).await;
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                }
            }
        }
    }
}

/// The OpenTelemetry OTLP exporter for the settings, transport, TLS and all.
fn build_exporter(s: &OtlpSettings) -> Result<LogExporter, String> {
    let read = |path: &std::path::PathBuf| std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()));
    match s.protocol {
        Protocol::Grpc => {
            let mut metadata = tonic::metadata::MetadataMap::new();
            for (name, value) in &s.headers {
                let key = tonic::metadata::MetadataKey::from_bytes(name.to_ascii_lowercase().as_bytes())
                    .map_err(|_| format!("header name {name:?} is not valid gRPC metadata"))?;
                let value = value.parse().map_err(|_| format!("the value of header {name:?} is not valid gRPC metadata"))?;
                metadata.insert(key, value);
            }
            let mut builder =
                LogExporter::builder().with_tonic().with_endpoint(&s.endpoint).with_timeout(s.timeout).with_metadata(metadata);
            if s.compression == Compression::Gzip {
                builder = builder.with_compression(opentelemetry_otlp::Compression::Gzip);
            }
            if s.ca_file.is_some() || s.client_identity.is_some() {
                let mut tls = tonic::transport::ClientTlsConfig::new();
                if let Some(ca) = &s.ca_file {
                    tls = tls.ca_certificate(tonic::transport::Certificate::from_pem(read(ca)?));
                }
                if let Some((cert, key)) = &s.client_identity {
                    tls = tls.identity(tonic::transport::Identity::from_pem(read(cert)?, read(key)?));
                }
                builder = builder.with_tls_config(tls);
            }
            builder.build().map_err(|e| format!("cannot build the gRPC exporter for {}: {e}", s.endpoint))
        }
        Protocol::HttpProtobuf => {
            let mut client = reqwest::Client::builder().timeout(s.timeout);
            if let Some(ca) = &s.ca_file {
                let cert = reqwest::Certificate::from_pem(&read(ca)?).map_err(|e| format!("CA file: {e}"))?;
                client = client.add_root_certificate(cert);
            }
            if let Some((cert, key)) = &s.client_identity {
                let mut pem = read(cert)?;
                pem.extend(read(key)?);
                client = client.identity(reqwest::Identity::from_pem(&pem).map_err(|e| format!("client certificate: {e}"))?);
            }
            let client = client.build().map_err(|e| format!("cannot build the HTTP client: {e}"))?;
            let headers: HashMap<String, String> = s.headers.clone().into_iter().collect();
            let mut builder = LogExporter::builder()
                .with_http()
                .with_endpoint(&s.endpoint)
                .with_protocol(opentelemetry_otlp::Protocol::HttpBinary)
                .with_timeout(s.timeout)
                .with_headers(headers)
                .with_http_client(client);
            if s.compression == Compression::Gzip {
                builder = builder.with_compression(opentelemetry_otlp::Compression::Gzip);
            }
            builder.build().map_err(|e| format!("cannot build the HTTP exporter for {}: {e}", s.endpoint))
        }
    }
}
