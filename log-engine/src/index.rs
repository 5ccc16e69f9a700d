//! In-memory per-conversation index: conversation id → its durable records' offsets,
//! so reads never scan other conversations.
//!
//! Memory: one `u64` per retained record plus ~80 bytes per conversation (hash entry +
//! `Vec` header). 50 M retained records ≈ 400 MiB; a compact encoding can come later.

use std::collections::HashMap;

use crate::format::OFFSET_NONE;

/// One conversation's durable records.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConvIndex {
    /// Sequence of `offsets[0]`; `last_seq + 1` when no record is retained.
    pub first_seq: u64,
    /// Log offsets of retained records, indexed by `seq - first_seq`.
    pub offsets: Vec<u64>,
    /// Offset of the last record ever written (kept after retention trims `offsets`),
    /// for the `prev_offset` link of the next record.
    pub last_offset: u64,
}

impl ConvIndex {
    fn new() -> ConvIndex {
        ConvIndex {
            first_seq: 1,
            offsets: Vec::new(),
            last_offset: OFFSET_NONE,
        }
    }

    /// Last sequence written (0 if none).
    pub fn last_seq(&self) -> u64 {
        self.first_seq + self.offsets.len() as u64 - 1
    }

    /// Offset of `seq` if it is retained.
    pub fn offset_of(&self, seq: u64) -> Option<u64> {
        let i = seq.checked_sub(self.first_seq)?;
        self.offsets.get(usize::try_from(i).ok()?).copied()
    }
}

/// The index of all conversations of one log.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Index {
    convs: HashMap<u64, ConvIndex>,
}

impl Index {
    /// An empty index.
    pub fn new() -> Index {
        Index::default()
    }

    /// `(last_seq, last_offset)` of a conversation; `(0, OFFSET_NONE)` if unknown.
    pub fn tip(&self, conversation_id: u64) -> (u64, u64) {
        self.convs
            .get(&conversation_id)
            .map_or((0, OFFSET_NONE), |c| (c.last_seq(), c.last_offset))
    }

    /// The conversation's entry, if any record was ever written to it.
    pub fn get(&self, conversation_id: u64) -> Option<&ConvIndex> {
        self.convs.get(&conversation_id)
    }

    /// Adds the next record of a conversation. The caller checked the sequence; a
    /// mismatch here is a bug in our own state, so it is asserted.
    pub fn push(&mut self, conversation_id: u64, seq: u64, offset: u64) {
        let conv = self
            .convs
            .entry(conversation_id)
            .or_insert_with(ConvIndex::new);
        assert_eq!(seq, conv.last_seq() + 1, "index: sequence gap");
        assert!(conv.last_offset == OFFSET_NONE || offset > conv.last_offset);
        conv.offsets.push(offset);
        conv.last_offset = offset;
    }

    /// Inserts a conversation loaded from a checkpoint.
    pub fn insert(&mut self, conversation_id: u64, conv: ConvIndex) {
        self.convs.insert(conversation_id, conv);
    }

    /// Forgets every record below `offset` (its segments were deleted). Last sequences
    /// and last offsets are kept so numbering continues without reuse.
    pub fn trim_below(&mut self, offset: u64) {
        for conv in self.convs.values_mut() {
            let cut = conv.offsets.partition_point(|o| *o < offset);
            if cut > 0 {
                conv.offsets.drain(..cut);
                conv.first_seq += cut as u64;
            }
        }
    }

    /// Number of conversations.
    pub fn len(&self) -> usize {
        self.convs.len()
    }

    /// True when no conversation is known.
    pub fn is_empty(&self) -> bool {
        self.convs.is_empty()
    }

    /// All conversations (for checkpoints), in no particular order.
    pub fn iter(&self) -> impl Iterator<Item = (&u64, &ConvIndex)> {
        self.convs.iter()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn push_and_lookup() {
        let mut index = Index::new();
        assert_eq!(index.tip(1), (0, OFFSET_NONE));
        index.push(1, 1, 64);
        index.push(2, 1, 128);
        index.push(1, 2, 192);
        assert_eq!(index.tip(1), (2, 192));
        let conv = index.get(1).unwrap();
        assert_eq!(conv.offset_of(1), Some(64));
        assert_eq!(conv.offset_of(2), Some(192));
        assert_eq!(conv.offset_of(3), None);
        assert_eq!(conv.offset_of(0), None);
    }

    #[test]
    #[should_panic(expected = "sequence gap")]
    fn gaps_are_bugs() {
        let mut index = Index::new();
        index.push(1, 2, 64);
    }

    #[test]
    fn trim_keeps_numbering() {
        let mut index = Index::new();
        for seq in 1..=5 {
            index.push(9, seq, seq * 100);
        }
        index.trim_below(350);
        let conv = index.get(9).unwrap();
        assert_eq!(conv.first_seq, 4);
        assert_eq!(conv.last_seq(), 5);
        assert_eq!(conv.offset_of(3), None);
        assert_eq!(conv.offset_of(4), Some(400));
        index.trim_below(1000);
        assert_eq!(index.tip(9), (5, 500));
        index.push(9, 6, 1100);
        assert_eq!(index.get(9).unwrap().offset_of(6), Some(1100));
    }
}
