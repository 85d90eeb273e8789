//! Rendering untrusted bytes from monitored processes (argv, comm, paths) as text.
//!
//! The rule ([`lossless`]), one rendering per byte string and back ([`lossless_bytes`]):
//! - valid UTF-8 passes through unchanged (spaces, quotes, newlines, control characters), except
//!   the backslash, which is doubled: `\` becomes `\\`;
//! - each byte that is not part of valid UTF-8 becomes the four characters `\xNN` (lower-case hex),
//!   like Python's `backslashreplace`.
//!
//! Doubling the backslash is what makes the rendering unambiguous: a user who types the four
//! characters `\xff` gets `\\xff`, the invalid byte 0xff gets `\xff`, and a backslash in the
//! rendering is always followed by `\` or `x`. Sinks escape what their format needs (JSON escapes
//! control characters; journald takes values binary-safe); the pretty terminal output additionally
//! escapes control characters so a crafted argv cannot move the cursor or fake a line.
use std::fmt::Write as _;

/// `bytes` as a `String`: a backslash doubled, invalid UTF-8 bytes written as `\xNN`.
pub fn lossless(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len());
    for chunk in bytes.utf8_chunks() {
        for (i, part) in chunk.valid().split('\\').enumerate() {
            if i > 0 {
                out.push_str("\\\\");
            }
            out.push_str(part);
        }
        for b in chunk.invalid() {
            let _ = write!(out, "\\x{b:02x}");
        }
    }
    out
}

/// The bytes a [`lossless`] rendering stands for; `None` when `text` is not one (a lone
/// backslash, `\x` without two lower-case hex digits, or `\xNN` for a byte that is valid there).
pub fn lossless_bytes(text: &str) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(text.len());
    let mut rest = text.as_bytes();
    while let Some(at) = rest.iter().position(|&b| b == b'\\') {
        out.extend_from_slice(&rest[..at]);
        match &rest[at + 1..] {
            [b'\\', tail @ ..] => {
                out.push(b'\\');
                rest = tail;
            }
            [b'x', hi, lo, tail @ ..] => {
                out.push(hex_digit(*hi)? << 4 | hex_digit(*lo)?);
                rest = tail;
            }
            _ => return None,
        }
    }
    out.extend_from_slice(rest);
    // `\x41` decodes, but `A` renders as itself: only the one rendering of `out` is accepted.
    (lossless(&out) == text).then_some(out)
}

/// The value of a lower-case hex digit, as [`lossless`] writes them.
fn hex_digit(digit: u8) -> Option<u8> {
    match digit {
        b'0'..=b'9' => Some(digit - b'0'),
        b'a'..=b'f' => Some(digit - b'a' + 10),
        _ => None,
    }
}

/// `bytes` up to the first NUL (a C string in a fixed buffer, such as `task->comm`).
pub fn until_nul(bytes: &[u8]) -> &[u8] {
    let end = bytes.iter().position(|&b| b == 0).unwrap_or(bytes.len());
    &bytes[..end]
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
        assert_eq!(lossless("a b\"c'\nd é\x1b".as_bytes()), "a b\"c'\nd é\x1b");
    }

    #[test]
    fn invalid_bytes_become_hex_escapes() {
        assert_eq!(lossless(b"ab\xffc\xc3"), "ab\\xffc\\xc3");
    }

    #[test]
    fn a_typed_escape_differs_from_the_byte() {
        assert_eq!(lossless(b"\\xff"), "\\\\xff");
        assert_eq!(lossless(b"\xff"), "\\xff");
        assert_eq!(lossless(b"C:\\dir\\"), "C:\\\\dir\\\\");
        assert_eq!(lossless_bytes("\\\\xff").as_deref(), Some(&b"\\xff"[..]));
        assert_eq!(lossless_bytes("\\xff").as_deref(), Some(&b"\xff"[..]));
    }

    #[test]
    fn what_lossless_never_writes_is_refused() {
        for text in ["\\", "a\\b", "\\x41", "\\x", "\\xf", "\\xFF", "\\xg0"] {
            assert_eq!(lossless_bytes(text), None, "{text:?}");
        }
    }

    #[test]
    fn until_nul_stops_at_nul() {
        assert_eq!(until_nul(b"bash\0\0\0garbage"), b"bash");
        assert_eq!(until_nul(b"sixteen-bytes-xx"), b"sixteen-bytes-xx");
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
                prop_assert_eq!(s.as_str(), valid.replace('\\', "\\\\"));
            }
            prop_assert_eq!(lossless_bytes(&s), Some(bytes));
            prop_assert!(one_line(&s).chars().all(|c| !c.is_control()));
        }

        /// Escape-like input (backslashes, `x`, hex digits, invalid bytes) is where an ambiguous
        /// rule would show: two different byte strings never render the same.
        #[test]
        fn different_bytes_render_differently(
            a in proptest::collection::vec(proptest::sample::select(&b"\\xf0\xff\xc3"[..]), 0..12),
            b in proptest::collection::vec(proptest::sample::select(&b"\\xf0\xff\xc3"[..]), 0..12),
        ) {
            prop_assert_eq!(lossless(&a) == lossless(&b), a == b);
        }
    }
}
