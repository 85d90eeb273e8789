//! cgroup v2 paths by cgroup id. Every event carries the id of its task's cgroup (from the
//! probes); once the path of an id is known, no event in that cgroup needs `/proc/<pid>/cgroup`
//! again. A path read from `/proc` is only learned for an id when the cgroup directory's inode
//! number is that id (cgroup ids are kernfs inode numbers): a process that moved to another
//! cgroup between the event and the read cannot teach a wrong path.
use std::{collections::HashMap, os::unix::fs::MetadataExt, path::PathBuf, sync::Arc};

/// Most ids remembered before the cache starts over (ids of removed cgroups are never reused,
/// so their entries would otherwise stay).
const CACHE_CAP: usize = 4096;

/// What is known of one cgroup.
#[derive(Debug, Clone)]
pub(super) struct Cgroup {
    /// The `/proc/<pid>/cgroup` line that says most about it ([`super::procfs::pick_cgroup`]).
    pub line: Arc<str>,
    /// Container id found in the path.
    pub container_id: Option<Arc<str>>,
}

impl Cgroup {
    /// The cgroup named by a `/proc/<pid>/cgroup` line.
    pub fn from_line(line: String) -> Cgroup {
        let container_id = super::procfs::container_id(&line).map(Into::into);
        Cgroup { line: line.into(), container_id }
    }

    /// Sets the process's cgroup and container id.
    pub fn fill(&self, p: &mut crate::process::Process) {
        p.cgroup = Some(self.line.clone());
        p.container_id = self.container_id.clone();
    }
}

/// The cache, and where the cgroup v2 hierarchy is mounted (none: nothing is learned).
pub(super) struct Cgroups {
    root: Option<PathBuf>,
    by_id: HashMap<u64, Cgroup>,
}

impl Cgroups {
    /// A cache that checks paths under `root`, the cgroup v2 mount point.
    pub fn new(root: Option<PathBuf>) -> Cgroups {
        Cgroups { root, by_id: HashMap::new() }
    }

    /// The cgroup with this id, if learned (never for id 0, unknown: [`Cgroups::learn`] skips it).
    pub fn get(&self, id: u64) -> Option<&Cgroup> {
        self.by_id.get(&id)
    }

    /// Learns `cgroup`, read from `/proc/<pid>/cgroup`, as the cgroup `id`, if its line is the
    /// cgroup v2 one and its directory is that id. (On a host that also mounts cgroup v1, with
    /// processes in the v2 root, the line that says most is a v1 line: not learned.)
    pub fn learn(&mut self, id: u64, cgroup: &Cgroup) {
        let (Some(root), Some(path)) = (&self.root, cgroup.line.strip_prefix("0::")) else { return };
        if id == 0 || self.by_id.contains_key(&id) {
            return;
        }
        let dir = root.join(path.trim_start_matches('/'));
        if std::fs::metadata(dir).is_ok_and(|m| m.ino() == id) {
            if self.by_id.len() >= CACHE_CAP {
                self.by_id.clear();
            }
            self.by_id.insert(id, cgroup.clone());
        }
    }
}

/// Where the cgroup v2 hierarchy is mounted with its root in view, from `mountinfo` text
/// (`/proc/self/mountinfo`); `None` when it is not (cgroup v1 only, or a cgroup namespace's
/// subtree, whose paths would not match `/proc/<pid>/cgroup`).
pub(super) fn v2_mount(mountinfo: &str) -> Option<PathBuf> {
    mountinfo.lines().find_map(|line| {
        // id parent major:minor root mount-point options [optional...] - fstype source options
        let (mount, fs) = line.split_once(" - ")?;
        let fields: Vec<&str> = mount.split(' ').collect();
        let in_view = fs.split(' ').next()? == "cgroup2" && *fields.get(3)? == "/";
        in_view.then(|| fields.get(4).map(|field| unescape_octal(field)))?
    })
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
    fn v2_mount_point_from_mountinfo() {
        let hybrid = "25 30 0:22 / /sys/fs/cgroup ro,nosuid shared:9 - tmpfs tmpfs ro,mode=755\n\
                      26 25 0:23 / /sys/fs/cgroup/unified rw,nosuid shared:10 - cgroup2 cgroup2 rw\n";
        assert_eq!(v2_mount(hybrid), Some(PathBuf::from("/sys/fs/cgroup/unified")));
        let spaced = "26 25 0:23 / /mnt/cg\\040two rw shared:10 - cgroup2 cgroup2 rw\n";
        assert_eq!(v2_mount(spaced), Some(PathBuf::from("/mnt/cg two")));
        let namespaced = "26 25 0:23 /system.slice/x.scope /sys/fs/cgroup rw - cgroup2 cgroup2 rw\n";
        assert_eq!(v2_mount(namespaced), None);
        assert_eq!(v2_mount("26 25 0:23 / /sys/fs/cgroup/memory rw - cgroup cgroup rw,memory\n"), None);
    }

    /// A path is learned only for the id that is its directory's inode number.
    #[test]
    fn learns_a_path_only_for_its_own_id() {
        let root = std::env::temp_dir().join(format!("ksense-cgroups-{}", std::process::id()));
        std::fs::create_dir_all(root.join("a.slice/b.scope")).unwrap();
        let id = std::fs::metadata(root.join("a.slice/b.scope")).unwrap().ino();
        let cgroup = Cgroup::from_line("0::/a.slice/b.scope".into());
        let mut cgroups = Cgroups::new(Some(root.clone()));

        cgroups.learn(id + 1, &cgroup);
        assert!(cgroups.get(id + 1).is_none(), "a moved process's path is not learned for its old id");
        cgroups.learn(id, &Cgroup::from_line("7:memory:/a.slice/b.scope".into()));
        assert!(cgroups.get(id).is_none(), "a v1 line is not learned");
        cgroups.learn(id, &cgroup);
        assert_eq!(&*cgroups.get(id).expect("learned").line, "0::/a.slice/b.scope");
        assert!(cgroups.get(0).is_none());
        let _ = std::fs::remove_dir_all(root);
    }
}
