//! The WebSocket opening handshake (RFC 6455 §4), both sides, sans-IO.
//!
//! Server: `parse_request` (or `validate_upgrade` on a request the HTTP layer already
//! parsed with httparse) → `write_accept` or `write_reject`. Client: `ClientHandshake::new`
//! writes the request, `parse_response` checks the answer. Both parsers return `Ok(None)`
//! while the head is incomplete, and refuse heads over `HANDSHAKE_REQUEST_BYTES_MAX`.
//!
//! Confab requires a subprotocol: `confab.v1` (binary FlatBuffers frames) or
//! `confab.v1.json` (the same schema as JSON text frames). The server picks the first one
//! in the client's order of preference that it speaks.

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine as _;
use sha1::{Digest, Sha1};

use crate::error::HandshakeError;
use crate::limits::{
    HANDSHAKE_HEADERS_MAX, HANDSHAKE_REQUEST_BYTES_MAX, HANDSHAKE_SUBPROTOCOLS_MAX,
};

/// The GUID every Sec-WebSocket-Accept is derived with (RFC 6455 §1.3).
const ACCEPT_GUID: &str = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11";

/// The WebSocket subprotocols Confab speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Subprotocol {
    /// `confab.v1`: one FlatBuffers `Frame` per binary message.
    Binary,
    /// `confab.v1.json`: one JSON `Frame` per text message.
    Json,
}

impl Subprotocol {
    pub const ALL: [Subprotocol; 2] = [Subprotocol::Binary, Subprotocol::Json];

    pub fn as_str(self) -> &'static str {
        match self {
            Subprotocol::Binary => "confab.v1",
            Subprotocol::Json => "confab.v1.json",
        }
    }

    pub fn from_token(token: &str) -> Option<Subprotocol> {
        Subprotocol::ALL.into_iter().find(|p| p.as_str() == token)
    }
}

/// A validated upgrade request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UpgradeRequest {
    /// Request target, including any query string.
    pub path: String,
    pub host: String,
    pub origin: Option<String>,
    /// The client's Sec-WebSocket-Key (24 base64 characters).
    pub key: String,
    pub subprotocol: Subprotocol,
}

/// Parse and validate an upgrade request at the start of `buf`. Returns the request and
/// the length of its head; bytes after it already belong to the WebSocket stream.
pub fn parse_request(buf: &[u8]) -> Result<Option<(UpgradeRequest, usize)>, HandshakeError> {
    let mut headers = [httparse::EMPTY_HEADER; HANDSHAKE_HEADERS_MAX];
    let mut request = httparse::Request::new(&mut headers);
    match request.parse(buf) {
        Ok(httparse::Status::Complete(len)) if len <= HANDSHAKE_REQUEST_BYTES_MAX => {
            Ok(Some((validate_upgrade(&request)?, len)))
        }
        Ok(httparse::Status::Partial) if buf.len() <= HANDSHAKE_REQUEST_BYTES_MAX => Ok(None),
        Ok(_) | Err(httparse::Error::TooManyHeaders) => Err(HandshakeError::RequestTooLarge {
            max: HANDSHAKE_REQUEST_BYTES_MAX,
        }),
        Err(_) => Err(HandshakeError::MalformedHttp),
    }
}

/// Validate a parsed HTTP request as a WebSocket upgrade for Confab.
pub fn validate_upgrade(request: &httparse::Request) -> Result<UpgradeRequest, HandshakeError> {
    if request.method != Some("GET") {
        return Err(HandshakeError::MethodNotGet);
    }
    if request.version != Some(1) {
        return Err(HandshakeError::HttpVersion);
    }
    let headers = &*request.headers;
    let host = header_str(headers, "Host").ok_or(HandshakeError::MissingHeader("Host"))?;
    if !header_has_token(headers, "Upgrade", "websocket") {
        return Err(HandshakeError::MissingHeader("Upgrade"));
    }
    if !header_has_token(headers, "Connection", "upgrade") {
        return Err(HandshakeError::MissingHeader("Connection"));
    }
    match header_str(headers, "Sec-WebSocket-Version") {
        Some("13") => {}
        Some(_) => return Err(HandshakeError::UnsupportedVersion),
        None => return Err(HandshakeError::MissingHeader("Sec-WebSocket-Version")),
    }
    let key = header_str(headers, "Sec-WebSocket-Key")
        .ok_or(HandshakeError::MissingHeader("Sec-WebSocket-Key"))?;
    match BASE64.decode(key) {
        Ok(raw) if raw.len() == 16 => {}
        _ => return Err(HandshakeError::InvalidKey),
    }
    let subprotocol = choose_subprotocol(headers)?;
    Ok(UpgradeRequest {
        path: request.path.unwrap_or("/").to_string(),
        host: host.to_string(),
        origin: header_str(headers, "Origin").map(str::to_string),
        key: key.to_string(),
        subprotocol,
    })
}

/// The first subprotocol, in the client's order, that Confab speaks.
fn choose_subprotocol(headers: &[httparse::Header]) -> Result<Subprotocol, HandshakeError> {
    let offered = headers
        .iter()
        .filter(|h| h.name.eq_ignore_ascii_case("Sec-WebSocket-Protocol"))
        .filter_map(|h| std::str::from_utf8(h.value).ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .take(HANDSHAKE_SUBPROTOCOLS_MAX);
    for token in offered {
        if let Some(protocol) = Subprotocol::from_token(token) {
            return Ok(protocol);
        }
    }
    Err(HandshakeError::NoSubprotocol)
}

/// Sec-WebSocket-Accept for a client key: base64(SHA-1(key + GUID)).
pub fn accept_key(key: &str) -> String {
    let mut sha = Sha1::new();
    sha.update(key.as_bytes());
    sha.update(ACCEPT_GUID.as_bytes());
    BASE64.encode(sha.finalize())
}

/// Append the 101 response that completes the handshake.
pub fn write_accept(request: &UpgradeRequest, out: &mut Vec<u8>) {
    out.extend_from_slice(b"HTTP/1.1 101 Switching Protocols\r\n");
    out.extend_from_slice(b"Upgrade: websocket\r\nConnection: Upgrade\r\n");
    push_header(out, "Sec-WebSocket-Accept", &accept_key(&request.key));
    push_header(out, "Sec-WebSocket-Protocol", request.subprotocol.as_str());
    out.extend_from_slice(b"\r\n");
}

/// Append a 4xx response explaining why the handshake was refused; the caller then
/// closes the connection.
pub fn write_reject(error: &HandshakeError, out: &mut Vec<u8>) {
    let status = error.http_status();
    let body = format!("{error}\n");
    out.extend_from_slice(format!("HTTP/1.1 {status} {}\r\n", reason_phrase(status)).as_bytes());
    if status == 426 {
        // RFC 6455 §4.4: tell the client which versions we speak.
        push_header(out, "Sec-WebSocket-Version", "13");
        out.extend_from_slice(b"Upgrade: websocket\r\n");
    }
    push_header(out, "Content-Type", "text/plain; charset=utf-8");
    push_header(out, "Content-Length", &body.len().to_string());
    out.extend_from_slice(b"Connection: close\r\n\r\n");
    out.extend_from_slice(body.as_bytes());
}

fn reason_phrase(status: u16) -> &'static str {
    match status {
        400 => "Bad Request",
        405 => "Method Not Allowed",
        426 => "Upgrade Required",
        431 => "Request Header Fields Too Large",
        _ => "Error",
    }
}

/// The client side of the handshake.
#[derive(Debug, Clone)]
pub struct ClientHandshake {
    key: String,
    offered: Vec<Subprotocol>,
}

impl ClientHandshake {
    /// Append an upgrade request for `path` on `host`, offering `protocols` in order of
    /// preference, with a fresh random key.
    pub fn new(host: &str, path: &str, protocols: &[Subprotocol], out: &mut Vec<u8>) -> Self {
        let mut raw = [0u8; 16];
        // A failure leaves a zero key: still a valid handshake, only less unpredictable.
        let _ = getrandom::fill(&mut raw);
        ClientHandshake::with_key(host, path, protocols, &BASE64.encode(raw), out)
    }

    /// As `new`, with a given key (tests).
    pub fn with_key(
        host: &str,
        path: &str,
        protocols: &[Subprotocol],
        key: &str,
        out: &mut Vec<u8>,
    ) -> Self {
        out.extend_from_slice(format!("GET {path} HTTP/1.1\r\n").as_bytes());
        push_header(out, "Host", host);
        out.extend_from_slice(b"Upgrade: websocket\r\nConnection: Upgrade\r\n");
        push_header(out, "Sec-WebSocket-Key", key);
        push_header(out, "Sec-WebSocket-Version", "13");
        let offered: Vec<&str> = protocols.iter().map(|p| p.as_str()).collect();
        push_header(out, "Sec-WebSocket-Protocol", &offered.join(", "));
        out.extend_from_slice(b"\r\n");
        ClientHandshake {
            key: key.to_string(),
            offered: protocols.to_vec(),
        }
    }

    /// Check the server's response at the start of `buf`: the chosen subprotocol and the
    /// length of the response head, or `Ok(None)` if incomplete.
    pub fn parse_response(
        &self,
        buf: &[u8],
    ) -> Result<Option<(Subprotocol, usize)>, HandshakeError> {
        let mut headers = [httparse::EMPTY_HEADER; HANDSHAKE_HEADERS_MAX];
        let mut response = httparse::Response::new(&mut headers);
        let len = match response.parse(buf) {
            Ok(httparse::Status::Complete(len)) if len <= HANDSHAKE_REQUEST_BYTES_MAX => len,
            Ok(httparse::Status::Partial) if buf.len() <= HANDSHAKE_REQUEST_BYTES_MAX => {
                return Ok(None)
            }
            Ok(_) | Err(httparse::Error::TooManyHeaders) => {
                return Err(HandshakeError::RequestTooLarge {
                    max: HANDSHAKE_REQUEST_BYTES_MAX,
                })
            }
            Err(_) => return Err(HandshakeError::MalformedHttp),
        };
        let code = response.code.unwrap_or(0);
        if code != 101 {
            return Err(HandshakeError::NotSwitching(code));
        }
        let headers = &*response.headers;
        if !header_has_token(headers, "Upgrade", "websocket") {
            return Err(HandshakeError::MissingHeader("Upgrade"));
        }
        if !header_has_token(headers, "Connection", "upgrade") {
            return Err(HandshakeError::MissingHeader("Connection"));
        }
        if header_str(headers, "Sec-WebSocket-Accept") != Some(accept_key(&self.key).as_str()) {
            return Err(HandshakeError::AcceptMismatch);
        }
        let chosen = header_str(headers, "Sec-WebSocket-Protocol")
            .and_then(Subprotocol::from_token)
            .filter(|p| self.offered.contains(p))
            .ok_or(HandshakeError::UnexpectedSubprotocol)?;
        Ok(Some((chosen, len)))
    }
}

fn push_header(out: &mut Vec<u8>, name: &str, value: &str) {
    out.extend_from_slice(name.as_bytes());
    out.extend_from_slice(b": ");
    out.extend_from_slice(value.as_bytes());
    out.extend_from_slice(b"\r\n");
}

/// The value of the first header called `name` (case-insensitive), trimmed.
fn header_str<'h>(headers: &'h [httparse::Header], name: &str) -> Option<&'h str> {
    headers
        .iter()
        .find(|h| h.name.eq_ignore_ascii_case(name))
        .and_then(|h| std::str::from_utf8(h.value).ok())
        .map(str::trim)
}

/// Whether any header called `name` lists `token` (comma-separated, case-insensitive).
fn header_has_token(headers: &[httparse::Header], name: &str, token: &str) -> bool {
    headers
        .iter()
        .filter(|h| h.name.eq_ignore_ascii_case(name))
        .filter_map(|h| std::str::from_utf8(h.value).ok())
        .flat_map(|v| v.split(','))
        .any(|t| t.trim().eq_ignore_ascii_case(token))
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &str = "dGhlIHNhbXBsZSBub25jZQ==";

    fn request(extra: &str) -> String {
        format!(
            "GET /ws HTTP/1.1\r\nHost: chat.example\r\nUpgrade: websocket\r\n\
             Connection: keep-alive, Upgrade\r\nSec-WebSocket-Key: {KEY}\r\n{extra}\r\n"
        )
    }

    fn with_defaults(extra: &str) -> String {
        request(&format!(
            "Sec-WebSocket-Version: 13\r\nSec-WebSocket-Protocol: confab.v1\r\n{extra}"
        ))
    }

    #[test]
    fn rfc_accept_key_example() {
        // RFC 6455 §1.3.
        assert_eq!(accept_key(KEY), "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=");
    }

    #[test]
    fn valid_request_is_accepted_and_trailing_bytes_are_left() {
        let mut bytes = with_defaults("Origin: http://x\r\n").into_bytes();
        let head_len = bytes.len();
        bytes.extend_from_slice(&[0x81, 0x80]);
        let (req, used) = parse_request(&bytes).unwrap().unwrap();
        assert_eq!(used, head_len);
        assert_eq!(req.path, "/ws");
        assert_eq!(req.host, "chat.example");
        assert_eq!(req.origin.as_deref(), Some("http://x"));
        assert_eq!(req.subprotocol, Subprotocol::Binary);
        let mut out = Vec::new();
        write_accept(&req, &mut out);
        let text = String::from_utf8(out).unwrap();
        assert!(text.starts_with("HTTP/1.1 101 Switching Protocols\r\n"));
        assert!(text.contains("Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n"));
        assert!(text.contains("Sec-WebSocket-Protocol: confab.v1\r\n"));
        assert!(text.ends_with("\r\n\r\n"));
    }

    #[test]
    fn partial_request_needs_more_bytes() {
        let bytes = with_defaults("").into_bytes();
        for cut in 0..bytes.len() {
            assert_eq!(parse_request(&bytes[..cut]), Ok(None), "cut {cut}");
        }
    }

    #[test]
    fn header_names_and_tokens_are_case_insensitive() {
        let text = "GET / HTTP/1.1\r\nhost: h\r\nupgrade: WebSocket\r\nconnection: UPGRADE\r\n\
                    sec-websocket-key: dGhlIHNhbXBsZSBub25jZQ==\r\nsec-websocket-version: 13\r\n\
                    sec-websocket-protocol: foo, confab.v1.json\r\n\r\n";
        let (req, _) = parse_request(text.as_bytes()).unwrap().unwrap();
        assert_eq!(req.subprotocol, Subprotocol::Json);
    }

    #[test]
    fn client_preference_order_decides_the_subprotocol() {
        let text = request(
            "Sec-WebSocket-Version: 13\r\nSec-WebSocket-Protocol: chat\r\n\
             Sec-WebSocket-Protocol: confab.v1.json, confab.v1\r\n",
        );
        let (req, _) = parse_request(text.as_bytes()).unwrap().unwrap();
        assert_eq!(req.subprotocol, Subprotocol::Json);
    }

    #[test]
    fn refusals_carry_the_right_status() {
        let cases: Vec<(String, HandshakeError, u16)> = vec![
            (
                with_defaults("").replacen("GET", "POST", 1),
                HandshakeError::MethodNotGet,
                405,
            ),
            (
                with_defaults("").replacen("HTTP/1.1", "HTTP/1.0", 1),
                HandshakeError::HttpVersion,
                400,
            ),
            (
                request("Sec-WebSocket-Version: 8\r\nSec-WebSocket-Protocol: confab.v1\r\n"),
                HandshakeError::UnsupportedVersion,
                426,
            ),
            (
                request("Sec-WebSocket-Protocol: confab.v1\r\n"),
                HandshakeError::MissingHeader("Sec-WebSocket-Version"),
                400,
            ),
            (
                with_defaults("").replace(KEY, "c2hvcnQ="),
                HandshakeError::InvalidKey,
                400,
            ),
            (
                with_defaults("").replace("Upgrade: websocket\r\n", ""),
                HandshakeError::MissingHeader("Upgrade"),
                400,
            ),
            (
                with_defaults("").replace("keep-alive, Upgrade", "keep-alive"),
                HandshakeError::MissingHeader("Connection"),
                400,
            ),
            (
                with_defaults("").replace("Host: chat.example\r\n", ""),
                HandshakeError::MissingHeader("Host"),
                400,
            ),
            (
                request("Sec-WebSocket-Version: 13\r\nSec-WebSocket-Protocol: chat\r\n"),
                HandshakeError::NoSubprotocol,
                400,
            ),
        ];
        for (text, expected, status) in cases {
            let err = parse_request(text.as_bytes()).unwrap_err();
            assert_eq!(err, expected, "{text}");
            assert_eq!(err.http_status(), status);
            let mut out = Vec::new();
            write_reject(&err, &mut out);
            let response = String::from_utf8(out).unwrap();
            assert!(
                response.starts_with(&format!("HTTP/1.1 {status} ")),
                "{response}"
            );
            assert_eq!(
                response.contains("Sec-WebSocket-Version: 13"),
                status == 426
            );
        }
    }

    #[test]
    fn oversized_or_garbage_heads_are_refused() {
        let huge = format!(
            "GET / HTTP/1.1\r\nX: {}\r\n",
            "a".repeat(HANDSHAKE_REQUEST_BYTES_MAX)
        );
        assert_eq!(
            parse_request(huge.as_bytes()),
            Err(HandshakeError::RequestTooLarge {
                max: HANDSHAKE_REQUEST_BYTES_MAX
            })
        );
        let many: String = (0..HANDSHAKE_HEADERS_MAX + 1)
            .map(|i| format!("X-{i}: v\r\n"))
            .collect();
        let text = format!("GET / HTTP/1.1\r\n{many}\r\n");
        assert!(matches!(
            parse_request(text.as_bytes()),
            Err(HandshakeError::RequestTooLarge { .. })
        ));
        assert_eq!(
            parse_request(b"\x16\x03\x01\x02\x00"),
            Err(HandshakeError::MalformedHttp)
        );
    }

    #[test]
    fn client_handshake_round_trip_and_checks() {
        let mut out = Vec::new();
        let hs = ClientHandshake::with_key("h:1", "/ws", &Subprotocol::ALL, KEY, &mut out);
        let (req, _) = parse_request(&out).unwrap().unwrap();
        let mut response = Vec::new();
        write_accept(&req, &mut response);
        let len = response.len();
        assert_eq!(
            hs.parse_response(&response),
            Ok(Some((Subprotocol::Binary, len)))
        );
        assert_eq!(hs.parse_response(&response[..len - 1]), Ok(None));

        let bad_accept = String::from_utf8(response.clone())
            .unwrap()
            .replace("s3pP", "AAAA");
        assert_eq!(
            hs.parse_response(bad_accept.as_bytes()),
            Err(HandshakeError::AcceptMismatch)
        );
        let other_proto = String::from_utf8(response.clone())
            .unwrap()
            .replace("confab.v1\r\n", "chat\r\n");
        assert_eq!(
            hs.parse_response(other_proto.as_bytes()),
            Err(HandshakeError::UnexpectedSubprotocol)
        );
        let mut refused = Vec::new();
        write_reject(&HandshakeError::NoSubprotocol, &mut refused);
        assert_eq!(
            hs.parse_response(&refused),
            Err(HandshakeError::NotSwitching(400))
        );
    }

    proptest::proptest! {
        /// Any client offer order, any key, any header-name case: our client's request is
        /// accepted by our server, and the server's answer by our client, with the
        /// client's first supported preference chosen.
        #[test]
        fn client_server_handshake_round_trip(
            key in proptest::array::uniform16(proptest::prelude::any::<u8>()),
            binary_first in proptest::prelude::any::<bool>(),
            both in proptest::prelude::any::<bool>(),
            path in "/[a-z0-9/?=&]{0,40}",
        ) {
            let mut offered = if binary_first { Subprotocol::ALL.to_vec() } else {
                vec![Subprotocol::Json, Subprotocol::Binary]
            };
            if !both {
                offered.truncate(1);
            }
            let key = BASE64.encode(key);
            let mut out = Vec::new();
            let hs = ClientHandshake::with_key("h", &path, &offered, &key, &mut out);
            let (req, used) = parse_request(&out).unwrap().unwrap();
            proptest::prop_assert_eq!(used, out.len());
            proptest::prop_assert_eq!(&req.path, &path);
            proptest::prop_assert_eq!(req.subprotocol, offered[0]);
            let mut response = Vec::new();
            write_accept(&req, &mut response);
            proptest::prop_assert_eq!(
                hs.parse_response(&response).unwrap(),
                Some((offered[0], response.len()))
            );
        }
    }

    #[test]
    fn random_client_keys_are_valid_and_differ() {
        let (mut a, mut b) = (Vec::new(), Vec::new());
        ClientHandshake::new("h", "/ws", &[Subprotocol::Binary], &mut a);
        ClientHandshake::new("h", "/ws", &[Subprotocol::Binary], &mut b);
        let (ra, _) = parse_request(&a).unwrap().unwrap();
        let (rb, _) = parse_request(&b).unwrap().unwrap();
        assert_ne!(ra.key, rb.key);
    }
}
