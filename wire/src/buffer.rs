//! The growable input buffer behind the sans-IO decoders (WebSocket and raw TCP).
//!
//! Bytes are appended at the end (`feed`, or `read_space` + `commit_read` to read from a
//! socket straight into the buffer) and consumed from the front. Events returned by a
//! decoder borrow from the buffer, so consumption is *deferred*: a decoder marks bytes as
//! released and they are dropped on its next call. Consumed bytes are reclaimed by one
//! `copy_within` of the unparsed remainder (at most one partial frame) when the decoder
//! runs out of complete frames, so the buffer never holds more than one frame plus one
//! read beyond what the caller has not yet looked at.

#[derive(Debug, Default)]
pub(crate) struct InputBuffer {
    bytes: Vec<u8>,
    /// Bytes before this offset are consumed.
    start: usize,
    /// Bytes the last returned event borrowed; consumed on the next decoder call.
    release: usize,
}

impl InputBuffer {
    pub(crate) fn feed(&mut self, data: &[u8]) {
        self.bytes.extend_from_slice(data);
    }

    /// Writable space of at least `min` bytes at the end of the buffer; follow with
    /// `commit_read(n)` for the `n` bytes actually written.
    pub(crate) fn read_space(&mut self, min: usize) -> &mut [u8] {
        self.compact();
        let len = self.bytes.len();
        self.bytes.resize(len + min, 0);
        self.bytes.get_mut(len..).unwrap_or_default()
    }

    /// Keep `n` of the bytes offered by the last `read_space` and drop the rest.
    pub(crate) fn commit_read(&mut self, n: usize, offered: usize) {
        debug_assert!(n <= offered);
        let keep = self.bytes.len() - offered + n.min(offered);
        self.bytes.truncate(keep);
    }

    /// Drop the bytes borrowed by the last event.
    pub(crate) fn release_pending(&mut self) {
        self.start += self.release;
        self.release = 0;
        debug_assert!(self.start <= self.bytes.len());
    }

    /// Every byte not consumed yet (the last event's included: it is released first),
    /// leaving the buffer empty. For handing a connection to another decoder.
    pub(crate) fn take_unread(&mut self) -> Vec<u8> {
        self.release_pending();
        let rest = self.pending().to_vec();
        self.bytes.clear();
        self.start = 0;
        rest
    }

    /// Free the allocation if nothing is pending (an idle connection then holds no input
    /// buffer while it waits). Returns whether it is empty.
    pub(crate) fn release_if_empty(&mut self) -> bool {
        self.release_pending();
        if self.pending().is_empty() {
            self.bytes = Vec::new();
            self.start = 0;
            true
        } else {
            false
        }
    }

    /// Unconsumed bytes.
    pub(crate) fn pending(&self) -> &[u8] {
        self.bytes.get(self.start..).unwrap_or_default()
    }

    pub(crate) fn pending_mut(&mut self) -> &mut [u8] {
        self.bytes.get_mut(self.start..).unwrap_or_default()
    }

    /// Consume `n` bytes now.
    pub(crate) fn consume(&mut self, n: usize) {
        debug_assert!(self.start + n <= self.bytes.len());
        self.start += n;
    }

    /// Consume `n` bytes on the next call (an event borrows them until then).
    pub(crate) fn consume_later(&mut self, n: usize) {
        debug_assert!(self.release == 0);
        debug_assert!(self.start + n <= self.bytes.len());
        self.release = n;
    }

    /// Make room for a frame of `total` bytes starting at the current position, so a
    /// large frame arriving in many reads is not reallocated many times.
    pub(crate) fn reserve_frame(&mut self, total: usize) {
        let have = self.bytes.len() - self.start;
        if total > have {
            self.bytes.reserve(total - have);
        }
    }

    /// Move the unconsumed remainder to the front.
    pub(crate) fn compact(&mut self) {
        if self.release != 0 || self.start == 0 {
            return;
        }
        if self.start == self.bytes.len() {
            self.bytes.clear();
        } else {
            self.bytes.copy_within(self.start.., 0);
            self.bytes.truncate(self.bytes.len() - self.start);
        }
        self.start = 0;
    }

    /// Bytes held, consumed or not (for memory accounting).
    pub(crate) fn capacity(&self) -> usize {
        self.bytes.capacity()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn read_space_commit_and_compaction() {
        let mut buf = InputBuffer::default();
        let space = buf.read_space(8);
        space[..3].copy_from_slice(b"abc");
        buf.commit_read(3, 8);
        assert_eq!(buf.pending(), b"abc");
        buf.consume_later(2);
        assert_eq!(
            buf.pending(),
            b"abc",
            "deferred consumption keeps the bytes"
        );
        buf.release_pending();
        assert_eq!(buf.pending(), b"c");
        buf.feed(b"de");
        buf.compact();
        assert_eq!(buf.pending(), b"cde");
        buf.consume(3);
        buf.compact();
        assert_eq!(buf.pending(), b"");
    }
}
