//! A real OpenTelemetry collector for the OTLP tests: rotel (installed by scripts/setup.sh),
//! started on free loopback ports with its debug log on, and a parser for what it printed.
use std::{
    collections::BTreeMap,
    io::{BufRead, BufReader},
    net::TcpListener,
    path::Path,
    process::{Child, Command, Stdio},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

/// Where scripts/setup.sh installs rotel.
pub const ROTEL: &str = "/opt/ksense-test/rotel/rotel/rotel-agent";

/// One log record as the collector printed it.
#[derive(Debug, Clone, Default)]
pub struct Received {
    /// `EventName`.
    pub event_name: String,
    /// `SeverityText`.
    pub severity: String,
    /// `Body`, as printed (e.g. `Str(...)`).
    pub body: String,
    /// Attributes: name -> printed typed value, e.g. `Int(7)`, `Str(sh)`, `Slice(Str(a), ...)`.
    pub attributes: BTreeMap<String, String>,
    /// The resource attributes of its batch.
    pub resource: BTreeMap<String, String>,
}

/// A running collector.
pub struct Collector {
    child: Child,
    out: Arc<Mutex<String>>,
    /// OTLP/gRPC port.
    pub grpc_port: u16,
    /// OTLP/HTTP port.
    pub http_port: u16,
}

/// A loopback port nothing listens on right now.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

impl Collector {
    /// Starts rotel on free ports.
    pub fn start() -> Collector {
        Collector::start_on(free_port(), free_port())
    }

    /// Starts rotel on the given ports and waits until it accepts connections.
    pub fn start_on(grpc_port: u16, http_port: u16) -> Collector {
        assert!(Path::new(ROTEL).exists(), "{ROTEL} is missing: run `sudo scripts/setup.sh`");
        let mut child = Command::new(ROTEL)
            .args(["start", "--exporter", "blackhole", "--debug-log", "logs", "--debug-log-verbosity", "detailed"])
            .args(["--otlp-grpc-endpoint", &format!("127.0.0.1:{grpc_port}")])
            .args(["--otlp-http-endpoint", &format!("127.0.0.1:{http_port}")])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("cannot start rotel");
        let out = Arc::new(Mutex::new(String::new()));
        for pipe in [Box::new(child.stdout.take().unwrap()) as Box<dyn std::io::Read + Send>, Box::new(child.stderr.take().unwrap())] {
            let out = out.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(pipe).lines().map_while(Result::ok) {
                    let mut out = out.lock().unwrap();
                    out.push_str(&line);
                    out.push('\n');
                }
            });
        }
        let deadline = Instant::now() + Duration::from_secs(20);
        while std::net::TcpStream::connect(("127.0.0.1", grpc_port)).is_err()
            || std::net::TcpStream::connect(("127.0.0.1", http_port)).is_err()
        {
            assert!(Instant::now() < deadline, "rotel did not start:\n{}", out.lock().unwrap());
            std::thread::sleep(Duration::from_millis(50));
        }
        Collector { child, out, grpc_port, http_port }
    }

    /// Every record received so far.
    pub fn received(&self) -> Vec<Received> {
        parse(&self.out.lock().unwrap())
    }

    /// Waits for the first record matching `predicate`.
    pub fn wait_for(&self, what: &str, predicate: impl Fn(&Received) -> bool) -> Received {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(found) = self.received().into_iter().find(|r| predicate(r)) {
                return found;
            }
            assert!(Instant::now() < deadline, "the collector received no {what}");
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for Collector {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Parses rotel's detailed debug log: `ResourceLog` blocks with `Resource attributes:` and
/// `LogRecord #n` blocks with `EventName:`, `SeverityText:`, `Body:` and `Attributes:` lists of
/// `-> name: Type(value)` lines.
pub fn parse(text: &str) -> Vec<Received> {
    let mut records = Vec::new();
    let mut resource = BTreeMap::new();
    let mut current: Option<Received> = None;
    let mut in_resource = false;
    for line in text.lines() {
        let trimmed = line.trim();
        if trimmed.starts_with("ResourceLog #") {
            records.extend(current.take());
            resource = BTreeMap::new();
            in_resource = false;
        } else if trimmed == "Resource attributes:" {
            in_resource = true;
        } else if trimmed.starts_with("LogRecord #") {
            records.extend(current.take());
            in_resource = false;
            current = Some(Received { resource: resource.clone(), ..Received::default() });
        } else if let Some(attr) = trimmed.strip_prefix("-> ") {
            let Some((name, value)) = attr.split_once(": ") else { continue };
            match (&mut current, in_resource) {
                (_, true) => {
                    resource.insert(name.to_owned(), value.to_owned());
                }
                (Some(record), false) => {
                    record.attributes.insert(name.to_owned(), value.to_owned());
                }
                _ => {}
            }
        } else if let Some(record) = &mut current {
            if let Some(v) = trimmed.strip_prefix("EventName: ") {
                record.event_name = v.to_owned();
            } else if let Some(v) = trimmed.strip_prefix("SeverityText: ") {
                record.severity = v.to_owned();
            } else if let Some(v) = trimmed.strip_prefix("Body: ") {
                record.body = v.to_owned();
            }
        }
    }
    records.extend(current);
    records
}
