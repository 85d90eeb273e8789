//! cgroup v2 paths by cgroup id. Every event carries the id of its task's cgroup (from the
//! probes); once the path of an id is known, no event in that cgroup needs `/proc/<pid>/cgroup`
//! again. A path read from `/proc` is only learned for an id when the cgroup directory's inode
//! number is that id (cgroup ids are kernfs inode numbers): a process that moved to another
//! cgroup between the event and the read cannot teach a wrong path.
//!
//! A container id is only taken from a path whose cgroups, from the hierarchy's root down to the
//! one named after the container, are all root's: a user given a delegated cgroup (a systemd
//! service with `Delegate=yes` and `User=`, or its own `user@<uid>.service`) owns it and every
//! cgroup made below it, so it can name one `docker-<64 hex>.scope`, but cannot make it root's.
use std::{
    os::unix::fs::MetadataExt,
    path::{Path, PathBuf},
    sync::Arc,
};

use crate::lru::LruMap;

/// Most ids remembered; past that the one used longest ago is forgotten (ids of removed
/// cgroups are never reused, so their entries would otherwise stay).
const CACHE_CAP: usize = 4096;

/// What is known of one cgroup.
#[derive(Debug, Clone)]
pub(super) struct Cgroup {
    /// The `/proc/<pid>/cgroup` line that says most about it ([`super::procfs::pick_cgroup`]).
    pub line: Arc<str>,
    /// Container id found in the path, once [`Cgroups::learn`] found the cgroups holding it root's.
    pub container_id: Option<Arc<str>>,
}

impl Cgroup {
    /// The cgroup named by a `/proc/<pid>/cgroup` line, its container id not yet known.
    pub fn from_line(line: String) -> Cgroup {
        Cgroup { line: line.into(), container_id: None }
    }

    /// Sets the process's cgroup and container id.
    pub fn fill(&self, p: &mut crate::process::Process) {
        p.cgroup = Some(self.line.clone());
        p.container_id = self.container_id.clone();
    }
}

/// The cache, and where the cgroup hierarchies are mounted.
pub(super) struct Cgroups {
    mounts: Mounts,
    by_id: LruMap<u64, Cgroup>,
    /// Who may own the cgroups that hold a container: root, and the user ksense runs as.
    trusted: [u32; 2],
}

impl Cgroups {
    /// A cache that checks paths in the hierarchies `mounts` says where to find.
    pub fn new(mounts: Mounts) -> Cgroups {
        // SAFETY: geteuid cannot fail.
        let me = unsafe { libc::geteuid() };
        Cgroups { mounts, by_id: LruMap::new(CACHE_CAP), trusted: [0, me] }
    }

    /// The cgroup with this id, if learned (never for id 0, unknown: [`Cgroups::learn`] skips it).
    pub fn get(&mut self, id: u64) -> Option<Cgroup> {
        self.by_id.get(&id).cloned()
    }

    /// `read`, a cgroup read from `/proc/<pid>/cgroup`, with the container id its path names if
    /// the cgroups holding it are root's ([`Cgroups::runtime_owned`]); learned as the cgroup
    /// `id` if its line is the cgroup v2 one and its directory is that id. (On a host that also
    /// mounts cgroup v1, with processes in the v2 root, the line that says most is a v1 line:
    /// not learned.)
    pub fn learn(&mut self, id: u64, mut read: Cgroup) -> Cgroup {
        read.container_id = super::procfs::container_id(&read.line)
            .filter(|(_, depth)| self.runtime_owned(&read.line, *depth))
            .map(|(container, _)| container.into());
        let (Some(root), Some(path)) = (&self.mounts.v2, read.line.strip_prefix("0::")) else { return read };
        if id == 0 || self.by_id.get(&id).is_some() {
            return read;
        }
        if std::fs::metadata(root.join(path.trim_start_matches('/'))).is_ok_and(|m| m.ino() == id) {
            self.by_id.insert(id, read.clone());
        }
        read
    }

    /// Whether the cgroups of `line`'s path, from its hierarchy's root down to its `depth`-th
    /// component, are all directories owned by a trusted user. No: the hierarchy is not in view,
    /// or a cgroup is gone (a cgroup holding a process cannot be removed, so one read from a
    /// live process's `/proc` is still there).
    fn runtime_owned(&self, line: &str, depth: usize) -> bool {
        let Some((mount, path)) = self.mounts.of(line) else { return false };
        let mut dir = mount.to_path_buf();
        path.split('/').filter(|part| !part.is_empty()).take(depth).all(|part| {
            dir.push(part);
            std::fs::symlink_metadata(&dir).is_ok_and(|m| m.is_dir() && self.trusted.contains(&m.uid()))
        })
    }
}

/// Where the cgroup hierarchies are mounted with their roots in view (a cgroup namespace's
/// subtree would not match the paths of `/proc/<pid>/cgroup`).
#[derive(Debug, Default, PartialEq)]
pub struct Mounts {
    /// The cgroup v2 hierarchy.
    pub v2: Option<PathBuf>,
    /// cgroup v1 hierarchies: their mount options (controllers, `name=systemd`) and mount point.
    pub v1: Vec<(Vec<String>, PathBuf)>,
}

impl Mounts {
    /// The mounts `mountinfo` text (`/proc/self/mountinfo`) lists.
    pub fn from_mountinfo(mountinfo: &str) -> Mounts {
        let mut mounts = Mounts::default();
        for line in mountinfo.lines() {
            // id parent major:minor root mount-point options [optional...] - fstype source options
            let Some((mount, fs)) = line.split_once(" - ") else { continue };
            let fields: Vec<&str> = mount.split(' ').collect();
            let fs: Vec<&str> = fs.split(' ').collect();
            let (Some(&"/"), Some(point)) = (fields.get(3), fields.get(4)) else { continue };
            match fs[..] {
                ["cgroup2", ..] => mounts.v2 = mounts.v2.or(Some(unescape_octal(point))),
                ["cgroup", _, options, ..] => mounts.v1.push((options.split(',').map(str::to_owned).collect(), unescape_octal(point))),
                _ => {}
            }
        }
        mounts
    }

    /// The mount point of the hierarchy a `/proc/<pid>/cgroup` line is in, and the line's path.
    fn of<'a>(&self, line: &'a str) -> Option<(&Path, &'a str)> {
        let mut fields = line.splitn(3, ':');
        let (_, controllers, path) = (fields.next()?, fields.next()?, fields.next()?);
        if controllers.is_empty() {
            return Some((self.v2.as_deref()?, path));
        }
        let (_, mount) = self.v1.iter().find(|(options, _)| controllers.split(',').all(|c| options.iter().any(|o| o == c)))?;
        Some((mount, path))
    }
}

/// A mountinfo path with its `\NNN` octal escapes (space, tab, newline, backslash) undone.
fn unescape_octal(field: &str) -> PathBuf {
    use std::os::unix::ffi::OsStringExt;
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let digits = bytes.get(i + 1..i + 4).filter(|d| d.iter().all(|b| (b'0'..=b'7').contains(b)));
        match (bytes[i], digits) {
            (b'\\', Some(d)) => {
                out.push(d.iter().fold(0u8, |n, b| n.wrapping_mul(8).wrapping_add(b - b'0')));
                i += 4;
            }
            (b, _) => {
                out.push(b);
                i += 1;
            }
        }
    }
    PathBuf::from(std::ffi::OsString::from_vec(out))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mount_points_from_mountinfo() {
        let hybrid = "25 30 0:22 / /sys/fs/cgroup ro,nosuid shared:9 - tmpfs tmpfs ro,mode=755\n\
                      26 25 0:23 / /sys/fs/cgroup/unified rw,nosuid shared:10 - cgroup2 cgroup2 rw\n\
                      27 25 0:24 / /sys/fs/cgroup/systemd rw shared:11 - cgroup cgroup rw,xattr,name=systemd\n\
                      28 25 0:25 / /sys/fs/cgroup/cpu,cpuacct rw shared:12 - cgroup cgroup rw,cpu,cpuacct\n";
        let mounts = Mounts::from_mountinfo(hybrid);
        assert_eq!(mounts.v2, Some(PathBuf::from("/sys/fs/cgroup/unified")));
        let of = |line| mounts.of(line).map(|(mount, path)| (mount.to_owned(), path));
        assert_eq!(of("1:name=systemd:/a.scope"), Some((PathBuf::from("/sys/fs/cgroup/systemd"), "/a.scope")));
        assert_eq!(of("4:cpu,cpuacct:/b"), Some((PathBuf::from("/sys/fs/cgroup/cpu,cpuacct"), "/b")));
        assert_eq!(of("5:memory:/b"), None, "no memory hierarchy mounted");
        assert_eq!(of("0::/c"), Some((PathBuf::from("/sys/fs/cgroup/unified"), "/c")));
        let spaced = "26 25 0:23 / /mnt/cg\\040two rw shared:10 - cgroup2 cgroup2 rw\n";
        assert_eq!(Mounts::from_mountinfo(spaced).v2, Some(PathBuf::from("/mnt/cg two")));
        let namespaced = "26 25 0:23 /system.slice/x.scope /sys/fs/cgroup rw - cgroup2 cgroup2 rw\n";
        assert_eq!(Mounts::from_mountinfo(namespaced), Mounts::default());
    }

    fn fake_root(name: &str) -> PathBuf {
        let root = std::env::temp_dir().join(format!("ksense-cgroups-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        root
    }

    fn v2(root: &Path) -> Mounts {
        Mounts { v2: Some(root.to_owned()), v1: Vec::new() }
    }

    /// A path is learned only for the id that is its directory's inode number.
    #[test]
    fn learns_a_path_only_for_its_own_id() {
        let root = fake_root("learn");
        std::fs::create_dir_all(root.join("a.slice/b.scope")).unwrap();
        let id = std::fs::metadata(root.join("a.slice/b.scope")).unwrap().ino();
        let cgroup = Cgroup::from_line("0::/a.slice/b.scope".into());
        let mut cgroups = Cgroups::new(v2(&root));

        cgroups.learn(id + 1, cgroup.clone());
        assert!(cgroups.get(id + 1).is_none(), "a moved process's path is not learned for its old id");
        cgroups.learn(id, Cgroup::from_line("7:memory:/a.slice/b.scope".into()));
        assert!(cgroups.get(id).is_none(), "a v1 line is not learned");
        cgroups.learn(id, cgroup);
        assert_eq!(&*cgroups.get(id).expect("learned").line, "0::/a.slice/b.scope");
        assert!(cgroups.get(0).is_none());
        let _ = std::fs::remove_dir_all(root);
    }

    /// A runtime's cgroup name gives a container id only when every cgroup down to it is
    /// root's (or ksense's user's): not in a cgroup delegated to another user, where that user
    /// made it, nor when the cgroup cannot be checked.
    #[test]
    fn a_container_id_needs_cgroups_owned_by_root() {
        let id = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";
        let root = fake_root("owner");
        let runtime = format!("system.slice/docker-{id}.scope");
        std::fs::create_dir_all(root.join(&runtime)).unwrap();
        let mut cgroups = Cgroups::new(v2(&root));
        let container = |cgroups: &mut Cgroups, path: &str| cgroups.learn(0, Cgroup::from_line(format!("0::/{path}"))).container_id;

        assert_eq!(container(&mut cgroups, &runtime).as_deref(), Some(id));
        assert_eq!(container(&mut cgroups, &format!("{runtime}/inner")).as_deref(), Some(id), "below the container: its own business");
        assert_eq!(container(&mut cgroups, &format!("system.slice/gone/docker-{id}.scope")), None, "not there: not checked");
        assert_eq!(Cgroups::new(Mounts::default()).learn(0, Cgroup::from_line(format!("0::/{runtime}"))).container_id, None, "no hierarchy in view");

        // SAFETY: geteuid cannot fail.
        if unsafe { libc::geteuid() } != 0 {
            eprintln!("skipped the delegated cases: only root can give a cgroup to another user");
        } else {
            let delegated = root.join("system.slice/app.service");
            let forged = delegated.join(format!("docker-{id}.scope"));
            std::fs::create_dir_all(&forged).unwrap();
            std::os::unix::fs::chown(&delegated, Some(65534), Some(65534)).unwrap();
            assert_eq!(container(&mut cgroups, &format!("system.slice/app.service/docker-{id}.scope")), None, "below a delegated cgroup");
            std::os::unix::fs::chown(&delegated, Some(0), Some(0)).unwrap();
            std::os::unix::fs::chown(&forged, Some(65534), Some(65534)).unwrap();
            assert_eq!(container(&mut cgroups, &format!("system.slice/app.service/docker-{id}.scope")), None, "made by the user");
        }
        let _ = std::fs::remove_dir_all(root);
    }
}
