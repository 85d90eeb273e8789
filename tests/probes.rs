//! `ksense probes`: the hook chosen per event kind on this kernel, and why others were not.
use std::process::Command;

use ksense_e2e::ksense_bin;
use serde_json::Value;

fn probes(args: &[&str]) -> Value {
    let out = Command::new(ksense_bin()).arg("probes").arg("--json").args(args).output().unwrap();
    assert!(out.status.success(), "ksense probes failed: {}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).unwrap()
}

#[test]
fn every_kind_gets_a_hook_with_reasons_for_the_rest() {
    let report = probes(&[]);
    let kinds = report["kinds"].as_array().unwrap();
    let names: Vec<&str> = kinds.iter().map(|k| k["event"].as_str().unwrap()).collect();
    assert_eq!(names, ["process.fork", "process.exec", "process.exit", "kernel.module.load", "process.memory.protect"]);
    for kind in kinds {
        let Some(chosen) = kind["chosen"].as_str() else {
            // Only a real absence may leave a kind without a hook (tests/module.rs checks the
            // reason; the VM test loads modules on a kernel that has them).
            assert!(kind["event"] == "kernel.module.load" && no_modules_here(), "no hook for {kind}");
            continue;
        };
        for hook in kind["hooks"].as_array().unwrap() {
            match hook["status"].as_str().unwrap() {
                "attached" => assert_eq!(hook["probe"], chosen),
                "refused" | "skipped" => assert!(hook["reason"].as_str().is_some_and(|r| !r.is_empty()), "{hook}"),
                other => panic!("unknown status {other}"),
            }
        }
    }
}

/// Whether this kernel lacks module support, so `kernel.module.load` can have no hook.
fn no_modules_here() -> bool {
    !std::path::Path::new("/proc/modules").exists()
}

/// A refusal says in words why, not only an errno; and the helpers the kernel lacks are listed
/// (none here: this host's kernel is newer than every helper ksense uses).
#[test]
fn refusals_are_explained_and_missing_helpers_listed() {
    let report = probes(&[]);
    assert_eq!(report["missing_helpers"], serde_json::json!([]), "{report}");
    for kind in report["kinds"].as_array().unwrap() {
        for hook in kind["hooks"].as_array().unwrap().iter().filter(|h| h["status"] == "refused") {
            let reason = hook["reason"].as_str().unwrap();
            // The raw error comes last, in brackets, after the words.
            let (words, raw) = reason.rsplit_once(" [").unwrap_or_else(|| panic!("no raw error in {hook}"));
            assert!(raw.ends_with(']') && words.len() > 20, "{hook}");
            assert!(!words.contains("os error"), "the explanation is only an errno: {hook}");
        }
    }
}

#[test]
fn tracepoint_mode_never_uses_trampolines() {
    let report = probes(&["--attach", "tracepoint"]);
    for kind in report["kinds"].as_array().unwrap() {
        let Some(chosen) = kind["chosen"].as_str() else {
            assert!(kind["event"] == "kernel.module.load" && no_modules_here(), "no hook for {kind}");
            continue;
        };
        assert!(chosen.starts_with("tp_btf/") || chosen.starts_with("tracepoint/"), "{kind}");
    }
}

#[test]
fn a_bad_config_is_refused_with_its_place() {
    let config = std::env::temp_dir().join(format!("ksense-bad-{}.toml", std::process::id()));
    std::fs::write(&config, "[probes]\nattach = \"kprobes\"\n").unwrap();
    let out = Command::new(ksense_bin()).args(["check-config", config.to_str().unwrap()]).output().unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains(&format!("{}:2:10:", config.display())), "{stderr}");
    std::fs::remove_file(config).unwrap();
}
