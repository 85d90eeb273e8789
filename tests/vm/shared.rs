//! What the VM test's host and guest sides agree on (each includes this file as `mod shared`).

/// The attach modes the guest runs ksense in, in order.
pub const MODES: [&str; 2] = ["fentry", "tracepoint"];

/// The checks the guest runs in each mode, in order; the host expects one result line for each.
pub const CHECKS: [&str; 10] =
    ["probes", "fork", "exec", "exit", "thread", "module", "memory", "memory-mmap", "memory-coalesce", "memory-all"];

/// The prefix of the guest's line carrying `ksense probes --json` of one attach mode, on one
/// line: `vm-probes-json mode=<mode> {...}`.
pub const PROBES_JSON: &str = "vm-probes-json";

/// The environment variable `/init` passes the benchmark's `loads,pairs` in (set only by the
/// benchmark: without it the guest runs the checks).
pub const BENCH_ENV: &str = "KSENSE_VM_BENCH";

/// The benchmark's arms: no agent, then ksense in each attach mode (`--attach <arm>`).
pub const BENCH_ARMS: [&str; 3] = ["none", "fentry", "tracepoint"];

/// The benchmark's workloads: busybox `insmod` + `rmmod` processes (module load and the
/// processes around it), and `finit_module` + `delete_module` called by the driver itself (the
/// module load alone). One op is one load and one unload.
pub const BENCH_WORKLOADS: [&str; 2] = ["insmod-rmmod", "finit-delete"];
