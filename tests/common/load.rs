//! A steady load for the fault tests: the workload run again and again on a background thread
//! until stopped, remembering the pid of every run that has exited, so a test can tell which
//! processes' events must be in ksense's output.
use std::{
    process::{Command, Stdio},
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering::Relaxed},
    },
    thread::JoinHandle,
};

use crate::workload_bin;

/// The workload started over and over, one run after the other, until [`Load::stop`].
pub struct Load {
    stop: Arc<AtomicBool>,
    reaped: Arc<Mutex<Vec<u32>>>,
    thread: Option<JoinHandle<()>>,
}

impl Load {
    /// Starts running `ksense-workload ARGS` in a loop.
    pub fn start(args: &[&str]) -> Load {
        let args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
        let stop = Arc::new(AtomicBool::new(false));
        let reaped = Arc::new(Mutex::new(Vec::new()));
        let thread = {
            let (stop, reaped) = (stop.clone(), reaped.clone());
            std::thread::spawn(move || {
                while !stop.load(Relaxed) {
                    let mut child = Command::new(workload_bin())
                        .args(&args)
                        .stdout(Stdio::null())
                        .spawn()
                        .expect("cannot start the workload");
                    let status = child.wait().unwrap();
                    assert!(status.success(), "workload {args:?} failed: {status}");
                    reaped.lock().unwrap().push(child.id());
                }
            })
        };
        Load { stop, reaped, thread: Some(thread) }
    }

    /// The pids of the runs that have exited so far, in the order they ran.
    pub fn reaped(&self) -> Vec<u32> {
        self.reaped.lock().unwrap().clone()
    }

    /// Waits until at least `runs` runs have exited (a sign the load is really running).
    pub fn wait_for_runs(&self, runs: usize) {
        let deadline = std::time::Instant::now() + crate::event_timeout();
        while self.reaped.lock().unwrap().len() < runs {
            assert!(std::time::Instant::now() < deadline, "the load did not complete {runs} runs");
            assert!(!self.thread.as_ref().unwrap().is_finished(), "the load stopped: a run failed");
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
    }

    /// Stops after the current run and returns every run's pid.
    pub fn stop(mut self) -> Vec<u32> {
        self.stop.store(true, Relaxed);
        if let Some(thread) = self.thread.take() {
            thread.join().expect("the load thread panicked");
        }
        self.reaped()
    }
}

impl Drop for Load {
    fn drop(&mut self) {
        self.stop.store(true, Relaxed);
    }
}
