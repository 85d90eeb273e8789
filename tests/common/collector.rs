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
        Collector::spawn(grpc_port, http_port, &["--debug-log", "logs", "--debug-log-verbosity", "detailed"])
    }

    /// Starts rotel on free ports without its debug log: it receives and discards, printing
    /// nothing per record, so it costs what a real collector's receiver costs (the benchmarks'
    /// sink; [`Collector::received`] stays empty).
    pub fn start_discarding() -> Collector {
        Collector::spawn(free_port(), free_port(), &[])
    }

    fn spawn(grpc_port: u16, http_port: u16, debug_log: &[&str]) -> Collector {
        assert!(Path::new(ROTEL).exists(), "{ROTEL} is missing: run `sudo scripts/setup.sh`");
        let mut child = Command::new(ROTEL)
            .args(["start", "--exporter", "blackhole"])
            .args(debug_log)
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

    /// The collector's process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Every record received so far.
    pub fn received(&self) -> Vec<Received> {
        parse(&self.out.lock().unwrap())
    }

    /// Waits for the first record matching `predicate`.
    pub fn wait_for(&self, what: &str, predicate: impl Fn(&Received) -> bool) -> Received {
        let found = self.try_wait_for(Duration::from_secs(30), predicate);
        found.unwrap_or_else(|| panic!("the collector received no {what}"))
    }

    /// The first record matching `predicate`, if one arrives within `timeout`.
    pub fn try_wait_for(&self, timeout: Duration, predicate: impl Fn(&Received) -> bool) -> Option<Received> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(found) = self.received().into_iter().find(|r| predicate(r)) {
                return Some(found);
            }
            if Instant::now() >= deadline {
                return None;
            }
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

/// A `[sinks.otlp]` section exporting over gRPC to `grpc_port` with a queue of only 200 records
/// and small, frequent batches, so an outage overflows the queue within seconds.
pub fn small_queue_config(grpc_port: u16) -> String {
    format!(
        "[sinks.otlp]\nendpoint = \"http://127.0.0.1:{grpc_port}\"\nqueue_events = 200\nbatch_size = 50\nbatch_interval_ms = 200\n"
    )
}

/// The OTLP sink's totals at stop, after an outage.
#[derive(Debug)]
pub struct OutageTotals {
    /// `events_written` + `own_records`: what the pipeline offered every sink (events, and
    /// ksense's records about itself).
    pub written: u64,
    /// `sink_otlp_delivered`.
    pub delivered: u64,
    /// `sink_otlp_queue_full` + `sink_otlp_memory_budget`: dropped while the collector was away.
    pub dropped: u64,
    /// `sink_otlp_failed`.
    pub failed: u64,
    /// `sink_otlp_rejected`: refused by the collector for good (none here: rotel takes all).
    pub rejected: u64,
    /// `sink_otlp_retries`.
    pub retries: u64,
}

/// Checks what a user checks after a collector outage, from the counters of the stopped ksense
/// and what `collector` printed: every event written is delivered or counted (queue full,
/// failed, rejected), the collector got exactly the delivered ones, export was retried, and the stdout
/// sink, which never went away, delivered every event.
pub fn check_outage_accounting(stopped: &crate::Stopped, collector: &Collector) -> OutageTotals {
    assert!(stopped.status.success(), "{}", stopped.stderr);
    let totals = OutageTotals {
        written: stopped.counter("events_written") + stopped.counter("own_records"),
        delivered: stopped.counter("sink_otlp_delivered"),
        dropped: stopped.counter("sink_otlp_queue_full") + stopped.counter("sink_otlp_memory_budget"),
        failed: stopped.counter("sink_otlp_failed"),
        rejected: stopped.counter("sink_otlp_rejected"),
        retries: stopped.counter("sink_otlp_retries"),
    };
    eprintln!("outage: {totals:?}");
    assert_eq!(
        totals.delivered + totals.dropped + totals.failed + totals.rejected,
        totals.written,
        "every event is delivered or counted"
    );
    assert_eq!(totals.rejected, 0, "rotel refuses nothing: {}", stopped.stderr);
    assert!(totals.retries > 0, "{}", stopped.stderr);
    // rotel prints a batch after it has answered the export: give it until it has printed them.
    let deadline = Instant::now() + Duration::from_secs(30);
    while (collector.received().len() as u64) < totals.delivered && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(
        collector.received().len() as u64,
        totals.delivered,
        "the collector got exactly what was counted as delivered"
    );
    // stdout has its own queue: when the test's reader falls behind under load, what it cannot
    // take is dropped for stdout alone, and counted.
    assert_eq!(stopped.sink_accounted("stdout"), totals.written, "the stdout sink delivered or counted every event");
    totals
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
