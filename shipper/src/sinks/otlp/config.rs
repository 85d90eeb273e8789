//! Settings of the OTLP sink: `[sinks.otlp]` in the configuration file, else the standard
//! `OTEL_EXPORTER_OTLP_*` environment variables, else defaults; the file wins, as an explicit
//! setting does in every OpenTelemetry SDK.
use std::{collections::BTreeMap, fmt, path::PathBuf, time::Duration};

use serde::Deserialize;

use crate::sinks::Enabled;

/// `[sinks.otlp]` as written in the configuration file.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct OtlpConfig {
    /// `true`, `false`, or `"auto"`: on when an endpoint is configured here or in
    /// `OTEL_EXPORTER_OTLP_ENDPOINT` / `OTEL_EXPORTER_OTLP_LOGS_ENDPOINT`.
    pub enabled: Enabled,
    /// Collector URL, e.g. `http://127.0.0.1:4317` (gRPC) or `http://127.0.0.1:4318` (HTTP).
    pub endpoint: Option<String>,
    /// `grpc` or `http/protobuf`.
    pub protocol: Option<Protocol>,
    /// Extra request headers (gRPC metadata), e.g. an API key.
    pub headers: BTreeMap<String, String>,
    /// A file of `name=value` lines added to the headers: keeps tokens out of the config file.
    /// Its values are never logged.
    pub headers_file: Option<PathBuf>,
    /// PEM file of the CA that signed the collector's certificate.
    pub ca_file: Option<PathBuf>,
    /// PEM client certificate for mutual TLS (with `client_key_file`).
    pub client_cert_file: Option<PathBuf>,
    /// PEM client key for mutual TLS.
    pub client_key_file: Option<PathBuf>,
    /// `none` or `gzip`.
    pub compression: Option<Compression>,
    /// Per-export timeout in milliseconds.
    pub timeout_ms: Option<u64>,
    /// Records per export request.
    pub batch_size: usize,
    /// Longest a record waits for its batch to fill, in milliseconds.
    pub batch_interval_ms: u64,
    /// Records held while the collector is slow or down; beyond this, new records are dropped
    /// and counted.
    pub queue_events: usize,
    /// Largest export request, in bytes of encoded protobuf (before compression): batches are
    /// cut so no request is larger, under the 4 MiB a gRPC server or the OpenTelemetry
    /// Collector receives by default.
    pub max_request_bytes: usize,
    /// Only these event kinds are exported (see [`crate::sinks::Selection`]); all when absent.
    pub events: Option<Vec<crate::kinds::EventName>>,
    /// Only records of this severity or above are exported.
    pub min_severity: Option<crate::record::Severity>,
}

impl Default for OtlpConfig {
    fn default() -> Self {
        OtlpConfig {
            enabled: Enabled::default(),
            endpoint: None,
            protocol: None,
            headers: BTreeMap::new(),
            headers_file: None,
            ca_file: None,
            client_cert_file: None,
            client_key_file: None,
            compression: None,
            timeout_ms: None,
            batch_size: 512,
            batch_interval_ms: 1000,
            queue_events: 65536,
            max_request_bytes: DEFAULT_MAX_REQUEST_BYTES,
            events: None,
            min_severity: None,
        }
    }
}

/// `max_request_bytes` by default: 3 MiB, a margin under the 4 MiB gRPC's and the Collector's
/// receivers take by default.
pub const DEFAULT_MAX_REQUEST_BYTES: usize = 3 << 20;
/// The range `max_request_bytes` may take: a request must hold at least one record with a
/// fully captured argv, and a request of more than 64 MiB no collector takes by default.
pub const MAX_REQUEST_BYTES_RANGE: std::ops::RangeInclusive<usize> = (64 << 10)..=(64 << 20);

/// OTLP transport.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
pub enum Protocol {
    /// OTLP over gRPC (default port 4317).
    #[serde(rename = "grpc")]
    Grpc,
    /// OTLP over HTTP with protobuf bodies (default port 4318, path `/v1/logs`).
    #[serde(rename = "http/protobuf")]
    HttpProtobuf,
}

/// Request compression.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Compression {
    /// None.
    None,
    /// gzip.
    Gzip,
}

/// Everything the exporter needs, resolved.
#[derive(Clone, PartialEq, Eq)]
pub struct OtlpSettings {
    /// The URL requests go to (for HTTP, including `/v1/logs`).
    pub endpoint: String,
    /// Transport.
    pub protocol: Protocol,
    /// Headers, secrets included.
    pub headers: BTreeMap<String, String>,
    /// The file some of them came from.
    pub headers_file: Option<PathBuf>,
    /// TLS CA.
    pub ca_file: Option<PathBuf>,
    /// TLS client certificate and key.
    pub client_identity: Option<(PathBuf, PathBuf)>,
    /// Compression.
    pub compression: Compression,
    /// Per-export timeout.
    pub timeout: Duration,
    /// Records per request.
    pub batch_size: usize,
    /// Longest wait for a batch.
    pub batch_interval: Duration,
    /// Queue capacity.
    pub queue_events: usize,
    /// Largest request, encoded.
    pub max_request_bytes: usize,
}

impl fmt::Debug for OtlpSettings {
    /// Header names only, and the endpoint without credentials: values may be secrets.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OtlpSettings")
            .field("endpoint", &redact_url(&self.endpoint))
            .field("protocol", &self.protocol)
            .field("headers", &self.headers.keys().collect::<Vec<_>>())
            .field("headers_file", &self.headers_file)
            .field("ca_file", &self.ca_file)
            .field("client_identity", &self.client_identity)
            .field("compression", &self.compression)
            .field("timeout", &self.timeout)
            .field("batch_size", &self.batch_size)
            .field("batch_interval", &self.batch_interval)
            .field("queue_events", &self.queue_events)
            .field("max_request_bytes", &self.max_request_bytes)
            .finish()
    }
}

/// A setting that could not be resolved (a headers file that cannot be read, a bad env value).
#[derive(Debug, thiserror::Error)]
#[error("[sinks.otlp]: {0}")]
pub struct SettingsError(String);


/// A value of `[sinks.otlp]` that cannot work: its key and why.
#[derive(Debug)]
pub struct KeyError {
    /// The key under `[sinks.otlp]`.
    pub key: &'static str,
    /// What is wrong, and what would do.
    pub message: String,
}

impl OtlpConfig {
    /// Checks what the file says on its own (the environment is looked at by
    /// [`OtlpConfig::resolve`], which checks again what it adds): sizes, the endpoint's form,
    /// header names and values. Done when the file is read, so `check-config` and a reload
    /// refuse what the sink could not use.
    pub fn check(&self) -> Result<(), KeyError> {
        let error = |key, message| Err(KeyError { key, message });
        if self.batch_size == 0 {
            return error("batch_size", "batch_size must be at least 1".to_owned());
        }
        if self.queue_events == 0 {
            return error("queue_events", "queue_events must be at least 1".to_owned());
        }
        if !MAX_REQUEST_BYTES_RANGE.contains(&self.max_request_bytes) {
            return error(
                "max_request_bytes",
                format!(
                    "max_request_bytes = {}: must be from {} to {} (the default, {}, suits a gRPC receiver's 4 MiB limit)",
                    self.max_request_bytes,
                    MAX_REQUEST_BYTES_RANGE.start(),
                    MAX_REQUEST_BYTES_RANGE.end(),
                    DEFAULT_MAX_REQUEST_BYTES
                ),
            );
        }
        if self.timeout_ms == Some(0) {
            return error("timeout_ms", "timeout_ms must be at least 1: a request needs time to be answered".to_owned());
        }
        if let Some(endpoint) = &self.endpoint
            && let Err(message) = check_endpoint(endpoint)
        {
            return error("endpoint", message);
        }
        check_headers(self.headers.iter()).or_else(|message| error("headers", message))
    }

    /// The settings, or `None` when the sink is off. `env` looks up environment variables.
    pub fn resolve(&self, env: impl Fn(&str) -> Option<String>) -> Result<Option<OtlpSettings>, SettingsError> {
        let signal_endpoint = env("OTEL_EXPORTER_OTLP_LOGS_ENDPOINT").filter(|s| !s.is_empty());
        let generic_endpoint = env("OTEL_EXPORTER_OTLP_ENDPOINT").filter(|s| !s.is_empty());
        let configured = self.endpoint.is_some() || signal_endpoint.is_some() || generic_endpoint.is_some();
        if !self.enabled.resolve(configured) {
            return Ok(None);
        }
        let protocol = match self.protocol {
            Some(p) => p,
            None => match env("OTEL_EXPORTER_OTLP_LOGS_PROTOCOL").or_else(|| env("OTEL_EXPORTER_OTLP_PROTOCOL")).as_deref() {
                None | Some("") | Some("grpc") => Protocol::Grpc,
                Some("http/protobuf") => Protocol::HttpProtobuf,
                Some(other) => {
                    return Err(SettingsError(format!(
                        "OTEL_EXPORTER_OTLP_PROTOCOL={other:?}: ksense supports \"grpc\" and \"http/protobuf\""
                    )));
                }
            },
        };
        // A signal-specific URL is used as it is; a base URL gets the signal's path (HTTP).
        let endpoint = match (&self.endpoint, signal_endpoint, generic_endpoint) {
            (Some(e), _, _) => with_logs_path(e, protocol),
            (None, Some(e), _) => e,
            (None, None, Some(e)) => with_logs_path(&e, protocol),
            (None, None, None) => match protocol {
                Protocol::Grpc => "http://localhost:4317".to_owned(),
                Protocol::HttpProtobuf => "http://localhost:4318/v1/logs".to_owned(),
            },
        };
        let mut headers = BTreeMap::new();
        if let Some(list) = env("OTEL_EXPORTER_OTLP_LOGS_HEADERS").or_else(|| env("OTEL_EXPORTER_OTLP_HEADERS")) {
            headers.extend(parse_pairs(&list, ',').map_err(|e| SettingsError(format!("OTEL_EXPORTER_OTLP_HEADERS: {e}")))?);
        }
        headers.extend(self.headers.clone());
        if let Some(path) = &self.headers_file {
            let text = std::fs::read_to_string(path)
                .map_err(|e| SettingsError(format!("headers_file {}: {e}", path.display())))?;
            headers.extend(parse_pairs(&text, '\n').map_err(|e| SettingsError(format!("headers_file {}: {e}", path.display())))?);
        }
        let compression = match self.compression {
            Some(c) => c,
            None => match env("OTEL_EXPORTER_OTLP_COMPRESSION").as_deref() {
                Some("gzip") => Compression::Gzip,
                _ => Compression::None,
            },
        };
        let timeout_ms = match self.timeout_ms {
            Some(ms) => ms,
            None => match env("OTEL_EXPORTER_OTLP_TIMEOUT") {
                Some(ms) => ms.trim().parse().map_err(|_| SettingsError(format!("OTEL_EXPORTER_OTLP_TIMEOUT={ms:?} is not milliseconds")))?,
                None => 10_000,
            },
        };
        let ca_file = self.ca_file.clone().or_else(|| env("OTEL_EXPORTER_OTLP_CERTIFICATE").map(PathBuf::from));
        let cert = self.client_cert_file.clone().or_else(|| env("OTEL_EXPORTER_OTLP_CLIENT_CERTIFICATE").map(PathBuf::from));
        let key = self.client_key_file.clone().or_else(|| env("OTEL_EXPORTER_OTLP_CLIENT_KEY").map(PathBuf::from));
        let client_identity = match (cert, key) {
            (Some(cert), Some(key)) => Some((cert, key)),
            (None, None) => None,
            _ => return Err(SettingsError("client_cert_file and client_key_file go together".to_owned())),
        };
        self.check().map_err(|e| SettingsError(e.message))?;
        // What the environment and the headers file added.
        check_endpoint(&endpoint).map_err(SettingsError)?;
        check_headers(headers.iter()).map_err(SettingsError)?;
        if timeout_ms == 0 {
            return Err(SettingsError("OTEL_EXPORTER_OTLP_TIMEOUT=0: a request needs time to be answered".to_owned()));
        }
        Ok(Some(OtlpSettings {
            endpoint,
            protocol,
            headers,
            headers_file: self.headers_file.clone(),
            ca_file,
            client_identity,
            compression,
            timeout: Duration::from_millis(timeout_ms),
            batch_size: self.batch_size,
            batch_interval: Duration::from_millis(self.batch_interval_ms),
            queue_events: self.queue_events,
            max_request_bytes: self.max_request_bytes,
        }))
    }
}

impl OtlpSettings {
    /// Warnings about secrets other users can read: a `headers_file` or client key that is
    /// readable by others (mode `o+r`), each naming the file and the fix.
    pub fn exposed_secrets(&self) -> Vec<String> {
        use std::os::unix::fs::PermissionsExt as _;
        let files = [("headers_file", self.headers_file.as_ref()), ("client_key_file", self.client_identity.as_ref().map(|(_, key)| key))];
        files
            .into_iter()
            .filter_map(|(key, path)| {
                let path = path?;
                let mode = std::fs::metadata(path).ok()?.permissions().mode();
                (mode & 0o004 != 0).then(|| {
                    let path = path.display();
                    format!(
                        "[sinks.otlp] {key} {path} is readable by every user on this host (mode {:o}) and holds secrets: \
                         `chmod 600 {path}` (or 640, with a group ksense runs in)",
                        mode & 0o7777
                    )
                })
            })
            .collect()
    }
}

/// `url` without the secrets a URL can carry: a `user:password@` becomes `***@`, the value of
/// every query parameter (`?api_key=...`) becomes `***`, a fragment is left out.
pub fn redact_url(url: &str) -> String {
    let url = url.split('#').next().unwrap_or_default();
    let (before_query, query) = match url.split_once('?') {
        Some((before, query)) => (before, Some(query)),
        None => (url, None),
    };
    let (mut out, rest) = match before_query.split_once("://") {
        Some((scheme, rest)) => (format!("{scheme}://"), rest),
        None => (String::new(), before_query),
    };
    let (authority, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
    match authority.rsplit_once('@') {
        Some((_, host)) => out.push_str(&format!("***@{host}")),
        None => out.push_str(authority),
    }
    out.push_str(path);
    if let Some(query) = query {
        out.push('?');
        let pairs: Vec<String> = query.split('&').map(|pair| format!("{}=***", pair.split('=').next().unwrap_or_default())).collect();
        out.push_str(&pairs.join("&"));
    }
    out
}

/// `base` with the logs path (HTTP), before its query if it has one.
fn with_logs_path(base: &str, protocol: Protocol) -> String {
    let (path, query) = base.split_once('?').map_or((base, None), |(path, query)| (path, Some(query)));
    let path = match protocol {
        Protocol::Grpc => return base.to_owned(),
        Protocol::HttpProtobuf if path.ends_with("/v1/logs") => path.to_owned(),
        Protocol::HttpProtobuf => format!("{}/v1/logs", path.trim_end_matches('/')),
    };
    query.map_or_else(|| path.clone(), |query| format!("{path}?{query}"))
}

/// `name=value` pairs separated by `sep` (W3C baggage style, values percent-decoded).
/// Whether `endpoint` is a URL the transports can use: `http` or `https`, with a host. Said
/// without the URL's credentials, if it has any.
fn check_endpoint(endpoint: &str) -> Result<(), String> {
    let shown = redact_url(endpoint);
    let uri: http::Uri = endpoint.parse().map_err(|e| format!("endpoint {shown:?} is not a URL: {e}"))?;
    match (uri.scheme_str(), uri.host()) {
        (Some("http" | "https"), Some(host)) if !host.is_empty() => Ok(()),
        _ => Err(format!("endpoint {shown:?}: expected http://host:port or https://host:port")),
    }
}

/// Whether every header is one HTTP (and so gRPC metadata) can carry. Values are secrets
/// (tokens): only the name is said.
fn check_headers<'a>(mut headers: impl Iterator<Item = (&'a String, &'a String)>) -> Result<(), String> {
    headers.try_for_each(|(name, value)| {
        http::HeaderName::from_bytes(name.as_bytes()).map_err(|_| format!("header name {name:?} is not an HTTP header name"))?;
        http::HeaderValue::from_str(value).map_err(|_| format!("the value of header {name:?} is not an HTTP header value"))?;
        Ok(())
    })
}

fn parse_pairs(text: &str, sep: char) -> Result<Vec<(String, String)>, String> {
    text.split(sep)
        .map(str::trim)
        .filter(|p| !p.is_empty() && !p.starts_with('#'))
        .map(|pair| {
            let (name, value) = pair.split_once('=').ok_or_else(|| format!("{:?} is not name=value", pair.split('=').next().unwrap_or("")))?;
            Ok((percent_decode(name.trim()), percent_decode(value.trim())))
        })
        .collect()
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%'
            && let Some(v) = s.get(i + 1..i + 3).and_then(|h| u8::from_str_radix(h, 16).ok())
        {
            out.push(v);
            i += 3;
            continue;
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The parts of `url` that may be secrets: its user information and its query.
pub fn url_secrets(url: &str) -> Vec<String> {
    let mut secrets = Vec::new();
    let rest = url.split_once("://").map_or(url, |(_, rest)| rest);
    let authority = rest.split(['/', '?', '#']).next().unwrap_or_default();
    if let Some((userinfo, _)) = authority.rsplit_once('@') {
        secrets.push(userinfo.to_owned());
    }
    if let Some((_, query)) = url.split_once('?') {
        secrets.push(query.split('#').next().unwrap_or_default().to_owned());
    }
    secrets.retain(|s| !s.is_empty());
    secrets
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env<'a>(vars: &'a [(&str, &str)]) -> impl Fn(&str) -> Option<String> + 'a {
        move |name| vars.iter().find(|(k, _)| *k == name).map(|(_, v)| (*v).to_owned())
    }

    #[test]
    fn off_without_an_endpoint_on_with_one() {
        let config = OtlpConfig::default();
        assert!(config.resolve(env(&[])).unwrap().is_none());
        let on = config.resolve(env(&[("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4317")])).unwrap().unwrap();
        assert_eq!((on.endpoint.as_str(), on.protocol), ("http://c:4317", Protocol::Grpc));
    }

    #[test]
    fn http_base_endpoint_gets_the_logs_path() {
        let vars = [("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4318/"), ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf")];
        let s = OtlpConfig::default().resolve(env(&vars)).unwrap().unwrap();
        assert_eq!(s.endpoint, "http://c:4318/v1/logs");
        let vars = [("OTEL_EXPORTER_OTLP_LOGS_ENDPOINT", "http://c:4318/custom"), ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf")];
        assert_eq!(OtlpConfig::default().resolve(env(&vars)).unwrap().unwrap().endpoint, "http://c:4318/custom");
        let vars = [("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4318/?api_key=k"), ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf")];
        assert_eq!(OtlpConfig::default().resolve(env(&vars)).unwrap().unwrap().endpoint, "http://c:4318/v1/logs?api_key=k");
    }

    #[test]
    fn file_settings_win_over_env_and_headers_merge() {
        let dir = std::env::temp_dir().join(format!("ksense-otlp-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let secrets = dir.join("headers");
        std::fs::write(&secrets, "# token\nauthorization=Bearer%20s3cret\n").unwrap();
        let config = OtlpConfig {
            endpoint: Some("http://file:4317".into()),
            headers: [("x-team".to_owned(), "sec".to_owned())].into(),
            headers_file: Some(secrets),
            ..OtlpConfig::default()
        };
        let vars = [("OTEL_EXPORTER_OTLP_ENDPOINT", "http://env:4317"), ("OTEL_EXPORTER_OTLP_HEADERS", "a=1,b=2")];
        let s = config.resolve(env(&vars)).unwrap().unwrap();
        assert_eq!(s.endpoint, "http://file:4317");
        assert_eq!(s.headers.get("authorization").map(String::as_str), Some("Bearer s3cret"));
        assert_eq!(s.headers.len(), 4);
        let shown = format!("{s:?}");
        assert!(!shown.contains("s3cret"), "secret printed: {shown}");
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn credentials_in_the_endpoint_are_never_shown() {
        let cases = [
            ("https://user:s3cret@collector:4317", "https://***@collector:4317"),
            ("http://c:4318/v1/logs?api_key=s3cret&x", "http://c:4318/v1/logs?api_key=***&x=***"),
            ("https://tok3n@c/v1/logs?k=s3cret#s3cret", "https://***@c/v1/logs?k=***"),
            ("http://127.0.0.1:4317", "http://127.0.0.1:4317"),
            ("c:4317", "c:4317"),
        ];
        for (url, shown) in cases {
            assert_eq!(redact_url(url), shown);
        }
        assert_eq!(url_secrets("https://user:pw@c:4317/v1/logs?k=v&x=y#f"), ["user:pw", "k=v&x=y"]);
        assert!(url_secrets("http://c:4317/v1/logs").is_empty());
        let config = OtlpConfig { endpoint: Some("https://user:s3cret@c:4317/?token=s3cret".into()), ..OtlpConfig::default() };
        let settings = config.resolve(env(&[])).unwrap().unwrap();
        let shown = format!("{settings:?}");
        assert!(!shown.contains("s3cret") && shown.contains("***@c:4317"), "{shown}");
    }

    #[test]
    fn secrets_readable_by_others_are_warned_about() {
        use std::os::unix::fs::PermissionsExt as _;
        let dir = std::env::temp_dir().join(format!("ksense-otlp-modes-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let (headers, cert, key) = (dir.join("headers"), dir.join("cert.pem"), dir.join("key.pem"));
        for path in [&headers, &cert, &key] {
            std::fs::write(path, "authorization=x\n").unwrap();
        }
        let config = OtlpConfig {
            endpoint: Some("http://c:4317".into()),
            headers_file: Some(headers.clone()),
            client_cert_file: Some(cert.clone()),
            client_key_file: Some(key.clone()),
            ..OtlpConfig::default()
        };
        let chmod = |path: &std::path::Path, mode| std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
        // A certificate is public: its mode never matters.
        chmod(&cert, 0o644);
        for (headers_mode, key_mode, warned) in [(0o600, 0o640, 0), (0o644, 0o600, 1), (0o604, 0o644, 2)] {
            chmod(&headers, headers_mode);
            chmod(&key, key_mode);
            let warnings = config.resolve(env(&[])).unwrap().unwrap().exposed_secrets();
            assert_eq!(warnings.len(), warned, "{headers_mode:o} {key_mode:o}: {warnings:?}");
            if headers_mode & 0o004 != 0 {
                let warning = &warnings[0];
                assert!(warning.contains("headers_file") && warning.contains(&headers.display().to_string()), "{warning}");
                assert!(warning.contains("chmod 600"), "{warning}");
            }
        }
        assert!(config.resolve(env(&[])).unwrap().unwrap().exposed_secrets()[1].contains("client_key_file"));
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn max_request_bytes_is_checked() {
        assert_eq!(OtlpConfig::default().max_request_bytes, 3 << 20);
        for bad in [0, 1000, (64 << 20) + 1] {
            let config = OtlpConfig { endpoint: Some("http://c:4317".into()), max_request_bytes: bad, ..OtlpConfig::default() };
            let err = config.resolve(env(&[])).unwrap_err().to_string();
            assert!(err.contains("max_request_bytes") && err.contains(&bad.to_string()), "{err}");
        }
    }

    #[test]
    fn bad_values_are_named() {
        let vars = [("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c"), ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/json")];
        let err = OtlpConfig::default().resolve(env(&vars)).unwrap_err().to_string();
        assert!(err.contains("http/json"), "{err}");
    }
}
