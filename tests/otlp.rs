//! The OTLP sink against a real collector (rotel): over gRPC and over HTTP/protobuf the
//! collector receives the contract's records, typed, with the agent's resource; and a collector
//! that goes away and comes back costs nothing but counted drops.
use std::process::Command;

use ksense_e2e::{
    Ksense, attr,
    collector::{Collector, Received, check_outage_accounting, free_port, small_queue_config},
    is, run_workload, temp_config, workload_bin,
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
    std::thread::sleep(std::time::Duration::from_secs(2));

    // Back: export resumes without help (the queued backlog goes first; events arriving while
    // the queue is still full are dropped and counted, so the marker runs once it has drained).
    let collector = Collector::start_on(grpc_port, http_port);
    collector.wait_for("the backlog", |_| true);
    std::thread::sleep(std::time::Duration::from_secs(3));
    let (_, marker) = run_workload(&["marker"]);
    let pid = format!("Int({marker})");
    collector.wait_for("an event after the outage", |r| {
        r.event_name == "process.exit" && r.attributes.get("process.pid") == Some(&pid)
    });
    let totals = check_outage_accounting(&ksense.stop(), &collector);
    assert!(totals.dropped > 0, "the queue of 200 must have overflowed during the outage");
}
