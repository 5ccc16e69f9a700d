//! Metadata folded into caller state: the caller's [`StateMachine`] sees every durable
//! metadata record once, in metadata-sequence order, and its snapshot is stored in each
//! checkpoint so restart replays only the records after it.

use crate::format::RecordKind;

/// A durable metadata record handed to [`StateMachine::apply`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MetaRecord<'a> {
    /// Kind (never `Message` or `System`).
    pub kind: RecordKind,
    /// Metadata sequence (gap-free from 1 across the whole log).
    pub seq: u64,
    /// Log offset.
    pub offset: u64,
    /// Timestamp given at append.
    pub timestamp_ms: u64,
    /// Payload (defined by the caller).
    pub payload: &'a [u8],
}

/// State built by folding metadata records (users, devices, groups, cursors, ...).
pub trait StateMachine {
    /// Folds one durable record in.
    fn apply(&mut self, record: &MetaRecord<'_>);
    /// Serializes the whole state (stored in checkpoints).
    fn snapshot(&self) -> Vec<u8>;
    /// Replaces the state: `Some(bytes)` from a snapshot, `None` for the empty state.
    fn restore(&mut self, snapshot: Option<&[u8]>) -> Result<(), String>;
}

/// No metadata state: records are stored but folded into nothing.
impl StateMachine for () {
    fn apply(&mut self, _record: &MetaRecord<'_>) {}
    fn snapshot(&self) -> Vec<u8> {
        Vec::new()
    }
    fn restore(&mut self, _snapshot: Option<&[u8]>) -> Result<(), String> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unit_state_is_empty() {
        let mut state = ();
        state.apply(&MetaRecord {
            kind: RecordKind::User,
            seq: 1,
            offset: 64,
            timestamp_ms: 0,
            payload: b"x",
        });
        assert!(state.snapshot().is_empty());
        assert!(state.restore(Some(b"")).is_ok());
    }
}
