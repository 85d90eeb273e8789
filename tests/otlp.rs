//! The OTLP sink against a real collector (rotel): over gRPC and over HTTP/protobuf the
//! collector receives the contract's records, typed, with the agent's resource; a collector
//! that goes away and comes back costs nothing but counted drops; and against a receiver with
//! gRPC's 4 MiB limit that refuses some requests for good, an unprivileged user's flood of long
//! command lines neither wedges the export nor loses a record uncounted.
use std::{
    os::unix::process::CommandExt as _,
    process::Command,
    sync::atomic::Ordering::Relaxed,
    time::{Duration, Instant},
};

use ksense_e2e::{
    Ksense, attr,
    collector::{Collector, Received, check_outage_accounting, free_port, small_queue_config},
    is, printed,
    receiver::{Behaviour, Receiver},
    run_workload, temp_config, workload_bin,
};

fn check_records(collector: &Collector, ksense: Ksense) {
    let child = Command::new("/bin/sh").args(["-c", "exit 7"]).spawn().unwrap();
    let sh = child.id();
    child.wait_with_output().unwrap();
    let marker = Command::new(workload_bin()).args(["marker", "two words", "x\ny"]).spawn().unwrap();
    let marker_pid = marker.id();
    marker.wait_with_output().unwrap();

    let pid_is = |r: &Received, pid: u32| r.attributes.get("process.pid").map(String::as_str) == Some(&format!("Int({pid})"));
    let exit = collector.wait_for("exit of sh", |r| r.event_name == "process.exit" && pid_is(r, sh));
    assert_eq!(exit.attributes.get("process.exit.code").map(String::as_str), Some("Int(7)"), "{exit:?}");
    assert_eq!(exit.attributes.get("event.name").map(String::as_str), Some("Str(process.exit)"), "{exit:?}");
    assert_eq!(exit.severity, "INFO", "{exit:?}");
    assert!(exit.body.starts_with("Str(sh["), "{exit:?}");
    assert_eq!(exit.attributes.get("ksense.process.exit.core_dumped").map(String::as_str), Some("Bool(false)"));
    for (key, value) in [("service.name", "Str(ksense)"), ("os.type", "Str(linux)")] {
        assert_eq!(exit.resource.get(key).map(String::as_str), Some(value), "resource: {:?}", exit.resource);
    }
    for key in ["service.version", "service.instance.id", "host.name", "host.id", "os.version"] {
        assert!(exit.resource.contains_key(key), "resource lacks {key}: {:?}", exit.resource);
    }

    let exec = collector.wait_for("exec of the marker", |r| r.event_name == "process.exec" && pid_is(r, marker_pid));
    let args = exec.attributes.get("process.command_args").unwrap();
    assert!(args.starts_with("Slice(Str("), "argv must stay an array: {args}");
    assert!(args.contains("Str(two words)"), "{args}");

    let stopped = ksense.stop();
    assert!(stopped.status.success(), "{}", stopped.stderr);
    assert_eq!(stopped.counter("sink_otlp_failed"), 0, "{}", stopped.stderr);
}

#[test]
fn grpc_export_reaches_the_collector() {
    let collector = Collector::start();
    let endpoint = format!("http://127.0.0.1:{}", collector.grpc_port);
    let ksense = Ksense::start_with_env(&[], &[("OTEL_EXPORTER_OTLP_ENDPOINT", &endpoint)]);
    check_records(&collector, ksense);
}

#[test]
fn http_protobuf_export_reaches_the_collector() {
    let collector = Collector::start();
    let config = temp_config(
        "otlp-http",
        &format!("[sinks.otlp]\nendpoint = \"http://127.0.0.1:{}\"\nprotocol = \"http/protobuf\"\n", collector.http_port),
    );
    let ksense = Ksense::start(&["--config", config.to_str().unwrap()]);
    check_records(&collector, ksense);
}

/// The collector is down while events flow, then comes back: ksense keeps running, export
/// resumes by itself, and every event is either delivered or counted as dropped.
#[test]
fn collector_outage_is_survived_and_accounted_for() {
    let (grpc_port, http_port) = (free_port(), free_port());
    let config = temp_config("otlp-outage", &small_queue_config(grpc_port));
    let ksense = Ksense::start(&["--config", config.to_str().unwrap()]);
    // Down: far more events than the queue holds.
    let (_, parent) = run_workload(&["fork-exit", "500"]);
    ksense.wait_for("the burst's end", |e| is(e, "process.exit") && attr(e, "process.pid") == parent);
    ksense.wait_for_log("OTLP export failed, retrying");

    // Back: export resumes without help (the queued backlog goes first; events arriving while
    // the queue is still full are dropped and counted, so a marker is run every few seconds
    // until one arrives).
    let collector = Collector::start_on(grpc_port, http_port);
    collector.wait_for("the backlog", |_| true);
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut markers = Vec::new();
    loop {
        markers.push(format!("Int({})", run_workload(&["marker"]).1));
        let arrived = collector.try_wait_for(Duration::from_secs(3), |r| {
            r.event_name == "process.exit" && r.attributes.get("process.pid").is_some_and(|pid| markers.contains(pid))
        });
        if arrived.is_some() {
            break;
        }
        assert!(Instant::now() < deadline, "no marker run after the outage reached the collector ({} tried)", markers.len());
    }
    let totals = check_outage_accounting(&ksense.stop(), &collector);
    assert!(totals.dropped > 0, "the queue of 200 must have overflowed during the outage");
}

/// The attack of the hostile-user tests: as uid 65534, 1500 execs with 16 KB of argv each
/// within seconds (records of some 50 KB: argv, command line and message), exported over gRPC
/// to a receiver that takes 4 MiB at most, as gRPC servers and the OpenTelemetry Collector do
/// by default, and that, while the flood lasts, throttles its first 2 requests (RetryInfo),
/// refuses every 5th with INVALID_ARGUMENT and rejects a record of every 3rd it accepts
/// (partial success). No request is over the limit (batches are cut by size), the throttled
/// ones are retried, the refusals are dropped and counted rather than retried forever, a marker
/// exec after the flood still arrives, the receiver got exactly what ksense counts as
/// delivered, and every record offered to the sink is delivered, dropped or rejected, counted.
#[test]
fn long_argv_flood_is_exported_in_requests_under_4_mib_and_refusals_are_counted() {
    const NOBODY: u32 = 65534;
    let receiver = Receiver::start(Behaviour { throttle_first: 2, refuse_every: 5, partial_every: 3 });
    let config = temp_config(
        "otlp-flood",
        &format!("[sinks.otlp]\nendpoint = \"{}\"\n[sinks.journald]\nenabled = false\n", receiver.endpoint()),
    );
    // Without JSON lines on stdout: 1500 lines of 50 KB through the harness would be the
    // bottleneck, not what is tested.
    let ksense = Ksense::start_without_stdout(&["--config", config.to_str().unwrap()]);

    let started = Instant::now();
    let flood = Command::new(workload_bin())
        .args(["exec-flood", "1500", "16384"])
        .uid(NOBODY)
        .gid(NOBODY)
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let flood = flood.wait_with_output().unwrap();
    assert!(flood.status.success(), "the flood failed: {flood:?}");
    assert_eq!(printed(&String::from_utf8_lossy(&flood.stdout), "execs"), 1500);
    eprintln!("flood: 1500 execs with 16 KiB of argv in {:.1} s", started.elapsed().as_secs_f64());

    // Once the receiver has refused requests and rejected records, it stops doing so; a
    // marker exec after that must still get through: the export is not wedged.
    let deadline = Instant::now() + Duration::from_secs(30);
    let counts = receiver.counts();
    while counts.refused_requests.load(Relaxed) == 0 || counts.partially_rejected_records.load(Relaxed) == 0 {
        assert!(Instant::now() < deadline, "the flood's requests were neither refused nor rejected: {counts:?}");
        std::thread::sleep(Duration::from_millis(50));
    }
    receiver.accept_everything();
    // A marker run while the flood's backlog still fills the ring buffer may be dropped there
    // (counted, and reported as ksense.loss): one is run every few seconds until one arrives.
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut markers = Vec::new();
    loop {
        let marker = Command::new(workload_bin()).args(["marker", "after the flood"]).uid(NOBODY).gid(NOBODY).spawn().unwrap();
        markers.push(i64::from(marker.id()));
        assert!(marker.wait_with_output().unwrap().status.success());
        let arrived = receiver.try_wait_for(Duration::from_secs(5), |r| {
            r.event_name == "process.exec" && r.pid.is_some_and(|pid| markers.contains(&pid))
        });
        if arrived.is_some() {
            break;
        }
        if Instant::now() >= deadline {
            let stopped = ksense.stop();
            panic!("no marker exec reached the receiver after the flood ({} tried): {:?}\n{}", markers.len(), receiver.counts(), stopped.stderr);
        }
    }

    let stopped = ksense.stop();
    assert!(stopped.status.success(), "{}", stopped.stderr);
    let counter = |name: &str| stopped.counter(&format!("sink_otlp_{name}"));
    let (written, delivered, queue_full, failed, rejected) =
        (stopped.counter("events_written"), counter("delivered"), counter("queue_full"), counter("failed"), counter("rejected"));
    eprintln!(
        "events_written={written} delivered={delivered} queue_full={queue_full} failed={failed} rejected={rejected}; \
         receiver: {counts:?}"
    );
    let agents = receiver.user_agents();
    assert!(agents.iter().all(|a| a.starts_with("ksense/")) && !agents.is_empty(), "User-Agent: {agents:?}");
    assert_eq!(counts.oversized_requests.load(Relaxed), 0, "a request over 4 MiB was sent: {counts:?}");
    assert!(counts.largest_request.load(Relaxed) <= 3 << 20, "max_request_bytes is 3 MiB by default: {counts:?}");
    assert!(counts.largest_request.load(Relaxed) > 1 << 20, "the flood's batches must have been large: {counts:?}");
    assert!(counts.refused_requests.load(Relaxed) > 0, "the receiver refused nothing: {counts:?}");
    assert_eq!(counts.accepted_records.load(Relaxed), delivered, "the receiver got exactly what ksense counts as delivered");
    let partial = counts.partially_rejected_records.load(Relaxed);
    assert!(partial > 0, "no partial success: {counts:?}");
    assert_eq!(counts.refused_records.load(Relaxed) + partial, rejected, "every refused or rejected record counts as rejected, once");
    assert_eq!(counts.throttled_requests.load(Relaxed), 2, "{counts:?}");
    assert!(counter("retries") >= 2, "the throttled requests were not retried: {}", stopped.stderr);
    assert_eq!(failed, 0, "the receiver was there all along: {}", stopped.stderr);
    // Offered to the sink: every event written, and ksense's own ksense.loss/ksense.status records.
    let (offered, memory_budget) = (written + stopped.counter("own_records"), counter("memory_budget"));
    assert_eq!(delivered + queue_full + memory_budget + failed + rejected, offered, "every record offered is delivered or counted");
    // Refusals and partial successes are logged once per cause, not once per batch.
    for cause in ["INVALID_ARGUMENT", "partial success"] {
        assert_eq!(stopped.stderr.matches(cause).count(), 1, "{cause}: {}", stopped.stderr);
    }
}

/// Credentials in the endpoint URL (user information, a query's values) never reach ksense's
/// log, over either transport, while export to it fails and is logged; and a `headers_file`
/// any user can read is warned about, naming the file and the fix.
#[test]
fn credentials_in_the_endpoint_are_never_logged() {
    use std::os::unix::fs::PermissionsExt as _;
    let port = free_port();
    let headers = temp_config("otlp-headers", "authorization=Bearer s3cret-header\n");
    std::fs::set_permissions(&headers, std::fs::Permissions::from_mode(0o644)).unwrap();
    for protocol in ["grpc", "http/protobuf"] {
        let config = temp_config(
            &format!("otlp-secrets-{}", protocol.replace('/', "-")),
            &format!(
                "[sinks.otlp]\nendpoint = \"http://user:s3cret-pass@127.0.0.1:{port}/?api_key=s3cret-key\"\n\
                 protocol = \"{protocol}\"\nheaders_file = \"{}\"\n[sinks.journald]\nenabled = false\n",
                headers.display()
            ),
        );
        let ksense = Ksense::start(&["--config", config.to_str().unwrap()]);
        run_workload(&["marker"]);
        ksense.wait_for_log("OTLP export failed");
        let stopped = ksense.stop();
        assert!(!stopped.stderr.contains("s3cret"), "{protocol}: a secret was logged:\n{}", stopped.stderr);
        assert!(stopped.stderr.contains(&format!("***@127.0.0.1:{port}")), "{protocol}:\n{}", stopped.stderr);
        assert!(stopped.stderr.contains("api_key=***"), "{protocol}:\n{}", stopped.stderr);
        let warning = stopped.stderr.lines().find(|l| l.contains("readable by every user")).unwrap_or_else(|| {
            panic!("{protocol}: no warning about the headers file:\n{}", stopped.stderr)
        });
        assert!(warning.contains(&headers.display().to_string()) && warning.contains("chmod 600"), "{warning}");
        assert!(stopped.counter("sink_otlp_failed") > 0, "{}", stopped.stderr);
    }
    std::fs::remove_file(headers).unwrap();
}

/// A record larger than a request may be on its own: with `max_request_bytes` at its least
/// (64 KiB), an exec whose 15 KiB of argv are bytes that are not UTF-8 (each written `\xNN`, so
/// argv, command line and message come to some 180 KiB) arrives cut to fit and flagged, neither
/// refused by the receiver nor lost.
#[test]
fn a_record_larger_than_a_request_arrives_cut_and_flagged() {
    use std::os::unix::ffi::OsStringExt as _;
    let receiver = Receiver::start(Behaviour::default());
    let config = temp_config(
        "otlp-cut",
        &format!("[sinks.otlp]\nendpoint = \"{}\"\nmax_request_bytes = 65536\n[sinks.journald]\nenabled = false\n", receiver.endpoint()),
    );
    let ksense = Ksense::start(&["--config", config.to_str().unwrap()]);
    let args = (0..15).map(|_| std::ffi::OsString::from_vec(vec![0xff; 1024]));
    let marker = Command::new(workload_bin()).arg("marker").args(args).uid(65534).gid(65534).spawn().unwrap();
    let pid = i64::from(marker.id());
    assert!(marker.wait_with_output().unwrap().status.success());
    let exec = receiver.wait_for("exec of the marker", Duration::from_secs(20), |r| r.event_name == "process.exec" && r.pid == Some(pid));
    assert!(exec.args_truncated, "{exec:?}");
    let stopped = ksense.stop();
    assert!(stopped.status.success(), "{}", stopped.stderr);
    assert_eq!(stopped.counter("sink_otlp_rejected"), 0, "{}", stopped.stderr);
    assert!(stopped.stderr.contains("its command line was cut"), "{}", stopped.stderr);
    let counts = receiver.counts();
    assert!(counts.largest_request.load(Relaxed) <= 65536, "{counts:?}");
    assert_eq!(counts.accepted_records.load(Relaxed), stopped.counter("sink_otlp_delivered"));
}
