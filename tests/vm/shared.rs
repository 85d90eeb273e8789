//! What the VM test's host and guest sides agree on (each includes this file as `mod shared`).

/// The attach modes the guest runs ksense in, in order.
pub const MODES: [&str; 2] = ["fentry", "tracepoint"];

/// The checks the guest runs in each mode, in order; the host expects one result line for each.
pub const CHECKS: [&str; 9] =
    ["probes", "fork", "exec", "exit", "thread", "module", "memory", "memory-coalesce", "memory-all"];
