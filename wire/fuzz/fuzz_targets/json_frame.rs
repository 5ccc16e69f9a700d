//! The `confab.v1.json` decoder. Properties: no panic; a frame that decodes re-encodes to
//! JSON that decodes to the same frame, and to FlatBuffers that decode to it as well.
#![no_main]

use libfuzzer_sys::fuzz_target;
use wire::{json, message};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    if let Ok(frame) = json::from_json(text) {
        let again = json::to_json(&frame);
        assert_eq!(json::from_json(&again).unwrap(), frame);
        let bytes = message::to_flatbuffers(&frame);
        assert_eq!(message::from_flatbuffers(&bytes).unwrap(), frame);
    }
});
