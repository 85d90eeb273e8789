//! The arm64 VM test: the aarch64 builds of `ksense`, `ksense-workload` and `ksense-vm-guest`
//! on Debian 12's arm64 6.1 kernel, under `qemu-system-aarch64 -M virt -cpu max` (software
//! emulation), with the same guest checks in both attach modes as on amd64. On this kernel the
//! fentry mode cannot attach any fentry/fexit hook ([`FENTRY_ON_6_1`]): its checks must fail and
//! are shown as notes, and the tracepoint mode's must all pass.
//!
//! `scripts/vm-arm64.sh` fetches and caches the kernel, its `dummy.ko` and a static arm64 busybox
//! (under `target/vm/arm64/kernel`); the binaries are the cross builds, which must exist first:
//! `cargo build --target aarch64-unknown-linux-gnu -p ksense -p ksense-e2e --bins` (the linker
//! and the arm64 C library come from `scripts/setup.sh`). Their shared libraries come from the
//! cross C library (`/usr/aarch64-linux-gnu/lib`). Results go to `target/vm/arm64/results.txt`,
//! the console to `target/vm/arm64/console.log`. The knobs are the amd64 test's, with longer
//! defaults: `$KSENSE_VM_TIMEOUT_SECS` 1200, `$KSENSE_VM_GUEST_TIMEOUT_SECS` 240.
//!
//! Run only this test: `cargo test -p ksense-e2e --test vm arm64 -- --nocapture`.
use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
    process::Command,
    time::Instant,
};

use super::{FIX, Machine, Vm, build_initramfs, env_number, init_script, run_checks, target_dir};

/// The Rust target of the guest's binaries.
const TRIPLE: &str = "aarch64-unknown-linux-gnu";
/// Where Debian's cross C library (libc6-arm64-cross) keeps the guest's shared libraries.
const CROSS_LIBS: &str = "/usr/aarch64-linux-gnu/lib";

/// arm64 under TCG: `pauth-impdef` uses qemu's own pointer-authentication algorithm instead of
/// emulating QARMA, which halves the boot time.
const ARM64: Machine = Machine {
    qemu: "qemu-system-aarch64",
    args: &["-M", "virt", "-cpu", "max,pauth-impdef=on", "-m", "2048"],
    append: "console=ttyAMA0 panic=-1 quiet",
    // Seen: 455 s for the whole run on a loaded 2-core machine.
    timeout_secs: 1200,
    strip: "aarch64-linux-gnu-strip",
    libraries: cross_libraries,
};

/// Why the fentry mode's checks fail on this kernel (seen: every fentry/fexit attach refused
/// with error 524, ENOTSUPP, while tp_btf and tracepoints attach).
const FENTRY_ON_6_1: &str = "arm64 has BPF trampolines for kernel functions only from Linux 6.4 \
     (ftrace direct calls, CONFIG_DYNAMIC_FTRACE_WITH_DIRECT_CALLS, which this 6.1 kernel lacks)";

#[test]
fn ksense_on_debian_6_1_arm64_in_qemu() {
    let started = Instant::now();
    let vm_dir = target_dir().join("vm").join("arm64");
    let vm = prepare(&vm_dir);
    run_checks(&vm, &vm_dir, started);
}

/// Fetches (or finds cached) the kernel and busybox, and writes the initramfs into `work`.
fn prepare(work: &Path) -> Vm {
    let started = Instant::now();
    let repo = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap().to_path_buf();
    std::fs::create_dir_all(work).unwrap();
    let qemu = ARM64.qemu_path();

    let kernel_dir = work.join("kernel");
    let fetch = Command::new("bash")
        .arg(repo.join("scripts/vm-arm64.sh"))
        .arg(&kernel_dir)
        .output()
        .unwrap_or_else(|e| panic!("cannot run scripts/vm-arm64.sh: {e}"));
    assert!(
        fetch.status.success(),
        "could not fetch Debian 12's arm64 6.1 kernel (scripts/vm-arm64.sh: {}):\n{}",
        fetch.status,
        String::from_utf8_lossy(&fetch.stderr)
    );
    let release = std::fs::read_to_string(kernel_dir.join("release")).unwrap().trim().to_owned();
    let vmlinuz = kernel_dir.join(format!("vmlinuz-{release}"));
    let fetched = started.elapsed();

    // target/<profile>/deps/vm-... -> target/aarch64-unknown-linux-gnu/<profile>
    let exe = std::env::current_exe().unwrap();
    let profile = exe.ancestors().nth(2).and_then(Path::file_name).expect("profile dir");
    let bin_dir = target_dir().join(TRIPLE).join(profile);
    let binaries = ["ksense", "ksense-workload", "ksense-vm-guest"].map(|name| {
        let path = bin_dir.join(name);
        assert!(
            path.is_file(),
            "{} is missing: build the arm64 binaries with `cargo build --target {TRIPLE} -p ksense -p ksense-e2e --bins` ({FIX})",
            path.display()
        );
        (name, path)
    });
    let initrd = work.join("initramfs.cpio");
    // Emulating arm64 is several times slower than x86-64: ksense's start (verifying its
    // programs) took more than 60 s under load.
    let init = init_script(env_number("KSENSE_VM_GUEST_TIMEOUT_SECS", 240), None);
    build_initramfs(&ARM64, &initrd, &kernel_dir.join("busybox"), &binaries, &kernel_dir.join("dummy.ko"), init, work);
    Vm { machine: &ARM64, unavailable: Some(("fentry", FENTRY_ON_6_1)), qemu, release, vmlinuz, initrd, fetched, packed: started.elapsed() }
}

/// The dynamic loader and the libraries an aarch64 binary loads, found in the cross C library
/// (`ldd` cannot run a foreign binary): the loader at the path the binary names, the libraries
/// in `/lib`, where it searches. None for a static binary.
fn cross_libraries(binary: &Path) -> BTreeMap<String, PathBuf> {
    let mut libraries = BTreeMap::new();
    let mut pending = vec![binary.to_path_buf()];
    while let Some(file) = pending.pop() {
        let out = Command::new("aarch64-linux-gnu-readelf")
            .args(["--program-headers", "--dynamic", "--wide"])
            .arg(&file)
            .output()
            .unwrap_or_else(|e| panic!("cannot run aarch64-linux-gnu-readelf: {e}; {FIX}"));
        assert!(out.status.success(), "readelf {}: {}", file.display(), String::from_utf8_lossy(&out.stderr));
        for line in String::from_utf8_lossy(&out.stdout).lines() {
            // "[Requesting program interpreter: /lib/ld-linux-aarch64.so.1]"
            if let Some(loader) = line.split("interpreter: ").nth(1).map(|l| l.trim_end_matches(']')) {
                let name = Path::new(loader).file_name().unwrap();
                libraries.insert(loader.to_owned(), Path::new(CROSS_LIBS).join(name));
            }
            // " 0x...01 (NEEDED)  Shared library: [libc.so.6]"
            if let Some(name) = line.split("Shared library: [").nth(1).map(|l| l.trim_end_matches(']')) {
                let guest = format!("/lib/{name}");
                if !libraries.contains_key(&guest) {
                    let host = Path::new(CROSS_LIBS).join(name);
                    assert!(host.exists(), "{} needs {name}, which is not in {CROSS_LIBS}: {FIX}", file.display());
                    pending.push(host.clone());
                    libraries.insert(guest, host);
                }
            }
        }
    }
    libraries
}
