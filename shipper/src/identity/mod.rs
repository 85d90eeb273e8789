//! Executable identity: the GNU build-id and the SHA-256 of the very file the kernel executed,
//! for every exec and every later event of that process.
//!
//! The exec probe reads the executed inode's device, number and change time (ctime); together
//! they name one content of one file (any write moves the ctime), and are the key of a bounded
//! cache, so each file is read once however often it runs. A miss is hashed by a worker thread,
//! off the pipeline: the pipeline holds the exec (and what follows it, in order) for at most
//! `[identity] wait_ms`, then lets it go without the hash (`pending`); the process table keeps
//! the exec's [`IdentitySlot`], so the process's later events carry the hash once it is known.
//!
//! The file is opened through `/proc/<pid>/exe` (the executed file itself, even deleted or a
//! memfd, while the process runs), else by the absolute path given to execve; either way what
//! was opened is hashed only if its device, inode and ctime are the kernel's, and the hash is
//! kept only if the ctime did not move while it was read: a file replaced or rewritten since the
//! exec is never hashed in its place.
use std::{
    fs::{File, Metadata, OpenOptions},
    io::Read,
    os::{
        fd::AsRawFd,
        unix::{ffi::OsStrExt, fs::MetadataExt, fs::OpenOptionsExt},
    },
    path::{Path, PathBuf},
    sync::{
        Arc, Mutex, OnceLock, PoisonError,
        mpsc::{Receiver, SyncSender, TrySendError, sync_channel},
    },
    time::Duration,
};

use serde::Deserialize;
use toml::Spanned;

use crate::{kinds::exec::FileId, lru::LruMap, record::Value, schema};

pub mod elf;

/// `[identity]`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct IdentityConfig {
    /// Report `process.executable.build_id.gnu` and `ksense.process.executable.sha256`.
    pub enabled: bool,
    /// Files larger than this many bytes are not hashed (`hash_skipped = too_large`); their
    /// build-id is still read.
    pub max_file_bytes: u64,
    /// An exec whose file is not in the cache waits at most this many milliseconds for its
    /// hash (and the events after it wait with it, so their order is kept); then it goes out
    /// with `hash_skipped = pending`, and the process's later events carry the hash.
    pub wait_ms: u64,
    /// Identities kept (by device, inode and change time); beyond it the one used longest ago
    /// is forgotten.
    pub cache_entries: Spanned<usize>,
    /// Files waiting to be hashed at most; an exec that finds the queue full is reported with
    /// `hash_skipped = busy`.
    pub queue_files: Spanned<usize>,
}

impl Default for IdentityConfig {
    fn default() -> Self {
        IdentityConfig {
            enabled: true,
            max_file_bytes: 64 << 20,
            wait_ms: 100,
            cache_entries: Spanned::new(0..0, 4096),
            queue_files: Spanned::new(0..0, 64),
        }
    }
}

/// What tells one content of an executed file from any other: its device and inode, and its
/// change time, which the kernel moves on every write (and user space cannot set back).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct FileKey {
    /// Inode number.
    pub ino: u64,
    /// Device major number.
    pub major: u32,
    /// Device minor number.
    pub minor: u32,
    /// Change time, seconds.
    pub ctime_sec: i64,
    /// Change time, nanoseconds.
    pub ctime_nsec: u32,
}

impl FileKey {
    /// The key of the inode the kernel described; `ctime_nsec` as the inode holds it (bits
    /// above those of a nanosecond count, flags on some kernels, are dropped).
    pub fn new(ino: u64, major: u32, minor: u32, ctime_sec: i64, ctime_nsec: u64) -> FileKey {
        FileKey { ino, major, minor, ctime_sec, ctime_nsec: (ctime_nsec & ((1 << 30) - 1)) as u32 }
    }

    /// Whether `opened` is the file (see [`FileId::is`]).
    fn is_file(&self, opened: &File) -> bool {
        FileId { ino: self.ino, major: self.major, minor: self.minor }.is(opened)
    }

    /// Whether `stat` says the file has this content (change time).
    fn same_content(&self, meta: &Metadata) -> bool {
        meta.ctime() == self.ctime_sec && meta.ctime_nsec() == i64::from(self.ctime_nsec)
    }
}

/// Why an executable's SHA-256 is not reported (`ksense.process.executable.hash_skipped`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Skipped {
    /// Larger than `[identity] max_file_bytes`.
    TooLarge,
    /// Not hashed yet when the record was made (an exec waits `[identity] wait_ms` at most).
    Pending,
    /// The queue of files to hash was full.
    Busy,
    /// The executed file could not be reached: the process is gone (or runs another program)
    /// and no path leads to it any more (a memfd, a file deleted or replaced, a script's
    /// interpreter, a relative execve path), or reading it was refused.
    Unreadable,
    /// The executed inode was reached, but its change time is not the exec's any more: it was
    /// rewritten, its links, mode or owner changed, or it changed while it was read.
    Changed,
    /// The exec that started the process's image was not seen: the process is older than
    /// ksense (known from `/proc`), or its exec was lost.
    Unseen,
}

impl Skipped {
    /// The attribute value.
    pub fn name(self) -> &'static str {
        match self {
            Skipped::TooLarge => "too_large",
            Skipped::Pending => "pending",
            Skipped::Busy => "busy",
            Skipped::Unreadable => "unreadable",
            Skipped::Changed => "changed",
            Skipped::Unseen => "unseen",
        }
    }
}

/// An executed file's identity.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    /// The GNU build-id note's descriptor, hex.
    pub build_id: Option<String>,
    /// The SHA-256 of the content, hex, or why there is none.
    pub sha256: Result<String, Skipped>,
}

impl Identity {
    /// No identity, for `why`.
    fn skipped(why: Skipped) -> Identity {
        Identity { build_id: None, sha256: Err(why) }
    }

    /// Whether it holds for every later exec of the same key (a failure to open may not).
    fn lasting(&self) -> bool {
        matches!(self.sha256, Ok(_) | Err(Skipped::TooLarge))
    }
}

/// Where an exec's identity arrives, once: at once from the cache, or from the hashing worker.
/// Shared by the exec's event, the process table entry and every later event of the process
/// (and of its children until they exec): each renders what is there when its record is made.
#[derive(Debug, Clone, Default)]
pub struct IdentitySlot(Arc<OnceLock<Identity>>);

impl IdentitySlot {
    fn known(identity: Identity) -> IdentitySlot {
        let slot = IdentitySlot::default();
        let _ = slot.0.set(identity);
        slot
    }

    /// The slot of a process whose exec was not seen ([`Skipped::Unseen`]).
    pub fn unseen() -> IdentitySlot {
        IdentitySlot::known(Identity::skipped(Skipped::Unseen))
    }

    /// The identity, once known.
    pub fn get(&self) -> Option<&Identity> {
        self.0.get()
    }

    /// Appends the build-id and the hash, or why there is no hash.
    pub fn render(&self, attrs: &mut Vec<(&'static str, Value)>) {
        let pending = Identity::skipped(Skipped::Pending);
        let identity = self.get().unwrap_or(&pending);
        if let Some(id) = &identity.build_id {
            attrs.push((schema::PROCESS_EXECUTABLE_BUILD_ID_GNU, Value::Str(id.clone())));
        }
        match &identity.sha256 {
            Ok(sha256) => attrs.push((schema::KSENSE_PROCESS_EXECUTABLE_SHA256, Value::Str(sha256.clone()))),
            Err(why) => attrs.push((schema::KSENSE_PROCESS_EXECUTABLE_HASH_SKIPPED, Value::Str(why.name().to_owned()))),
        }
    }
}

/// A file to identify.
pub(crate) struct Job {
    key: FileKey,
    /// Where to open it, in order: `/proc/<pid>/exe`, then the absolute execve path.
    paths: Vec<PathBuf>,
    slot: IdentitySlot,
}

type Cache = Arc<Mutex<LruMap<FileKey, Identity>>>;

/// The cache and the hashing worker. Dropping it ends the worker (after the file at hand).
pub struct Identities {
    cache: Cache,
    jobs: SyncSender<Job>,
    /// Woken each time the worker fills a slot.
    pub done: Arc<tokio::sync::Notify>,
    /// `[identity] wait_ms`.
    pub wait: Duration,
    proc_root: PathBuf,
}

impl Identities {
    /// The cache and a running worker for `config`, reading `proc_root` (normally `/proc`).
    pub fn start(config: &IdentityConfig, proc_root: PathBuf) -> std::io::Result<Identities> {
        let cache: Cache = Arc::new(Mutex::new(LruMap::new(*config.cache_entries.get_ref())));
        let (jobs, queue) = sync_channel(*config.queue_files.get_ref());
        let done = Arc::new(tokio::sync::Notify::new());
        let worker = Worker { cache: cache.clone(), done: done.clone(), max_bytes: config.max_file_bytes };
        std::thread::Builder::new().name("ksense-identity".into()).spawn(move || worker.run(queue))?;
        Ok(Identities { cache, jobs, done, wait: Duration::from_millis(config.wait_ms), proc_root })
    }

    /// Identities whose worker never takes a job (tests of what waits for one): the queue's
    /// receiving end is returned, to keep or drop.
    #[cfg(test)]
    pub(crate) fn stalled(wait: Duration) -> (Identities, Receiver<Job>) {
        let (jobs, queue) = sync_channel(16);
        let cache = Arc::new(Mutex::new(LruMap::new(16)));
        (Identities { cache, jobs, done: Arc::default(), wait, proc_root: "/nonexistent".into() }, queue)
    }

    /// The identity slot of an exec of the file `key` by process `pid`, whose file `exec_path`
    /// may lead to (an absolute path is tried after `/proc/<pid>/exe`), and whether it is worth
    /// waiting for (it is being hashed). Known files are
    /// filled from the cache; with the worker's queue full the slot says `busy`.
    pub fn request(&self, key: FileKey, pid: u32, exec_path: Option<&[u8]>) -> (IdentitySlot, bool) {
        if let Some(known) = self.cache.lock().unwrap_or_else(PoisonError::into_inner).get(&key) {
            return (IdentitySlot::known(known.clone()), false);
        }
        let mut paths = vec![self.proc_root.join(pid.to_string()).join("exe")];
        paths.extend(exec_path.filter(|p| p.starts_with(b"/")).map(|p| PathBuf::from(std::ffi::OsStr::from_bytes(p))));
        let slot = IdentitySlot::default();
        match self.jobs.try_send(Job { key, paths, slot: slot.clone() }) {
            Ok(()) => (slot, true),
            Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) => (IdentitySlot::known(Identity::skipped(Skipped::Busy)), false),
        }
    }
}

/// The hashing thread's side.
struct Worker {
    cache: Cache,
    done: Arc<tokio::sync::Notify>,
    max_bytes: u64,
}

impl Worker {
    fn run(self, queue: Receiver<Job>) {
        for job in queue {
            // The same file may have been queued twice before its first hash was done.
            let cached = self.cache.lock().unwrap_or_else(PoisonError::into_inner).get(&job.key).cloned();
            let identity = cached.unwrap_or_else(|| {
                let identity = identify(job.key, &job.paths, self.max_bytes);
                if identity.lasting() {
                    self.cache.lock().unwrap_or_else(PoisonError::into_inner).insert(job.key, identity.clone());
                }
                identity
            });
            let _ = job.slot.0.set(identity);
            self.done.notify_one();
        }
    }
}

/// The identity of the file `key`, opened through the first of `paths` that leads to it.
pub fn identify(key: FileKey, paths: &[PathBuf], max_bytes: u64) -> Identity {
    let mut why = Skipped::Unreadable;
    for path in paths {
        match open_checked(path, key) {
            Ok(file) => return read_identity(&file, key, max_bytes),
            Err(Skipped::Changed) => why = Skipped::Changed,
            Err(_) => {}
        }
    }
    Identity::skipped(why)
}

/// `path` opened for reading if it is the file `key` names, with the content it names. It is
/// resolved first without being opened for I/O (`O_PATH`): a path swapped for a FIFO or a
/// device is neither opened nor read. Another file there is `Unreadable` (not the one executed);
/// the same file with another change time `Changed`.
fn open_checked(path: &Path, key: FileKey) -> Result<File, Skipped> {
    let opened = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_PATH | libc::O_CLOEXEC)
        .open(path)
        .map_err(|_| Skipped::Unreadable)?;
    if !key.is_file(&opened) {
        return Err(Skipped::Unreadable);
    }
    let meta = opened.metadata().map_err(|_| Skipped::Unreadable)?;
    if !key.same_content(&meta) {
        return Err(Skipped::Changed);
    }
    OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_CLOEXEC | libc::O_NOCTTY | libc::O_NONBLOCK)
        .open(format!("/proc/self/fd/{}", opened.as_raw_fd()))
        .map_err(|_| Skipped::Unreadable)
}

/// Build-id and hash of `file`, already known to be `key`; the hash only if `key` still holds
/// after it was read.
fn read_identity(file: &File, key: FileKey, max_bytes: u64) -> Identity {
    let Ok(before) = file.metadata() else { return Identity::skipped(Skipped::Unreadable) };
    let build_id = elf::build_id(file);
    if before.len() > max_bytes {
        return Identity { build_id, sha256: Err(Skipped::TooLarge) };
    }
    let mut digest = ring::digest::Context::new(&ring::digest::SHA256);
    let mut buf = vec![0; 64 << 10];
    let mut total = 0u64;
    let mut reader = file;
    loop {
        match reader.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => {
                total += n as u64;
                if total > max_bytes {
                    // It grew since: changed, which the check below says.
                    break;
                }
                digest.update(&buf[..n]);
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(_) => return Identity::skipped(Skipped::Unreadable),
        }
    }
    match file.metadata() {
        Ok(after) if key.same_content(&after) && after.len() == total => Identity { build_id, sha256: Ok(hex(digest.finish().as_ref())) },
        _ => Identity::skipped(Skipped::Changed),
    }
}

/// Lowercase hex of `bytes`.
pub(crate) fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key_of(path: &Path) -> FileKey {
        let meta = std::fs::metadata(path).unwrap();
        FileKey::new(meta.ino(), libc::major(meta.dev()), libc::minor(meta.dev()), meta.ctime(), meta.ctime_nsec() as u64)
    }

    fn sha256(bytes: &[u8]) -> String {
        hex(ring::digest::digest(&ring::digest::SHA256, bytes).as_ref())
    }

    fn dir(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("ksense-identity-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    /// The hash of the file the key names; a file replaced or rewritten since is not hashed,
    /// one over the size cap is not either, and says so.
    #[test]
    fn hashes_only_the_keyed_content() {
        let dir = dir("keyed");
        let path = dir.join("prog");
        std::fs::write(&path, b"first content").unwrap();
        let key = key_of(&path);
        let paths = [path.clone()];
        assert_eq!(identify(key, &paths, 1 << 20), Identity { build_id: None, sha256: Ok(sha256(b"first content")) });
        assert_eq!(identify(key, &paths, 5).sha256, Err(Skipped::TooLarge));
        // Replaced by another file under the same name: the path no longer leads to it.
        std::fs::write(dir.join("new"), b"second content").unwrap();
        std::fs::rename(dir.join("new"), &path).unwrap();
        assert_eq!(identify(key, &paths, 1 << 20).sha256, Err(Skipped::Unreadable));
        // Rewritten in place: same inode, its ctime moved (rewritten until the clock, which may
        // be as coarse as a timer tick, gives it another change time).
        let key = key_of(&path);
        std::fs::write(&path, b"third content").unwrap();
        while key_of(&path) == key {
            std::thread::sleep(Duration::from_millis(1));
            std::fs::write(&path, b"third content").unwrap();
        }
        assert_eq!(identify(key, &paths, 1 << 20).sha256, Err(Skipped::Changed));
        // Nowhere to open it; a later path that leads to it is taken.
        assert_eq!(identify(key, &[dir.join("gone")], 1 << 20).sha256, Err(Skipped::Unreadable));
        let key = key_of(&path);
        assert_eq!(identify(key, &[dir.join("gone"), path.clone()], 1 << 20).sha256, Ok(sha256(b"third content")));
        // A FIFO in its place is not opened (it would block).
        std::fs::remove_file(&path).unwrap();
        let fifo = std::ffi::CString::new(path.as_os_str().as_bytes()).unwrap();
        assert_eq!(unsafe { libc::mkfifo(fifo.as_ptr(), 0o600) }, 0);
        assert_eq!(identify(key, &paths, 1 << 20).sha256, Err(Skipped::Unreadable));
        std::fs::remove_dir_all(dir).unwrap();
    }

    /// A file is hashed once: the second exec finds it in the cache; a full queue says `busy`;
    /// the cache stays within its size.
    #[test]
    fn each_file_is_hashed_once_and_the_cache_is_bounded() {
        let dir = dir("cache");
        let config = IdentityConfig { cache_entries: Spanned::new(0..0, 2), ..IdentityConfig::default() };
        let identities = Identities::start(&config, dir.join("proc")).unwrap();
        let mut keys = Vec::new();
        for n in 0..3 {
            let path = dir.join(format!("prog{n}"));
            std::fs::write(&path, format!("content {n}")).unwrap();
            let key = key_of(&path);
            let (slot, waiting) = identities.request(key, 1, Some(path.as_os_str().as_bytes()));
            assert!(waiting, "not cached yet");
            let deadline = std::time::Instant::now() + Duration::from_secs(10);
            while slot.get().is_none() {
                assert!(std::time::Instant::now() < deadline, "never hashed");
                std::thread::sleep(Duration::from_millis(1));
            }
            assert_eq!(slot.get().unwrap().sha256, Ok(sha256(format!("content {n}").as_bytes())));
            // Hashed once: the file gone, its identity is still known.
            std::fs::remove_file(&path).unwrap();
            let (again, waiting) = identities.request(key, 1, Some(path.as_os_str().as_bytes()));
            assert!(!waiting);
            assert_eq!(again.get(), slot.get());
            keys.push(key);
        }
        let cache = identities.cache.lock().unwrap();
        assert_eq!(cache.len(), 2, "bounded");
        drop(cache);
        let (slot, waiting) = identities.request(keys[0], 1, None);
        assert!(waiting, "the oldest was forgotten");
        drop(slot);

        // A worker that takes no job: the queue fills, then requests are `busy`.
        let (stalled, _queue) = Identities::stalled(Duration::ZERO);
        let key = FileKey::new(u64::MAX, 0, 0, 0, 0);
        for _ in 0..16 {
            assert!(stalled.request(key, 1, None).1, "queued");
        }
        let (busy, waiting) = stalled.request(key, 1, None);
        assert!(!waiting);
        assert_eq!(busy.get().map(|i| i.sha256.clone()), Some(Err(Skipped::Busy)));
        std::fs::remove_dir_all(dir).unwrap();
    }

    /// What identity costs per exec: on the pipeline, asking for an identity the cache holds (a
    /// hit) and one it does not (a miss: a job queued); on the worker, hashing a miss, for files
    /// of 1, 8 and 64 MiB in the page cache. It prints, it does not assert speed:
    /// `cargo test --release -p ksense --lib identity_cost -- --ignored --nocapture`
    /// (`KSENSE_BENCH_N` requests, default 200,000). Figures in docs/BENCHMARKS.md.
    #[test]
    #[ignore = "benchmark: run in release with --ignored --nocapture"]
    fn identity_cost_per_exec() {
        use std::time::Instant;
        let n: u32 = std::env::var("KSENSE_BENCH_N").ok().and_then(|n| n.parse().ok()).unwrap_or(200_000);
        let dir = dir("bench");
        let path = dir.join("prog");
        std::fs::write(&path, vec![0x5a; 1 << 20]).unwrap();
        let key = key_of(&path);
        let config = IdentityConfig { queue_files: Spanned::new(0..0, n as usize + 1), ..IdentityConfig::default() };
        let identities = Identities::start(&config, dir.join("proc")).unwrap();
        let (slot, _) = identities.request(key, 1, Some(path.as_os_str().as_bytes()));
        while slot.get().is_none() {
            std::thread::sleep(Duration::from_millis(1));
        }
        let started = Instant::now();
        for _ in 0..n {
            assert!(!identities.request(key, 1, None).1);
        }
        println!("cache hit: {} ns per exec on the pipeline", started.elapsed().as_nanos() / u128::from(n));
        // Misses: keys of no file, so the worker's job is an open that fails at once.
        let started = Instant::now();
        for ino in 0..u64::from(n) {
            assert!(identities.request(FileKey::new(ino, 0, 0, 0, 0), 1, None).1);
        }
        println!("cache miss: {} ns per exec on the pipeline (the job queued)", started.elapsed().as_nanos() / u128::from(n));
        drop(identities);
        for mib in [1u64, 8, 64] {
            let path = dir.join(format!("prog{mib}"));
            std::fs::write(&path, vec![0xa5; (mib << 20) as usize]).unwrap();
            let key = key_of(&path);
            let rounds = 10;
            let started = Instant::now();
            for _ in 0..rounds {
                assert!(identify(key, std::slice::from_ref(&path), 1 << 30).sha256.is_ok());
            }
            let per_file = started.elapsed() / rounds;
            let rate = (mib as f64) / per_file.as_secs_f64();
            println!("hash of a {mib} MiB file on the worker: {} us ({rate:.0} MiB/s)", per_file.as_micros());
        }
        std::fs::remove_dir_all(dir).unwrap();
    }
}
