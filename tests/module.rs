//! `kernel.module.load` on this host. The host kernel is built without module support
//! (CONFIG_MODULES off: no module can ever load here), so what is checked here is that ksense
//! says so and keeps running everything else; real module loads, on both hook families, are
//! tested on Debian's 6.1 kernel in the VM (tests/vm).
use std::{path::Path, process::Command};

use ksense_e2e::{Ksense, attr, is, ksense_bin, run_workload};

#[test]
fn without_module_support_ksense_says_so_and_runs_the_rest() {
    if Path::new("/proc/modules").exists() {
        eprintln!("skipped: this kernel supports modules; the module load test runs in the VM (tests/vm)");
        return;
    }
    let out = Command::new(ksense_bin()).args(["probes", "--json"]).output().unwrap();
    assert!(out.status.success());
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let module = report["kinds"].as_array().unwrap().iter().find(|k| k["event"] == "kernel.module.load").unwrap();
    assert!(module["chosen"].is_null(), "{module}");
    for hook in module["hooks"].as_array().unwrap() {
        assert!(hook["reason"].as_str().unwrap().contains("CONFIG_MODULES"), "{hook}");
    }

    let ksense = Ksense::start(&[]);
    let (_, pid) = run_workload(&["marker"]);
    ksense.wait_for("the marker's exit", |e| is(e, "process.exit") && attr(e, "process.pid") == pid);
    let stopped = ksense.stop();
    assert!(stopped.status.success());
    assert_eq!(stopped.stderr.matches("no hook could be attached").count(), 1, "reported once:\n{}", stopped.stderr);
}
