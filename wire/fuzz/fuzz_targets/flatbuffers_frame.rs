//! FlatBuffers verification + conversion to the owned model. Properties: no panic; a frame
//! that decodes re-encodes to bytes that decode to the same frame, and is within limits.
#![no_main]

use libfuzzer_sys::fuzz_target;
use wire::message;

fuzz_target!(|data: &[u8]| {
    let _ = message::verified_root(data);
    if let Ok(frame) = message::from_flatbuffers(data) {
        message::validate(&frame).unwrap();
        let bytes = message::to_flatbuffers(&frame);
        assert_eq!(message::from_flatbuffers(&bytes).unwrap(), frame);
    }
});
