//! `process.memory.protect`: a process changed the protection of its memory.
use crate::{Header, Task, assert_size};

/// Protection bits, as in both `PROT_*` and `VM_*` (the low three bits agree).
pub const PROT_READ: u32 = 1;
/// Writable.
pub const PROT_WRITE: u32 = 2;
/// Executable.
pub const PROT_EXEC: u32 = 4;

/// `Memory::flags`: `old_prot`, `region` and `file` are known (the VMA was found).
pub const MEMORY_OLD_KNOWN: u32 = 1;
/// `Memory::flags`: `result` is known (syscall path).
pub const MEMORY_RESULT_KNOWN: u32 = 2;
/// `Memory.flags`: the range goes past the first VMA it starts in (the syscall-tracepoint path
/// sees only that one), so neither the old protection nor the region of the rest is known.
pub const MEMORY_SPANS_VMAS: u32 = 4;
/// `Memory.flags`: a mapping created by `mmap`, not a change by `mprotect`: `start` and `len`
/// are the new mapping (its address once made, else the address asked for), there is no old
/// protection, and `region` and `file` are known once the mapping exists.
pub const MEMORY_MMAP: u32 = 8;

/// `MAP_ANONYMOUS`, in `mmap`'s flags: no file behind the mapping (the same value on x86-64 and arm64).
pub const MAP_ANONYMOUS: u32 = 0x20;

/// Basename bytes of the backing file kept in the record.
pub const MEMORY_FILE_CAP: usize = 64;

/// What the changed range is.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Region {
    /// Not determined.
    Unknown = 0,
    /// The process's own executable text (`mm->start_code..end_code`).
    MainCode = 1,
    /// Executable mapping of another file (a shared library).
    LibraryCode = 2,
    /// Anonymous memory.
    Anonymous = 3,
    /// The main thread's stack.
    Stack = 4,
    /// The brk heap.
    Heap = 5,
    /// A non-executable file mapping.
    File = 6,
}

impl Region {
    /// The region with this wire value.
    pub const fn from_u32(value: u32) -> Region {
        match value {
            1 => Region::MainCode,
            2 => Region::LibraryCode,
            3 => Region::Anonymous,
            4 => Region::Stack,
            5 => Region::Heap,
            6 => Region::File,
            _ => Region::Unknown,
        }
    }

    /// The contract's name, e.g. `main_code`.
    pub const fn name(self) -> &'static str {
        match self {
            Region::Unknown => "unknown",
            Region::MainCode => "main_code",
            Region::LibraryCode => "library_code",
            Region::Anonymous => "anonymous",
            Region::Stack => "stack",
            Region::Heap => "heap",
            Region::File => "file",
        }
    }
}

/// A protection change, or a mapping made executable by `mmap` (`MEMORY_MMAP`). Fixed size.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct Memory {
    /// Common header.
    pub header: Header,
    /// The process that changed its memory.
    pub task: Task,
    /// Start of the changed range.
    pub start: u64,
    /// Length of the changed range in bytes.
    pub len: u64,
    /// How many identical changes (same process, range and transition) this record stands for.
    pub count: u64,
    /// Protection before (`PROT_*` bits), when `MEMORY_OLD_KNOWN`.
    pub old_prot: u32,
    /// Protection requested.
    pub new_prot: u32,
    /// [`Region`] value.
    pub region: u32,
    /// The syscall's return value (0 or -errno), when `MEMORY_RESULT_KNOWN`.
    pub result: i32,
    /// `MEMORY_*` flags.
    pub flags: u32,
    /// Bytes of `file` used.
    pub file_len: u32,
    /// Basename of the backing file, NUL-padded.
    pub file: [u8; MEMORY_FILE_CAP],
}

assert_size!(Memory, 24 + 80 + 24 + 24 + MEMORY_FILE_CAP);

/// Key of the coalescing map: one entry per (process, range, transition, operation).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct CoalesceKey {
    /// Process.
    pub tgid: u32,
    /// `old_prot | new_prot << 8`, plus `MEMORY_MMAP << 16` for a mapping made by `mmap`: a
    /// mapping and a later change of the same range are never counted into one record.
    pub transition: u32,
    /// Range start.
    pub start: u64,
    /// Range length.
    pub len: u64,
}

/// Value of the coalescing map.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct CoalesceState {
    /// Repeats seen since the last record was written, not yet reported.
    pub pending: u64,
    /// When the last record for this key was written (CLOCK_MONOTONIC ns).
    pub emitted_ns: u64,
    /// When this key was last seen.
    pub seen_ns: u64,
    /// The last record, so user space can report pending repeats of an idle key.
    pub record: Memory,
}

/// Name of the coalescing map (a hash of [`CoalesceKey`] -> [`CoalesceState`], bounded: user
/// space removes idle entries).
pub const COALESCE_MAP: &str = "MEMORY_COALESCE";

// SAFETY: plain old data, no padding (u32/u64 fields in size order); every bit pattern is a
// valid value.
#[cfg(feature = "user")]
unsafe impl aya::Pod for CoalesceKey {}
// SAFETY: plain old data without padding: u64 fields followed by an all-integer record whose
// size is asserted above; every bit pattern is a valid value.
#[cfg(feature = "user")]
unsafe impl aya::Pod for CoalesceState {}

// SAFETY: plain old data, integers and byte arrays only, no padding (its size, asserted above,
// is the sum of its fields): every bit pattern is a valid value.
#[cfg(feature = "user")]
unsafe impl aya::Pod for Memory {}
