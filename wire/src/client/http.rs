//! The Confab HTTP API (`gateway/API.md`) over a minimal blocking HTTP/1.1 client.
//!
//! One request per connection: every request carries `Connection: close`, a body is sent
//! with `Content-Length` (and `Content-Type: application/json` unless a header says
//! otherwise), and the response ends at its `Content-Length` or, without one, when the
//! server closes. Chunked responses are not supported (the server never sends them). The
//! whole exchange is bounded by a timeout ([`DEFAULT_TIMEOUT`] unless given).
//!
//! [`request`] returns any response as it is; the typed calls ([`register`], [`login`],
//! [`refresh`], [`history`]) turn an error status into [`ClientError::Api`] (the server's
//! `{"error": {"code", "message"}}` body) or [`ClientError::Http`] (any other body).

use std::io::{ErrorKind, Read, Write};
use std::net::ToSocketAddrs;
use std::time::{Duration, Instant};

use serde::de::DeserializeOwned;
use serde::Deserialize;

use super::{connect_stream, host_header, ClientError, DEFAULT_TIMEOUT};
use crate::message::HistoryPage;

/// The largest response accepted (head and body): a history page of 200 messages with
/// 64 KiB bodies, base64-encoded, fits.
pub const RESPONSE_BYTES_MAX: usize = 32 * 1024 * 1024;

/// Headers accepted in one response.
const RESPONSE_HEADERS_MAX: usize = 64;

/// One HTTP response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpResponse {
    pub status: u16,
    /// Header names and values in the order received (values decoded lossily as UTF-8).
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl HttpResponse {
    /// The value of the first header called `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// The body as text (invalid UTF-8 replaced).
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    pub fn is_success(&self) -> bool {
        (200..300).contains(&self.status)
    }

    /// `self` if the status is 2xx; otherwise the API error in the body
    /// ([`ClientError::Api`]), or [`ClientError::Http`] if the body is not one.
    pub fn error_for_status(self) -> Result<HttpResponse, ClientError> {
        if self.is_success() {
            return Ok(self);
        }
        match serde_json::from_slice::<ApiErrorBody>(&self.body) {
            Ok(api) => Err(ClientError::Api {
                status: self.status,
                code: api.error.code,
                message: api.error.message,
            }),
            Err(_) => Err(ClientError::Http {
                status: self.status,
                body: self.text(),
            }),
        }
    }

    /// The body decoded as JSON.
    pub fn json<T: DeserializeOwned>(&self) -> Result<T, ClientError> {
        serde_json::from_slice(&self.body).map_err(|e| {
            ClientError::Protocol(format!("bad JSON in HTTP {} answer: {e}", self.status))
        })
    }
}

#[derive(Deserialize)]
struct ApiErrorBody {
    error: ApiErrorInner,
}

#[derive(Deserialize)]
struct ApiErrorInner {
    code: String,
    #[serde(default)]
    message: String,
}

/// The answer to [`login`] and [`refresh`]. Times are Unix milliseconds.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct Login {
    #[serde(with = "crate::json::u64_str")]
    pub user_id: u64,
    /// Keep it and pass it to the next [`login`] to keep this device's delivery cursors.
    #[serde(with = "crate::json::u64_str")]
    pub device_id: u64,
    /// For `Hello` and `Authorization: Bearer`.
    pub access_token: String,
    #[serde(with = "crate::json::u64_str")]
    pub access_expires_ms: u64,
    /// For [`refresh`].
    pub refresh_token: String,
    #[serde(with = "crate::json::u64_str")]
    pub refresh_expires_ms: u64,
}

#[derive(Deserialize)]
struct Registered {
    #[serde(with = "crate::json::u64_str")]
    user_id: u64,
}

/// `POST /v1/users`: create an account; the new user's id. A taken name is
/// `Api { status: 409, code: "conflict", .. }`.
pub fn register(
    addr: impl ToSocketAddrs,
    username: &str,
    password: &str,
) -> Result<u64, ClientError> {
    let body = serde_json::json!({ "username": username, "password": password }).to_string();
    let response = request(addr, "POST", "/v1/users", &[], Some(body.as_bytes()))?;
    Ok(response.error_for_status()?.json::<Registered>()?.user_id)
}

/// `POST /v1/login`. `device_id`: `None` (or `Some(0)`) registers a new device, otherwise
/// that existing device of the user logs in again; `device_name` labels a new device.
pub fn login(
    addr: impl ToSocketAddrs,
    username: &str,
    password: &str,
    device_id: Option<u64>,
    device_name: Option<&str>,
) -> Result<Login, ClientError> {
    let mut body = serde_json::json!({ "username": username, "password": password });
    if let Some(fields) = body.as_object_mut() {
        if let Some(id) = device_id {
            fields.insert("device_id".into(), id.to_string().into());
        }
        if let Some(name) = device_name {
            fields.insert("device_name".into(), name.into());
        }
    }
    let body = body.to_string();
    let response = request(addr, "POST", "/v1/login", &[], Some(body.as_bytes()))?;
    response.error_for_status()?.json()
}

/// `POST /v1/token/refresh`: new access and refresh tokens for a refresh token.
pub fn refresh(addr: impl ToSocketAddrs, refresh_token: &str) -> Result<Login, ClientError> {
    let body = serde_json::json!({ "refresh_token": refresh_token }).to_string();
    let response = request(
        addr,
        "POST",
        "/v1/token/refresh",
        &[],
        Some(body.as_bytes()),
    )?;
    response.error_for_status()?.json()
}

/// `GET /v1/conversations/{id}/messages`: a page of history, in ascending sequence order.
/// At most one of `before`/`after` may be non-zero (both zero: the newest page); `limit`
/// 0 means the server's default. Zero parameters are left out of the query.
pub fn history(
    addr: impl ToSocketAddrs,
    access_token: &str,
    conversation_id: u64,
    before: u64,
    after: u64,
    limit: u32,
) -> Result<HistoryPage, ClientError> {
    let mut path = format!("/v1/conversations/{conversation_id}/messages");
    let query: Vec<String> = [
        ("before", before),
        ("after", after),
        ("limit", limit.into()),
    ]
    .into_iter()
    .filter(|(_, value)| *value != 0)
    .map(|(name, value)| format!("{name}={value}"))
    .collect();
    if !query.is_empty() {
        path.push('?');
        path.push_str(&query.join("&"));
    }
    let auth = format!("Bearer {access_token}");
    let response = request(addr, "GET", &path, &[("Authorization", &auth)], None)?;
    response.error_for_status()?.json()
}

/// `POST /v1/messages`: send over the HTTP fallback (same idempotency as a socket send:
/// a retry with the same key answers the original ack, status `Duplicate`).
pub fn send(
    addr: impl ToSocketAddrs,
    access_token: &str,
    send: &crate::message::Send,
) -> Result<crate::message::Ack, ClientError> {
    let body = serde_json::to_vec(send)
        .map_err(|e| ClientError::Protocol(format!("encoding the send: {e}")))?;
    let auth = format!("Bearer {access_token}");
    let response = request(
        addr,
        "POST",
        "/v1/messages",
        &[("Authorization", &auth)],
        Some(&body),
    )?;
    response.error_for_status()?.json()
}

/// The path and query of a media URL (`/v1/media/...`), whether the server gave it
/// relative or absolute (a configured public base such as a CDN).
pub fn media_path(url: &str) -> &str {
    match url.split_once("://") {
        Some((_, rest)) => rest.find('/').and_then(|i| rest.get(i..)).unwrap_or("/"),
        None => url,
    }
}

/// `PUT` `bytes` to a signed upload URL (from `MediaPresignResponse.upload_url`) on the
/// server at `addr`. The response is returned whatever its status: 201 stored, 200
/// already stored, 400/403/413 refused (see `gateway/API.md`).
pub fn media_upload(
    addr: impl ToSocketAddrs,
    upload_url: &str,
    content_type: &str,
    bytes: &[u8],
) -> Result<HttpResponse, ClientError> {
    request(
        addr,
        "PUT",
        media_path(upload_url),
        &[("Content-Type", content_type)],
        Some(bytes),
    )
}

/// `GET` a signed download URL, optionally one byte range (inclusive `first..=last`,
/// as HTTP writes it). 200 whole, 206 the range, 403/404/416 refused.
pub fn media_download(
    addr: impl ToSocketAddrs,
    download_url: &str,
    range: Option<(u64, u64)>,
) -> Result<HttpResponse, ClientError> {
    let range = range.map(|(first, last)| format!("bytes={first}-{last}"));
    let headers: Vec<(&str, &str)> = range.iter().map(|r| ("Range", r.as_str())).collect();
    request(addr, "GET", media_path(download_url), &headers, None)
}

/// One long-poll answer: frames exactly as the JSON subprotocol sends them, and the
/// cursor to send with the next poll (which acknowledges these frames).
#[derive(Debug, Clone, PartialEq)]
pub struct PollAnswer {
    pub cursor: String,
    pub frames: Vec<crate::message::Frame>,
}

#[derive(Deserialize)]
struct RawPoll {
    cursor: String,
    frames: Vec<serde_json::Value>,
}

/// `POST /v1/poll`: what arrived for this device after `cursor` (none: a new session,
/// starting with a catch-up), waiting up to `timeout_ms` (the server caps it at 30 s).
pub fn poll(
    addr: impl ToSocketAddrs,
    access_token: &str,
    cursor: Option<&str>,
    timeout_ms: u64,
) -> Result<PollAnswer, ClientError> {
    let mut body = serde_json::json!({ "timeout_ms": timeout_ms });
    if let (Some(cursor), Some(fields)) = (cursor, body.as_object_mut()) {
        fields.insert("cursor".into(), cursor.into());
    }
    let body = body.to_string();
    let auth = format!("Bearer {access_token}");
    let response = request_with_timeout(
        addr,
        "POST",
        "/v1/poll",
        &[("Authorization", &auth)],
        Some(body.as_bytes()),
        Duration::from_millis(timeout_ms.min(30_000)) + DEFAULT_TIMEOUT,
    )?;
    let raw: RawPoll = response.error_for_status()?.json()?;
    let frames = raw
        .frames
        .iter()
        .map(|value| crate::json::from_json(&value.to_string()))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| ClientError::Protocol(format!("bad frame in a poll answer: {e}")))?;
    Ok(PollAnswer {
        cursor: raw.cursor,
        frames,
    })
}

/// Send one request and return the response, whatever its status. `body`, if any, goes
/// with `Content-Length` (and `Content-Type: application/json` unless `headers` sets
/// one). `Host`, `Connection: close` and `Content-Length` are added; `headers` may
/// replace `Host` but not set `Connection`, `Content-Length` or `Transfer-Encoding`.
pub fn request(
    addr: impl ToSocketAddrs,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: Option<&[u8]>,
) -> Result<HttpResponse, ClientError> {
    request_with_timeout(addr, method, path, headers, body, DEFAULT_TIMEOUT)
}

/// [`request`] with a timeout for connecting and, separately, for the whole exchange.
pub fn request_with_timeout(
    addr: impl ToSocketAddrs,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: Option<&[u8]>,
    timeout: Duration,
) -> Result<HttpResponse, ClientError> {
    let mut stream = connect_stream(addr, timeout)?;
    let deadline = Instant::now() + timeout;
    let host = host_header(stream.peer_addr()?);
    let bytes = format_request(method, &host, path, headers, body)?;
    // A server may answer (e.g. 413) and close before reading the whole body: the write
    // then fails, but the answer is still worth reading.
    let written = stream.write_all(&bytes).and_then(|()| stream.flush());
    let head_only = method.eq_ignore_ascii_case("HEAD");
    match (
        read_response(&mut stream, Vec::new(), deadline, head_only),
        written,
    ) {
        (Ok(response), _) => Ok(response),
        (Err(_), Err(write_error)) => Err(ClientError::Io(write_error)),
        (Err(read_error), Ok(())) => Err(read_error),
    }
}

/// Read one response, until it is complete or the server closes; `buf` holds what was
/// already read of it.
pub(super) fn read_response(
    stream: &mut std::net::TcpStream,
    mut buf: Vec<u8>,
    deadline: Instant,
    head_only: bool,
) -> Result<HttpResponse, ClientError> {
    if let Some(response) = parse(&buf, false, head_only)? {
        return Ok(response);
    }
    let mut chunk = vec![0u8; 16 * 1024];
    loop {
        let remaining = deadline.saturating_duration_since(Instant::now());
        if remaining.is_zero() {
            return Err(ClientError::Timeout);
        }
        stream.set_read_timeout(Some(remaining))?;
        let eof = match stream.read(&mut chunk) {
            Ok(0) => true,
            Ok(n) => {
                buf.extend_from_slice(chunk.get(..n).unwrap_or_default());
                false
            }
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => continue,
            Err(e) if e.kind() == ErrorKind::Interrupted => continue,
            // A reset after the answer arrived (the server closed with our bytes
            // unread) still leaves the answer.
            Err(e) if e.kind() == ErrorKind::ConnectionReset && !buf.is_empty() => true,
            Err(e) => return Err(e.into()),
        };
        if let Some(response) = parse(&buf, eof, head_only)? {
            return Ok(response);
        }
        if eof {
            // `parse` returns a response or an error at EOF; keep the compiler honest.
            return Err(ClientError::Protocol(
                "connection closed mid-response".into(),
            ));
        }
    }
}

/// Parse a response at the start of `buf`. `Ok(None)`: more bytes are needed. `eof`: the
/// server has closed, so nothing more is coming (a body without `Content-Length` ends
/// here; a short one is an error). Bytes after a `Content-Length` body are ignored.
pub fn parse_response(buf: &[u8], eof: bool) -> Result<Option<HttpResponse>, ClientError> {
    parse(buf, eof, false)
}

fn parse(buf: &[u8], eof: bool, head_only: bool) -> Result<Option<HttpResponse>, ClientError> {
    if buf.len() > RESPONSE_BYTES_MAX {
        return Err(ClientError::Protocol(format!(
            "HTTP response larger than {RESPONSE_BYTES_MAX} bytes"
        )));
    }
    let mut slots = [httparse::EMPTY_HEADER; RESPONSE_HEADERS_MAX];
    let mut response = httparse::Response::new(&mut slots);
    let head_len = match response.parse(buf) {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) if eof => {
            return Err(ClientError::Protocol(
                "connection closed before the HTTP response head was complete".into(),
            ))
        }
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(e) => {
            return Err(ClientError::Protocol(format!(
                "malformed HTTP response: {e}"
            )))
        }
    };
    let status = response.code.unwrap_or(0);
    let headers: Vec<(String, String)> = response
        .headers
        .iter()
        .map(|h| {
            let value = String::from_utf8_lossy(h.value).trim().to_string();
            (h.name.to_string(), value)
        })
        .collect();
    let find = |name: &str| {
        headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    };
    if find("Transfer-Encoding").is_some_and(|te| !te.eq_ignore_ascii_case("identity")) {
        return Err(ClientError::Protocol(
            "chunked HTTP responses are not supported".into(),
        ));
    }
    let rest = buf.get(head_len..).unwrap_or_default();
    let no_body = head_only || (100..200).contains(&status) || status == 204 || status == 304;
    let body = match find("Content-Length") {
        _ if no_body => Vec::new(),
        Some(value) => {
            let len: usize = value
                .parse()
                .map_err(|_| ClientError::Protocol(format!("bad Content-Length {value:?}")))?;
            if len > RESPONSE_BYTES_MAX {
                return Err(ClientError::Protocol(format!(
                    "HTTP body of {len} bytes is larger than {RESPONSE_BYTES_MAX}"
                )));
            }
            match rest.get(..len) {
                Some(body) => body.to_vec(),
                None if eof => {
                    return Err(ClientError::Protocol(format!(
                        "connection closed after {} of {len} body bytes",
                        rest.len()
                    )))
                }
                None => return Ok(None),
            }
        }
        None if eof => rest.to_vec(),
        None => return Ok(None),
    };
    Ok(Some(HttpResponse {
        status,
        headers,
        body,
    }))
}

/// The bytes of one request (see [`request`] for the headers it adds). Line breaks in any
/// part, or a header [`request`] sets itself, are refused.
pub fn format_request(
    method: &str,
    host: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: Option<&[u8]>,
) -> Result<Vec<u8>, ClientError> {
    let bad = |what: &str| {
        Err(ClientError::Protocol(format!(
            "invalid HTTP request {what}"
        )))
    };
    if method.is_empty() || !method.bytes().all(|b| b.is_ascii_alphabetic()) {
        return bad("method");
    }
    if !path.starts_with('/') || path.bytes().any(|b| b.is_ascii_whitespace() || b < 0x20) {
        return bad("path");
    }
    let mut host = host;
    let mut content_type = false;
    for (name, value) in headers {
        if name.is_empty()
            || !name
                .bytes()
                .all(|b| b.is_ascii_graphic() && b != b':' && b != b'"')
        {
            return bad("header name");
        }
        if value.bytes().any(|b| b == b'\r' || b == b'\n' || b == 0) {
            return bad("header value");
        }
        for reserved in ["Connection", "Content-Length", "Transfer-Encoding"] {
            if name.eq_ignore_ascii_case(reserved) {
                return bad(&format!("header {reserved} (the client sets it)"));
            }
        }
        if name.eq_ignore_ascii_case("Host") {
            host = value;
        }
        content_type |= name.eq_ignore_ascii_case("Content-Type");
    }
    if host.bytes().any(|b| b == b'\r' || b == b'\n' || b == 0) {
        return bad("host");
    }
    let mut out = format!("{method} {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n");
    for (name, value) in headers {
        if !name.eq_ignore_ascii_case("Host") {
            out.push_str(&format!("{name}: {value}\r\n"));
        }
    }
    if let Some(body) = body {
        if !content_type {
            out.push_str("Content-Type: application/json\r\n");
        }
        out.push_str(&format!("Content-Length: {}\r\n", body.len()));
    }
    out.push_str("\r\n");
    let mut out = out.into_bytes();
    out.extend_from_slice(body.unwrap_or_default());
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::{SocketAddr, TcpListener};
    use std::thread::JoinHandle;

    const RESPONSE: &[u8] = b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n\
                              Content-Length: 5\r\nConnection: close\r\n\r\nhello";

    #[test]
    fn post_request_has_length_type_and_close() {
        let bytes = format_request(
            "POST",
            "127.0.0.1:8080",
            "/v1/users",
            &[("X-Trace", "1")],
            Some(b"{}"),
        )
        .unwrap();
        assert_eq!(
            String::from_utf8(bytes).unwrap(),
            "POST /v1/users HTTP/1.1\r\nHost: 127.0.0.1:8080\r\nConnection: close\r\n\
             X-Trace: 1\r\nContent-Type: application/json\r\nContent-Length: 2\r\n\r\n{}"
        );
    }

    #[test]
    fn get_request_has_no_body_headers_and_host_can_be_replaced() {
        let bytes = format_request("GET", "h", "/healthz", &[("host", "example")], None).unwrap();
        assert_eq!(
            String::from_utf8(bytes).unwrap(),
            "GET /healthz HTTP/1.1\r\nHost: example\r\nConnection: close\r\n\r\n"
        );
        let typed = format_request(
            "PUT",
            "h",
            "/x",
            &[("Content-Type", "text/plain")],
            Some(b""),
        )
        .unwrap();
        let typed = String::from_utf8(typed).unwrap();
        assert!(typed.contains("Content-Type: text/plain\r\nContent-Length: 0\r\n\r\n"));
        assert!(!typed.contains("application/json"));
    }

    #[test]
    fn request_injection_is_refused() {
        type Case<'a> = (&'a str, &'a str, &'a [(&'a str, &'a str)]);
        let cases: [Case; 6] = [
            ("GET", "/a b", &[]),
            ("GET", "a", &[]),
            ("G T", "/", &[]),
            ("GET", "/", &[("X", "a\r\nEvil: 1")]),
            ("GET", "/", &[("X:Y", "a")]),
            ("GET", "/", &[("Content-Length", "3")]),
        ];
        for (method, path, headers) in cases {
            assert!(
                matches!(
                    format_request(method, "h", path, headers, None),
                    Err(ClientError::Protocol(_))
                ),
                "{method} {path} {headers:?}"
            );
        }
    }

    #[test]
    fn response_is_incomplete_until_its_last_byte_at_any_cut() {
        for cut in 0..RESPONSE.len() {
            assert_eq!(
                parse_response(&RESPONSE[..cut], false).unwrap(),
                None,
                "{cut}"
            );
            assert!(parse_response(&RESPONSE[..cut], true).is_err(), "{cut}");
        }
        let response = parse_response(RESPONSE, false).unwrap().unwrap();
        assert_eq!(response.status, 200);
        assert_eq!(response.body, b"hello");
        assert_eq!(response.header("content-type"), Some("text/plain"));
        // Bytes past Content-Length are not part of the body.
        let mut extra = RESPONSE.to_vec();
        extra.extend_from_slice(b"junk");
        assert_eq!(
            parse_response(&extra, true).unwrap().unwrap().body,
            b"hello"
        );
    }

    #[test]
    fn body_without_length_ends_at_eof() {
        let bytes = b"HTTP/1.1 200 OK\r\n\r\nok\n";
        assert_eq!(parse_response(bytes, false).unwrap(), None);
        assert_eq!(parse_response(bytes, true).unwrap().unwrap().body, b"ok\n");
        let empty = b"HTTP/1.1 204 No Content\r\n\r\n";
        assert_eq!(parse_response(empty, false).unwrap().unwrap().status, 204);
    }

    #[test]
    fn bad_responses_are_protocol_errors() {
        let cases: [&[u8]; 3] = [
            b"SMTP ready\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nContent-Length: x\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
        ];
        for bytes in cases {
            assert!(
                matches!(parse_response(bytes, false), Err(ClientError::Protocol(_))),
                "{}",
                String::from_utf8_lossy(bytes)
            );
        }
    }

    #[test]
    fn error_statuses_become_api_or_http_errors() {
        let body = r#"{"error":{"code":"conflict","message":"name taken"}}"#;
        let api = parse_response(&json_response("409 Conflict", body), false)
            .unwrap()
            .unwrap();
        match api.error_for_status() {
            Err(ClientError::Api {
                status,
                code,
                message,
            }) => assert_eq!((status, &*code, &*message), (409, "conflict", "name taken")),
            other => panic!("{other:?}"),
        }
        let plain = parse_response(b"HTTP/1.1 502 Bad Gateway\r\n\r\nupstream down", true)
            .unwrap()
            .unwrap();
        match plain.error_for_status() {
            Err(ClientError::Http { status, body }) => {
                assert_eq!((status, &*body), (502, "upstream down"))
            }
            other => panic!("{other:?}"),
        }
    }

    /// One-shot HTTP server: reads one request (head + Content-Length body), answers with
    /// `response` written a few bytes at a time, closes, and returns the request.
    fn serve_once(response: Vec<u8>) -> (SocketAddr, JoinHandle<String>) {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let handle = std::thread::spawn(move || {
            let (mut stream, _) = listener.accept().unwrap();
            stream
                .set_read_timeout(Some(Duration::from_secs(5)))
                .unwrap();
            stream.set_nodelay(true).unwrap();
            let mut buf = Vec::new();
            let mut chunk = [0u8; 1024];
            loop {
                let n = stream.read(&mut chunk).unwrap();
                assert!(n > 0, "client closed early");
                buf.extend_from_slice(&chunk[..n]);
                let mut headers = [httparse::EMPTY_HEADER; 16];
                let mut req = httparse::Request::new(&mut headers);
                if let httparse::Status::Complete(len) = req.parse(&buf).unwrap() {
                    let body_len = req
                        .headers
                        .iter()
                        .find(|h| h.name.eq_ignore_ascii_case("content-length"))
                        .map(|h| std::str::from_utf8(h.value).unwrap().parse().unwrap())
                        .unwrap_or(0);
                    if buf.len() >= len + body_len {
                        break;
                    }
                }
            }
            for piece in response.chunks(7) {
                stream.write_all(piece).unwrap();
                stream.flush().unwrap();
            }
            String::from_utf8(buf).unwrap()
        });
        (addr, handle)
    }

    fn json_response(status: &str, body: &str) -> Vec<u8> {
        format!(
            "HTTP/1.1 {status}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\
             Connection: close\r\n\r\n{body}",
            body.len()
        )
        .into_bytes()
    }

    fn request_body(request: &str) -> serde_json::Value {
        let (_, body) = request.split_once("\r\n\r\n").unwrap();
        serde_json::from_str(body).unwrap()
    }

    #[test]
    fn register_posts_credentials_and_reads_the_id() {
        let (addr, server) = serve_once(json_response("201 Created", r#"{"user_id":"123"}"#));
        assert_eq!(register(addr, "alice", "password1").unwrap(), 123);
        let request = server.join().unwrap();
        assert!(request.starts_with("POST /v1/users HTTP/1.1\r\n"));
        assert!(request.contains("Connection: close\r\n"));
        assert_eq!(
            request_body(&request),
            serde_json::json!({"username": "alice", "password": "password1"})
        );
    }

    #[test]
    fn login_sends_device_as_string_and_parses_the_answer() {
        let answer = r#"{"user_id":"123","device_id":"2","access_token":"v1.a",
            "access_expires_ms":"1790000000000","refresh_token":"v1.r",
            "refresh_expires_ms":"1792000000000"}"#;
        let (addr, server) = serve_once(json_response("200 OK", answer));
        let login = login(addr, "alice", "password1", Some(2), Some("phone")).unwrap();
        assert_eq!(
            login,
            Login {
                user_id: 123,
                device_id: 2,
                access_token: "v1.a".into(),
                access_expires_ms: 1_790_000_000_000,
                refresh_token: "v1.r".into(),
                refresh_expires_ms: 1_792_000_000_000,
            }
        );
        let body = request_body(&server.join().unwrap());
        assert_eq!(body["device_id"], "2");
        assert_eq!(body["device_name"], "phone");

        let (addr, server) = serve_once(json_response("200 OK", answer));
        refresh(addr, "v1.r").unwrap();
        let request = server.join().unwrap();
        assert!(request.starts_with("POST /v1/token/refresh "));
        assert_eq!(
            request_body(&request),
            serde_json::json!({"refresh_token": "v1.r"})
        );
    }

    #[test]
    fn history_sends_bearer_and_query_and_decodes_stored_messages() {
        let answer = r#"{"conversation_id":"9","has_more":true,"messages":[
            {"conversation_id":"9","seq":"4","message_id":"77","sender_user_id":"1",
             "sender_device_id":"1","timestamp_ms":"5","kind":"chat","body":"aGk=",
             "reply_to_seq":"0"}]}"#;
        let (addr, server) = serve_once(json_response("200 OK", answer));
        let page = history(addr, "tok", 9, 5, 0, 20).unwrap();
        assert_eq!(page.conversation_id, 9);
        assert!(page.has_more);
        assert_eq!(page.messages.len(), 1);
        assert_eq!(page.messages[0].seq, 4);
        assert_eq!(page.messages[0].body, b"hi");
        let request = server.join().unwrap();
        assert!(
            request.starts_with("GET /v1/conversations/9/messages?before=5&limit=20 HTTP/1.1\r\n"),
            "{request}"
        );
        assert!(request.contains("Authorization: Bearer tok\r\n"));
        assert!(!request.contains("Content-Length"));
    }

    #[test]
    fn api_errors_come_back_typed() {
        let body = r#"{"error":{"code":"unauthenticated","message":"wrong password"}}"#;
        let (addr, server) = serve_once(json_response("401 Unauthorized", body));
        let error = login(addr, "alice", "nope", None, None).unwrap_err();
        server.join().unwrap();
        assert_eq!(error.api_code(), Some("unauthenticated"));
        assert!(matches!(error, ClientError::Api { status: 401, .. }));
    }

    #[test]
    fn generic_request_returns_any_status_and_times_out() {
        let (addr, server) = serve_once(b"HTTP/1.1 404 Not Found\r\n\r\nnope".to_vec());
        let response = request(addr, "GET", "/nothing", &[], None).unwrap();
        assert_eq!((response.status, response.text().as_str()), (404, "nope"));
        server.join().unwrap();

        // A server that never answers.
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let start = Instant::now();
        let result = request_with_timeout(addr, "GET", "/", &[], None, Duration::from_millis(100));
        assert!(matches!(result, Err(ClientError::Timeout)), "{result:?}");
        assert!(start.elapsed() < Duration::from_secs(2));
    }
}
