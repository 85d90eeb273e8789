//! `process.exec`: a process replaced its image.
use crate::{Header, Task, assert_size};

/// Most bytes of the executable's file name (as passed to execve) kept, its NUL included.
pub const FILENAME_CAP: usize = 1024;
/// Bytes of argv copied from the new image's stack (`mm->arg_start..arg_end`).
pub const ARGS_CAP: usize = 16384;
/// Bytes of the environment copied from the new image's stack (`mm->env_start..env_end`), when
/// the daemon asks for it: enough for a typical login shell's.
pub const ENV_CAP: usize = 8192;

/// `Exec::flags`: the file name did not fit in [`FILENAME_CAP`].
pub const EXEC_FILENAME_TRUNCATED: u32 = 1;
/// `Exec::flags`: argv was longer than [`ARGS_CAP`] and was cut.
pub const EXEC_ARGS_TRUNCATED: u32 = 2;
/// `Exec::flags`: argv could not be read (page not resident); `args_len` is 0.
pub const EXEC_ARGS_UNREADABLE: u32 = 4;
/// `Exec::flags`: the environment was longer than [`ENV_CAP`] and was cut.
pub const EXEC_ENV_TRUNCATED: u32 = 8;
/// `Exec::flags`: the process has a controlling terminal (`task->signal->tty` is set).
pub const EXEC_TTY: u32 = 16;
/// `Exec::flags`: `task->signal->tty` was read (without it, [`EXEC_TTY`] tells nothing).
pub const EXEC_TTY_KNOWN: u32 = 32;
/// `Exec::flags`: the executed file's change time was read ([`Exec::exe_ctime_sec`] and
/// [`Exec::exe_ctime_nsec`] hold it).
pub const EXEC_CTIME_KNOWN: u32 = 64;

/// A process exec'd. Variable size: the file name, argv and the environment follow each other
/// in `data` with nothing in between, and the record ends after them, so its size is
/// [`Exec::fixed_size`] + `filename_len` + `args_len` + `env_len` (a typical exec is a few hundred bytes, not the 17 KiB the caps
/// allow, so the ring buffer holds that many more of them).
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct Exec {
    /// Common header.
    pub header: Header,
    /// The task after the exec (new comm).
    pub task: Task,
    /// Task id before the exec (differs when a non-leader thread exec'd).
    pub old_tid: u32,
    /// `EXEC_*` flags.
    pub flags: u32,
    /// Bytes of `data` holding the file name (no NUL).
    pub filename_len: u32,
    /// Bytes of `data` after the file name holding argv: the NUL-terminated strings as on the
    /// new image's stack.
    pub args_len: u32,
    /// Bytes of `data` after argv holding the environment, `NAME=value` strings each ending in
    /// NUL as on the new image's stack; 0 when not read.
    pub env_len: u32,
    /// `i_nlink` of the executed file's inode: 0 when it has no name on any file system (a
    /// memfd, a deleted file); meaningful only when [`Exec::exe_ino`] is not 0.
    pub exe_nlink: u32,
    /// `mm->start_code` of the new image.
    pub code_start: u64,
    /// `mm->end_code` of the new image.
    pub code_end: u64,
    /// Inode number of the file the kernel executed (`mm->exe_file`); 0 when unknown. With
    /// [`Exec::exe_dev`], what tells whether `/proc/<pid>/exe` still names that file.
    pub exe_ino: u64,
    /// `s_dev` of the executed file's filesystem, in the kernel's encoding (major << 20 | minor).
    pub exe_dev: u64,
    /// The executed inode's change time (ctime), seconds: with [`Exec::exe_ino`] and
    /// [`Exec::exe_dev`], what tells that a file opened later still has the content the kernel
    /// executed (any write or metadata change moves it). Valid with [`EXEC_CTIME_KNOWN`].
    pub exe_ctime_sec: i64,
    /// Its nanoseconds, as the inode holds them (some kernels keep a flag in bit 31: the
    /// daemon uses only the bits a nanosecond count can have).
    pub exe_ctime_nsec: u64,
    /// The path given to execve (may be relative), then argv, then the environment.
    pub data: [u8; FILENAME_CAP + ARGS_CAP + ENV_CAP],
}

impl Exec {
    /// Size of everything before `data`: the smallest valid record.
    pub const fn fixed_size() -> usize {
        core::mem::offset_of!(Exec, data)
    }
}

assert_size!(Exec, 24 + 80 + 72 + FILENAME_CAP + ARGS_CAP + ENV_CAP);
