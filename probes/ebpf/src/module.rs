//! `kernel.module.load` hooks: fentry on `do_init_module` (the seed hook), else the
//! `module_load` tracepoint (BTF-typed, else plain). All run in the loading task.
use aya_ebpf::{
    EbpfContext,
    helpers::generated::bpf_probe_read_kernel_str,
    macros::{btf_tracepoint, fentry, tracepoint},
    programs::{BtfTracePointContext, FEntryContext, TracePointContext},
};
use ksense_abi::{
    EventKind, Hook,
    module::{MODULE_NAME_CAP, MODULE_SIZE_KNOWN, MODULE_TAINTS_KNOWN, ModuleLoad},
};

use crate::{
    maps::{as_bytes, config, excluded, output},
    task::{fill_current, func_arg, have_offsets, header, read},
};

/// At most this many size fields are added up (`module_memory` core regions).
const SIZE_FIELDS_MAX: u32 = 4;

/// fentry `do_init_module(struct module *mod)`.
#[fentry(function = "do_init_module")]
pub fn fentry_do_init_module(ctx: FEntryContext) -> i32 {
    let module = func_arg(&ctx, config!(module.init_mod_arg)) as *const u8;
    emit_from_module(Hook::FentryDoInitModule, module);
    0
}

/// BTF tracepoint `module_load(struct module *mod)`.
#[btf_tracepoint(function = "module_load")]
pub fn tp_btf_module_load(ctx: BtfTracePointContext) -> i32 {
    let module: *const u8 = ctx.arg(0);
    emit_from_module(Hook::TpBtfModuleLoad, module);
    0
}

/// Plain tracepoint `module:module_load` (record fields: taints, name).
#[tracepoint]
pub fn tracepoint_module_load(ctx: TracePointContext) -> i32 {
    let (taints_at, name_at) = (config!(module.tp_taints), config!(module.tp_name));
    let mut ev = new_record();
    // SAFETY: `bpf_probe_read_kernel` from the tracepoint record; a bad offset fails with an
    // error instead of faulting.
    ev.taints = unsafe { ctx.read_at::<u32>(taints_at as usize) }.unwrap_or(0) as u64;
    ev.flags |= MODULE_TAINTS_KNOWN;
    // __data_loc: low 16 bits are the string's offset in the record.
    // SAFETY: as above.
    let loc = unsafe { ctx.read_at::<u32>(name_at as usize) }.unwrap_or(0);
    read_name(&mut ev, (ctx.as_ptr() as *const u8).wrapping_add((loc & 0xffff) as usize));
    submit(Hook::TracepointModuleLoad, &mut ev);
    0
}

#[inline(always)]
fn emit_from_module(hook: Hook, module: *const u8) {
    let mut ev = new_record();
    if have_offsets() && !module.is_null() {
        read_name(&mut ev, module.wrapping_add(config!(module.name) as usize));
        ev.taints = read(module, config!(module.taints));
        ev.flags |= MODULE_TAINTS_KNOWN;
        let (first, stride, count) = (config!(module.size), config!(module.size_stride), config!(module.size_count));
        let mut size = 0u64;
        for i in 0..SIZE_FIELDS_MAX {
            if i >= count {
                break;
            }
            size += read::<u32>(module, first + i * stride) as u64;
        }
        ev.size = size;
        if count > 0 {
            ev.flags |= MODULE_SIZE_KNOWN;
        }
    }
    submit(hook, &mut ev);
}

#[inline(always)]
fn new_record() -> ModuleLoad {
    ModuleLoad {
        header: Default::default(),
        task: Default::default(),
        size: 0,
        taints: 0,
        flags: 0,
        name_len: 0,
        name: [0; MODULE_NAME_CAP],
    }
}

#[inline(always)]
fn read_name(ev: &mut ModuleLoad, name: *const u8) {
    // SAFETY: writes at most MODULE_NAME_CAP bytes, the size of `ev.name`; a bad kernel
    // address fails with an error instead of faulting.
    let n = unsafe { bpf_probe_read_kernel_str(ev.name.as_mut_ptr().cast(), MODULE_NAME_CAP as u32, name.cast()) };
    ev.name_len = if n > 0 { n as u32 - 1 } else { 0 };
}

#[inline(always)]
fn submit(hook: Hook, ev: &mut ModuleLoad) {
    fill_current(&mut ev.task);
    if excluded(&ev.task, EventKind::ModuleLoad) {
        return;
    }
    ev.header = header(hook, size_of::<ModuleLoad>());
    output(EventKind::ModuleLoad, as_bytes(ev));
}
