//! The VM benchmark: module load/unload on Debian 12's 6.1 kernel, beside no agent and
//! beside ksense in each attach mode, interleaved in pairs (`guest_bench.rs` runs it in the
//! guest). The host kernel has no loadable modules, so this is the only place it can run.
//!
//! Ignored by default (it takes minutes). Run it with
//! `cargo test -p ksense-e2e --test vm -- --ignored --nocapture` (after
//! `cargo build -p ksense -p ksense-e2e --bins`; add `--release` to both for a release ksense).
//! It prints a markdown report on stderr and writes it to `target/vm/bench/report.md`; the
//! console goes to `target/vm/bench/console.log`. It fails when a run failed or is missing.
//!
//! Knobs: `$KSENSE_VM_BENCH_LOADS` (ops per run, default 200), `$KSENSE_VM_BENCH_PAIRS`
//! (default 5), `$KSENSE_VM_BENCH_TIMEOUT_SECS` (qemu's hard limit, default 3600).
use std::{collections::BTreeMap, fmt::Write as _, io::Write as _, time::Instant};

use ksense_e2e::{
    ksense_bin,
    stats::{median, range},
};

use super::{DEBIAN_12_6_1, Vm, env_number, target_dir};
use crate::shared::{BENCH_ARMS, BENCH_WORKLOADS};

#[test]
#[ignore = "benchmark: boots qemu, about 7 minutes with the defaults"]
fn module_load_unload_in_qemu() {
    let started = Instant::now();
    let loads = env_number("KSENSE_VM_BENCH_LOADS", 200);
    let pairs = env_number("KSENSE_VM_BENCH_PAIRS", 5);
    let dir = target_dir().join("vm").join("bench");
    let load_before = loadavg();
    let vm = Vm::prepare(&dir, Some(&format!("{loads},{pairs}")), &DEBIAN_12_6_1);
    let timeout = std::time::Duration::from_secs(env_number("KSENSE_VM_BENCH_TIMEOUT_SECS", 3600));
    let console = vm.boot(timeout, &dir.join("console.log"));

    let runs: Vec<Run> = console.iter().filter_map(|l| Run::parse(&l[l.find("vm-bench ")?..])).collect();
    let mut problems = Vec::new();
    for workload in BENCH_WORKLOADS {
        for pair in 1..=pairs as usize {
            for arm in BENCH_ARMS {
                let found = runs.iter().filter(|r| r.workload == workload && r.pair == pair && r.arm == arm);
                match found.map(|r| &r.result).collect::<Vec<_>>().as_slice() {
                    [Ok(_)] => {}
                    [Err(reason)] => problems.push(format!("{workload} pair {pair} {arm}: {reason}")),
                    [] => problems.push(format!("{workload} pair {pair} {arm}: no result")),
                    more => problems.push(format!("{workload} pair {pair} {arm}: {} results", more.len())),
                }
            }
        }
    }

    // target/<profile>/ksense, unless $KSENSE_BIN names another.
    let ksense = ksense_bin();
    let title = [
        format!(
            "Module load/unload in the VM: kernel {}, qemu -accel tcg -cpu max (one vCPU), ksense {}; \
             {loads} ops per run, {pairs} pairs, arm order rotated per pair",
            vm.release,
            ksense.display()
        ),
        format!(
            "Host load average (1/5/15 min) before: {load_before}, after: {}; wall time {:.0} s",
            loadavg(),
            started.elapsed().as_secs_f64()
        ),
    ];
    let mut text = markdown(&title, &runs);
    for note in console.iter().filter_map(|l| l.find("vm-note ").map(|at| &l[at..])) {
        let _ = writeln!(text, "\n{note}");
    }
    // Straight to stderr, as the VM test does: wanted whether the test passes or not.
    let _ = std::io::stderr().write_all(text.as_bytes());
    std::fs::write(dir.join("report.md"), &text).unwrap();
    assert!(problems.is_empty(), "the VM benchmark had failed runs:\n  {}\n(console: {})", problems.join("\n  "), dir.join("console.log").display());
}

/// One `vm-bench` line: a workload run beside one arm.
struct Run {
    workload: String,
    pair: usize,
    arm: String,
    /// The line's `key=N` fields (numbers only; `probe` is kept apart), or why the run failed.
    result: Result<Fields, String>,
}

/// The numeric fields of a successful run, and the hook its module loads came from.
struct Fields {
    numbers: BTreeMap<String, f64>,
    probe: Option<String>,
}

impl Fields {
    fn get(&self, key: &str) -> Option<f64> {
        self.numbers.get(key).copied()
    }

    /// Mean time of one op (a load and an unload), in microseconds.
    fn us_per_op(&self) -> Option<f64> {
        Some(self.get("total_us")? / self.get("ops")?)
    }

    /// ksense's CPU time since its probes attached, in microseconds.
    fn cpu_us(&self) -> Option<f64> {
        Some(self.get("cpu_user_us")? + self.get("cpu_system_us")?)
    }
}

impl Run {
    /// `vm-bench workload=W pair=P arm=A k=v ...` or `vm-bench workload=W pair=P arm=A: FAIL why`.
    fn parse(line: &str) -> Option<Run> {
        let line = line.strip_prefix("vm-bench ")?.trim_end();
        let (head, failure) = match line.split_once(": FAIL") {
            Some((head, why)) => (head, Some(why.trim().to_owned())),
            None => (line, None),
        };
        let pairs: BTreeMap<&str, &str> = head.split_whitespace().filter_map(|f| f.split_once('=')).collect();
        let numbers = pairs.iter().filter_map(|(k, v)| Some((k.to_string(), v.parse().ok()?))).collect();
        let fields = Fields { numbers, probe: pairs.get("probe").map(|p| p.to_string()) };
        Some(Run {
            workload: pairs.get("workload")?.to_string(),
            pair: pairs.get("pair")?.parse().ok()?,
            arm: pairs.get("arm")?.to_string(),
            result: failure.map_or(Ok(fields), Err),
        })
    }

    /// Time per op over that of the `none` run of the same workload and pair.
    fn ratio(&self, runs: &[Run]) -> Option<f64> {
        let none = runs.iter().find(|r| r.workload == self.workload && r.pair == self.pair && r.arm == "none")?;
        Some(self.result.as_ref().ok()?.us_per_op()? / none.result.as_ref().ok()?.us_per_op()?)
    }
}

/// The report: `title`, then a table per workload with the arms as columns (medians over
/// pairs), then every run.
fn markdown(title: &[String], runs: &[Run]) -> String {
    let mut out = String::new();
    for line in title {
        let _ = writeln!(out, "{line}\n");
    }
    for workload in BENCH_WORKLOADS {
        let _ = writeln!(out, "### {workload} (one op: one load and one unload of dummy.ko)\n");
        let _ = writeln!(out, "| | {} |", BENCH_ARMS.join(" | "));
        let _ = writeln!(out, "| --- |{}", " ---: |".repeat(BENCH_ARMS.len()));
        let of = |arm: &'static str| {
            runs.iter().filter(move |r| r.workload == workload && r.arm == arm).filter_map(|r| Some((r, r.result.as_ref().ok()?)))
        };
        let row = |out: &mut String, name: &str, cell: &dyn Fn(&'static str) -> Option<String>| {
            let cells: Vec<String> = BENCH_ARMS.iter().map(|&a| cell(a).unwrap_or_else(|| "-".into())).collect();
            let _ = writeln!(out, "| {name} | {} |", cells.join(" | "));
        };
        row(&mut out, "time per op, median over pairs (us)", &|a| median(of(a).filter_map(|(_, f)| f.us_per_op())).map(us));
        row(&mut out, "ratio to none (same pair), median [min-max]", &|a| {
            let ratios: Vec<f64> = of(a).filter_map(|(r, _)| r.ratio(runs)).collect();
            let (min, max) = range(ratios.iter().copied())?;
            Some(format!("{:.3} [{min:.3}-{max:.3}]", median(ratios)?))
        });
        row(&mut out, "hook of the module loads", &|a| of(a).find_map(|(_, f)| f.probe.clone()));
        row(&mut out, "ksense CPU per event written, median (us)", &|a| {
            median(of(a).filter_map(|(_, f)| Some(f.cpu_us()? / f.get("events_written")?.max(1.0)))).map(us)
        });
        row(&mut out, "ksense CPU per op, median (us)", &|a| {
            median(of(a).filter_map(|(_, f)| Some(f.cpu_us()? / f.get("ops")?))).map(us)
        });
        row(&mut out, "events written per run, median (all kinds, whole guest)", &|a| {
            median(of(a).filter_map(|(_, f)| f.get("events_written"))).map(|n| format!("{n:.0}"))
        });
        row(&mut out, "module loads generated / delivered / lost; lost of all kinds, all pairs", &|a| {
            let sum = |key: &str| of(a).filter_map(|(_, f)| f.get(key)).sum::<f64>();
            of(a).next()?.1.get("delivered")?;
            Some(format!(
                "{:.0} / {:.0} / {:.0}; {:.0}",
                sum("generated"),
                sum("delivered"),
                sum("lost_ring_buffer_kernel_module_load"),
                sum("lost_total")
            ))
        });
        row(&mut out, "ksense peak RSS, max (MiB)", &|a| {
            of(a).filter_map(|(_, f)| f.get("peak_rss_kib")).reduce(f64::max).map(|k| format!("{:.1}", k / 1024.0))
        });
        row(&mut out, "kernel-to-output latency p50 / p99, median (us)", &|a| {
            let p50 = median(of(a).filter_map(|(_, f)| f.get("latency_p50_us")))?;
            let p99 = median(of(a).filter_map(|(_, f)| f.get("latency_p99_us")))?;
            Some(format!("{p50:.0} / {p99:.0}"))
        });
        out.push('\n');
    }
    let _ = writeln!(out, "### Every run\n");
    let _ = writeln!(
        out,
        "| workload | pair | arm | us/op | op p50 (us) | op max (us) | ratio | ksense CPU (ms) | events written | module loads delivered/generated | lost |"
    );
    let _ = writeln!(out, "| --- | ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |");
    for r in runs {
        let head = format!("| {} | {} | {} |", r.workload, r.pair, r.arm);
        let f = match &r.result {
            Ok(f) => f,
            Err(reason) => {
                let _ = writeln!(out, "{head} failed: {} ||||||||", reason.replace('|', "/"));
                continue;
            }
        };
        let num = |key: &str| f.get(key).map(|x| format!("{x:.0}")).unwrap_or_default();
        let _ = writeln!(
            out,
            "{head} {} | {} | {} | {} | {} | {} | {} | {} |",
            f.us_per_op().map(us).unwrap_or_default(),
            num("op_p50_us"),
            num("op_max_us"),
            r.ratio(runs).map(|x| format!("{x:.3}")).unwrap_or_default(),
            f.cpu_us().map(|c| format!("{:.1}", c / 1000.0)).unwrap_or_default(),
            num("events_written"),
            f.get("delivered").map(|_| format!("{}/{}", num("delivered"), num("generated"))).unwrap_or_default(),
            num("lost_total"),
        );
    }
    out
}

/// Microseconds with the precision that matters at their size.
fn us(x: f64) -> String {
    if x < 10.0 { format!("{x:.2}") } else { format!("{x:.1}") }
}

/// The host's load averages over 1, 5 and 15 minutes.
fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "?".into())
}

#[test]
fn parses_run_lines() {
    let ok = Run::parse("vm-bench workload=insmod-rmmod pair=2 arm=fentry ops=4 total_us=100 probe=fentry/do_init_module delivered=4")
        .unwrap();
    assert_eq!((ok.workload.as_str(), ok.pair, ok.arm.as_str()), ("insmod-rmmod", 2, "fentry"));
    let fields = ok.result.as_ref().unwrap();
    assert_eq!(fields.us_per_op(), Some(25.0));
    assert_eq!(fields.probe.as_deref(), Some("fentry/do_init_module"));
    let failed = Run::parse("vm-bench workload=finit-delete pair=1 arm=none: FAIL finit_module: EEXIST").unwrap();
    assert_eq!(failed.result.err().as_deref(), Some("finit_module: EEXIST"));
    assert!(Run::parse("vm-note x").is_none());
}
