//! Processes for the end-to-end tests to watch. Each subcommand does one thing a test then
//! looks for in ksense's output, and prints the ids the test needs on stdout.
//!
//! ```text
//! ksense-workload marker ARGS...      exit 0 (an exec target with whatever argv it was given)
//! ksense-workload fork-exit N         fork N children that _exit(0) at once, reaping each;
//!                                     prints "child=<pid>" for the first
//! ksense-workload thread              start and join one thread; prints "tid=<tid>"
//! ksense-workload sleep SECONDS       sleep (a target for kill -9)
//! ```
use std::{io::Write, time::Duration};

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
        Some("sleep") => std::thread::sleep(Duration::from_secs(args[1].parse().expect("sleep SECONDS"))),
        other => {
            eprintln!("ksense-workload: unknown command {other:?}");
            std::process::exit(2);
        }
    }
    std::io::stdout().flush().unwrap();
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
