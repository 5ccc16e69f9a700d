//! `PUT` and `GET`/`HEAD` of `/v1/media/<sha256 hex>?<signed query>`.
//!
//! | request | answer |
//! |---|---|
//! | bad, forged or foreign signature | 403 `forged` |
//! | expired URL | 403 `expired` |
//! | `PUT`, no `Content-Length` | 411 |
//! | `PUT`, `Content-Length` ≠ signed size | 400 `size_mismatch` (nothing read) |
//! | `PUT`, body hash ≠ signed hash | 400 `hash_mismatch` (nothing stored) |
//! | `PUT`, verified | 201 (stored) or 200 (it already was) |
//! | `PUT`, too many uploads on this shard | 503 |
//! | `GET`, object missing | 404 |
//! | `GET` | 200, or 206 for one satisfiable `Range`, 416 otherwise |
//!
//! An upload is checked before its body is read (signature, expiry, size, type), read
//! within `media_transfer_timeout`, hashed as it arrives, and written to the store only
//! when the whole body matches. Downloads are streamed in [`DOWNLOAD_CHUNK_BYTES`]
//! pieces, and served with `nosniff` and a sandboxing CSP, so an object cannot run as a
//! page of this origin whatever its bytes are.

use std::rc::Rc;
use std::time::Instant;

use bytes::BytesMut;
use futures_lite::{AsyncReadExt, AsyncWriteExt};
use glommio::net::TcpStream;
use sha2::{Digest, Sha256};
use wire::limits::HANDSHAKE_HEADERS_MAX;

use super::signing::{self, Grant, Op, UrlError};
use super::DOWNLOAD_CHUNK_BYTES;
use crate::chat;
use crate::session::io::{race, Woken};
use crate::shard::Shard;

/// Whether `path` is a media object URL.
pub fn owns(path: &str) -> bool {
    path.starts_with("/v1/media/")
}

/// A refusal: status, short code, message.
struct Refusal(u16, &'static str, String);

impl From<UrlError> for Refusal {
    fn from(error: UrlError) -> Refusal {
        let code = match error {
            UrlError::Expired => "expired",
            UrlError::Malformed(_) => "malformed",
            UrlError::Forged | UrlError::WrongOperation => "forged",
        };
        Refusal(403, code, error.to_string())
    }
}

/// Serve one media request; `head` is the request head, `rest` what was read after it.
pub async fn serve(shard: &Rc<Shard>, stream: &mut TcpStream, head: &[u8], rest: &[u8]) {
    let mut headers = [httparse::EMPTY_HEADER; HANDSHAKE_HEADERS_MAX];
    let mut request = httparse::Request::new(&mut headers);
    if request.parse(head).is_err() {
        return;
    }
    let header = |name: &str| {
        request
            .headers
            .iter()
            .find(|h| h.name.eq_ignore_ascii_case(name))
            .and_then(|h| std::str::from_utf8(h.value).ok())
    };
    let target = request.path.unwrap_or("/");
    let (path, query) = target.split_once('?').unwrap_or((target, ""));
    let method = request.method.unwrap_or("");
    let result = match super::parse_hex(path.trim_start_matches("/v1/media/")) {
        None => Err(Refusal(404, "not_found", "no such object".into())),
        Some(sha256) => match method {
            "PUT" => {
                let length = header("content-length").map(|v| {
                    let v = v.trim();
                    // RFC 9112: digits only (no sign, no list of lengths).
                    if v.is_empty() || !v.bytes().all(|b| b.is_ascii_digit()) {
                        return Err(());
                    }
                    v.parse::<u64>().map_err(|_| ())
                });
                if header("transfer-encoding").is_some() {
                    shard.counters().media_refused();
                    let _ = stream
                        .write_all(
                            b"HTTP/1.1 411 Length Required\r\nContent-Length: 0\r\n\
                              Connection: close\r\n\r\n",
                        )
                        .await;
                    return;
                }
                let expect =
                    header("expect").is_some_and(|v| v.eq_ignore_ascii_case("100-continue"));
                upload(shard, stream, sha256.0, query, length, expect, rest).await
            }
            "GET" | "HEAD" => {
                let range = header("range").map(str::to_owned);
                download(shard, stream, sha256.0, query, range, method == "HEAD").await
            }
            _ => Err(Refusal(
                405,
                "method_not_allowed",
                "use PUT, GET or HEAD".into(),
            )),
        },
    };
    if let Err(Refusal(status, code, message)) = result {
        shard.counters().media_refused();
        tracing::debug!(shard = shard.id, status, code, %message, "media request refused");
        let body = serde_json::json!({"error": {"code": code, "message": message}}).to_string();
        let head = format!(
            "HTTP/1.1 {status} {}\r\nContent-Type: application/json\r\n\
             Content-Length: {}\r\nConnection: close\r\n\r\n",
            reason(status),
            body.len()
        );
        let _ = stream.write_all(head.as_bytes()).await;
        let _ = stream.write_all(body.as_bytes()).await;
    }
}

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        201 => "Created",
        206 => "Partial Content",
        400 => "Bad Request",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        411 => "Length Required",
        413 => "Payload Too Large",
        416 => "Range Not Satisfiable",
        503 => "Service Unavailable",
        _ => "Error",
    }
}

/// Counts one upload on this shard while it runs.
struct UploadSlot<'a>(&'a Shard);

impl<'a> UploadSlot<'a> {
    fn take(shard: &'a Shard) -> Option<UploadSlot<'a>> {
        let running = shard.media_uploads.get();
        if running >= shard.config.media_uploads_per_shard {
            return None;
        }
        shard.media_uploads.set(running + 1);
        Some(UploadSlot(shard))
    }
}

impl Drop for UploadSlot<'_> {
    fn drop(&mut self) {
        self.0
            .media_uploads
            .set(self.0.media_uploads.get().saturating_sub(1));
    }
}

async fn upload(
    shard: &Rc<Shard>,
    stream: &mut TcpStream,
    sha256: [u8; 32],
    query: &str,
    length: Option<Result<u64, ()>>,
    expect_continue: bool,
    rest: &[u8],
) -> Result<(), Refusal> {
    let key = signing::url_key(&shard.token_key);
    let grant = Grant::verify(sha256, query, Op::Put, &key, chat::now_ms())?;
    let length = match length {
        None => {
            return Err(Refusal(
                411,
                "length_required",
                "Content-Length is required".into(),
            ))
        }
        Some(Err(_)) => return Err(Refusal(400, "malformed", "bad Content-Length".into())),
        Some(Ok(n)) => n,
    };
    if length != grant.size {
        return Err(Refusal(
            400,
            "size_mismatch",
            format!(
                "body is {length} bytes, the URL was signed for {}",
                grant.size
            ),
        ));
    }
    // Signed sizes were checked at presign; the configuration may have shrunk since.
    if length > shard.config.media_bytes_max {
        return Err(Refusal(
            413,
            "too_large",
            "media over the size limit".into(),
        ));
    }
    let Some(_slot) = UploadSlot::take(shard) else {
        return Err(Refusal(503, "busy", "too many uploads in progress".into()));
    };
    if expect_continue
        && stream
            .write_all(b"HTTP/1.1 100 Continue\r\n\r\n")
            .await
            .is_err()
    {
        return Ok(());
    }
    let size = usize::try_from(length).unwrap_or(usize::MAX);
    // Grows as bytes arrive: a client that announces much and sends little holds little.
    let mut body = BytesMut::with_capacity(size.min(DOWNLOAD_CHUNK_BYTES as usize));
    let mut hash = Sha256::new();
    let first = rest.get(..size.min(rest.len())).unwrap_or_default();
    body.extend_from_slice(first);
    hash.update(first);
    let deadline = Instant::now() + shard.config.media_transfer_timeout;
    let mut chunk = vec![0u8; 64 * 1024];
    while body.len() < size {
        let want = (size - body.len()).min(chunk.len());
        let Some(space) = chunk.get_mut(..want) else {
            break;
        };
        match race(stream.read(space), deadline, None).await {
            Woken::Io(Ok(n)) if n > 0 => {
                let got = space.get(..n).unwrap_or_default();
                body.extend_from_slice(got);
                hash.update(got);
            }
            // The client went away or was too slow: nothing was stored.
            _ => return Ok(()),
        }
    }
    let digest: [u8; 32] = hash.finalize().into();
    if digest != sha256 {
        return Err(Refusal(
            400,
            "hash_mismatch",
            "the body does not match the signed SHA-256; nothing was stored".into(),
        ));
    }
    let store = &shard.media;
    // Stored with another size can only be a damaged object: overwrite it.
    let existed = store.head(&sha256).await.map_err(store_refusal)? == Some(length);
    if !existed {
        store
            .put(&sha256, body.freeze())
            .await
            .map_err(store_refusal)?;
        shard.counters().media_uploaded(length);
        tracing::info!(shard = shard.id, user = grant.user_id, size = length,
            sha256 = %super::hex(&sha256), "media stored");
    }
    let (status, body) = if existed {
        (200, "exists")
    } else {
        (201, "stored")
    };
    let json = serde_json::json!({
        "status": body,
        "sha256": super::hex(&sha256),
        "size": length.to_string(),
    })
    .to_string();
    let head = format!(
        "HTTP/1.1 {status} {}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\
         Connection: close\r\n\r\n",
        reason(status),
        json.len()
    );
    let _ = stream.write_all(head.as_bytes()).await;
    let _ = stream.write_all(json.as_bytes()).await;
    Ok(())
}

fn store_refusal(error: super::store::StoreError) -> Refusal {
    tracing::warn!(%error, "media store request failed");
    Refusal(503, "unavailable", error.to_string())
}

/// What a `Range` header asks of an object of `size` bytes.
#[derive(Debug, PartialEq, Eq)]
pub enum RangeAsk {
    /// No usable range: the whole object (also for several ranges, which RFC 9110
    /// lets a server ignore).
    Whole,
    /// Bytes `start..end`.
    Part(u64, u64),
    /// Nothing of it exists (416).
    Unsatisfiable,
}

/// Parse a `Range` header (`bytes=a-b`, `bytes=a-`, `bytes=-n`) for `size` bytes.
pub fn parse_range(header: Option<&str>, size: u64) -> RangeAsk {
    let Some(spec) = header.and_then(|h| h.trim().strip_prefix("bytes=")) else {
        return RangeAsk::Whole;
    };
    if spec.contains(',') {
        return RangeAsk::Whole;
    }
    let Some((first, last)) = spec.trim().split_once('-') else {
        return RangeAsk::Whole;
    };
    let (first, last) = (first.trim(), last.trim());
    let parse = |s: &str| s.parse::<u64>().ok();
    match (first.is_empty(), last.is_empty()) {
        // The last n bytes.
        (true, false) => match parse(last) {
            None => RangeAsk::Whole,
            Some(0) => RangeAsk::Unsatisfiable,
            Some(_) if size == 0 => RangeAsk::Unsatisfiable,
            Some(n) => RangeAsk::Part(size.saturating_sub(n), size),
        },
        (false, _) => {
            let Some(start) = parse(first) else {
                return RangeAsk::Whole;
            };
            let end = if last.is_empty() {
                size
            } else {
                match parse(last) {
                    Some(l) if l >= start => l.saturating_add(1).min(size),
                    _ => return RangeAsk::Whole,
                }
            };
            if start >= size {
                RangeAsk::Unsatisfiable
            } else {
                RangeAsk::Part(start, end)
            }
        }
        (true, true) => RangeAsk::Whole,
    }
}

async fn download(
    shard: &Rc<Shard>,
    stream: &mut TcpStream,
    sha256: [u8; 32],
    query: &str,
    range: Option<String>,
    head_only: bool,
) -> Result<(), Refusal> {
    let key = signing::url_key(&shard.token_key);
    let now = chat::now_ms();
    let grant = Grant::verify(sha256, query, Op::Get, &key, now)?;
    let store = &shard.media;
    let Some(size) = store.head(&sha256).await.map_err(store_refusal)? else {
        return Err(Refusal(404, "not_found", "no such object".into()));
    };
    let (status, start, end) = match parse_range(range.as_deref(), size) {
        RangeAsk::Whole => (200, 0, size),
        RangeAsk::Part(start, end) => (206, start, end),
        RangeAsk::Unsatisfiable => {
            let head = format!(
                "HTTP/1.1 416 {}\r\nContent-Range: bytes */{size}\r\nContent-Length: 0\r\n\
                 Connection: close\r\n\r\n",
                reason(416)
            );
            let _ = stream.write_all(head.as_bytes()).await;
            return Ok(());
        }
    };
    let content_range = if status == 206 {
        format!(
            "Content-Range: bytes {start}-{}/{size}\r\n",
            end.saturating_sub(1)
        )
    } else {
        String::new()
    };
    let max_age = grant.expires_ms.saturating_sub(now) / 1000;
    let head = format!(
        "HTTP/1.1 {status} {}\r\nContent-Type: {}\r\nContent-Length: {}\r\n{content_range}\
         Accept-Ranges: bytes\r\nETag: \"{}\"\r\nCache-Control: private, max-age={max_age}\r\n\
         X-Content-Type-Options: nosniff\r\n\
         Content-Security-Policy: sandbox; default-src 'none'\r\nConnection: close\r\n\r\n",
        reason(status),
        grant.content_type,
        end - start,
        super::hex(&sha256),
    );
    if stream.write_all(head.as_bytes()).await.is_err() || head_only {
        return Ok(());
    }
    let mut at = start;
    while at < end {
        let upto = (at + DOWNLOAD_CHUNK_BYTES).min(end);
        let bytes = match store.get(&sha256, at..upto).await {
            Ok(bytes) => bytes,
            Err(error) => {
                // The head is out: all we can do is cut the response short.
                tracing::warn!(%error, "media read failed mid-download");
                return Ok(());
            }
        };
        if stream.write_all(&bytes).await.is_err() {
            return Ok(());
        }
        shard.counters().media_bytes_out(bytes.len() as u64);
        at = upto;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_follow_rfc_9110() {
        use RangeAsk::*;
        assert_eq!(parse_range(None, 100), Whole);
        assert_eq!(parse_range(Some("bytes=0-9"), 100), Part(0, 10));
        assert_eq!(parse_range(Some("bytes=90-"), 100), Part(90, 100));
        assert_eq!(parse_range(Some("bytes=90-500"), 100), Part(90, 100));
        assert_eq!(parse_range(Some("bytes=-10"), 100), Part(90, 100));
        assert_eq!(parse_range(Some("bytes=-500"), 100), Part(0, 100));
        assert_eq!(parse_range(Some("bytes=100-"), 100), Unsatisfiable);
        assert_eq!(parse_range(Some("bytes=-0"), 100), Unsatisfiable);
        assert_eq!(parse_range(Some("bytes=5-2"), 100), Whole);
        assert_eq!(parse_range(Some("bytes=0-1,5-6"), 100), Whole);
        assert_eq!(parse_range(Some("items=0-1"), 100), Whole);
        assert_eq!(parse_range(Some("bytes=x-1"), 100), Whole);
    }
}
