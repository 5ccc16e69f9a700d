//! The HTTP port: one request per connection (`Connection: close`), routed by path.
//!
//! | request | answer |
//! |---|---|
//! | `GET /healthz` | 200 `ok` |
//! | `GET /metrics` | 200, Prometheus text |
//! | `GET /ws` + valid upgrade | 101, then a WebSocket session |
//! | `GET /ws`, bad upgrade | `wire`'s refusal (400/405/426/431 with a reason) |
//! | `/v1/media/<sha256>?…` | media objects behind signed URLs ([`crate::media::http`]) |
//! | `/v1/...` | the JSON API ([`crate::api`], `gateway/API.md`) |
//! | body over `HTTP_BODY_BYTES_MAX` | 413 |
//! | head over 8 KiB or over 32 headers | 431 |
//! | anything else | 404 (405 for a known path with another method) |

use std::rc::Rc;
use std::time::Instant;

use futures_lite::{AsyncReadExt, AsyncWriteExt};
use glommio::net::TcpStream;
use wire::limits::{HANDSHAKE_HEADERS_MAX, HANDSHAKE_REQUEST_BYTES_MAX};
use wire::ws::handshake;
use wire::HandshakeError;

use crate::api::{self, HTTP_BODY_BYTES_MAX};
use crate::session::codec::Transport;
use crate::session::io::{race, Woken};
use crate::session::live::{self, Ended};
use crate::shard::Shard;
use crate::web;

/// A parsed request head: what routing needs, owned so the read buffer can be reused.
enum Head {
    /// Complete; `len` bytes of head, the rest already belongs to the next protocol.
    Complete {
        len: usize,
    },
    TooLarge,
    Malformed,
}

/// What the head asked for.
enum Routed {
    /// The answer is in `out`.
    Answered,
    /// A WebSocket upgrade (the 101 is in `out`).
    Upgrade(handshake::UpgradeRequest),
    /// An API request with a body of this many bytes.
    Api { body_len: usize },
    /// A media object URL (`crate::media::http`), which reads and writes for itself.
    Media,
}

/// Serve one HTTP request on `stream`.
pub async fn serve(shard: &Rc<Shard>, stream: &mut TcpStream, accepted_at: Instant) -> Ended {
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
            _ => return Ended::Close, // EOF, error or timeout before a full head.
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
            match route(shard, request, &mut out) {
                Routed::Answered => {}
                Routed::Upgrade(upgrade) => {
                    if stream.write_all(&out).await.is_err() {
                        return Ended::Close;
                    }
                    let rest = buf.get(len..filled).unwrap_or_default().to_vec();
                    drop(buf);
                    // The WebSocket gauge counts sessions: the session task keeps it.
                    let transport = Transport::Ws(upgrade.subprotocol);
                    return live::run(shard, stream, transport, &rest, accepted_at).await;
                }
                Routed::Media => {
                    let head = buf.get(..len).unwrap_or_default();
                    let rest = buf.get(len..filled).unwrap_or_default();
                    crate::media::http::serve(shard, stream, head, rest).await;
                    return Ended::Close;
                }
                Routed::Api { body_len } => {
                    let mut body = buf.get(len..filled).unwrap_or_default().to_vec();
                    while body.len() < body_len {
                        let mut chunk = vec![0u8; (body_len - body.len()).min(16 * 1024)];
                        match race(stream.read(&mut chunk), deadline, None).await {
                            Woken::Io(Ok(n)) if n > 0 => {
                                body.extend_from_slice(chunk.get(..n).unwrap_or_default())
                            }
                            _ => return Ended::Close,
                        }
                    }
                    body.truncate(body_len);
                    let mut headers = [httparse::EMPTY_HEADER; HANDSHAKE_HEADERS_MAX];
                    let mut parsed = httparse::Request::new(&mut headers);
                    let head = request.get(..len).unwrap_or_default();
                    if parsed.parse(head).is_err() {
                        return Ended::Close;
                    }
                    let target = parsed.path.unwrap_or("/");
                    let (path, query) = target.split_once('?').unwrap_or((target, ""));
                    let authorization =
                        header(&parsed, "authorization").and_then(|v| std::str::from_utf8(v).ok());
                    let response = api::handle(
                        shard,
                        api::Request {
                            method: parsed.method.unwrap_or(""),
                            path,
                            query,
                            authorization,
                            body: &body,
                        },
                    )
                    .await;
                    respond(
                        &mut out,
                        response.status,
                        &response.body,
                        "application/json",
                    );
                }
            }
        }
    }
    let _ = stream.write_all(&out).await;
    Ended::Close
}

fn header<'a>(request: &httparse::Request<'_, 'a>, name: &str) -> Option<&'a [u8]> {
    request
        .headers
        .iter()
        .find(|h| h.name.eq_ignore_ascii_case(name))
        .map(|h| h.value)
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

/// Answer a complete request into `out`, or say what else it needs.
fn route(shard: &Shard, request: &[u8], out: &mut Vec<u8>) -> Routed {
    let mut headers = [httparse::EMPTY_HEADER; HANDSHAKE_HEADERS_MAX];
    let mut parsed = httparse::Request::new(&mut headers);
    if parsed.parse(request).is_err() {
        respond(out, 400, "malformed HTTP request\n", "text/plain");
        return Routed::Answered;
    }
    let path = parsed.path.unwrap_or("/");
    let path = path.split_once('?').map_or(path, |(p, _)| p);
    let is_get = parsed.method == Some("GET");
    if crate::media::http::owns(path) {
        return Routed::Media;
    }
    if api::owns(path) {
        let length = header(&parsed, "content-length").map(|v| {
            std::str::from_utf8(v)
                .ok()
                .and_then(|s| s.trim().parse::<usize>().ok())
        });
        return match length {
            None => Routed::Api { body_len: 0 },
            Some(Some(n)) if n <= HTTP_BODY_BYTES_MAX => Routed::Api { body_len: n },
            Some(Some(_)) => {
                let body = format!("{{\"error\":{{\"code\":\"too_large\",\"message\":\"body over {HTTP_BODY_BYTES_MAX} bytes\"}}}}");
                respond(out, 413, &body, "application/json");
                Routed::Answered
            }
            Some(None) => {
                respond(out, 400, "bad Content-Length\n", "text/plain");
                Routed::Answered
            }
        };
    }
    match path {
        "/ws" => match handshake::validate_upgrade(&parsed) {
            Ok(upgrade) => {
                handshake::write_accept(&upgrade, out);
                return Routed::Upgrade(upgrade);
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
        path if web::find(path).is_some() => match (parsed.method, web::find(path)) {
            (Some(method @ ("GET" | "HEAD")), Some((index, _))) => web::respond(
                index,
                header(&parsed, "if-none-match"),
                method == "HEAD",
                out,
            ),
            _ => respond(out, 405, "method not allowed\n", "text/plain"),
        },
        "/metrics" => {
            let body = shard.metrics.render();
            respond(out, 200, &body, "text/plain; version=0.0.4")
        }
        _ => respond(out, 404, "not found\n", "text/plain"),
    }
    Routed::Answered
}

fn respond(out: &mut Vec<u8>, status: u16, body: &str, content_type: &str) {
    let reason = match status {
        200 => "OK",
        201 => "Created",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        409 => "Conflict",
        413 => "Payload Too Large",
        429 => "Too Many Requests",
        503 => "Service Unavailable",
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
