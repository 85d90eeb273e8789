//! `process.exec` records (variable size: the fixed part, then the execve path, argv and the
//! environment).
use std::{
    mem::{offset_of, size_of},
    os::unix::ffi::OsStrExt,
    path::{Path, PathBuf},
};

use ksense_abi::{
    Task,
    exec::{
        ARGS_CAP, ENV_CAP, EXEC_ARGS_TRUNCATED, EXEC_CTIME_KNOWN, EXEC_ENV_TRUNCATED, EXEC_FILENAME_TRUNCATED, EXEC_TTY,
        EXEC_TTY_KNOWN, Exec, FILENAME_CAP,
    },
};

use super::prelude::*;
use crate::identity::FileKey;

/// A process exec'd. The event's [`Process`] carries argv, and, once enrichment established
/// it, the canonical path of the file the kernel executed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ProcessExec {
    /// Task id before the exec (a non-leader thread that execs takes over the leader's id).
    pub old_tid: u32,
    /// `mm->start_code` of the new image.
    pub code_start: u64,
    /// `mm->end_code`.
    pub code_end: u64,
    /// The path as given to execve (relative, through `..` or symlinks: whatever the caller
    /// chose), `ksense.process.exec.path`; `None` when the probe could not read it.
    pub exec_path: Option<Vec<u8>>,
    /// The file the kernel executed, when the probe could read it.
    pub executed_file: Option<FileId>,
    /// Its change time (seconds, nanoseconds as the inode holds them), when the probe could
    /// read it.
    pub executed_ctime: Option<(i64, u64)>,
    /// The executed file has no name on any file system (its link count is 0: a memfd, or a
    /// file deleted before the exec), as the kernel saw it; `None` when the probe could not
    /// read its inode.
    pub fileless: Option<bool>,
    /// The process has a controlling terminal; `None` when the probe could not tell.
    pub interactive: Option<bool>,
    /// The environment as the probe copied it (`NAME=value` strings, each ending in NUL), until
    /// [`ReportedVariables::pick`] takes from it what is reported.
    pub environment_block: Vec<u8>,
    /// The environment was longer than [`ENV_CAP`] bytes and only its start was read: a
    /// variable after the cut is missing, and the last one read may be cut short.
    pub environment_truncated: bool,
    /// The reported variables that were set: attribute name (`process.environment_variable.
    /// <NAME>`) and value.
    pub environment: Vec<(&'static str, Vec<u8>)>,
}

/// Variables that make the dynamic loader run code the executable did not ask for: an exec with
/// one of them set (and reported) is WARN.
const LOADER_VARIABLES: [&str; 2] = ["LD_PRELOAD", "LD_AUDIT"];

/// The environment variables reported on exec (`[probes] environment`), each with its
/// attribute name.
#[derive(Debug, Clone, Default)]
pub struct ReportedVariables(Vec<(Vec<u8>, &'static str)>);

impl ReportedVariables {
    /// Variables to report, by name. The attribute names live as long as the process (they are
    /// made once per run: the list changes only with a restart).
    pub fn new(names: &[String]) -> ReportedVariables {
        let names = names.iter().map(|name| {
            let attribute: &'static str = Box::leak(schema::environment_variable(name).into_boxed_str());
            (format!("{name}=").into_bytes(), attribute)
        });
        ReportedVariables(names.collect())
    }

    /// Moves the reported variables out of `exec`'s environment block (and drops the block).
    /// A variable set twice is reported with its last value, the one the dynamic loader
    /// uses (it reads every entry, and a later one overrides an earlier one).
    pub fn pick(&self, exec: &mut ProcessExec) {
        let block = std::mem::take(&mut exec.environment_block);
        for entry in block.split(|&b| b == 0) {
            for (prefix, attribute) in &self.0 {
                if let Some(value) = entry.strip_prefix(prefix.as_slice()) {
                    exec.environment.retain(|(name, _)| name != attribute);
                    exec.environment.push((attribute, value.to_vec()));
                }
            }
        }
    }
}

impl ProcessExec {
    /// What names the executed file's content, when the probe read its inode and change time.
    pub fn identity_key(&self) -> Option<FileKey> {
        let (file, (sec, nsec)) = self.executed_file.zip(self.executed_ctime)?;
        Some(FileKey::new(file.ino, file.major, file.minor, sec, nsec))
    }
}

/// A file's identity: inode number and device, as the kernel holds them and as `stat` gives
/// them, so that a path read later from `/proc` can be checked to still name the same file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FileId {
    /// Inode number.
    pub ino: u64,
    /// Device major number.
    pub major: u32,
    /// Device minor number.
    pub minor: u32,
}

impl FileId {
    /// The identity from an inode number and the kernel's `s_dev` (major << 20 | minor).
    pub fn from_kernel(ino: u64, s_dev: u64) -> FileId {
        FileId { ino, major: (s_dev >> 20) as u32, minor: (s_dev & 0xf_ffff) as u32 }
    }

    /// The identity `stat` gives.
    pub fn of(metadata: &std::fs::Metadata) -> FileId {
        use std::os::unix::fs::MetadataExt;
        FileId { ino: metadata.ino(), major: libc::major(metadata.dev()), minor: libc::minor(metadata.dev()) }
    }

    /// The identity of the open file `file` as its file system last told the kernel, without
    /// asking it again (`statx` with `AT_STATX_DONT_SYNC`): a FUSE file system, which any user
    /// may run, could leave that question unanswered, and ksense waiting with it.
    pub fn of_open(file: &std::fs::File) -> Option<FileId> {
        let stx = statx_cached(file, libc::STATX_INO)?;
        Some(FileId { ino: stx.stx_ino, major: stx.stx_dev_major, minor: stx.stx_dev_minor })
    }

    /// Whether `opened` is this file, as the kernel named it: the same inode number, on the same
    /// device unless `opened` is on btrfs, whose `stat` gives each subvolume a device number of
    /// its own, never the file system's that the kernel's inode holds (an inode number is unique
    /// within a subvolume). Asked as [`FileId::of_open`] does.
    pub fn is(&self, opened: &std::fs::File) -> bool {
        FileId::of_open(opened).is_some_and(|id| id == *self || (id.ino == self.ino && on_btrfs(opened)))
    }
}

/// `statx` of the open `file` (at least `mask`) as its file system last told the kernel,
/// without asking it again (`AT_STATX_DONT_SYNC`): a FUSE file system, which any user may run,
/// could leave that question unanswered, and ksense waiting with it.
fn statx_cached(file: &std::fs::File, mask: u32) -> Option<libc::statx> {
    use std::os::fd::AsRawFd;
    let mut stx = std::mem::MaybeUninit::<libc::statx>::zeroed();
    let flags = libc::AT_EMPTY_PATH | libc::AT_STATX_DONT_SYNC;
    // SAFETY: `statx` of an open descriptor with an empty path fills the buffer it is given and
    // reports failure otherwise; the buffer is zeroed, a valid `statx` either way.
    let stx = unsafe { (libc::statx(file.as_raw_fd(), c"".as_ptr(), flags, mask, stx.as_mut_ptr()) == 0).then(|| stx.assume_init())? };
    (stx.stx_mask & mask == mask).then_some(stx)
}

/// The type of the file system `file` is on (`btrfs`, `fuse.sshfs`, ...): that of the mount
/// `/proc/self/mountinfo` lists under the file's mount id. Unlike `fstatfs`, which a FUSE server
/// could leave unanswered, nothing here is asked of the file system.
fn file_system_type(file: &std::fs::File) -> Option<String> {
    let mount = statx_cached(file, libc::STATX_MNT_ID)?.stx_mnt_id;
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
    mountinfo.lines().find_map(|line| {
        // id parent major:minor root mount-point options ... - type source options
        let id: u64 = line.split(' ').next()?.parse().ok()?;
        (id == mount).then(|| line.split_once(" - ")?.1.split(' ').next().map(str::to_owned))?
    })
}

/// Whether `file` is on a btrfs file system.
fn on_btrfs(file: &std::fs::File) -> bool {
    file_system_type(file).is_some_and(|fs| fs == "btrfs")
}

/// Whether `file` is served by a user-space file system (FUSE), which may never answer a read.
fn user_served(file: &std::fs::File) -> bool {
    file_system_type(file).is_none_or(|fs| fs == "fuse" || fs.starts_with("fuse."))
}

fn decode(bytes: &[u8], clock: &Clock) -> Result<(Process, Detail), DecodeError> {
    let fixed = Exec::fixed_size();
    if bytes.len() < fixed {
        return Err(DecodeError::Short { len: bytes.len(), need: fixed });
    }
    let task: Task = read(bytes, offset_of!(Exec, task))?;
    let old_tid: u32 = read(bytes, offset_of!(Exec, old_tid))?;
    let flags: u32 = read(bytes, offset_of!(Exec, flags))?;
    let filename_len = read::<u32>(bytes, offset_of!(Exec, filename_len))? as usize;
    let args_len = read::<u32>(bytes, offset_of!(Exec, args_len))? as usize;
    let env_len = read::<u32>(bytes, offset_of!(Exec, env_len))? as usize;
    if filename_len >= FILENAME_CAP {
        return Err(DecodeError::Field("filename_len"));
    }
    if args_len > ARGS_CAP || fixed + filename_len + args_len > bytes.len() {
        return Err(DecodeError::Field("args_len"));
    }
    if env_len > ENV_CAP || fixed + filename_len + args_len + env_len != bytes.len() {
        return Err(DecodeError::Field("env_len"));
    }
    let (filename, rest) = bytes[fixed..].split_at(filename_len);
    let (args, environment) = rest.split_at(args_len);
    let args = split_args(args);

    let mut process = Process::from_task(&task, clock);
    // An empty argv area means the probe could not read it (no BTF offsets, or the page was
    // not resident): leave argv to enrichment rather than report an empty command line.
    process.args = (!args.is_empty()).then(|| args.into());
    process.args_truncated = flags & (EXEC_ARGS_TRUNCATED | EXEC_FILENAME_TRUNCATED) != 0;
    let exe_ino: u64 = read(bytes, offset_of!(Exec, exe_ino))?;
    let exec = ProcessExec {
        old_tid,
        code_start: read(bytes, offset_of!(Exec, code_start))?,
        code_end: read(bytes, offset_of!(Exec, code_end))?,
        exec_path: (!filename.is_empty()).then(|| filename.to_vec()),
        executed_ctime: (exe_ino != 0 && flags & EXEC_CTIME_KNOWN != 0)
            .then(|| Ok::<_, DecodeError>((read(bytes, offset_of!(Exec, exe_ctime_sec))?, read(bytes, offset_of!(Exec, exe_ctime_nsec))?)))
            .transpose()?,
        executed_file: (exe_ino != 0).then(|| FileId::from_kernel(exe_ino, read(bytes, offset_of!(Exec, exe_dev)).unwrap_or(0))),
        fileless: (exe_ino != 0).then(|| read::<u32>(bytes, offset_of!(Exec, exe_nlink)).is_ok_and(|n| n == 0)),
        interactive: (flags & EXEC_TTY_KNOWN != 0).then_some(flags & EXEC_TTY != 0),
        environment_block: environment.to_vec(),
        environment_truncated: flags & EXEC_ENV_TRUNCATED != 0,
        environment: Vec::new(),
    };
    const _: () = assert!(size_of::<Exec>() == Exec::fixed_size() + FILENAME_CAP + ARGS_CAP + ENV_CAP);
    Ok((process, Detail::Exec(exec)))
}

/// The canonical path of `file`, the file the kernel said process `pid` executed, as
/// `/proc/<pid>/exe` shows it: from `/proc/<pid>/exe` while the process still runs it, else
/// (the process is gone, or runs another file by now) from `exec_path`, the path given to
/// execve, resolved here (`..` and symlinks; a relative one from the working directory of
/// `parent`, which the process inherited unless it changed it), or for a script the
/// interpreter its `#!` line names, each accepted only if it leads to `file`. `None` when none
/// establishes it (a memfd of a process gone, a relative path from a directory the parent is
/// no longer in, a file since replaced, a path that only resolves in another mount namespace).
///
/// The process's paths are its own to choose, through any file system, a FUSE one it serves
/// and leaves unanswered among them: they are looked up from the kernel's caches only
/// ([`open_cached`]), and a `#!` line is not read from such a file system. Only `/proc` is
/// walked as usual (its links lead to the files without asking their file systems).
pub(crate) fn executed_path(proc_root: &Path, pid: u32, parent: u32, exec_path: Option<&[u8]>, file: FileId) -> Option<Vec<u8>> {
    let exe = proc_root.join(pid.to_string()).join("exe");
    open_path(&exe).and_then(|opened| canonical_if(&opened, file)).or_else(|| {
        let given = Path::new(std::ffi::OsStr::from_bytes(exec_path?));
        let opened = if given.is_absolute() {
            open_cached(None, given)?
        } else {
            open_cached(Some(&open_path(&proc_root.join(parent.to_string()).join("cwd"))?), given)?
        };
        canonical_if(&opened, file).or_else(|| canonical_if(&open_cached(None, &interpreter(&opened)?)?, file))
    })
}

/// `path` (relative to `dir`, else to ksense's working directory) opened `O_PATH` from what
/// the kernel has cached only (`openat2` with `RESOLVE_CACHED`): a lookup the dentry cache
/// cannot answer at once, which could mean asking a file system that never answers, fails
/// instead. Kernels before 5.12 have no such lookup: there the path is opened as usual.
fn open_cached(dir: Option<&std::fs::File>, path: &Path) -> Option<std::fs::File> {
    use std::os::fd::{AsRawFd, FromRawFd};
    let path = std::ffi::CString::new(path.as_os_str().as_bytes()).ok()?;
    // SAFETY: `open_how` is plain integers, for which zero is valid.
    let mut how: libc::open_how = unsafe { std::mem::zeroed() };
    how.flags = (libc::O_PATH | libc::O_CLOEXEC) as u64;
    how.resolve = libc::RESOLVE_CACHED;
    let at = dir.map_or(libc::AT_FDCWD, AsRawFd::as_raw_fd);
    // SAFETY: `openat2` reads the NUL-terminated path and the `open_how` of the size given, both
    // alive for the call, and returns a new descriptor or -1.
    let fd = unsafe { libc::syscall(libc::SYS_openat2, at, path.as_ptr(), &raw const how, size_of::<libc::open_how>()) };
    if fd >= 0 {
        // SAFETY: a descriptor just opened, owned by nothing else.
        return Some(unsafe { std::fs::File::from_raw_fd(fd as i32) });
    }
    match std::io::Error::last_os_error().raw_os_error() {
        Some(libc::ENOSYS | libc::EINVAL) => {
            let path = Path::new(std::ffi::OsStr::from_bytes(path.as_bytes()));
            match dir {
                Some(dir) => open_path(&Path::new(&format!("/proc/self/fd/{}", dir.as_raw_fd())).join(path)),
                None => open_path(path),
            }
        }
        _ => None,
    }
}

/// The absolute interpreter path of the `#!` line of the `script` opened, if it is a regular
/// file that has one (only the first 256 bytes count, as for the kernel), on a file system
/// that is not served by a user (see [`user_served`]). It is opened for reading only once known
/// to be such a file (through the `O_PATH` descriptor that told so): a path swapped for a FIFO
/// or a device cannot block ksense or open a device.
fn interpreter(opened: &std::fs::File) -> Option<PathBuf> {
    use std::{io::Read, os::fd::AsRawFd};
    let regular = statx_cached(opened, libc::STATX_TYPE).is_some_and(|stx| u32::from(stx.stx_mode) & libc::S_IFMT == libc::S_IFREG);
    if !regular || user_served(opened) {
        return None;
    }
    let mut head = Vec::new();
    std::fs::File::open(format!("/proc/self/fd/{}", opened.as_raw_fd())).ok()?.take(256).read_to_end(&mut head).ok()?;
    let line = head.strip_prefix(b"#!")?;
    let line = &line[..line.iter().position(|&b| b == b'\n').unwrap_or(line.len())];
    let line = &line[line.iter().position(|&b| b != b' ' && b != b'\t')?..];
    let interpreter = &line[..line.iter().position(|&b| b == b' ' || b == b'\t').unwrap_or(line.len())];
    interpreter.starts_with(b"/").then(|| PathBuf::from(std::ffi::OsStr::from_bytes(interpreter)))
}

/// `path` opened `O_PATH`: resolved, but neither read nor opened as a device.
pub(crate) fn open_path(path: &Path) -> Option<std::fs::File> {
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::OpenOptions::new().read(true).custom_flags(libc::O_PATH | libc::O_CLOEXEC).open(path).ok()
}

/// The canonical path of the `opened` file (`O_PATH`: no I/O, no device opened), if it is
/// `file`. Both its identity and its path are taken from that one open file, so a rename or an
/// exec in between cannot pair one file's path with another's identity.
fn canonical_if(opened: &std::fs::File, file: FileId) -> Option<Vec<u8>> {
    use std::os::fd::AsRawFd;
    if !file.is(opened) {
        return None;
    }
    let path = std::fs::read_link(format!("/proc/self/fd/{}", opened.as_raw_fd())).ok()?;
    Some(path.as_os_str().as_bytes().to_vec())
}

/// Splits the argv area: NUL-terminated strings back to back. Empty arguments are kept; a cut
/// last argument (no final NUL) is kept as far as it goes.
pub fn split_args(area: &[u8]) -> Vec<Vec<u8>> {
    if area.is_empty() {
        return Vec::new();
    }
    let area = area.strip_suffix(&[0]).unwrap_or(area);
    area.split(|&b| b == 0).map(<[u8]>::to_vec).collect()
}

/// `process.exec` in the table of kinds.
pub(super) static KIND: KindSpec = KindSpec {
    kind: EventKind::Exec,
    config_key: "exec",
    decode,
    offsets,
    message_id: "40c8251563fd4f72b506462540d4bb5e",
    catalog_subject: "Process @PROCESS_PID@ executed @PROCESS_EXECUTABLE_PATH@",
    catalog: CATALOG,
};

/// The journald catalog entry (`journalctl -x`): what the event is and what its fields say.
const CATALOG: &str = r#"ksense saw a process.exec event: process @PROCESS_PID@ replaced its program
with @PROCESS_EXECUTABLE_PATH@ by execve().

PROCESS_EXECUTABLE_PATH is the canonical path of the file the kernel executed
(symlinks and .. resolved, as /proc/<pid>/exe shows it; absent when it could
not be established, e.g. a memfd of a process already gone);
KSENSE_PROCESS_EXEC_PATH is the path as the process gave it to execve().

PROCESS_COMMAND_LINE is the argument vector joined with spaces, in order.
PROCESS_COMMAND_ARGS repeats once per argument; the journal stores the values
of a repeated field as a set (a repeated value once, in no particular order),
so it tells which arguments there were but not their order or how often one
occurred. Arguments are kept byte for byte (newlines included), except that
a backslash is written as \\ and a byte that is not UTF-8 as \xNN. When the
argument vector was longer than ksense copies, or had more arguments than a
journal entry can hold, KSENSE_PROCESS_COMMAND_ARGS_TRUNCATED=true.
PROCESS_USER_ID, PROCESS_REAL_USER_ID and PROCESS_OWNER give who ran it,
PROCESS_PARENT_PID its parent, PROCESS_LINUX_CGROUP and CONTAINER_ID where it
runs, PROCESS_INTERACTIVE whether it has a controlling terminal.

KSENSE_PROCESS_EXECUTABLE_FILELESS=true says the executed file has no name on
any file system (a memfd, or a file deleted before the exec), as the kernel
saw it. KSENSE_PROCESS_EXECUTABLE_SHA256 is the SHA-256 of the very file the
kernel executed and PROCESS_EXECUTABLE_BUILD_ID_GNU its GNU build-id; when there
is no hash, KSENSE_PROCESS_EXECUTABLE_HASH_SKIPPED says why (too_large, pending,
busy, unreadable, changed). PROCESS_ENVIRONMENT_VARIABLE_<NAME> holds the value of each variable of
[probes] environment (default LD_PRELOAD, LD_LIBRARY_PATH, LD_AUDIT) the new
program started with.

This is routine activity, logged at priority info; an exec of a fileless
program, or with LD_PRELOAD or LD_AUDIT set, is logged at priority warning.
"#;

/// The fields of the plain `sched_process_exec` tracepoint (the BTF hooks read what every
/// kind shares).
fn offsets(r: &mut Resolver<'_>) {
    r.tracepoint_fields(Hook::TracepointSchedProcessExec, 0, &[
        ("filename", |c| &mut c.tracepoint.exec_filename),
        ("old_pid", |c| &mut c.tracepoint.exec_old_pid),
    ]);
}

impl Payload for ProcessExec {
    fn render(&self, process: &Process, _time: SystemTime, attrs: &mut Vec<(&'static str, Value)>) -> (Severity, String) {
        attrs.push((schema::KSENSE_PROCESS_CODE_START, hex(self.code_start)));
        attrs.push((schema::KSENSE_PROCESS_CODE_END, hex(self.code_end)));
        if let Some(path) = &self.exec_path {
            push_text(attrs, schema::KSENSE_PROCESS_EXEC_PATH, path);
        }
        if let Some(fileless) = self.fileless {
            attrs.push((schema::KSENSE_PROCESS_EXECUTABLE_FILELESS, Value::Bool(fileless)));
        }
        if let Some(interactive) = self.interactive {
            attrs.push((schema::PROCESS_INTERACTIVE, Value::Bool(interactive)));
        }
        for (attribute, value) in &self.environment {
            push_text(attrs, attribute, value);
        }
        if self.environment_truncated {
            attrs.push((schema::KSENSE_PROCESS_ENVIRONMENT_TRUNCATED, Value::Bool(true)));
        }
        // Code from no file, or a library forced into the new image: worth a look.
        let loader_hooked = self.environment.iter().any(|(attribute, value)| {
            // The variable's name is the attribute's last component (names have no dots).
            let name = attribute.rsplit_once('.').map_or("", |(_, name)| name);
            !value.is_empty() && LOADER_VARIABLES.contains(&name)
        });
        let severity = if self.fileless == Some(true) || loader_hooked { Severity::Warn } else { Severity::Info };
        let p = process;
        // The command line is among the attributes already (Event::to_record) when argv is known.
        let command_line = attrs.iter().find(|(name, _)| *name == schema::PROCESS_COMMAND_LINE);
        let command = match command_line {
            Some((_, Value::Str(line))) if p.args.as_ref().is_some_and(|args| !args.is_empty()) => one_line(line),
            _ => one_line(&p.exe.as_deref().or(self.exec_path.as_deref()).map(lossless).unwrap_or_default()),
        };
        (severity, format!("{} executed {command}", process.who()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::{decode::tests::exec_record, record::LogRecord};
    use std::mem::offset_of;

    /// An exec record of the marker whose executed inode has `nlink` links (no inode read when
    /// `None`) and whose environment is `environment`; its record after picking `names`.
    fn exec_with(nlink: Option<u32>, environment: &[u8], names: &[&str]) -> LogRecord {
        let args = b"marker\0";
        let mut bytes = exec_record(Task { tgid: 42, tid: 42, ..Task::default() }, b"/usr/bin/marker", &[args.as_slice(), environment].concat());
        let mut put = |at: usize, value: &[u8]| bytes[at..at + value.len()].copy_from_slice(value);
        put(offset_of!(Exec, args_len), &(args.len() as u32).to_ne_bytes());
        put(offset_of!(Exec, env_len), &(environment.len() as u32).to_ne_bytes());
        if let Some(nlink) = nlink {
            put(offset_of!(Exec, exe_ino), &42u64.to_ne_bytes());
            put(offset_of!(Exec, exe_nlink), &nlink.to_ne_bytes());
        }
        let mut event = crate::decode::decode(&bytes, 1, &Clock::sample(), SystemTime::now()).unwrap();
        let Detail::Exec(exec) = &mut event.detail else { panic!("not an exec: {event:?}") };
        ReportedVariables::new(&names.iter().map(|n| n.to_string()).collect::<Vec<_>>()).pick(exec);
        event.to_record()
    }

    #[test]
    fn fileless_is_the_link_count_of_the_executed_inode_and_is_warn() {
        let record = exec_with(Some(0), b"", &[]);
        assert_eq!(record.attribute(schema::KSENSE_PROCESS_EXECUTABLE_FILELESS), Some(&Value::Bool(true)));
        assert_eq!(record.severity, Severity::Warn);
        let record = exec_with(Some(1), b"", &[]);
        assert_eq!(record.attribute(schema::KSENSE_PROCESS_EXECUTABLE_FILELESS), Some(&Value::Bool(false)));
        assert_eq!(record.severity, Severity::Info);
        let record = exec_with(None, b"", &[]);
        assert_eq!(record.attribute(schema::KSENSE_PROCESS_EXECUTABLE_FILELESS), None, "unknown without the inode");
    }

    #[test]
    fn configured_variables_are_reported_and_loader_hooks_are_warn() {
        let names = ["LD_PRELOAD", "LD_LIBRARY_PATH", "LD_AUDIT"];
        let environment = b"PATH=/bin\0LD_PRELOAD=/a.so\0LD_PRELOAD_X=1\0LD_PRELOAD=/b.so\0LD_LIBRARY_PATH=/l\xff\0";
        let record = exec_with(Some(1), environment, &names);
        // The last LD_PRELOAD, as the dynamic loader takes it; the name must match whole.
        assert_eq!(record.attribute("process.environment_variable.LD_PRELOAD"), Some(&Value::Str("/b.so".into())));
        assert_eq!(record.attribute("process.environment_variable.LD_LIBRARY_PATH"), Some(&Value::Str("/l\\xff".into())));
        assert_eq!(
            record.attribute(schema::KSENSE_ESCAPED),
            Some(&Value::StrArray(vec!["process.environment_variable.LD_LIBRARY_PATH".into()]))
        );
        assert_eq!(record.attribute("process.environment_variable.LD_AUDIT"), None);
        assert_eq!(record.attribute("process.environment_variable.PATH"), None, "not configured");
        assert_eq!(record.severity, Severity::Warn);

        let record = exec_with(Some(1), b"LD_LIBRARY_PATH=/l\0LD_PRELOAD=\0", &names);
        assert_eq!(record.attribute("process.environment_variable.LD_LIBRARY_PATH"), Some(&Value::Str("/l".into())));
        assert_eq!(record.severity, Severity::Info, "an empty LD_PRELOAD loads nothing");
        let record = exec_with(Some(1), b"LD_AUDIT=/x.so\0", &names);
        assert_eq!(record.severity, Severity::Warn);
        let record = exec_with(Some(1), b"LD_AUDIT=/x.so\0", &["LD_LIBRARY_PATH"]);
        assert_eq!(record.attribute("process.environment_variable.LD_AUDIT"), None, "not configured");
    }

    /// The identity key is the executed inode, its device and its change time, read only when
    /// the probe says it read the change time; a flag bit in the nanoseconds is dropped.
    #[test]
    fn the_identity_key_is_inode_device_and_change_time() {
        let mut bytes = exec_record(Task { tgid: 42, tid: 42, ..Task::default() }, b"/usr/bin/ls", b"ls\0");
        let mut put = |at: usize, value: u64| bytes[at..at + 8].copy_from_slice(&value.to_ne_bytes());
        put(offset_of!(Exec, exe_ino), 77);
        put(offset_of!(Exec, exe_dev), (254 << 20) | 3);
        put(offset_of!(Exec, exe_ctime_sec), 1_700_000_000);
        put(offset_of!(Exec, exe_ctime_nsec), (1 << 31) | 123_456_789);
        let key = |bytes: &[u8]| {
            let event = crate::decode::decode(bytes, 1, &Clock::sample(), SystemTime::now()).unwrap();
            let Detail::Exec(exec) = event.detail else { panic!("not an exec") };
            exec.identity_key()
        };
        assert_eq!(key(&bytes), None, "the change time was not read");
        bytes[offset_of!(Exec, flags)..][..4].copy_from_slice(&EXEC_CTIME_KNOWN.to_ne_bytes());
        let expected = FileKey { ino: 77, major: 254, minor: 3, ctime_sec: 1_700_000_000, ctime_nsec: 123_456_789 };
        assert_eq!(key(&bytes), Some(expected));
    }

    #[test]
    fn split_args_cases() {
        assert_eq!(split_args(b""), Vec::<Vec<u8>>::new());
        assert_eq!(split_args(b"a\0"), vec![b"a".to_vec()]);
        assert_eq!(split_args(b"a\0\0"), vec![b"a".to_vec(), b"".to_vec()]);
        assert_eq!(split_args(b"a\0bc"), vec![b"a".to_vec(), b"bc".to_vec()]);
    }

    /// Asked without reaching the file system, an open file's identity is the one `stat` gives.
    #[test]
    fn an_open_files_identity_is_the_one_stat_gives() {
        let exe = std::env::current_exe().unwrap();
        let opened = open_path(&exe).unwrap();
        assert_eq!(FileId::of_open(&opened), Some(FileId::of(&std::fs::metadata(&exe).unwrap())));
        assert!(FileId::of(&std::fs::metadata(&exe).unwrap()).is(&opened));
        assert!(!FileId::of(&std::fs::metadata("/").unwrap()).is(&opened));
    }

    /// The executed file's canonical path: `..` and symlinks resolved, and only for the file the
    /// kernel named.
    #[test]
    fn executed_path_is_canonical_and_of_the_executed_file() {
        let root = std::env::temp_dir().join(format!("ksense-exec-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        let real = root.join("bin/evil");
        std::fs::create_dir_all(root.join("bin")).unwrap();
        std::fs::create_dir_all(root.join("excluded")).unwrap();
        std::fs::write(&real, b"x").unwrap();
        std::fs::write(root.join("bin/other"), b"y").unwrap();
        std::os::unix::fs::symlink(&real, root.join("excluded/x")).unwrap();
        let file = FileId::of(&std::fs::metadata(&real).unwrap());
        let canonical = std::fs::canonicalize(&real).unwrap().into_os_string().into_vec();
        use std::os::unix::ffi::OsStringExt;
        let via = |p: &Path| p.as_os_str().as_bytes().to_vec();
        // The process is gone (no /proc/40): the execve path, resolved.
        let dotdot = via(&root.join("excluded/../bin/evil"));
        assert_eq!(executed_path(&root, 40, 41, Some(&dotdot), file), Some(canonical.clone()));
        assert_eq!(executed_path(&root, 40, 41, Some(&via(&root.join("excluded/x"))), file), Some(canonical.clone()));
        assert_eq!(executed_path(&root, 40, 41, Some(&via(&root.join("bin/other"))), file), None, "another file");
        assert_eq!(executed_path(&root, 40, 41, Some(b"bin/evil"), file), None, "relative: the parent's cwd unknown");
        // Relative: from the parent's working directory, if it leads to the file.
        std::fs::create_dir_all(root.join("41")).unwrap();
        std::os::unix::fs::symlink(&root, root.join("41/cwd")).unwrap();
        assert_eq!(executed_path(&root, 40, 41, Some(b"bin/evil"), file), Some(canonical.clone()));
        assert_eq!(executed_path(&root, 40, 41, Some(b"./excluded/../bin/evil"), file), Some(canonical.clone()));
        assert_eq!(executed_path(&root, 40, 41, Some(b"bin/other"), file), None, "another file");
        // A script: the kernel executed its interpreter (here `evil`), which may have moved on.
        std::fs::write(root.join("bin/script"), format!("#! {} -x\nexit 0\n", root.join("excluded/x").display())).unwrap();
        assert_eq!(executed_path(&root, 40, 41, Some(&via(&root.join("bin/script"))), file), Some(canonical.clone()));
        std::fs::write(root.join("bin/script"), b"#!bin/evil\n").unwrap();
        assert_eq!(executed_path(&root, 40, 42, Some(&via(&root.join("bin/script"))), file), None, "relative interpreter");
        // A path swapped for a FIFO since: not read (which would block).
        let fifo = root.join("bin/fifo");
        let fifo_c = std::ffi::CString::new(fifo.as_os_str().as_bytes()).unwrap();
        assert_eq!(unsafe { libc::mkfifo(fifo_c.as_ptr(), 0o600) }, 0);
        assert_eq!(executed_path(&root, 40, 41, Some(&via(&fifo)), file), None);
        // Alive: /proc/<pid>/exe, when it is the file.
        std::fs::create_dir_all(root.join("40")).unwrap();
        std::os::unix::fs::symlink(&real, root.join("40/exe")).unwrap();
        assert_eq!(executed_path(&root, 40, 41, None, file), Some(canonical));
        std::fs::remove_dir_all(root).unwrap();
    }
}
