//! An OTLP/gRPC logs receiver that refuses on demand, for the tests a real collector cannot
//! serve (rotel, [`crate::collector`], takes everything). Built on tonic's server on a loopback
//! port; like a gRPC server or the OpenTelemetry Collector by default, it refuses a request
//! larger than 4 MiB with `RESOURCE_EXHAUSTED` (and no `RetryInfo`); as its [`Behaviour`] says,
//! it throttles the first requests (`RESOURCE_EXHAUSTED` with `RetryInfo`), refuses every n-th
//! with `INVALID_ARGUMENT` and rejects one record of every m-th it accepts (`partial_success`).
//! It counts what it accepted, refused and rejected.
use std::{
    collections::BTreeSet,
    convert::Infallible,
    future::Future,
    pin::Pin,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, AtomicUsize, Ordering::Relaxed},
    },
    task::{Context, Poll},
    thread::JoinHandle,
    time::{Duration, Instant},
};

use bytes::Bytes;
use ksense::sinks::otlp::service::RawCodec;
use opentelemetry_proto::tonic::{
    collector::logs::v1::{ExportLogsPartialSuccess, ExportLogsServiceRequest, ExportLogsServiceResponse},
    common::v1::any_value,
};
use prost::Message as _;
use tonic::Status;

/// gRPC's default limit on a received message, which the OpenTelemetry Collector keeps.
pub const GRPC_DEFAULT_MAX_RECEIVE: usize = 4 << 20;

/// What the receiver counted.
#[derive(Debug, Default)]
pub struct Counts {
    /// Export requests answered OK.
    pub accepted_requests: AtomicU64,
    /// Log records in them.
    pub accepted_records: AtomicU64,
    /// Requests refused with `INVALID_ARGUMENT`.
    pub refused_requests: AtomicU64,
    /// Log records in them.
    pub refused_records: AtomicU64,
    /// Records accepted requests said were rejected (`partial_success`), one per such request.
    pub partially_rejected_records: AtomicU64,
    /// Requests answered `RESOURCE_EXHAUSTED` with `RetryInfo`.
    pub throttled_requests: AtomicU64,
    /// Requests over [`GRPC_DEFAULT_MAX_RECEIVE`], refused with `RESOURCE_EXHAUSTED`.
    pub oversized_requests: AtomicU64,
    /// The largest request received, in bytes.
    pub largest_request: AtomicUsize,
}

/// One accepted log record, as far as the tests look at it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Accepted {
    /// `event_name`.
    pub event_name: String,
    /// The `process.pid` attribute, if any.
    pub pid: Option<i64>,
    /// Whether `ksense.process.command_args.truncated` is true.
    pub args_truncated: bool,
}

/// What the receiver does besides accepting.
#[derive(Debug, Clone, Copy, Default)]
pub struct Behaviour {
    /// The first this many requests are answered `RESOURCE_EXHAUSTED` with a `RetryInfo` of
    /// 1 s: throttled, to be retried.
    pub throttle_first: u64,
    /// Every n-th request after those is refused with `INVALID_ARGUMENT` (0: none).
    pub refuse_every: u64,
    /// Every m-th request accepted has one record rejected in a `partial_success` (0: none).
    pub partial_every: u64,
}

struct State {
    counts: Counts,
    throttle_first: u64,
    /// See [`Behaviour`]; both 0 once [`Receiver::accept_everything`] is called.
    refuse_every: AtomicU64,
    partial_every: AtomicU64,
    /// Requests not throttled, not over the limit.
    seen: AtomicU64,
    accepted: Mutex<Vec<Accepted>>,
    /// Every `User-Agent` the requests carried.
    user_agents: Mutex<BTreeSet<String>>,
}

/// A running receiver; stops when dropped.
pub struct Receiver {
    /// Its loopback port.
    pub port: u16,
    state: Arc<State>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl Receiver {
    /// Starts a receiver that behaves as `behaviour` says.
    pub fn start(behaviour: Behaviour) -> Receiver {
        let state = Arc::new(State {
            counts: Counts::default(),
            throttle_first: behaviour.throttle_first,
            refuse_every: AtomicU64::new(behaviour.refuse_every),
            partial_every: AtomicU64::new(behaviour.partial_every),
            seen: AtomicU64::new(0),
            accepted: Mutex::new(Vec::new()),
            user_agents: Mutex::default(),
        });
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        listener.set_nonblocking(true).unwrap();
        let (stop, stopped) = tokio::sync::oneshot::channel();
        let service = LogsService(state.clone());
        let thread = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
            runtime.block_on(async move {
                let listener = tokio::net::TcpListener::from_std(listener).unwrap();
                let incoming = tonic::transport::server::TcpIncoming::from(listener);
                tonic::transport::Server::builder()
                    .serve_with_incoming_shutdown(service, incoming, async {
                        let _ = stopped.await;
                    })
                    .await
                    .unwrap();
            });
        });
        Receiver { port, state, stop: Some(stop), thread: Some(thread) }
    }

    /// Its URL.
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Refuses and rejects nothing from now on.
    pub fn accept_everything(&self) {
        self.state.refuse_every.store(0, Relaxed);
        self.state.partial_every.store(0, Relaxed);
    }

    /// What it counted.
    pub fn counts(&self) -> &Counts {
        &self.state.counts
    }

    /// The `User-Agent` headers the requests carried.
    pub fn user_agents(&self) -> BTreeSet<String> {
        self.state.user_agents.lock().unwrap().clone()
    }

    /// Waits (at most `timeout`) for an accepted record matching `predicate`.
    pub fn wait_for(&self, what: &str, timeout: Duration, predicate: impl Fn(&Accepted) -> bool) -> Accepted {
        self.try_wait_for(timeout, predicate)
            .unwrap_or_else(|| panic!("the receiver accepted no {what} within {timeout:?}: {:?}", self.counts()))
    }

    /// The first accepted record matching `predicate`, waiting at most `timeout` for one.
    pub fn try_wait_for(&self, timeout: Duration, predicate: impl Fn(&Accepted) -> bool) -> Option<Accepted> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(found) = self.state.accepted.lock().unwrap().iter().find(|r| predicate(r)) {
                return Some(found.clone());
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

impl State {
    /// Answers one `LogsService/Export` request.
    fn export(&self, request: Bytes) -> Result<Bytes, Status> {
        let counts = &self.counts;
        counts.largest_request.fetch_max(request.len(), Relaxed);
        if request.len() > GRPC_DEFAULT_MAX_RECEIVE {
            counts.oversized_requests.fetch_add(1, Relaxed);
            return Err(Status::resource_exhausted(format!(
                "grpc: received message larger than max ({} vs. {GRPC_DEFAULT_MAX_RECEIVE})",
                request.len()
            )));
        }
        let throttle = |n: u64| (n < self.throttle_first).then_some(n + 1);
        if counts.throttled_requests.fetch_update(Relaxed, Relaxed, throttle).is_ok() {
            return Err(throttled());
        }
        let request = ExportLogsServiceRequest::decode(request).map_err(|e| Status::invalid_argument(e.to_string()))?;
        let mut records: Vec<_> = request.resource_logs.iter().flat_map(|r| &r.scope_logs).flat_map(|s| &s.log_records).collect();
        let every = self.refuse_every.load(Relaxed);
        if every > 0 && (self.seen.fetch_add(1, Relaxed) + 1).is_multiple_of(every) {
            counts.refused_requests.fetch_add(1, Relaxed);
            counts.refused_records.fetch_add(records.len() as u64, Relaxed);
            return Err(Status::invalid_argument("refused by the test receiver"));
        }
        let accepted_requests = counts.accepted_requests.fetch_add(1, Relaxed) + 1;
        let every = self.partial_every.load(Relaxed);
        let mut response = ExportLogsServiceResponse::default();
        if every > 0 && accepted_requests.is_multiple_of(every) && records.pop().is_some() {
            counts.partially_rejected_records.fetch_add(1, Relaxed);
            response.partial_success =
                Some(ExportLogsPartialSuccess { rejected_log_records: 1, error_message: "one record rejected by the test receiver".into() });
        }
        let mut accepted = self.accepted.lock().unwrap();
        accepted.extend(records.iter().map(|record| {
            let value = |key: &str| record.attributes.iter().find(|kv| kv.key == key).and_then(|kv| kv.value.clone()?.value);
            let pid = match value("process.pid") {
                Some(any_value::Value::IntValue(pid)) => Some(pid),
                _ => None,
            };
            let args_truncated = value("ksense.process.command_args.truncated") == Some(any_value::Value::BoolValue(true));
            Accepted { event_name: record.event_name.clone(), pid, args_truncated }
        }));
        counts.accepted_records.fetch_add(records.len() as u64, Relaxed);
        Ok(response.encode_to_vec().into())
    }
}

/// `RESOURCE_EXHAUSTED` with a `google.rpc.RetryInfo` of 1 s in its details, as a collector
/// that is overloaded but will recover answers.
fn throttled() -> Status {
    let retry_info = RetryInfo { retry_delay: Some(ProtoDuration { seconds: 1, nanos: 0 }) };
    let details = RpcStatus {
        code: tonic::Code::ResourceExhausted as i32,
        message: "throttled by the test receiver".into(),
        details: vec![ProtoAny { type_url: "type.googleapis.com/google.rpc.RetryInfo".into(), value: retry_info.encode_to_vec() }],
    };
    Status::with_details(tonic::Code::ResourceExhausted, "throttled by the test receiver", details.encode_to_vec().into())
}

/// `google.rpc.Status`.
#[derive(Clone, PartialEq, prost::Message)]
struct RpcStatus {
    #[prost(int32, tag = "1")]
    code: i32,
    #[prost(string, tag = "2")]
    message: String,
    #[prost(message, repeated, tag = "3")]
    details: Vec<ProtoAny>,
}

/// `google.protobuf.Any`.
#[derive(Clone, PartialEq, prost::Message)]
struct ProtoAny {
    #[prost(string, tag = "1")]
    type_url: String,
    #[prost(bytes = "vec", tag = "2")]
    value: Vec<u8>,
}

/// `google.rpc.RetryInfo`.
#[derive(Clone, PartialEq, prost::Message)]
struct RetryInfo {
    #[prost(message, optional, tag = "1")]
    retry_delay: Option<ProtoDuration>,
}

/// `google.protobuf.Duration`.
#[derive(Clone, PartialEq, prost::Message)]
struct ProtoDuration {
    #[prost(int64, tag = "1")]
    seconds: i64,
    #[prost(int32, tag = "2")]
    nanos: i32,
}

/// The gRPC service: every path is taken as `LogsService/Export`.
#[derive(Clone)]
struct LogsService(Arc<State>);

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

impl tower_service::Service<http::Request<tonic::body::Body>> for LogsService {
    type Response = http::Response<tonic::body::Body>;
    type Error = Infallible;
    type Future = BoxFuture<Result<Self::Response, Infallible>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: http::Request<tonic::body::Body>) -> Self::Future {
        let state = self.0.clone();
        if let Some(agent) = request.headers().get(http::header::USER_AGENT).and_then(|v| v.to_str().ok()) {
            state.user_agents.lock().unwrap().insert(agent.to_owned());
        }
        Box::pin(async move {
            // The size limit is the receiver's own (above), so that it can count what it refuses.
            let mut grpc = tonic::server::Grpc::new(RawCodec).max_decoding_message_size(usize::MAX);
            Ok(grpc.unary(Export(state), request).await)
        })
    }
}

struct Export(Arc<State>);

impl tonic::server::UnaryService<Bytes> for Export {
    type Response = Bytes;
    type Future = std::future::Ready<Result<tonic::Response<Bytes>, Status>>;

    fn call(&mut self, request: tonic::Request<Bytes>) -> Self::Future {
        std::future::ready(self.0.export(request.into_inner()).map(tonic::Response::new))
    }
}
