//! The HTTP port: one request per connection (`Connection: close`), routed by path.
//!
//! | request | answer |
//! |---|---|
//! | `GET /healthz` | 200 `ok` |
//! | `GET /metrics` | 200, Prometheus text |
//! | `GET /ws` + valid upgrade | 101, then a WebSocket session |
//! | `GET /ws`, bad upgrade | `wire`'s refusal (400/405/426/431 with a reason) |
//! | head over 8 KiB or over 32 headers | 431 |
//! | anything else | 404 (405 for a known path with another method) |

use std::time::Instant;

use futures_lite::{AsyncReadExt, AsyncWriteExt};
use glommio::net::TcpStream;
use wire::limits::{HANDSHAKE_HEADERS_MAX, HANDSHAKE_REQUEST_BYTES_MAX};
use wire::ws::handshake;
use wire::HandshakeError;

use crate::session::io::{race, Woken};
use crate::session::ws;
use crate::shard::Shard;

/// A parsed request head: what routing needs, owned so the read buffer can be reused.
enum Head {
    /// Complete; `len` bytes of head, the rest already belongs to the next protocol.
    Complete {
        len: usize,
    },
    TooLarge,
    Malformed,
}

/// Serve one HTTP request on `stream`.
pub async fn serve(shard: &Shard, stream: &mut TcpStream, accepted_at: Instant) {
    let deadline = accepted_at + shard.config.handshake_timeout;
    let mut buf = vec![0u8; HANDSHAKE_REQUEST_BYTES_MAX];
    let mut filled = 0;
    let head = loop {
        let Some(space) = buf.get_mut(filled..) else {
            break Head::TooLarge;
        };
        if space.is_empty() {
            break Head::TooLarge;
        }
        match race(stream.read(space), deadline, None).await {
            Woken::Io(Ok(n)) if n > 0 => filled += n,
            _ => return, // EOF, error or timeout before a full head: just close.
        }
        match parse_head(buf.get(..filled).unwrap_or_default()) {
            Some(head) => break head,
            None => continue,
        }
    };
    let mut out = Vec::with_capacity(512);
    match head {
        Head::TooLarge => {
            let error = HandshakeError::RequestTooLarge {
                max: HANDSHAKE_REQUEST_BYTES_MAX,
            };
            handshake::write_reject(&error, &mut out);
        }
        Head::Malformed => respond(&mut out, 400, "malformed HTTP request\n", "text/plain"),
        Head::Complete { len } => {
            let request = buf.get(..filled).unwrap_or_default();
            if let Some(upgrade) = route(shard, request, &mut out) {
                if stream.write_all(&out).await.is_err() {
                    return;
                }
                let rest = buf.get(len..filled).unwrap_or_default().to_vec();
                drop(buf);
                ws::run(shard, stream, &upgrade, &rest, accepted_at).await;
                return;
            }
        }
    }
    let _ = stream.write_all(&out).await;
}

/// `None` while the head is incomplete.
fn parse_head(bytes: &[u8]) -> Option<Head> {
    let mut headers = [httparse::EMPTY_HEADER; HANDSHAKE_HEADERS_MAX];
    let mut request = httparse::Request::new(&mut headers);
    match request.parse(bytes) {
        Ok(httparse::Status::Complete(len)) => Some(Head::Complete { len }),
        Ok(httparse::Status::Partial) => None,
        Err(httparse::Error::TooManyHeaders) => Some(Head::TooLarge),
        Err(_) => Some(Head::Malformed),
    }
}

/// Answer a complete request into `out`, or return the upgrade to accept (with the 101
/// already in `out`).
fn route(shard: &Shard, request: &[u8], out: &mut Vec<u8>) -> Option<handshake::UpgradeRequest> {
    let mut headers = [httparse::EMPTY_HEADER; HANDSHAKE_HEADERS_MAX];
    let mut parsed = httparse::Request::new(&mut headers);
    if parsed.parse(request).is_err() {
        respond(out, 400, "malformed HTTP request\n", "text/plain");
        return None;
    }
    let path = parsed.path.unwrap_or("/");
    let path = path.split_once('?').map_or(path, |(p, _)| p);
    let is_get = parsed.method == Some("GET");
    match path {
        "/ws" => match handshake::validate_upgrade(&parsed) {
            Ok(upgrade) => {
                handshake::write_accept(&upgrade, out);
                return Some(upgrade);
            }
            Err(error) => {
                tracing::debug!(shard = shard.id, %error, "websocket upgrade refused");
                handshake::write_reject(&error, out);
            }
        },
        "/healthz" | "/metrics" if !is_get => {
            respond(out, 405, "method not allowed\n", "text/plain")
        }
        "/healthz" => respond(out, 200, "ok\n", "text/plain"),
        "/metrics" => {
            let body = shard.metrics.render();
            respond(out, 200, &body, "text/plain; version=0.0.4")
        }
        _ => respond(out, 404, "not found\n", "text/plain"),
    }
    None
}

fn respond(out: &mut Vec<u8>, status: u16, body: &str, content_type: &str) {
    let reason = match status {
        200 => "OK",
        400 => "Bad Request",
        404 => "Not Found",
        405 => "Method Not Allowed",
        _ => "Error",
    };
    let head = format!(
        "HTTP/1.1 {status} {reason}\r\nContent-Type: {content_type}; charset=utf-8\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    out.extend_from_slice(head.as_bytes());
    out.extend_from_slice(body.as_bytes());
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn incomplete_heads_wait_for_more() {
        assert!(parse_head(b"GET /healthz HTTP/1.1\r\nHost: x\r\n").is_none());
        assert!(matches!(
            parse_head(b"GET /healthz HTTP/1.1\r\n\r\nrest"),
            Some(Head::Complete { len: 25 })
        ));
        assert!(matches!(
            parse_head(b"\x00\x01 nonsense\r\n\r\n"),
            Some(Head::Malformed)
        ));
    }

    #[test]
    fn too_many_headers_is_too_large() {
        let mut request = b"GET / HTTP/1.1\r\n".to_vec();
        for i in 0..=HANDSHAKE_HEADERS_MAX {
            request.extend_from_slice(format!("X-{i}: y\r\n").as_bytes());
        }
        request.extend_from_slice(b"\r\n");
        assert!(matches!(parse_head(&request), Some(Head::TooLarge)));
    }

    #[test]
    fn responses_carry_length_and_close() {
        let mut out = Vec::new();
        respond(&mut out, 200, "ok\n", "text/plain");
        let text = String::from_utf8(out).unwrap();
        assert!(text.starts_with("HTTP/1.1 200 OK\r\n"));
        assert!(text.contains("Content-Length: 3\r\n"));
        assert!(text.ends_with("\r\n\r\nok\n"));
    }
}
