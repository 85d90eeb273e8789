//! `process.memory.protect` records.
use std::path::Path;

use ksense_abi::{
    config::MemoryOffsets,
    memory::{
        CoalesceKey, CoalesceState, MEMORY_FILE_CAP, MEMORY_MMAP, MEMORY_OLD_KNOWN, MEMORY_RESULT_KNOWN, MEMORY_SPANS_VMAS, Memory, PROT_EXEC,
        PROT_READ, PROT_WRITE, Region,
    },
};

use super::prelude::*;
use crate::{
    btf::{Btf, BtfError},
    wire::as_bytes,
};

/// What made a memory change.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Operation {
    /// `mprotect` or `pkey_mprotect` changed the protection of existing memory.
    Mprotect,
    /// `mmap` created a mapping executable (anonymous or writable).
    Mmap,
}

impl Operation {
    /// The contract's name: `mprotect` or `mmap`.
    pub fn name(self) -> &'static str {
        match self {
            Operation::Mprotect => "mprotect",
            Operation::Mmap => "mmap",
        }
    }
}

/// A protection change or an executable mapping (or `count` identical ones, coalesced in the
/// kernel).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProcessMemoryProtect {
    /// What made it.
    pub operation: Operation,
    /// Start of the range.
    pub start: u64,
    /// Length in bytes.
    pub len: u64,
    /// Identical changes this event stands for.
    pub count: u64,
    /// Protection before (`PROT_*` bits), when known (never for a new mapping).
    pub old_prot: Option<u32>,
    /// Protection requested.
    pub new_prot: u32,
    /// What the range is, when known.
    pub region: Option<Region>,
    /// The syscall's result, when known.
    pub result: Option<i32>,
    /// The backing file: its basename from the kernel, replaced by the full path by enrichment.
    pub file: Option<Vec<u8>>,
    /// The range went past the first mapping it starts in, and the hook (the syscall
    /// tracepoints) saw only that one: the old protection and the region of the rest are not
    /// known.
    pub spans_mappings: bool,
}

impl ProcessMemoryProtect {
    /// The range ends up writable and executable, or memory that was writable became
    /// executable, or may have: over mappings whose protection the hook did not see, any may
    /// have been writable, and a process must not hide a W^X change (from filters, rate limits
    /// and severity) by starting its range one page early.
    pub fn wx(&self) -> bool {
        let new = self.new_prot;
        let was_writable = self.spans_mappings || self.old_prot.is_some_and(|old| old & PROT_WRITE != 0 && old & PROT_EXEC == 0);
        new & PROT_EXEC != 0 && (new & PROT_WRITE != 0 || was_writable)
    }

    /// Executable memory was made writable, or may have been (over mappings not seen).
    pub fn code_made_writable(&self) -> bool {
        let was_code = self.spans_mappings || self.old_prot.is_some_and(|old| old & PROT_EXEC != 0 && old & PROT_WRITE == 0);
        was_code && self.new_prot & PROT_WRITE != 0
    }
}

impl ProcessMemoryProtect {
    /// Replaces the backing file's basename, as the kernel gave it, by its full path: from
    /// `/proc/<pid>/maps` (under `proc_root`) while the process lives, else the process's
    /// executable `exe` when the kernel said the range is its own code (`main_code`: the very
    /// inode). Either only when its name agrees with the kernel's: the basename stays otherwise.
    pub(crate) fn resolve_file(&mut self, proc_root: &Path, pid: u32, exe: Option<&[u8]>) {
        let Some(basename) = &self.file else { return };
        // The kernel record holds the file's basename, exact but cut to MEMORY_FILE_CAP - 1
        // bytes.
        let agrees = |path: &[u8]| {
            let name = path.rsplit(|&b| b == b'/').next().unwrap_or(path);
            name == &basename[..] || (basename.len() == MEMORY_FILE_CAP - 1 && name.starts_with(basename))
        };
        let mapped = mapping_path(proc_root, pid, self.start).filter(|path| agrees(path));
        let own_code = self.region == Some(Region::MainCode);
        if let Some(path) = mapped.or_else(|| exe.filter(|exe| own_code && agrees(exe)).map(<[u8]>::to_vec)) {
            self.file = Some(path);
        }
    }
}

/// The path of the file mapped at `addr` in process `pid`, from `/proc/<pid>/maps`. The kernel
/// writes a newline in the path as `\012` there (and nothing else escaped): that is undone, so
/// a name holding the four characters `\012` comes back as a newline (the caller checks the
/// name against the kernel record's).
fn mapping_path(proc_root: &Path, pid: u32, addr: u64) -> Option<Vec<u8>> {
    let maps = std::fs::read(proc_root.join(pid.to_string()).join("maps")).ok()?;
    maps.split(|&b| b == b'\n').find_map(|line| {
        // start-end perms offset dev inode path
        let text = std::str::from_utf8(line.get(..line.iter().position(|&b| b == b' ')?)?).ok()?;
        let (start, end) = text.split_once('-')?;
        let (start, end) = (u64::from_str_radix(start, 16).ok()?, u64::from_str_radix(end, 16).ok()?);
        if !(start..end).contains(&addr) {
            return None;
        }
        let path_at = line.iter().position(|&b| b == b'/')?;
        Some(unescape_newlines(&line[path_at..]))
    })
}

/// `path` with each `\012` (how `/proc/<pid>/maps` writes a newline) made a newline again.
fn unescape_newlines(path: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(path.len());
    let mut rest = path;
    while !rest.is_empty() {
        if let Some(tail) = rest.strip_prefix(b"\\012") {
            out.push(b'\n');
            rest = tail;
        } else {
            out.push(rest[0]);
            rest = &rest[1..];
        }
    }
    out
}

/// `rwx`-style rendering of `PROT_*` bits, e.g. `r-x`.
pub fn prot_string(prot: u32) -> String {
    [(PROT_READ, 'r'), (PROT_WRITE, 'w'), (PROT_EXEC, 'x')]
        .iter()
        .map(|&(bit, c)| if prot & bit != 0 { c } else { '-' })
        .collect()
}

fn decode(bytes: &[u8], clock: &Clock) -> Result<(Process, Detail), DecodeError> {
    let rec: Memory = read_whole(bytes)?;
    if rec.file_len as usize >= MEMORY_FILE_CAP {
        return Err(DecodeError::Field("file_len"));
    }
    let old_known = rec.flags & MEMORY_OLD_KNOWN != 0;
    let mmap = rec.flags & MEMORY_MMAP != 0;
    let memory = ProcessMemoryProtect {
        operation: if mmap { Operation::Mmap } else { Operation::Mprotect },
        start: rec.start,
        len: rec.len,
        count: rec.count,
        old_prot: old_known.then_some(rec.old_prot),
        new_prot: rec.new_prot,
        region: (old_known || mmap).then(|| Region::from_u32(rec.region)),
        result: (rec.flags & MEMORY_RESULT_KNOWN != 0).then_some(rec.result),
        file: (rec.file_len > 0).then(|| rec.file[..rec.file_len as usize].to_vec()),
        spans_mappings: rec.flags & MEMORY_SPANS_VMAS != 0,
    };
    Ok((Process::from_task(&rec.task, clock), Detail::MemoryProtect(memory)))
}

/// `process.memory.protect` in the table of kinds.
pub(super) static KIND: KindSpec = KindSpec {
    kind: EventKind::MemoryProtect,
    config_key: "memory",
    decode,
    offsets,
    message_id: "450bd3ca132e4701bb08514634b315d2",
    catalog_subject: "Process @PROCESS_PID@ changed memory protection to @KSENSE_MEMORY_PROTECTION_NEW@",
    catalog: CATALOG,
};

/// The journald catalog entry (`journalctl -x`): what the event is and what its fields say.
const CATALOG: &str = r#"ksense saw a process.memory.protect event: process @PROCESS_PID@ changed the
protection of @KSENSE_MEMORY_LENGTH@ bytes at @KSENSE_MEMORY_START@ with
@KSENSE_MEMORY_OPERATION@: mprotect() or pkey_mprotect() changed existing
memory, or mmap() created an executable mapping that is anonymous or writable.

KSENSE_MEMORY_PROTECTION_OLD and KSENSE_MEMORY_PROTECTION_NEW give the
protection before and after (rwx-style), KSENSE_MEMORY_REGION what the range
is (main_code, library_code, anonymous, stack, heap, file) and
KSENSE_MEMORY_FILE_PATH its file. KSENSE_MEMORY_WX=true when the result is
writable and executable, or executable memory was made writable: the pattern
of code injection, also used by JIT compilers. KSENSE_MEMORY_SPANS_MAPPINGS=true
when the range covers several mappings of which the hook saw only the first:
then WX is true whenever the range is made executable. KSENSE_MEMORY_RESULT is the
call's return value (0, or -errno when it failed) and KSENSE_EVENT_COUNT how
many identical changes this entry stands for. A new mapping has no old
protection.

Logged at priority warning when the change is W^X-relevant, else info.
"#;

/// VMA, `mm_struct` and file fields, where `mprotect_fixup`, `do_mprotect_pkey` and
/// `mmap_region` take their arguments (fentry, fexit), and the fields of the plain mprotect and
/// mmap syscall tracepoints (which need BTF too, to find the VMA).
fn offsets(r: &mut Resolver<'_>) {
    if let Some(why) = r.no_btf().map(|e| format!("no kernel BTF to find VMAs with: {e}")) {
        r.refuse(&[Hook::TracepointMprotect], &why);
    }
    if let Some(btf) = r.btf() {
        match memory_offsets(btf) {
            Ok(memory) => r.config.memory = memory,
            Err(e) => r.refuse(&[Hook::FentryMprotectFixup, Hook::TracepointMprotect], &e.to_string()),
        }
        if let Err(e) = fixup_positions(btf, &mut r.config.memory) {
            r.refuse(&[Hook::FentryMprotectFixup], &e.to_string());
        }
        if let Err(e) = mmap_positions(btf, &mut r.config.memory) {
            r.refuse(&[Hook::FentryMprotectFixup], &e.to_string());
        }
    }
    // Attachments 0 and 2: sys_enter_mprotect and sys_exit_mprotect (the pkey variants have
    // the same layout).
    r.tracepoint_fields(Hook::TracepointMprotect, 0, &[
        ("start", |c| &mut c.memory.tp_start),
        ("len", |c| &mut c.memory.tp_len),
        ("prot", |c| &mut c.memory.tp_prot),
    ]);
    r.tracepoint_fields(Hook::TracepointMprotect, 2, &[("ret", |c| &mut c.memory.tp_ret)]);
    // Attachments 4 and 5: sys_enter_mmap and sys_exit_mmap.
    r.tracepoint_fields(Hook::TracepointMprotect, 4, &[
        ("addr", |c| &mut c.memory.tp_mmap_addr),
        ("len", |c| &mut c.memory.tp_mmap_len),
        ("prot", |c| &mut c.memory.tp_mmap_prot),
        ("flags", |c| &mut c.memory.tp_mmap_flags),
    ]);
    r.tracepoint_fields(Hook::TracepointMprotect, 5, &[("ret", |c| &mut c.memory.tp_mmap_ret)]);
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

/// Positions of `mmap_region`'s parameters and return value (its fexit program): looked up by
/// name, as its prototype is not the same on every kernel.
fn mmap_positions(btf: &Btf, memory: &mut MemoryOffsets) -> Result<(), BtfError> {
    memory.mmap_file_arg = btf.func_param_index("mmap_region", "file")? as u32;
    memory.mmap_addr_arg = btf.func_param_index("mmap_region", "addr")? as u32;
    memory.mmap_len_arg = btf.func_param_index("mmap_region", "len")? as u32;
    memory.mmap_vm_flags_arg = btf.func_param_index("mmap_region", "vm_flags")? as u32;
    memory.mmap_ret_arg = btf.func_param_count("mmap_region")? as u32;
    Ok(())
}

impl Payload for ProcessMemoryProtect {
    /// A mapping is written by the hook's `mmap` program: the fexit on `mmap_region`
    /// (attachment 1 of the fentry hook) or the `sys_exit_mmap` tracepoint (attachment 5 of the
    /// syscall hook).
    fn probe(&self, hook: Hook) -> String {
        let mmap_program = match (self.operation, hook) {
            (Operation::Mmap, Hook::FentryMprotectFixup) => 1,
            (Operation::Mmap, Hook::TracepointMprotect) => 5,
            _ => return hook.to_string(),
        };
        let (_, target, family) = hook.attachments()[mmap_program];
        format!("{}/{target}", family.name())
    }

    fn render(&self, process: &Process, _time: SystemTime, attrs: &mut Vec<(&'static str, Value)>) -> (Severity, String) {
        attrs.push((schema::KSENSE_MEMORY_START, hex(self.start)));
        attrs.push((schema::KSENSE_MEMORY_LENGTH, Value::Int(self.len as i64)));
        if let Some(old) = self.old_prot {
            attrs.push((schema::KSENSE_MEMORY_PROTECTION_OLD, Value::Str(prot_string(old))));
        }
        attrs.push((schema::KSENSE_MEMORY_PROTECTION_NEW, Value::Str(prot_string(self.new_prot))));
        let region = self.region.unwrap_or(Region::Unknown).name();
        attrs.push((schema::KSENSE_MEMORY_REGION, Value::Str(region.to_owned())));
        if let Some(file) = &self.file {
            push_text(attrs, schema::KSENSE_MEMORY_FILE_PATH, file);
        }
        attrs.push((schema::KSENSE_MEMORY_WX, Value::Bool(self.wx())));
        if self.spans_mappings {
            attrs.push((schema::KSENSE_MEMORY_SPANS_MAPPINGS, Value::Bool(true)));
        }
        if let Some(result) = self.result {
            attrs.push((schema::KSENSE_MEMORY_RESULT, Value::Int(i64::from(result))));
        }
        attrs.push((schema::KSENSE_MEMORY_OPERATION, Value::Str(self.operation.name().to_owned())));
        attrs.push((schema::KSENSE_EVENT_COUNT, Value::Int(self.count as i64)));
        let severity = if self.wx() || self.code_made_writable() { Severity::Warn } else { Severity::Info };
        let was = self.old_prot.map(|o| format!(" (was {})", prot_string(o))).unwrap_or_default();
        let times = if self.count > 1 { format!(", {} times", self.count) } else { String::new() };
        let failed = match self.result {
            Some(r) if r < 0 => format!(", failed with {r}"),
            _ => String::new(),
        };
        let verb = match self.operation {
            Operation::Mprotect => "set",
            Operation::Mmap => "mapped",
        };
        let body = format!(
            "{} {verb} {:#x}+{} ({region}{}) {}{was}{times}{failed}",
            process.who(),
            self.start,
            self.len,
            self.file.as_deref().map(|f| format!(" {}", one_line(&lossless(f)))).unwrap_or_default(),
            match self.operation {
                Operation::Mprotect => format!("to {}", prot_string(self.new_prot)),
                Operation::Mmap => format!("as {}", prot_string(self.new_prot)),
            },
        );
        (severity, body)
    }

    fn critical(&self) -> bool {
        self.wx()
    }

    fn heap_bytes(&self) -> usize {
        self.file.as_ref().map_or(0, Vec::len)
    }
}

/// The probes' coalescing table (`COALESCE_MAP`): repeats of one (process, range,
/// transition) within the window are counted there, and the probes write a record for them
/// only when one more repeat arrives after the window. This takes the tail of each burst: every
/// entry idle for a while that still holds repeats becomes one record (its last record, with
/// the repeats as its count), for the reader to ship as if the probes had written it. Every
/// idle entry is removed: the table never evicts one itself (its repeats would be lost), so
/// this is what makes room.
pub struct Coalesced {
    table: aya::maps::HashMap<aya::maps::MapData, CoalesceKey, CoalesceState>,
}

impl Coalesced {
    /// The coalescing table the probes fill.
    pub fn new(table: aya::maps::HashMap<aya::maps::MapData, CoalesceKey, CoalesceState>) -> Coalesced {
        Coalesced { table }
    }

    /// Removes every entry not seen for `idle_ns` (0: all, at exit) and takes the repeats of
    /// those that hold some, each as the bytes of the record the probes would have written.
    pub fn take_idle(&mut self, idle_ns: u64) -> Vec<Vec<u8>> {
        let now = crate::clock::monotonic_ns() as u64;
        let idle: Vec<(CoalesceKey, CoalesceState)> = self
            .table
            .iter()
            .filter_map(Result::ok)
            .filter(|(_, state)| now.saturating_sub(state.seen_ns) >= idle_ns)
            .collect();
        idle.into_iter()
            .filter_map(|(key, state)| {
                // Idle for a whole window: a concurrent change of its key is all but impossible
                // here (and the probes would write it as a record of its own, not count it).
                self.table.remove(&key).ok()?;
                if state.pending == 0 {
                    return None;
                }
                let mut record = state.record;
                record.count = state.pending;
                record.header.ktime_ns = state.seen_ns;
                Some(as_bytes(&record).to_vec())
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn change(old: Option<u32>, new: u32) -> ProcessMemoryProtect {
        ProcessMemoryProtect {
            operation: Operation::Mprotect,
            start: 0,
            len: 4096,
            count: 1,
            old_prot: old,
            new_prot: new,
            region: None,
            result: None,
            file: None,
            spans_mappings: false,
        }
    }

    #[test]
    fn classifies_transitions() {
        let (r, w, x) = (PROT_READ, PROT_WRITE, PROT_EXEC);
        assert!(change(Some(r | x), r | w | x).wx());
        assert!(change(Some(r | w), r | x).wx(), "written memory made executable");
        assert!(!change(Some(r | w), r).wx());
        assert!(change(Some(r | x), r | w).code_made_writable());
        assert!(!change(Some(r | w), r | x).code_made_writable());
        assert_eq!(prot_string(r | x), "r-x");
        assert_eq!(prot_string(0), "---");
    }

    /// A range over mappings the hook did not see is judged as if any of them had been
    /// writable (made executable: W^X) or code (made writable), critical and WARN; made
    /// read-only it is neither.
    #[test]
    fn a_range_over_unseen_mappings_is_judged_by_its_worst_case() {
        let (r, w, x) = (PROT_READ, PROT_WRITE, PROT_EXEC);
        let spanning = |new| ProcessMemoryProtect { spans_mappings: true, ..change(None, new) };
        let executable = spanning(r | x);
        assert!(executable.wx() && executable.critical());
        let mut attrs = Vec::new();
        let (severity, _) = executable.render(&Process::default(), SystemTime::now(), &mut attrs);
        assert_eq!(severity, Severity::Warn);
        assert!(attrs.contains(&(schema::KSENSE_MEMORY_SPANS_MAPPINGS, Value::Bool(true))), "{attrs:?}");
        assert!(attrs.contains(&(schema::KSENSE_MEMORY_WX, Value::Bool(true))), "{attrs:?}");
        assert!(spanning(r | w).code_made_writable() && !spanning(r | w).wx());
        assert!(!spanning(r).wx() && !spanning(r).code_made_writable());
        assert!(!change(None, r | x).wx(), "a new mapping made executable, not writable, is not W^X");
    }

    /// The fexit program reads `mmap_region`'s arguments and return value from the trampoline's
    /// context, which holds six register arguments and the return value after them.
    #[test]
    fn mmap_region_fits_the_trampoline_on_this_kernel() {
        let Ok(btf) = Btf::from_sys_fs() else {
            eprintln!("skipped: no kernel BTF");
            return;
        };
        let mut memory = MemoryOffsets::default();
        mmap_positions(&btf, &mut memory).expect("mmap_region's parameters in this kernel's BTF");
        let args = [memory.mmap_file_arg, memory.mmap_addr_arg, memory.mmap_len_arg, memory.mmap_vm_flags_arg];
        assert!(args.iter().all(|&at| at < memory.mmap_ret_arg), "{memory:?}");
        assert!(memory.mmap_ret_arg <= 6, "{memory:?}");
    }

    #[test]
    fn mmap_records_say_so() {
        let mut change = change(None, PROT_READ | PROT_WRITE | PROT_EXEC);
        change.operation = Operation::Mmap;
        change.region = Some(Region::Anonymous);
        let mut attrs = Vec::new();
        let (severity, body) = change.render(&Process::default(), SystemTime::UNIX_EPOCH, &mut attrs);
        assert_eq!(severity, Severity::Warn);
        assert!(body.contains("mapped 0x0+4096 (anonymous) as rwx"), "{body}");
        let operation = attrs.iter().find(|(k, _)| *k == schema::KSENSE_MEMORY_OPERATION).map(|(_, v)| v);
        assert_eq!(operation, Some(&Value::Str("mmap".into())));
        assert!(!attrs.iter().any(|(k, _)| *k == schema::KSENSE_MEMORY_PROTECTION_OLD), "{attrs:?}");
    }

    #[test]
    fn maps_newline_escape_is_undone() {
        assert_eq!(unescape_newlines(b"/tmp/a\\012b\\012"), b"/tmp/a\nb\n");
        assert_eq!(unescape_newlines(b"/tmp/a\\01b\\x\\"), b"/tmp/a\\01b\\x\\");
    }
}
