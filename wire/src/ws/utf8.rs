//! Incremental UTF-8 validation for text messages that arrive in fragments.
//!
//! RFC 6455 §8.1 lets (and Autobahn 6.x expects) an endpoint fail a text message as soon as
//! the bytes so far cannot be the prefix of valid UTF-8, instead of waiting for the last
//! fragment. The validator remembers how far the message is known to be valid; each new
//! fragment is checked from there with the standard library's (vectorised) validator. A
//! code point split across fragments shows up as an *incomplete* sequence at the end,
//! which is fine until the final fragment.

/// Tracks how much of a growing text message has been validated.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Utf8Validator {
    valid_up_to: usize,
}

/// The outcome of checking a message prefix.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Utf8Status {
    /// Everything so far is valid, possibly ending inside a code point (when not final).
    Valid,
    /// No continuation can make this valid UTF-8.
    Invalid,
}

impl Utf8Validator {
    pub fn new() -> Utf8Validator {
        Utf8Validator::default()
    }

    /// Check `message` (all bytes received so far for this message; it only ever grows).
    /// `is_final` says no more bytes will follow.
    pub fn check(&mut self, message: &[u8], is_final: bool) -> Utf8Status {
        debug_assert!(self.valid_up_to <= message.len());
        let Some(fresh) = message.get(self.valid_up_to..) else {
            return Utf8Status::Invalid;
        };
        match std::str::from_utf8(fresh) {
            Ok(_) => {
                self.valid_up_to = message.len();
                Utf8Status::Valid
            }
            Err(e) => {
                self.valid_up_to += e.valid_up_to();
                match e.error_len() {
                    // A sequence cut short at the end: may be completed by the next fragment.
                    None if !is_final => Utf8Status::Valid,
                    _ => Utf8Status::Invalid,
                }
            }
        }
    }

    pub fn reset(&mut self) {
        self.valid_up_to = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn check_in_pieces(bytes: &[u8], cuts: &[usize]) -> Utf8Status {
        let mut v = Utf8Validator::new();
        let mut end = 0;
        for &cut in cuts {
            end = cut.clamp(end, bytes.len());
            if v.check(&bytes[..end], false) == Utf8Status::Invalid {
                return Utf8Status::Invalid;
            }
        }
        v.check(bytes, true)
    }

    #[test]
    fn code_point_split_across_fragments_is_valid() {
        let text = "κόσμε 🌍".as_bytes();
        for cut in 0..text.len() {
            assert_eq!(
                check_in_pieces(text, &[cut]),
                Utf8Status::Valid,
                "cut {cut}"
            );
        }
    }

    #[test]
    fn truncated_code_point_at_the_end_is_invalid() {
        let text = "🌍".as_bytes();
        assert_eq!(
            Utf8Validator::new().check(&text[..3], true),
            Utf8Status::Invalid
        );
        assert_eq!(
            Utf8Validator::new().check(&text[..3], false),
            Utf8Status::Valid
        );
    }

    #[test]
    fn fails_fast_on_the_first_impossible_byte() {
        // Autobahn 6.4.1: the invalid byte arrives in the middle fragment.
        let mut v = Utf8Validator::new();
        let first = "κόσμε".as_bytes().to_vec();
        assert_eq!(v.check(&first, false), Utf8Status::Valid);
        let mut second = first.clone();
        second.extend_from_slice(&[0xF4, 0x90, 0x80, 0x80]); // > U+10FFFF
        assert_eq!(v.check(&second, false), Utf8Status::Invalid);
    }

    #[test]
    fn surrogates_and_overlongs_are_invalid() {
        for bad in [
            &[0xED, 0xA0, 0x80][..],
            &[0xC0, 0xAF],
            &[0xE0, 0x80, 0xAF],
            &[0xFF],
        ] {
            assert_eq!(
                Utf8Validator::new().check(bad, true),
                Utf8Status::Invalid,
                "{bad:?}"
            );
            assert_eq!(
                Utf8Validator::new().check(bad, false),
                Utf8Status::Invalid,
                "{bad:?}"
            );
        }
    }

    proptest! {
        #[test]
        fn incremental_agrees_with_whole(
            bytes in proptest::collection::vec(any::<u8>(), 0..64),
            mut cuts in proptest::collection::vec(0usize..64, 0..5),
        ) {
            cuts.sort_unstable();
            let whole = std::str::from_utf8(&bytes).is_ok();
            let pieces = check_in_pieces(&bytes, &cuts) == Utf8Status::Valid;
            prop_assert_eq!(whole, pieces);
        }

        #[test]
        fn valid_text_in_any_pieces_is_valid(
            text in "\\PC{0,40}",
            mut cuts in proptest::collection::vec(0usize..160, 0..6),
        ) {
            cuts.sort_unstable();
            prop_assert_eq!(check_in_pieces(text.as_bytes(), &cuts), Utf8Status::Valid);
        }
    }
}
