//! The WebSocket frame parser and message state machine, both roles, fed arbitrary bytes
//! in arbitrary chunk sizes. Properties: no panic; an error always leaves the codec
//! closed with a Close frame queued; events respect the configured limits.
#![no_main]

use libfuzzer_sys::fuzz_target;
use wire::ws::frame::FrameHeader;
use wire::ws::{Event, Role, State, WsCodec, WsConfig};

const MESSAGE_BYTES_MAX: usize = 64 * 1024;

fuzz_target!(|data: &[u8]| {
    let _ = FrameHeader::parse(data);
    let Some((&first, rest)) = data.split_first() else { return };
    let chunk = usize::from(first % 64) + 1;
    for role in [Role::Server, Role::Client] {
        let config = WsConfig::default()
            .with_message_bytes_max(MESSAGE_BYTES_MAX)
            .with_frame_payload_bytes_max(MESSAGE_BYTES_MAX)
            .with_message_fragments_max(64);
        let mut codec = WsCodec::new(role, config);
        'feed: for piece in rest.chunks(chunk) {
            codec.feed(piece);
            loop {
                match codec.poll() {
                    Ok(Some(Event::Text(t))) => assert!(t.len() <= MESSAGE_BYTES_MAX),
                    Ok(Some(Event::Binary(b))) => assert!(b.len() <= MESSAGE_BYTES_MAX),
                    Ok(Some(Event::Ping(p) | Event::Pong(p))) => assert!(p.len() <= 125),
                    Ok(Some(Event::Close(_))) => assert_eq!(codec.state(), State::Closed),
                    Ok(None) => break,
                    Err(_) => {
                        assert_eq!(codec.state(), State::Closed);
                        assert!(!codec.output().is_empty());
                        break 'feed;
                    }
                }
            }
        }
    }
});
