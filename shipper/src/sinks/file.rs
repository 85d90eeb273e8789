//! JSON lines to a file (`[sinks.file]`), rotated by size: when the file reaches `max_bytes` it
//! becomes `<path>.1` (the older ones shift to `.2`, ... up to `keep`, the oldest is deleted) and
//! a new file starts. Lines are never split across files.
//!
//! ksense writes as root into a directory other users may be able to see, so the file is handled
//! as an attacker would try to abuse it:
//!
//! - The directory is opened once, component by component from `/`, without following a
//!   symbolic link anywhere ([`open_dir`]), and must be owned by root or by ksense's own user
//!   and writable by its owner only. Every open, rename and unlink afterwards is relative to that
//!   descriptor (`openat`, `renameat`, `unlinkat`), so renaming the directory or a parent away
//!   and putting a symbolic link in its place cannot redirect a write or a rotation.
//! - The file is opened with `O_NOFOLLOW` (a symbolic link at its name is refused, not
//!   followed) and must be a regular file; a new one is created with mode 0640 whatever the
//!   umask (the packaged unit's `UMask=0077` alone would make it 0600).
//!
//! Under the packaged unit, `LogsDirectory=ksense` creates `/var/log/ksense` (root's, 0755) and
//! makes it writable despite `ProtectSystem=strict`: the default path works there as it is.
use std::{
    ffi::{CStr, CString},
    fs::File,
    io::{self, BufWriter, Write},
    os::{
        fd::{AsRawFd, FromRawFd, OwnedFd, RawFd},
        unix::ffi::OsStrExt,
    },
    path::{Component, Path, PathBuf},
    sync::Arc,
};

use serde::{Deserialize, Deserializer};

use super::{Sink, jsonl::write_record};
use crate::{
    record::LogRecord,
    telemetry::{Counters, SinkStats},
};

/// The most rotated files `keep` may ask for.
pub const MAX_KEEP: u32 = 100;

/// The mode of a file the sink creates: the owner writes, its group may read (a log reader
/// group), others get nothing.
pub const FILE_MODE: libc::mode_t = 0o640;

/// `[sinks.file]`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct FileConfig {
    /// Write JSON lines to `path`.
    pub enabled: bool,
    /// The file. Its directory must exist, be owned by root (or ksense's user) and be writable
    /// by its owner only; no component of the path may be a symbolic link.
    pub path: PathBuf,
    /// Size at which the file is rotated.
    pub max_bytes: u64,
    /// Rotated files kept (`<path>.1` .. `<path>.<keep>`), 0 to [`MAX_KEEP`]; 0 keeps none.
    #[serde(deserialize_with = "keep_in_range")]
    pub keep: u32,
    /// Only these event kinds go to the file (see [`crate::sinks::Selection`]); all when absent.
    pub events: Option<Vec<crate::kinds::EventName>>,
    /// Only records of this severity or above go to the file.
    pub min_severity: Option<crate::record::Severity>,
}

impl Default for FileConfig {
    fn default() -> Self {
        FileConfig {
            enabled: false,
            path: "/var/log/ksense/events.json".into(),
            max_bytes: 100 << 20,
            keep: 5,
            events: None,
            min_severity: None,
        }
    }
}

/// `keep`, refused (at its place in the file) beyond [`MAX_KEEP`].
fn keep_in_range<'de, D: Deserializer<'de>>(deserializer: D) -> Result<u32, D::Error> {
    let keep = u32::deserialize(deserializer)?;
    if keep > MAX_KEEP {
        return Err(serde::de::Error::custom(format!(
            "sinks.file.keep = {keep}: expected 0 to {MAX_KEEP} rotated files"
        )));
    }
    Ok(keep)
}

/// Appends JSON lines to a file, rotating it by size.
pub struct FileSink {
    config: FileConfig,
    /// The file's directory, checked when it was opened; every file operation is relative to it.
    dir: OwnedFd,
    /// The file's name in `dir`.
    name: CString,
    out: BufWriter<File>,
    size: u64,
    line: Vec<u8>,
    stats: Arc<SinkStats>,
}

impl FileSink {
    /// Opens (appends to) the configured file, after checking its directory.
    pub fn open(config: FileConfig, stats: Arc<SinkStats>) -> io::Result<FileSink> {
        let path = std::path::absolute(&config.path)?;
        let (Some(parent), Some(name)) = (path.parent(), path.file_name()) else {
            return Err(io::Error::new(io::ErrorKind::InvalidInput, format!("{}: names no file", path.display())));
        };
        let dir = open_dir(parent)?;
        let name = CString::new(name.as_bytes())
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, format!("{}: holds a NUL byte", path.display())))?;
        let file = open_append(&dir, &name, &path)?;
        let size = file.metadata()?.len();
        Ok(FileSink {
            out: BufWriter::with_capacity(64 * 1024, file),
            config,
            dir,
            name,
            size,
            line: Vec::with_capacity(2048),
            stats,
        })
    }

    /// `<name>.<n>`.
    fn numbered(&self, n: u32) -> CString {
        let mut name = self.name.as_bytes().to_vec();
        name.extend_from_slice(format!(".{n}").as_bytes());
        CString::new(name).expect("a name without NUL, and a number")
    }

    fn rotate(&mut self) -> io::Result<()> {
        self.out.flush()?;
        let dir = self.dir.as_raw_fd();
        let keep = self.config.keep;
        if keep == 0 {
            check(unlink_in(dir, &self.name), &self.config.path)?;
        } else {
            // Renaming onto an existing name replaces it: `.keep`, the oldest, goes first.
            for n in (1..keep).rev() {
                let (from, to) = (self.numbered(n), self.numbered(n + 1));
                absent_is_fine(rename_in(dir, &from, &to), &self.config.path)?;
            }
            check(rename_in(dir, &self.name, &self.numbered(1)), &self.config.path)?;
        }
        // Older files a larger `keep` left behind.
        for n in keep + 1..=MAX_KEEP {
            absent_is_fine(unlink_in(dir, &self.numbered(n)), &self.config.path)?;
        }
        self.out = BufWriter::with_capacity(64 * 1024, open_append(&self.dir, &self.name, &self.config.path)?);
        self.size = 0;
        Ok(())
    }
}

/// The result of a libc call that returns -1 and sets errno on failure, with `path` named.
fn check(result: libc::c_int, path: &Path) -> io::Result<libc::c_int> {
    if result < 0 {
        let e = io::Error::last_os_error();
        return Err(io::Error::new(e.kind(), format!("{}: {e}", path.display())));
    }
    Ok(result)
}

/// [`check`], where a missing file (ENOENT) is no error.
fn absent_is_fine(result: libc::c_int, path: &Path) -> io::Result<()> {
    if result < 0 && io::Error::last_os_error().raw_os_error() == Some(libc::ENOENT) {
        return Ok(());
    }
    check(result, path).map(drop)
}

/// `renameat(2)` within `dir`.
fn rename_in(dir: RawFd, from: &CStr, to: &CStr) -> libc::c_int {
    // SAFETY: NUL-terminated names and a directory descriptor we own.
    unsafe { libc::renameat(dir, from.as_ptr(), dir, to.as_ptr()) }
}

/// `unlinkat(2)` of a file in `dir`.
fn unlink_in(dir: RawFd, name: &CStr) -> libc::c_int {
    // SAFETY: a NUL-terminated name and a directory descriptor we own.
    unsafe { libc::unlinkat(dir, name.as_ptr(), 0) }
}

/// `fstat(2)`.
fn stat(fd: RawFd, path: &Path) -> io::Result<libc::stat> {
    // SAFETY: stat is plain data, filled in by fstat on a valid descriptor.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    check(unsafe { libc::fstat(fd, &mut st) }, path)?;
    Ok(st)
}

/// Opens `dir` (absolute) for the sink: one component at a time from `/`, never following a
/// symbolic link, and refuses it unless root or ksense's own user owns it and nobody else can
/// write to it. Parents are not checked: whoever can write to one can rename the directory
/// away, but the descriptor keeps pointing at the real one, and what is put at the path instead
/// is refused at the next start (owned by someone else, or a symbolic link).
pub fn open_dir(dir: &Path) -> io::Result<OwnedFd> {
    let refuse = |what: String| io::Error::new(io::ErrorKind::PermissionDenied, format!("{}: {what}", dir.display()));
    let open = |at: RawFd, name: &CStr| -> io::Result<OwnedFd> {
        let flags = libc::O_RDONLY | libc::O_DIRECTORY | libc::O_NOFOLLOW | libc::O_CLOEXEC;
        // SAFETY: a NUL-terminated name; the descriptor returned is checked and owned.
        let fd = unsafe { libc::openat(at, name.as_ptr(), flags) };
        // SAFETY: a descriptor openat just returned.
        (fd >= 0).then(|| unsafe { OwnedFd::from_raw_fd(fd) }).ok_or_else(io::Error::last_os_error)
    };
    let mut current = open(libc::AT_FDCWD, c"/").map_err(|e| refuse(format!("cannot open /: {e}")))?;
    let mut walked = PathBuf::from("/");
    for component in dir.components() {
        let name = match component {
            Component::RootDir | Component::CurDir => continue,
            Component::Normal(name) => name,
            Component::Prefix(_) | Component::ParentDir => {
                return Err(refuse("give the file sink's directory without `..`".into()));
            }
        };
        walked.push(name);
        let name = CString::new(name.as_bytes()).map_err(|_| refuse("holds a NUL byte".into()))?;
        current = open(current.as_raw_fd(), &name).map_err(|e| {
            let link = std::fs::symlink_metadata(&walked).is_ok_and(|m| m.file_type().is_symlink());
            if link {
                let which = if walked == dir { String::new() } else { format!(" (at {})", walked.display()) };
                refuse(format!(
                    "a symbolic link{which}, which the file sink does not follow (another user \
                     could change where it points): give the real path (`realpath {}`)",
                    dir.display()
                ))
            } else {
                refuse(format!("cannot open {}: {e}", walked.display()))
            }
        })?;
    }
    let st = stat(current.as_raw_fd(), dir)?;
    // SAFETY: geteuid cannot fail.
    let me = unsafe { libc::geteuid() };
    if st.st_uid != 0 && st.st_uid != me {
        return Err(refuse(format!(
            "owned by uid {}, not root or ksense (uid {me}): its owner could swap the files in it; \
             `chown root {}` or choose another [sinks.file] path",
            st.st_uid,
            dir.display()
        )));
    }
    if st.st_mode & 0o022 != 0 {
        return Err(refuse(format!(
            "writable by group or others (mode {:04o}): another user could swap the files in it; \
             `chmod go-w {}` or choose another [sinks.file] path",
            st.st_mode & 0o7777,
            dir.display()
        )));
    }
    Ok(current)
}

/// Opens `name` in `dir` for appending, creating it with [`FILE_MODE`]; `path` is for errors.
fn open_append(dir: &OwnedFd, name: &CStr, path: &Path) -> io::Result<File> {
    // O_NONBLOCK: a FIFO at the name fails (ENXIO) or is refused below instead of blocking
    // the open.
    let flags = libc::O_WRONLY | libc::O_APPEND | libc::O_NOFOLLOW | libc::O_CLOEXEC | libc::O_NONBLOCK;
    let open = |flags: libc::c_int| {
        // SAFETY: a NUL-terminated name and a directory descriptor we own.
        unsafe { libc::openat(dir.as_raw_fd(), name.as_ptr(), flags, libc::c_uint::from(FILE_MODE)) }
    };
    let mut fd = open(flags | libc::O_CREAT | libc::O_EXCL);
    let created = fd >= 0;
    if !created && io::Error::last_os_error().raw_os_error() == Some(libc::EEXIST) {
        fd = open(flags);
    }
    if fd < 0 {
        let e = io::Error::last_os_error();
        if e.raw_os_error() == Some(libc::ELOOP) {
            return Err(io::Error::new(
                io::ErrorKind::PermissionDenied,
                format!("{}: a symbolic link, which the file sink does not follow: remove it", path.display()),
            ));
        }
        return Err(io::Error::new(e.kind(), format!("{}: {e}", path.display())));
    }
    // SAFETY: a descriptor openat just returned.
    let file = File::from(unsafe { OwnedFd::from_raw_fd(fd) });
    let st = stat(file.as_raw_fd(), path)?;
    if st.st_mode & libc::S_IFMT != libc::S_IFREG {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{}: not a regular file: remove it or choose another [sinks.file] path", path.display()),
        ));
    }
    // A regular file: writes block as they should (O_NONBLOCK off again, O_APPEND kept).
    // SAFETY: fcntl on a valid descriptor.
    check(unsafe { libc::fcntl(file.as_raw_fd(), libc::F_SETFL, libc::O_APPEND) }, path)?;
    if created {
        // The umask took bits off the mode given to openat.
        // SAFETY: fchmod on a valid descriptor.
        check(unsafe { libc::fchmod(file.as_raw_fd(), FILE_MODE) }, path)?;
    }
    Ok(file)
}

impl Sink for FileSink {
    fn name(&self) -> &'static str {
        "file"
    }

    fn write(&mut self, record: &LogRecord) -> io::Result<()> {
        self.line.clear();
        write_record(&mut self.line, record)?;
        self.line.push(b'\n');
        if self.size > 0 && self.size + self.line.len() as u64 > self.config.max_bytes {
            self.rotate()?;
        }
        self.out.write_all(&self.line)?;
        self.size += self.line.len() as u64;
        Counters::bump(&self.stats.delivered);
        Ok(())
    }

    fn flush(&mut self) -> io::Result<()> {
        self.out.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::{Severity, Value};
    use std::{
        os::unix::fs::{PermissionsExt, symlink},
        time::SystemTime,
    };

    /// A fresh directory (root's or the test user's, 0755) removed when dropped.
    struct TempDir(PathBuf);

    impl TempDir {
        fn new(name: &str) -> TempDir {
            let dir = std::env::temp_dir().join(format!("ksense-file-sink-{name}-{}", std::process::id()));
            let _ = std::fs::remove_dir_all(&dir);
            std::fs::create_dir_all(&dir).unwrap();
            std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
            TempDir(dir)
        }
    }

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    fn config(path: &Path, max_bytes: u64, keep: u32) -> FileConfig {
        FileConfig { enabled: true, path: path.to_owned(), max_bytes, keep, ..FileConfig::default() }
    }

    fn record(seq: i64) -> LogRecord {
        LogRecord {
            event_name: "process.exec",
            severity: Severity::Info,
            time: SystemTime::now(),
            observed_time: SystemTime::now(),
            body: "x".repeat(100),
            attributes: vec![("ksense.event.seq", Value::Int(seq))],
        }
    }

    /// The `ksense.event.seq` of each line of `path`, checking each line is whole JSON.
    fn seqs(path: &Path) -> Vec<i64> {
        let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        text.lines()
            .map(|line| {
                let event: serde_json::Value = serde_json::from_str(line).unwrap();
                event["attributes"]["ksense.event.seq"].as_i64().unwrap()
            })
            .collect()
    }

    fn mode(path: &Path) -> u32 {
        std::fs::symlink_metadata(path).unwrap().permissions().mode() & 0o7777
    }

    #[test]
    fn rotates_by_size_and_keeps_whole_lines() {
        let dir = TempDir::new("rotate");
        let path = dir.0.join("events.json");
        let mut sink = FileSink::open(config(&path, 1000, 2), Arc::default()).unwrap();
        // SAFETY: fcntl on the sink's open file.
        let flags = unsafe { libc::fcntl(sink.out.get_ref().as_raw_fd(), libc::F_GETFL) };
        assert_eq!(flags & (libc::O_APPEND | libc::O_NONBLOCK), libc::O_APPEND, "appending, blocking writes");
        for seq in 0..40 {
            sink.write(&record(seq)).unwrap();
        }
        sink.flush().unwrap();
        // Newest in the file itself, then .1, then .2; what is older is gone.
        let files = [path.clone(), dir.0.join("events.json.1"), dir.0.join("events.json.2")];
        let mut all = Vec::new();
        for file in files.iter().rev() {
            assert!(std::fs::metadata(file).unwrap().len() <= 1000, "{}", file.display());
            all.extend(seqs(file));
        }
        assert!(!dir.0.join("events.json.3").exists());
        let first = all[0];
        assert!(first > 0, "the oldest lines are deleted");
        assert_eq!(all, (first..40).collect::<Vec<_>>(), "in order, none missing, none twice");
    }

    /// Lowering `keep` deletes, at the next rotation, the rotated files beyond it.
    #[test]
    fn rotation_deletes_files_beyond_keep() {
        let dir = TempDir::new("keep");
        let path = dir.0.join("events.json");
        // One line (about 200 bytes) per file.
        let mut sink = FileSink::open(config(&path, 300, 4), Arc::default()).unwrap();
        for seq in 0..30 {
            sink.write(&record(seq)).unwrap();
        }
        sink.flush().unwrap();
        assert!(dir.0.join("events.json.4").exists());
        drop(sink);
        let mut sink = FileSink::open(config(&path, 300, 1), Arc::default()).unwrap();
        for seq in 30..40 {
            sink.write(&record(seq)).unwrap();
        }
        sink.flush().unwrap();
        let mut names: Vec<String> =
            std::fs::read_dir(&dir.0).unwrap().map(|e| e.unwrap().file_name().into_string().unwrap()).collect();
        names.sort();
        assert_eq!(names, ["events.json", "events.json.1"]);
        assert_eq!(seqs(&path), [39]);
        assert_eq!(seqs(&dir.0.join("events.json.1")), [38]);
    }

    #[test]
    fn keep_zero_keeps_no_rotated_file() {
        let dir = TempDir::new("keep0");
        let path = dir.0.join("events.json");
        let mut sink = FileSink::open(config(&path, 300, 0), Arc::default()).unwrap();
        for seq in 0..10 {
            sink.write(&record(seq)).unwrap();
        }
        sink.flush().unwrap();
        assert_eq!(std::fs::read_dir(&dir.0).unwrap().count(), 1);
        assert_eq!(seqs(&path), [9]);
    }

    #[test]
    fn a_new_file_is_0640_whatever_the_umask() {
        let dir = TempDir::new("mode");
        let path = dir.0.join("events.json");
        // SAFETY: umask cannot fail; other tests' files in this process may be created 0600
        // meanwhile, which they do not check.
        let old = unsafe { libc::umask(0o077) };
        let opened = FileSink::open(config(&path, 1000, 1), Arc::default());
        // SAFETY: as above.
        unsafe { libc::umask(old) };
        let mut sink = opened.unwrap();
        assert_eq!(mode(&path), 0o640);
        for seq in 0..20 {
            sink.write(&record(seq)).unwrap();
        }
        assert_eq!(mode(&path), 0o640, "the file created by a rotation");
        assert_eq!(mode(&dir.0.join("events.json.1")), 0o640);

        // An existing file keeps the mode its owner gave it.
        drop(sink);
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        FileSink::open(config(&path, 1000, 1), Arc::default()).unwrap();
        assert_eq!(mode(&path), 0o600);
    }

    #[test]
    fn a_symlink_at_the_path_is_refused_not_followed() {
        let dir = TempDir::new("link");
        let target = dir.0.join("target");
        std::fs::write(&target, "precious\n").unwrap();
        let path = dir.0.join("events.json");
        symlink(&target, &path).unwrap();
        let e = FileSink::open(config(&path, 1000, 1), Arc::default()).err().expect("refused");
        assert!(e.to_string().contains("symbolic link"), "{e}");
        assert_eq!(std::fs::read_to_string(&target).unwrap(), "precious\n");

        // A dangling link is not followed to create its target either.
        std::fs::remove_file(&target).unwrap();
        assert!(FileSink::open(config(&path, 1000, 1), Arc::default()).is_err());
        assert!(!target.exists(), "the link's target was created");
    }

    /// A symbolic link put at a rotated file's name is replaced by the rename, never written
    /// through.
    #[test]
    fn a_symlink_at_a_rotated_name_is_replaced_not_followed() {
        let dir = TempDir::new("rotlink");
        let target = dir.0.join("target");
        std::fs::write(&target, "precious\n").unwrap();
        let path = dir.0.join("events.json");
        symlink(&target, dir.0.join("events.json.1")).unwrap();
        let mut sink = FileSink::open(config(&path, 300, 2), Arc::default()).unwrap();
        for seq in 0..6 {
            sink.write(&record(seq)).unwrap();
        }
        sink.flush().unwrap();
        assert_eq!(std::fs::read_to_string(&target).unwrap(), "precious\n");
        assert!(!std::fs::symlink_metadata(dir.0.join("events.json.1")).unwrap().file_type().is_symlink());
    }

    #[test]
    fn a_symlinked_directory_is_refused() {
        let dir = TempDir::new("dirlink");
        let real = dir.0.join("real");
        std::fs::create_dir(&real).unwrap();
        let link = dir.0.join("link");
        symlink(&real, &link).unwrap();
        let e = FileSink::open(config(&link.join("events.json"), 1000, 1), Arc::default()).err().expect("refused");
        let message = e.to_string();
        assert!(message.contains("symbolic link") && message.contains(&*link.to_string_lossy()), "{message}");
        assert!(message.contains("realpath"), "says what to do: {message}");
        assert!(!real.join("events.json").exists());

        // A link further up the path as well.
        std::fs::create_dir(real.join("sub")).unwrap();
        let e = FileSink::open(config(&link.join("sub/events.json"), 1000, 1), Arc::default()).err().expect("refused");
        assert!(e.to_string().contains(&format!("symbolic link (at {})", link.display())), "{e}");
        // The real path works.
        FileSink::open(config(&real.join("events.json"), 1000, 1), Arc::default()).unwrap();
    }

    #[test]
    fn a_directory_others_can_write_to_is_refused() {
        let dir = TempDir::new("open");
        let path = dir.0.join("events.json");
        for mode in [0o777, 0o775, 0o1777] {
            std::fs::set_permissions(&dir.0, std::fs::Permissions::from_mode(mode)).unwrap();
            let e = FileSink::open(config(&path, 1000, 1), Arc::default()).err().expect("refused");
            assert_eq!(e.kind(), io::ErrorKind::PermissionDenied);
            let message = e.to_string();
            assert!(message.contains(&*dir.0.to_string_lossy()) && message.contains("chmod go-w"), "{message}");
            assert!(!path.exists());
        }
    }

    #[test]
    fn a_directory_owned_by_another_user_is_refused() {
        // SAFETY: geteuid cannot fail.
        if unsafe { libc::geteuid() } != 0 {
            eprintln!("skipped: giving a directory to another user needs root");
            return;
        }
        let dir = TempDir::new("owner");
        let c = CString::new(dir.0.as_os_str().as_bytes()).unwrap();
        // SAFETY: a NUL-terminated path.
        assert_eq!(unsafe { libc::chown(c.as_ptr(), 65534, 65534) }, 0);
        let e = FileSink::open(config(&dir.0.join("events.json"), 1000, 1), Arc::default()).err().expect("refused");
        let message = e.to_string();
        assert!(message.contains("owned by uid 65534") && message.contains("chown root"), "{message}");
    }

    #[test]
    fn a_fifo_at_the_path_is_refused_without_blocking() {
        let dir = TempDir::new("fifo");
        let path = dir.0.join("events.json");
        let c = CString::new(path.as_os_str().as_bytes()).unwrap();
        // SAFETY: a NUL-terminated path.
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
        assert!(FileSink::open(config(&path, 1000, 1), Arc::default()).is_err());
    }

    /// The default path is in the directory the packaged unit creates (`LogsDirectory=`).
    #[test]
    fn the_default_path_is_in_the_units_logs_directory() {
        let unit = include_str!("../../../packaging/ksense.service");
        let logs: Vec<&str> = unit.lines().filter_map(|l| l.strip_prefix("LogsDirectory=")).collect();
        assert_eq!(logs, ["ksense"], "LogsDirectory= in packaging/ksense.service");
        let default = FileConfig::default().path;
        assert_eq!(default, Path::new("/var/log").join(logs[0]).join("events.json"));
    }
}
