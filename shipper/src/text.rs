//! Rendering untrusted bytes from monitored processes (argv, comm, paths) as text.
//!
//! Valid UTF-8 passes through unchanged, so argv with spaces, quotes or newlines is kept exactly.
//! Each byte that is not part of valid UTF-8 becomes the four characters `\xNN` (lower-case hex),
//! like Python's `backslashreplace`. Sinks escape what their format needs (JSON escapes control
//! characters; journald takes values binary-safe); the pretty terminal output additionally
//! escapes control characters so a crafted argv cannot move the cursor or fake a line.
use std::fmt::Write as _;

/// `bytes` as a `String`, invalid UTF-8 bytes written as `\xNN`.
pub fn lossless(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len());
    for chunk in bytes.utf8_chunks() {
        out.push_str(chunk.valid());
        for b in chunk.invalid() {
            let _ = write!(out, "\\x{b:02x}");
        }
    }
    out
}

/// `bytes` up to the first NUL (a C string in a fixed buffer), via [`lossless`].
pub fn c_string(bytes: &[u8]) -> String {
    let end = bytes.iter().position(|&b| b == 0).unwrap_or(bytes.len());
    lossless(&bytes[..end])
}

/// `s` with control characters (and the backslash, so the escape is unambiguous) escaped the way
/// Rust's `escape_debug` does: safe to print on a terminal as one line.
pub fn one_line(s: &str) -> String {
    if !s.chars().any(|c| c.is_control() || c == '\\') {
        return s.to_owned();
    }
    let mut out = String::with_capacity(s.len() + 8);
    for c in s.chars() {
        if c.is_control() || c == '\\' {
            out.extend(c.escape_debug());
        } else {
            out.push(c);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn utf8_passes_through() {
        assert_eq!(lossless("a b\"c'\nd é".as_bytes()), "a b\"c'\nd é");
    }

    #[test]
    fn invalid_bytes_become_hex_escapes() {
        assert_eq!(lossless(b"ab\xffc\xc3"), "ab\\xffc\\xc3");
    }

    #[test]
    fn c_string_stops_at_nul() {
        assert_eq!(c_string(b"bash\0\0\0garbage"), "bash");
        assert_eq!(c_string(b"sixteen-bytes-xx"), "sixteen-bytes-xx");
    }

    #[test]
    fn one_line_escapes_controls() {
        assert_eq!(one_line("a\nb\x1b[31m\\"), "a\\nb\\u{1b}[31m\\\\");
    }

    proptest! {
        #[test]
        fn lossless_keeps_every_valid_byte_and_marks_the_rest(bytes in proptest::collection::vec(any::<u8>(), 0..64)) {
            let s = lossless(&bytes);
            if let Ok(valid) = std::str::from_utf8(&bytes) {
                prop_assert_eq!(s.as_str(), valid);
            }
            prop_assert!(one_line(&s).chars().all(|c| !c.is_control()));
        }
    }
}
