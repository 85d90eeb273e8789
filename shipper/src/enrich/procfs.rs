//! `/proc/<pid>` reads for the process table. Every read is best effort: a process may be gone.
use std::{
    os::unix::ffi::OsStrExt,
    path::{Path, PathBuf},
};

use ksense_abi::exec::ARGS_CAP;

use super::{ProcInfo, cgroups::Cgroup};
use crate::kinds::exec::{FileId, open_path, split_args};

/// Reads what `/proc/<pid>` tells of a process; `None` when it is gone, or when it is not the
/// process `kernel` describes (see [`is_process`]). `with_image` also reads the executable path and
/// argv (pointless for kernel threads); argv is read up to [`ARGS_CAP`] bytes, as the probe does.
pub(super) fn read(proc_root: &Path, pid: u32, with_image: bool, kernel: Option<KernelProcess>) -> Option<ProcInfo> {
    let dir = proc_root.join(pid.to_string());
    let stat = std::fs::read(dir.join("stat")).ok().and_then(|stat| parse_stat(&stat))?;
    let (pgid, sid) = (Some(stat.pgrp), Some(stat.session));
    let cgroup = cgroup_at(&dir);
    let (mut exe, mut args, mut args_truncated, mut executable) = (None, None, false, None);
    if with_image {
        let before = executable_at(&dir);
        let (read_args, truncated) = cmdline(&dir).filter(|(a, _)| !a.is_empty()).unzip();
        (exe, args, args_truncated) = (exe_at(&dir).map(Into::into), read_args.map(|a| split_args(&a).into()), truncated.unwrap_or(false));
        // An exec during the reads would mix two images: then neither is told.
        executable = before;
        if executable_at(&dir) != before {
            (exe, args, args_truncated, executable) = (None, None, false, None);
        }
    }
    // Checked after the reads: if the process the event is about still has the pid now, it
    // had it during them (a pid is not reused while its process lives).
    if !kernel.is_none_or(|kernel| is_process(proc_root, pid, kernel.start_ns)) {
        return None;
    }
    let started = match kernel {
        Some(kernel) => Some(Started::exactly(kernel.start_ns)),
        None => (stat.start_ticks != 0).then(|| Started::in_tick(stat.start_ticks)),
    };
    Some(ProcInfo { exe, args, args_truncated, executable, pgid, sid, cgroup, ppid: stat.ppid, started, identity: None })
}

/// When a process started, in CLOCK_MONOTONIC ns: exactly, as the kernel gave it, or the range
/// a `/proc` start time (a clock tick of CLOCK_BOOTTIME) allows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Started {
    earliest: u64,
    latest: u64,
}

impl Started {
    /// The kernel's `task->start_time`.
    pub fn exactly(ns: u64) -> Started {
        Started { earliest: ns, latest: ns }
    }

    /// A start time `/proc/<pid>/stat` gives (field 22). CLOCK_BOOTTIME runs ahead of
    /// CLOCK_MONOTONIC by the time the host spent suspended, so the start may be up to that
    /// much earlier; on a host never suspended, it lies within the one clock tick.
    pub fn in_tick(ticks: u64) -> Started {
        // SAFETY: sysconf has no memory effects.
        let hz = u128::from(unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as u64);
        let suspended = (crate::clock::now_ns(libc::CLOCK_BOOTTIME) - crate::clock::monotonic_ns()).max(0) as u128;
        let tick_start = |ticks: u128| (ticks * 1_000_000_000).div_ceil(hz);
        let ticks = u128::from(ticks);
        let earliest = tick_start(ticks).saturating_sub(suspended);
        let latest = tick_start(ticks + 1) - 1;
        Started { earliest: earliest as u64, latest: latest as u64 }
    }

    /// Whether a process started at `ns` (the kernel's clock) may be the one this describes.
    pub fn may_be(self, ns: u64) -> bool {
        (self.earliest..=self.latest).contains(&ns)
    }

    /// Whether this process may have started no later than `later`: a parent always starts
    /// before its child, so a parent pid whose process started after the child is a reused pid.
    pub fn may_precede(self, later: Started) -> bool {
        self.earliest <= later.latest
    }
}

/// A process as the kernel described it in an event.
#[derive(Debug, Clone, Copy)]
pub(super) struct KernelProcess {
    /// When it started (its main thread's `start_time`, CLOCK_MONOTONIC ns).
    pub start_ns: u64,
    /// The file its image runs, when the kernel said: an exec since the event replaces the
    /// image `/proc` shows.
    pub executable: Option<FileId>,
}

/// Whether `/proc/<pid>` is the process that started at `start_ns`: its start time (field 22
/// of `stat`) agrees with the kernel's (see [`Started::in_tick`]).
pub(super) fn is_process(proc_root: &Path, pid: u32, start_ns: u64) -> bool {
    let path = proc_root.join(pid.to_string()).join("stat");
    std::fs::read(path).ok().and_then(|stat| parse_stat(&stat)).is_some_and(|s| Started::in_tick(s.start_ticks).may_be(start_ns))
}

/// `/proc/<pid>/cmdline`, at most [`ARGS_CAP`] bytes of it (a process chooses how long its
/// argv is), and whether it was longer.
fn cmdline(dir: &Path) -> Option<(Vec<u8>, bool)> {
    use std::io::Read;
    let mut args = Vec::new();
    std::fs::File::open(dir.join("cmdline")).ok()?.take(ARGS_CAP as u64 + 1).read_to_end(&mut args).ok()?;
    let truncated = args.len() > ARGS_CAP;
    args.truncate(ARGS_CAP);
    Some((args, truncated))
}

/// (process group, session) of a process, from `/proc/<pid>/stat`; `None` when it is gone.
pub(super) fn ids(proc_root: &Path, pid: u32) -> Option<(u32, u32)> {
    parse_stat(&std::fs::read(proc_root.join(pid.to_string()).join("stat")).ok()?).map(|s| (s.pgrp, s.session))
}

/// The cgroup of a process, from `/proc/<pid>/cgroup`; `None` when it is gone.
pub(super) fn cgroup(proc_root: &Path, pid: u32) -> Option<Cgroup> {
    cgroup_at(&proc_root.join(pid.to_string()))
}

fn cgroup_at(dir: &Path) -> Option<Cgroup> {
    pick_cgroup(&std::fs::read_to_string(dir.join("cgroup")).ok()?).map(Cgroup::from_line)
}

/// The file `/proc/<pid>/exe` leads to, as `stat` identifies it (asked without reaching its
/// file system: see [`FileId::of_open`]).
fn executable_at(dir: &Path) -> Option<FileId> {
    FileId::of_open(&open_path(&dir.join("exe"))?)
}

fn exe_at(dir: &Path) -> Option<Vec<u8>> {
    let target: PathBuf = std::fs::read_link(dir.join("exe")).ok()?;
    Some(target.as_os_str().as_bytes().to_vec())
}

/// What ksense reads from `/proc/<pid>/stat`.
#[derive(Debug, PartialEq, Eq)]
struct Stat {
    /// Field 4: the parent's pid.
    ppid: u32,
    pgrp: u32,
    session: u32,
    /// Field 22, `starttime`: clock ticks after boot (CLOCK_BOOTTIME).
    start_ticks: u64,
}

/// Fields of `/proc/<pid>/stat`. comm (field 2) may hold spaces and parentheses, so fields are
/// counted from the last `)`.
fn parse_stat(stat: &[u8]) -> Option<Stat> {
    let close = stat.iter().rposition(|&b| b == b')')?;
    let rest = std::str::from_utf8(&stat[close + 1..]).ok()?;
    let fields: Vec<&str> = rest.split_ascii_whitespace().take(20).collect(); // field 3 (state) on
    Some(Stat {
        ppid: fields.get(1)?.parse().ok()?,
        pgrp: fields.get(2)?.parse().ok()?,
        session: fields.get(3)?.parse().ok()?,
        // Absent from short test fixtures: 0, which no event's start time matches.
        start_ticks: fields.get(19).and_then(|f| f.parse().ok()).unwrap_or(0),
    })
}

/// The `/proc/<pid>/cgroup` line that says most about where the process lives: the unified
/// (cgroup v2) line when it names a cgroup, else the first v1 line that does (systemd's first),
/// else the unified line as it is.
pub fn pick_cgroup(text: &str) -> Option<String> {
    let lines: Vec<&str> = text.lines().filter(|l| !l.is_empty()).collect();
    let path = |line: &str| line.splitn(3, ':').nth(2).unwrap_or("/").to_owned();
    let named = |line: &&&str| path(line) != "/";
    lines
        .iter()
        .filter(|l| l.starts_with("0::"))
        .find(named)
        .or_else(|| lines.iter().filter(|l| l.contains(":name=systemd:")).find(named))
        .or_else(|| lines.iter().find(named))
        .or_else(|| lines.iter().find(|l| l.starts_with("0::")))
        .or(lines.first())
        .map(|l| (*l).to_owned())
}

/// The container id a cgroup line names, from the layouts container runtimes create:
/// docker (`docker-<id>.scope`, `/docker/<id>`), containerd under CRI (`cri-containerd-<id>.scope`,
/// or `<id>` in a kubepods pod cgroup), CRI-O (`crio-<id>.scope`, `crio-<id>`), podman
/// (`libpod-<id>.scope`; its `libpod-conmon-<id>.scope` is the monitor, not a container).
/// Nothing in a user's delegated subtree (below `user@<uid>.service`) counts: its owner names
/// those cgroups as they like, so an id there could be any container's. The innermost match
/// wins (a container in a container). With the id, how many components of the path lead to the
/// cgroup named after the container (whose owners [`super::cgroups::Cgroups`] checks).
pub fn container_id(cgroup: &str) -> Option<(String, usize)> {
    let path = cgroup.splitn(3, ':').nth(2).unwrap_or(cgroup);
    let parts: Vec<&str> = path.split('/').filter(|p| !p.is_empty()).collect();
    if parts.iter().any(|p| p.starts_with("user@") && p.ends_with(".service")) {
        return None;
    }
    let id = |text: &str| (text.len() == 64 && text.bytes().all(|b| b.is_ascii_hexdigit())).then(|| text.to_ascii_lowercase());
    let in_pod = |i: usize| i >= 2 && parts[i - 1].starts_with("pod") && parts[..i - 1].iter().any(|p| p.starts_with("kubepods"));
    parts.iter().enumerate().rev().find_map(|(i, part)| {
        let scoped = ["docker-", "cri-containerd-", "crio-", "libpod-"]
            .iter()
            .find_map(|prefix| part.strip_prefix(prefix))
            .and_then(|rest| id(rest.strip_suffix(".scope").unwrap_or(rest)));
        let bare = || id(part).filter(|_| (i >= 1 && parts[i - 1] == "docker") || in_pod(i));
        Some((scoped.or_else(bare)?, i + 1))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_with_hostile_comm() {
        let stat = parse_stat(b"42 (a) b (c) S 1 40 30 0 -1 4194560 0 0 0 0 0 0 0 0 20 0 1 0 98765 0").unwrap();
        assert_eq!((stat.ppid, stat.pgrp, stat.session, stat.start_ticks), (1, 40, 30, 98765));
    }

    fn fake_proc(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("ksense-procfs-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    /// A stat line for pid 40 whose start time is `ticks`.
    fn stat_line(ticks: u64) -> String {
        format!("40 (x) S 1 40 40 0 -1 4194560 0 0 0 0 0 0 0 0 20 0 1 0 {ticks} 0")
    }

    /// `/proc/<pid>` is only believed when its start time is the kernel's for the event's
    /// process: a pid reused by another process is not described as the one the event is about.
    #[test]
    fn a_reused_pid_is_not_read() {
        let root = fake_proc("reuse");
        let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as u64;
        std::fs::create_dir_all(root.join("40")).unwrap();
        std::fs::write(root.join("40/stat"), stat_line(500 * hz)).unwrap();
        std::fs::write(root.join("40/cmdline"), b"/bin/other\0").unwrap();
        let at = |secs: u64| KernelProcess { start_ns: secs * 1_000_000_000, executable: None };
        assert!(is_process(&root, 40, at(500).start_ns));
        assert!(read(&root, 40, true, Some(at(500))).is_some());
        assert!(!is_process(&root, 40, at(499).start_ns), "an earlier process that had the pid");
        assert!(read(&root, 40, true, Some(at(499))).is_none());
        assert!(!is_process(&root, 41, at(500).start_ns), "no such process");
        assert!(read(&root, 40, true, None).is_some(), "no start time known: trusted");
        std::fs::remove_dir_all(root).unwrap();
    }

    /// argv read from /proc is capped as the probe caps it, and flagged as cut.
    #[test]
    fn cmdline_is_capped_at_the_argv_cap() {
        let root = fake_proc("cmdline");
        std::fs::create_dir_all(root.join("40")).unwrap();
        std::fs::write(root.join("40/stat"), stat_line(1)).unwrap();
        std::fs::write(root.join("40/cmdline"), vec![b'a'; 3 * ARGS_CAP]).unwrap();
        let info = read(&root, 40, true, None).unwrap();
        assert!(info.args_truncated);
        assert_eq!(info.args.unwrap()[0].len(), ARGS_CAP);
        std::fs::write(root.join("40/cmdline"), b"short\0").unwrap();
        assert!(!read(&root, 40, true, None).unwrap().args_truncated);
        std::fs::remove_dir_all(root).unwrap();
    }

    #[test]
    fn cgroup_choice() {
        assert_eq!(pick_cgroup("0::/user.slice/s.scope\n").as_deref(), Some("0::/user.slice/s.scope"));
        let hybrid = "9:name=systemd:/system.slice/x.service\n4:memory:/a\n0::/\n";
        assert_eq!(pick_cgroup(hybrid).as_deref(), Some("9:name=systemd:/system.slice/x.service"));
        assert_eq!(pick_cgroup("4:memory:/a\n0::/\n").as_deref(), Some("4:memory:/a"));
        assert_eq!(pick_cgroup("1:cpu:/\n0::/\n").as_deref(), Some("0::/"));
        assert_eq!(pick_cgroup(""), None);
    }

    #[test]
    fn container_ids_from_runtime_layouts() {
        let depth = |path: &str| container_id(path).map(|(_, depth)| depth);
        assert_eq!(depth("0::/system.slice/docker-0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef.scope/inner"), Some(2));
        let id = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";
        for path in [
            format!("0::/system.slice/docker-{id}.scope"),
            format!("12:pids:/docker/{id}"),
            format!("0::/kubepods.slice/kubepods-pod1.slice/cri-containerd-{id}.scope"),
            format!("0::/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod4f.slice/crio-{id}.scope"),
            format!("0::/kubepods/burstable/pod4f0e/{id}"),
            format!("0::/kubepods/besteffort/pod4f0e/crio-{id}"),
            format!("0::/machine.slice/libpod-{id}.scope"),
            format!("0::/machine.slice/libpod-{id}.scope/container"),
            format!("0::/system.slice/docker-{}.scope/docker/{id}", "f".repeat(64)),
            format!("0::/system.slice/docker-{}.scope", id.to_uppercase()),
        ] {
            assert_eq!(container_id(&path).map(|(id, _)| id).as_deref(), Some(id), "{path}");
        }
    }

    /// Any user can create cgroups named as they like in their delegated subtree, or hex runs
    /// elsewhere: none of that is a container.
    #[test]
    fn no_container_id_from_other_hex_runs() {
        let id = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";
        for path in [
            "0::/user.slice/user-1000.slice".to_owned(),
            format!("0::/user.slice/user-1000.slice/user@1000.service/app.slice/{id}"),
            format!("0::/user.slice/user-1000.slice/user@1000.service/app.slice/docker-{id}.scope"),
            format!("0::/user.slice/user-1000.slice/user@1000.service/user.slice/libpod-{id}.scope"),
            format!("0::/machine.slice/libpod-conmon-{id}.scope"),
            format!("0::/system.slice/{id}"),
            format!("0::/system.slice/foo-{id}.scope"),
            format!("0::/system.slice/docker-{id}0.scope"),
            format!("0::/pod1/{id}"),
            format!("0::/docker-{}.scope", &id[..63]),
        ] {
            assert_eq!(container_id(&path), None, "{path}");
        }
    }
}
