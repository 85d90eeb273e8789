//! Rendering untrusted bytes from monitored processes (argv, comm, paths) as text.
//!
//! The rule ([`rendered`]): a value that is valid UTF-8 is its text, exactly as the kernel saw it
//! (backslashes, spaces, quotes, newlines, control characters included). Only a value holding
//! bytes that are not valid UTF-8 is written in the escaped form ([`escaped`]), and the record
//! names it in `ksense.escaped` ([`crate::record::push_text`]), so a consumer knows which values
//! to decode ([`lossless_bytes`]) and no value is ambiguous. The escaped form, like Python's
//! `backslashreplace` with the backslash doubled:
//! - each byte that is not part of valid UTF-8 becomes the four characters `\xNN` (lower-case hex);
//! - each backslash becomes `\\`; everything else is as it is.
//!
//! Doubling the backslash is what makes the escaped form unambiguous: a typed `\xff` is written
//! `\\xff`, the invalid byte 0xff `\xff`, and a backslash in it is always followed by `\` or `x`.
//! Sinks escape what their format needs (JSON escapes control characters; journald takes values
//! binary-safe); the pretty terminal output additionally escapes control characters so a crafted
//! argv cannot move the cursor or fake a line.
use std::fmt::Write as _;

/// `bytes` as text, and whether that text is the escaped form: a valid UTF-8 value as it is
/// (`false`), any other in [`escaped`] form (`true`).
pub fn rendered(bytes: &[u8]) -> (String, bool) {
    match std::str::from_utf8(bytes) {
        Ok(valid) => (valid.to_owned(), false),
        Err(_) => (escaped(bytes), true),
    }
}

/// A list of values (argv) as texts, and whether they are escaped: all as they are when every
/// one is valid UTF-8, else all in [`escaped`] form (one flag for the list says how to read
/// every element, so no element is ambiguous).
pub fn rendered_all(items: &[Vec<u8>]) -> (Vec<String>, bool) {
    match items.iter().map(|item| std::str::from_utf8(item)).collect::<Result<Vec<_>, _>>() {
        Ok(valid) => (valid.into_iter().map(str::to_owned).collect(), false),
        Err(_) => (items.iter().map(|item| escaped(item)).collect(), true),
    }
}

/// [`rendered`]'s text alone, for a message (the body), where no consumer decodes it.
pub fn lossless(bytes: &[u8]) -> String {
    rendered(bytes).0
}

/// `bytes` in the escaped form: a backslash doubled, invalid UTF-8 bytes written as `\xNN`.
pub fn escaped(bytes: &[u8]) -> String {
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

/// The bytes an [`escaped`] text stands for; `None` when `text` is not one (a lone
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
    // `\x41` decodes, but `A` is written as itself: only the one escaped form of `out` is accepted.
    (escaped(&out) == text).then_some(out)
}

/// The value of a lower-case hex digit, as [`escaped`] writes them.
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
    fn utf8_passes_through_exactly() {
        assert_eq!(rendered("a b\"c'\nd é\x1b".as_bytes()), ("a b\"c'\nd é\x1b".to_owned(), false));
        assert_eq!(rendered(b"C:\\Windows\\path"), ("C:\\Windows\\path".to_owned(), false));
        assert_eq!(rendered(b"\\d+"), ("\\d+".to_owned(), false));
        assert_eq!(rendered(b"\\xff"), ("\\xff".to_owned(), false));
    }

    #[test]
    fn invalid_bytes_make_the_value_escaped() {
        assert_eq!(rendered(b"ab\xffc\xc3"), ("ab\\xffc\\xc3".to_owned(), true));
        assert_eq!(rendered(b"C:\\dir\\\xff"), ("C:\\\\dir\\\\\\xff".to_owned(), true));
        assert_eq!(lossless(b"\\d\xff"), "\\\\d\\xff");
    }

    #[test]
    fn one_invalid_element_escapes_the_whole_list() {
        let valid = [b"C:\\Windows\\path".to_vec(), b"\\d+".to_vec()];
        assert_eq!(rendered_all(&valid), (vec!["C:\\Windows\\path".to_owned(), "\\d+".to_owned()], false));
        let mixed = [b"C:\\Windows\\path".to_vec(), b"\\d+".to_vec(), b"\xff".to_vec()];
        let (texts, escaped) = rendered_all(&mixed);
        assert!(escaped);
        assert_eq!(texts, ["C:\\\\Windows\\\\path", "\\\\d+", "\\xff"]);
        let back: Vec<Vec<u8>> = texts.iter().map(|t| lossless_bytes(t).unwrap()).collect();
        assert_eq!(back, mixed);
    }

    #[test]
    fn a_typed_escape_differs_from_the_byte() {
        assert_eq!(escaped(b"\\xff"), "\\\\xff");
        assert_eq!(escaped(b"\xff"), "\\xff");
        assert_eq!(escaped(b"C:\\dir\\"), "C:\\\\dir\\\\");
        assert_eq!(lossless_bytes("\\\\xff").as_deref(), Some(&b"\\xff"[..]));
        assert_eq!(lossless_bytes("\\xff").as_deref(), Some(&b"\xff"[..]));
    }

    #[test]
    fn what_escaped_never_writes_is_refused() {
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
        /// Valid UTF-8 comes out as it is; anything else comes out escaped, and the escaped text
        /// gives back the very bytes.
        #[test]
        fn rendered_is_exact_or_escaped_and_reversible(bytes in proptest::collection::vec(any::<u8>(), 0..64)) {
            let (s, was_escaped) = rendered(&bytes);
            match std::str::from_utf8(&bytes) {
                Ok(valid) => prop_assert_eq!((s.as_str(), was_escaped), (valid, false)),
                Err(_) => {
                    prop_assert!(was_escaped);
                    prop_assert_eq!(lossless_bytes(&s), Some(bytes.clone()));
                }
            }
            prop_assert_eq!(lossless_bytes(&escaped(&bytes)), Some(bytes));
            prop_assert!(one_line(&s).chars().all(|c| !c.is_control()));
        }

        /// Escape-like input (backslashes, `x`, hex digits, invalid bytes) is where an ambiguous
        /// rule would show: two different byte strings never have the same escaped form.
        #[test]
        fn different_bytes_escape_differently(
            a in proptest::collection::vec(proptest::sample::select(&b"\\xf0\xff\xc3"[..]), 0..12),
            b in proptest::collection::vec(proptest::sample::select(&b"\\xf0\xff\xc3"[..]), 0..12),
        ) {
            prop_assert_eq!(escaped(&a) == escaped(&b), a == b);
        }
    }
}
