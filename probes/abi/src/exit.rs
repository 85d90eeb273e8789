//! `process.exit`: a task exited.
use crate::{Header, Task, assert_size};

/// A task exited. Fixed size.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct Exit {
    /// Common header.
    pub header: Header,
    /// The exiting task.
    pub task: Task,
    /// Raw wait status as the kernel keeps it: `(status & 0xff) << 8` for a normal exit, the
    /// signal number (| 0x80 if a core was dumped) when a signal killed it.
    pub exit_code: u32,
    /// 1 when this was the last live thread of its process (the process exit).
    pub group_dead: u32,
}

assert_size!(Exit, 24 + 80 + 8);

// SAFETY: plain old data, integers and byte arrays only, no padding (its size, asserted above,
// is the sum of its fields): every bit pattern is a valid value.
#[cfg(feature = "user")]
unsafe impl aya::Pod for Exit {}
