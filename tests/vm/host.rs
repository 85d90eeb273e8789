//! The VM tests: ksense on other kernels, in both attach modes, where fentry/fexit and module
//! loads work, which the host kernel (sandboxed) refuses. One test per kernel of the matrix
//! ([`MATRIX`]): Debian 11's 5.10, Debian 12's 6.1 and 6.12 (amd64), and Debian 12's 6.1 on arm64
//! (`arm64.rs`: cross-built binaries under `qemu-system-aarch64 -M virt`).
//!
//! Each fetches and caches its kernel (`scripts/vm-kernel.sh <line> <arch>`, under
//! `target/vm/kernel-<line>-<arch>`), packs an initramfs holding busybox, the real `ksense`,
//! `ksense-workload` and the guest driver `ksense-vm-guest` (`tests/vm/guest.rs`) with the shared
//! libraries they need, boots it under qemu's software emulation (nested KVM hangs here), and
//! reads the guest's result lines from the serial console. Every `vm-check` line must say `ok`,
//! except for checks named in `$KSENSE_VM_EXPECT_FAIL` (comma-separated, default none). The
//! lines are printed on stderr (uncaptured, so `make test` shows them when the test passes too)
//! and written to `target/vm/<line>-<arch>/results.txt`, the whole console to `console.log`
//! there, and `ksense probes --json` of each attach mode to `probes-<mode>.json` there (the
//! input of `scripts/kernels-doc.sh`, which writes docs/KERNELS.md).
//!
//! Knobs: `$KSENSE_VM_TIMEOUT_SECS` (qemu's hard limit, default 600; arm64 1200),
//! `$KSENSE_VM_GUEST_TIMEOUT_SECS` (the guest's wait for ksense to start or for one event,
//! default 60; arm64 240).
//!
//! Run only these tests: `cargo test -p ksense-e2e --test vm -- --nocapture` (after
//! `cargo build -p ksense -p ksense-e2e --bins`); one kernel: add its test's name, e.g. `5_10`.
use std::{
    collections::BTreeMap,
    fmt::Write as _,
    io::{BufRead, BufReader, Write as _},
    path::{Path, PathBuf},
    process::{Command, Stdio},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use ksense_e2e::{ksense_bin, target_bin, workload_bin};

mod arm64;
mod host_bench;
mod shared;
use shared::{BENCH_ENV, CHECKS, MODES, PROBES_JSON};

const FIX: &str = "install the VM test's prerequisites with `sudo scripts/setup.sh`";

/// A kernel of the matrix: what `scripts/vm-kernel.sh` fetches.
pub(crate) struct Kernel {
    /// The kernel line `scripts/vm-kernel.sh` knows (`5.10`, `6.1`, `6.12`).
    pub(crate) line: &'static str,
    /// Debian's architecture name.
    pub(crate) arch: &'static str,
    /// The Debian release that ships it, for messages.
    pub(crate) distribution: &'static str,
    /// How qemu emulates its architecture.
    machine: &'static Machine,
    /// An attach mode this kernel cannot run, and why: its checks fail and that is expected.
    unavailable: Option<(&'static str, &'static str)>,
}

impl Kernel {
    /// Where its files and results go: `target/vm/<line>-<arch>`.
    pub(crate) fn work_dir(&self) -> PathBuf {
        target_dir().join("vm").join(format!("{}-{}", self.line, self.arch))
    }
}

/// Debian 11's 5.10: trampolines and BTF, but no `bpf_find_vma`/`bpf_get_func_arg` (5.17).
pub(crate) const DEBIAN_11_5_10: Kernel = amd64("5.10", "Debian 11");
/// Debian 12's 6.1.
pub(crate) const DEBIAN_12_6_1: Kernel = amd64("6.1", "Debian 12");
/// Debian 12's 6.12.
pub(crate) const DEBIAN_12_6_12: Kernel = amd64("6.12", "Debian 12");

const fn amd64(line: &'static str, distribution: &'static str) -> Kernel {
    Kernel { line, arch: "amd64", distribution, machine: &X86_64, unavailable: None }
}

/// Every kernel the checks run on.
pub(crate) const MATRIX: [&Kernel; 4] = [&DEBIAN_11_5_10, &DEBIAN_12_6_1, &DEBIAN_12_6_12, &arm64::DEBIAN_12_6_1_ARM64];

#[test]
fn ksense_on_debian_11_5_10_in_qemu() {
    run_checks(&DEBIAN_11_5_10);
}

#[test]
fn ksense_on_debian_12_6_1_in_qemu() {
    run_checks(&DEBIAN_12_6_1);
}

#[test]
fn ksense_on_debian_12_6_12_in_qemu() {
    run_checks(&DEBIAN_12_6_12);
}

#[test]
fn ksense_on_debian_12_6_1_arm64_in_qemu() {
    run_checks(&arm64::DEBIAN_12_6_1_ARM64);
}

#[test]
fn the_matrix_has_one_test_per_kernel() {
    let source = include_str!("host.rs");
    for kernel in MATRIX {
        let name = format!("fn ksense_on_{}_in_qemu()", test_suffix(kernel));
        assert!(source.contains(&name), "no test {name} for {} {}", kernel.distribution, kernel.line);
    }
}

/// `debian_11_5_10` for Debian 11's 5.10, `debian_12_6_1_arm64` for Debian 12's 6.1 on arm64.
fn test_suffix(kernel: &Kernel) -> String {
    let arch = if kernel.arch == "amd64" { String::new() } else { format!("_{}", kernel.arch) };
    format!("{}_{}{arch}", kernel.distribution, kernel.line).to_lowercase().replace([' ', '.'], "_")
}

/// Boots `kernel` with the guest checks and fails unless every check of both modes passed.
fn run_checks(kernel: &Kernel) {
    let started = Instant::now();
    let vm_dir = kernel.work_dir();
    let vm = Vm::prepare(&vm_dir, None, kernel);
    let (release, vmlinuz, fetched, packed) = (&vm.release, &vm.vmlinuz, vm.fetched, vm.packed);

    let timeout = Duration::from_secs(env_number("KSENSE_VM_TIMEOUT_SECS", kernel.machine.timeout_secs));
    let console = vm.boot(timeout, &vm_dir.join("console.log"));
    let booted = started.elapsed();

    let results = Results::parse(&console);
    for (mode, json) in &results.probes {
        std::fs::write(vm_dir.join(format!("probes-{mode}.json")), json).unwrap();
    }
    let allowed: Vec<String> = std::env::var("KSENSE_VM_EXPECT_FAIL")
        .unwrap_or_default()
        .split(',')
        .map(|s| s.trim().to_owned())
        .filter(|s| !s.is_empty())
        .collect();
    for name in &allowed {
        assert!(CHECKS.contains(&name.as_str()), "KSENSE_VM_EXPECT_FAIL names {name:?}, which is not a check: {CHECKS:?}");
    }

    let mut text = String::new();
    let _ = writeln!(
        text,
        "vm: {} kernel {release} ({}), {} {}",
        kernel.distribution,
        vmlinuz.display(),
        kernel.machine.qemu,
        kernel.machine.args.join(" ")
    );
    for line in &results.lines {
        let _ = writeln!(text, "{line}");
    }
    let mut problems = Vec::new();
    if results.summary.is_none() {
        problems.push("the guest printed no vm-summary line (it crashed or was cut off)".to_owned());
    }
    for mode in MODES {
        for check in CHECKS {
            let found: Vec<&Check> = results.checks.iter().filter(|c| c.mode == mode && c.name == check).collect();
            match found.as_slice() {
                [] => problems.push(format!("no result for check {check} in mode {mode}")),
                [c] if c.ok => {}
                [c] if kernel.unavailable.is_some_and(|(m, _)| m == mode) => {
                    let why = kernel.unavailable.unwrap().1;
                    let _ = writeln!(text, "vm: note: {check} ({mode}) failed, as it must here: {why}: {}", c.reason.lines().next().unwrap_or(""));
                }
                [_] if allowed.iter().any(|a| a == check) => {
                    let _ = writeln!(text, "vm: note: {check} ({mode}) failed, allowed by KSENSE_VM_EXPECT_FAIL");
                }
                [c] => problems.push(format!("{check} ({mode}): {}", c.reason)),
                _ => problems.push(format!("check {check} in mode {mode} reported {} times", found.len())),
            }
        }
    }
    for name in &allowed {
        let runs: Vec<&Check> = results.checks.iter().filter(|c| &c.name == name).collect();
        if runs.len() == MODES.len() && runs.iter().all(|c| c.ok) {
            let _ = writeln!(text, "vm: note: {name} passes in every mode: drop it from KSENSE_VM_EXPECT_FAIL");
        }
    }
    for mode in MODES {
        if !results.probes.iter().any(|(m, _)| m == mode) {
            problems.push(format!("the guest printed no {PROBES_JSON} line for mode {mode}"));
        }
    }
    for check in &results.checks {
        if &check.kernel != release {
            problems.push(format!("check {} ran on kernel {:?}, not {release}", check.name, check.kernel));
        }
    }
    let _ = writeln!(
        text,
        "vm: wall time {:.1} s (kernel cached/fetched {:.1} s, initramfs {:.1} s, qemu boot to power-off {:.1} s)",
        booted.as_secs_f64(),
        fetched.as_secs_f64(),
        (packed - fetched).as_secs_f64(),
        (booted - packed).as_secs_f64()
    );
    let _ = writeln!(text, "vm: {}", if problems.is_empty() { "PASSED" } else { "FAILED" });
    // Straight to the process's stderr, not through eprint!, which the test harness captures
    // on success: the lines are wanted in `make test`'s log whether the test passes or not.
    let _ = std::io::stderr().write_all(text.as_bytes());
    std::fs::write(vm_dir.join("results.txt"), &text).unwrap();
    assert!(
        problems.is_empty(),
        "the VM test failed:\n  {}\n(results: {}, whole console: {})",
        problems.join("\n  "),
        vm_dir.join("results.txt").display(),
        vm_dir.join("console.log").display()
    );
}

/// A kernel fetched and an initramfs packed, ready to boot.
struct Vm {
    machine: &'static Machine,
    qemu: PathBuf,
    /// `uname -r` in the guest.
    release: String,
    vmlinuz: PathBuf,
    initrd: PathBuf,
    /// Time from [`Vm::prepare`]'s start to the kernel being there (cached or fetched).
    fetched: Duration,
    /// Time from [`Vm::prepare`]'s start to the initramfs being written.
    packed: Duration,
}

impl Vm {
    /// Fetches (or finds cached) `kernel` in `target/vm/kernel-<line>-<arch>`, and writes the
    /// initramfs into `work`. `bench` is the benchmark's `loads,pairs` for the guest (`None`:
    /// the checks).
    fn prepare(work: &Path, bench: Option<&str>, kernel: &Kernel) -> Vm {
        let started = Instant::now();
        let repo = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap().to_path_buf();
        std::fs::create_dir_all(work).unwrap();

        let machine = kernel.machine;
        let qemu = which(machine.qemu).unwrap_or_else(|| panic!("{} is not installed: {FIX}", machine.qemu));

        let kernel_dir = target_dir().join("vm").join(format!("kernel-{}-{}", kernel.line, kernel.arch));
        let fetch = Command::new("bash")
            .arg(repo.join("scripts/vm-kernel.sh"))
            .args([kernel.line, kernel.arch])
            .arg(&kernel_dir)
            .output()
            .unwrap_or_else(|e| panic!("cannot run scripts/vm-kernel.sh: {e}"));
        assert!(
            fetch.status.success(),
            "could not fetch {}'s {} kernel (scripts/vm-kernel.sh: {}):\n{}\nFix: {FIX}, then run again",
            kernel.distribution,
            kernel.line,
            fetch.status,
            String::from_utf8_lossy(&fetch.stderr)
        );
        let release = std::fs::read_to_string(kernel_dir.join("release")).unwrap().trim().to_owned();
        let vmlinuz = kernel_dir.join(format!("vmlinuz-{release}"));
        let fetched = started.elapsed();

        let guest_timeout: u64 = env_number("KSENSE_VM_GUEST_TIMEOUT_SECS", machine.guest_timeout_secs);
        let initrd = work.join("initramfs.cpio");
        let (busybox, binaries) = (machine.guest_files)(&kernel_dir);
        let init = init_script(guest_timeout, bench);
        build_initramfs(machine, &initrd, &busybox, &binaries, &kernel_dir.join("dummy.ko"), init, work);
        Vm { machine, qemu, release, vmlinuz, initrd, fetched, packed: started.elapsed() }
    }

    /// Boots it (see [`boot`]).
    fn boot(&self, timeout: Duration, log: &Path) -> Vec<String> {
        boot(self.machine, &self.qemu, &self.vmlinuz, &self.initrd, timeout, log)
    }
}

/// What differs between the guests' architectures: how qemu emulates one, and where the host
/// finds the guest's binaries and their libraries.
struct Machine {
    /// The qemu binary.
    qemu: &'static str,
    /// Its machine, CPU and memory options.
    args: &'static [&'static str],
    /// The kernel command line.
    append: &'static str,
    /// qemu's hard limit, boot to power-off, unless `$KSENSE_VM_TIMEOUT_SECS` says otherwise.
    timeout_secs: u64,
    /// The guest's wait for ksense to start or for one event, unless
    /// `$KSENSE_VM_GUEST_TIMEOUT_SECS` says otherwise.
    guest_timeout_secs: u64,
    /// The `strip` that reads this architecture's binaries.
    strip: &'static str,
    /// busybox and the binaries under test (name in the guest's /bin, file on the host), given
    /// the directory `scripts/vm-kernel.sh` filled.
    guest_files: fn(&Path) -> (PathBuf, [(&'static str, PathBuf); 3]),
    /// The shared libraries a binary loads: path in the guest -> file on the host.
    libraries: fn(&Path) -> BTreeMap<String, PathBuf>,
}

/// The host's own architecture: the host's busybox and the binaries the tests run here.
const X86_64: Machine = Machine {
    qemu: "qemu-system-x86_64",
    args: &["-accel", "tcg", "-cpu", "max", "-m", "1024"],
    append: "console=ttyS0 panic=-1 quiet",
    timeout_secs: 600,
    guest_timeout_secs: 60,
    strip: "strip",
    guest_files: |_| {
        let busybox = which("busybox").unwrap_or_else(|| panic!("busybox is not installed: {FIX}"));
        let binaries = [
            ("ksense", ksense_bin()),
            ("ksense-workload", workload_bin()),
            ("ksense-vm-guest", target_bin("ksense-vm-guest", "cargo build -p ksense-e2e --bins")),
        ];
        (busybox, binaries)
    },
    libraries: shared_libraries,
};

/// The target directory this test runs from (target/<profile>/deps/<test>).
fn target_dir() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    exe.ancestors().nth(3).expect("target dir").to_path_buf()
}

fn which(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_else(|| "/usr/local/bin:/usr/bin:/bin".into());
    std::env::split_paths(&path).chain([PathBuf::from("/usr/sbin"), PathBuf::from("/sbin")])
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}

fn env_number(name: &str, default: u64) -> u64 {
    match std::env::var(name) {
        Ok(v) => v.trim().parse().unwrap_or_else(|_| panic!("{name}={v:?} is not a number")),
        Err(_) => default,
    }
}

/// The guest's `/init`: mounts what ksense needs, runs the driver, powers off. With `bench`
/// (`loads,pairs`), the driver runs the benchmark instead of the checks (`guest_bench.rs`).
fn init_script(guest_timeout: u64, bench: Option<&str>) -> String {
    let bench = bench.map(|spec| format!("export {BENCH_ENV}={spec}\n")).unwrap_or_default();
    format!(
        r#"#!/bin/sh
export PATH=/bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
exec </dev/console >/dev/console 2>&1
mount -t tracefs tracefs /sys/kernel/tracing
mount -t tmpfs tmpfs /tmp
# Only emergencies on the console: kernel lines must not cut the result lines.
echo 1 > /proc/sys/kernel/printk
export KSENSE_BIN=/bin/ksense KSENSE_WORKLOAD_BIN=/bin/ksense-workload KSENSE_TEST_TIMEOUT_SECS={guest_timeout}
{bench}echo "vm-note booted kernel $(uname -r) in $(cut -d' ' -f1 /proc/uptime) s of guest time"
[ -e /sys/kernel/btf/vmlinux ] || echo "vm-note /sys/kernel/btf/vmlinux is missing"
/bin/ksense-vm-guest
echo "vm-note guest driver exited with status $?"
poweroff -f
"#
    )
}

/// Writes the initramfs (an uncompressed newc cpio archive, built here so that every file is
/// root's and /dev/console exists without mknod).
fn build_initramfs(machine: &Machine, out: &Path, busybox: &Path, binaries: &[(&str, PathBuf)], module: &Path, init: String, vm_dir: &Path) {
    let mut archive = Cpio::default();
    for dir in ["dev", "proc", "sys", "tmp", "root", "run", "etc", "lib/modules", "lib64", "bin"] {
        archive.dir(dir);
    }
    archive.node("dev/console", 0o020600, (5, 1));
    archive.file("init", 0o755, init.into_bytes());
    archive.file("etc/passwd", 0o644, b"root:x:0:0:root:/root:/bin/sh\n".to_vec());
    archive.file("etc/group", 0o644, b"root:x:0:\n".to_vec());
    archive.file("lib/modules/dummy.ko", 0o644, read(module));

    archive.file("bin/busybox", 0o755, read(busybox));
    for applet in [
        "sh", "mount", "umount", "insmod", "rmmod", "lsmod", "poweroff", "sleep", "cat", "echo", "ls", "mkdir", "dmesg",
        "ps", "kill", "uname", "cut", "true", "false", "grep",
    ] {
        archive.symlink(&format!("bin/{applet}"), "busybox");
    }
    let mut libraries = BTreeMap::new();
    libraries.extend((machine.libraries)(busybox));
    let stage = vm_dir.join("stage");
    std::fs::create_dir_all(&stage).unwrap();
    for (name, path) in binaries {
        assert!(path.is_file(), "{} is missing: build it with `cargo build -p ksense -p ksense-e2e --bins`", path.display());
        archive.file(&format!("bin/{name}"), 0o755, stripped(machine.strip, path, &stage.join(name)));
        libraries.extend((machine.libraries)(path));
    }
    for (library, file) in &libraries {
        // fs::read follows the symlinks (ld-linux in /lib64 is one).
        archive.file(library.trim_start_matches('/'), 0o755, read(file));
    }
    std::fs::write(out, archive.finish()).unwrap_or_else(|e| panic!("{}: {e}", out.display()));
}

fn read(path: &Path) -> Vec<u8> {
    std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// The binary without its debug information (a debug ksense is 70 MB, a tenth of it without),
/// or as it is when `strip` is not there.
fn stripped(strip: &str, path: &Path, staged: &Path) -> Vec<u8> {
    let ok = Command::new(strip)
        .arg("--strip-debug")
        .arg("-o")
        .arg(staged)
        .arg(path)
        .status()
        .is_ok_and(|s| s.success());
    if ok { read(staged) } else { read(path) }
}

/// The absolute paths `ldd` lists for `binary` (libraries and the dynamic loader), at the same
/// paths in the guest.
fn shared_libraries(binary: &Path) -> BTreeMap<String, PathBuf> {
    let out = Command::new("ldd").arg(binary).output().unwrap_or_else(|e| panic!("cannot run ldd: {e}"));
    let text = String::from_utf8_lossy(&out.stdout);
    let mut libraries = BTreeMap::new();
    for line in text.lines() {
        // "libc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x...)" or "/lib64/ld-linux-x86-64.so.2 (0x...)"
        let path = match line.split_once("=>") {
            Some((_, rest)) => rest.split_whitespace().next(),
            None => line.split_whitespace().next(),
        };
        if let Some(path) = path.filter(|p| p.starts_with('/')) {
            libraries.insert(path.to_owned(), PathBuf::from(path));
        }
    }
    assert!(
        out.status.success() || text.contains("not a dynamic executable") || String::from_utf8_lossy(&out.stderr).contains("not a dynamic executable"),
        "ldd {} failed: {}",
        binary.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    libraries
}

/// An archive entry: mode, device numbers (major, minor) and contents.
type Entry = (u32, (u32, u32), Vec<u8>);

/// A newc cpio archive in memory (the format the kernel unpacks as initramfs).
#[derive(Default)]
struct Cpio {
    entries: BTreeMap<String, Entry>,
}

impl Cpio {
    fn add(&mut self, name: &str, mode: u32, rdev: (u32, u32), data: Vec<u8>) {
        // Parents first: BTreeMap order puts "a" before "a/b".
        let mut parent = Path::new(name).parent();
        while let Some(dir) = parent.filter(|d| !d.as_os_str().is_empty()) {
            self.entries.entry(dir.to_str().unwrap().to_owned()).or_insert((0o040755, (0, 0), Vec::new()));
            parent = dir.parent();
        }
        self.entries.insert(name.to_owned(), (mode, rdev, data));
    }
    fn dir(&mut self, name: &str) {
        self.add(name, 0o040755, (0, 0), Vec::new());
    }
    fn file(&mut self, name: &str, perm: u32, data: Vec<u8>) {
        self.add(name, 0o100000 | perm, (0, 0), data);
    }
    fn symlink(&mut self, name: &str, target: &str) {
        self.add(name, 0o120777, (0, 0), target.as_bytes().to_vec());
    }
    fn node(&mut self, name: &str, mode: u32, rdev: (u32, u32)) {
        self.add(name, mode, rdev, Vec::new());
    }
    fn finish(mut self) -> Vec<u8> {
        self.entries.insert("TRAILER!!!".into(), (0, (0, 0), Vec::new()));
        let mut out = Vec::new();
        let mut entries: Vec<_> = std::mem::take(&mut self.entries).into_iter().collect();
        // The trailer goes last whatever its name sorts as.
        let trailer = entries.iter().position(|(n, _)| n == "TRAILER!!!").unwrap();
        let last = entries.remove(trailer);
        entries.push(last);
        for (ino, (name, (mode, (major, minor), data))) in entries.into_iter().enumerate() {
            let nlink = if mode & 0o170000 == 0o040000 { 2 } else { 1 };
            let ino = if name == "TRAILER!!!" { 0 } else { ino as u32 + 1 };
            let fields = [ino, mode, 0, 0, nlink, 0, data.len() as u32, 0, 0, major, minor, name.len() as u32 + 1, 0];
            out.extend_from_slice(b"070701");
            for field in fields {
                write!(out, "{field:08X}").unwrap();
            }
            out.extend_from_slice(name.as_bytes());
            out.push(0);
            pad4(&mut out);
            out.extend_from_slice(&data);
            pad4(&mut out);
        }
        out
    }
}

fn pad4(out: &mut Vec<u8>) {
    while !out.len().is_multiple_of(4) {
        out.push(0);
    }
}

/// Boots the kernel with the initramfs and returns the console, line by line. Kills qemu and
/// fails, showing the console's tail, when it runs longer than `timeout`.
fn boot(machine: &Machine, qemu: &Path, vmlinuz: &Path, initrd: &Path, timeout: Duration, log: &Path) -> Vec<String> {
    let mut child = Command::new(qemu)
        .args(machine.args)
        .args(["-nographic", "-no-reboot", "-kernel"])
        .arg(vmlinuz)
        .arg("-initrd")
        .arg(initrd)
        .args(["-append", machine.append])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {}: {e}; {FIX}", qemu.display()));
    let lines = Arc::new(Mutex::new(Vec::<String>::new()));
    let mut log_file = std::fs::File::create(log).unwrap();
    let stdout = child.stdout.take().unwrap();
    let reader = {
        let lines = lines.clone();
        std::thread::spawn(move || {
            let mut stdout = BufReader::new(stdout);
            let mut line = Vec::new();
            while stdout.read_until(b'\n', &mut line).is_ok_and(|n| n > 0) {
                let _ = log_file.write_all(&line);
                let text = String::from_utf8_lossy(&line).trim_end_matches(['\r', '\n']).to_owned();
                lines.lock().unwrap().push(text);
                line.clear();
            }
        })
    };
    let stderr = child.stderr.take().unwrap();
    let errors = std::thread::spawn(move || {
        let mut text = String::new();
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            text.push_str(&line);
            text.push('\n');
        }
        text
    });
    let deadline = Instant::now() + timeout;
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            let _ = reader.join();
            let lines = lines.lock().unwrap();
            let tail = lines[lines.len().saturating_sub(60)..].join("\n");
            panic!("qemu ran longer than {timeout:?} and was killed; the console's tail:\n{tail}\n(whole console: {})", log.display());
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    reader.join().unwrap();
    let errors = errors.join().unwrap();
    let lines = std::mem::take(&mut *lines.lock().unwrap());
    assert!(
        status.success(),
        "qemu failed ({status}): {errors}\nthe console's tail:\n{}",
        lines[lines.len().saturating_sub(60)..].join("\n")
    );
    lines
}

/// One `vm-check` line.
struct Check {
    kernel: String,
    mode: String,
    name: String,
    ok: bool,
    reason: String,
}

/// What the guest printed: its `vm-` lines (with a failed check's indented detail lines), the
/// checks, and the summary.
struct Results {
    lines: Vec<String>,
    checks: Vec<Check>,
    summary: Option<String>,
    /// Per attach mode, `ksense probes --json` as the guest printed it (one line).
    probes: Vec<(String, String)>,
}

impl Results {
    fn parse(console: &[String]) -> Results {
        let mut results = Results { lines: Vec::new(), checks: Vec::new(), summary: None, probes: Vec::new() };
        let mut in_failure = false;
        for line in console {
            if in_failure && line.starts_with("    ") {
                results.lines.push(line.clone());
                if let Some(check) = results.checks.last_mut() {
                    check.reason.push('\n');
                    check.reason.push_str(line.trim_start());
                }
                continue;
            }
            in_failure = false;
            let Some(at) = line.find("vm-") else { continue };
            let line = &line[at..];
            if let Some(rest) = line.strip_prefix(PROBES_JSON).and_then(|r| r.strip_prefix(" mode="))
                && let Some((mode, json)) = rest.split_once(' ')
            {
                results.probes.push((mode.to_owned(), json.to_owned()));
                continue;
            }
            if !["vm-check ", "vm-probe ", "vm-note ", "vm-summary:"].iter().any(|p| line.starts_with(p)) {
                continue;
            }
            results.lines.push(line.to_owned());
            if let Some(summary) = line.strip_prefix("vm-summary:") {
                results.summary = Some(summary.trim().to_owned());
            } else if let Some(check) = line.strip_prefix("vm-check ").and_then(parse_check) {
                in_failure = !check.ok;
                results.checks.push(check);
            }
        }
        results
    }
}

/// `kernel=K mode=M check=C: ok` or `...: FAIL reason`.
fn parse_check(line: &str) -> Option<Check> {
    let (head, verdict) = line.split_once(": ")?;
    let field = |key: &str| {
        head.split_whitespace().find_map(|f| f.strip_prefix(key).and_then(|v| v.strip_prefix('='))).map(str::to_owned)
    };
    let (ok, reason) = match verdict.trim_end() {
        "ok" => (true, String::new()),
        v => (false, v.strip_prefix("FAIL").unwrap_or(v).trim().to_owned()),
    };
    Some(Check { kernel: field("kernel")?, mode: field("mode")?, name: field("check")?, ok, reason })
}
