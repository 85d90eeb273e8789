//! The arms: what runs beside a workload (nothing, ksense in two configurations, bpftrace,
//! auditd), how each is started and stopped, and what each reports afterwards: its CPU time and
//! peak RSS (from /proc and wait4, the same way for every tool), the events it handled, the
//! workload's events it delivered, and what it counted as lost.
use std::{
    collections::BTreeMap,
    fs,
    io::{BufRead, BufReader},
    os::unix::fs::PermissionsExt,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use ksense_e2e::{collector::Collector, stopped_totals};
use serde_json::Value;

use crate::workload::{Outcome, Tally};

/// How long an agent may take to start (bpftrace compiles its script first) or to stop (ksense
/// drains what the kernel already reported through every sink).
const START_TIMEOUT: Duration = Duration::from_secs(90);
const STOP_TIMEOUT: Duration = Duration::from_secs(180);
/// A pause after an agent is ready, so the tail of its start-up work (ksense filling its
/// process table from /proc, bpftrace freeing its compiler) does not compete with the workload.
const SETTLE: Duration = Duration::from_secs(1);

/// An arm of the benchmark.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Arm {
    /// No agent.
    None,
    /// ksense with its probes attached; user space reads, decodes, enriches and discards.
    KsenseKernel,
    /// ksense with a JSON-lines file, journald and OTLP to a discarding collector.
    KsenseFull,
    /// One bpftrace script on the equivalent tracepoints, one line per event to a file.
    Bpftrace,
    /// auditd with syscall rules for the same events.
    Auditd,
}

impl Arm {
    /// Every arm, in the order each pair runs them.
    pub const ALL: [Arm; 5] = [Arm::None, Arm::KsenseKernel, Arm::KsenseFull, Arm::Bpftrace, Arm::Auditd];

    /// Its name on the command line and in the report.
    pub fn name(self) -> &'static str {
        match self {
            Arm::None => "none",
            Arm::KsenseKernel => "ksense-kernel",
            Arm::KsenseFull => "ksense-full",
            Arm::Bpftrace => "bpftrace",
            Arm::Auditd => "auditd",
        }
    }

    /// The arm called `name`.
    pub fn from_name(name: &str) -> Option<Arm> {
        Arm::ALL.into_iter().find(|a| a.name() == name)
    }

    /// Whether a failure of this arm fails the benchmark: the peers depend on what the machine
    /// allows, so they are reported and skipped instead.
    pub fn required(self) -> bool {
        !matches!(self, Arm::Bpftrace | Arm::Auditd)
    }
}

/// Kernel-to-sink latency percentiles, as ksense reports them at exit.
#[derive(Debug, Clone, Copy)]
pub struct Latency {
    /// Median, microseconds.
    pub p50_us: f64,
    /// 99th percentile, microseconds.
    pub p99_us: f64,
}

/// What an agent reported for one run.
#[derive(Debug, Clone, Default)]
pub struct Measured {
    /// User + system CPU time of the agent's process from when it was ready (after start-up)
    /// to its exit, the final drain included (/proc/PID/stat, then wait4).
    pub cpu_us: u64,
    /// Its peak resident set (VmHWM just before it was stopped).
    pub peak_rss_kib: u64,
    /// Every event it handled, the workload's and the rest of the machine's.
    pub handled: u64,
    /// The workload's events it delivered (None when the arm has no output to count them in).
    pub delivered: Option<Tally>,
    /// Events it counted as lost (all processes').
    pub lost: u64,
    /// For ksense, its non-zero loss counters (`lost_queue_full=N sink_otlp_queue_full=N ...`).
    pub lost_by_cause: String,
    /// ksense's kernel-to-sink latency, when it reports one.
    pub latency: Option<Latency>,
    /// CPU time journald and the collector spent taking in what the agent sent them, over the
    /// same span (the full arm only: what shipping every event costs the host beyond ksense).
    pub receivers_cpu_us: Option<u64>,
}

/// What every run shares: binaries, a private directory, the discarding collector.
pub struct Setup {
    /// The ksense binary.
    pub ksense: PathBuf,
    /// A directory only root can read (auditd insists), for configurations and outputs.
    pub dir: PathBuf,
    /// The OTLP collector of the full arm, started once.
    pub collector: Option<Collector>,
}

impl Setup {
    /// Creates `dir` (mode 0700).
    pub fn new(ksense: PathBuf, dir: PathBuf, collector: Option<Collector>) -> Result<Setup, String> {
        fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        fs::set_permissions(&dir, fs::Permissions::from_mode(0o700)).map_err(|e| format!("{}: {e}", dir.display()))?;
        Ok(Setup { ksense, dir, collector })
    }
}

/// A running agent.
pub struct Agent {
    pid: i32,
    /// Its CPU time when it was ready: start-up is not billed to the workload's events.
    cpu_at_ready_us: u64,
    kind: Running,
}

enum Running {
    Ksense { stderr: PathBuf, events: Option<PathBuf>, receivers: Vec<(i32, u64)> },
    Bpftrace { out: PathBuf },
    Auditd { log: PathBuf, before: AuditStatus },
}

/// Starts the agent of `arm` and waits until it watches (None for [`Arm::None`]).
pub fn start(arm: Arm, setup: &Setup) -> Result<Option<Agent>, String> {
    let (pid, kind) = match arm {
        Arm::None => return Ok(None),
        Arm::KsenseKernel | Arm::KsenseFull => start_ksense(arm, setup)?,
        Arm::Bpftrace => start_bpftrace(setup)?,
        Arm::Auditd => start_auditd(setup)?,
    };
    std::thread::sleep(SETTLE);
    let mut agent = Agent { pid, cpu_at_ready_us: 0, kind };
    match cpu_us(pid) {
        Ok(cpu) => agent.cpu_at_ready_us = cpu,
        Err(e) => {
            let _ = agent.stop(0, &Outcome::default());
            return Err(e);
        }
    }
    Ok(Some(agent))
}

/// The running systemd-journald's process id (None when there is none).
fn journald_pid() -> Option<i32> {
    fs::read_dir("/proc").ok()?.flatten().find_map(|entry| {
        let pid: i32 = entry.file_name().to_str()?.parse().ok()?;
        (fs::read_to_string(entry.path().join("comm")).ok()?.trim_end() == "systemd-journal").then_some(pid)
    })
}

/// The CPU time (user + system, all threads) `pid` has used so far.
fn cpu_us(pid: i32) -> Result<u64, String> {
    let path = format!("/proc/{pid}/stat");
    let stat = fs::read_to_string(&path).map_err(|e| format!("{path}: {e}"))?;
    // Fields after the command name, which is in parentheses and may hold anything: state is
    // field 3 of proc(5), utime 14 and stime 15.
    let fields: Vec<&str> =
        stat.rsplit_once(')').map(|(_, rest)| rest.split_whitespace().collect()).unwrap_or_default();
    let ticks = |i: usize| fields.get(i).and_then(|f| f.parse::<u64>().ok()).ok_or(format!("{path}: {stat}"));
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as u64;
    Ok((ticks(11)? + ticks(12)?) * 1_000_000 / hz)
}

impl Agent {
    /// Stops the agent and counts what it delivered of the workload `workload_pid`'s events.
    pub fn stop(self, workload_pid: u32, outcome: &Outcome) -> Result<Measured, String> {
        // Before the signal: after it the process may be gone. Not wait4's ru_maxrss: Linux
        // records there the RSS the process had before its exec, i.e. the harness's.
        let peak_rss_kib = peak_rss_kib(self.pid);
        let stop = |signal| {
            let cpu = stop_child(self.pid, signal)?;
            Ok::<_, String>(Measured {
                cpu_us: cpu.saturating_sub(self.cpu_at_ready_us),
                peak_rss_kib: peak_rss_kib.clone()?,
                ..Measured::default()
            })
        };
        let mut tally = Tally::default();
        match self.kind {
            Running::Ksense { stderr, events, receivers } => {
                let usage = stop(libc::SIGTERM)?;
                // journald takes datagrams still queued on its socket after ksense has gone.
                if !receivers.is_empty() {
                    std::thread::sleep(SETTLE);
                }
                let receivers_cpu_us = receivers
                    .iter()
                    .map(|&(pid, before)| Ok(cpu_us(pid)?.saturating_sub(before)))
                    .sum::<Result<u64, String>>()
                    .map(|cpu| (!receivers.is_empty()).then_some(cpu))?;
                let text = read_lossy(&stderr);
                let totals =
                    stopped_totals(&text).ok_or_else(|| format!("no final counters line from ksense:\n{text}"))?;
                let key = |k: &str| totals.get(k).copied().unwrap_or(0);
                // The loss counters behind lost_total, and the sinks'.
                let causes: Vec<(&String, &u64)> = totals
                    .iter()
                    .filter(|(k, v)| {
                        **v > 0
                            && (["lost_ring_buffer", "lost_queue_full", "decode_errors", "rate_limited"]
                                .contains(&k.as_str())
                                || k.starts_with("sink_")
                                    && ["_queue_full", "_failed", "_rejected", "_memory_budget"].iter().any(|c| k.ends_with(c)))
                    })
                    .collect();
                if let Some(path) = &events {
                    for_each_line(path, |line| ksense_line(line, workload_pid, outcome, &mut tally))?;
                }
                Ok(Measured {
                    handled: key("events_read"),
                    lost: causes.iter().map(|(_, v)| **v).sum(),
                    lost_by_cause: causes.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join(" "),
                    delivered: events.is_some().then_some(tally),
                    latency: totals
                        .get("latency_p50_us")
                        .zip(totals.get("latency_p99_us"))
                        .map(|(&p50, &p99)| Latency { p50_us: p50 as f64, p99_us: p99 as f64 }),
                    receivers_cpu_us,
                    ..usage
                })
            }
            Running::Bpftrace { out } => {
                let usage = stop(libc::SIGINT)?;
                let (mut handled, mut lost) = (0, 0);
                for_each_line(&out, |line| {
                    if let Some(notice) = line.strip_prefix("Lost ") {
                        lost += notice.split_whitespace().next().and_then(|n| n.parse::<u64>().ok()).unwrap_or(0);
                    } else if !line.is_empty() && !line.starts_with("Attaching ") {
                        handled += 1;
                        bpftrace_line(line, workload_pid, outcome, &mut tally);
                    }
                })?;
                Ok(Measured { handled, lost, delivered: Some(tally), ..usage })
            }
            Running::Auditd { log, before } => {
                let drained = drain_audit(&log, workload_pid);
                let after = AuditStatus::read();
                let _ = auditctl(&[&["-d"], AUDIT_RULE].concat());
                let usage = stop(libc::SIGTERM);
                before.restore();
                let (usage, after) = (usage?, after?);
                drained?;
                let mut handled = 0;
                for_each_line(&log, |line| {
                    if line.starts_with("type=SYSCALL ") {
                        handled += 1;
                        audit_line(line, workload_pid, outcome, &mut tally);
                    }
                })?;
                let lost = after.get("lost").saturating_sub(before.get("lost"));
                Ok(Measured { handled, lost, delivered: Some(tally), ..usage })
            }
        }
    }
}

/// The peak resident set of `pid`'s address space so far (VmHWM).
fn peak_rss_kib(pid: i32) -> Result<u64, String> {
    let path = format!("/proc/{pid}/status");
    let status = fs::read_to_string(&path).map_err(|e| format!("{path}: {e}"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:")?.trim().strip_suffix("kB")?.trim().parse().ok())
        .ok_or(format!("{path}: no VmHWM"))
}

fn start_ksense(arm: Arm, setup: &Setup) -> Result<(i32, Running), String> {
    let config = setup.dir.join(format!("{}.toml", arm.name()));
    let stderr = setup.dir.join(format!("{}.stderr", arm.name()));
    let events = (arm == Arm::KsenseFull).then(|| setup.dir.join("events.json"));
    let text = match (&events, &setup.collector) {
        (Some(events), Some(collector)) => {
            let _ = fs::remove_file(events);
            format!(
                "[sinks.journald]\nenabled = true\n\n[sinks.otlp]\nenabled = true\nendpoint = \"http://127.0.0.1:{}\"\n\
                 protocol = \"grpc\"\n\n[sinks.file]\nenabled = true\npath = \"{}\"\nmax_bytes = {}\nkeep = 0\n",
                collector.grpc_port,
                events.display(),
                u64::MAX / 2
            )
        }
        (Some(_), None) => return Err("the full arm needs the collector".into()),
        (None, _) => {
            "[sinks.journald]\nenabled = false\n\n[sinks.otlp]\nenabled = false\n\n[sinks.file]\nenabled = false\n"
                .into()
        }
    };
    fs::write(&config, text).map_err(|e| format!("{}: {e}", config.display()))?;
    let mut command = Command::new(&setup.ksense);
    command.args(["run", "--output", "none", "--config"]).arg(&config);
    // Diagnostics to the file we read, even when started from a systemd unit.
    command.env_remove("JOURNAL_STREAM").env_remove("INVOCATION_ID");
    let pid = spawn(&mut command, &stderr, &stderr)?;
    wait_until(pid, "ksense", &stderr, || read_lossy(&stderr).contains("ksense is running"))?;
    // The processes receiving the full arm's events, with their CPU time now.
    let receivers = match (&events, &setup.collector) {
        (Some(_), Some(collector)) => [journald_pid(), Some(collector.pid() as i32)]
            .into_iter()
            .flatten()
            .map(|pid| Ok((pid, cpu_us(pid)?)))
            .collect::<Result<_, String>>()?,
        _ => Vec::new(),
    };
    Ok((pid, Running::Ksense { stderr, events, receivers }))
}

/// Counts one JSON line of ksense's file sink into `tally` when it is one of the workload's
/// events: its children's forks (not its threads), their execs and exits, and its own
/// protection changes, each record standing for `ksense.event.count` coalesced calls.
fn ksense_line(line: &str, workload: u32, outcome: &Outcome, tally: &mut Tally) {
    let Ok(event) = serde_json::from_str::<Value>(line) else { return };
    let attrs = &event["attributes"];
    let int = |name: &str| attrs[name].as_u64();
    let (pid, parent) = (int("process.pid"), int("process.parent_pid"));
    let from_child = parent == Some(workload.into());
    match event["event.name"].as_str() {
        Some("process.fork") if from_child && attrs["ksense.clone.thread"] != true => tally.forks += 1,
        Some("process.exec") if from_child => tally.execs += 1,
        Some("process.exit") if from_child => tally.exits += 1,
        Some("process.memory.protect")
            if pid == Some(workload.into()) && hex(&attrs["ksense.memory.start"]) == Some(outcome.page) =>
        {
            tally.mprotects += int("ksense.event.count").unwrap_or(1)
        }
        _ => {}
    }
}

/// The bpftrace program: the tracepoints ksense uses on this kernel, one printf per event.
/// `pid` is the thread-group id, so a fork from a spawner thread names the workload.
fn bpftrace_script() -> String {
    let mut script = String::from(
        r#"tracepoint:sched:sched_process_fork { printf("fork %d %d\n", pid, args->child_pid); }
tracepoint:sched:sched_process_exec {
    printf("exec %d %d %s\n", pid, curtask->real_parent->tgid, str(args->filename));
}
tracepoint:sched:sched_process_exit { printf("exit %d %d %d\n", pid, tid, curtask->real_parent->tgid); }
tracepoint:syscalls:sys_enter_mprotect,tracepoint:syscalls:sys_enter_pkey_mprotect {
    printf("mprotect %d %lx %lu %lu\n", pid, args->start, args->len, args->prot);
}
tracepoint:syscalls:sys_exit_mprotect,tracepoint:syscalls:sys_exit_pkey_mprotect {
    printf("mprotect_done %d %d\n", pid, args->ret);
}
"#,
    );
    // This host's kernel has no module support, hence no module tracepoint to attach to.
    if Path::new("/sys/kernel/tracing/events/module/module_load").exists() {
        script.push_str("tracepoint:module:module_load { printf(\"module %d %s\\n\", pid, str(args->name)); }\n");
    }
    script
}

/// Counts one line of the bpftrace script's output into `tally` (see [`ksense_line`]).
fn bpftrace_line(line: &str, workload: u32, outcome: &Outcome, tally: &mut Tally) {
    let words: Vec<&str> = line.split_whitespace().collect();
    // Fields after the kind, as printed by [`bpftrace_script`].
    let num = |i: usize| words.get(i).and_then(|w| w.parse::<u32>().ok());
    let workload = Some(workload);
    match words.first().copied() {
        Some("fork") if num(1) == workload && !num(2).is_some_and(|child| outcome.threads.contains(&child)) => {
            tally.forks += 1
        }
        Some("exec") if num(2) == workload => tally.execs += 1,
        Some("exit") if num(3) == workload && num(1) == num(2) => tally.exits += 1,
        Some("mprotect")
            if num(1) == workload
                && words.get(2).and_then(|a| u64::from_str_radix(a, 16).ok()) == Some(outcome.page) =>
        {
            tally.mprotects += 1
        }
        _ => {}
    }
}

fn start_bpftrace(setup: &Setup) -> Result<(i32, Running), String> {
    let bpftrace = which("bpftrace")
        .ok_or("bpftrace is not installed (scripts/bench.sh installs it: apt-get install bpftrace)")?;
    let script = setup.dir.join("bench.bt");
    let out = setup.dir.join("bpftrace.out");
    let stderr = setup.dir.join("bpftrace.stderr");
    fs::write(&script, bpftrace_script()).map_err(|e| format!("{}: {e}", script.display()))?;
    let _ = fs::remove_file(&out);
    let pid = spawn(Command::new(bpftrace).arg("-o").arg(&out).arg(&script), &stderr, &stderr)?;
    // It prints "Attaching N probes..." before attaching: wait for an event it printed.
    wait_until(pid, "bpftrace", &stderr, || {
        let _ = Command::new("/bin/true").status();
        read_lossy(&out).lines().any(|l| l.starts_with("exec "))
    })?;
    Ok((pid, Running::Bpftrace { out }))
}

/// The audit rule: the syscalls behind the same events (forks, execs, exits, protection changes,
/// module loads), for 64-bit callers.
const AUDIT_RULE: &[&str] = &[
    "always,exit",
    "-F",
    "arch=b64",
    "-S",
    "clone,clone3,fork,vfork,execve,execveat,exit_group,mprotect,pkey_mprotect,init_module,finit_module",
];

/// x86-64 syscall numbers, as auditd logs them.
mod nr {
    pub const FORKS: [u64; 4] = [56, 57, 58, 435];
    pub const EXECS: [u64; 2] = [59, 322];
    pub const EXIT_GROUP: u64 = 231;
    pub const MPROTECTS: [u64; 2] = [10, 329];
}

/// Counts one SYSCALL record of the audit log into `tally` (see [`ksense_line`]); a fork's
/// `exit=` is the new task's id, so the workload's spawner threads are left out.
fn audit_line(line: &str, workload: u32, outcome: &Outcome, tally: &mut Tally) {
    let value = |name: &str| line.split_whitespace().find_map(|kv| kv.strip_prefix(name)?.strip_prefix('='));
    let field = |name: &str| value(name)?.parse::<u64>().ok();
    let hex_field = |name: &str| u64::from_str_radix(value(name)?, 16).ok();
    let (Some(syscall), pid, parent) = (field("syscall"), field("pid"), field("ppid")) else { return };
    let (by_workload, by_child) = (pid == Some(workload.into()), parent == Some(workload.into()));
    if nr::FORKS.contains(&syscall)
        && by_workload
        && !field("exit").is_some_and(|t| outcome.threads.contains(&(t as u32)))
    {
        tally.forks += 1;
    } else if nr::EXECS.contains(&syscall) && by_child {
        tally.execs += 1;
    } else if syscall == nr::EXIT_GROUP && by_child {
        tally.exits += 1;
    } else if nr::MPROTECTS.contains(&syscall) && by_workload && hex_field("a0") == Some(outcome.page) {
        tally.mprotects += 1;
    }
}

/// Sends a marker message through the audit queue and waits until auditd has written it: the
/// queue is in order, so every record of the run is then in the log (a daemon starved of CPU
/// can be seconds behind, and what it has not read when stopped is never written).
fn drain_audit(log: &Path, nonce: u32) -> Result<(), String> {
    let marker = format!("ksense-bench-end-{nonce}");
    auditctl(&["-m", &marker])?;
    let deadline = Instant::now() + STOP_TIMEOUT;
    loop {
        let mut seen = false;
        for_each_line(log, |line| seen |= line.contains(&marker))?;
        if seen {
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err(format!("auditd did not write its queue out within {STOP_TIMEOUT:?}"));
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// `auditctl -s`, as name -> number.
struct AuditStatus(BTreeMap<String, u64>);

impl AuditStatus {
    fn read() -> Result<AuditStatus, String> {
        let text = auditctl(&["-s"])?;
        Ok(AuditStatus(
            text.lines()
                .filter_map(|l| l.split_once(' '))
                .filter_map(|(k, v)| Some((k.to_owned(), v.trim().parse().ok()?)))
                .collect(),
        ))
    }

    fn get(&self, key: &str) -> u64 {
        self.0.get(key).copied().unwrap_or(0)
    }

    /// Puts back what auditd and the rule changed: auditing left enabled makes every later
    /// process pay for a syscall audit context, which would slow the other arms.
    fn restore(&self) {
        let _ = auditctl(&["-b", &self.get("backlog_limit").to_string()]);
        let _ = auditctl(&["-e", &self.get("enabled").to_string()]);
    }
}

fn auditctl(args: &[&str]) -> Result<String, String> {
    let out = Command::new("auditctl").args(args).output().map_err(|e| format!("auditctl: {e}"))?;
    if !out.status.success() {
        return Err(format!("auditctl {}: {}", args.join(" "), String::from_utf8_lossy(&out.stderr).trim()));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn start_auditd(setup: &Setup) -> Result<(i32, Running), String> {
    let auditd =
        which("auditd").ok_or("auditd is not installed (scripts/bench.sh installs it: apt-get install auditd)")?;
    let before = AuditStatus::read()?;
    if before.get("pid") != 0 {
        return Err(format!("an auditd (pid {}) already runs; stop it first", before.get("pid")));
    }
    // Debian's configuration with the log in our directory, never rotated nor suspended (the
    // run's records must all be in one file).
    let dir = setup.dir.join("audit");
    let log = dir.join("audit.log");
    let _ = fs::remove_dir_all(&dir);
    fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let shipped = fs::read_to_string("/etc/audit/auditd.conf").map_err(|e| format!("/etc/audit/auditd.conf: {e}"))?;
    let ours: &[(&str, &str)] = &[
        ("log_file", log.to_str().unwrap()),
        ("max_log_file_action", "IGNORE"),
        ("space_left_action", "IGNORE"),
        ("admin_space_left_action", "IGNORE"),
        ("disk_full_action", "IGNORE"),
    ];
    let conf: String = shipped
        .lines()
        .map(|l| match ours.iter().find(|(k, _)| l.split('=').next().map(str::trim) == Some(k)) {
            Some((k, v)) => format!("{k} = {v}\n"),
            None => format!("{l}\n"),
        })
        .collect();
    fs::write(dir.join("auditd.conf"), conf).map_err(|e| format!("auditd.conf: {e}"))?;
    let stderr = setup.dir.join("auditd.stderr");
    let pid = spawn(Command::new(auditd).arg("-n").arg("-c").arg(&dir), &stderr, &stderr)?;
    let registered =
        wait_until(pid, "auditd", &stderr, || AuditStatus::read().is_ok_and(|s| s.get("pid") == pid as u64));
    // Debian's shipped rules raise the backlog to 8192 before any rule.
    let ruled =
        registered.and_then(|()| auditctl(&["-b", "8192"])).and_then(|_| auditctl(&[&["-a"], AUDIT_RULE].concat()));
    if let Err(e) = ruled {
        let _ = stop_child(pid, libc::SIGTERM);
        before.restore();
        return Err(e);
    }
    Ok((pid, Running::Auditd { log, before }))
}

/// Starts `command` with its stdout and stderr to files.
fn spawn(command: &mut Command, stdout: &Path, stderr: &Path) -> Result<i32, String> {
    let file = |path: &Path| fs::File::create(path).map_err(|e| format!("{}: {e}", path.display()));
    let out = file(stdout)?;
    let err = if stdout == stderr { out.try_clone().map_err(|e| e.to_string())? } else { file(stderr)? };
    let child =
        command.stdin(Stdio::null()).stdout(out).stderr(err).spawn().map_err(|e| format!("{command:?}: {e}"))?;
    Ok(child.id() as i32)
}

/// Polls `ready` until it holds, failing with the agent's diagnostics if the agent exits first
/// or [`START_TIMEOUT`] passes.
fn wait_until(pid: i32, name: &str, stderr: &Path, mut ready: impl FnMut() -> bool) -> Result<(), String> {
    let deadline = Instant::now() + START_TIMEOUT;
    while !ready() {
        let mut status = 0;
        // SAFETY: our own child; WNOHANG.
        if unsafe { libc::waitpid(pid, &mut status, libc::WNOHANG) } == pid {
            return Err(format!("{name} exited ({status:#x}) before it ran: {}", read_lossy(stderr).trim()));
        }
        if Instant::now() > deadline {
            let _ = stop_child(pid, libc::SIGKILL);
            return Err(format!("{name} did not start within {START_TIMEOUT:?}: {}", read_lossy(stderr).trim()));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok(())
}

/// Sends `signal` to our child `pid`, reaps it, and returns its CPU time (microseconds); SIGKILL
/// and an error if it has not exited within [`STOP_TIMEOUT`], or if it did not exit cleanly.
fn stop_child(pid: i32, signal: i32) -> Result<u64, String> {
    // SAFETY: kill and wait4 on our own, not yet reaped, child.
    unsafe { libc::kill(pid, signal) };
    let deadline = Instant::now() + STOP_TIMEOUT;
    let mut status = 0;
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    loop {
        match unsafe { libc::wait4(pid, &mut status, libc::WNOHANG, &mut usage) } {
            0 if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(20)),
            0 => {
                unsafe { libc::kill(pid, libc::SIGKILL) };
                unsafe { libc::wait4(pid, &mut status, 0, &mut usage) };
                return Err(format!("pid {pid} did not exit within {STOP_TIMEOUT:?} of signal {signal}"));
            }
            r if r == pid => break,
            _ => return Err(format!("wait4 {pid}: {}", std::io::Error::last_os_error())),
        }
    }
    let clean = libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0
        || libc::WIFSIGNALED(status) && libc::WTERMSIG(status) == signal;
    if !clean && signal != libc::SIGKILL {
        return Err(format!("pid {pid} ended with status {status:#x}"));
    }
    let us = |t: libc::timeval| t.tv_sec as u64 * 1_000_000 + t.tv_usec as u64;
    Ok(us(usage.ru_utime) + us(usage.ru_stime))
}

/// A JSON string holding a hex number (`"0x7f..."`).
fn hex(value: &Value) -> Option<u64> {
    u64::from_str_radix(value.as_str()?.strip_prefix("0x")?, 16).ok()
}

/// Calls `each` with every line of `path`, bytes that are not UTF-8 replaced (a traced
/// process's argv or file name can hold any byte).
fn for_each_line(path: &Path, mut each: impl FnMut(&str)) -> Result<(), String> {
    let file = fs::File::open(path).map_err(|e| format!("{}: {e}", path.display()))?;
    for line in BufReader::new(file).split(b'\n') {
        each(&String::from_utf8_lossy(&line.map_err(|e| format!("{}: {e}", path.display()))?));
    }
    Ok(())
}

fn read_lossy(path: &Path) -> String {
    fs::read(path).map(|b| String::from_utf8_lossy(&b).into_owned()).unwrap_or_default()
}

/// `name` on `$PATH` (or in the sbin directories, which a sudo'd PATH may lack).
pub fn which(name: &str) -> Option<PathBuf> {
    let path = std::env::var("PATH").unwrap_or_default();
    path.split(':').chain(["/usr/sbin", "/sbin"]).map(|dir| Path::new(dir).join(name)).find(|p| p.is_file())
}
