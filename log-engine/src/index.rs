//! In-memory per-conversation index, sparse: conversation id → the offset of every
//! `INDEX_STRIDE_RECORDS`-th record (sequences `1, 1 + K, 1 + 2K, …`, the *anchors*)
//! plus the last record. A read of sequence `s` starts at the nearest anchor at or after
//! `s` (or the last record) and walks back through `prev_offset` links, fewer than `K`
//! steps plus the page, so reads never scan other conversations.
//!
//! Memory: one `u64` per `K` retained records plus ~96 bytes per conversation (hash entry,
//! `Vec` header, tips). With `K` = 32, 40 M retained records (10 GB of 200 B
//! messages) ≈ 10 MiB instead of 320 MiB dense, and checkpoints shrink by the same
//! factor, which is what keeps restart and checkpoint writes short.

use std::collections::HashMap;

use crate::format::OFFSET_NONE;
use crate::limits::INDEX_STRIDE_RECORDS;

/// One conversation's durable records.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConvIndex {
    /// First retained sequence; `last_seq + 1` when no record is retained. After
    /// retention it is the first anchor still retained, so up to `K − 1` older records
    /// that sit in retained segments may be hidden from reads.
    pub first_seq: u64,
    /// Last sequence written (0 if none).
    pub last_seq: u64,
    /// Offset of the last record ever written (kept after retention), for the
    /// `prev_offset` link of the next record and as the walk start past the last anchor.
    pub last_offset: u64,
    /// Sequence of `anchors[0]` (≡ 1 mod `K`); the next anchor's sequence when empty.
    pub anchor_seq: u64,
    /// Offsets of the retained anchors, `anchors[i]` holding `anchor_seq + i·K`.
    pub anchors: Vec<u64>,
}

impl ConvIndex {
    fn new() -> ConvIndex {
        ConvIndex {
            first_seq: 1,
            last_seq: 0,
            last_offset: OFFSET_NONE,
            anchor_seq: 1,
            anchors: Vec::new(),
        }
    }

    /// Last sequence written (0 if none).
    pub fn last_seq(&self) -> u64 {
        self.last_seq
    }

    /// Where a walk back to retained `seq` starts: `(seq', offset)` of the nearest known
    /// record with `seq' ≥ seq` (an anchor or the last record). `None` if `seq` is not
    /// retained.
    pub fn locate(&self, seq: u64) -> Option<(u64, u64)> {
        if seq < self.first_seq || seq > self.last_seq {
            return None;
        }
        let k = INDEX_STRIDE_RECORDS;
        let i = seq.saturating_sub(self.anchor_seq).div_ceil(k);
        match self.anchors.get(usize::try_from(i).ok()?) {
            Some(offset) => Some((self.anchor_seq + i * k, *offset)),
            None => Some((self.last_seq, self.last_offset)),
        }
    }

    fn push(&mut self, seq: u64, offset: u64) {
        assert_eq!(seq, self.last_seq + 1, "index: sequence gap");
        assert!(self.last_offset == OFFSET_NONE || offset > self.last_offset);
        if (seq - 1).is_multiple_of(INDEX_STRIDE_RECORDS) {
            if self.anchors.is_empty() {
                self.anchor_seq = seq;
            }
            let next = self.anchor_seq + self.anchors.len() as u64 * INDEX_STRIDE_RECORDS;
            assert_eq!(next, seq, "index: anchor out of place");
            self.anchors.push(offset);
        }
        self.last_seq = seq;
        self.last_offset = offset;
    }

    fn trim_below(&mut self, offset: u64) {
        let cut = self.anchors.partition_point(|o| *o < offset);
        if cut > 0 {
            self.anchors.drain(..cut);
            self.anchor_seq += cut as u64 * INDEX_STRIDE_RECORDS;
            if !self.anchors.is_empty() {
                self.first_seq = self.first_seq.max(self.anchor_seq);
            }
        }
        if self.anchors.is_empty() {
            // Only the last record is still known; older ones are unreachable or gone.
            let keep_last = self.last_offset != OFFSET_NONE && self.last_offset >= offset;
            let first = if keep_last {
                self.last_seq
            } else {
                self.last_seq + 1
            };
            self.first_seq = self.first_seq.max(first);
        }
    }
}

/// A conversation's tips and number of anchors at one moment (see
/// [`Index::begin_as_of`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConvTips {
    /// [`ConvIndex::first_seq`] then.
    pub first_seq: u64,
    /// [`ConvIndex::last_seq`] then.
    pub last_seq: u64,
    /// [`ConvIndex::last_offset`] then.
    pub last_offset: u64,
    /// [`ConvIndex::anchor_seq`] then.
    pub anchor_seq: u64,
    /// How many of [`ConvIndex::anchors`] there were then.
    pub anchors: usize,
}

impl ConvTips {
    fn of(conv: &ConvIndex) -> ConvTips {
        ConvTips {
            first_seq: conv.first_seq,
            last_seq: conv.last_seq,
            last_offset: conv.last_offset,
            anchor_seq: conv.anchor_seq,
            anchors: conv.anchors.len(),
        }
    }
}

/// The index of all conversations of one log.
#[derive(Clone, Debug, Default)]
pub struct Index {
    convs: HashMap<u64, ConvIndex>,
    /// Conversation ids in the order they were first seen: a checkpoint drafted in
    /// steps walks this by position, which new conversations do not disturb.
    order: Vec<u64>,
    /// While a checkpoint is drafted (`as_of_open`): each conversation's state before
    /// its first push since [`Index::begin_as_of`], so the draft encodes it as of that
    /// moment. Kept allocated between drafts: growing a fresh map to every conversation
    /// during each draft cost the owner thread rehashes (more stalls in `log_bench`).
    as_of: HashMap<u64, ConvTips>,
    as_of_open: bool,
    /// Anchors of all conversations together, so a checkpoint's size is known without
    /// walking the index on the owner thread.
    anchors: usize,
}

impl PartialEq for Index {
    /// The same conversations in the same state (the walk order is not compared).
    fn eq(&self, other: &Index) -> bool {
        self.convs == other.convs
    }
}

impl Eq for Index {}

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
        match self.convs.get_mut(&conversation_id) {
            Some(conv) => {
                if self.as_of_open {
                    self.as_of
                        .entry(conversation_id)
                        .or_insert_with(|| ConvTips::of(conv));
                }
                let before = conv.anchors.len();
                conv.push(seq, offset);
                self.anchors += conv.anchors.len() - before;
            }
            None => {
                let mut conv = ConvIndex::new();
                conv.push(seq, offset);
                self.anchors += conv.anchors.len();
                self.convs.insert(conversation_id, conv);
                self.order.push(conversation_id);
            }
        }
    }

    /// Inserts a conversation loaded from a checkpoint.
    pub fn insert(&mut self, conversation_id: u64, conv: ConvIndex) {
        self.anchors += conv.anchors.len();
        match self.convs.insert(conversation_id, conv) {
            Some(replaced) => self.anchors -= replaced.anchors.len(),
            None => self.order.push(conversation_id),
        }
    }

    /// Anchors of all conversations together.
    pub fn anchor_count(&self) -> usize {
        self.anchors
    }

    /// Starts remembering each conversation as it is now, for a checkpoint drafted in
    /// steps while records keep arriving. Returns how many conversations there are:
    /// [`Index::as_of_entry`] serves positions below that. Pushes then cost one more
    /// hash lookup; [`Index::end_as_of`] stops it. Retention must wait
    /// ([`Index::trim_below`] refuses meanwhile).
    pub fn begin_as_of(&mut self) -> usize {
        // A second draft would silently turn the first one's view live.
        assert!(!self.as_of_open, "index: two checkpoint drafts at once");
        self.as_of.clear();
        self.as_of_open = true;
        self.order.len()
    }

    /// Stops what [`Index::begin_as_of`] started.
    pub fn end_as_of(&mut self) {
        self.as_of.clear();
        self.as_of_open = false;
    }

    /// True between [`Index::begin_as_of`] and [`Index::end_as_of`].
    pub fn is_as_of(&self) -> bool {
        self.as_of_open
    }

    /// The conversation at `position` in first-seen order, as it was when
    /// [`Index::begin_as_of`] was called: id, tips, and its anchors then.
    pub fn as_of_entry(&self, position: usize) -> Option<(u64, ConvTips, &[u64])> {
        let id = *self.order.get(position)?;
        let conv = self.convs.get(&id)?;
        let saved = self.as_of.get(&id).filter(|_| self.as_of_open);
        let tips = saved.copied().unwrap_or_else(|| ConvTips::of(conv));
        let anchors = conv.anchors.get(..tips.anchors)?;
        Some((id, tips, anchors))
    }

    /// Forgets every record below `offset` (its segments were deleted). Last sequences
    /// and last offsets are kept so numbering continues without reuse.
    pub fn trim_below(&mut self, offset: u64) {
        assert!(
            !self.as_of_open,
            "index: retention while a checkpoint is drafted"
        );
        for conv in self.convs.values_mut() {
            let before = conv.anchors.len();
            conv.trim_below(offset);
            self.anchors -= before - conv.anchors.len();
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

    const K: u64 = INDEX_STRIDE_RECORDS;

    fn walked_anchors(index: &Index) -> usize {
        index.iter().map(|(_, c)| c.anchors.len()).sum()
    }

    /// The running anchor total (a checkpoint's size without a walk) follows pushes,
    /// inserts (new and replacing) and trims.
    #[test]
    fn anchor_count_follows_every_change() {
        let mut index = Index::new();
        for seq in 1..=3 * K + 1 {
            index.push(1, seq, seq * 100);
            index.push(2, seq, seq * 100 + 1);
            assert_eq!(index.anchor_count(), walked_anchors(&index));
        }
        assert_eq!(index.anchor_count(), 8);
        let copy = index.get(1).cloned().unwrap();
        index.insert(3, copy.clone());
        index.insert(1, ConvIndex::new());
        assert_eq!(index.anchor_count(), walked_anchors(&index));
        index.trim_below((K + 5) * 100);
        assert_eq!(index.anchor_count(), walked_anchors(&index));
        assert!(index.anchor_count() < 8);
    }

    #[test]
    fn push_and_locate() {
        let mut index = Index::new();
        assert_eq!(index.tip(1), (0, OFFSET_NONE));
        index.push(1, 1, 64);
        index.push(2, 1, 128);
        index.push(1, 2, 192);
        assert_eq!(index.tip(1), (2, 192));
        let conv = index.get(1).unwrap();
        assert_eq!(conv.locate(1), Some((1, 64)));
        assert_eq!(conv.locate(2), Some((2, 192)));
        assert_eq!(conv.locate(3), None);
        assert_eq!(conv.locate(0), None);
        let mut index = Index::new();
        for seq in 1..=3 * K + 5 {
            index.push(9, seq, seq * 100);
        }
        let conv = index.get(9).unwrap();
        assert_eq!(conv.anchors.len(), 4);
        assert_eq!(conv.locate(K + 1), Some((K + 1, (K + 1) * 100)));
        assert_eq!(conv.locate(K + 2), Some((2 * K + 1, (2 * K + 1) * 100)));
        assert_eq!(conv.locate(3 * K + 2), Some((3 * K + 5, (3 * K + 5) * 100)));
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
        for seq in 1..=2 * K + 5 {
            index.push(9, seq, seq * 100);
        }
        // Cut inside the second stride: history restarts at the third anchor.
        index.trim_below((K + 5) * 100);
        let conv = index.get(9).unwrap();
        assert_eq!(conv.first_seq, 2 * K + 1);
        assert_eq!(conv.locate(2 * K), None);
        assert_eq!(conv.locate(2 * K + 1), Some((2 * K + 1, (2 * K + 1) * 100)));
        // Past every anchor: only the last record stays reachable.
        index.trim_below((2 * K + 3) * 100);
        let conv = index.get(9).unwrap();
        assert_eq!(conv.first_seq, 2 * K + 5);
        assert_eq!(conv.locate(2 * K + 5), Some((2 * K + 5, (2 * K + 5) * 100)));
        index.trim_below(u64::MAX - 1);
        assert_eq!(index.tip(9), (2 * K + 5, (2 * K + 5) * 100));
        assert_eq!(index.get(9).unwrap().locate(2 * K + 5), None);
        for seq in 2 * K + 6..=3 * K + 2 {
            index.push(9, seq, seq * 1000);
        }
        let conv = index.get(9).unwrap();
        assert_eq!(conv.anchor_seq, 3 * K + 1);
        assert_eq!(conv.first_seq, 2 * K + 6);
        assert_eq!(
            conv.locate(2 * K + 6),
            Some((3 * K + 1, (3 * K + 1) * 1000))
        );
    }
}
