//! A raw-TCP session: `wire::tcp_frame::TcpFrameDecoder` over the socket, FlatBuffers
//! frames out with a u32 little-endian length prefix. There are no close codes on raw
//! TCP: every failure disconnects (after an `Error` frame where the protocol has one).

use std::time::Instant;

use futures_lite::{AsyncReadExt, AsyncWriteExt};
use glommio::net::TcpStream;
use wire::tcp_frame::{self, TcpFrameDecoder};

use crate::session::gate;
use crate::session::io::{race, Woken};
use crate::session::READ_BYTES;
use crate::shard::Shard;

/// Run the session to its end; the caller then closes the socket.
pub async fn run(shard: &Shard, stream: &mut TcpStream, accepted_at: Instant) {
    let mut decoder = TcpFrameDecoder::new(shard.config.max_frame_bytes);
    let deadline = accepted_at + shard.config.handshake_timeout;
    let mut stop = shard.shutdown.wait();
    loop {
        let reply = match decoder.poll() {
            Ok(Some(bytes)) => match wire::message::from_flatbuffers(bytes) {
                Ok(frame) => gate::before_hello(&frame).reply,
                Err(error) => return failed(shard, &error),
            },
            Ok(None) => {
                let read = stream.read(decoder.read_space(READ_BYTES));
                match race(read, deadline, Some(&mut stop)).await {
                    Woken::Io(Ok(n)) if n > 0 => decoder.commit_read(n, READ_BYTES),
                    _ => return, // EOF, error, handshake timeout or shutdown: disconnect
                }
                continue;
            }
            Err(error) => return failed(shard, &error),
        };
        // Not authenticated yet: answer the first frame and disconnect.
        let mut out = Vec::new();
        if tcp_frame::encode(&wire::message::to_flatbuffers(&reply), &mut out).is_ok() {
            let _ = stream.write_all(&out).await;
        }
        return;
    }
}

fn failed(shard: &Shard, error: &wire::WireError) {
    shard.counters().protocol_error();
    tracing::debug!(shard = shard.id, %error, "raw tcp connection failed");
}
