//! ksense-bench: what ksense costs the processes it watches, side by side with bpftrace and
//! auditd on the same workloads in the same run (docs/BENCHMARKS.md).
//!
//! ```text
//! ksense-bench [--quick] [--pairs N] [--out FILE] [--arms LIST] [--workloads LIST]
//!              [--count WORKLOAD=N]... [--spawners N] [--ksense PATH]
//! ksense-bench workload NAME COUNT SPAWNERS     (the measured loop; the harness starts it)
//! ```
//! For each workload, `pairs` times in a row, every arm once (`none` first), each with a fresh
//! agent: start it, run the workload in its own process, stop it, count what it delivered.
//! Exits non-zero when a run of `none` or a ksense arm failed; bpftrace or auditd failing (not
//! installed, refused by the machine) is reported, and when its first run failed that arm is
//! skipped for the rest of the run.
mod arms;
mod report;
mod workload;

use std::{
    path::PathBuf,
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use arms::{Arm, Setup};
use ksense_e2e::{
    collector::{Collector, ROTEL},
    journald,
};
use report::{Run, Sample};
use workload::{Outcome, Workload};

/// Ops per run and pairs of each workload (in [`Workload::ALL`] order), for a full run (about 20
/// minutes on 2 cores: the 100,000-exec burst gets 3 pairs to fit) and for `--quick` (under 2
/// minutes; for CI: it shows that every arm runs, its timings mean little).
const FULL: Counts = [(10_000, 5), (3_000, 5), (400_000, 5), (100_000, 3)];
const QUICK: Counts = [(300, 1), (100, 1), (20_000, 1), (2_000, 1)];
/// Spawner threads of the exec burst.
const SPAWNERS: usize = 4;
/// A pause after each run, so an agent's last writes (journald, the collector) are not billed
/// to the next run.
const SETTLE: Duration = Duration::from_secs(1);

/// (ops per run, pairs) per workload.
type Counts = [(u64, usize); 4];

struct Options {
    counts: Counts,
    out: Option<PathBuf>,
    arms: Vec<Arm>,
    workloads: Vec<Workload>,
    spawners: usize,
    ksense: PathBuf,
}

const USAGE: &str = "usage: ksense-bench [--quick] [--pairs N] [--out FILE] \
[--arms none,ksense-kernel,ksense-full,bpftrace,auditd] [--workloads fork-exit,fork-exec,mprotect,exec-burst] \
[--count WORKLOAD=N]... [--spawners N] [--ksense PATH]";

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().map(String::as_str) == Some("workload") {
        let (Some(workload), Some(count), Some(spawners)) = (
            args.get(1).and_then(|w| Workload::from_name(w)),
            args.get(2).and_then(|n| n.parse().ok()),
            args.get(3).and_then(|n| n.parse().ok()),
        ) else {
            fail("usage: ksense-bench workload NAME COUNT SPAWNERS");
        };
        workload::run(workload, count, spawners);
        return;
    }
    let options = parse(&args).unwrap_or_else(|e| fail(&format!("{e}\n{USAGE}")));
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        fail("ksense-bench loads eBPF programs and audit rules: run it as root (sudo make bench)");
    }
    let collector = options.arms.contains(&Arm::KsenseFull).then(|| {
        journald::ensure();
        Collector::start_discarding()
    });
    let dir = std::env::temp_dir().join(format!("ksense-bench.{}", std::process::id()));
    let setup = Setup::new(options.ksense.clone(), dir, collector).unwrap_or_else(|e| fail(&e));
    let mut title = title(&options, &args);
    let started = Instant::now();
    let runs = run_all(&options, &setup);
    title.push(format!(
        "- wall time: {:.0} s; load average at the end: {}",
        started.elapsed().as_secs_f64(),
        loadavg()
    ));
    let report = report::markdown(&title, &runs);
    println!("{report}");
    if let Some(out) = &options.out {
        std::fs::write(out, &report).unwrap_or_else(|e| fail(&format!("{}: {e}", out.display())));
        eprintln!("ksense-bench: report written to {}", out.display());
    }
    let _ = std::fs::remove_dir_all(&setup.dir);
    let failed: Vec<String> = runs
        .iter()
        .filter(|r| r.arm.required() && r.result.is_err())
        .map(|r| format!("{} {} pair {}", r.workload.name(), r.arm.name(), r.pair))
        .collect();
    let peers_failed = runs.iter().filter(|r| !r.arm.required() && r.result.is_err()).count();
    // One line for scripts/test.sh's total: runs, with a peer's failure counted as skipped.
    println!(
        "bench: {} passed, {} failed, {peers_failed} skipped",
        runs.len() - failed.len() - peers_failed,
        failed.len()
    );
    if !failed.is_empty() {
        fail(&format!("{} run(s) failed: {}", failed.len(), failed.join(", ")));
    }
}

/// Every (workload, pair, arm) run, in that order, skipping a peer arm whose first run failed.
fn run_all(options: &Options, setup: &Setup) -> Vec<Run> {
    let mut runs = Vec::new();
    let mut skipped: Vec<Arm> = Vec::new();
    for &workload in &options.workloads {
        let (ops, pairs) = options.counts[workload as usize];
        // A tenth of a run first, not measured: caches, page tables and the CPU's clock settle.
        if let Err(e) = run_workload(workload, ops.div_ceil(10), options.spawners) {
            eprintln!("ksense-bench: {} warm-up FAILED: {e}", workload.name());
        }
        for pair in 1..=pairs {
            for &arm in &options.arms {
                if skipped.contains(&arm) {
                    continue;
                }
                let result = run_one(setup, workload, ops, options.spawners, arm);
                match &result {
                    Ok(sample) => eprintln!(
                        "ksense-bench: {} pair {pair} {}: {:.2} us/op{}",
                        workload.name(),
                        arm.name(),
                        sample.outcome.us_per_op(),
                        sample
                            .agent
                            .as_ref()
                            .map(|a| format!(", agent CPU {} ms, {} events handled", a.cpu_us / 1000, a.handled))
                            .unwrap_or_default()
                    ),
                    Err(e) => {
                        eprintln!("ksense-bench: {} pair {pair} {} FAILED: {e}", workload.name(), arm.name());
                        // A peer that never ran is one this machine does not allow.
                        if !arm.required() && !runs.iter().any(|r: &Run| r.arm == arm && r.result.is_ok()) {
                            eprintln!("ksense-bench: skipping {} from now on", arm.name());
                            skipped.push(arm);
                        }
                    }
                }
                runs.push(Run { workload, arm, pair, result });
                std::thread::sleep(SETTLE);
            }
        }
    }
    runs
}

/// One run: the arm's agent started, the workload run to completion, the agent stopped.
fn run_one(setup: &Setup, workload: Workload, ops: u64, spawners: usize, arm: Arm) -> Result<Sample, String> {
    let agent = arms::start(arm, setup)?;
    let ran = run_workload(workload, ops, spawners);
    let measured = agent.map(|agent| {
        agent.stop(ran.as_ref().map_or(0, |(pid, _)| *pid), ran.as_ref().map_or(&Outcome::default(), |(_, o)| o))
    });
    let (_, outcome) = ran?;
    Ok(Sample { outcome, agent: measured.transpose()? })
}

/// Runs the workload in a process of its own; returns its pid and what it measured.
fn run_workload(workload: Workload, ops: u64, spawners: usize) -> Result<(u32, Outcome), String> {
    let exe = std::env::current_exe().map_err(|e| format!("current_exe: {e}"))?;
    let child = Command::new(exe)
        .args(["workload", workload.name(), &ops.to_string(), &spawners.to_string()])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .spawn()
        .map_err(|e| format!("cannot start the workload: {e}"))?;
    let pid = child.id();
    let out = child.wait_with_output().map_err(|e| e.to_string())?;
    let text = String::from_utf8_lossy(&out.stdout);
    match Outcome::parse(&text) {
        Some(outcome) if out.status.success() => Ok((pid, outcome)),
        _ => Err(format!("workload {} failed ({}): {text}", workload.name(), out.status)),
    }
}

fn parse(args: &[String]) -> Result<Options, String> {
    let quick = args.iter().any(|a| a == "--quick");
    let exe = std::env::current_exe().map_err(|e| e.to_string())?;
    let mut options = Options {
        counts: if quick { QUICK } else { FULL },
        out: None,
        arms: Arm::ALL.to_vec(),
        workloads: Workload::ALL.to_vec(),
        spawners: SPAWNERS,
        // Beside this binary, as scripts/bench.sh copies them.
        ksense: exe.with_file_name("ksense"),
    };
    let mut args = args.iter().filter(|a| *a != "--quick");
    while let Some(flag) = args.next() {
        let mut value = || args.next().ok_or_else(|| format!("{flag} needs a value"));
        let number = |v: &str| v.replace('_', "").parse::<u64>().map_err(|_| format!("{flag}: {v:?} is not a number"));
        match flag.as_str() {
            "--pairs" => {
                let pairs = number(value()?)? as usize;
                options.counts.iter_mut().for_each(|(_, p)| *p = pairs);
            }
            "--spawners" => options.spawners = number(value()?)? as usize,
            "--out" => options.out = Some(value()?.into()),
            "--ksense" => options.ksense = value()?.into(),
            "--arms" => {
                options.arms = value()?
                    .split(',')
                    .map(|a| Arm::from_name(a).ok_or(format!("no arm {a:?}")))
                    .collect::<Result<_, _>>()?;
                // Ratios need the baseline of each pair.
                if !options.arms.contains(&Arm::None) {
                    options.arms.insert(0, Arm::None);
                }
            }
            "--workloads" => {
                options.workloads = value()?
                    .split(',')
                    .map(|w| Workload::from_name(w).ok_or(format!("no workload {w:?}")))
                    .collect::<Result<_, _>>()?
            }
            "--count" => {
                let spec = value()?;
                let (name, n) = spec.split_once('=').ok_or(format!("--count {spec:?}: expected WORKLOAD=N"))?;
                let workload = Workload::from_name(name).ok_or(format!("no workload {name:?}"))?;
                options.counts[workload as usize].0 = number(n)?;
            }
            _ => return Err(format!("unknown argument {flag:?}")),
        }
    }
    if !options.ksense.is_file() {
        return Err(format!(
            "{} is missing: build it (cargo build --release -p ksense) or pass --ksense",
            options.ksense.display()
        ));
    }
    Ok(options)
}

/// The report's first lines: what ran, where, and how to run it again.
fn title(options: &Options, args: &[String]) -> Vec<String> {
    let command = |program: &str, args: &[&str]| {
        Command::new(program)
            .args(args)
            .output()
            .ok()
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
            .unwrap_or_default()
    };
    let version = |program: &str| {
        arms::which(program).map(|p| command(p.to_str().unwrap(), &["--version"])).unwrap_or("not installed".into())
    };
    vec![
        format!("## Results: {}", command("date", &["-u", "+%Y-%m-%d %H:%M UTC"])),
        String::new(),
        format!("- command: `ksense-bench {}` (what `sudo make bench` runs: scripts/bench.sh)", args.join(" ")),
        format!(
            "- machine: kernel {}, {} CPUs, load average at the start: {}",
            std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default().trim(),
            std::thread::available_parallelism().map_or(0, |n| n.get()),
            loadavg()
        ),
        format!(
            "- {}; {}; {}; auditd {}",
            command(options.ksense.to_str().unwrap(), &["--version"]),
            version("bpftrace"),
            command(ROTEL, &["--version"]).lines().next().unwrap_or("rotel"),
            command("dpkg-query", &["-W", "-f", "${Version}", "auditd"])
        ),
        format!(
            "- pairs: {}; exec-burst with {} spawner threads",
            options
                .workloads
                .iter()
                .map(|&w| format!("{} {}", w.name(), options.counts[w as usize].1))
                .collect::<Vec<_>>()
                .join(", "),
            options.spawners
        ),
    ]
}

fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .unwrap_or_default()
        .split_whitespace()
        .take(3)
        .collect::<Vec<_>>()
        .join(" ")
}

fn fail(message: &str) -> ! {
    eprintln!("ksense-bench: {message}");
    std::process::exit(1);
}
