//! The OTLP sink's worker: its own thread and tokio runtime (so a slow collector never stalls
//! the pipeline), taking encoded chunks from the sink's queue, joining them into batches no
//! larger than a request may be, and exporting them, a few requests in flight at once.
//! What the collector answers is read as the OTLP specification says ([`super::response`]):
//! a failure worth retrying (the collector unreachable, overloaded, timed out) is retried with
//! exponential backoff, or after the delay the collector asked for, until it is taken or
//! ksense stops; while it retries, the queue fills and the sink counts what it has to drop. A
//! refusal for good drops the batch, and records a collector rejects count as `rejected`.
use std::{
    collections::BTreeSet,
    sync::{
        Arc, Mutex, OnceLock,
        atomic::{AtomicBool, AtomicUsize, Ordering::Relaxed},
    },
    time::{Duration, Instant, SystemTime},
};

use bytes::{Buf, BufMut, Bytes};
use tokio::{sync::mpsc, task::JoinSet};
use tonic::{
    Status,
    codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder as GrpcEncoder},
    transport::Channel,
};

use super::{
    config::{Compression, OtlpSettings, Protocol, redact_url, url_secrets},
    encoder::Envelope,
    response::{self, Outcome},
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
/// HTTP/2 PING interval on an idle or busy connection, and how long the answer may take before
/// the connection counts as dead: a collector gone without a FIN is noticed within a minute.
const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(30);
const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(10);
/// The most of an HTTP answer read: an `ExportLogsServiceResponse` or an error message is far
/// smaller.
const MAX_ANSWER_BYTES: usize = 64 << 10;
/// Distinct causes of failure logged; beyond this many, new causes are only counted.
const MAX_LOGGED_CAUSES: usize = 64;

/// Records encoded by the sink ([`super::encoder::Encoder`]), on their way to the worker.
#[derive(Debug, Default)]
pub struct Chunk {
    /// `ScopeLogs.log_records` entries back to back.
    pub bytes: Vec<u8>,
    /// How many.
    pub records: u64,
    /// `bytes`, charged to the sink's share of the memory budget until the chunk is dropped
    /// (one charge per chunk a batch was joined from).
    pub charges: Vec<crate::budget::Charge>,
    /// Whether it holds one of ksense's own records (`ksense.loss`, `ksense.status`): then
    /// neither the queue's bound nor the memory budget drops it, so a loss report is not lost
    /// to the loss it reports.
    pub own: bool,
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
    envelope: Envelope,
    queue: mpsc::UnboundedReceiver<Chunk>,
    queued: Arc<AtomicUsize>,
    stats: Arc<SinkStats>,
    closing: Arc<Closing>,
) {
    let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(e) => {
            tracing::error!("OTLP sink cannot start its runtime: {e}; its records will be counted as failed");
            let mut queue = queue;
            while let Some(chunk) = queue.blocking_recv() {
                count_failed(chunk, &queued, &stats);
            }
            return;
        }
    };
    runtime.block_on(async move {
        let transport = match Transport::new(&settings) {
            Ok(transport) => transport,
            Err(e) => {
                tracing::error!("OTLP sink: {e}; its records will be counted as failed");
                let mut queue = queue;
                while let Some(chunk) = queue.recv().await {
                    count_failed(chunk, &queued, &stats);
                }
                return;
            }
        };
        let exports = Arc::new(Exports {
            transport,
            stats,
            closing,
            endpoint: redact_url(&settings.endpoint),
            timeout: settings.timeout,
            failing: AtomicBool::new(false),
            logged: Mutex::default(),
        });
        let batches = Batches::new(settings.batch_size as u64, envelope.batch_limit(settings.max_request_bytes));
        serve(&settings, envelope, batches, queue, &queued, exports).await;
    });
}

/// Counts `chunk` as failed: the sink could not start (inside its runtime, the queue is read
/// without blocking the runtime's thread).
fn count_failed(chunk: Chunk, queued: &AtomicUsize, stats: &SinkStats) {
    queued.fetch_sub(chunk.records as usize, Relaxed);
    stats.failed.fetch_add(chunk.records, Relaxed);
}

/// Chunks joined into batches of at most `records` records (more only when one chunk alone
/// holds more) and at most `limit` bytes (every chunk is within it: the sink sees to that).
#[derive(Debug)]
pub struct Batches {
    records: u64,
    limit: usize,
    batch: Chunk,
}

impl Batches {
    /// Batches of `records` records and `limit` bytes at most.
    pub fn new(records: u64, limit: usize) -> Batches {
        Batches { records, limit, batch: Chunk::default() }
    }

    /// Adds `chunk` to the batch; when it would make the batch larger than the limit, the
    /// batch so far is returned, and `chunk` starts the next one.
    pub fn push(&mut self, chunk: Chunk) -> Option<Chunk> {
        let done = (self.batch.records > 0 && self.batch.bytes.len() + chunk.bytes.len() > self.limit).then(|| self.take());
        self.batch.bytes.extend_from_slice(&chunk.bytes);
        self.batch.records += chunk.records;
        self.batch.charges.extend(chunk.charges);
        done.flatten()
    }

    /// Whether the batch holds its records.
    pub fn is_full(&self) -> bool {
        self.batch.records >= self.records
    }

    /// The batch, if it holds any record.
    pub fn take(&mut self) -> Option<Chunk> {
        (self.batch.records > 0).then(|| std::mem::take(&mut self.batch))
    }
}

/// Joins chunks into batches (each within `batch_interval` of its first chunk) and starts
/// their export, at most [`MAX_IN_FLIGHT`] at once.
async fn serve(
    settings: &OtlpSettings,
    envelope: Envelope,
    mut batches: Batches,
    mut queue: mpsc::UnboundedReceiver<Chunk>,
    queued: &AtomicUsize,
    exports: Arc<Exports>,
) {
    let mut in_flight = JoinSet::new();
    let mut send = async |batch: Chunk| {
        while in_flight.len() >= MAX_IN_FLIGHT {
            in_flight.join_next().await;
        }
        let export = exports.clone().export(Bytes::from(envelope.request(&batch.bytes)), batch.records);
        // The chunks' bytes stay charged to the sink's share of the memory budget until their
        // export ends: the request holds as much.
        let charges = batch.charges;
        in_flight.spawn(async move {
            export.await;
            drop(charges);
        });
    };
    let receive = |chunk: Chunk| {
        queued.fetch_sub(chunk.records as usize, Relaxed);
        chunk
    };
    while let Some(first) = queue.recv().await {
        let deadline = tokio::time::Instant::now() + settings.batch_interval;
        if let Some(batch) = batches.push(receive(first)) {
            send(batch).await;
        }
        while !batches.is_full() {
            match tokio::time::timeout_at(deadline, queue.recv()).await {
                Ok(Some(chunk)) => {
                    if let Some(batch) = batches.push(receive(chunk)) {
                        send(batch).await;
                    }
                }
                Ok(None) | Err(_) => break,
            }
        }
        if let Some(batch) = batches.take() {
            send(batch).await;
        }
    }
    while in_flight.join_next().await.is_some() {}
}

/// What every export shares.
struct Exports {
    transport: Transport,
    stats: Arc<SinkStats>,
    closing: Arc<Closing>,
    /// The collector's URL, without credentials.
    endpoint: String,
    /// Longest an attempt may take, answer included.
    timeout: Duration,
    /// Whether the last attempt failed (to log an outage once, and its end once).
    failing: AtomicBool,
    /// Causes of refusal already logged, so each is logged once, not once per batch.
    logged: Mutex<BTreeSet<String>>,
}

impl Exports {
    /// Exports one request of `count` records, retrying what is worth retrying until it is
    /// taken, refused or the shutdown deadline passes.
    async fn export(self: Arc<Self>, request: Bytes, count: u64) {
        let mut backoff = FIRST_BACKOFF;
        loop {
            // Once ksense is stopping, no attempt outlasts the grace period, and none starts
            // after it.
            let mut timeout = self.timeout;
            if let Some(deadline) = self.closing.deadline() {
                timeout = timeout.min(deadline.saturating_duration_since(Instant::now()));
                if timeout.is_zero() {
                    return self.give_up(count);
                }
            }
            let outcome = match tokio::time::timeout(timeout, self.transport.send(request.clone(), timeout)).await {
                Ok(outcome) => outcome,
                Err(_) => Outcome::Retry { cause: format!("no answer within {} ms", timeout.as_millis()), after: None },
            };
            match outcome {
                Outcome::Accepted { rejected, message } => {
                    self.working();
                    let rejected = rejected.min(count);
                    self.stats.delivered.fetch_add(count - rejected, Relaxed);
                    self.stats.rejected.fetch_add(rejected, Relaxed);
                    if (rejected > 0 || !message.is_empty()) && self.first_time("partial success") {
                        tracing::warn!(
                            endpoint = %self.endpoint,
                            "the OTLP collector rejected {rejected} of {count} records (partial success), saying: {message:?}; \
                             such records are counted in sink_otlp_rejected, and this is logged once"
                        );
                    }
                    return;
                }
                Outcome::Refused { cause, detail } => {
                    self.working();
                    self.stats.rejected.fetch_add(count, Relaxed);
                    if self.first_time(&cause) {
                        tracing::error!(
                            endpoint = %self.endpoint,
                            "the OTLP collector refused a request of {count} records for good ({cause}: {:?}): \
                             not retried, its records are counted in sink_otlp_rejected; this cause is logged once",
                            self.scrub(&detail)
                        );
                    }
                    return;
                }
                Outcome::Retry { cause, after } => {
                    if !self.failing.swap(true, Relaxed) {
                        tracing::warn!(endpoint = %self.endpoint, "OTLP export failed, retrying with backoff: {}", self.scrub(&cause));
                    }
                    let mut wait = after.unwrap_or(backoff);
                    if let Some(deadline) = self.closing.deadline() {
                        let left = deadline.saturating_duration_since(Instant::now());
                        if left.is_zero() {
                            return self.give_up(count);
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

    /// ksense is stopping and its grace period is over: `count` records count as failed.
    fn give_up(&self, count: u64) {
        tracing::warn!("ksense is stopping: {count} records not delivered to the OTLP collector");
        self.stats.failed.fetch_add(count, Relaxed);
    }

    /// The collector answered: an outage, if there was one, is over.
    fn working(&self) {
        if self.failing.swap(false, Relaxed) {
            tracing::info!(endpoint = %self.endpoint, "OTLP export works again");
        }
    }

    /// Whether `cause` is logged for the first time (and is now noted).
    fn first_time(&self, cause: &str) -> bool {
        let mut logged = self.logged.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        logged.len() < MAX_LOGGED_CAUSES && logged.insert(cause.to_owned())
    }

    /// `message` without the endpoint's credentials, should a transport error quote the URL.
    fn scrub(&self, message: &str) -> String {
        self.transport.secrets().iter().fold(message.to_owned(), |text, secret| text.replace(secret.as_str(), "***"))
    }
}

/// How requests reach the collector.
enum Transport {
    /// OTLP/gRPC: `LogsService/Export` with the request bytes as its message.
    Grpc { client: tonic::client::Grpc<Channel>, metadata: tonic::metadata::MetadataMap, secrets: Vec<String> },
    /// OTLP/HTTP: a POST of the request bytes (gzipped when configured).
    Http { client: reqwest::Client, endpoint: String, headers: reqwest::header::HeaderMap, gzip: bool, secrets: Vec<String> },
}

/// `User-Agent` of both transports.
fn user_agent() -> String {
    format!("ksense/{}", env!("CARGO_PKG_VERSION"))
}

impl Transport {
    /// The transport for the settings, TLS and all. gRPC connects lazily (and again after a
    /// failure), so a collector that is down at start-up is not an error.
    fn new(s: &OtlpSettings) -> Result<Transport, String> {
        let read = |path: &std::path::PathBuf| std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()));
        let shown = redact_url(&s.endpoint);
        let secrets = url_secrets(&s.endpoint);
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
                    .map_err(|_| format!("invalid gRPC endpoint {shown}"))?
                    .user_agent(user_agent())
                    .map_err(|e| format!("user agent: {e}"))?
                    .connect_timeout(s.timeout)
                    .timeout(s.timeout)
                    .http2_keep_alive_interval(KEEPALIVE_INTERVAL)
                    .keep_alive_timeout(KEEPALIVE_TIMEOUT)
                    .keep_alive_while_idle(true);
                let https = endpoint.uri().scheme_str() == Some("https");
                let endpoint = if https || s.ca_file.is_some() || s.client_identity.is_some() {
                    let mut tls = tonic::transport::ClientTlsConfig::new();
                    if let Some(ca) = &s.ca_file {
                        tls = tls.ca_certificate(tonic::transport::Certificate::from_pem(read(ca)?));
                    }
                    if let Some((cert, key)) = &s.client_identity {
                        tls = tls.identity(tonic::transport::Identity::from_pem(read(cert)?, read(key)?));
                    }
                    endpoint.tls_config(tls).map_err(|e| format!("TLS for {shown}: {e}"))?
                } else {
                    endpoint
                };
                let mut client = tonic::client::Grpc::new(endpoint.connect_lazy());
                if s.compression == Compression::Gzip {
                    client = client.send_compressed(tonic::codec::CompressionEncoding::Gzip);
                }
                Ok(Transport::Grpc { client, metadata, secrets })
            }
            Protocol::HttpProtobuf => {
                // TCP keepalive stands in for HTTP/2 PINGs, as this client speaks HTTP/1.1. The
                // connect timeout covers TCP and TLS; every attempt as a whole is bounded by
                // `timeout` in Exports::export too.
                let mut client = reqwest::Client::builder()
                    .timeout(s.timeout)
                    .connect_timeout(s.timeout)
                    .tcp_keepalive(KEEPALIVE_INTERVAL)
                    .user_agent(user_agent());
                if let Some(ca) = &s.ca_file {
                    let cert = reqwest::Certificate::from_pem(&read(ca)?).map_err(|e| format!("CA file: {e}"))?;
                    client = client.add_root_certificate(cert);
                }
                if let Some((cert, key)) = &s.client_identity {
                    let mut pem = read(cert)?;
                    pem.extend(read(key)?);
                    client = client.identity(reqwest::Identity::from_pem(&pem).map_err(|e| format!("client certificate: {e}"))?);
                }
                let client = client.build().map_err(|e| format!("cannot build the HTTP client: {}", e.without_url()))?;
                let mut headers = reqwest::header::HeaderMap::new();
                for (name, value) in &s.headers {
                    let name = reqwest::header::HeaderName::from_bytes(name.as_bytes())
                        .map_err(|_| format!("header name {name:?} is not a valid HTTP header name"))?;
                    let value = value.parse().map_err(|_| format!("the value of header {name:?} is not a valid HTTP header value"))?;
                    headers.insert(name, value);
                }
                Ok(Transport::Http { client, endpoint: s.endpoint.clone(), headers, gzip: s.compression == Compression::Gzip, secrets })
            }
        }
    }

    /// What of the endpoint must never be shown.
    fn secrets(&self) -> &[String] {
        match self {
            Transport::Grpc { secrets, .. } | Transport::Http { secrets, .. } => secrets,
        }
    }

    /// Sends one request, with `timeout` as its deadline (gRPC's `grpc-timeout`), and says
    /// what became of it.
    async fn send(&self, request: Bytes, timeout: Duration) -> Outcome {
        let transport_error = |e: String| Outcome::Retry { cause: e, after: None };
        match self {
            Transport::Grpc { client, metadata, .. } => {
                let mut client = client.clone();
                if let Err(e) = client.ready().await {
                    return transport_error(format!("gRPC channel: {e}"));
                }
                let mut request = tonic::Request::new(request);
                *request.metadata_mut() = metadata.clone();
                request.set_timeout(timeout);
                let path = http::uri::PathAndQuery::from_static(GRPC_EXPORT);
                match client.unary(request, path, RawCodec).await {
                    Ok(response) => response::grpc(Ok(response.get_ref())),
                    Err(status) => response::grpc(Err(&status)),
                }
            }
            Transport::Http { client, endpoint, headers, gzip, .. } => {
                let mut post = client
                    .post(endpoint)
                    .headers(headers.clone())
                    .header(reqwest::header::CONTENT_TYPE, "application/x-protobuf");
                post = if *gzip {
                    match gzip_bytes(&request) {
                        Ok(body) => post.header(reqwest::header::CONTENT_ENCODING, "gzip").body(body),
                        Err(e) => return transport_error(e),
                    }
                } else {
                    post.body(request)
                };
                let mut response = match post.send().await {
                    Ok(response) => response,
                    Err(e) => return transport_error(e.without_url().to_string()),
                };
                let status = response.status();
                let retry_after = response.headers().get(reqwest::header::RETRY_AFTER).and_then(|v| v.to_str().ok()).map(str::to_owned);
                // Read the answer to the end, so the connection can carry the next request; but
                // no more of it than an answer needs, whatever the collector sends.
                let mut body = Vec::new();
                while body.len() < MAX_ANSWER_BYTES {
                    match response.chunk().await {
                        Ok(Some(chunk)) => body.extend_from_slice(&chunk),
                        Ok(None) => break,
                        Err(e) => return transport_error(e.without_url().to_string()),
                    }
                }
                response::http(status, retry_after.as_deref(), &body, SystemTime::now())
            }
        }
    }
}

fn gzip_bytes(data: &[u8]) -> Result<Vec<u8>, String> {
    use std::io::Write as _;
    let mut gz = flate2::write::GzEncoder::new(Vec::with_capacity(data.len() / 4), flate2::Compression::default());
    gz.write_all(data).and_then(|()| gz.finish()).map_err(|e| format!("gzip: {e}"))
}

/// A gRPC codec for messages as bytes, encoded and decoded elsewhere: the exporter's requests
/// are encoded already, and its answers (`ExportLogsServiceResponse`) are read by
/// [`response::grpc`].
pub struct RawCodec;

impl Codec for RawCodec {
    type Encode = Bytes;
    type Decode = Bytes;
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
    type Item = Bytes;
    type Error = Status;

    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<Bytes>, Status> {
        Ok(Some(src.copy_to_bytes(src.remaining())))
    }
}
