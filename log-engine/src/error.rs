//! The crate's one error type. `Corruption` (bad bytes found on disk) is kept apart from
//! `Io` (the operating system refused an operation): the first is never retried, the
//! second may be transient.

use std::io;

/// Every error the log engine returns.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A storage operation failed.
    #[error("i/o error: {op} {name}: {source}")]
    Io {
        /// The operation (`write`, `sync`, ...).
        op: &'static str,
        /// The file it was applied to.
        name: String,
        /// The operating system's error.
        #[source]
        source: io::Error,
    },
    /// Bytes on disk that cannot be trusted. Never served as data.
    #[error("corruption in {segment} at log offset {offset}: {reason}")]
    Corruption {
        /// The file holding the bad bytes.
        segment: String,
        /// Logical log offset (or file position for non-segment files) of the bad bytes.
        offset: u64,
        /// What was wrong.
        reason: String,
    },
    /// A request exceeded a named limit.
    #[error("capacity: {0}")]
    Capacity(#[from] CapacityError),
    /// An earlier write or sync failed; the log refuses appends until reopened, so that
    /// readers never see a gap in a conversation's sequence.
    #[error("log is poisoned by an earlier write or sync failure; reopen it")]
    Poisoned,
    /// The configuration raises a limit or is inconsistent.
    #[error("invalid config: {0}")]
    Config(&'static str),
    /// The caller's state machine refused its own snapshot bytes.
    #[error("state machine rejected its snapshot: {0}")]
    SnapshotRejected(String),
    /// A record kind was used where it does not belong (e.g. metadata via `append`).
    #[error("invalid request: {0}")]
    InvalidRequest(&'static str),
}

/// Limits exceeded by a request.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CapacityError {
    /// The payload is larger than `RECORD_PAYLOAD_BYTES_MAX` or than one segment holds.
    #[error("payload of {len} bytes exceeds the limit of {max}")]
    PayloadTooLarge {
        /// Payload length asked for.
        len: usize,
        /// The limit in force.
        max: usize,
    },
    /// A read asked for more records than `READ_RECORDS_MAX`.
    #[error("read limit {asked} exceeds {max}")]
    ReadTooLarge {
        /// Records asked for.
        asked: usize,
        /// The limit.
        max: usize,
    },
    /// A conversation's sequence would overflow.
    #[error("sequence space of conversation {0} exhausted")]
    SequenceExhausted(u64),
}

/// `Result` with the crate's error.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Maps an `io::Error` from operation `op` on file `name` into [`Error::Io`].
pub(crate) fn io_err<'a>(op: &'static str, name: &'a str) -> impl FnOnce(io::Error) -> Error + 'a {
    move |source| Error::Io {
        op,
        name: name.to_owned(),
        source,
    }
}

/// Builds an [`Error::Corruption`].
pub(crate) fn corruption(segment: &str, offset: u64, reason: impl Into<String>) -> Error {
    Error::Corruption {
        segment: segment.to_owned(),
        offset,
        reason: reason.into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn corruption_names_segment_and_offset() {
        let e = corruption("00000000000000000000.log", 4096, "bad crc");
        let text = e.to_string();
        assert!(text.contains("00000000000000000000.log"));
        assert!(text.contains("4096"));
    }

    #[test]
    fn io_error_names_operation() {
        let e = io_err("sync", "x.log")(io::Error::other("boom"));
        assert!(matches!(e, Error::Io { op: "sync", .. }));
    }
}
