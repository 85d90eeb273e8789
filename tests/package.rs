//! The packages end to end (docs/PACKAGING.md). `scripts/package.sh` builds the .deb and the .rpm
//! once; then
//! - the .deb is installed with dpkg on this machine, its files checked, and the installed
//!   `/usr/bin/ksense` run the way the installed unit's `ExecStart=` runs it (its command line,
//!   its capability bounding set and ambient set, no-new-privileges, `NOTIFY_SOCKET` and
//!   `WATCHDOG_USEC` as systemd sets them); its events must reach journald. Then `dpkg -r` (the
//!   conffile stays) and `dpkg -P` (it goes, and so does the unit's enablement);
//! - the .rpm's file list, file flags and scripts are checked with `rpm -qlp` / `rpm -qp`, it is
//!   installed and erased in a scratch root, and its scripts run here, where systemd is not PID 1.
//!
//! Needs root. The package is purged at the end even when a check fails, and a run killed half
//! way is cleaned up by the next one (a marker file says the installed ksense is this test's).
use std::{
    collections::BTreeSet,
    fs::File,
    os::unix::{fs::PermissionsExt, net::UnixDatagram},
    path::{Path, PathBuf},
    process::{Child, Command, Output, Stdio},
    sync::{Mutex, OnceLock},
    time::{Duration, Instant},
};

use ksense_e2e::{event_timeout, journald};
use serde_json::Value;

const UNIT: &str = "/usr/lib/systemd/system/ksense.service";
const CONFIG: &str = "/etc/ksense/ksense.toml";
const CATALOG: &str = "/usr/lib/systemd/catalog/ksense.catalog";
const ENABLED_LINK: &str = "/etc/systemd/system/multi-user.target.wants/ksense.service";
/// Says that the ksense installed on this machine was installed by this test.
const MARKER: &str = "/var/tmp/ksense-package-test.installed";

/// Every file both packages install, but for the unit's zsh completion directory (each
/// distribution's own) and the .deb's copyright file.
const COMMON_FILES: &[&str] = &[
    "/usr/bin/ksense",
    UNIT,
    CONFIG,
    CATALOG,
    "/usr/share/man/man1/ksense.1.gz",
    "/usr/share/man/man1/ksense-run.1.gz",
    "/usr/share/man/man1/ksense-probes.1.gz",
    "/usr/share/man/man1/ksense-check-config.1.gz",
    "/usr/share/bash-completion/completions/ksense",
    "/usr/share/fish/vendor_completions.d/ksense.fish",
];
const DEB_ZSH: &str = "/usr/share/zsh/vendor-completions/_ksense";
const RPM_ZSH: &str = "/usr/share/zsh/site-functions/_ksense";

/// Steps that change this machine's package or unit state run one at a time.
static MACHINE: Mutex<()> = Mutex::new(());

/// The packages of this machine's architecture (x86_64), which the tests install and run, and
/// the cross-built arm64 ones, whose contents are checked.
struct Packages {
    deb: PathBuf,
    rpm: PathBuf,
    arm64_deb: PathBuf,
    arm64_rpm: PathBuf,
}

/// Builds both packages with scripts/package.sh, once for all the tests here.
fn packages() -> &'static Packages {
    static PACKAGES: OnceLock<Packages> = OnceLock::new();
    PACKAGES.get_or_init(|| {
        assert_eq!(unsafe { libc::geteuid() }, 0, "the package test installs a .deb: run it as root (sudo make test)");
        let repo = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
        let out = Command::new("bash")
            .arg(repo.join("scripts/package.sh"))
            .current_dir(repo)
            .stdin(Stdio::null())
            .output()
            .expect("cannot run bash");
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success(), "scripts/package.sh: {}\n{stdout}\n{}", out.status, tail(&out.stderr, 6000));
        // One "PATH<TAB>N bytes" line per package; `ext` is how the file name ends.
        let path = |ext: &str| {
            let line = stdout.lines().find(|l| l.split('\t').next().is_some_and(|p| p.ends_with(ext)));
            let rel = line
                .unwrap_or_else(|| panic!("scripts/package.sh printed no *{ext} path:\n{stdout}"))
                .split('\t')
                .next()
                .unwrap();
            let path = repo.join(rel);
            assert!(path.is_file(), "{} is missing", path.display());
            path
        };
        Packages {
            deb: path("_amd64.deb"),
            rpm: path(".x86_64.rpm"),
            arm64_deb: path("_arm64.deb"),
            arm64_rpm: path(".aarch64.rpm"),
        }
    })
}

#[test]
fn deb_installs_runs_under_the_units_limits_and_purges() {
    let deb = &packages().deb;
    let _machine = MACHINE.lock().unwrap_or_else(|e| e.into_inner());
    let _cleanup = Cleanup::new();

    // Install.
    std::fs::write(MARKER, "ksense was installed by tests/package.rs\n").unwrap();
    dpkg(&["-i", deb.to_str().unwrap()]);
    assert_eq!(status(), "install ok installed");
    for file in COMMON_FILES.iter().chain([&DEB_ZSH]) {
        assert!(Path::new(file).is_file(), "{file} is not installed");
    }
    assert_eq!(mode("/usr/bin/ksense"), 0o755);
    assert_eq!(mode(CONFIG), 0o640, "the configuration may hold credentials: not readable by others");
    assert_eq!(
        std::fs::read(CONFIG).unwrap(),
        std::fs::read(Path::new(env!("CARGO_MANIFEST_DIR")).join("../config/ksense.toml")).unwrap(),
        "the installed configuration is config/ksense.toml"
    );
    let conffiles = query("${Conffiles}");
    assert!(conffiles.contains(CONFIG), "{CONFIG} is not a conffile: {conffiles:?}");
    // deb-systemd-helper enabled the unit (it was not started: systemd is not PID 1 here). The
    // link may name /lib/systemd/system (merged /usr: the same file).
    let link = std::fs::read_link(ENABLED_LINK).unwrap_or_else(|e| panic!("{ENABLED_LINK}: {e}"));
    assert_eq!(
        std::fs::canonicalize(&link).unwrap(),
        std::fs::canonicalize(UNIT).unwrap(),
        "{ENABLED_LINK} -> {}",
        link.display()
    );
    // The postinst indexed the catalog: journalctl -x knows ksense's MESSAGE_IDs.
    let ids = catalog_ids();
    for id in &ids {
        assert!(listed_in_catalog(id), "MESSAGE_ID {id} is not in journalctl's catalog after install");
    }
    let man = Command::new("gzip").args(["-dc", "/usr/share/man/man1/ksense.1.gz"]).output().unwrap();
    let man = String::from_utf8_lossy(&man.stdout);
    assert!(
        man.contains("\n.TH ksense 1 ") && man.contains(r"ksense\-check\-config") && man.contains("SIGHUP"),
        "ksense.1:\n{man}"
    );
    let bash = std::fs::read_to_string("/usr/share/bash-completion/completions/ksense").unwrap();
    assert!(bash.contains("complete -F _ksense") && bash.contains("check-config"), "bash completion:\n{bash}");
    let check = Command::new("/usr/bin/ksense").args(["check-config", CONFIG]).output().unwrap();
    assert!(check.status.success(), "ksense check-config {CONFIG}: {}", String::from_utf8_lossy(&check.stderr));

    // Run it as the unit does, and find its events in the journal.
    journald::ensure();
    let unit = Unit::read(UNIT);
    let since = journald::since_now();
    let mut service = Service::start(&unit);
    let ready = service.wait_for_notify("READY=1");
    assert!(ready.contains("STATUS="), "READY=1 comes with a STATUS line: {ready:?}");
    let pid = service.child.id();
    let proc_status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let field = |name: &str| {
        proc_status.lines().find_map(|l| l.strip_prefix(name)).map(str::trim).unwrap_or_default().to_owned()
    };
    assert_eq!(
        u64::from_str_radix(&field("CapEff:"), 16).unwrap(),
        unit.capability_mask(),
        "ksense runs with exactly the unit's capabilities {:?}",
        unit.capabilities
    );
    assert_eq!(field("NoNewPrivs:"), "1");

    let marker = format!("ksense-package-test-{}", std::process::id());
    let child = Command::new("/bin/true").arg(&marker).spawn().unwrap();
    let child_pid = child.id();
    assert!(child.wait_with_output().unwrap().status.success());
    let matches = [
        "SYSLOG_IDENTIFIER=ksense".to_owned(),
        "_UID=0".to_owned(),
        "KSENSE_EVENT=process.exec".to_owned(),
        format!("PROCESS_PID={child_pid}"),
        format!("_PID={pid}"),
    ];
    let entry = wait_for_entry(&since, &matches, &mut service);
    assert!(entry.to_string().contains(&marker), "the exec entry holds the argument {marker:?}: {entry}");
    assert!(ids.iter().any(|id| entry["MESSAGE_ID"] == id.as_str()), "its MESSAGE_ID is in ksense.catalog: {entry}");

    // Stop it like systemd does: SIGTERM, then it says STOPPING=1 and exits 0.
    service.wait_for_notify("WATCHDOG=1");
    let stopped = service.stop();
    assert!(stopped.status.success(), "ksense exited with {}: {}", stopped.status, stopped.stderr);
    assert!(stopped.notified.iter().any(|m| m.contains("STOPPING=1")), "no STOPPING=1: {:?}", stopped.notified);

    // Remove: the binary and the unit go, the configuration stays.
    dpkg(&["-r", "ksense"]);
    assert_eq!(status(), "deinstall ok config-files");
    for gone in ["/usr/bin/ksense", UNIT, CATALOG, "/usr/share/man/man1/ksense.1.gz"] {
        assert!(!Path::new(gone).exists(), "{gone} is still there after dpkg -r");
    }
    assert!(Path::new(CONFIG).is_file(), "{CONFIG} was removed by dpkg -r (a conffile stays until purge)");
    assert!(!ids.iter().any(|id| listed_in_catalog(id)), "ksense's catalog entries outlived dpkg -r");

    // Purge: the configuration and the unit's enablement go too.
    dpkg(&["-P", "ksense"]);
    assert_eq!(status(), "");
    assert!(!Path::new("/etc/ksense").exists(), "/etc/ksense is still there after dpkg -P");
    assert!(std::fs::symlink_metadata(ENABLED_LINK).is_err(), "{ENABLED_LINK} is still there after dpkg -P");
    assert!(std::fs::symlink_metadata("/etc/systemd/system/ksense.service").is_err(), "ksense.service is still masked");
    let _ = std::fs::remove_file(MARKER);
}

#[test]
fn rpm_holds_the_same_files_and_the_systemd_scripts() {
    let Packages { deb, rpm, .. } = packages();
    let rpm = rpm.to_str().unwrap();

    // The file list: the .deb's, from the same metadata.
    let listed: BTreeSet<String> = run("rpm", &["-qlp", rpm]).lines().map(str::to_owned).collect();
    let expected: BTreeSet<String> = COMMON_FILES.iter().chain([&RPM_ZSH]).map(|f| f.to_string()).collect();
    assert_eq!(listed, expected, "rpm -qlp");
    let mut deb_common = deb_files(deb);
    deb_common.remove(DEB_ZSH);
    deb_common.remove("/usr/share/doc/ksense/copyright");
    let mut rpm_common = listed.clone();
    rpm_common.remove(RPM_ZSH);
    assert_eq!(deb_common, rpm_common, "the .deb and the .rpm install the same files");

    // Flags and modes: the configuration is %config(noreplace), the binary executable.
    let flags = run("rpm", &["-qp", "--qf", "[%{FILENAMES} %{FILEFLAGS:fflags} %{FILEMODES:perms}\n]", rpm]);
    let line = |file: &str| flags.lines().find(|l| l.starts_with(&format!("{file} "))).unwrap_or_default().to_owned();
    assert_eq!(line(CONFIG), format!("{CONFIG} cn -rw-r-----"), "config(noreplace), not readable by others:\n{flags}");
    assert!(line("/usr/bin/ksense").ends_with("-rwxr-xr-x"), "{flags}");

    // The scripts: the systemd macros' expansions and the catalog update.
    let scripts = run("rpm", &["-qp", "--scripts", rpm]);
    for expected in [
        "postinstall scriptlet",
        "systemctl --no-reload preset ksense.service",
        "preuninstall scriptlet",
        "systemctl --no-reload disable --now ksense.service",
        "postuninstall scriptlet",
        "systemctl try-restart ksense.service",
        "journalctl --update-catalog",
    ] {
        assert!(scripts.contains(expected), "{expected:?} is not in rpm -qp --scripts:\n{scripts}");
    }

    // Installs and erases in a scratch root; a changed configuration is kept as .rpmsave.
    let root = std::env::temp_dir().join(format!("ksense-rpm-root-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&root);
    std::fs::create_dir_all(&root).unwrap();
    let root_arg = format!("--root={}", root.display());
    run("rpm", &[&root_arg, "--initdb"]);
    run("rpm", &[&root_arg, "-i", "--nodeps", "--noscripts", rpm]);
    for file in &listed {
        assert!(root.join(file.trim_start_matches('/')).is_file(), "{file} not installed by rpm -i");
    }
    let config = root.join(CONFIG.trim_start_matches('/'));
    std::fs::write(&config, "# changed by the administrator\n").unwrap();
    run("rpm", &[&root_arg, "-e", "--noscripts", "ksense"]);
    assert!(!root.join("usr/bin/ksense").exists(), "rpm -e left /usr/bin/ksense");
    assert!(config.with_extension("toml.rpmsave").is_file(), "a changed configuration is saved on erase");
    std::fs::remove_dir_all(&root).unwrap();

    // The scripts succeed on a machine where systemd is not PID 1 (this one, CI), for the
    // arguments rpm passes on install ($1 = 1) and erase ($1 = 0).
    let _machine = MACHINE.lock().unwrap_or_else(|e| e.into_inner());
    for (tag, arg) in [("POSTIN", "1"), ("PREUN", "0"), ("POSTUN", "0"), ("POSTUN", "1")] {
        let script = run("rpm", &["-qp", "--qf", &format!("%{{{tag}}}"), rpm]);
        let out = Command::new("sh").args(["-c", &script, tag, arg]).output().unwrap();
        assert!(out.status.success(), "%{tag} with $1={arg}: {}\n{script}", String::from_utf8_lossy(&out.stderr));
    }
}

/// The unit under a real systemd (252, this machine's) as PID 1, in a VM on Debian 12's 6.1
/// kernel (scripts/unit-vm-check.sh): the whole sandbox applies (seccomp filter, mount namespace,
/// capabilities), `Type=notify` start, reload, module events despite `ProtectKernelModules=`,
/// journald delivery, clean stop; and, with a drop-in taking CAP_SYS_PTRACE away, what it is for.
#[test]
fn unit_runs_hardened_under_systemd_in_a_vm() {
    let deb = &packages().deb;
    let repo = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
    let unit = Unit::read(repo.join("packaging/ksense.service").to_str().unwrap());
    for variant in ["", "no-ptrace"] {
        let work = std::env::temp_dir().join(format!("ksense-unit-vm-{}{variant}", std::process::id()));
        let out = Command::new("bash")
            .arg(repo.join("scripts/unit-vm-check.sh"))
            .arg(deb)
            .arg(&work)
            .args((!variant.is_empty()).then_some(variant))
            .current_dir(repo)
            .stdin(Stdio::null())
            .output()
            .expect("cannot run bash");
        let console = std::fs::read(work.join("console.log")).unwrap_or_default();
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        let context = format!(
            "scripts/unit-vm-check.sh {variant}: {}\n{stdout}\n{}\nconsole:\n{}",
            out.status,
            tail(&out.stderr, 2000),
            tail(&console, 6000)
        );
        assert!(out.status.success(), "{context}");
        let checks: std::collections::BTreeMap<&str, &str> =
            stdout.lines().filter_map(|l| l.strip_prefix("CHECK ")?.split_once('=')).collect();
        let check = |key: &str| *checks.get(key).unwrap_or_else(|| panic!("no CHECK {key}: {context}"));
        let ptrace = variant.is_empty();

        assert_eq!(check("done"), "yes", "{context}");
        assert_eq!(check("active"), "active/running", "Type=notify: READY=1 came: {context}");
        let status = check("status");
        assert!(status.starts_with("attached ") && status.contains("kernel.module.load="), "STATUS=: {context}");
        let caps = if ptrace { "000000c000080000" } else { "000000c000000000" };
        assert_eq!(
            check("capeff"),
            caps,
            "CAP_BPF CAP_PERFMON{}: {context}",
            if ptrace { " CAP_SYS_PTRACE" } else { "" }
        );
        assert_eq!(check("nnp"), "1", "{context}");
        assert_eq!(check("seccomp"), "2", "SystemCallFilter= is in force: {context}");
        assert_eq!(check("own_mount_namespace"), "yes", "{context}");
        assert_eq!(check("root_mount"), "ro", "ProtectSystem=strict: {context}");
        assert_eq!(check("insmod"), "ok", "{context}");
        assert_eq!(check("module_events"), "1", "a module load is reported under ProtectKernelModules=yes: {context}");
        assert_eq!(check("exec_marker"), "1", "the exec reached journald: {context}");
        assert_eq!(check("reload"), "active/running pid-kept=yes", "ExecReload= (SIGHUP): {context}");
        assert_ne!(check("reloaded_logged"), "0", "ksense logged the reload: {context}");
        assert_eq!(check("stop"), "success exit=0", "{context}");
        assert_eq!(check("exec_marker_by_unit"), "1", "ksense's entries are the unit's: {context}");
        // The file sink at its default path, under ProtectSystem=strict.
        assert_eq!(check("logs_dir"), "root 755", "LogsDirectory=ksense: {context}");
        assert_eq!(check("file_mode"), "640", "{context}");
        assert_ne!(check("file_marker"), "0", "the exec is in /var/log/ksense/events.json: {context}");
        assert_eq!(check("memory_high"), unit.memory_high.to_string(), "{context}");
        assert_eq!(check("memory_max"), unit.memory_max.to_string(), "{context}");
        // A forged entry: found by its identifier, not by the unit or _UID=0.
        assert_eq!(check("forged"), "1", "{context}");
        assert_eq!(check("forged_by_unit"), "0", "{context}");
        assert_eq!(check("forged_by_uid"), "0", "{context}");
        assert_eq!(check("other_unit_ksense_entries"), "0", "journalctl -u of another service: {context}");
        assert_eq!(check("restarted"), "1 active", "Restart=always after a clean exit: {context}");
        assert_ne!(check("start_error"), "0", "journalctl -p err -u ksense shows a failed start: {context}");
        // The kernel's rule on 6.1, and what the capability gives ksense.
        assert_eq!(check("exe_without_ptrace"), "denied", "{context}");
        assert_eq!(check("maps_without_ptrace"), "denied", "{context}");
        assert_eq!(check("exe_with_ptrace"), "/usr/bin/busybox", "{context}");
        let exe = if ptrace { "/usr/bin/busybox" } else { "" };
        assert_eq!(
            check("other_user_exe"),
            exe,
            "process.executable.path of another user's process that ran before ksense: {context}"
        );
        let _ = std::fs::remove_dir_all(&work);
    }
}

/// The files (not directories) in a .deb, as absolute paths.
/// Per architecture: the .deb's `Architecture:`, the .rpm's `%{ARCH}`, the binary's ELF machine
/// (`e_machine`: 62 x86-64, 183 AArch64), and for both packages the same file list, the binary
/// being one for that CPU, and a C library dependency on that architecture's `libc6` (not the
/// cross-compiler's `libc6-arm64-cross`).
#[test]
fn both_architectures_packages_hold_their_own_binary() {
    let packages = packages();
    let amd64 = (&packages.deb, &packages.rpm, "amd64", "x86_64", 62);
    let arm64 = (&packages.arm64_deb, &packages.arm64_rpm, "arm64", "aarch64", 183);
    for (deb, rpm, deb_arch, rpm_arch, machine) in [amd64, arm64] {
        let (deb, rpm) = (deb.to_str().unwrap(), rpm.to_str().unwrap());
        assert_eq!(run("dpkg-deb", &["-f", deb, "Architecture"]).trim(), deb_arch, "{deb}");
        // dpkg-shlibdeps names the C library of a cross build with its architecture: `libc6:arm64`.
        let depends = run("dpkg-deb", &["-f", deb, "Depends"]);
        let libc = depends.split([' ', ',']).next().unwrap_or_default();
        assert!(libc == "libc6" || libc == format!("libc6:{deb_arch}"), "{deb} depends on {depends:?}");
        assert_eq!(run("rpm", &["-qp", "--qf", "%{ARCH}", rpm]), rpm_arch, "{rpm}");

        let from_deb = pipe(&format!("dpkg-deb --fsys-tarfile '{deb}' | tar -xO ./usr/bin/ksense"));
        let from_rpm = pipe(&format!("rpm2cpio '{rpm}' | cpio -i --quiet --to-stdout ./usr/bin/ksense"));
        for (package, binary) in [(deb, &from_deb), (rpm, &from_rpm)] {
            assert!(binary.starts_with(b"\x7fELF\x02\x01"), "{package}: /usr/bin/ksense is no 64-bit little-endian ELF");
            let e_machine = u16::from_le_bytes([binary[18], binary[19]]);
            assert_eq!(e_machine, machine, "{package}: /usr/bin/ksense is for ELF machine {e_machine}, not {rpm_arch}");
        }
    }
    assert_eq!(deb_files(&packages.deb), deb_files(&packages.arm64_deb), "both .debs install the same files");
    assert_eq!(
        run("rpm", &["-qlp", packages.rpm.to_str().unwrap()]),
        run("rpm", &["-qlp", packages.arm64_rpm.to_str().unwrap()]),
        "both .rpms install the same files"
    );
}

/// The standard output of a shell pipeline whose last command must succeed (rpm2cpio fails
/// when cpio stops reading after the file it wanted; what comes out is checked by the caller).
fn pipe(script: &str) -> Vec<u8> {
    let out = Command::new("bash").args(["-c", script]).output().unwrap();
    assert!(out.status.success(), "{script}: {}\n{}", out.status, String::from_utf8_lossy(&out.stderr));
    out.stdout
}

fn deb_files(deb: &Path) -> BTreeSet<String> {
    run("dpkg-deb", &["-c", deb.to_str().unwrap()])
        .lines()
        .filter(|l| l.starts_with('-'))
        .filter_map(|l| l.split_whitespace().last())
        .map(|p| p.trim_start_matches('.').to_owned())
        .collect()
}

/// The installed unit's settings that decide how ksense runs.
struct Unit {
    exec_start: Vec<String>,
    capabilities: Vec<String>,
    ambient: Vec<String>,
    no_new_privileges: bool,
    /// `MemoryHigh=` and `MemoryMax=`, in bytes.
    memory_high: u64,
    memory_max: u64,
}

impl Unit {
    fn read(path: &str) -> Unit {
        let text = std::fs::read_to_string(path).unwrap();
        let values = |key: &str| -> Vec<String> {
            text.lines()
                .filter_map(|l| l.strip_prefix(&format!("{key}=")))
                .flat_map(|v| v.split_whitespace().map(str::to_owned).collect::<Vec<_>>())
                .collect()
        };
        let bytes = |key: &str| -> u64 {
            let value = values(key).concat();
            let (number, unit) = value.split_at(value.find(|c: char| !c.is_ascii_digit()).unwrap_or(value.len()));
            let shift = match unit {
                "" => 0,
                "K" => 10,
                "M" => 20,
                "G" => 30,
                other => panic!("{key}={value} in {path}: unit {other:?}"),
            };
            number.parse::<u64>().unwrap_or_else(|_| panic!("{key}={value} in {path}")) << shift
        };
        let unit = Unit {
            exec_start: values("ExecStart"),
            capabilities: values("CapabilityBoundingSet"),
            ambient: values("AmbientCapabilities"),
            no_new_privileges: values("NoNewPrivileges") == ["yes"],
            memory_high: bytes("MemoryHigh"),
            memory_max: bytes("MemoryMax"),
        };
        assert_eq!(unit.exec_start.first().map(String::as_str), Some("/usr/bin/ksense"), "ExecStart= in {path}");
        assert!(!unit.capabilities.is_empty(), "no CapabilityBoundingSet= in {path}");
        // A sensor that stopped is blind: restarted whatever ended it.
        assert_eq!(values("Restart"), ["always"], "Restart= in {path}");
        // The file sink's default directory, created by systemd and writable under
        // ProtectSystem=strict.
        assert_eq!(values("LogsDirectory"), ["ksense"], "LogsDirectory= in {path}");
        // Room for the flood peak (64 MiB, docs/BENCHMARKS.md) before throttling, and a hard
        // stop above that.
        assert!(unit.memory_high > 64 << 20, "MemoryHigh= in {path}: {}", unit.memory_high);
        assert!(unit.memory_max > unit.memory_high, "MemoryMax= in {path}: {}", unit.memory_max);
        unit
    }

    /// `CAP_BPF CAP_PERFMON` as setpriv's `-all,+bpf,+perfmon`.
    fn setpriv_caps(caps: &[String]) -> String {
        std::iter::once("-all".to_owned())
            .chain(caps.iter().map(|c| format!("+{}", c.trim_start_matches("CAP_").to_lowercase())))
            .collect::<Vec<_>>()
            .join(",")
    }

    /// The bounding set as the bit mask /proc/<pid>/status shows.
    fn capability_mask(&self) -> u64 {
        self.capabilities
            .iter()
            .map(|c| {
                let bit = match c.as_str() {
                    "CAP_DAC_READ_SEARCH" => 2,
                    "CAP_SYS_PTRACE" => 19,
                    "CAP_SYS_ADMIN" => 21,
                    "CAP_SYS_RESOURCE" => 24,
                    "CAP_PERFMON" => 38,
                    "CAP_BPF" => 39,
                    other => panic!("capability {other} is not known to this test"),
                };
                1u64 << bit
            })
            .fold(0, |mask, bit| mask | bit)
    }
}

/// The installed ksense, started as systemd would start the unit.
struct Service {
    child: Child,
    notify: UnixDatagram,
    notify_dir: PathBuf,
    notified: Vec<String>,
}

struct StoppedService {
    status: std::process::ExitStatus,
    stderr: String,
    notified: Vec<String>,
}

impl Service {
    fn start(unit: &Unit) -> Service {
        let notify_dir = std::env::temp_dir().join(format!("ksense-package-notify-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&notify_dir);
        std::fs::create_dir_all(&notify_dir).unwrap();
        let socket = notify_dir.join("notify");
        let notify = UnixDatagram::bind(&socket).unwrap();
        let mut setpriv = Command::new("setpriv");
        setpriv
            .arg(format!("--bounding-set={}", Unit::setpriv_caps(&unit.capabilities)))
            .arg(format!("--inh-caps={}", Unit::setpriv_caps(&unit.ambient)))
            .arg(format!("--ambient-caps={}", Unit::setpriv_caps(&unit.ambient)));
        if unit.no_new_privileges {
            setpriv.arg("--no-new-privs");
        }
        let child = setpriv
            .arg("--")
            .args(&unit.exec_start)
            // systemd's environment for a system service, and what Type=notify and WatchdogSec=
            // add (a short watchdog, so the test sees a keep-alive soon).
            .env_clear()
            .env("PATH", "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin")
            .env("LANG", "C.UTF-8")
            .env("NOTIFY_SOCKET", &socket)
            .env("WATCHDOG_USEC", "2000000")
            .current_dir("/")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(File::create(notify_dir.join("stderr")).unwrap())
            .spawn()
            .expect("cannot run setpriv (util-linux)");
        Service { child, notify, notify_dir, notified: Vec::new() }
    }

    fn stderr(&self) -> String {
        std::fs::read_to_string(self.notify_dir.join("stderr")).unwrap_or_default()
    }

    /// Waits for a notification containing `what`; returns it.
    fn wait_for_notify(&mut self, what: &str) -> String {
        if let Some(m) = self.notified.iter().find(|m| m.contains(what)) {
            return m.clone();
        }
        let deadline = Instant::now() + event_timeout();
        let mut buf = vec![0u8; 4096];
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                panic!(
                    "no {what} from ksense within {:?} (got {:?}); ksense said:\n{}",
                    event_timeout(),
                    self.notified,
                    self.stderr()
                );
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!("ksense exited ({status}) before {what}; it said:\n{}", self.stderr());
            }
            self.notify.set_read_timeout(Some(left.min(Duration::from_millis(500)))).unwrap();
            if let Ok(n) = self.notify.recv(&mut buf) {
                let message = String::from_utf8_lossy(&buf[..n]).into_owned();
                self.notified.push(message.clone());
                if message.contains(what) {
                    return message;
                }
            }
        }
    }

    /// SIGTERM, then waits for the exit, collecting the last notifications.
    fn stop(mut self) -> StoppedService {
        // SAFETY: kill(2) on our own child's pid.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let deadline = Instant::now() + event_timeout();
        let status = loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                break status;
            }
            assert!(Instant::now() < deadline, "ksense did not stop within {:?} of SIGTERM", event_timeout());
            std::thread::sleep(Duration::from_millis(50));
        };
        self.notify.set_nonblocking(true).unwrap();
        let mut buf = vec![0u8; 4096];
        while let Ok(n) = self.notify.recv(&mut buf) {
            self.notified.push(String::from_utf8_lossy(&buf[..n]).into_owned());
        }
        StoppedService { status, stderr: self.stderr(), notified: std::mem::take(&mut self.notified) }
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
        let _ = std::fs::remove_dir_all(&self.notify_dir);
    }
}

/// Purges the package when the test ends, whatever happened; at the start, purges one a killed
/// run left (and refuses to touch a ksense this test did not install).
struct Cleanup;

impl Cleanup {
    fn new() -> Cleanup {
        if !status().is_empty() {
            assert!(
                Path::new(MARKER).exists(),
                "a ksense package is installed on this machine ({}); this test installs and purges its own: \
                 remove that one first (dpkg -P ksense)",
                status()
            );
            dpkg(&["-P", "ksense"]);
        }
        Cleanup
    }
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        if !status().is_empty() {
            let _ = Command::new("dpkg").args(["-P", "ksense"]).stdout(Stdio::null()).status();
        }
        if status().is_empty() {
            let _ = std::fs::remove_file(MARKER);
        }
    }
}

/// dpkg with `args`, waiting for the dpkg lock if another install holds it.
fn dpkg(args: &[&str]) {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let out = Command::new("dpkg").args(args).env("DEBIAN_FRONTEND", "noninteractive").output().unwrap();
        if out.status.success() {
            return;
        }
        let stderr = String::from_utf8_lossy(&out.stderr);
        if stderr.contains("lock") && Instant::now() < deadline {
            std::thread::sleep(Duration::from_secs(2));
            continue;
        }
        panic!("dpkg {args:?}: {}\n{}{stderr}", out.status, String::from_utf8_lossy(&out.stdout));
    }
}

/// dpkg's status of ksense ("install ok installed", ...), empty when it knows nothing of it.
fn status() -> String {
    let s = query("${Status}");
    if s.ends_with("not-installed") { String::new() } else { s }
}

fn query(format: &str) -> String {
    let out = Command::new("dpkg-query").args(["-W", "-f", format, "ksense"]).output().unwrap();
    if out.status.success() { String::from_utf8_lossy(&out.stdout).trim().to_owned() } else { String::new() }
}

fn mode(path: &str) -> u32 {
    std::fs::metadata(path).unwrap().permissions().mode() & 0o7777
}

/// The MESSAGE_IDs ksense.catalog explains (its `-- ID` lines), from the source tree.
fn catalog_ids() -> Vec<String> {
    let text =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("../packaging/ksense.catalog")).unwrap();
    let ids: Vec<String> = text.lines().filter_map(|l| l.strip_prefix("-- ")).map(|id| id.trim().to_owned()).collect();
    assert!(!ids.is_empty(), "no entries in packaging/ksense.catalog");
    ids
}

fn listed_in_catalog(id: &str) -> bool {
    Command::new("journalctl")
        .args(["--list-catalog", id])
        .output()
        .is_ok_and(|o| o.status.success() && !o.stdout.is_empty())
}

/// Runs a command that must succeed; its standard output.
fn run(program: &str, args: &[&str]) -> String {
    let out: Output = Command::new(program).args(args).output().unwrap_or_else(|e| panic!("cannot run {program}: {e}"));
    assert!(out.status.success(), "{program} {args:?}: {}\n{}", out.status, String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap()
}

fn tail(bytes: &[u8], n: usize) -> String {
    let text = String::from_utf8_lossy(bytes);
    let start = text.len().saturating_sub(n);
    text[text.char_indices().map(|(i, _)| i).find(|&i| i >= start).unwrap_or(0)..].to_owned()
}

/// Waits for exactly one journal entry matching `matches`, written since `since`.
fn wait_for_entry(since: &str, matches: &[String], service: &mut Service) -> Value {
    let deadline = Instant::now() + event_timeout();
    loop {
        let mut found = journald::entries(since, matches);
        match found.len() {
            1 => return found.pop().unwrap(),
            0 if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(200)),
            0 => {
                panic!("no journal entry {matches:?} within {:?}; ksense said:\n{}", event_timeout(), service.stderr())
            }
            n => panic!("{n} journal entries {matches:?}"),
        }
    }
}
