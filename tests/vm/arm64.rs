//! The arm64 guest: Debian 12's arm64 6.1 kernel under `qemu-system-aarch64 -M virt -cpu max`
//! (software emulation), booting the aarch64 release builds of `ksense`, `ksense-workload` and
//! `ksense-vm-guest`, with the same guest checks in both attach modes as on amd64. On this kernel
//! the fentry mode cannot attach any fentry/fexit hook ([`FENTRY_ON_6_1`]): its checks must fail
//! and are shown as notes, and the tracepoint mode's must all pass.
//!
//! `scripts/vm-kernel.sh 6.1 arm64` fetches and caches the kernel, its `dummy.ko` and a static
//! arm64 busybox; the binaries are the cross builds, which must exist first:
//! `cargo build --release --target aarch64-unknown-linux-gnu -p ksense` and the same with
//! `-p ksense-e2e --bins` (the linker and the arm64 C library come from `scripts/setup.sh`; the
//! release build is the one the arm64 packages hold, and is several times faster under
//! emulation). Their shared libraries come from the cross C library (`/usr/aarch64-linux-gnu/lib`).
//!
//! Run only this test: `cargo test -p ksense-e2e --test vm arm64 -- --nocapture`.
use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
    process::Command,
};

use super::{FIX, Kernel, Machine, target_dir};

/// Debian 12's 6.1 on arm64.
pub(crate) const DEBIAN_12_6_1_ARM64: Kernel = Kernel {
    line: "6.1",
    arch: "arm64",
    distribution: "Debian 12",
    machine: &ARM64,
    unavailable: Some(("fentry", FENTRY_ON_6_1)),
};

/// The Rust target of the guest's binaries.
const TRIPLE: &str = "aarch64-unknown-linux-gnu";
/// Where Debian's cross C library (libc6-arm64-cross) keeps the guest's shared libraries.
const CROSS_LIBS: &str = "/usr/aarch64-linux-gnu/lib";

/// arm64 under TCG: `pauth-impdef` uses qemu's own pointer-authentication algorithm instead of
/// emulating QARMA, which halves the boot time. Emulating arm64 is several times slower than
/// x86-64, hence the longer limits (seen: 455 s for the whole run of debug builds on a loaded
/// 2-core machine; ksense's start, verifying its programs, took more than 60 s).
const ARM64: Machine = Machine {
    qemu: "qemu-system-aarch64",
    args: &["-M", "virt", "-cpu", "max,pauth-impdef=on", "-m", "2048"],
    append: "console=ttyAMA0 panic=-1 quiet",
    timeout_secs: 1200,
    guest_timeout_secs: 240,
    strip: "aarch64-linux-gnu-strip",
    guest_files: cross_files,
    libraries: cross_libraries,
};

/// Why the fentry mode's checks fail on this kernel (seen: every fentry/fexit attach refused
/// with error 524, ENOTSUPP, while tp_btf and tracepoints attach).
const FENTRY_ON_6_1: &str = "arm64 has BPF trampolines for kernel functions only from Linux 6.4 \
     (ftrace direct calls, CONFIG_DYNAMIC_FTRACE_WITH_DIRECT_CALLS, which this 6.1 kernel lacks)";

/// The arm64 busybox `scripts/vm-kernel.sh` cached in `kernel_dir`, and the cross builds.
fn cross_files(kernel_dir: &Path) -> (PathBuf, [(&'static str, PathBuf); 3]) {
    let bin_dir = target_dir().join(TRIPLE).join("release");
    let binaries = ["ksense", "ksense-workload", "ksense-vm-guest"].map(|name| {
        let path = bin_dir.join(name);
        assert!(
            path.is_file(),
            "{} is missing: build the arm64 binaries with `cargo build --release --target {TRIPLE} -p ksense` \
             and `cargo build --release --target {TRIPLE} -p ksense-e2e --bins` ({FIX})",
            path.display()
        );
        (name, path)
    });
    (kernel_dir.join("busybox"), binaries)
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
