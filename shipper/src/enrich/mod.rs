//! Enrichment: what the kernel record does not carry (executable path and argv for fork and
//! exit, process group and session, cgroup, container id, user name), from a process table fed
//! by exec and fork events and, on a miss, from `/proc`.
//!
//! Runs on the pipeline thread, never on the ring-buffer reader, so a slow `/proc` read delays
//! sinks but cannot make the kernel drop events. A fork copies its parent's entry and an exec
//! replaces it, so short-lived processes are described even after `/proc/<pid>` is gone.
use std::{collections::HashMap, path::PathBuf, sync::Arc};

use ksense_abi::memory::MEMORY_FILE_CAP;

use crate::event::{Detail, Event, Process};

mod procfs;
mod users;

use users::Users;

/// Entries kept before the table is reset (a missed exit would otherwise keep its entry).
const TABLE_CAP: usize = 65_536;

/// What is known of a live process beyond the kernel record.
#[derive(Debug, Clone, Default)]
struct ProcInfo {
    exe: Option<Arc<[u8]>>,
    args: Option<Arc<[Vec<u8>]>>,
    pgid: Option<u32>,
    sid: Option<u32>,
    cgroup: Option<Arc<str>>,
    container_id: Option<Arc<str>>,
}

/// The process table and the `/proc` and `/etc/passwd` lookups behind it.
pub struct Enricher {
    procs: HashMap<u32, Arc<ProcInfo>>,
    users: Users,
    proc_root: PathBuf,
}

impl Default for Enricher {
    fn default() -> Self {
        Enricher::new("/proc".into(), "/etc/passwd".into())
    }
}

impl Enricher {
    /// An enricher reading `proc_root` (normally `/proc`) and `passwd` (normally `/etc/passwd`).
    pub fn new(proc_root: PathBuf, passwd: PathBuf) -> Enricher {
        Enricher { procs: HashMap::new(), users: Users::new(passwd), proc_root }
    }

    /// Fills what `event.process` lacks and keeps the process table in step with the event.
    pub fn enrich(&mut self, event: &mut Event) {
        if self.procs.len() >= TABLE_CAP {
            self.procs.clear();
        }
        let pid = event.process.pid;
        match &event.detail {
            Detail::Exec(_) => {
                let p = &mut event.process;
                if p.exe.as_deref().is_some_and(|exe| !exe.starts_with(b"/")) {
                    // execve took a relative path: the kernel's own view is /proc/<pid>/exe.
                    if let Some(exe) = procfs::exe(&self.proc_root, pid) {
                        p.exe = Some(exe.into());
                    }
                }
                // An exec keeps process group, session and cgroup: if the process is already
                // gone from /proc, what its fork (or its parent) told us still holds.
                let known = match procfs::read(&self.proc_root, pid, false) {
                    Some(info) => Some(info),
                    None => {
                        let (parent, kthread) = (p.parent_pid, p.kernel_thread);
                        let inherited = self.procs.get(&pid).cloned().or_else(|| self.lookup(parent, kthread));
                        inherited.map(|i| (*i).clone())
                    }
                };
                let p = &mut event.process;
                let mut info = known.unwrap_or_default();
                info.exe = p.exe.clone();
                info.args = p.args.clone();
                self.procs.insert(pid, Arc::new(info));
            }
            Detail::Fork(fork) if !fork.thread() => {
                if let Some(parent) = self.lookup(event.process.parent_pid, event.process.kernel_thread) {
                    self.procs.insert(pid, parent);
                }
            }
            _ => {}
        }
        if let Some(info) = self.lookup(pid, event.process.kernel_thread) {
            fill(&mut event.process, &info);
        }
        if let Detail::MemoryProtect(memory) = &mut event.detail
            && let Some(basename) = &memory.file
        {
            // The kernel record holds the file's basename, exact but cut to MEMORY_FILE_CAP - 1
            // bytes. The maps file has its full path while the process lives; after that, the
            // executable's path serves (the process's own code). Either only when its name
            // agrees with the kernel's; the basename stays otherwise.
            let agrees = |path: &[u8]| {
                let name = path.rsplit(|&b| b == b'/').next().unwrap_or(path);
                name == &basename[..] || (basename.len() == MEMORY_FILE_CAP - 1 && name.starts_with(basename))
            };
            let mapped = procfs::mapping_path(&self.proc_root, pid, memory.start).filter(|path| agrees(path));
            let exe = || event.process.exe.as_deref().filter(|exe| agrees(exe)).map(<[u8]>::to_vec);
            if let Some(path) = mapped.or_else(exe) {
                memory.file = Some(path);
            }
        }
        if let Detail::Exit(exit) = &event.detail
            && exit.process_exit
        {
            self.procs.remove(&pid);
        }
        event.process.owner = self.users.name(event.process.euid);
    }

    /// The entry for `pid`, read from `/proc` on a miss (nothing for kernel threads, which have
    /// neither executable nor argv).
    fn lookup(&mut self, pid: u32, kernel_thread: bool) -> Option<Arc<ProcInfo>> {
        if let Some(info) = self.procs.get(&pid) {
            return Some(info.clone());
        }
        let info = Arc::new(procfs::read(&self.proc_root, pid, !kernel_thread)?);
        self.procs.insert(pid, info.clone());
        Some(info)
    }

    /// Number of processes in the table.
    pub fn len(&self) -> usize {
        self.procs.len()
    }

    /// Whether the table is empty.
    pub fn is_empty(&self) -> bool {
        self.procs.is_empty()
    }
}

/// Copies into `p` what it lacks from `info`.
fn fill(p: &mut Process, info: &ProcInfo) {
    if p.exe.is_none() {
        p.exe = info.exe.clone();
    }
    if p.args.is_none() {
        p.args = info.args.clone();
    }
    p.pgid = p.pgid.or(info.pgid);
    p.sid = p.sid.or(info.sid);
    if p.cgroup.is_none() {
        p.cgroup = info.cgroup.clone();
        p.container_id = info.container_id.clone();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::decode::{exit::ProcessExit, fork::ProcessFork, memory::ProcessMemoryProtect};
    use ksense_abi::Hook;
    use std::time::SystemTime;

    fn event(pid: u32, parent_pid: u32, detail: Detail, hook: Hook) -> Event {
        Event {
            seq: 1,
            time: SystemTime::now(),
            observed_time: SystemTime::now(),
            hook,
            process: Process { pid, tid: pid, parent_pid, euid: 0, ..Process::default() },
            detail,
        }
    }

    #[test]
    fn fork_child_inherits_and_exit_forgets() {
        let dir = std::env::temp_dir().join(format!("ksense-enrich-{}", std::process::id()));
        let proc_dir = dir.join("proc");
        std::fs::create_dir_all(proc_dir.join("10")).unwrap();
        std::fs::write(proc_dir.join("10/cmdline"), b"/bin/parent\0--flag\0").unwrap();
        std::fs::write(proc_dir.join("10/stat"), b"10 (pa) rent) S 1 10 10 0 -1").unwrap();
        std::fs::write(proc_dir.join("10/cgroup"), b"0::/system.slice/docker-0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef.scope\n").unwrap();
        std::os::unix::fs::symlink("/bin/parent", proc_dir.join("10/exe")).unwrap();
        std::fs::write(dir.join("passwd"), b"root:x:0:0:root:/root:/bin/sh\n").unwrap();
        let mut enricher = Enricher::new(proc_dir, dir.join("passwd"));

        let fork = ProcessFork { clone_flags: 0x11, code_start: 0, code_end: 0 };
        let mut child = event(11, 10, Detail::Fork(fork), Hook::TpBtfTaskNewtask);
        enricher.enrich(&mut child);
        let p = &child.process;
        assert_eq!(p.exe.as_deref(), Some(&b"/bin/parent"[..]));
        assert_eq!(p.args.as_deref().map(<[_]>::len), Some(2));
        assert_eq!((p.pgid, p.sid), (Some(10), Some(10)));
        assert_eq!(p.owner.as_deref(), Some("root"));
        assert_eq!(
            p.container_id.as_deref(),
            Some("0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef")
        );
        assert_eq!(enricher.len(), 2);

        let exit = ProcessExit { status: 0, process_exit: true };
        let mut gone = event(11, 10, Detail::Exit(exit), Hook::TpBtfSchedProcessExit);
        enricher.enrich(&mut gone);
        assert_eq!(gone.process.exe.as_deref(), Some(&b"/bin/parent"[..]));
        assert_eq!(enricher.len(), 1);
        std::fs::remove_dir_all(dir).unwrap();
    }

    /// The file a code change of process `pid` (running `exe`, the kernel's basename `file`) is
    /// reported with, `/proc` being `proc_dir`.
    fn changed_file(proc_dir: &std::path::Path, pid: u32, exe: &[u8], file: &[u8]) -> Vec<u8> {
        let change = ProcessMemoryProtect {
            start: 0x1000,
            len: 4096,
            count: 1,
            old_prot: Some(5),
            new_prot: 7,
            region: Some(ksense_abi::memory::Region::MainCode),
            result: Some(0),
            file: Some(file.to_vec()),
        };
        let mut e = event(pid, 1, Detail::MemoryProtect(change), Hook::TracepointMprotect);
        e.process.exe = Some(exe.into());
        Enricher::new(proc_dir.into(), "/nonexistent".into()).enrich(&mut e);
        let Detail::MemoryProtect(change) = e.detail else { unreachable!() };
        change.file.unwrap()
    }

    #[test]
    fn mapped_file_path_agrees_with_the_kernel_name() {
        let dir = std::env::temp_dir().join(format!("ksense-enrich-maps-{}", std::process::id()));
        std::fs::create_dir_all(dir.join("30")).unwrap();
        std::fs::write(dir.join("30/maps"), b"1000-2000 r-xp 00000000 08:01 42 /tmp/a\\012b\n").unwrap();
        // Alive: the maps file's path, its newline escape undone.
        assert_eq!(changed_file(&dir, 30, b"/x/a\nb", b"a\nb"), b"/tmp/a\nb");
        // Gone: the executable's path, also when the kernel's name is cut to 63 bytes.
        let long = [b'n'; 100];
        let exe = [&b"/x/"[..], &long].concat();
        assert_eq!(changed_file(&dir, 31, &exe, &long[..MEMORY_FILE_CAP - 1]), exe);
        // A name that does not agree: the kernel's basename stays.
        assert_eq!(changed_file(&dir, 31, b"/x/other", b"mine"), b"mine");
        std::fs::remove_dir_all(dir).unwrap();
    }
}
