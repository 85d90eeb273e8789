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
    config::{MemoryOffsets, MiscOffsets, MmOffsets, ModuleOffsets, ProbeConfig, TaskOffsets},
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

/// Resolves everything. `btf` is the kernel's BTF or why it is unavailable; `tracefs` the
/// tracefs mount, if any.
pub fn resolve(btf: Result<&Btf, &BtfError>, tracefs: Option<&Path>, switches: &Switches) -> Resolved {
    let mut config = ProbeConfig {
        report_thread_exits: switches.thread_exits.into(),
        memory_report_all: switches.memory_report_all.into(),
        memory_coalesce_ns: switches.memory_coalesce_ns,
        ignore_tgid: switches.ignore_tgid,
        process_data_max: switches.process_data_max,
        ..Default::default()
    };
    let mut unusable = HashMap::new();
    let mut refuse = |hooks: &[Hook], why: String| {
        for hook in hooks {
            unusable.entry(*hook).or_insert_with(|| why.clone());
        }
    };
    let typed: Vec<Hook> =
        Hook::ALL.into_iter().filter(|h| h.family() != ksense_abi::HookFamily::Tracepoint).collect();

    // First, so it is the reason given for every module hook.
    if !Path::new("/proc/modules").exists() {
        refuse(
            &[Hook::FentryDoInitModule, Hook::TpBtfModuleLoad, Hook::TracepointModuleLoad],
            "this kernel has no loadable module support (CONFIG_MODULES is off: /proc/modules is \
             absent), so no module can ever load"
                .to_owned(),
        );
    }

    match btf {
        Ok(btf) => match core_offsets(btf) {
            Ok((task, mm, misc)) => {
                config.have_btf_offsets = 1;
                config.task = task;
                config.mm = mm;
                if !switches.exec_environment {
                    // The probe reads the environment only where this offset is set.
                    config.mm.env_end = 0;
                }
                config.misc = misc;
                if let Err(e) = fentry_positions(btf, &mut config.misc) {
                    refuse(&[Hook::FexitKernelClone, Hook::FentryDoExit], e.to_string());
                }
                match module_offsets(btf) {
                    Ok(module) => config.module = module,
                    Err(e) => refuse(&[Hook::FentryDoInitModule, Hook::TpBtfModuleLoad], e.to_string()),
                }
                if let Err(e) = btf.func_param_index("do_init_module", "mod").map(|i| config.module.init_mod_arg = i as u32) {
                    refuse(&[Hook::FentryDoInitModule], e.to_string());
                }
                match memory_offsets(btf) {
                    Ok(memory) => config.memory = memory,
                    Err(e) => refuse(&[Hook::FentryMprotectFixup, Hook::TracepointMprotect], e.to_string()),
                }
                if let Err(e) = fixup_positions(btf, &mut config.memory) {
                    refuse(&[Hook::FentryMprotectFixup], e.to_string());
                }
            }
            Err(e) => refuse(&typed, format!("kernel BTF lacks a field ksense reads: {e}")),
        },
        Err(e) => {
            refuse(&typed, format!("no kernel BTF: {e}"));
            refuse(&[Hook::TracepointMprotect], format!("no kernel BTF to find VMAs with: {e}"));
        }
    }
    let plain: Vec<Hook> =
        Hook::ALL.into_iter().filter(|h| h.family() == ksense_abi::HookFamily::Tracepoint).collect();
    match tracefs {
        None => refuse(&plain, "tracefs is not mounted, or not readable by ksense (mount -t tracefs tracefs /sys/kernel/tracing; it is root's, mode 0700)".to_owned()),
        Some(root) => {
            let tp = &mut config.tracepoint;
            let results = [
                read_fields(root, Hook::TracepointTaskNewtask, "task/task_newtask", &mut [
                    ("pid", &mut tp.newtask_pid),
                    ("clone_flags", &mut tp.newtask_clone_flags),
                ]),
                read_fields(root, Hook::TracepointSchedProcessExec, "sched/sched_process_exec", &mut [
                    ("filename", &mut tp.exec_filename),
                    ("old_pid", &mut tp.exec_old_pid),
                ]),
                read_fields(root, Hook::TracepointModuleLoad, "module/module_load", &mut [
                    ("taints", &mut config.module.tp_taints),
                    ("name", &mut config.module.tp_name),
                ]),
                read_fields(root, Hook::TracepointMprotect, "syscalls/sys_enter_mprotect", &mut [
                    ("start", &mut config.memory.tp_start),
                    ("len", &mut config.memory.tp_len),
                    ("prot", &mut config.memory.tp_prot),
                ]),
                read_fields(root, Hook::TracepointMprotect, "syscalls/sys_exit_mprotect", &mut [
                    ("ret", &mut config.memory.tp_ret),
                ]),
            ];
            for (hook, why) in results.into_iter().filter_map(Result::err) {
                refuse(&[hook], why);
            }
        }
    }
    Resolved { config, unusable }
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
            signal_tty: btf.field_offset("signal_struct", "tty")?,
            ..MiscOffsets::default()
        },
    ))
}

/// Argument positions of the fentry/fexit targets, from their BTF prototypes.
fn fentry_positions(btf: &Btf, misc: &mut MiscOffsets) -> Result<(), BtfError> {
    misc.clone_args_flags = btf.field_offset("kernel_clone_args", "flags")?;
    misc.kernel_clone_args_arg = btf.func_param_index("kernel_clone", "args")? as u32;
    misc.do_exit_code_arg = btf.func_param_index("do_exit", "code")? as u32;
    misc.kernel_clone_ret_arg = btf.func_param_count("kernel_clone")? as u32;
    Ok(())
}

/// Sets each `(field, slot)` from the record format of `tracepoint`; on failure, says why
/// `hook` cannot be used.
fn read_fields(root: &Path, hook: Hook, tracepoint: &str, fields: &mut [(&str, &mut u32)]) -> Result<(), (Hook, String)> {
    let format = format_of(root, tracepoint).map_err(|e| (hook, e))?;
    for (name, slot) in fields.iter_mut() {
        **slot = *format
            .get(*name)
            .ok_or_else(|| (hook, format!("tracepoint {tracepoint} has no field {name}")))?;
    }
    Ok(())
}

/// `struct module` offsets. The size moved from `core_layout.size` to an array of
/// `module_memory` regions in 6.4; both are handled.
fn module_offsets(btf: &Btf) -> Result<ModuleOffsets, BtfError> {
    let mut module = ModuleOffsets {
        name: btf.field_offset("module", "name")?,
        taints: btf.field_offset("module", "taints")?,
        ..ModuleOffsets::default()
    };
    if let Ok(mem) = btf.field_offset("module", "mem") {
        let regions = btf.enum_value("mod_mem_type", "MOD_MEM_NUM_TYPES")?;
        let core = btf.enum_value("mod_mem_type", "MOD_INIT_TEXT")?; // core regions come first
        module.size = mem + btf.field_offset("module_memory", "size")?;
        module.size_stride = btf.field_size("module", "mem")? / regions.max(1) as u32;
        module.size_count = core as u32;
    } else {
        module.size = btf.field_offset("module", "core_layout.size")?;
        module.size_count = 1;
    }
    Ok(module)
}

/// Offsets the memory-protection hooks read (both paths).
fn memory_offsets(btf: &Btf) -> Result<MemoryOffsets, BtfError> {
    let vma = |f: &str| btf.field_offset("vm_area_struct", f);
    let mm = |f: &str| btf.field_offset("mm_struct", f);
    Ok(MemoryOffsets {
        vma_start: vma("vm_start")?,
        vma_end: vma("vm_end")?,
        vma_flags: vma("vm_flags")?,
        vma_file: vma("vm_file")?,
        mm_start_brk: mm("start_brk")?,
        mm_brk: mm("brk")?,
        mm_start_stack: mm("start_stack")?,
        mm_exe_file: mm("exe_file")?,
        file_dentry: btf.field_offset("file", "f_path.dentry")?,
        dentry_name: btf.field_offset("dentry", "d_name.name")?,
        ..vma_tree_offsets(btf).unwrap_or_default()
    })
}

/// Offsets to walk the VMA red-black tree (kernels before 6.1, which also lack `bpf_find_vma`);
/// an error where VMAs are in a maple tree.
fn vma_tree_offsets(btf: &Btf) -> Result<MemoryOffsets, BtfError> {
    Ok(MemoryOffsets {
        mm_rb: btf.field_offset("mm_struct", "mm_rb.rb_node")?,
        vma_rb: btf.field_offset("vm_area_struct", "vm_rb")?,
        rb_left: btf.field_offset("rb_node", "rb_left")?,
        rb_right: btf.field_offset("rb_node", "rb_right")?,
        ..MemoryOffsets::default()
    })
}

/// Positions of `mprotect_fixup`'s parameters: its prototype gained leading parameters in 6.1
/// (`tlb`) and 6.3 (`vmi`), so they are looked up by name.
fn fixup_positions(btf: &Btf, memory: &mut MemoryOffsets) -> Result<(), BtfError> {
    memory.fixup_vma_arg = btf.func_param_index("mprotect_fixup", "vma")? as u32;
    memory.fixup_start_arg = btf.func_param_index("mprotect_fixup", "start")? as u32;
    memory.fixup_end_arg = btf.func_param_index("mprotect_fixup", "end")? as u32;
    memory.fixup_newflags_arg = btf.func_param_index("mprotect_fixup", "newflags")? as u32;
    // The companion fexit on do_mprotect_pkey (failed calls); left at 0 where it is absent, in
    // which case attaching it fails and the hook runs without it.
    if let (Ok(start), Ok(len), Ok(prot), Ok(count)) = (
        btf.func_param_index("do_mprotect_pkey", "start"),
        btf.func_param_index("do_mprotect_pkey", "len"),
        btf.func_param_index("do_mprotect_pkey", "prot"),
        btf.func_param_count("do_mprotect_pkey"),
    ) {
        (memory.pkey_start_arg, memory.pkey_len_arg, memory.pkey_prot_arg, memory.pkey_ret_arg) =
            (start as u32, len as u32, prot as u32, count as u32);
    }
    Ok(())
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

    #[test]
    fn this_kernel_resolves_everything_the_host_path_needs() {
        let btf = Btf::from_sys_fs();
        let resolved = resolve(btf.as_ref(), tracefs_root().as_deref(), &Switches::default());
        assert_eq!(resolved.config.have_btf_offsets, 1, "{:?}", resolved.unusable);
        for hook in [
            Hook::TpBtfTaskNewtask,
            Hook::TpBtfSchedProcessExec,
            Hook::TpBtfSchedProcessExit,
            Hook::TracepointMprotect,
        ] {
            assert!(!resolved.unusable.contains_key(&hook), "{hook:?}: {:?}", resolved.unusable);
        }
        assert_ne!(resolved.config.task.pid, resolved.config.task.tgid);
        assert!(resolved.config.mm.start_code < resolved.config.mm.end_code);
    }

    #[test]
    fn without_btf_only_plain_tracepoints_remain() {
        let missing = Btf::parse(&[]).unwrap_err();
        let switches = Switches { thread_exits: true, ..Switches::default() };
        let resolved = resolve(Err(&missing), None, &switches);
        assert_eq!(resolved.config.have_btf_offsets, 0);
        assert_eq!(resolved.config.report_thread_exits, 1);
        assert_eq!(resolved.unusable.len(), Hook::ALL.len());
    }
}
