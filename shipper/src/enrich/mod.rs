//! Enrichment: what the kernel record does not carry (executable path and argv for fork and
//! exit, cgroup path, container id, user name, and process group and session where the probes
//! could not read them), from a process table fed by exec and fork events, a cache of cgroup
//! paths by cgroup id, and, on a miss, `/proc`.
//!
//! Runs on the pipeline thread, never on the ring-buffer reader, so a slow `/proc` read delays
//! sinks but cannot make the kernel drop events. A fork copies its parent's entry and an exec
//! replaces it, so short-lived processes are described even after `/proc/<pid>` is gone.
use std::{path::PathBuf, sync::Arc};

use crate::{
    event::Event,
    identity::IdentitySlot,
    kinds::{
        Detail,
        exec::{FileId, ProcessExec},
    },
    lru::LruMap,
    process::Process,
};

mod cgroups;
mod procfs;
mod users;

pub use cgroups::Mounts;
use cgroups::{Cgroup, Cgroups};
use users::Users;

/// Entries kept at most; past that the one used longest ago is forgotten (a process whose exit
/// was lost, in a ring-buffer overrun, would otherwise keep its entry), never the whole table.
const TABLE_CAP: usize = 65_536;

/// Ancestors named in `ksense.process.lineage` at most.
const LINEAGE_CAP: usize = 16;

/// What is known of a live process beyond the kernel record.
#[derive(Debug, Clone, Default)]
struct ProcInfo {
    exe: Option<Arc<[u8]>>,
    args: Option<Arc<[Vec<u8>]>>,
    args_truncated: bool,
    /// The file `exe` and `args` belong to, when known: an event whose task runs another image
    /// (an exec the table missed) does not match the entry.
    executable: Option<FileId>,
    pgid: Option<u32>,
    sid: Option<u32>,
    cgroup: Option<Cgroup>,
    /// The parent's pid when the entry was made: where its lineage continues.
    ppid: u32,
    /// When the process started; `None` when unknown. Tells the process, or a parent, from a
    /// later process that reused its pid, with no `/proc` read (see [`Enricher::lookup`]).
    started: Option<procfs::Started>,
    /// The executed file's build-id and hash, from the exec (a fork child's is its parent's:
    /// the same image); filled by the hashing worker, possibly after the exec's record.
    identity: Option<IdentitySlot>,
}

/// The process table and the `/proc` and `/etc/passwd` lookups behind it.
pub struct Enricher {
    procs: LruMap<u32, Arc<ProcInfo>>,
    cgroups: Cgroups,
    users: Users,
    proc_root: PathBuf,
    /// What an event of a process whose exec was not seen says of its executable's identity,
    /// when identities are reported.
    unseen: Option<IdentitySlot>,
}

impl Default for Enricher {
    fn default() -> Self {
        let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
        Enricher::new("/proc".into(), "/etc/passwd".into(), Mounts::from_mountinfo(&mountinfo))
    }
}

impl Enricher {
    /// An enricher reading `proc_root` (normally `/proc`) and `passwd` (normally `/etc/passwd`),
    /// with the cgroup hierarchies mounted where `cgroup_mounts` says.
    pub fn new(proc_root: PathBuf, passwd: PathBuf, cgroup_mounts: Mounts) -> Enricher {
        Enricher { procs: LruMap::new(TABLE_CAP), cgroups: Cgroups::new(cgroup_mounts), users: Users::new(passwd), proc_root, unseen: None }
    }

    /// Executables are hashed: an event of a process whose exec was not seen (one older than
    /// ksense, or whose exec was lost) says so (`hash_skipped = unseen`) rather than nothing.
    pub fn report_unseen_identities(&mut self) {
        self.unseen = Some(IdentitySlot::unseen());
    }

    /// What an exec (the executed file, argv, process group, session, cgroup) or a fork (the
    /// parent's entry) teaches the table; an exec also fills `event.process.exe`.
    fn learn(&mut self, event: &mut Event) {
        let pid = event.process.pid;
        match &event.detail {
            Detail::Exec(exec) => {
                if event.process.exe.is_none() {
                    self.locate_executable(&mut event.process, exec);
                }
                let p = &mut event.process;
                // Only what neither the kernel (process group and session, on most kernels) nor
                // the cgroup cache told is read from /proc: on the hot path, nothing. What is
                // read counts only if /proc/<pid> still is this process (checked after).
                let kernel = described(p);
                let still = |root: &std::path::Path| kernel.is_none_or(|k| procfs::is_process(root, pid, k.start_ns));
                let ids = p.pgid.zip(p.sid).or_else(|| procfs::ids(&self.proc_root, pid).filter(|_| still(&self.proc_root)));
                let cgroup = match self.cgroups.get(p.cgroup_id) {
                    Some(known) => Some(known),
                    None => procfs::cgroup(&self.proc_root, pid)
                        .filter(|_| still(&self.proc_root))
                        .map(|read| self.cgroups.learn(p.cgroup_id, read)),
                };
                // An exec keeps process group, session and cgroup: if the process is already
                // gone from /proc, what its fork (or its parent) told us still holds.
                let inherited = if ids.is_none() || cgroup.is_none() {
                    let (parent, kthread) = (p.parent_pid, p.kernel_thread);
                    self.procs.get(&pid).cloned().or_else(|| self.lookup(parent, kthread, 0, None))
                } else {
                    None
                };
                let inherited = inherited.as_deref();
                let info = ProcInfo {
                    exe: p.exe.clone(),
                    args: p.args.clone(),
                    args_truncated: p.args_truncated,
                    executable: exec.executed_file,
                    pgid: ids.map(|(pgid, _)| pgid).or(inherited.and_then(|i| i.pgid)),
                    sid: ids.map(|(_, sid)| sid).or(inherited.and_then(|i| i.sid)),
                    cgroup: cgroup.or_else(|| inherited.and_then(|i| i.cgroup.clone())),
                    ppid: p.parent_pid,
                    started: started(p),
                    identity: p.identity.clone(),
                };
                self.procs.insert(pid, Arc::new(info));
            }
            Detail::Fork(fork) if !fork.thread() => {
                let start_ns = fork.parent_start_ns;
                let parent = (start_ns != 0).then_some(procfs::KernelProcess { start_ns, executable: None });
                if let Some(parent) = self.lookup(event.process.parent_pid, event.process.kernel_thread, 0, parent) {
                    // The child's image is its parent's until it execs; the entry is the child's.
                    let p = &event.process;
                    let child = ProcInfo { ppid: p.parent_pid, started: started(p), ..(*parent).clone() };
                    self.procs.insert(pid, Arc::new(child));
                }
            }
            _ => {}
        }
    }

    /// Fills `p.exe` of an exec with the canonical path of the file the kernel executed, if a
    /// path still leads to it. Never the execve string as it is, which the caller chose (`..`,
    /// symlinks, /dev/fd/N): path rules must not match what a process can pick. Done as soon as
    /// the exec is read, before it waits for its hash: the process, or the parent whose
    /// directory a relative path is resolved from, may be gone a moment later.
    pub fn locate_executable(&self, p: &mut Process, exec: &ProcessExec) {
        let exec_path = exec.exec_path.as_deref();
        p.exe = exec
            .executed_file
            .and_then(|file| crate::kinds::exec::executed_path(&self.proc_root, p.pid, p.parent_pid, exec_path, file))
            .map(Into::into);
    }

    /// Fills what `event.process` lacks and keeps the process table in step with the event.
    pub fn enrich(&mut self, event: &mut Event) {
        self.learn(event);
        let pid = event.process.pid;
        if let Some(cgroup) = self.cgroups.get(event.process.cgroup_id) {
            // The event's own cgroup, even if the process moved since the table learned one.
            cgroup.fill(&mut event.process);
        }
        let kernel = described(&event.process);
        if let Some(info) = self.lookup(pid, event.process.kernel_thread, event.process.cgroup_id, kernel) {
            fill(&mut event.process, &info);
        }
        // An exec without a slot is one whose file the kernel could not describe; a kernel
        // thread runs no executable.
        if event.process.identity.is_none() && !event.process.kernel_thread && !matches!(event.detail, Detail::Exec(_)) {
            event.process.identity = self.unseen.clone();
        }
        let p = &mut event.process;
        let ancestors = self.ancestors(p.parent_pid, started(p));
        if let Some((_, parent)) = ancestors.first() {
            p.parent_exe = parent.exe.clone();
            p.parent_args = parent.args.clone();
        }
        p.lineage = ancestors.into_iter().map(|(pid, info)| (pid, info.exe.clone())).collect();
        if let Detail::MemoryProtect(memory) = &mut event.detail {
            memory.resolve_file(&self.proc_root, pid, event.process.exe.as_deref());
        }
        self.forget(event);
        event.process.owner = self.users.name(event.process.euid);
    }

    /// Keeps the process table in step with an event that makes no record (rate limited): what
    /// an exec or a fork teaches it and an exit takes from it, so that later events of the
    /// process, or of its children, are described as they would have been, and a gone
    /// process leaves no entry.
    pub fn track(&mut self, event: &mut Event) {
        self.learn(event);
        self.forget(event);
    }

    /// An exit takes its process from the table.
    fn forget(&mut self, event: &Event) {
        if let Detail::Exit(exit) = &event.detail
            && exit.process_exit
        {
            self.procs.remove(&event.process.pid);
        }
    }

    /// The entry for `pid`, read from `/proc` on a miss (nothing for kernel threads, which have
    /// neither executable nor argv). `cgroup_id`: as for [`Enricher::read_proc`]; `kernel`: the
    /// kernel's description of the process, which the entry, or else `/proc/<pid>`, must match
    /// (`None` when the event says nothing of it, as of an exec's parent: trusted as it is).
    fn lookup(&mut self, pid: u32, kernel_thread: bool, cgroup_id: u64, kernel: Option<procfs::KernelProcess>) -> Option<Arc<ProcInfo>> {
        if let Some(info) = self.procs.get(&pid).cloned() {
            if same_process(&info, kernel) {
                return Some(info);
            }
            // An entry whose process is gone (its exit was lost: a full ring buffer) must not
            // describe the process that reused its pid.
            self.procs.remove(&pid);
        }
        let info = Arc::new(self.read_proc(pid, !kernel_thread, cgroup_id, kernel)?);
        self.procs.insert(pid, info.clone());
        // The image /proc shows now is not the one the event's task ran (it exec'd since): the
        // entry is right for the events that follow, not for this one.
        if runs_another_image(&info, kernel) {
            return None;
        }
        Some(info)
    }

    /// The ancestors of a process whose parent is `ppid` and which started `child_started`,
    /// parent first, from the table alone (no `/proc` read): at most [`LINEAGE_CAP`], ending
    /// where the table has no entry for the next parent, or its entry is of a process that
    /// started after its child (a reused pid), or at pid 1 (whose parent is 0). The cap also
    /// ends a loop that entries of unknown start times could make.
    fn ancestors(&mut self, mut ppid: u32, mut child_started: Option<procfs::Started>) -> Vec<(u32, Arc<ProcInfo>)> {
        let mut chain = Vec::new();
        while ppid != 0 && chain.len() < LINEAGE_CAP {
            let Some(info) = self.procs.get(&ppid).cloned() else { break };
            if let (Some(parent), Some(child)) = (info.started, child_started)
                && !parent.may_precede(child)
            {
                break;
            }
            let next = info.ppid;
            child_started = info.started;
            chain.push((ppid, info));
            ppid = next;
        }
        chain
    }

    /// Fills the table from `/proc` with every process running now (at most the table's
    /// capacity), so that processes started before ksense have an entry and their children a
    /// lineage. Done once, at start, on the pipeline thread before its first event. Returns
    /// how many entries it made.
    pub fn seed(&mut self) -> usize {
        let Ok(dir) = std::fs::read_dir(&self.proc_root) else { return 0 };
        let pids: Vec<u32> = dir.filter_map(|entry| entry.ok()?.file_name().to_str()?.parse().ok()).take(TABLE_CAP).collect();
        let mut seeded = 0;
        for pid in pids {
            if let Some(info) = self.read_proc(pid, true, 0, None) {
                self.procs.insert(pid, Arc::new(info));
                seeded += 1;
            }
        }
        seeded
    }

    /// What `/proc/<pid>` tells (see [`procfs::read`]); its cgroup is learned as `cgroup_id`,
    /// the id the kernel gave for the process in the event at hand (0 for any other process).
    fn read_proc(&mut self, pid: u32, with_image: bool, cgroup_id: u64, kernel: Option<procfs::KernelProcess>) -> Option<ProcInfo> {
        let mut info = procfs::read(&self.proc_root, pid, with_image, kernel)?;
        info.cgroup = info.cgroup.map(|read| self.cgroups.learn(cgroup_id, read));
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

/// The kernel's description of `p`, against which the table and `/proc` are checked; `None`
/// when the probes could not read its start time (then both are trusted as they are).
fn described(p: &Process) -> Option<procfs::KernelProcess> {
    (p.start_ns != 0).then_some(procfs::KernelProcess { start_ns: p.start_ns, executable: p.executable })
}

/// Whether the table entry `info` describes the process the kernel described as `kernel`: not
/// if the kernel says it runs another file than the entry's (an exec the table missed, in a
/// ring-buffer overrun), nor if it started at another time than the entry's process (a later
/// process that reused the pid: the exit was lost). An event of any thread of the process
/// matches: the kernel gives every thread the process's start time. Unknown on either side:
/// trusted, as before the kernel gave start times.
fn same_process(info: &ProcInfo, kernel: Option<procfs::KernelProcess>) -> bool {
    !runs_another_image(info, kernel) && info.started.zip(kernel).is_none_or(|(started, kernel)| started.may_be(kernel.start_ns))
}

/// Whether the kernel says process `kernel` runs another file than the one `info`'s image is
/// of (both known). Inode numbers only: the device `stat` gives is not the kernel's on btrfs (see
/// [`FileId::is`]), and an image whose inode number is that of the one before, on another
/// file system, is not told apart.
fn runs_another_image(info: &ProcInfo, kernel: Option<procfs::KernelProcess>) -> bool {
    matches!((info.executable, kernel.and_then(|k| k.executable)), (Some(entry), Some(kernel)) if entry.ino != kernel.ino)
}

/// When the kernel says process `p` started.
fn started(p: &Process) -> Option<procfs::Started> {
    (p.start_ns != 0).then(|| procfs::Started::exactly(p.start_ns))
}

/// Copies into `p` what it lacks from `info`.
fn fill(p: &mut Process, info: &ProcInfo) {
    if p.exe.is_none() {
        p.exe = info.exe.clone();
    }
    if p.args.is_none() {
        p.args = info.args.clone();
        p.args_truncated = info.args_truncated;
    }
    if p.identity.is_none() {
        p.identity = info.identity.clone();
    }
    p.pgid = p.pgid.or(info.pgid);
    p.sid = p.sid.or(info.sid);
    if p.cgroup.is_none()
        && let Some(cgroup) = &info.cgroup
    {
        cgroup.fill(p);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kinds::{exec::ProcessExec, exit::ProcessExit, fork::ProcessFork, memory::ProcessMemoryProtect};
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
        let scope = "system.slice/docker-0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef.scope";
        std::fs::write(proc_dir.join("10/cgroup"), format!("0::/{scope}\n")).unwrap();
        std::fs::create_dir_all(dir.join("cgroup").join(scope)).unwrap();
        std::os::unix::fs::symlink("/bin/parent", proc_dir.join("10/exe")).unwrap();
        std::fs::write(dir.join("passwd"), b"root:x:0:0:root:/root:/bin/sh\n").unwrap();
        let mounts = Mounts { v2: Some(dir.join("cgroup")), v1: Vec::new() };
        let mut enricher = Enricher::new(proc_dir, dir.join("passwd"), mounts);

        let fork = ProcessFork { clone_flags: 0x11, code_start: 0, code_end: 0, parent_start_ns: 0 };
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

    /// A full table forgets the entry used longest ago, not every entry: a parent forking
    /// more children than the table holds (their exits lost) is still described from it, when
    /// /proc no longer has it.
    #[test]
    fn a_full_table_forgets_the_least_recently_used_entry_only() {
        let dir = std::env::temp_dir().join(format!("ksense-enrich-full-{}", std::process::id()));
        let proc_dir = dir.join("proc");
        std::fs::create_dir_all(proc_dir.join("10")).unwrap();
        std::fs::write(proc_dir.join("10/cmdline"), b"/bin/parent\0").unwrap();
        std::fs::write(proc_dir.join("10/stat"), b"10 (parent) S 1 10 10 0 -1").unwrap();
        let mut enricher = Enricher::new(proc_dir.clone(), "/nonexistent".into(), Mounts::default());
        let fork = |child: u32| {
            let detail = ProcessFork { clone_flags: 0x11, code_start: 0, code_end: 0, parent_start_ns: 0 };
            event(child, 10, Detail::Fork(detail), Hook::TpBtfTaskNewtask)
        };
        enricher.enrich(&mut fork(11));
        std::fs::remove_dir_all(proc_dir.join("10")).unwrap();
        for child in 12..12 + TABLE_CAP as u32 {
            enricher.track(&mut fork(child));
        }
        assert_eq!(enricher.len(), TABLE_CAP);
        let mut last = fork(1_000_000);
        enricher.enrich(&mut last);
        assert_eq!(last.process.args.as_deref().map(<[_]>::len), Some(1), "described from the parent's entry");
        std::fs::remove_dir_all(dir).unwrap();
    }

    /// Once one exec in a cgroup taught its path (checked against the cgroup directory's inode),
    /// an exec whose process group and session the kernel gave reads nothing from /proc: here
    /// the second process has no /proc entry at all, and still gets its cgroup and container.
    #[test]
    fn an_exec_in_a_known_cgroup_reads_nothing_from_proc() {
        use std::os::unix::fs::MetadataExt;
        let dir = std::env::temp_dir().join(format!("ksense-enrich-cgroup-{}", std::process::id()));
        let (proc_dir, cgroup_root) = (dir.join("proc"), dir.join("cgroup"));
        let id = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";
        let scope = format!("system.slice/docker-{id}.scope");
        std::fs::create_dir_all(cgroup_root.join(&scope)).unwrap();
        let cgroup_id = std::fs::metadata(cgroup_root.join(&scope)).unwrap().ino();
        std::fs::create_dir_all(proc_dir.join("20")).unwrap();
        std::fs::write(proc_dir.join("20/stat"), b"20 (a) S 1 20 20 0 -1").unwrap();
        std::fs::write(proc_dir.join("20/cgroup"), format!("0::/{scope}\n")).unwrap();
        let mut enricher = Enricher::new(proc_dir, "/nonexistent".into(), Mounts { v2: Some(cgroup_root), v1: Vec::new() });
        let exec = |pid: u32| {
            let detail = ProcessExec { old_tid: pid, code_start: 0, code_end: 0, exec_path: Some(b"/bin/true".to_vec()), executed_file: None, ..Default::default() };
            let mut e = event(pid, 1, Detail::Exec(detail), Hook::TpBtfSchedProcessExec);
            (e.process.pgid, e.process.sid, e.process.cgroup_id) = (Some(pid), Some(7), cgroup_id);
            e
        };

        let mut first = exec(20);
        enricher.enrich(&mut first);
        let mut second = exec(21);
        enricher.enrich(&mut second);
        for (e, pid) in [(&first, 20), (&second, 21)] {
            let p = &e.process;
            assert_eq!(p.cgroup.as_deref(), Some(format!("0::/{scope}").as_str()), "pid {pid}");
            assert_eq!(p.container_id.as_deref(), Some(id), "pid {pid}");
            assert_eq!((p.pgid, p.sid), (Some(pid), Some(7)), "pid {pid}: the kernel's, not /proc's");
        }
        // A later event of the second process is described from the table the exec filled.
        let exit = ProcessExit { status: 0, process_exit: true };
        let mut gone = event(21, 1, Detail::Exit(exit), Hook::TpBtfSchedProcessExit);
        enricher.enrich(&mut gone);
        assert_eq!((gone.process.pgid, gone.process.container_id.as_deref()), (Some(21), Some(id)));
        std::fs::remove_dir_all(dir).unwrap();
    }

    /// A table entry made for one process does not describe a later process with its pid (its
    /// exit was lost): an event of any of its threads with another start time is a miss; an
    /// event of any thread of the entry's process (which the kernel gives the process's start
    /// time) is a hit, with no /proc read (there is no /proc here).
    #[test]
    fn a_table_entry_does_not_describe_a_process_that_reused_its_pid() {
        let dir = std::env::temp_dir().join(format!("ksense-enrich-reuse-{}", std::process::id()));
        let proc_dir = dir.join("proc");
        std::fs::create_dir_all(&proc_dir).unwrap();
        let mut enricher = Enricher::new(proc_dir, "/nonexistent".into(), Mounts::default());
        let with_start = |mut e: Event, tid: u32, start_ns: u64| {
            (e.process.tid, e.process.start_ns) = (tid, start_ns);
            e
        };
        let detail = ProcessExec { old_tid: 30, code_start: 0, code_end: 0, exec_path: Some(b"/bin/old".to_vec()), executed_file: None, ..Default::default() };
        let mut exec = with_start(event(30, 1, Detail::Exec(detail), Hook::TpBtfSchedProcessExec), 30, 1_000);
        exec.process.args = Some(vec![b"old".to_vec()].into());
        enricher.enrich(&mut exec);
        let exit = || Detail::Exit(ProcessExit { status: 0, process_exit: false });
        let mut same = with_start(event(30, 1, exit(), Hook::TpBtfSchedProcessExit), 30, 1_000);
        enricher.enrich(&mut same);
        assert_eq!(same.process.args.as_deref().map(<[_]>::len), Some(1), "the entry's own task is described");
        let mut other_thread = with_start(event(30, 1, exit(), Hook::TpBtfSchedProcessExit), 32, 1_000);
        enricher.enrich(&mut other_thread);
        assert_eq!(other_thread.process.args.as_deref().map(<[_]>::len), Some(1), "another thread of the process");
        let mut reused = with_start(event(30, 1, exit(), Hook::TpBtfSchedProcessExit), 30, 9_000);
        enricher.enrich(&mut reused);
        assert_eq!(reused.process.args, None, "another process with the same pid and task id");
        let mut exec = with_start(event(30, 1, Detail::Exec(ProcessExec { old_tid: 30, code_start: 0, code_end: 0, exec_path: None, executed_file: None, ..Default::default() }), Hook::TpBtfSchedProcessExec), 30, 1_000);
        exec.process.args = Some(vec![b"old".to_vec()].into());
        enricher.enrich(&mut exec);
        let mut thread = with_start(event(30, 1, exit(), Hook::TpBtfSchedProcessExit), 31, 5_000);
        enricher.enrich(&mut thread);
        assert_eq!(thread.process.args, None, "a thread of a later process");
        std::fs::remove_dir_all(dir).unwrap();
    }

    /// A process in the fake `/proc` at `proc_dir`: its parent, start time (clock ticks),
    /// executable and argv.
    fn fake_process(proc_dir: &std::path::Path, pid: u32, ppid: u32, ticks: u64, exe: &[u8], args: &[u8]) {
        use std::os::unix::ffi::OsStrExt;
        let dir = proc_dir.join(pid.to_string());
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("stat"), format!("{pid} (p) S {ppid} 1 1 0 -1 0 0 0 0 0 0 0 0 0 20 0 1 0 {ticks} 0")).unwrap();
        std::fs::write(dir.join("cmdline"), args).unwrap();
        std::os::unix::fs::symlink(std::ffi::OsStr::from_bytes(exe), dir.join("exe")).unwrap();
    }

    /// An event of a process that exec'd since (its exec not seen): the kernel names the file
    /// the event's image ran, `/proc` now shows another. Neither the table's entry nor a fresh
    /// `/proc` read describes the event with the new image; an event of the new image is.
    #[test]
    fn an_event_of_the_image_before_an_unseen_exec_is_not_given_the_new_one() {
        let dir = std::env::temp_dir().join(format!("ksense-enrich-image-{}", std::process::id()));
        let proc_dir = dir.join("proc");
        let (old, new) = (dir.join("old"), dir.join("new"));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(&old, b"old image").unwrap();
        std::fs::write(&new, b"new image").unwrap();
        let id = |path: &std::path::Path| FileId::of(&std::fs::metadata(path).unwrap());
        fake_process(&proc_dir, 200, 1, 8, new.as_os_str().as_encoded_bytes(), b"new\0");
        // Started within clock tick 8 (of 100 per second on Linux).
        let start_ns = 8 * 1_000_000_000 / unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as u64;
        let enriched = |enricher: &mut Enricher, executable: FileId| {
            let exit = ProcessExit { status: 0, process_exit: false };
            let mut e = event(200, 1, Detail::Exit(exit), Hook::TpBtfSchedProcessExit);
            (e.process.start_ns, e.process.executable) = (start_ns, Some(executable));
            enricher.enrich(&mut e);
            e.process.exe
        };

        let mut enricher = Enricher::new(proc_dir.clone(), "/nonexistent".into(), Mounts::default());
        assert_eq!(enriched(&mut enricher, id(&old)), None, "a table miss: /proc shows another image");
        let mut enricher = Enricher::new(proc_dir, "/nonexistent".into(), Mounts::default());
        assert_eq!(enricher.seed(), 1);
        assert_eq!(enriched(&mut enricher, id(&old)), None, "the seeded entry is of another image");
        let exe = enriched(&mut enricher, id(&new));
        assert_eq!(exe.as_deref(), Some(new.as_os_str().as_encoded_bytes()), "an event of the image /proc shows");
        std::fs::remove_dir_all(dir).unwrap();
    }

    /// An exit of `pid` (child of `ppid`, started at `start_ns`), enriched, as a record.
    fn exit_of(enricher: &mut Enricher, pid: u32, ppid: u32, start_ns: u64) -> crate::record::LogRecord {
        let exit = ProcessExit { status: 0, process_exit: true };
        let mut e = event(pid, ppid, Detail::Exit(exit), Hook::TpBtfSchedProcessExit);
        e.process.start_ns = start_ns;
        enricher.enrich(&mut e);
        e.to_record()
    }

    /// The lineage an exit of `pid` (child of `ppid`, started at `start_ns`) is reported with.
    fn lineage_of(enricher: &mut Enricher, pid: u32, ppid: u32, start_ns: u64) -> Vec<String> {
        match exit_of(enricher, pid, ppid, start_ns).attribute(crate::schema::KSENSE_PROCESS_LINEAGE) {
            Some(crate::record::Value::StrArray(items)) => items.clone(),
            None => Vec::new(),
            other => panic!("lineage: {other:?}"),
        }
    }

    /// Processes seeded from /proc: the lineage names each ancestor parent first and ends at
    /// `1:`; the parent's path and command line come with it, rendered as other process text.
    #[test]
    fn lineage_follows_the_seeded_table_up_to_pid_1() {
        use crate::{record::Value, schema};
        let dir = std::env::temp_dir().join(format!("ksense-enrich-lineage-{}", std::process::id()));
        let proc_dir = dir.join("proc");
        fake_process(&proc_dir, 1, 0, 5, b"/sbin/init", b"/sbin/init\0");
        fake_process(&proc_dir, 100, 1, 6, b"/bin/a\\z", b"a\0");
        fake_process(&proc_dir, 101, 100, 7, b"/bin/C:\\b\xff", b"b\0");
        fake_process(&proc_dir, 102, 101, 8, b"/bin/c", b"c\0-x\\y\0");
        let mut enricher = Enricher::new(proc_dir, "/nonexistent".into(), Mounts::default());
        assert_eq!(enricher.seed(), 4);
        let record = exit_of(&mut enricher, 103, 102, 1_000_000_000);
        assert_eq!(record.attribute(schema::KSENSE_PROCESS_PARENT_EXECUTABLE_PATH), Some(&Value::Str("/bin/c".into())));
        assert_eq!(record.attribute(schema::KSENSE_PROCESS_PARENT_COMMAND_LINE), Some(&Value::Str("c -x\\y".into())));
        // One path is not UTF-8: every element is escaped (backslashes doubled), as argv would be.
        let lineage = ["102:/bin/c", "101:/bin/C:\\\\b\\xff", "100:/bin/a\\\\z", "1:/sbin/init"].map(String::from).to_vec();
        assert_eq!(record.attribute(schema::KSENSE_PROCESS_LINEAGE), Some(&Value::StrArray(lineage)));
        let escaped = vec![schema::KSENSE_PROCESS_LINEAGE.to_owned()];
        assert_eq!(record.attribute(schema::KSENSE_ESCAPED), Some(&Value::StrArray(escaped)), "only the lineage held a byte that is not UTF-8");
        std::fs::remove_dir_all(dir).unwrap();
    }

    /// A missing entry ends the chain; so does a parent entry of a process that started after
    /// its child (the parent's pid reused); entries of unknown start times that loop are cut at
    /// the cap.
    #[test]
    fn lineage_stops_at_a_missing_link_a_reused_pid_and_the_cap() {
        let dir = std::env::temp_dir().join(format!("ksense-enrich-lineage-stop-{}", std::process::id()));
        let proc_dir = dir.join("proc");
        fake_process(&proc_dir, 200, 199, 5, b"/bin/a", b"a\0");
        fake_process(&proc_dir, 201, 200, 6, b"/bin/b", b"b\0");
        let mut enricher = Enricher::new(proc_dir, "/nonexistent".into(), Mounts::default());
        assert_eq!(enricher.seed(), 2);
        let child_start = 1_000_000_000;
        assert_eq!(lineage_of(&mut enricher, 202, 201, child_start), ["201:/bin/b", "200:/bin/a"], "199 is not in the table");
        // 201's pid reused by a process started after 202: not 202's parent.
        let exec = |pid: u32, ppid: u32, start_ns: u64| {
            let detail = ProcessExec { old_tid: pid, code_start: 0, code_end: 0, exec_path: None, executed_file: None, ..Default::default() };
            let mut e = event(pid, ppid, Detail::Exec(detail), Hook::TpBtfSchedProcessExec);
            e.process.start_ns = start_ns;
            e
        };
        enricher.enrich(&mut exec(201, 200, child_start + 1));
        assert_eq!(lineage_of(&mut enricher, 202, 201, child_start), Vec::<String>::new());
        // Two entries naming each other as parent, start times unknown: the cap ends the loop.
        enricher.enrich(&mut exec(300, 301, 0));
        enricher.enrich(&mut exec(301, 300, 0));
        let lineage = lineage_of(&mut enricher, 302, 301, 0);
        assert_eq!(lineage.len(), LINEAGE_CAP);
        assert_eq!(&lineage[..2], ["301:", "300:"]);
        std::fs::remove_dir_all(dir).unwrap();
    }

    /// What lineage costs per event: enrichment of an event (a thread's exit, which teaches
    /// the table nothing, so no `/proc` read is made) and its rendering as a record, for a
    /// process with 0, 4 and 15 ancestors in the table. It prints, it does not assert speed:
    /// `cargo test --release -p ksense --lib lineage_cost -- --ignored --nocapture`
    /// (`KSENSE_BENCH_N` events per depth, default 200,000). Figures in docs/BENCHMARKS.md.
    #[test]
    #[ignore = "benchmark: run in release with --ignored --nocapture"]
    fn lineage_cost_per_event() {
        let n: u32 = std::env::var("KSENSE_BENCH_N").ok().and_then(|n| n.parse().ok()).unwrap_or(200_000);
        for depth in [0u32, 4, 15] {
            let dir = std::env::temp_dir().join(format!("ksense-enrich-bench-{depth}-{}", std::process::id()));
            let proc_dir = dir.join("proc");
            // The chain 1 <- 1001 <- ... <- 1000+depth; the process's parent is the last (or,
            // for no ancestor, a pid the table does not hold).
            let (first, last) = (1001, 1000 + depth);
            for pid in first..=last {
                let ppid = if pid == first { 1 } else { pid - 1 };
                fake_process(&proc_dir, pid, ppid, 5, b"/usr/bin/bash", b"bash\0--login\0");
            }
            let parent = if depth == 0 { 999 } else { last };
            fake_process(&proc_dir, 5000, parent, 6, b"/usr/bin/python3.11", b"python3\0-m\0pytest\0");
            std::fs::write(dir.join("passwd"), b"root:x:0:0:root:/root:/bin/sh\n").unwrap();
            let mut enricher = Enricher::new(proc_dir, dir.join("passwd"), Mounts::default());
            enricher.seed();
            let exit = ProcessExit { status: 0, process_exit: false };
            let mut template = event(5000, parent, Detail::Exit(exit), Hook::TpBtfSchedProcessExit);
            // Within its seeded clock tick (6, of 10 ms): the table entry is a hit, no /proc read.
            template.process.start_ns = 65_000_000;
            let started = std::time::Instant::now();
            let mut attributes = 0;
            for _ in 0..n {
                let mut e = template.clone();
                enricher.enrich(&mut e);
                attributes += e.to_record().attributes.len();
            }
            let per_event = started.elapsed().as_nanos() / u128::from(n);
            let mut last_event = template.clone();
            enricher.enrich(&mut last_event);
            let ancestors = last_event.process.lineage.len();
            println!("lineage depth={ancestors}: {per_event} ns per event (enrich + record), {} attributes", attributes / n as usize);
            std::fs::remove_dir_all(dir).unwrap();
        }
    }

    /// The file a code change of process `pid` (running `exe`, the kernel's basename `file`) in
    /// `region` is reported with, `/proc` being `proc_dir`.
    fn changed_file(proc_dir: &std::path::Path, pid: u32, exe: &[u8], file: &[u8], region: ksense_abi::memory::Region) -> Vec<u8> {
        let change = ProcessMemoryProtect {
            operation: crate::kinds::memory::Operation::Mprotect,
            start: 0x1000,
            len: 4096,
            count: 1,
            old_prot: Some(5),
            new_prot: 7,
            region: Some(region),
            result: Some(0),
            file: Some(file.to_vec()),
            spans_mappings: false,
        };
        let mut e = event(pid, 1, Detail::MemoryProtect(change), Hook::TracepointMprotect);
        e.process.exe = Some(exe.into());
        Enricher::new(proc_dir.into(), "/nonexistent".into(), Mounts::default()).enrich(&mut e);
        let Detail::MemoryProtect(change) = e.detail else { unreachable!() };
        change.file.unwrap()
    }

    #[test]
    fn mapped_file_path_agrees_with_the_kernel_name() {
        let dir = std::env::temp_dir().join(format!("ksense-enrich-maps-{}", std::process::id()));
        std::fs::create_dir_all(dir.join("30")).unwrap();
        std::fs::write(dir.join("30/maps"), b"1000-2000 r-xp 00000000 08:01 42 /tmp/a\\012b\n").unwrap();
        // Alive: the maps file's path, its newline escape undone.
        use ksense_abi::memory::Region::{LibraryCode, MainCode};
        assert_eq!(changed_file(&dir, 30, b"/x/a\nb", b"a\nb", MainCode), b"/tmp/a\nb");
        // Gone: the executable's path, also when the kernel's name is cut to 63 bytes.
        let long = [b'n'; 100];
        let exe = [&b"/x/"[..], &long].concat();
        assert_eq!(changed_file(&dir, 31, &exe, &long[..ksense_abi::memory::MEMORY_FILE_CAP - 1], MainCode), exe);
        // A name that does not agree: the kernel's basename stays.
        assert_eq!(changed_file(&dir, 31, b"/x/other", b"mine", MainCode), b"mine");
        // Another file of the same name (the kernel said it is not the executable): the same.
        assert_eq!(changed_file(&dir, 31, b"/x/lib", b"lib", LibraryCode), b"lib");
        std::fs::remove_dir_all(dir).unwrap();
    }
}
