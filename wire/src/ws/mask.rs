//! Payload masking (RFC 6455 §5.3): `payload[i] ^= key[i % 4]`.
//!
//! The hot path of every inbound client frame. We XOR eight bytes at a time with the key
//! repeated into a `u64` over the aligned middle of the buffer; LLVM turns that loop into wide
//! vector XORs (AVX2/AVX-512 where the target allows, SSE2 everywhere on x86_64). The key is
//! rotated first so masking can resume in the middle of a payload (`offset`).

/// XOR `buf` with the mask `key`, as if `buf` started `offset` bytes into the payload.
#[inline]
pub fn apply_mask(buf: &mut [u8], key: [u8; 4], offset: usize) {
    let key = rotate_key(key, offset);
    let (head, words, tail) = split_for_words(buf);
    // `head` is shorter than 8 bytes; mask it byte by byte, then rotate the key past it.
    apply_mask_bytes(head, key);
    let key = rotate_key(key, head.len());
    let word = u64::from_ne_bytes([
        key[0], key[1], key[2], key[3], key[0], key[1], key[2], key[3],
    ]);
    for w in words.iter_mut() {
        *w ^= word;
    }
    // Whole words keep the key phase (8 is a multiple of 4).
    apply_mask_bytes(tail, key);
}

/// The reference implementation, byte at a time. Used for short slices and in tests.
#[inline]
pub fn apply_mask_bytes(buf: &mut [u8], key: [u8; 4]) {
    for (byte, k) in buf.iter_mut().zip(key.iter().cycle()) {
        *byte ^= k;
    }
}

fn rotate_key(key: [u8; 4], by: usize) -> [u8; 4] {
    let mut k = key;
    k.rotate_left(by % 4);
    k
}

/// Split into an unaligned head, an aligned run of `u64`s and a tail, without `unsafe`
/// casts of our own: `align_to_mut` is the one sanctioned way to reinterpret the middle.
fn split_for_words(buf: &mut [u8]) -> (&mut [u8], &mut [u64], &mut [u8]) {
    // SAFETY: u64 has no invalid bit patterns and every byte pattern is a valid u64, so
    // viewing an aligned run of initialised bytes as u64s is sound.
    unsafe { buf.align_to_mut::<u64>() }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn rfc_example_hello() {
        // RFC 6455 §5.7: "Hello" masked with 37 fa 21 3d.
        let mut payload = *b"Hello";
        apply_mask(&mut payload, [0x37, 0xfa, 0x21, 0x3d], 0);
        assert_eq!(payload, [0x7f, 0x9f, 0x4d, 0x51, 0x58]);
    }

    #[test]
    fn masking_twice_is_identity_on_large_unaligned_buffers() {
        let original: Vec<u8> = (0..70_000u32).map(|i| (i * 31 % 251) as u8).collect();
        for start in 0..9 {
            let mut buf = original.clone();
            apply_mask(&mut buf[start..], [1, 2, 3, 4], 0);
            assert_ne!(buf[start..], original[start..]);
            apply_mask(&mut buf[start..], [1, 2, 3, 4], 0);
            assert_eq!(buf, original);
        }
    }

    proptest! {
        #[test]
        fn fast_mask_matches_reference(
            data in proptest::collection::vec(any::<u8>(), 0..600),
            key in any::<[u8; 4]>(),
            skip in 0usize..8,
        ) {
            let skip = skip.min(data.len());
            let mut fast = data.clone();
            apply_mask(&mut fast[skip..], key, 0);
            let mut slow = data.clone();
            apply_mask_bytes(&mut slow[skip..], key);
            prop_assert_eq!(fast, slow);
        }

        #[test]
        fn masking_in_pieces_with_offset_matches_whole(
            data in proptest::collection::vec(any::<u8>(), 0..300),
            key in any::<[u8; 4]>(),
            split in 0usize..300,
        ) {
            let split = split.min(data.len());
            let mut whole = data.clone();
            apply_mask(&mut whole, key, 0);
            let mut pieces = data.clone();
            let (a, b) = pieces.split_at_mut(split);
            apply_mask(a, key, 0);
            apply_mask(b, key, split);
            prop_assert_eq!(whole, pieces);
        }
    }
}
