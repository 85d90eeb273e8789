//! SIGHUP: a valid new configuration switches the sinks without detaching the probes; a bad one
//! is rejected with its place and the running configuration stays.
use ksense_e2e::{Ksense, attr, collector::Collector, is, run_workload, temp_config};

#[test]
fn sighup_switches_sinks_and_rejects_a_bad_config() {
    let collector = Collector::start();
    let config = temp_config("reload", "[probes]\nthread_exits = false\n");
    let ksense = Ksense::start(&["--config", config.to_str().unwrap()]);
    let (_, before) = run_workload(&["marker"]);
    ksense.wait_for("the first marker's exit", |e| is(e, "process.exit") && attr(e, "process.pid") == before);

    // A valid change: add the OTLP sink.
    std::fs::write(&config, format!("[sinks.otlp]\nendpoint = \"http://127.0.0.1:{}\"\n", collector.grpc_port)).unwrap();
    ksense.signal(libc::SIGHUP);
    ksense.wait_for_log("configuration reloaded");
    let (_, after) = run_workload(&["marker"]);
    let pid = format!("Int({after})");
    collector.wait_for("the second marker's exit over OTLP", |r| {
        r.event_name == "process.exit" && r.attributes.get("process.pid") == Some(&pid)
    });

    // A bad change: rejected, with file and line; events keep flowing to the same sinks.
    std::fs::write(&config, "[sinks.otlp]\nendpoint = \"http://127.0.0.1:1\"\nbatch_sise = 3\n").unwrap();
    ksense.signal(libc::SIGHUP);
    ksense.wait_for_log("the running one stays");
    assert!(ksense.stderr().contains(&format!("{}:3:1", config.display())), "{}", ksense.stderr());
    let (_, last) = run_workload(&["marker"]);
    let pid = format!("Int({last})");
    collector.wait_for("the third marker's exit over OTLP", |r| {
        r.event_name == "process.exit" && r.attributes.get("process.pid") == Some(&pid)
    });
    ksense.wait_for("the third marker's exit on stdout", |e| is(e, "process.exit") && attr(e, "process.pid") == last);
    let stopped = ksense.stop();
    assert!(stopped.status.success(), "{}", stopped.stderr);
    assert_eq!(stopped.counter("lost_total"), 0, "{}", stopped.stderr);
}
