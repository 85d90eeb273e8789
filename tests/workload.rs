//! Processes for the end-to-end tests to watch. Each subcommand does one thing a test then
//! looks for in ksense's output, and prints the ids the test needs on stdout.
//!
//! ```text
//! ksense-workload marker ARGS...      exit 0 (an exec target with whatever argv it was given)
//! ksense-workload fork-exit N         fork N children that _exit(0) at once, reaping each;
//!                                     prints "child=<pid>" for the first
//! ksense-workload thread              start and join one thread; prints "tid=<tid>"
//! ksense-workload leader-exits-first  start a thread, print "tid=<tid>", end the main thread
//!                                     alone (the exit system call); the thread ends the
//!                                     process 200 ms later
//! ksense-workload chain N             run `chain N-1` as a child and wait for it, down to
//!                                     `chain 0`: N+1 nested processes, alive until the leaf exits
//! ksense-workload sleep SECONDS       sleep (a target for kill -9)
//! ksense-workload memfd-exec          copy this program into a memfd and exec it from there
//!                                     (execveat(fd, "", AT_EMPTY_PATH)) as `marker`
//! ksense-workload deleted-exec        copy this program into a file, delete the file, and exec
//!                                     it through its open fd as `marker`
//! ksense-workload exec-flood N BYTES  exec `marker` with BYTES bytes of argv (16 arguments) N
//!                                     times, 4 at a time, waiting for each; prints "execs=N"
//! ksense-workload mprotect-text-rwx [hold]
//!                                     make the page of its own code RWX, then r-x again; with
//!                                     `hold`, then wait for stdin to close before exiting
//! ksense-workload mprotect-anon-rx    write code into an anonymous RW page, make it RX
//! ksense-workload mprotect-anon-ro    make an anonymous RW page read-only
//! ksense-workload mprotect-span       a read-only file page and a written anonymous page after it,
//!                                     made executable by one mprotect; prints "page=<first page>"
//! ksense-workload mprotect-bad-addr   mprotect an unmapped page (fails with ENOMEM)
//! ksense-workload mprotect-toggle N   toggle an anonymous page RW -> RX -> RW ... N times each
//! ksense-workload mprotect-spread N   toggle each of N anonymous pages RW -> RX -> RW twice,
//!                                     one page after the other (2N ranges and transitions, each
//!                                     seen twice)
//! ksense-workload mmap-anon-rwx       mmap an anonymous RWX page and write code into it
//! ksense-workload mmap-shared-anon-rwx
//!                                     the same, shared (the kernel backs it with a file of its own)
//! ksense-workload mmap-file-rx        mmap a page of this program's file read-only and
//!                                     executable (as every shared library is loaded)
//! ksense-workload mmap-file-rwx       mmap a page of this program's file private, writable and
//!                                     executable
//! ```
//! The mprotect and mmap commands print `page=0x<address>`; the toggler also `ns_per_call=<n>`.
use std::{
    io::Write,
    os::fd::{AsRawFd, FromRawFd},
    time::Duration,
};

fn main() {
    // args_os: the marker is exec'd with bytes that are not UTF-8.
    let args: Vec<String> = std::env::args_os().skip(1).map(|a| a.to_string_lossy().into_owned()).collect();
    match args.first().map(String::as_str) {
        Some("marker") => {}
        Some("fork-exit") => fork_exit(args[1].parse().expect("fork-exit N")),
        Some("thread") => {
            let tid = std::thread::spawn(|| unsafe { libc::gettid() }).join().unwrap();
            println!("tid={tid}");
        }
        Some("leader-exits-first") => leader_exits_first(),
        Some("mprotect-text-rwx") => {
            let page = page_of(fork_exit as *const () as usize);
            protect(page, libc::PROT_READ | libc::PROT_WRITE | libc::PROT_EXEC);
            protect(page, libc::PROT_READ | libc::PROT_EXEC);
            println!("page={page:#x}");
            if args.get(1).is_some_and(|a| a == "hold") {
                std::io::stdout().flush().unwrap();
                std::io::copy(&mut std::io::stdin(), &mut std::io::sink()).unwrap();
            }
        }
        Some("mprotect-anon-rx") => {
            let page = anonymous_page();
            // A stand-in for code a JIT would write.
            unsafe { std::ptr::copy_nonoverlapping(RET.as_ptr(), page as *mut u8, RET.len()) };
            protect(page, libc::PROT_READ | libc::PROT_EXEC);
            println!("page={page:#x}");
        }
        Some(command @ ("mmap-anon-rwx" | "mmap-shared-anon-rwx")) => {
            let rwx = libc::PROT_READ | libc::PROT_WRITE | libc::PROT_EXEC;
            let sharing = if command == "mmap-anon-rwx" { libc::MAP_PRIVATE } else { libc::MAP_SHARED };
            let page = map_pages(1, rwx, sharing | libc::MAP_ANONYMOUS, -1);
            unsafe { std::ptr::copy_nonoverlapping(RET.as_ptr(), page as *mut u8, RET.len()) };
            println!("page={page:#x}");
        }
        Some(command @ ("mmap-file-rx" | "mmap-file-rwx")) => {
            let exe = std::fs::File::open("/proc/self/exe").expect("open /proc/self/exe");
            let write = if command == "mmap-file-rwx" { libc::PROT_WRITE } else { 0 };
            let page = map_pages(1, libc::PROT_READ | libc::PROT_EXEC | write, libc::MAP_PRIVATE, exe.as_raw_fd());
            println!("page={page:#x}");
        }
        Some("mprotect-span") => {
            // A read-only page of a file (this program) right before a written anonymous page,
            // then one mprotect making both executable: the anonymous page is written memory
            // made executable, whatever the first page is.
            let flags = libc::MAP_PRIVATE | libc::MAP_ANONYMOUS;
            let rw = libc::PROT_READ | libc::PROT_WRITE;
            let base = unsafe { libc::mmap(std::ptr::null_mut(), 2 * PAGE, rw, flags, -1, 0) };
            assert_ne!(base, libc::MAP_FAILED, "mmap");
            let exe = std::fs::File::open("/proc/self/exe").expect("open /proc/self/exe");
            let file = unsafe {
                libc::mmap(base, PAGE, libc::PROT_READ, libc::MAP_PRIVATE | libc::MAP_FIXED, std::os::fd::AsRawFd::as_raw_fd(&exe), 0)
            };
            assert_eq!(file, base, "mmap of the file over the first page");
            let anon = base as usize + PAGE;
            unsafe { *(anon as *mut u8) = 0xc3 };
            let rc = unsafe { libc::mprotect(base, 2 * PAGE, libc::PROT_READ | libc::PROT_EXEC) };
            assert_eq!(rc, 0, "mprotect over both pages");
            println!("page={:#x}", base as usize);
        }
        Some("mprotect-anon-ro") => {
            let page = anonymous_page();
            protect(page, libc::PROT_READ);
            println!("page={page:#x}");
        }
        Some("mprotect-bad-addr") => {
            let page = anonymous_page();
            unsafe { libc::munmap(page as *mut libc::c_void, PAGE) };
            let rc = unsafe { libc::mprotect(page as *mut libc::c_void, PAGE, libc::PROT_READ) };
            assert_eq!(rc, -1, "mprotect of an unmapped page succeeded");
            println!("page={page:#x}");
        }
        Some("mprotect-toggle") => {
            let n: u64 = args[1].parse().expect("mprotect-toggle N");
            let page = anonymous_page();
            let started = std::time::Instant::now();
            for _ in 0..n {
                protect(page, libc::PROT_READ | libc::PROT_EXEC);
                protect(page, libc::PROT_READ | libc::PROT_WRITE);
            }
            let ns = started.elapsed().as_nanos() as u64 / (2 * n.max(1));
            println!("page={page:#x}");
            println!("ns_per_call={ns}");
        }
        Some("mprotect-spread") => {
            let n: usize = args[1].parse().expect("mprotect-spread N");
            let pages = anonymous_pages(n);
            for page in (0..n).map(|i| pages + i * PAGE) {
                for _ in 0..2 {
                    protect(page, libc::PROT_READ | libc::PROT_EXEC);
                    protect(page, libc::PROT_READ | libc::PROT_WRITE);
                }
            }
            println!("page={pages:#x}");
        }
        Some("chain") => chain(args[1].parse().expect("chain N")),
        Some("exec-flood") => exec_flood(args[1].parse().expect("exec-flood N"), args[2].parse().expect("exec-flood N BYTES")),
        Some("memfd-exec") => {
            // SAFETY: a plain syscall; the name is a NUL-terminated literal.
            let fd = unsafe { libc::memfd_create(c"ksense-memfd".as_ptr(), 0) };
            assert!(fd >= 0, "memfd_create: {}", std::io::Error::last_os_error());
            // SAFETY: a new fd this function owns.
            let mut copy = unsafe { std::fs::File::from_raw_fd(fd) };
            copy.write_all(&std::fs::read("/proc/self/exe").expect("read /proc/self/exe")).expect("write the memfd");
            exec_fd(copy);
        }
        Some("deleted-exec") => {
            let path = std::env::temp_dir().join(format!("ksense-deleted-exec-{}", std::process::id()));
            std::fs::copy("/proc/self/exe", &path).expect("copy this program");
            // Opened read-only after the copy is closed (a file open for writing cannot be
            // exec'd), then unlinked: the fd is its only way in.
            let file = std::fs::File::open(&path).expect("open the copy");
            std::fs::remove_file(&path).expect("delete the copy");
            exec_fd(file);
        }
        Some("sleep") => std::thread::sleep(Duration::from_secs(args[1].parse().expect("sleep SECONDS"))),
        other => {
            eprintln!("ksense-workload: unknown command {other:?}");
            std::process::exit(2);
        }
    }
    std::io::stdout().flush().unwrap();
}

/// One link of a process chain: the next link is this binary run as `chain depth-1`.
/// Execs the program open as `file` as `marker` with this environment, without a path:
/// execveat(fd, "", AT_EMPTY_PATH). Returns only by failing.
fn exec_fd(file: std::fs::File) -> ! {
    let argv = [c"ksense-workload".as_ptr(), c"marker".as_ptr(), std::ptr::null()];
    unsafe extern "C" {
        static environ: *const *const libc::c_char;
    }
    // SAFETY: NUL-terminated argv, the process's own environment; on success this never returns.
    unsafe {
        libc::syscall(libc::SYS_execveat, file.as_raw_fd(), c"".as_ptr(), argv.as_ptr(), environ, libc::AT_EMPTY_PATH);
    }
    panic!("execveat: {}", std::io::Error::last_os_error());
}

fn chain(depth: u32) {
    if depth == 0 {
        return;
    }
    let exe = std::env::current_exe().expect("current_exe");
    let next = (depth - 1).to_string();
    let status = std::process::Command::new(exe).args(["chain", &next]).status().expect("chain: spawn");
    assert!(status.success(), "chain {next}: {status}");
}

/// `n` execs of this binary as `marker` with `bytes` bytes of argument, from 4 threads.
fn exec_flood(n: usize, bytes: usize) {
    const THREADS: usize = 4;
    let exe = std::env::current_exe().expect("current_exe");
    let args: Vec<String> = (0..16).map(|i| char::from(b'a' + i as u8).to_string().repeat(bytes / 16)).collect();
    let threads: Vec<_> = (0..THREADS)
        .map(|t| {
            let (exe, args) = (exe.clone(), args.clone());
            std::thread::spawn(move || {
                for _ in (t..n).step_by(THREADS) {
                    let status = std::process::Command::new(&exe).arg("marker").args(&args).status().expect("exec-flood: spawn");
                    assert!(status.success(), "exec-flood: {status}");
                }
            })
        })
        .collect();
    for thread in threads {
        thread.join().expect("an exec-flood thread panicked");
    }
    println!("execs={n}");
}

const PAGE: usize = 4096;

/// This architecture's `ret` instruction.
#[cfg(target_arch = "aarch64")]
const RET: [u8; 4] = 0xd65f_03c0_u32.to_le_bytes();
#[cfg(not(target_arch = "aarch64"))]
const RET: [u8; 1] = [0xc3];

fn page_of(addr: usize) -> usize {
    addr & !(PAGE - 1)
}

/// A fresh anonymous read-write page.
fn anonymous_page() -> usize {
    anonymous_pages(1)
}

/// `n` fresh anonymous read-write pages, one after the other; the first one's address.
fn anonymous_pages(n: usize) -> usize {
    map_pages(n, libc::PROT_READ | libc::PROT_WRITE, libc::MAP_PRIVATE | libc::MAP_ANONYMOUS, -1)
}

/// `n` pages mapped with `prot` and `flags` (of `fd` from its start, or anonymous with -1);
/// the first one's address.
fn map_pages(n: usize, prot: i32, flags: i32, fd: i32) -> usize {
    let pages = unsafe { libc::mmap(std::ptr::null_mut(), n * PAGE, prot, flags, fd, 0) };
    assert_ne!(pages, libc::MAP_FAILED, "mmap: {}", std::io::Error::last_os_error());
    pages as usize
}

fn protect(page: usize, prot: i32) {
    let rc = unsafe { libc::mprotect(page as *mut libc::c_void, PAGE, prot) };
    assert_eq!(rc, 0, "mprotect({page:#x}, {prot}): {}", std::io::Error::last_os_error());
}

/// The main thread exits first, alone; the process lives on in the thread it started, whose
/// exit then is the process's.
fn leader_exits_first() {
    let (tid_tx, tid_rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        tid_tx.send(unsafe { libc::gettid() }).unwrap();
        std::thread::sleep(Duration::from_millis(200));
        std::process::exit(0);
    });
    println!("tid={}", tid_rx.recv().unwrap());
    std::io::stdout().flush().unwrap();
    // SAFETY: ends the calling thread only (not exit_group); nothing of its stack is used after.
    unsafe { libc::syscall(libc::SYS_exit, 0) };
}

fn fork_exit(n: usize) {
    for i in 0..n {
        // SAFETY: the child only calls _exit.
        let pid = unsafe { libc::fork() };
        match pid {
            -1 => panic!("fork failed: {}", std::io::Error::last_os_error()),
            0 => unsafe { libc::_exit(0) },
            pid => {
                if i == 0 {
                    println!("child={pid}");
                }
                let mut status = 0;
                unsafe { libc::waitpid(pid, &mut status, 0) };
            }
        }
    }
}
