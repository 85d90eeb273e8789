//! `process.exec` records (variable size: the fixed part, then the execve path, argv and the
//! environment).
use std::mem::{offset_of, size_of};

use ksense_abi::{
    Task,
    exec::{
        ARGS_CAP, ENV_CAP, EXEC_ARGS_TRUNCATED, EXEC_ENV_TRUNCATED, EXEC_FILENAME_TRUNCATED, EXEC_TTY, EXEC_TTY_KNOWN,
        Exec, FILENAME_CAP,
    },
};

use super::{DecodeError, process_from, read};
use crate::{
    clock::Clock,
    event::{Detail, Event, Process, Render, hex},
    record::{Severity, Value, push_text},
    schema,
    text::{lossless, one_line},
};

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
}

pub(super) fn decode(bytes: &[u8], clock: &Clock) -> Result<(Process, Detail), DecodeError> {
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

    let mut process = process_from(&task, clock);
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

/// Splits the argv area: NUL-terminated strings back to back. Empty arguments are kept; a cut
/// last argument (no final NUL) is kept as far as it goes.
pub fn split_args(area: &[u8]) -> Vec<Vec<u8>> {
    if area.is_empty() {
        return Vec::new();
    }
    let area = area.strip_suffix(&[0]).unwrap_or(area);
    area.split(|&b| b == 0).map(<[u8]>::to_vec).collect()
}

impl Render for ProcessExec {
    fn render(&self, event: &Event, attrs: &mut Vec<(&'static str, Value)>) -> (Severity, String) {
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
        let p = &event.process;
        // The command line is among the attributes already (Event::to_record) when argv is known.
        let command_line = attrs.iter().find(|(name, _)| *name == schema::PROCESS_COMMAND_LINE);
        let command = match command_line {
            Some((_, Value::Str(line))) if p.args.as_ref().is_some_and(|args| !args.is_empty()) => one_line(line),
            _ => one_line(&p.exe.as_deref().or(self.exec_path.as_deref()).map(lossless).unwrap_or_default()),
        };
        (severity, format!("{} executed {command}", event.who()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        decode::{decode as decode_record, tests},
        record::LogRecord,
    };
    use std::time::SystemTime;

    fn exec_record(filename: &[u8], args: &[u8]) -> Vec<u8> {
        let mut task = Task { tgid: 42, tid: 42, ..Task::default() };
        task.comm[..6].copy_from_slice(b"marker");
        tests::exec_record(task, filename, args)
    }

    #[test]
    fn argv_is_kept_exactly() {
        let bytes = exec_record(b"/usr/bin/marker", b"marker\0a b\0\"q\"\0line\nbreak\0\0\xff\0");
        let event = decode_record(&bytes, 1, &Clock::sample(), SystemTime::now()).unwrap();
        let record = event.to_record();
        assert_eq!(
            record.attribute(schema::PROCESS_COMMAND_ARGS),
            Some(&Value::StrArray(vec![
                "marker".into(),
                "a b".into(),
                "\"q\"".into(),
                "line\nbreak".into(),
                "".into(),
                "\\xff".into()
            ]))
        );
        // The string given to execve; the canonical path is enrichment's (from /proc/<pid>/exe).
        assert_eq!(record.attribute(schema::KSENSE_PROCESS_EXEC_PATH), Some(&Value::Str("/usr/bin/marker".into())));
        assert_eq!(record.attribute(schema::PROCESS_EXECUTABLE_PATH), None);
        assert!(!record.body.contains('\n'), "{}", record.body);
    }

    /// An exec record of the marker whose executed inode has `nlink` links (no inode read when
    /// `None`) and whose environment is `environment`; its record after picking `names`.
    fn exec_with(nlink: Option<u32>, environment: &[u8], names: &[&str]) -> LogRecord {
        let args = b"marker\0";
        let mut bytes = exec_record(b"/usr/bin/marker", &[args.as_slice(), environment].concat());
        let mut put = |at: usize, value: &[u8]| bytes[at..at + value.len()].copy_from_slice(value);
        put(offset_of!(Exec, args_len), &(args.len() as u32).to_ne_bytes());
        put(offset_of!(Exec, env_len), &(environment.len() as u32).to_ne_bytes());
        if let Some(nlink) = nlink {
            put(offset_of!(Exec, exe_ino), &42u64.to_ne_bytes());
            put(offset_of!(Exec, exe_nlink), &nlink.to_ne_bytes());
        }
        let mut event = decode_record(&bytes, 1, &Clock::sample(), SystemTime::now()).unwrap();
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

    #[test]
    fn rejects_inconsistent_lengths() {
        let mut bytes = exec_record(b"/bin/true", b"true\0");
        let at = offset_of!(Exec, args_len);
        bytes[at..at + 4].copy_from_slice(&99u32.to_ne_bytes());
        let err = decode_record(&bytes, 1, &Clock::sample(), SystemTime::now()).unwrap_err();
        assert_eq!(err, DecodeError::Field("args_len"));
        let mut bytes = exec_record(b"/bin/true", b"true\0");
        let at = offset_of!(Exec, filename_len);
        bytes[at..at + 4].copy_from_slice(&(FILENAME_CAP as u32).to_ne_bytes());
        let err = decode_record(&bytes, 1, &Clock::sample(), SystemTime::now()).unwrap_err();
        assert_eq!(err, DecodeError::Field("filename_len"));
    }

    #[test]
    fn split_args_cases() {
        assert_eq!(split_args(b""), Vec::<Vec<u8>>::new());
        assert_eq!(split_args(b"a\0"), vec![b"a".to_vec()]);
        assert_eq!(split_args(b"a\0\0"), vec![b"a".to_vec(), b"".to_vec()]);
        assert_eq!(split_args(b"a\0bc"), vec![b"a".to_vec(), b"bc".to_vec()]);
    }
}
