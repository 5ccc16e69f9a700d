//! Raw-TCP length-prefixed framing. Properties: no panic; every frame is within the limit;
//! re-encoding the frames reproduces the consumed prefix of the input.
#![no_main]

use libfuzzer_sys::fuzz_target;
use wire::tcp_frame::{self, TcpFrameDecoder};

const FRAME_BYTES_MAX: usize = 4096;

fuzz_target!(|data: &[u8]| {
    let mut decoder = TcpFrameDecoder::new(FRAME_BYTES_MAX);
    decoder.feed(data);
    let mut reencoded = Vec::new();
    while let Ok(Some(frame)) = decoder.poll() {
        assert!(frame.len() <= FRAME_BYTES_MAX);
        tcp_frame::encode(frame, &mut reencoded).unwrap();
    }
    assert_eq!(&data[..reencoded.len()], &reencoded[..]);
});
