//! `kernel.module.load`: a kernel module is being initialised.
use crate::{Header, Task, assert_size};

/// `MODULE_NAME_LEN` (64 - sizeof(unsigned long)).
pub const MODULE_NAME_CAP: usize = 56;

/// `ModuleLoad::flags`: `size` was read.
pub const MODULE_SIZE_KNOWN: u32 = 1;
/// `ModuleLoad::flags`: `taints` was read.
pub const MODULE_TAINTS_KNOWN: u32 = 2;

/// A module is being loaded. Fixed size.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct ModuleLoad {
    /// Common header.
    pub header: Header,
    /// The loading task (insmod, modprobe, systemd-udevd, ...).
    pub task: Task,
    /// Bytes of the module's core memory (text, data, read-only data).
    pub size: u64,
    /// `module->taints`.
    pub taints: u64,
    /// `MODULE_*` flags.
    pub flags: u32,
    /// Bytes of `name` used.
    pub name_len: u32,
    /// `module->name`, NUL-padded.
    pub name: [u8; MODULE_NAME_CAP],
}

assert_size!(ModuleLoad, 24 + 80 + 24 + MODULE_NAME_CAP);

// SAFETY: plain old data, integers and byte arrays only, no padding (its size, asserted above,
// is the sum of its fields): every bit pattern is a valid value.
#[cfg(feature = "user")]
unsafe impl aya::Pod for ModuleLoad {}
