//! `/proc/<pid>` reads for the process table. Every read is best effort: a process may be gone.
use std::{
    os::unix::ffi::OsStrExt,
    path::{Path, PathBuf},
};

use super::{ProcInfo, cgroups::Cgroup};
use crate::decode::exec::split_args;

/// Reads what `/proc/<pid>` tells of a process; `None` when it is gone. `with_image` also
/// reads the executable path and argv (pointless for kernel threads).
pub(super) fn read(proc_root: &Path, pid: u32, with_image: bool) -> Option<ProcInfo> {
    let dir = proc_root.join(pid.to_string());
    let stat = std::fs::read(dir.join("stat")).ok()?;
    let (pgid, sid) = parse_stat(&stat).unzip();
    let cgroup = cgroup_at(&dir);
    let (exe, args) = if with_image {
        let args = std::fs::read(dir.join("cmdline")).ok().filter(|a| !a.is_empty());
        (exe_at(&dir).map(Into::into), args.map(|a| split_args(&a).into()))
    } else {
        (None, None)
    };
    Some(ProcInfo { exe, args, pgid, sid, cgroup })
}

/// (process group, session) of a process, from `/proc/<pid>/stat`; `None` when it is gone.
pub(super) fn ids(proc_root: &Path, pid: u32) -> Option<(u32, u32)> {
    parse_stat(&std::fs::read(proc_root.join(pid.to_string()).join("stat")).ok()?)
}

/// The cgroup of a process, from `/proc/<pid>/cgroup`; `None` when it is gone.
pub(super) fn cgroup(proc_root: &Path, pid: u32) -> Option<Cgroup> {
    cgroup_at(&proc_root.join(pid.to_string()))
}

fn cgroup_at(dir: &Path) -> Option<Cgroup> {
    pick_cgroup(&std::fs::read_to_string(dir.join("cgroup")).ok()?).map(Cgroup::from_line)
}

/// The target of `/proc/<pid>/exe`.
pub(super) fn exe(proc_root: &Path, pid: u32) -> Option<Vec<u8>> {
    exe_at(&proc_root.join(pid.to_string()))
}

fn exe_at(dir: &Path) -> Option<Vec<u8>> {
    let target: PathBuf = std::fs::read_link(dir.join("exe")).ok()?;
    Some(target.as_os_str().as_bytes().to_vec())
}

/// The path of the file mapped at `addr` in process `pid`, from `/proc/<pid>/maps`. The kernel
/// writes a newline in the path as `\012` there (and nothing else escaped): that is undone, so
/// a name holding the four characters `\012` comes back as a newline (the caller checks the
/// name against the kernel record's).
pub(super) fn mapping_path(proc_root: &Path, pid: u32, addr: u64) -> Option<Vec<u8>> {
    let maps = std::fs::read(proc_root.join(pid.to_string()).join("maps")).ok()?;
    maps.split(|&b| b == b'\n').find_map(|line| {
        // start-end perms offset dev inode path
        let text = std::str::from_utf8(line.get(..line.iter().position(|&b| b == b' ')?)?).ok()?;
        let (start, end) = text.split_once('-')?;
        let (start, end) = (u64::from_str_radix(start, 16).ok()?, u64::from_str_radix(end, 16).ok()?);
        if !(start..end).contains(&addr) {
            return None;
        }
        let path_at = line.iter().position(|&b| b == b'/')?;
        Some(unescape_newlines(&line[path_at..]))
    })
}

/// `path` with each `\012` (how `/proc/<pid>/maps` writes a newline) made a newline again.
fn unescape_newlines(path: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(path.len());
    let mut rest = path;
    while !rest.is_empty() {
        if let Some(tail) = rest.strip_prefix(b"\\012") {
            out.push(b'\n');
            rest = tail;
        } else {
            out.push(rest[0]);
            rest = &rest[1..];
        }
    }
    out
}

/// (pgrp, session) from `/proc/<pid>/stat`. comm (field 2) may hold spaces and parentheses,
/// so fields are counted from the last `)`.
fn parse_stat(stat: &[u8]) -> Option<(u32, u32)> {
    let close = stat.iter().rposition(|&b| b == b')')?;
    let rest = std::str::from_utf8(&stat[close + 1..]).ok()?;
    let mut fields = rest.split_ascii_whitespace(); // state ppid pgrp session ...
    let pgrp = fields.nth(2)?.parse().ok()?;
    let session = fields.next()?.parse().ok()?;
    Some((pgrp, session))
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

/// A container id in a cgroup path: the last run of exactly 64 hex digits, as docker, podman,
/// containerd and CRI-O name their cgroups (`docker-<id>.scope`, `/docker/<id>`,
/// `cri-containerd-<id>.scope`, `crio-<id>.scope`, `libpod-<id>.scope`).
pub fn container_id(cgroup: &str) -> Option<String> {
    let mut found = None;
    for run in cgroup.split(|c: char| !c.is_ascii_hexdigit()) {
        if run.len() == 64 {
            found = Some(run.to_ascii_lowercase());
        }
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_with_hostile_comm() {
        assert_eq!(parse_stat(b"42 (a) b (c) S 1 40 30 0 -1 4194560"), Some((40, 30)));
    }

    #[test]
    fn maps_newline_escape_is_undone() {
        assert_eq!(unescape_newlines(b"/tmp/a\\012b\\012"), b"/tmp/a\nb\n");
        assert_eq!(unescape_newlines(b"/tmp/a\\01b\\x\\"), b"/tmp/a\\01b\\x\\");
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
    fn container_ids() {
        let id = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";
        for path in [
            format!("0::/system.slice/docker-{id}.scope"),
            format!("12:pids:/docker/{id}"),
            format!("0::/kubepods.slice/kubepods-pod1.slice/cri-containerd-{id}.scope"),
        ] {
            assert_eq!(container_id(&path).as_deref(), Some(id), "{path}");
        }
        assert_eq!(container_id("0::/user.slice/user-1000.slice"), None);
    }
}
