//! `process.fork`: a new task.
use crate::{Header, Task, assert_size};

/// `CLONE_THREAD`: the new task joins the parent's thread group.
pub const CLONE_THREAD: u64 = 0x0001_0000;
/// `CLONE_INTO_CGROUP`: the new task starts in a cgroup of the caller's choosing.
pub const CLONE_INTO_CGROUP: u64 = 0x2_0000_0000;

/// A task was created. Fixed size.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct Fork {
    /// Common header.
    pub header: Header,
    /// The forking task (the current task when the hook fired).
    pub parent: Task,
    /// Task id of the new task.
    pub child_tid: u32,
    /// Thread-group id of the new task (the parent's for a thread).
    pub child_tgid: u32,
    /// Raw clone flags.
    pub clone_flags: u64,
    /// The new task's `start_time` (CLOCK_MONOTONIC ns); 0 when the hook cannot see it.
    pub child_start_ns: u64,
    /// `mm->start_code` of the new task's address space (0 for kernel threads).
    pub code_start: u64,
    /// `mm->end_code`.
    pub code_end: u64,
}

assert_size!(Fork, 24 + 80 + 40);

// SAFETY: plain old data, integers and byte arrays only, no padding (its size, asserted above,
// is the sum of its fields): every bit pattern is a valid value.
#[cfg(feature = "user")]
unsafe impl aya::Pod for Fork {}
