//! `kernel.module.load` records.
use ksense_abi::module::{MODULE_NAME_CAP, MODULE_SIZE_KNOWN, MODULE_TAINTS_KNOWN, ModuleLoad};

use super::{DecodeError, process_from, read_whole};
use crate::{
    clock::Clock,
    event::{Detail, Event, Process, Render},
    record::{Severity, Value, push_text},
    schema,
    text::{lossless, one_line},
};

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

pub(super) fn decode(bytes: &[u8], clock: &Clock) -> Result<(Process, Detail), DecodeError> {
    let rec: ModuleLoad = read_whole(bytes)?;
    if rec.name_len as usize >= MODULE_NAME_CAP {
        return Err(DecodeError::Field("name_len"));
    }
    let module = KernelModuleLoad {
        name: rec.name[..rec.name_len as usize].to_vec(),
        size: (rec.flags & MODULE_SIZE_KNOWN != 0).then_some(rec.size),
        taints: (rec.flags & MODULE_TAINTS_KNOWN != 0).then_some(rec.taints),
    };
    Ok((process_from(&rec.task, clock), Detail::ModuleLoad(module)))
}

impl Render for KernelModuleLoad {
    fn render(&self, event: &Event, attrs: &mut Vec<(&'static str, Value)>) -> (Severity, String) {
        push_text(attrs, schema::KSENSE_KERNEL_MODULE_NAME, &self.name);
        if let Some(size) = self.size {
            attrs.push((schema::KSENSE_KERNEL_MODULE_SIZE, Value::Int(size as i64)));
        }
        if let Some(taints) = self.taints {
            attrs.push((schema::KSENSE_KERNEL_MODULE_TAINTS, Value::Int(taints as i64)));
        }
        let size = self.size.map(|s| format!(" ({s} bytes)")).unwrap_or_default();
        (Severity::Warn, format!("{} loaded kernel module {}{size}", event.who(), one_line(&lossless(&self.name))))
    }
}
