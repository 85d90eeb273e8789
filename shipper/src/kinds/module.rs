//! `kernel.module.load` records.
use std::path::Path;

use ksense_abi::{
    config::ModuleOffsets,
    module::{MODULE_NAME_CAP, MODULE_SIZE_KNOWN, MODULE_TAINTS_KNOWN, ModuleLoad},
};

use super::prelude::*;
use crate::btf::{Btf, BtfError};

/// A kernel module is being initialised. The event's [`Process`] is the loader.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KernelModuleLoad {
    /// `module->name`.
    pub name: Vec<u8>,
    /// Bytes of its core memory, when known.
    pub size: Option<u64>,
    /// `module->taints`, when known.
    pub taints: Option<u64>,
}

fn decode(bytes: &[u8], clock: &Clock) -> Result<(Process, Detail), DecodeError> {
    let rec: ModuleLoad = read_whole(bytes)?;
    if rec.name_len as usize >= MODULE_NAME_CAP {
        return Err(DecodeError::Field("name_len"));
    }
    let module = KernelModuleLoad {
        name: rec.name[..rec.name_len as usize].to_vec(),
        size: (rec.flags & MODULE_SIZE_KNOWN != 0).then_some(rec.size),
        taints: (rec.flags & MODULE_TAINTS_KNOWN != 0).then_some(rec.taints),
    };
    Ok((Process::from_task(&rec.task, clock), Detail::ModuleLoad(module)))
}

/// `kernel.module.load` in the table of kinds.
pub(super) static KIND: KindSpec = KindSpec {
    kind: EventKind::ModuleLoad,
    config_key: "module",
    decode,
    offsets,
    message_id: "d39d8dbbf76d457d97ca879021e1eb97",
    catalog_subject: "Kernel module @KSENSE_KERNEL_MODULE_NAME@ was loaded",
    catalog: CATALOG,
};

/// The journald catalog entry (`journalctl -x`): what the event is and what its fields say.
const CATALOG: &str = r#"ksense saw a kernel.module.load event: process @PROCESS_PID@
(@PROCESS_EXECUTABLE_NAME@) loaded the kernel module
@KSENSE_KERNEL_MODULE_NAME@ into the running kernel.

KSENSE_KERNEL_MODULE_SIZE is its size in bytes and KSENSE_KERNEL_MODULE_TAINTS
the kernel's taint flags, when known. Code loaded into the kernel runs with
full privilege: check that the module and the process that loaded it are
expected on this host.

Logged at priority warning.
"#;

/// `struct module` fields, where `do_init_module` takes the module (fentry), and the fields of
/// the plain `module_load` tracepoint.
fn offsets(r: &mut Resolver<'_>) {
    if !Path::new("/proc/modules").exists() {
        // The reason given for every module hook, before any other.
        r.refuse_first(
            &[Hook::FentryDoInitModule, Hook::TpBtfModuleLoad, Hook::TracepointModuleLoad],
            "this kernel has no loadable module support (CONFIG_MODULES is off: /proc/modules is \
             absent), so no module can ever load",
        );
    }
    if let Some(btf) = r.btf() {
        match module_offsets(btf) {
            Ok(module) => r.config.module = module,
            Err(e) => r.refuse(&[Hook::FentryDoInitModule, Hook::TpBtfModuleLoad], &e.to_string()),
        }
        match btf.func_param_index("do_init_module", "mod") {
            Ok(i) => r.config.module.init_mod_arg = i as u32,
            Err(e) => r.refuse(&[Hook::FentryDoInitModule], &e.to_string()),
        }
    }
    r.tracepoint_fields(Hook::TracepointModuleLoad, 0, &[
        ("taints", |c| &mut c.module.tp_taints),
        ("name", |c| &mut c.module.tp_name),
    ]);
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

impl Payload for KernelModuleLoad {
    fn render(&self, process: &Process, _time: SystemTime, attrs: &mut Vec<(&'static str, Value)>) -> (Severity, String) {
        push_text(attrs, schema::KSENSE_KERNEL_MODULE_NAME, &self.name);
        if let Some(size) = self.size {
            attrs.push((schema::KSENSE_KERNEL_MODULE_SIZE, Value::Int(size as i64)));
        }
        if let Some(taints) = self.taints {
            attrs.push((schema::KSENSE_KERNEL_MODULE_TAINTS, Value::Int(taints as i64)));
        }
        let size = self.size.map(|s| format!(" ({s} bytes)")).unwrap_or_default();
        (Severity::Warn, format!("{} loaded kernel module {}{size}", process.who(), one_line(&lossless(&self.name))))
    }

    fn critical(&self) -> bool {
        true
    }

    fn heap_bytes(&self) -> usize {
        self.name.len()
    }
}
