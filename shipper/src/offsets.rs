//! Builds the [`ProbeConfig`] the probes read: structure offsets and argument positions from
//! the running kernel's BTF, plain-tracepoint record offsets from tracefs. Nothing here is
//! specific to one kernel; what cannot be resolved is reported per hook, and that hook is
//! skipped while the others run.
use std::{
    collections::HashMap,
    path::{Path, PathBuf},
};

use ksense_abi::{
    Hook, HookFamily,
    config::{MiscOffsets, MmOffsets, ProbeConfig, TaskOffsets},
};

use crate::btf::{Btf, BtfError};

/// Behaviour switches passed to the probes.
#[derive(Debug, Clone, Default)]
pub struct Switches {
    /// Report every thread's exit.
    pub thread_exits: bool,
    /// Report every memory-protection change, not only those that matter.
    pub memory_report_all: bool,
    /// Coalescing window for repeated memory-protection changes, ns (0: off).
    pub memory_coalesce_ns: u64,
    /// The process whose events the probes drop (ksense's own); 0 for none.
    pub ignore_tgid: u32,
    /// Unread bytes in the ring buffer beyond which process events are not written (0: no limit).
    pub process_data_max: u32,
    /// Copy each exec's environment into its record (some variable is to be reported).
    pub exec_environment: bool,
}

/// The resolved configuration and why some hooks cannot be used.
#[derive(Debug)]
pub struct Resolved {
    /// What the probes will read.
    pub config: ProbeConfig,
    /// Hooks that cannot work here, with the reason.
    pub unusable: HashMap<Hook, String>,
}

/// Where tracefs is mounted and readable, if anywhere.
pub fn tracefs_root() -> Option<PathBuf> {
    ["/sys/kernel/tracing", "/sys/kernel/debug/tracing"]
        .into_iter()
        .map(PathBuf::from)
        .find(|p| p.join("events").is_dir())
}

/// Where in the [`ProbeConfig`] a tracepoint field's offset goes.
pub type Slot = fn(&mut ProbeConfig) -> &mut u32;

/// What the kinds' offset resolution works with and on: the running kernel's BTF (when the
/// offsets every kind shares resolved), tracefs, the configuration being built, and the hooks
/// found unusable so far.
pub struct Resolver<'a> {
    btf: Option<&'a Btf>,
    no_btf: Option<String>,
    tracefs: Option<&'a Path>,
    /// What the probes will read.
    pub config: ProbeConfig,
    unusable: HashMap<Hook, String>,
}

impl<'a> Resolver<'a> {
    /// The kernel's BTF, when it is there and has every field the kinds share (without it,
    /// every hook but the plain tracepoints is refused already).
    pub fn btf(&self) -> Option<&'a Btf> {
        self.btf
    }

    /// Why the kernel has no BTF at all, if it has none.
    pub fn no_btf(&self) -> Option<&str> {
        self.no_btf.as_deref()
    }

    /// Marks `hooks` unusable for `why`, unless an earlier reason was given.
    pub fn refuse(&mut self, hooks: &[Hook], why: &str) {
        for hook in hooks {
            self.unusable.entry(*hook).or_insert_with(|| why.to_owned());
        }
    }

    /// Marks `hooks` unusable for `why`, the reason that goes before any other.
    pub fn refuse_first(&mut self, hooks: &[Hook], why: &str) {
        for hook in hooks {
            self.unusable.insert(*hook, why.to_owned());
        }
    }

    /// Sets each `(field, slot)` from the record format of the plain tracepoint that
    /// `hook.attachments()[attachment]` names; refuses `hook` when one cannot be read (without
    /// tracefs, [`resolve`] refuses every plain tracepoint).
    pub fn tracepoint_fields(&mut self, hook: Hook, attachment: usize, fields: &[(&str, Slot)]) {
        let Some(root) = self.tracefs else { return };
        let tracepoint = hook.attachments()[attachment].1;
        let format = match format_of(root, tracepoint) {
            Ok(format) => format,
            Err(why) => return self.refuse(&[hook], &why),
        };
        for (name, slot) in fields {
            match format.get(*name) {
                Some(&offset) => *slot(&mut self.config) = offset,
                None => return self.refuse(&[hook], &format!("tracepoint {tracepoint} has no field {name}")),
            }
        }
    }
}

/// Resolves everything: the offsets every kind shares, then each kind's (`kinds`: each
/// kind's resolution, the `offsets` of its entry in the table of kinds). `btf` is the kernel's BTF or why
/// it is unavailable; `tracefs` the tracefs mount, if any.
pub fn resolve<'a>(
    btf: Result<&'a Btf, &BtfError>,
    tracefs: Option<&'a Path>,
    switches: &Switches,
    kinds: impl IntoIterator<Item = fn(&mut Resolver<'_>)>,
) -> Resolved {
    let config = ProbeConfig {
        report_thread_exits: switches.thread_exits.into(),
        memory_report_all: switches.memory_report_all.into(),
        memory_coalesce_ns: switches.memory_coalesce_ns,
        ignore_tgid: switches.ignore_tgid,
        process_data_max: switches.process_data_max,
        ..Default::default()
    };
    let mut r = Resolver { btf: None, no_btf: None, tracefs, config, unusable: HashMap::new() };
    let family = |plain: bool| -> Vec<Hook> {
        Hook::ALL.into_iter().filter(|h| (h.family() == HookFamily::Tracepoint) == plain).collect()
    };
    match btf {
        Ok(btf) => match core_offsets(btf) {
            Ok((task, mm, misc)) => {
                r.config.have_btf_offsets = 1;
                r.config.task = task;
                r.config.mm = mm;
                if !switches.exec_environment {
                    // The probe reads the environment only where this offset is set.
                    r.config.mm.env_end = 0;
                }
                r.config.misc = misc;
                r.btf = Some(btf);
            }
            Err(e) => r.refuse(&family(false), &format!("kernel BTF lacks a field ksense reads: {e}")),
        },
        Err(e) => {
            r.refuse(&family(false), &format!("no kernel BTF: {e}"));
            r.no_btf = Some(e.to_string());
        }
    }
    for offsets in kinds {
        offsets(&mut r);
    }
    if tracefs.is_none() {
        r.refuse(&family(true), "tracefs is not mounted, or not readable by ksense (mount -t tracefs tracefs /sys/kernel/tracing; it is root's, mode 0700)");
    }
    Resolved { config: r.config, unusable: r.unusable }
}

fn core_offsets(btf: &Btf) -> Result<(TaskOffsets, MmOffsets, MiscOffsets), BtfError> {
    let task = |f: &str| btf.field_offset("task_struct", f);
    let mm = |f: &str| btf.field_offset("mm_struct", f);
    let pid_type = |name: &str| {
        let value = btf.enum_value("pid_type", name)?;
        // An index into signal_struct.pids, which has PIDTYPE_MAX entries.
        let max = btf.enum_value("pid_type", "PIDTYPE_MAX")?;
        u32::try_from(value)
            .ok()
            .filter(|_| (0..max).contains(&value))
            .ok_or_else(|| BtfError::unsupported(format!("enum pid_type {name} = {value} is not below PIDTYPE_MAX = {max}")))
    };
    let (inode_ctime_sec, inode_ctime_nsec) = inode_ctime(btf);
    Ok((
        TaskOffsets {
            pid: task("pid")?,
            tgid: task("tgid")?,
            real_parent: task("real_parent")?,
            comm: task("comm")?,
            mm: task("mm")?,
            real_cred: task("real_cred")?,
            start_time: task("start_time")?,
            exit_code: task("exit_code")?,
            signal: task("signal")?,
            flags: task("flags")?,
            group_leader: task("group_leader")?,
        },
        MmOffsets {
            start_code: mm("start_code")?,
            end_code: mm("end_code")?,
            arg_start: mm("arg_start")?,
            arg_end: mm("arg_end")?,
            env_start: mm("env_start")?,
            env_end: mm("env_end")?,
            exe_file: mm("exe_file")?,
        },
        MiscOffsets {
            cred_uid: btf.field_offset("cred", "uid.val")?,
            cred_euid: btf.field_offset("cred", "euid.val")?,
            signal_live: btf.field_offset("signal_struct", "live.counter")?,
            signal_pids: btf.field_offset("signal_struct", "pids")?,
            pidtype_pgid: pid_type("PIDTYPE_PGID")?,
            pidtype_sid: pid_type("PIDTYPE_SID")?,
            pid_nr: btf.field_offset("pid", "numbers.0.nr")?,
            binprm_filename: btf.field_offset("linux_binprm", "filename")?,
            file_inode: btf.field_offset("file", "f_inode")?,
            inode_ino: btf.field_offset("inode", "i_ino")?,
            inode_sb: btf.field_offset("inode", "i_sb")?,
            sb_dev: btf.field_offset("super_block", "s_dev")?,
            inode_nlink: btf.field_offset("inode", "i_nlink")?,
            inode_ctime_sec,
            inode_ctime_nsec,
            signal_tty: btf.field_offset("signal_struct", "tty")?,
            ..MiscOffsets::default()
        },
    ))
}

/// Where the inode's change time is, seconds and nanoseconds, under whichever name this kernel
/// gives it: `i_ctime_sec`/`i_ctime_nsec` (6.11+), `__i_ctime` (a `timespec64`, 6.6-6.10),
/// `i_ctime` (before); `(0, 0)` when none is found (no change time is read, so nothing is
/// hashed: an exec is reported without its executable's identity).
fn inode_ctime(btf: &Btf) -> (u32, u32) {
    [("i_ctime_sec", "i_ctime_nsec"), ("__i_ctime.tv_sec", "__i_ctime.tv_nsec"), ("i_ctime.tv_sec", "i_ctime.tv_nsec")]
        .into_iter()
        .find_map(|(sec, nsec)| Some((btf.field_offset("inode", sec).ok()?, btf.field_offset("inode", nsec).ok()?)))
        .unwrap_or((0, 0))
}

/// Field name -> offset from `events/<group>/<name>/format`.
fn format_of(root: &Path, tracepoint: &str) -> Result<HashMap<String, u32>, String> {
    let path = root.join("events").join(tracepoint).join("format");
    let text = std::fs::read_to_string(&path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    Ok(parse_format(&text))
}

/// Parses lines like `field:__data_loc char[] filename;    offset:8;    size:4;    signed:0;`.
fn parse_format(text: &str) -> HashMap<String, u32> {
    text.lines()
        .filter_map(|line| {
            let mut parts = line.trim().split(';');
            let decl = parts.next()?.strip_prefix("field:")?;
            let name = decl.split_whitespace().last()?;
            let name = name.split('[').next()?; // `comm[16]` -> `comm`
            let offset = parts.next()?.trim().strip_prefix("offset:")?.parse().ok()?;
            Some((name.to_owned(), offset))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_tracepoint_formats() {
        let text = "name: sched_process_exec\nformat:\n\tfield:unsigned short common_type;\toffset:0;\tsize:2;\tsigned:0;\n\n\tfield:__data_loc char[] filename;\toffset:8;\tsize:4;\tsigned:0;\n\tfield:pid_t old_pid;\toffset:16;\tsize:4;\tsigned:1;\n\tfield:char comm[16];\toffset:20;\tsize:16;\tsigned:0;\n";
        let fields = parse_format(text);
        assert_eq!(fields.get("filename"), Some(&8));
        assert_eq!(fields.get("old_pid"), Some(&16));
        assert_eq!(fields.get("comm"), Some(&20));
        assert_eq!(fields.get("common_type"), Some(&0));
    }
}
