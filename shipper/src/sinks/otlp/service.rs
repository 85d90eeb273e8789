//! The OTLP sink's worker: its own thread and tokio runtime (so a slow collector never stalls
//! the pipeline), taking encoded chunks from the sink's queue, joining them into batches and
//! exporting them, a few requests in flight at once, each retried with exponential backoff
//! until the collector answers again. While it retries, the queue fills and the sink counts
//! what it has to drop.
use std::{
    sync::{
        Arc, OnceLock,
        atomic::{AtomicBool, AtomicUsize, Ordering::Relaxed},
    },
    time::{Duration, Instant},
};

use bytes::{Buf, BufMut, Bytes};
use tokio::{sync::mpsc, task::JoinSet};
use tonic::{
    Status,
    codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder as GrpcEncoder},
    transport::Channel,
};

use super::{
    config::{Compression, OtlpSettings, Protocol},
    encoder::{Envelope, resource},
};
use crate::telemetry::{Counters, SinkStats};

/// First wait after a failed export; doubles up to [`MAX_BACKOFF`].
const FIRST_BACKOFF: Duration = Duration::from_millis(200);
/// Longest wait between attempts, so export resumes within seconds of the collector's return.
const MAX_BACKOFF: Duration = Duration::from_secs(5);
/// Export requests in flight at once: while one waits for the collector's answer, the next
/// batch is already on its way.
const MAX_IN_FLIGHT: usize = 4;
/// The gRPC method of the OTLP logs service.
const GRPC_EXPORT: &str = "/opentelemetry.proto.collector.logs.v1.LogsService/Export";

/// Records encoded by the sink ([`super::encoder::Encoder`]), on their way to the worker.
#[derive(Debug, Default)]
pub struct Chunk {
    /// `ScopeLogs.log_records` entries back to back.
    pub bytes: Vec<u8>,
    /// How many.
    pub records: u64,
    /// `bytes`, charged to the sink's share of the memory budget until the chunk is dropped.
    pub charge: crate::budget::Charge,
}

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
/// `queued` counts the records in the queue: the worker takes off what it receives.
pub fn run(
    settings: OtlpSettings,
    queue: mpsc::UnboundedReceiver<Chunk>,
    queued: Arc<AtomicUsize>,
    stats: Arc<SinkStats>,
    closing: Arc<Closing>,
) {
    let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(e) => {
            tracing::error!("OTLP sink cannot start its runtime: {e}; its records will be counted as failed");
            return drain_as_failed(queue, &queued, &stats);
        }
    };
    runtime.block_on(async move {
        let transport = match Transport::new(&settings) {
            Ok(transport) => transport,
            Err(e) => {
                tracing::error!("OTLP sink: {e}; its records will be counted as failed");
                return drain_as_failed(queue, &queued, &stats);
            }
        };
        let exports = Arc::new(Exports { transport, stats, closing, endpoint: settings.endpoint.clone(), failing: AtomicBool::new(false) });
        serve(&settings, Envelope::new(&resource()), queue, &queued, exports).await;
    });
}

fn drain_as_failed(mut queue: mpsc::UnboundedReceiver<Chunk>, queued: &AtomicUsize, stats: &SinkStats) {
    while let Some(chunk) = queue.blocking_recv() {
        queued.fetch_sub(chunk.records as usize, Relaxed);
        stats.failed.fetch_add(chunk.records, Relaxed);
    }
}

/// Joins chunks into batches of at least `batch_size` records (or what arrived within
/// `batch_interval`) and starts their export, at most [`MAX_IN_FLIGHT`] at once.
async fn serve(
    settings: &OtlpSettings,
    envelope: Envelope,
    mut queue: mpsc::UnboundedReceiver<Chunk>,
    queued: &AtomicUsize,
    exports: Arc<Exports>,
) {
    let mut in_flight = JoinSet::new();
    let mut batch = Vec::new();
    let mut charges = Vec::new();
    let take = |chunk: Chunk, batch: &mut Vec<u8>, charges: &mut Vec<crate::budget::Charge>| {
        queued.fetch_sub(chunk.records as usize, Relaxed);
        batch.extend_from_slice(&chunk.bytes);
        charges.push(chunk.charge);
        chunk.records
    };
    while let Some(first) = queue.recv().await {
        let mut count = take(first, &mut batch, &mut charges);
        let deadline = tokio::time::Instant::now() + settings.batch_interval;
        while count < settings.batch_size as u64 {
            match tokio::time::timeout_at(deadline, queue.recv()).await {
                Ok(Some(chunk)) => count += take(chunk, &mut batch, &mut charges),
                Ok(None) | Err(_) => break,
            }
        }
        while in_flight.len() >= MAX_IN_FLIGHT {
            in_flight.join_next().await;
        }
        let request = Bytes::from(envelope.request(&batch));
        batch.clear();
        let (export, charges) = (exports.clone().export(request, count), std::mem::take(&mut charges));
        // The chunks' bytes stay charged to the sink's share of the memory budget until their
        // export ends: the request holds as much.
        in_flight.spawn(async move {
            export.await;
            drop(charges);
        });
    }
    while in_flight.join_next().await.is_some() {}
}

/// What every export shares.
struct Exports {
    transport: Transport,
    stats: Arc<SinkStats>,
    closing: Arc<Closing>,
    endpoint: String,
    /// Whether the last attempt failed (to log an outage once, and its end once).
    failing: AtomicBool,
}

impl Exports {
    /// Exports one request of `count` records, retrying until it is delivered or the shutdown
    /// deadline passes.
    async fn export(self: Arc<Self>, request: Bytes, count: u64) {
        let mut backoff = FIRST_BACKOFF;
        loop {
            match self.transport.send(request.clone()).await {
                Ok(()) => {
                    if self.failing.swap(false, Relaxed) {
                        tracing::info!(endpoint = %self.endpoint, "OTLP export works again");
                    }
                    self.stats.delivered.fetch_add(count, Relaxed);
                    return;
                }
                Err(e) => {
                    if !self.failing.swap(true, Relaxed) {
                        tracing::warn!(endpoint = %self.endpoint, "OTLP export failed, retrying with backoff: {e}");
                    }
                    let mut wait = backoff;
                    if let Some(deadline) = self.closing.deadline() {
                        let left = deadline.saturating_duration_since(Instant::now());
                        if left.is_zero() {
                            tracing::warn!("ksense is stopping: {count} records not delivered to the OTLP collector");
                            self.stats.failed.fetch_add(count, Relaxed);
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

/// How requests reach the collector.
enum Transport {
    /// OTLP/gRPC: `LogsService/Export` with the request bytes as its message.
    Grpc { client: tonic::client::Grpc<Channel>, metadata: tonic::metadata::MetadataMap },
    /// OTLP/HTTP: a POST of the request bytes (gzipped when configured).
    Http { client: reqwest::Client, endpoint: String, headers: reqwest::header::HeaderMap, gzip: bool },
}

impl Transport {
    /// The transport for the settings, TLS and all. gRPC connects lazily (and again after a
    /// failure), so a collector that is down at start-up is not an error.
    fn new(s: &OtlpSettings) -> Result<Transport, String> {
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
                let endpoint = tonic::transport::Endpoint::from_shared(s.endpoint.clone())
                    .map_err(|e| format!("invalid gRPC endpoint {}: {e}", s.endpoint))?;
                let https = endpoint.uri().scheme_str() == Some("https");
                let endpoint = if https || s.ca_file.is_some() || s.client_identity.is_some() {
                    let mut tls = tonic::transport::ClientTlsConfig::new();
                    if let Some(ca) = &s.ca_file {
                        tls = tls.ca_certificate(tonic::transport::Certificate::from_pem(read(ca)?));
                    }
                    if let Some((cert, key)) = &s.client_identity {
                        tls = tls.identity(tonic::transport::Identity::from_pem(read(cert)?, read(key)?));
                    }
                    endpoint.tls_config(tls).map_err(|e| format!("TLS for {}: {e}", s.endpoint))?
                } else {
                    endpoint
                };
                let mut client = tonic::client::Grpc::new(endpoint.timeout(s.timeout).connect_lazy());
                if s.compression == Compression::Gzip {
                    client = client.send_compressed(tonic::codec::CompressionEncoding::Gzip);
                }
                Ok(Transport::Grpc { client, metadata })
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
                let mut headers = reqwest::header::HeaderMap::new();
                for (name, value) in &s.headers {
                    let name = reqwest::header::HeaderName::from_bytes(name.as_bytes())
                        .map_err(|_| format!("header name {name:?} is not a valid HTTP header name"))?;
                    let value = value.parse().map_err(|_| format!("the value of header {name:?} is not a valid HTTP header value"))?;
                    headers.insert(name, value);
                }
                Ok(Transport::Http { client, endpoint: s.endpoint.clone(), headers, gzip: s.compression == Compression::Gzip })
            }
        }
    }

    /// Sends one request; an error says why it was not accepted.
    async fn send(&self, request: Bytes) -> Result<(), String> {
        match self {
            Transport::Grpc { client, metadata } => {
                let mut client = client.clone();
                client.ready().await.map_err(|e| format!("gRPC channel: {e}"))?;
                let mut request = tonic::Request::new(request);
                *request.metadata_mut() = metadata.clone();
                let path = http::uri::PathAndQuery::from_static(GRPC_EXPORT);
                client.unary(request, path, RawCodec).await.map(drop).map_err(|status| status.to_string())
            }
            Transport::Http { client, endpoint, headers, gzip } => {
                let mut post = client
                    .post(endpoint)
                    .headers(headers.clone())
                    .header(reqwest::header::CONTENT_TYPE, "application/x-protobuf");
                post = if *gzip { post.header(reqwest::header::CONTENT_ENCODING, "gzip").body(gzip_bytes(&request)?) } else { post.body(request) };
                let response = post.send().await.map_err(|e| e.to_string())?;
                let status = response.status();
                // Read the answer to the end, so the connection can carry the next request.
                let answer = response.bytes().await.map_err(|e| e.to_string())?;
                if status.is_success() {
                    Ok(())
                } else {
                    Err(format!("HTTP {status}: {}", String::from_utf8_lossy(&answer[..answer.len().min(200)])))
                }
            }
        }
    }
}

fn gzip_bytes(data: &[u8]) -> Result<Vec<u8>, String> {
    use std::io::Write as _;
    let mut gz = flate2::write::GzEncoder::new(Vec::with_capacity(data.len() / 4), flate2::Compression::default());
    gz.write_all(data).and_then(|()| gz.finish()).map_err(|e| format!("gzip: {e}"))
}

/// A gRPC codec for bytes that are already an encoded request; the answer
/// (`ExportLogsServiceResponse`, whose partial success is advisory) is read and set aside.
struct RawCodec;

impl Codec for RawCodec {
    type Encode = Bytes;
    type Decode = ();
    type Encoder = RawCodec;
    type Decoder = RawCodec;

    fn encoder(&mut self) -> RawCodec {
        RawCodec
    }

    fn decoder(&mut self) -> RawCodec {
        RawCodec
    }
}

impl GrpcEncoder for RawCodec {
    type Item = Bytes;
    type Error = Status;

    fn encode(&mut self, item: Bytes, dst: &mut EncodeBuf<'_>) -> Result<(), Status> {
        dst.put(item);
        Ok(())
    }
}

impl Decoder for RawCodec {
    type Item = ();
    type Error = Status;

    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<()>, Status> {
        src.advance(src.remaining());
        Ok(Some(()))
    }
}
