//! The GNU build-id of an ELF file: the descriptor of its `NT_GNU_BUILD_ID` note (type 3, name
//! `GNU`), found in its `PT_NOTE` segments. 32- and 64-bit files of either byte order; every read
//! bounded, every length checked, so a malformed or hostile file gives `None`, never a panic or
//! a large allocation.
use std::{fs::File, os::unix::fs::FileExt};

/// Program headers looked at, at most (real executables have about a dozen).
const MAX_PROGRAM_HEADERS: usize = 256;
/// Bytes of one `PT_NOTE` segment read, at most (build-id notes are 36 bytes).
const MAX_NOTE_SEGMENT: usize = 64 << 10;
/// Longest build-id accepted (GNU ld writes 20 bytes of SHA-1, or 16 of MD5 or a UUID).
const MAX_BUILD_ID: usize = 64;
const PT_NOTE: u32 = 4;
const NT_GNU_BUILD_ID: u32 = 3;

/// Where [`build_id`] reads: a file, or bytes (tests).
pub trait ReadAt {
    /// Fills `buf` from `offset`; the bytes read (fewer at the end).
    fn read_at(&self, buf: &mut [u8], offset: u64) -> std::io::Result<usize>;
}

impl ReadAt for File {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> std::io::Result<usize> {
        FileExt::read_at(self, buf, offset)
    }
}

impl ReadAt for [u8] {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> std::io::Result<usize> {
        let rest = usize::try_from(offset).ok().and_then(|at| self.get(at..)).unwrap_or_default();
        let n = rest.len().min(buf.len());
        buf[..n].copy_from_slice(&rest[..n]);
        Ok(n)
    }
}

/// Exactly `len` bytes at `offset`, or `None`.
fn read_exact(file: &(impl ReadAt + ?Sized), offset: u64, len: usize) -> Option<Vec<u8>> {
    let mut buf = vec![0; len];
    let mut done = 0;
    while done < len {
        match file.read_at(&mut buf[done..], offset.checked_add(done as u64)?) {
            Ok(0) | Err(_) => return None,
            Ok(n) => done += n,
        }
    }
    Some(buf)
}

/// The header fields the note search needs, in the file's word size and byte order.
struct Layout {
    is64: bool,
    little: bool,
}

impl Layout {
    fn u16(&self, b: &[u8], at: usize) -> Option<u16> {
        let b: [u8; 2] = b.get(at..at + 2)?.try_into().ok()?;
        Some(if self.little { u16::from_le_bytes(b) } else { u16::from_be_bytes(b) })
    }
    fn u32(&self, b: &[u8], at: usize) -> Option<u32> {
        let b: [u8; 4] = b.get(at..at + 4)?.try_into().ok()?;
        Some(if self.little { u32::from_le_bytes(b) } else { u32::from_be_bytes(b) })
    }
    fn u64(&self, b: &[u8], at: usize) -> Option<u64> {
        let b: [u8; 8] = b.get(at..at + 8)?.try_into().ok()?;
        Some(if self.little { u64::from_le_bytes(b) } else { u64::from_be_bytes(b) })
    }
    /// A word: 8 bytes in a 64-bit file, 4 in a 32-bit one.
    fn word(&self, b: &[u8], at: usize) -> Option<u64> {
        if self.is64 { self.u64(b, at) } else { self.u32(b, at).map(u64::from) }
    }
}

/// The build-id of the ELF file `file`, as lowercase hex; `None` when it is not ELF, has no
/// such note, or is malformed.
pub fn build_id(file: &(impl ReadAt + ?Sized)) -> Option<String> {
    let ident = read_exact(file, 0, 16)?;
    if ident[..4] != *b"\x7fELF" {
        return None;
    }
    let layout = Layout {
        is64: match ident[4] {
            1 => false,
            2 => true,
            _ => return None,
        },
        little: match ident[5] {
            1 => true,
            2 => false,
            _ => return None,
        },
    };
    let header = read_exact(file, 0, if layout.is64 { 64 } else { 52 })?;
    let (phoff, phentsize, phnum) = if layout.is64 {
        (layout.u64(&header, 32)?, layout.u16(&header, 54)?, layout.u16(&header, 56)?)
    } else {
        (u64::from(layout.u32(&header, 28)?), layout.u16(&header, 42)?, layout.u16(&header, 44)?)
    };
    let (phentsize, phnum) = (usize::from(phentsize), usize::from(phnum).min(MAX_PROGRAM_HEADERS));
    // Offsets of p_offset and p_filesz (p_align) within a program header.
    let (need, offset_at, filesz_at, align_at) = if layout.is64 { (56, 8, 32, 48) } else { (32, 4, 16, 28) };
    // A header larger than any ELF version defines would only make the table read large.
    if !(need..=256).contains(&phentsize) || phnum == 0 {
        return None;
    }
    let table = read_exact(file, phoff, phentsize.checked_mul(phnum)?)?;
    table.chunks_exact(phentsize).find_map(|ph| {
        if layout.u32(ph, 0)? != PT_NOTE {
            return None;
        }
        let (offset, size, align) = (layout.word(ph, offset_at)?, layout.word(ph, filesz_at)?, layout.word(ph, align_at)?);
        let notes = read_exact(file, offset, usize::try_from(size).ok()?.min(MAX_NOTE_SEGMENT))?;
        gnu_build_id(&layout, &notes, if align == 8 { 8 } else { 4 })
    })
}

/// The `NT_GNU_BUILD_ID` descriptor among `notes` (name and descriptor each padded to `align`).
fn gnu_build_id(layout: &Layout, notes: &[u8], align: usize) -> Option<String> {
    let pad = |n: usize| n.checked_add(align - 1).map(|n| n & !(align - 1));
    let mut at = 0;
    while at + 12 <= notes.len() {
        let namesz = layout.u32(notes, at)? as usize;
        let descsz = layout.u32(notes, at + 4)? as usize;
        let kind = layout.u32(notes, at + 8)?;
        let name_at = at + 12;
        let desc_at = name_at.checked_add(pad(namesz)?)?;
        let end = desc_at.checked_add(pad(descsz)?)?;
        let name = notes.get(name_at..name_at.checked_add(namesz)?)?;
        let desc = notes.get(desc_at..desc_at.checked_add(descsz)?)?;
        if kind == NT_GNU_BUILD_ID && name == b"GNU\0" && (1..=MAX_BUILD_ID).contains(&descsz) {
            return Some(super::hex(desc));
        }
        at = end;
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An ELF file with one `PT_NOTE` segment holding `notes`, in the given class and byte
    /// order.
    fn elf(is64: bool, little: bool, notes: &[u8]) -> Vec<u8> {
        let (ehsize, phentsize) = if is64 { (64, 56) } else { (52, 32) };
        let mut f = vec![0u8; ehsize + phentsize];
        f[..4].copy_from_slice(b"\x7fELF");
        f[4] = if is64 { 2 } else { 1 };
        f[5] = if little { 1 } else { 2 };
        let put16 = |f: &mut Vec<u8>, at: usize, v: u16| f[at..at + 2].copy_from_slice(&if little { v.to_le_bytes() } else { v.to_be_bytes() });
        let put32 = |f: &mut Vec<u8>, at: usize, v: u32| f[at..at + 4].copy_from_slice(&if little { v.to_le_bytes() } else { v.to_be_bytes() });
        let put64 = |f: &mut Vec<u8>, at: usize, v: u64| f[at..at + 8].copy_from_slice(&if little { v.to_le_bytes() } else { v.to_be_bytes() });
        let notes_at = (ehsize + phentsize) as u64;
        if is64 {
            put64(&mut f, 32, ehsize as u64);
            put16(&mut f, 54, phentsize as u16);
            put16(&mut f, 56, 1);
            let ph = ehsize;
            put32(&mut f, ph, PT_NOTE);
            put64(&mut f, ph + 8, notes_at);
            put64(&mut f, ph + 32, notes.len() as u64);
            put64(&mut f, ph + 48, 4);
        } else {
            put32(&mut f, 28, ehsize as u32);
            put16(&mut f, 42, phentsize as u16);
            put16(&mut f, 44, 1);
            let ph = ehsize;
            put32(&mut f, ph, PT_NOTE);
            put32(&mut f, ph + 4, notes_at as u32);
            put32(&mut f, ph + 16, notes.len() as u32);
            put32(&mut f, ph + 28, 4);
        }
        f.extend_from_slice(notes);
        f
    }

    fn note(little: bool, kind: u32, name: &[u8], desc: &[u8]) -> Vec<u8> {
        let word = |v: u32| if little { v.to_le_bytes() } else { v.to_be_bytes() };
        let mut n = [word(name.len() as u32), word(desc.len() as u32), word(kind)].concat();
        let padded = |b: &[u8]| [b, &vec![0; (4 - b.len() % 4) % 4]].concat();
        n.extend(padded(name));
        n.extend(padded(desc));
        n
    }

    #[test]
    fn finds_the_gnu_build_id_in_every_class_and_byte_order() {
        let id: Vec<u8> = (1..=20).collect();
        for (is64, little) in [(true, true), (true, false), (false, true), (false, false)] {
            // Another note first (an ABI tag), then the build-id.
            let notes = [note(little, 1, b"GNU\0", &[0; 16]), note(little, NT_GNU_BUILD_ID, b"GNU\0", &id)].concat();
            let file = elf(is64, little, &notes);
            assert_eq!(build_id(file.as_slice()).as_deref(), Some("0102030405060708090a0b0c0d0e0f1011121314"), "64-bit {is64}, little-endian {little}");
            // The same note type under another name is not a build-id.
            let file = elf(is64, little, &note(little, NT_GNU_BUILD_ID, b"Go\0\0", &id));
            assert_eq!(build_id(file.as_slice()), None);
        }
    }

    /// Cut, garbage and hostile lengths give `None`, never a panic.
    #[test]
    fn malformed_files_give_none() {
        let good = elf(true, true, &note(true, NT_GNU_BUILD_ID, b"GNU\0", &[7; 20]));
        assert!(build_id(good.as_slice()).is_some());
        for len in 0..good.len() {
            assert_eq!(build_id(&good[..len]), None, "cut at {len}");
        }
        assert_eq!(build_id(b"#!/bin/sh\n".as_slice()), None);
        let mut state = 0x1234_5678_9abc_def0u64;
        for _ in 0..2000 {
            let mut f = good.clone();
            for _ in 0..4 {
                state = state.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                let at = (state >> 33) as usize % f.len();
                f[at] = (state >> 13) as u8;
            }
            let _ = build_id(f.as_slice());
        }
        // Sizes near the limits of their types.
        let mut huge = good.clone();
        huge[64 + 32..64 + 40].copy_from_slice(&u64::MAX.to_le_bytes());
        assert_eq!(build_id(huge.as_slice()), None);
        let notes = [u32::MAX.to_le_bytes(), u32::MAX.to_le_bytes(), 3u32.to_le_bytes()].concat();
        assert_eq!(build_id(elf(true, true, &notes).as_slice()), None);
    }

    /// The test binary itself: what `readelf -n` shows (when it has a build-id).
    #[test]
    fn reads_a_real_executable() {
        let exe = std::env::current_exe().unwrap();
        let Ok(out) = std::process::Command::new("readelf").arg("-n").arg(&exe).output() else {
            eprintln!("skipped: readelf is not installed");
            return;
        };
        let text = String::from_utf8_lossy(&out.stdout);
        let expected = text.lines().find_map(|l| l.trim().strip_prefix("Build ID: ")).map(str::to_owned);
        assert_eq!(build_id(&File::open(exe).unwrap()), expected);
    }
}
