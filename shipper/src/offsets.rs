//! Builds the [`ProbeConfig`] the probes read: structure offsets and argument positions from
//! the running kernel's BTF, plain-tracepoint record offsets from tracefs. Nothing here is
//! specific to one kernel; what cannot be resolved is reported per hook, and that hook is
//! skipped while the others run.
use std::{
    collections::HashMap,
    path::{Path, PathBuf},
};

use ksense_abi::{
    Hook,
    config::{MiscOffsets, MmOffsets, ProbeConfig, TaskOffsets, TracepointOffsets},
};

use crate::btf::{Btf, BtfError};

/// The resolved configuration and why some hooks cannot be used.
#[derive(Debug)]
pub struct Resolved {
    /// What the probes will read.
    pub config: ProbeConfig,
    /// Hooks that cannot work here, with the reason.
    pub unusable: HashMap<Hook, String>,
}

/// Where tracefs is mounted, if anywhere.
pub fn tracefs_root() -> Option<PathBuf> {
    ["/sys/kernel/tracing", "/sys/kernel/debug/tracing"]
        .into_iter()
        .map(PathBuf::from)
        .find(|p| p.join("events").is_dir())
}

/// Resolves everything. `btf` is the kernel's BTF or why it is unavailable; `tracefs` the
/// tracefs mount, if any.
pub fn resolve(btf: Result<&Btf, &BtfError>, tracefs: Option<&Path>, report_thread_exits: bool) -> Resolved {
    let mut config = ProbeConfig { report_thread_exits: report_thread_exits.into(), ..Default::default() };
    let mut unusable = HashMap::new();
    let mut refuse = |hooks: &[Hook], why: String| {
        for hook in hooks {
            unusable.entry(*hook).or_insert_with(|| why.clone());
        }
    };
    let typed: Vec<Hook> =
        Hook::ALL.into_iter().filter(|h| h.family() != ksense_abi::HookFamily::Tracepoint).collect();

    match btf {
        Ok(btf) => match core_offsets(btf) {
            Ok((task, mm, misc)) => {
                config.have_btf_offsets = 1;
                config.task = task;
                config.mm = mm;
                config.misc = misc;
                if let Err(e) = fentry_positions(btf, &mut config.misc) {
                    refuse(&[Hook::FexitKernelClone, Hook::FentryDoExit], e.to_string());
                }
            }
            Err(e) => refuse(&typed, format!("kernel BTF lacks a field ksense reads: {e}")),
        },
        Err(e) => refuse(&typed, format!("no kernel BTF: {e}")),
    }

    match tracefs {
        None => refuse(
            &[Hook::TracepointTaskNewtask, Hook::TracepointSchedProcessExec, Hook::TracepointSchedProcessExit],
            "tracefs is not mounted (mount -t tracefs tracefs /sys/kernel/tracing)".to_owned(),
        ),
        Some(root) => {
            match tracepoint_offsets(root) {
                Ok(tp) => config.tracepoint = tp,
                Err((hooks, why)) => refuse(&hooks, why),
            }
        }
    }
    Resolved { config, unusable }
}

fn core_offsets(btf: &Btf) -> Result<(TaskOffsets, MmOffsets, MiscOffsets), BtfError> {
    let task = |f: &str| btf.field_offset("task_struct", f);
    let mm = |f: &str| btf.field_offset("mm_struct", f);
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
        },
        MmOffsets {
            start_code: mm("start_code")?,
            end_code: mm("end_code")?,
            arg_start: mm("arg_start")?,
            arg_end: mm("arg_end")?,
        },
        MiscOffsets {
            cred_uid: btf.field_offset("cred", "uid.val")?,
            cred_euid: btf.field_offset("cred", "euid.val")?,
            signal_live: btf.field_offset("signal_struct", "live.counter")?,
            binprm_filename: btf.field_offset("linux_binprm", "filename")?,
            ..MiscOffsets::default()
        },
    ))
}

/// Argument positions of the fentry/fexit targets, from their BTF prototypes.
fn fentry_positions(btf: &Btf, misc: &mut MiscOffsets) -> Result<(), BtfError> {
    misc.clone_args_flags = btf.field_offset("kernel_clone_args", "flags")?;
    misc.kernel_clone_args_arg = btf.func_param_index("kernel_clone", "args")? as u32;
    misc.kernel_clone_nargs = btf.func_param_count("kernel_clone")? as u32;
    misc.do_exit_code_arg = btf.func_param_index("do_exit", "code")? as u32;
    Ok(())
}

/// Record offsets of the plain tracepoints that read fields from their record.
fn tracepoint_offsets(root: &Path) -> Result<TracepointOffsets, (Vec<Hook>, String)> {
    let newtask = format_of(root, "task/task_newtask").map_err(|e| (vec![Hook::TracepointTaskNewtask], e))?;
    let exec = format_of(root, "sched/sched_process_exec").map_err(|e| (vec![Hook::TracepointSchedProcessExec], e))?;
    let field = |format: &HashMap<String, u32>, hook: Hook, name: &str| {
        format.get(name).copied().ok_or_else(|| {
            (vec![hook], format!("tracepoint {} has no field {name}", hook.target()))
        })
    };
    Ok(TracepointOffsets {
        newtask_pid: field(&newtask, Hook::TracepointTaskNewtask, "pid")?,
        newtask_clone_flags: field(&newtask, Hook::TracepointTaskNewtask, "clone_flags")?,
        exec_filename: field(&exec, Hook::TracepointSchedProcessExec, "filename")?,
        exec_old_pid: field(&exec, Hook::TracepointSchedProcessExec, "old_pid")?,
    })
}

/// Field name -> offset from `events/<group>/<name>/format`.
fn format_of(root: &Path, tracepoint: &str) -> Result<HashMap<String, u32>, String> {
    let path = root.join("events").join(tracepoint).join("format");
    let text = std::fs::read_to_string(&path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    Ok(parse_format(&text))
}

/// Parses lines like `field:__data_loc char[] filename;	offset:8;	size:4;	signed:0;`.
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

    #[test]
    fn this_kernel_resolves_everything_the_host_path_needs() {
        let btf = Btf::from_sys_fs();
        let resolved = resolve(btf.as_ref(), tracefs_root().as_deref(), false);
        assert_eq!(resolved.config.have_btf_offsets, 1, "{:?}", resolved.unusable);
        for hook in [Hook::TpBtfTaskNewtask, Hook::TpBtfSchedProcessExec, Hook::TpBtfSchedProcessExit] {
            assert!(!resolved.unusable.contains_key(&hook), "{hook:?}: {:?}", resolved.unusable);
        }
        assert_ne!(resolved.config.task.pid, resolved.config.task.tgid);
        assert!(resolved.config.mm.start_code < resolved.config.mm.end_code);
    }

    #[test]
    fn without_btf_only_plain_tracepoints_remain() {
        let missing = Btf::parse(&[]).unwrap_err();
        let resolved = resolve(Err(&missing), None, true);
        assert_eq!(resolved.config.have_btf_offsets, 0);
        assert_eq!(resolved.config.report_thread_exits, 1);
        assert_eq!(resolved.unusable.len(), Hook::ALL.len());
    }
}
