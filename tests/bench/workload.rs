//! The measured loops. Each runs in a process of its own (`ksense-bench workload NAME COUNT
//! SPAWNERS`, started by the harness), so the events it causes can be told from everything else
//! on the machine by its pid, and times itself with the monotonic clock around the loop only.
use std::{
    ffi::CString,
    sync::{
        Mutex,
        atomic::{AtomicU64, Ordering::Relaxed},
    },
    time::Instant,
};

/// The program every exec runs.
const TRUE: &str = "/bin/true";

/// A benchmark workload.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Workload {
    /// fork(); the child `_exit(0)`s; waitpid.
    ForkExit,
    /// fork(); the child execs /bin/true; waitpid.
    ForkExec,
    /// One anonymous page, mprotect RW -> RX -> RW ...: one op is one call.
    Mprotect,
    /// Several spawner threads doing fork + exec /bin/true + waitpid until COUNT execs in all.
    ExecBurst,
}

impl Workload {
    /// Every workload, in report order.
    pub const ALL: [Workload; 4] = [Workload::ForkExit, Workload::ForkExec, Workload::Mprotect, Workload::ExecBurst];

    /// Its name on the command line and in the report.
    pub fn name(self) -> &'static str {
        match self {
            Workload::ForkExit => "fork-exit",
            Workload::ForkExec => "fork-exec",
            Workload::Mprotect => "mprotect",
            Workload::ExecBurst => "exec-burst",
        }
    }

    /// The workload called `name`.
    pub fn from_name(name: &str) -> Option<Workload> {
        Workload::ALL.into_iter().find(|w| w.name() == name)
    }

    /// What one op is, for the report.
    pub fn op(self) -> &'static str {
        match self {
            Workload::ForkExit => "fork + _exit + waitpid",
            Workload::ForkExec => "fork + exec /bin/true + waitpid",
            Workload::Mprotect => "one mprotect call (RW -> RX or RX -> RW, one anonymous page)",
            Workload::ExecBurst => {
                "one fork + exec /bin/true + waitpid, spawners in parallel (time per op = wall time / execs)"
            }
        }
    }

    /// The kernel events `ops` ops cause that every tool is asked to report.
    pub fn generated(self, ops: u64) -> Tally {
        match self {
            Workload::ForkExit => Tally { forks: ops, exits: ops, ..Tally::default() },
            Workload::ForkExec | Workload::ExecBurst => {
                Tally { forks: ops, execs: ops, exits: ops, ..Tally::default() }
            }
            Workload::Mprotect => Tally { mprotects: ops, ..Tally::default() },
        }
    }
}

/// Events of one workload run, by kind: its children's forks (threads not included), their
/// execs and exits, and its own mprotect calls.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Tally {
    /// Processes the workload forked.
    pub forks: u64,
    /// Execs by those children.
    pub execs: u64,
    /// Exits of those children.
    pub exits: u64,
    /// mprotect calls by the workload.
    pub mprotects: u64,
}

impl Tally {
    /// All events.
    pub fn total(&self) -> u64 {
        self.forks + self.execs + self.exits + self.mprotects
    }
}

/// What a workload run printed: `ops=N elapsed_ns=N threads=TID,TID page=ADDRESS`.
#[derive(Debug, Clone, Default)]
pub struct Outcome {
    /// Ops done.
    pub ops: u64,
    /// Wall time of the loop.
    pub elapsed_ns: u64,
    /// Its spawner threads' ids (their own clones are not the workload's forks).
    pub threads: Vec<u32>,
    /// The page the mprotect workload toggled (other mprotect calls, e.g. the C library's at
    /// start-up, are not the workload's).
    pub page: u64,
}

impl Outcome {
    /// Parses the line [`run`] prints.
    pub fn parse(line: &str) -> Option<Outcome> {
        let mut outcome = Outcome::default();
        for pair in line.split_whitespace() {
            match pair.split_once('=')? {
                ("ops", n) => outcome.ops = n.parse().ok()?,
                ("elapsed_ns", n) => outcome.elapsed_ns = n.parse().ok()?,
                ("threads", tids) => outcome.threads = tids.split(',').filter_map(|t| t.parse().ok()).collect(),
                ("page", address) => outcome.page = address.parse().ok()?,
                _ => {}
            }
        }
        (outcome.ops > 0).then_some(outcome)
    }

    /// Mean wall time per op, in microseconds.
    pub fn us_per_op(&self) -> f64 {
        self.elapsed_ns as f64 / 1000.0 / self.ops as f64
    }
}

/// Runs `workload` for `count` ops (`spawners` threads for the burst) and prints its [`Outcome`].
pub fn run(workload: Workload, count: u64, spawners: usize) {
    let exec = Exec::new();
    let threads = Mutex::new(Vec::new());
    let mut page = 0;
    let started = Instant::now();
    match workload {
        Workload::ForkExit => (0..count).for_each(|_| fork_and_reap(|| unsafe { libc::_exit(0) })),
        Workload::ForkExec => (0..count).for_each(|_| fork_and_reap(|| exec.run())),
        Workload::Mprotect => page = toggle(count),
        Workload::ExecBurst => {
            let done = AtomicU64::new(0);
            std::thread::scope(|scope| {
                for _ in 0..spawners {
                    scope.spawn(|| {
                        threads.lock().unwrap().push(unsafe { libc::gettid() }.to_string());
                        while done.fetch_add(1, Relaxed) < count {
                            fork_and_reap(|| exec.run());
                        }
                    });
                }
            });
        }
    }
    let elapsed_ns = started.elapsed().as_nanos();
    println!("ops={count} elapsed_ns={elapsed_ns} threads={} page={page}", threads.into_inner().unwrap().join(","));
}

/// execve(/bin/true) with its argv built before the fork: the child of a threaded process may
/// only make async-signal-safe calls, so it must not allocate.
struct Exec {
    path: CString,
}

impl Exec {
    fn new() -> Exec {
        Exec { path: CString::new(TRUE).unwrap() }
    }

    fn run(&self) -> ! {
        let argv = [self.path.as_ptr(), std::ptr::null()];
        let envp = [std::ptr::null()];
        // SAFETY: NUL-terminated path, NULL-terminated argv and envp; on failure the child exits.
        unsafe {
            libc::execve(self.path.as_ptr(), argv.as_ptr(), envp.as_ptr());
            libc::_exit(127)
        }
    }
}

/// fork(); the child runs `child` (which execs or exits); the parent reaps it and checks it
/// exited 0.
fn fork_and_reap(child: impl Fn()) {
    // SAFETY: the child only calls execve/_exit.
    let pid = unsafe { libc::fork() };
    assert!(pid >= 0, "fork: {}", std::io::Error::last_os_error());
    if pid == 0 {
        child();
        // SAFETY: in the child, which must not return into the parent's loop.
        unsafe { libc::_exit(127) };
    }
    let mut status = 0;
    // SAFETY: waitpid on our own child.
    assert_eq!(unsafe { libc::waitpid(pid, &mut status, 0) }, pid, "waitpid: {}", std::io::Error::last_os_error());
    assert!(libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0, "child {pid} ended with status {status:#x}");
}

/// `calls` mprotect calls on one anonymous page, alternating RX and RW; returns the page.
fn toggle(calls: u64) -> u64 {
    const PAGE: usize = 4096;
    let rw = libc::PROT_READ | libc::PROT_WRITE;
    // SAFETY: a fresh private anonymous mapping, only ever passed to mprotect.
    let page = unsafe { libc::mmap(std::ptr::null_mut(), PAGE, rw, libc::MAP_PRIVATE | libc::MAP_ANONYMOUS, -1, 0) };
    assert_ne!(page, libc::MAP_FAILED, "mmap: {}", std::io::Error::last_os_error());
    for call in 0..calls {
        let prot = if call % 2 == 0 { libc::PROT_READ | libc::PROT_EXEC } else { rw };
        // SAFETY: the page mapped above.
        assert_eq!(unsafe { libc::mprotect(page, PAGE, prot) }, 0, "mprotect: {}", std::io::Error::last_os_error());
    }
    page as u64
}
