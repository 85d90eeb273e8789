//! Reading the probes' records: bounds-checked reads of the ABI's plain-old-data types, and
//! why a record is rejected. Records are untrusted input here: a short, oversized or unknown
//! record is an error (counted by the caller and skipped), never a panic.
use ksense_abi::ABI_VERSION;

/// Why a record was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// Shorter than the header or than its kind's fixed part.
    #[error("record of {len} bytes is shorter than the {need} its kind needs")]
    Short {
        /// Bytes received.
        len: usize,
        /// Bytes needed.
        need: usize,
    },
    /// The header's size disagrees with the record's length.
    #[error("record header says {header} bytes but {actual} arrived")]
    SizeMismatch {
        /// Size in the header.
        header: usize,
        /// Bytes received.
        actual: usize,
    },
    /// Written by probes of another ABI version.
    #[error("record has ABI version {0}, this ksense reads version {ABI_VERSION}")]
    Version(u16),
    /// Unknown event kind.
    #[error("record has unknown event kind {0}")]
    UnknownKind(u16),
    /// Unknown hook, or a hook that does not report this kind.
    #[error("record has hook {hook} which does not produce event kind {kind}")]
    BadHook {
        /// Hook value.
        hook: u16,
        /// Kind value.
        kind: u16,
    },
    /// A length field inside the payload is out of range.
    #[error("record field {0} is out of range")]
    Field(&'static str),
}

/// Reads a `T` at `offset`, or [`DecodeError::Short`].
pub(crate) fn read<T: aya::Pod>(bytes: &[u8], offset: usize) -> Result<T, DecodeError> {
    let need = offset + size_of::<T>();
    if bytes.len() < need {
        return Err(DecodeError::Short { len: bytes.len(), need });
    }
    // SAFETY: in bounds (checked above); T is Pod, so any bytes are a valid T.
    Ok(unsafe { std::ptr::read_unaligned(bytes.as_ptr().add(offset).cast::<T>()) })
}

/// Reads a fixed-size record: exactly `size_of::<T>()` bytes.
pub(crate) fn read_whole<T: aya::Pod>(bytes: &[u8]) -> Result<T, DecodeError> {
    if bytes.len() != size_of::<T>() {
        return Err(DecodeError::SizeMismatch { header: size_of::<T>(), actual: bytes.len() });
    }
    read(bytes, 0)
}

/// The bytes of a plain value: what the probes write for it.
pub(crate) fn as_bytes<T: aya::Pod>(value: &T) -> &[u8] {
    // SAFETY: Pod types are plain integers and arrays of them; reading them as bytes is fine.
    unsafe { std::slice::from_raw_parts((value as *const T).cast::<u8>(), size_of::<T>()) }
}
