//! Resolve field offsets and function argument positions from the running kernel's BTF, so
//! nothing kernel-specific is compiled into the probes.
//!
//! The kernel describes its own types in BTF (the BPF Type Format, documented in the kernel's
//! `Documentation/bpf/btf.rst`) and exports them as `/sys/kernel/btf/vmlinux`. [`Btf`] parses
//! that blob once (a few milliseconds for the ~6 MB file in a release build) and then answers the
//! questions a sensor asks at load time: at which byte of `struct task_struct` does
//! `real_parent` live, how wide is `cred.euid.val`, which argument of `mprotect_fixup` is
//! `newflags`, what is the value of `PIDTYPE_SID`. The answers are handed to the eBPF programs
//! (as globals or map entries), so one probe object works on every kernel version and
//! configuration.
//!
//! Only what those questions need is kept: the type records, the string section and name
//! indexes built at parse time. The input is not trusted: every read is bounds-checked, every
//! type chain is depth-limited, and malformed data gives a [`BtfError`], never a panic.

use std::collections::HashMap;
use std::fmt;
use std::io;

/// Where the running kernel exports its BTF.
const VMLINUX_PATH: &str = "/sys/kernel/btf/vmlinux";
const BTF_MAGIC: u16 = 0xeb9f;
const BTF_VERSION: u8 = 1;
/// Size of `struct btf_header` as of BTF version 1; `hdr_len` may be larger.
const HEADER_LEN: usize = 24;
/// Size of `struct btf_type`, the common part of every type record.
const TYPE_LEN: usize = 12;
/// Longest typedef/modifier chain, array nesting or anonymous-member nesting followed before the
/// data is declared cyclic. Real kernels stay far below this.
const MAX_DEPTH: usize = 64;

const KIND_INT: u8 = 1;
const KIND_PTR: u8 = 2;
const KIND_ARRAY: u8 = 3;
const KIND_STRUCT: u8 = 4;
const KIND_UNION: u8 = 5;
const KIND_ENUM: u8 = 6;
const KIND_FWD: u8 = 7;
const KIND_TYPEDEF: u8 = 8;
const KIND_VOLATILE: u8 = 9;
const KIND_CONST: u8 = 10;
const KIND_RESTRICT: u8 = 11;
const KIND_FUNC: u8 = 12;
const KIND_FUNC_PROTO: u8 = 13;
const KIND_VAR: u8 = 14;
const KIND_DATASEC: u8 = 15;
const KIND_FLOAT: u8 = 16;
const KIND_DECL_TAG: u8 = 17;
const KIND_TYPE_TAG: u8 = 18;
const KIND_ENUM64: u8 = 19;

fn kind_name(kind: u8) -> &'static str {
    match kind {
        0 => "void",
        KIND_INT => "INT",
        KIND_PTR => "PTR",
        KIND_ARRAY => "ARRAY",
        KIND_STRUCT => "STRUCT",
        KIND_UNION => "UNION",
        KIND_ENUM => "ENUM",
        KIND_FWD => "FWD",
        KIND_TYPEDEF => "TYPEDEF",
        KIND_VOLATILE => "VOLATILE",
        KIND_CONST => "CONST",
        KIND_RESTRICT => "RESTRICT",
        KIND_FUNC => "FUNC",
        KIND_FUNC_PROTO => "FUNC_PROTO",
        KIND_VAR => "VAR",
        KIND_DATASEC => "DATASEC",
        KIND_FLOAT => "FLOAT",
        KIND_DECL_TAG => "DECL_TAG",
        KIND_TYPE_TAG => "TYPE_TAG",
        KIND_ENUM64 => "ENUM64",
        _ => "unknown kind",
    }
}

/// What kind of failure a [`BtfError`] reports, for callers that react to it (for example by
/// trying an older field name when a lookup reports [`BtfErrorKind::NotFound`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum BtfErrorKind {
    /// The BTF file could not be read; [`std::error::Error::source`] gives the I/O error.
    Io,
    /// The data is not valid BTF: bad header, truncated section, out-of-range type id or string
    /// offset, cyclic type chain.
    Malformed,
    /// Valid BTF that this module cannot handle or a question it cannot answer: big-endian data,
    /// an unknown BTF version or type kind, a bitfield that is not on a byte boundary, a field path
    /// that goes through a pointer, an incomplete (forward-declared) type.
    Unsupported,
    /// The struct, field, function, parameter, enum or enumerator does not exist in this kernel.
    NotFound,
}

/// Error from parsing BTF or from a lookup in it. Its `Display` is a complete sentence fragment
/// a user can act on, e.g. `struct cred has no field euid.val`.
#[derive(Debug)]
pub struct BtfError {
    kind: BtfErrorKind,
    message: String,
    source: Option<io::Error>,
}

impl BtfError {
    /// What kind of failure this is.
    pub fn kind(&self) -> BtfErrorKind {
        self.kind
    }

    fn new(kind: BtfErrorKind, message: String) -> BtfError {
        BtfError { kind, message, source: None }
    }

    fn malformed(message: String) -> BtfError {
        BtfError::new(BtfErrorKind::Malformed, message)
    }

    pub(crate) fn unsupported(message: String) -> BtfError {
        BtfError::new(BtfErrorKind::Unsupported, message)
    }

    fn not_found(message: String) -> BtfError {
        BtfError::new(BtfErrorKind::NotFound, message)
    }

    /// Prefixes the message with `context: `.
    fn context(mut self, context: impl fmt::Display) -> BtfError {
        self.message = format!("{context}: {}", self.message);
        self
    }
}

impl fmt::Display for BtfError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for BtfError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.source.as_ref().map(|e| e as &(dyn std::error::Error + 'static))
    }
}

/// The common part of one type record, plus where its trailing data starts.
#[derive(Debug, Clone, Copy)]
struct TypeRec {
    name_off: u32,
    info: u32,
    /// `size` for INT, ENUM, ENUM64, STRUCT, UNION, FLOAT, DATASEC; `type` for the others.
    size_or_type: u32,
    /// Offset of the kind-specific trailing data in the type section.
    extra: usize,
}

impl TypeRec {
    /// Stand-in for type id 0, `void`.
    const VOID: TypeRec = TypeRec { name_off: 0, info: 0, size_or_type: 0, extra: 0 };

    fn kind(self) -> u8 {
        ((self.info >> 24) & 0x1f) as u8
    }

    fn vlen(self) -> usize {
        (self.info & 0xffff) as usize
    }

    fn kind_flag(self) -> bool {
        self.info >> 31 != 0
    }

    fn is_composite(self) -> bool {
        matches!(self.kind(), KIND_STRUCT | KIND_UNION)
    }

    /// `struct` or `union`, for messages.
    fn keyword(self) -> &'static str {
        if self.kind() == KIND_UNION { "union" } else { "struct" }
    }
}

/// Type ids that share a name. Almost always one; the extra `Vec` then never allocates.
#[derive(Debug)]
struct Ids {
    first: u32,
    more: Vec<u32>,
}

impl Ids {
    fn iter(&self) -> impl Iterator<Item = u32> + '_ {
        std::iter::once(self.first).chain(self.more.iter().copied())
    }
}

/// A member found by [`Btf::locate`]: where it is, how wide if a bitfield, and its type.
#[derive(Debug, Clone, Copy)]
struct Located {
    bit_offset: u64,
    bitfield_bits: Option<u32>,
    type_id: u32,
}

/// Parsed kernel BTF: the type records, the string section, and name indexes for the lookups.
///
/// Build it with [`Btf::from_sys_fs`] (the running kernel) or [`Btf::parse`] (any raw BTF blob),
/// then ask for offsets, sizes, parameter positions and enum values by name.
pub struct Btf {
    /// Indexed by type id; entry 0 stands for `void`.
    types: Vec<TypeRec>,
    type_data: Vec<u8>,
    strings: Vec<u8>,
    /// STRUCT and UNION by name (C puts both tags in one namespace). When several share a name,
    /// the first one with members wins.
    composites: HashMap<Box<str>, u32>,
    /// TYPEDEF by name (first one wins), for `typedef struct { ... } name_t;`.
    typedefs: HashMap<Box<str>, u32>,
    /// FUNC by name.
    funcs: HashMap<Box<str>, Ids>,
    /// ENUM and ENUM64 by name.
    enums: HashMap<Box<str>, Ids>,
    /// Size of a pointer, taken from the size of `long`.
    ptr_size: u32,
}

impl fmt::Debug for Btf {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Btf")
            .field("types", &(self.types.len() - 1))
            .field("type_bytes", &self.type_data.len())
            .field("string_bytes", &self.strings.len())
            .field("structs", &self.composites.len())
            .field("funcs", &self.funcs.len())
            .field("ptr_size", &self.ptr_size)
            .finish()
    }
}

fn u32_at(buf: &[u8], offset: usize) -> Option<u32> {
    let bytes = buf.get(offset..offset.checked_add(4)?)?;
    Some(u32::from_le_bytes(bytes.try_into().ok()?))
}

/// The NUL-terminated UTF-8 string at `offset` in a string section.
fn str_at(strings: &[u8], offset: u32) -> Option<&str> {
    let tail = strings.get(usize::try_from(offset).ok()?..)?;
    let end = tail.iter().position(|&b| b == 0)?;
    std::str::from_utf8(&tail[..end]).ok()
}

/// Adds `id` under `name` to a multi-valued index.
fn push_id(map: &mut HashMap<Box<str>, Ids>, name: &str, id: u32) {
    match map.get_mut(name) {
        Some(ids) => ids.more.push(id),
        None => {
            map.insert(name.into(), Ids { first: id, more: Vec::new() });
        }
    }
}

impl Btf {
    /// Reads and parses `/sys/kernel/btf/vmlinux`, the BTF of the running kernel.
    ///
    /// The file exists when the kernel was built with `CONFIG_DEBUG_INFO_BTF=y` (and sysfs is
    /// mounted); the error message says so when it is missing.
    pub fn from_sys_fs() -> Result<Btf, BtfError> {
        Btf::from_file(VMLINUX_PATH)
    }

    fn from_file(path: &str) -> Result<Btf, BtfError> {
        let data = std::fs::read(path).map_err(|e| {
            let hint =
                if e.kind() == io::ErrorKind::NotFound { " (is CONFIG_DEBUG_INFO_BTF enabled?)" } else { "" };
            BtfError {
                kind: BtfErrorKind::Io,
                message: format!("cannot read {path}: {e}{hint}"),
                source: Some(e),
            }
        })?;
        Btf::parse(&data).map_err(|e| e.context(path))
    }

    /// Parses raw BTF bytes: a little-endian BTF version 1 blob such as the content of
    /// `/sys/kernel/btf/vmlinux`. Big-endian BTF is rejected with an explicit error.
    ///
    /// Every type record is walked once to check that it fits in the type section and to build the
    /// name indexes; string offsets of the indexed names are checked here, other string offsets and
    /// type ids when a lookup reaches them.
    pub fn parse(data: &[u8]) -> Result<Btf, BtfError> {
        if data.len() < HEADER_LEN {
            return Err(BtfError::malformed(format!(
                "BTF data is {} bytes, shorter than the {HEADER_LEN}-byte BTF header",
                data.len()
            )));
        }
        let magic = u16::from_le_bytes([data[0], data[1]]);
        if magic == BTF_MAGIC.swap_bytes() {
            return Err(BtfError::unsupported(
                "BTF data is big-endian (byte-swapped magic 0xeb9f); only little-endian BTF is supported"
                    .to_string(),
            ));
        }
        if magic != BTF_MAGIC {
            return Err(BtfError::malformed(format!("not BTF data: magic is {magic:#06x}, expected 0xeb9f")));
        }
        if data[2] != BTF_VERSION {
            return Err(BtfError::unsupported(format!(
                "BTF version {} is not supported (only version {BTF_VERSION})",
                data[2]
            )));
        }
        // data[3] is `flags`; no flag is defined, and none would change the layout read here.
        let word = |offset: usize| u32_at(data, offset).map_or(0, |v| v as usize);
        let hdr_len = word(4);
        let (type_off, type_len, str_off, str_len) = (word(8), word(12), word(16), word(20));
        if hdr_len < HEADER_LEN || hdr_len > data.len() {
            return Err(BtfError::malformed(format!(
                "BTF header length {hdr_len} is outside {HEADER_LEN}..={}",
                data.len()
            )));
        }
        let body = &data[hdr_len..];
        let section = |name: &str, off: usize, len: usize| {
            off.checked_add(len).and_then(|end| body.get(off..end)).ok_or_else(|| {
                BtfError::malformed(format!(
                    "BTF {name} section (offset {off}, length {len}) extends past the end of the \
                     data ({} bytes after the header); the file is truncated or corrupt",
                    body.len()
                ))
            })
        };
        let type_data = section("type", type_off, type_len)?;
        let strings = section("string", str_off, str_len)?;

        let mut types = Vec::with_capacity(type_len / 24 + 1);
        types.push(TypeRec::VOID);
        let mut offset = 0;
        while offset < type_data.len() {
            let id = types.len();
            let (Some(name_off), Some(info), Some(size_or_type)) =
                (u32_at(type_data, offset), u32_at(type_data, offset + 4), u32_at(type_data, offset + 8))
            else {
                return Err(BtfError::malformed(format!(
                    "BTF type section ends inside the record of type id {id}"
                )));
            };
            let t = TypeRec { name_off, info, size_or_type, extra: offset + TYPE_LEN };
            let vlen = t.vlen();
            let extra_len = match t.kind() {
                KIND_INT | KIND_VAR | KIND_DECL_TAG => 4,
                KIND_PTR | KIND_FWD | KIND_TYPEDEF | KIND_VOLATILE | KIND_CONST | KIND_RESTRICT
                | KIND_FUNC | KIND_FLOAT | KIND_TYPE_TAG => 0,
                KIND_ARRAY => 12,
                KIND_STRUCT | KIND_UNION | KIND_DATASEC | KIND_ENUM64 => 12 * vlen,
                KIND_ENUM | KIND_FUNC_PROTO => 8 * vlen,
                0 => return Err(BtfError::malformed(format!("BTF type id {id} has kind 0 (unknown)"))),
                kind => {
                    return Err(BtfError::unsupported(format!(
                        "BTF type id {id} has kind {kind}, which this parser does not know \
                         (the kernel is newer than the parser)"
                    )));
                }
            };
            let next = t.extra + extra_len;
            if next > type_data.len() {
                return Err(BtfError::malformed(format!(
                    "BTF type section ends inside the {} record of type id {id}",
                    kind_name(t.kind())
                )));
            }
            if u32::try_from(id).is_err() {
                return Err(BtfError::malformed("BTF has more than 2^32 types".to_string()));
            }
            types.push(t);
            offset = next;
        }

        let mut composites: HashMap<Box<str>, u32> = HashMap::new();
        let mut typedefs: HashMap<Box<str>, u32> = HashMap::new();
        let mut funcs: HashMap<Box<str>, Ids> = HashMap::new();
        let mut enums: HashMap<Box<str>, Ids> = HashMap::new();
        let mut ptr_size = None;
        for (id, &t) in types.iter().enumerate().skip(1) {
            let kind = t.kind();
            if t.name_off == 0
                || !matches!(
                    kind,
                    KIND_STRUCT | KIND_UNION | KIND_TYPEDEF | KIND_FUNC | KIND_ENUM | KIND_ENUM64 | KIND_INT
                )
            {
                continue;
            }
            let name = str_at(strings, t.name_off).ok_or_else(|| {
                BtfError::malformed(format!(
                    "name of BTF type id {id} (string offset {}) is not a valid string",
                    t.name_off
                ))
            })?;
            if name.is_empty() {
                continue;
            }
            let id = id as u32; // fits: checked while walking
            match kind {
                KIND_STRUCT | KIND_UNION => match composites.get_mut(name) {
                    Some(best) => {
                        if types[*best as usize].vlen() == 0 && t.vlen() > 0 {
                            *best = id;
                        }
                    }
                    None => {
                        composites.insert(name.into(), id);
                    }
                },
                KIND_TYPEDEF => {
                    if !typedefs.contains_key(name) {
                        typedefs.insert(name.into(), id);
                    }
                }
                KIND_FUNC => push_id(&mut funcs, name, id),
                KIND_ENUM | KIND_ENUM64 => push_id(&mut enums, name, id),
                _ => {
                    // INT: BTF has no pointer size; like libbpf, use the size of `long`.
                    let is_long = matches!(name, "long" | "long int" | "unsigned long" | "long unsigned int");
                    if ptr_size.is_none() && is_long && matches!(t.size_or_type, 4 | 8) {
                        ptr_size = Some(t.size_or_type);
                    }
                }
            }
        }

        Ok(Btf {
            types,
            type_data: type_data.to_vec(),
            strings: strings.to_vec(),
            composites,
            typedefs,
            funcs,
            enums,
            ptr_size: ptr_size.unwrap_or(8),
        })
    }

    /// Byte offset of a field reached by a dotted path from a named struct or union, e.g.
    /// `field_offset("task_struct", "real_parent")`, `field_offset("cred", "euid.val")`,
    /// `field_offset("signal_struct", "live.counter")`, `field_offset("mm_struct", "start_code")`.
    ///
    /// Each path component names a member of the struct or union reached so far. Members of
    /// anonymous structs and unions are found as if they were direct members (as in C), and
    /// typedefs and const/volatile/restrict/`type_tag` modifiers are seen through. A numeric
    /// component indexes into an array (`"comm.1"`). A path cannot go through a pointer (the
    /// pointed-to object is elsewhere in memory): read the pointer, then look up the offset in the
    /// pointed-to struct. `struct_name` may also be a typedef of a struct or union.
    ///
    /// Errors: [`BtfErrorKind::NotFound`] if the struct or any component is missing (the message
    /// names the struct and the path); [`BtfErrorKind::Unsupported`] if the field is a bitfield
    /// that does not start on a byte boundary.
    pub fn field_offset(&self, struct_name: &str, path: &str) -> Result<u32, BtfError> {
        let (keyword, loc) = self.locate(struct_name, path)?;
        if loc.bit_offset % 8 != 0 {
            return Err(BtfError::unsupported(format!(
                "{keyword} {struct_name} field {path} is a bitfield at bit offset {}, which is not \
                 on a byte boundary",
                loc.bit_offset
            )));
        }
        u32::try_from(loc.bit_offset / 8).map_err(|_| {
            BtfError::malformed(format!("{keyword} {struct_name} field {path} has an offset beyond 4 GiB"))
        })
    }

    /// Byte size of the type of the field that [`Btf::field_offset`] finds for the same
    /// arguments, after resolving typedefs and modifiers: 8 for a pointer on x86-64, the element
    /// size times the length for an array, the `size` of a struct, union, enum or integer.
    ///
    /// A bitfield whose width and start are both whole bytes reports its width in bytes (reading
    /// that many bytes at the offset gives its value on a little-endian machine); any other
    /// bitfield is an [`BtfErrorKind::Unsupported`] error, as is a field of incomplete type.
    pub fn field_size(&self, struct_name: &str, path: &str) -> Result<u32, BtfError> {
        let (keyword, loc) = self.locate(struct_name, path)?;
        if let Some(bits) = loc.bitfield_bits {
            if bits % 8 == 0 && loc.bit_offset % 8 == 0 {
                return Ok(bits / 8);
            }
            return Err(BtfError::unsupported(format!(
                "{keyword} {struct_name} field {path} is a bitfield of {bits} bits at bit offset \
                 {}; it has no byte size",
                loc.bit_offset
            )));
        }
        self.size_of(loc.type_id, 0)
            .map_err(|e| e.context(format_args!("{keyword} {struct_name} field {path}")))
    }

    /// Whether a struct or union with this name, or a typedef of one, exists: exactly the names
    /// [`Btf::field_offset`] accepts. A forward declaration alone does not count.
    pub fn has_struct(&self, name: &str) -> bool {
        self.find_composite(name).is_some()
    }

    /// Zero-based position of the parameter called `param` in the prototype of the kernel function
    /// `func` (its `BTF_KIND_FUNC`, whose type is a `BTF_KIND_FUNC_PROTO`), e.g.
    /// `func_param_index("mprotect_fixup", "newflags")`. For fentry/fexit programs this is the
    /// index of the argument in the program context.
    ///
    /// If the BTF holds several functions with this name (static functions in different files),
    /// they must agree on the position, otherwise the answer would depend on which one gets
    /// attached and an [`BtfErrorKind::Unsupported`] error is returned.
    pub fn func_param_index(&self, func: &str, param: &str) -> Result<usize, BtfError> {
        let mut answer = None;
        for proto in self.func_protos(func)? {
            let mut index = None;
            for (i, (name_off, _)) in self.params(proto)?.into_iter().enumerate() {
                if name_off != 0 && self.name(name_off)? == param {
                    index = Some(i);
                    break;
                }
            }
            let index = index.ok_or_else(|| {
                BtfError::not_found(format!("kernel function {func} has no parameter {param}"))
            })?;
            match answer {
                Some(previous) if previous != index => {
                    return Err(BtfError::unsupported(format!(
                        "kernel BTF has several functions named {func} with parameter {param} at \
                         different positions ({previous} and {index})"
                    )));
                }
                _ => answer = Some(index),
            }
        }
        answer.ok_or_else(|| BtfError::not_found(format!("kernel BTF has no function {func}")))
    }

    /// Number of parameters of the kernel function `func`, not counting a trailing `...`. In an
    /// fexit program's context the return value follows the last argument, at this index.
    ///
    /// Several functions with this name must agree on the count, as for
    /// [`Btf::func_param_index`].
    pub fn func_param_count(&self, func: &str) -> Result<usize, BtfError> {
        let mut answer = None;
        for proto in self.func_protos(func)? {
            let count = self.params(proto)?.len();
            match answer {
                Some(previous) if previous != count => {
                    return Err(BtfError::unsupported(format!(
                        "kernel BTF has several functions named {func} with different numbers of \
                         parameters ({previous} and {count})"
                    )));
                }
                _ => answer = Some(count),
            }
        }
        answer.ok_or_else(|| BtfError::not_found(format!("kernel BTF has no function {func}")))
    }

    /// Whether a `BTF_KIND_FUNC` with this name exists, i.e. whether the function can be traced
    /// with fentry/fexit programs. Inlined functions, and functions the BTF generator left out,
    /// have none; the kernel can still refuse an attachment (e.g. to a `notrace` function).
    pub fn has_func(&self, func: &str) -> bool {
        self.funcs.contains_key(func)
    }

    /// Value of an enumerator of the named enum (`BTF_KIND_ENUM` or `BTF_KIND_ENUM64`, or a typedef
    /// of one), e.g. `enum_value("pid_type", "PIDTYPE_SID")`.
    ///
    /// Values are sign- or zero-extended as the enum's signedness flag says; an unsigned 64-bit
    /// value above `i64::MAX` comes back as its two's-complement `i64` (cast it to `u64`).
    pub fn enum_value(&self, enum_name: &str, enumerator: &str) -> Result<i64, BtfError> {
        let typedef_enum = self
            .typedefs
            .get(enum_name)
            .and_then(|&id| self.resolve(id).ok())
            .filter(|&id| self.ty(id).is_ok_and(|t| matches!(t.kind(), KIND_ENUM | KIND_ENUM64)));
        let candidates: Vec<u32> = match self.enums.get(enum_name) {
            Some(ids) => ids.iter().collect(),
            None => typedef_enum.into_iter().collect(),
        };
        if candidates.is_empty() {
            return Err(BtfError::not_found(format!("kernel BTF has no enum {enum_name}")));
        }
        for id in candidates {
            let t = self.ty(id)?;
            let entry_len = if t.kind() == KIND_ENUM64 { 12 } else { 8 };
            for i in 0..t.vlen() {
                let at = t.extra + i * entry_len;
                let name_off = self.data_u32(at)?;
                if name_off == 0 || self.name(name_off)? != enumerator {
                    continue;
                }
                let lo = self.data_u32(at + 4)?;
                return Ok(if t.kind() == KIND_ENUM64 {
                    let hi = self.data_u32(at + 8)?;
                    ((u64::from(hi) << 32) | u64::from(lo)) as i64
                } else if t.kind_flag() {
                    i64::from(lo as i32)
                } else {
                    i64::from(lo)
                });
            }
        }
        Err(BtfError::not_found(format!("enum {enum_name} has no enumerator {enumerator}")))
    }

    // ---- internals -------------------------------------------------------------------------

    fn ty(&self, id: u32) -> Result<TypeRec, BtfError> {
        self.types.get(id as usize).copied().ok_or_else(|| {
            BtfError::malformed(format!(
                "BTF refers to type id {id}, but there are only {} types",
                self.types.len() - 1
            ))
        })
    }

    fn name(&self, offset: u32) -> Result<&str, BtfError> {
        str_at(&self.strings, offset)
            .ok_or_else(|| BtfError::malformed(format!("BTF string offset {offset} is not a valid string")))
    }

    fn data_u32(&self, offset: usize) -> Result<u32, BtfError> {
        u32_at(&self.type_data, offset)
            .ok_or_else(|| BtfError::malformed(format!("BTF type data read at {offset} is out of bounds")))
    }

    /// Follows typedefs and modifiers (const, volatile, restrict, `type_tag`) to the real type.
    fn resolve(&self, mut id: u32) -> Result<u32, BtfError> {
        for _ in 0..MAX_DEPTH {
            let t = self.ty(id)?;
            match t.kind() {
                KIND_TYPEDEF | KIND_VOLATILE | KIND_CONST | KIND_RESTRICT | KIND_TYPE_TAG => {
                    id = t.size_or_type;
                }
                _ => return Ok(id),
            }
        }
        Err(BtfError::malformed(format!(
            "BTF typedef/modifier chain through type id {id} is longer than {MAX_DEPTH} (a cycle?)"
        )))
    }

    /// A struct or union by name: the indexed one, else a typedef that resolves to one.
    fn find_composite(&self, name: &str) -> Option<u32> {
        if let Some(&id) = self.composites.get(name) {
            return Some(id);
        }
        let id = self.resolve(*self.typedefs.get(name)?).ok()?;
        self.ty(id).ok()?.is_composite().then_some(id)
    }

    /// The definition behind a (resolved) type, if it is a struct or union: itself, or for a
    /// forward declaration the struct or union of that name.
    fn composite_def(&self, id: u32) -> Result<Option<u32>, BtfError> {
        let t = self.ty(id)?;
        match t.kind() {
            KIND_STRUCT | KIND_UNION => Ok(Some(id)),
            KIND_FWD => Ok(self.composites.get(self.name(t.name_off)?).copied()),
            _ => Ok(None),
        }
    }

    /// The (`name_off`, type, offset) triple of member `index` of a struct or union.
    fn member(&self, t: TypeRec, index: usize) -> Result<(u32, u32, u32), BtfError> {
        let at = t.extra + index * 12;
        Ok((self.data_u32(at)?, self.data_u32(at + 4)?, self.data_u32(at + 8)?))
    }

    /// Finds the member called `name` in struct/union `id`, looking inside anonymous struct and
    /// union members. The offset is relative to the start of `id`.
    fn find_member(&self, id: u32, name: &str, depth: usize) -> Result<Option<Located>, BtfError> {
        if depth > MAX_DEPTH {
            return Err(BtfError::malformed(format!(
                "BTF anonymous members nest deeper than {MAX_DEPTH} (a cycle?)"
            )));
        }
        let t = self.ty(id)?;
        for i in 0..t.vlen() {
            let (name_off, member_type, raw_offset) = self.member(t, i)?;
            let (bit_offset, bitfield_bits) =
                if t.kind_flag() { (raw_offset & 0x00ff_ffff, raw_offset >> 24) } else { (raw_offset, 0) };
            let member_name = if name_off == 0 { "" } else { self.name(name_off)? };
            if member_name.is_empty() {
                // Anonymous struct/union: its members belong to the enclosing one. (Anonymous
                // bitfield padding, `int :3;`, resolves to an INT and is skipped.)
                let inner = self.resolve(member_type)?;
                if self.ty(inner)?.is_composite()
                    && let Some(mut found) = self.find_member(inner, name, depth + 1)?
                {
                    found.bit_offset += u64::from(bit_offset);
                    return Ok(Some(found));
                }
                continue;
            }
            if member_name != name {
                continue;
            }
            let mut found = Located {
                bit_offset: u64::from(bit_offset),
                bitfield_bits: (bitfield_bits != 0).then_some(bitfield_bits),
                type_id: member_type,
            };
            if !t.kind_flag() {
                // Legacy encoding: a bitfield's width and extra bit offset live in its INT type.
                let int = self.ty(self.resolve(member_type)?)?;
                if int.kind() == KIND_INT {
                    let encoding = self.data_u32(int.extra)?;
                    let bits = encoding & 0xff;
                    let int_offset = (encoding >> 16) & 0xff;
                    if int_offset != 0 || u64::from(bits) != u64::from(int.size_or_type) * 8 {
                        found.bit_offset += u64::from(int_offset);
                        found.bitfield_bits = Some(bits);
                    }
                }
            }
            return Ok(Some(found));
        }
        Ok(None)
    }

    /// Walks `path` from the struct or union `struct_name`. Returns the keyword of the root
    /// (`struct` or `union`, for messages) and the field found.
    fn locate(&self, struct_name: &str, path: &str) -> Result<(&'static str, Located), BtfError> {
        let root = self
            .find_composite(struct_name)
            .ok_or_else(|| BtfError::not_found(format!("kernel BTF has no struct {struct_name}")))?;
        let keyword = self.ty(root)?.keyword();
        let missing = |detail: String| {
            BtfError::not_found(format!("{keyword} {struct_name} has no field {path}{detail}"))
        };
        let mut loc = Located { bit_offset: 0, bitfield_bits: None, type_id: root };
        let mut walked: usize = 0; // length of the path prefix already resolved, for messages
        for (i, component) in path.split('.').enumerate() {
            let prefix = &path[..walked.saturating_sub(1)];
            walked += component.len() + 1;
            if component.is_empty() {
                return Err(missing(String::new()));
            }
            let container = if i == 0 {
                root
            } else {
                let id = self.resolve(loc.type_id)?;
                let t = self.ty(id)?;
                if loc.bitfield_bits.is_some() {
                    return Err(missing(format!(" ({prefix} is a bitfield)")));
                }
                match t.kind() {
                    KIND_ARRAY => {
                        let Ok(index) = component.parse::<u64>() else {
                            return Err(missing(format!(" ({prefix} is an array; index it with a number)")));
                        };
                        let elem = self.data_u32(t.extra)?;
                        let len = self.data_u32(t.extra + 8)?;
                        if len != 0 && index >= u64::from(len) {
                            return Err(missing(format!(" ({prefix} has only {len} elements)")));
                        }
                        let elem_size = self.size_of(elem, 0)?;
                        loc.bit_offset = index
                            .checked_mul(u64::from(elem_size) * 8)
                            .and_then(|bits| bits.checked_add(loc.bit_offset))
                            .ok_or_else(|| missing(format!(" ({prefix} index too large)")))?;
                        loc.type_id = elem;
                        continue;
                    }
                    KIND_PTR => {
                        return Err(BtfError::unsupported(format!(
                            "{keyword} {struct_name} field path {path} goes through the pointer \
                             {prefix}; read the pointer, then look up the rest of the path in \
                             the pointed-to type"
                        )));
                    }
                    _ => match self.composite_def(id)? {
                        Some(def) => def,
                        None if t.kind() == KIND_FWD => {
                            return Err(BtfError::unsupported(format!(
                                "{keyword} {struct_name} field path {path}: {prefix} has an \
                                 incomplete type (forward declaration only)"
                            )));
                        }
                        None => {
                            return Err(missing(format!(" ({prefix} is not a struct or union)")));
                        }
                    },
                }
            };
            let Some(found) = self.find_member(container, component, 0)? else {
                return Err(missing(String::new()));
            };
            loc = Located {
                bit_offset: loc.bit_offset + found.bit_offset,
                bitfield_bits: found.bitfield_bits,
                type_id: found.type_id,
            };
        }
        Ok((keyword, loc))
    }

    /// Byte size of a type, after resolving typedefs and modifiers.
    fn size_of(&self, id: u32, depth: usize) -> Result<u32, BtfError> {
        if depth > MAX_DEPTH {
            return Err(BtfError::malformed(format!("BTF arrays nest deeper than {MAX_DEPTH} (a cycle?)")));
        }
        let id = self.resolve(id)?;
        let t = self.ty(id)?;
        match t.kind() {
            KIND_INT | KIND_ENUM | KIND_ENUM64 | KIND_FLOAT | KIND_STRUCT | KIND_UNION | KIND_DATASEC => {
                Ok(t.size_or_type)
            }
            KIND_PTR => Ok(self.ptr_size),
            KIND_ARRAY => {
                let elem = self.data_u32(t.extra)?;
                let len = self.data_u32(t.extra + 8)?;
                let elem_size = self.size_of(elem, depth + 1)?;
                elem_size.checked_mul(len).ok_or_else(|| {
                    BtfError::malformed(format!(
                        "size of BTF array type id {id} ({len} x {elem_size} bytes) overflows"
                    ))
                })
            }
            KIND_FWD => match self.composite_def(id)? {
                Some(def) => Ok(self.ty(def)?.size_or_type),
                None => Err(BtfError::unsupported(format!(
                    "type {} is only forward-declared; it has no size",
                    self.name(t.name_off)?
                ))),
            },
            kind => {
                Err(BtfError::unsupported(format!("type id {id} is {}, which has no size", kind_name(kind))))
            }
        }
    }

    /// The `FUNC_PROTO` ids of all functions called `func`.
    fn func_protos(&self, func: &str) -> Result<Vec<u32>, BtfError> {
        let ids = self
            .funcs
            .get(func)
            .ok_or_else(|| BtfError::not_found(format!("kernel BTF has no function {func}")))?;
        ids.iter()
            .map(|id| {
                let proto = self.ty(id)?.size_or_type;
                match self.ty(proto)?.kind() {
                    KIND_FUNC_PROTO => Ok(proto),
                    kind => Err(BtfError::malformed(format!(
                        "BTF function {func} (type id {id}) points to a {} instead of a FUNC_PROTO",
                        kind_name(kind)
                    ))),
                }
            })
            .collect()
    }

    /// The (`name_off`, type) pairs of a `FUNC_PROTO`'s parameters, without a trailing `...`.
    fn params(&self, proto: u32) -> Result<Vec<(u32, u32)>, BtfError> {
        let t = self.ty(proto)?;
        let mut params = (0..t.vlen())
            .map(|i| Ok((self.data_u32(t.extra + i * 8)?, self.data_u32(t.extra + i * 8 + 4)?)))
            .collect::<Result<Vec<_>, BtfError>>()?;
        if params.last() == Some(&(0, 0)) {
            params.pop(); // variadic marker
        }
        Ok(params)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::OnceLock;

    // ---- against the running kernel ---------------------------------------------------------

    /// The running kernel's BTF, or `None` (with a note) where the kernel exports none.
    fn kernel() -> Option<&'static Btf> {
        static KERNEL: OnceLock<Option<Btf>> = OnceLock::new();
        KERNEL
            .get_or_init(|| match Btf::from_sys_fs() {
                Ok(btf) => Some(btf),
                Err(e) if !std::path::Path::new(VMLINUX_PATH).exists() => {
                    eprintln!("skipping kernel BTF checks: {e}");
                    None
                }
                Err(e) => panic!("{e}"),
            })
            .as_ref()
    }

    fn struct_size(btf: &Btf, name: &str) -> u32 {
        let id = btf.find_composite(name).unwrap();
        btf.ty(id).unwrap().size_or_type
    }

    #[test]
    fn kernel_task_struct() {
        let Some(btf) = kernel() else { return };
        assert!(btf.has_struct("task_struct"));
        let size = struct_size(btf, "task_struct");
        let fields =
            ["pid", "tgid", "real_parent", "comm", "mm", "cred", "exit_code", "start_time", "signal"];
        let mut offsets: Vec<u32> =
            fields.iter().map(|f| btf.field_offset("task_struct", f).unwrap()).collect();
        for (f, &o) in fields.iter().zip(&offsets) {
            assert!(o < size, "task_struct.{f} at {o} is outside the struct ({size} bytes)");
        }
        offsets.sort_unstable();
        offsets.dedup();
        assert_eq!(offsets.len(), fields.len(), "offsets are not distinct");

        assert_eq!(btf.field_size("task_struct", "pid").unwrap(), 4);
        assert_eq!(btf.field_size("task_struct", "comm").unwrap(), 16);
        assert_eq!(btf.field_size("task_struct", "real_parent").unwrap(), btf.ptr_size);
        assert_eq!(btf.field_size("task_struct", "start_time").unwrap(), 8);
        let comm = btf.field_offset("task_struct", "comm").unwrap();
        assert_eq!(btf.field_offset("task_struct", "comm.1").unwrap(), comm + 1);
        assert_eq!(btf.field_size("task_struct", "comm.1").unwrap(), 1);
    }

    #[test]
    fn kernel_nested_fields() {
        let Some(btf) = kernel() else { return };
        let start = btf.field_offset("mm_struct", "start_code").unwrap();
        let end = btf.field_offset("mm_struct", "end_code").unwrap();
        assert!(start < end, "start_code {start} >= end_code {end}");
        assert_eq!(btf.field_size("mm_struct", "start_code").unwrap(), 8);

        let uid = btf.field_offset("cred", "uid.val").unwrap();
        let euid = btf.field_offset("cred", "euid.val").unwrap();
        assert_eq!(uid, btf.field_offset("cred", "uid").unwrap());
        assert!(uid < euid);
        assert_eq!(btf.field_size("cred", "euid.val").unwrap(), 4);
        assert_eq!(btf.field_size("cred", "euid").unwrap(), 4);

        let live = btf.field_offset("signal_struct", "live.counter").unwrap();
        assert_eq!(live, btf.field_offset("signal_struct", "live").unwrap());
        assert_eq!(btf.field_size("signal_struct", "live.counter").unwrap(), 4);
    }

    #[test]
    fn kernel_functions_and_enums() {
        let Some(btf) = kernel() else { return };
        assert!(btf.has_func("do_exit"));
        assert_eq!(btf.func_param_index("do_exit", "code").unwrap(), 0);
        assert_eq!(btf.func_param_count("do_exit").unwrap(), 1);
        assert_eq!(btf.func_param_count("kernel_clone").unwrap(), 1);
        assert_eq!(btf.func_param_index("kernel_clone", "args").unwrap(), 0);

        assert!(btf.has_func("mprotect_fixup"), "mprotect_fixup is not traceable on this kernel");
        let newflags = btf.func_param_index("mprotect_fixup", "newflags").unwrap();
        let count = btf.func_param_count("mprotect_fixup").unwrap();
        // newflags has been the last parameter in every prototype since v2.6 (vma, pprev, start,
        // end, newflags), through the tlb (6.2) and vmi (6.5) additions.
        assert_eq!(newflags, count - 1);
        assert!(count >= 5);

        assert_eq!(btf.enum_value("pid_type", "PIDTYPE_PID").unwrap(), 0);
        assert_eq!(btf.enum_value("pid_type", "PIDTYPE_SID").unwrap(), 3);
    }

    #[test]
    fn kernel_errors() {
        let Some(btf) = kernel() else { return };
        let e = btf.field_offset("no_such_struct_ksense", "pid").unwrap_err();
        assert_eq!(e.kind(), BtfErrorKind::NotFound);
        assert_eq!(e.to_string(), "kernel BTF has no struct no_such_struct_ksense");
        assert!(!btf.has_struct("no_such_struct_ksense"));

        let e = btf.field_offset("cred", "euid.nope").unwrap_err();
        assert_eq!(e.kind(), BtfErrorKind::NotFound);
        assert!(e.to_string().starts_with("struct cred has no field euid.nope"), "{e}");
        let e = btf.field_size("task_struct", "no_such_field").unwrap_err();
        assert_eq!(e.to_string(), "struct task_struct has no field no_such_field");

        let e = btf.field_offset("task_struct", "real_parent.pid").unwrap_err();
        assert_eq!(e.kind(), BtfErrorKind::Unsupported);
        assert!(e.to_string().contains("pointer real_parent"), "{e}");

        let e = btf.func_param_index("no_such_func_ksense", "x").unwrap_err();
        assert_eq!(e.kind(), BtfErrorKind::NotFound);
        assert_eq!(e.to_string(), "kernel BTF has no function no_such_func_ksense");
        assert!(!btf.has_func("no_such_func_ksense"));
        assert!(btf.func_param_count("no_such_func_ksense").is_err());
        let e = btf.func_param_index("do_exit", "nope").unwrap_err();
        assert_eq!(e.to_string(), "kernel function do_exit has no parameter nope");

        let e = btf.enum_value("no_such_enum_ksense", "X").unwrap_err();
        assert_eq!(e.to_string(), "kernel BTF has no enum no_such_enum_ksense");
        let e = btf.enum_value("pid_type", "PIDTYPE_NOPE").unwrap_err();
        assert_eq!(e.to_string(), "enum pid_type has no enumerator PIDTYPE_NOPE");
    }

    // ---- synthetic BTF ----------------------------------------------------------------------

    /// Writes BTF by hand; each `add` returns the new type's id (ids are sequential from 1).
    struct Blob {
        types: Vec<u8>,
        strings: Vec<u8>,
        next_id: u32,
    }

    impl Blob {
        fn new() -> Blob {
            Blob { types: Vec::new(), strings: vec![0], next_id: 1 }
        }

        fn s(&mut self, name: &str) -> u32 {
            if name.is_empty() {
                return 0;
            }
            let off = self.strings.len() as u32;
            self.strings.extend_from_slice(name.as_bytes());
            self.strings.push(0);
            off
        }

        fn add(
            &mut self,
            name: &str,
            kind: u8,
            kind_flag: bool,
            vlen: usize,
            size_or_type: u32,
            extra: &[u32],
        ) -> u32 {
            let name_off = self.s(name);
            let info = (u32::from(kind_flag) << 31) | (u32::from(kind) << 24) | vlen as u32;
            for w in [name_off, info, size_or_type].iter().chain(extra) {
                self.types.extend_from_slice(&w.to_le_bytes());
            }
            self.next_id += 1;
            self.next_id - 1
        }

        fn int(&mut self, name: &str, size: u32, bits: u32, bit_offset: u32) -> u32 {
            self.add(name, KIND_INT, false, 0, size, &[(bit_offset << 16) | bits])
        }

        fn composite(
            &mut self,
            kind: u8,
            name: &str,
            size: u32,
            kind_flag: bool,
            members: &[(&str, u32, u32)],
        ) -> u32 {
            let mut extra = Vec::new();
            for &(n, t, off) in members {
                extra.extend([self.s(n), t, off]);
            }
            self.add(name, kind, kind_flag, members.len(), size, &extra)
        }

        fn func(&mut self, name: &str, ret: u32, params: &[(&str, u32)]) -> u32 {
            let mut extra = Vec::new();
            for &(n, t) in params {
                extra.extend([self.s(n), t]);
            }
            let proto = self.add("", KIND_FUNC_PROTO, false, params.len(), ret, &extra);
            self.add(name, KIND_FUNC, false, 1, proto, &[])
        }

        fn build(&self) -> Vec<u8> {
            let mut out = Vec::new();
            out.extend_from_slice(&BTF_MAGIC.to_le_bytes());
            out.extend([BTF_VERSION, 0]);
            let tl = self.types.len() as u32;
            for w in [HEADER_LEN as u32, 0, tl, tl, self.strings.len() as u32] {
                out.extend_from_slice(&w.to_le_bytes());
            }
            out.extend_from_slice(&self.types);
            out.extend_from_slice(&self.strings);
            out
        }
    }

    /// A blob using every kind, with the layouts the offset rules have to get right.
    fn sample() -> Vec<u8> {
        let mut b = Blob::new();
        let int = b.int("int", 4, 32, 0);
        let uchar = b.int("unsigned char", 1, 8, 0);
        b.int("long int", 8, 64, 0);
        b.add("outer", KIND_FWD, false, 0, 0, &[]); // forward declaration before the struct
        let pair = b.composite(KIND_STRUCT, "pair", 8, false, &[("x", int, 0), ("y", int, 32)]);
        let pair_t = b.add("pair_t", KIND_TYPEDEF, false, 0, pair, &[]);
        let c = b.add("", KIND_CONST, false, 0, pair_t, &[]);
        let v = b.add("", KIND_VOLATILE, false, 0, c, &[]);
        let r = b.add("", KIND_RESTRICT, false, 0, v, &[]);
        let tagged = b.add("user", KIND_TYPE_TAG, false, 0, r, &[]);
        let anon_s = b.composite(KIND_STRUCT, "", 8, false, &[("lo", int, 0), ("hi", int, 32)]);
        let anon_u = b.composite(KIND_UNION, "", 8, false, &[("whole", uchar, 0), ("", anon_s, 0)]);
        let name_arr = b.add("", KIND_ARRAY, false, 0, 0, &[uchar, int, 6]);
        let ptr = b.add("", KIND_PTR, false, 0, pair, &[]);
        let bf = |bits: u32, off: u32| (bits << 24) | off;
        let outer = b.composite(
            KIND_STRUCT,
            "outer",
            40,
            true,
            &[
                ("a", int, 0),
                ("", anon_u, 64),           // bytes 8..16
                ("flags", int, bf(3, 128)), // byte 16, 3 bits
                ("odd", int, bf(5, 131)),   // bit 131: not on a byte boundary
                ("byte", int, bf(8, 136)),  // byte 17, 8 bits
                ("p", tagged, 160),         // byte 20
                ("name", name_arr, 224),    // byte 28
                ("next", ptr, 256),         // byte 32
            ],
        );
        // Legacy (kind_flag = 0) bitfields: width and extra offset in the INT.
        let int4at2 = b.int("int", 4, 4, 2);
        let int16 = b.int("int", 4, 16, 0);
        b.composite(KIND_STRUCT, "legacy", 8, false, &[("nib", int4at2, 0), ("half", int16, 32)]);
        b.func("f", int, &[("a", int), ("b", ptr), ("", 0)]);
        b.func("g", 0, &[]);
        let (neg, one, big, huge) = (b.s("NEG"), b.s("ONE"), b.s("BIG"), b.s("HUGE"));
        b.add("e", KIND_ENUM, true, 2, 4, &[neg, (-1i32) as u32, one, 1]);
        b.add("u", KIND_ENUM, false, 1, 4, &[big, u32::MAX]);
        b.add("e64", KIND_ENUM64, false, 1, 8, &[huge, 1, 2]);
        b.add("outer_t", KIND_TYPEDEF, false, 0, outer, &[]);
        b.composite(KIND_STRUCT, "dup", 0, false, &[]);
        b.composite(KIND_UNION, "dup", 4, false, &[("z", int, 0)]);
        let dbl = b.add("double", KIND_FLOAT, false, 0, 8, &[]);
        b.add("tag", KIND_DECL_TAG, false, 0, outer, &[u32::MAX]);
        let var = b.add("v", KIND_VAR, false, 0, dbl, &[1]);
        b.add(".data", KIND_DATASEC, false, 1, 8, &[var, 0, 8]);
        let pair_fwd = b.add("pair", KIND_FWD, false, 0, 0, &[]);
        b.composite(KIND_STRUCT, "holder", 8, false, &[("fwd", pair_fwd, 0)]);
        b.composite(KIND_STRUCT, "last", 4, false, &[("z", int, 0)]);
        b.build()
    }

    #[test]
    fn synthetic_offsets() {
        let btf = Btf::parse(&sample()).unwrap();
        assert_eq!(btf.ptr_size, 8);
        assert!(btf.has_struct("outer") && btf.has_struct("outer_t") && btf.has_struct("last"));
        assert!(!btf.has_struct("pair_t_nope"));
        assert_eq!(struct_size(&btf, "outer"), 40, "the FWD must not shadow the struct");
        assert_eq!(btf.field_offset("outer", "a").unwrap(), 0);
        // Through the anonymous union, and the anonymous struct inside it.
        assert_eq!(btf.field_offset("outer", "whole").unwrap(), 8);
        assert_eq!(btf.field_offset("outer", "lo").unwrap(), 8);
        assert_eq!(btf.field_offset("outer", "hi").unwrap(), 12);
        assert_eq!(btf.field_size("outer", "hi").unwrap(), 4);
        // kind_flag bitfields.
        assert_eq!(btf.field_offset("outer", "flags").unwrap(), 16);
        assert_eq!(btf.field_size("outer", "flags").unwrap_err().kind(), BtfErrorKind::Unsupported);
        let e = btf.field_offset("outer", "odd").unwrap_err();
        assert_eq!(e.kind(), BtfErrorKind::Unsupported);
        assert!(e.to_string().contains("bit offset 131"), "{e}");
        assert_eq!(btf.field_offset("outer", "byte").unwrap(), 17);
        assert_eq!(btf.field_size("outer", "byte").unwrap(), 1);
        // Through type_tag, restrict, volatile, const and typedef.
        assert_eq!(btf.field_offset("outer", "p").unwrap(), 20);
        assert_eq!(btf.field_size("outer", "p").unwrap(), 8);
        assert_eq!(btf.field_offset("outer", "p.y").unwrap(), 24);
        assert_eq!(btf.field_size("outer", "p.y").unwrap(), 4);
        // Arrays and pointers.
        assert_eq!(btf.field_offset("outer", "name").unwrap(), 28);
        assert_eq!(btf.field_size("outer", "name").unwrap(), 6);
        assert_eq!(btf.field_offset("outer", "name.5").unwrap(), 33);
        assert_eq!(btf.field_offset("outer", "name.6").unwrap_err().kind(), BtfErrorKind::NotFound);
        assert_eq!(btf.field_size("outer", "next").unwrap(), 8);
        assert_eq!(btf.field_offset("outer", "next.x").unwrap_err().kind(), BtfErrorKind::Unsupported);
        // Typedef'd root, legacy bitfields, duplicate names, the last type (walk stayed aligned).
        assert_eq!(btf.field_offset("outer_t", "p.x").unwrap(), 20);
        let e = btf.field_offset("legacy", "nib").unwrap_err();
        assert!(e.to_string().contains("bit offset 2"), "{e}");
        assert_eq!(btf.field_offset("legacy", "half").unwrap(), 4);
        assert_eq!(btf.field_size("legacy", "half").unwrap(), 2);
        assert_eq!(btf.field_offset("dup", "z").unwrap(), 0);
        assert_eq!(btf.field_offset("last", "z").unwrap(), 0);
        // A member declared with a forward declaration uses the definition of that name.
        assert_eq!(btf.field_offset("holder", "fwd.y").unwrap(), 4);
        assert_eq!(btf.field_size("holder", "fwd").unwrap(), 8);
        // Missing pieces.
        let e = btf.field_offset("outer", "p.nope").unwrap_err();
        assert!(e.to_string().starts_with("struct outer has no field p.nope"), "{e}");
        let e = btf.field_offset("outer", "a.b").unwrap_err();
        assert_eq!(e.to_string(), "struct outer has no field a.b (a is not a struct or union)");
        assert_eq!(btf.field_offset("dup", "z.").unwrap_err().kind(), BtfErrorKind::NotFound);
        assert_eq!(btf.field_offset("outer", "").unwrap_err().kind(), BtfErrorKind::NotFound);
        assert_eq!(btf.field_offset("dup", "x").unwrap_err().to_string(), "union dup has no field x");
    }

    #[test]
    fn synthetic_funcs_and_enums() {
        let btf = Btf::parse(&sample()).unwrap();
        assert!(btf.has_func("f") && btf.has_func("g") && !btf.has_func("h"));
        assert_eq!(btf.func_param_count("f").unwrap(), 2, "the ... marker is not a parameter");
        assert_eq!(btf.func_param_index("f", "b").unwrap(), 1);
        assert_eq!(btf.func_param_count("g").unwrap(), 0);
        assert_eq!(btf.func_param_index("g", "a").unwrap_err().kind(), BtfErrorKind::NotFound);
        assert_eq!(btf.enum_value("e", "NEG").unwrap(), -1);
        assert_eq!(btf.enum_value("e", "ONE").unwrap(), 1);
        assert_eq!(btf.enum_value("u", "BIG").unwrap(), i64::from(u32::MAX));
        assert_eq!(btf.enum_value("e64", "HUGE").unwrap(), 0x2_0000_0001);
    }

    /// Runs every kind of lookup; used on damaged blobs, where only "no panic" matters.
    fn poke(btf: &Btf) {
        for (s, p) in [
            ("outer", "a"),
            ("outer", "lo"),
            ("outer", "hi"),
            ("outer", "p.y"),
            ("outer", "name.3"),
            ("outer", "next.x"),
            ("outer", "odd"),
            ("outer_t", "byte"),
            ("legacy", "nib"),
            ("legacy", "half"),
            ("dup", "z"),
            ("last", "z"),
            ("pair", "x"),
            ("holder", "fwd.y"),
        ] {
            let _ = btf.field_offset(s, p);
            let _ = btf.field_size(s, p);
            let _ = btf.has_struct(s);
        }
        for (f, p) in [("f", "a"), ("f", "b"), ("g", "a")] {
            let _ = btf.func_param_index(f, p);
            let _ = btf.func_param_count(f);
            let _ = btf.has_func(f);
        }
        for (e, v) in [("e", "NEG"), ("u", "BIG"), ("e64", "HUGE")] {
            let _ = btf.enum_value(e, v);
        }
    }

    #[test]
    fn truncated_input_is_an_error() {
        let blob = sample();
        for len in 0..blob.len() {
            match Btf::parse(&blob[..len]) {
                Ok(btf) => panic!("{len}-byte prefix parsed: {btf:?}"),
                Err(e) => assert_ne!(e.kind(), BtfErrorKind::NotFound),
            }
        }
    }

    #[test]
    fn damaged_input_never_panics() {
        let blob = sample();
        for i in 0..blob.len() {
            for v in [0x00, 0xff, 0x7f, 0x80, blob[i] ^ 0x01, blob[i] ^ 0x10, blob[i].wrapping_add(12)] {
                let mut bad = blob.clone();
                bad[i] = v;
                if let Ok(btf) = Btf::parse(&bad) {
                    poke(&btf);
                }
            }
        }
        // Random garbage after a valid header, and random garbage overall (xorshift, fixed seed).
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        for round in 0..2000 {
            let mut bad = if round % 2 == 0 { blob.clone() } else { vec![0; blob.len()] };
            let start = if round % 2 == 0 { HEADER_LEN } else { 0 };
            for byte in &mut bad[start..] {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                if round % 2 == 1 || x.is_multiple_of(16) {
                    *byte = x as u8;
                }
            }
            if let Ok(btf) = Btf::parse(&bad) {
                poke(&btf);
            }
        }
    }

    #[test]
    fn unreadable_file() {
        use std::error::Error as _;
        let e = Btf::from_file("/nonexistent/ksense/vmlinux").unwrap_err();
        assert_eq!(e.kind(), BtfErrorKind::Io);
        let msg = e.to_string();
        assert!(msg.starts_with("cannot read /nonexistent/ksense/vmlinux: "), "{msg}");
        assert!(msg.ends_with(" (is CONFIG_DEBUG_INFO_BTF enabled?)"), "{msg}");
        let source = e.source().expect("I/O errors keep their source");
        assert_eq!(source.downcast_ref::<io::Error>().unwrap().kind(), io::ErrorKind::NotFound);
        // A file that is not BTF: the message names it.
        let e = Btf::from_file("/proc/self/cmdline").unwrap_err();
        assert!(e.to_string().starts_with("/proc/self/cmdline: "), "{e}");
        assert!(e.source().is_none());
    }

    #[test]
    fn bad_headers_and_cycles() {
        let blob = sample();
        let mut be = blob.clone();
        be.swap(0, 1);
        let e = Btf::parse(&be).unwrap_err();
        assert_eq!(e.kind(), BtfErrorKind::Unsupported);
        assert!(e.to_string().contains("big-endian"), "{e}");
        let mut v2 = blob.clone();
        v2[2] = 2;
        assert_eq!(Btf::parse(&v2).unwrap_err().kind(), BtfErrorKind::Unsupported);
        assert_eq!(Btf::parse(b"hello, world, not btf!!!").unwrap_err().kind(), BtfErrorKind::Malformed);

        // typedef A -> B -> A, struct s { A m; }, struct t { <anonymous t> }, unknown kind 31.
        let mut b = Blob::new();
        let a = b.add("A", KIND_TYPEDEF, false, 0, 2, &[]);
        b.add("B", KIND_TYPEDEF, false, 0, a, &[]);
        b.composite(KIND_STRUCT, "s", 4, false, &[("m", a, 0)]);
        b.composite(KIND_STRUCT, "t", 4, false, &[("", 4, 0)]);
        let arr = b.add("", KIND_ARRAY, false, 0, 5, &[5, 5, 2]); // array of itself
        b.composite(KIND_STRUCT, "w", 4, false, &[("arr", arr, 0), ("bad", 999, 32)]);
        b.composite(KIND_STRUCT, "s2", 4, true, &[("m", a, 0)]);
        let btf = Btf::parse(&b.build()).unwrap();
        // Legacy encoding must resolve the member type to check for a bitfield; kind_flag need not.
        assert_eq!(btf.field_offset("s", "m").unwrap_err().kind(), BtfErrorKind::Malformed);
        assert_eq!(btf.field_offset("s2", "m").unwrap(), 0);
        assert_eq!(btf.field_size("s2", "m").unwrap_err().kind(), BtfErrorKind::Malformed);
        assert_eq!(btf.field_offset("s", "m.x").unwrap_err().kind(), BtfErrorKind::Malformed);
        assert_eq!(btf.field_offset("t", "x").unwrap_err().kind(), BtfErrorKind::Malformed);
        assert_eq!(btf.field_size("w", "arr").unwrap_err().kind(), BtfErrorKind::Malformed);
        assert_eq!(btf.field_size("w", "bad").unwrap_err().kind(), BtfErrorKind::Malformed);
        assert!(!btf.has_struct("A"));
        b.add("future", 31, false, 0, 0, &[]);
        let e = Btf::parse(&b.build()).unwrap_err();
        assert_eq!(e.kind(), BtfErrorKind::Unsupported);
        assert!(e.to_string().contains("kind 31"), "{e}");
    }
}
