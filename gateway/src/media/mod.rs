//! Media attachments: content-addressed objects behind signed, expiring URLs
//! (docs/architecture.md, "Media"; the URL format is in `gateway/API.md`).
//!
//! 1. A client asks to upload (`MediaPresignRequest`: SHA-256, size, content type). If
//!    the object already exists it gets the media reference at once and uploads nothing
//!    (dedupe). Otherwise it gets an upload URL signed with HMAC-SHA256, bound to that
//!    hash, size, content type and user, expiring after `media_url_ttl`.
//! 2. The client `PUT`s the bytes to that URL. The gateway checks the signature before it
//!    reads the body, hashes while it reads, and stores the object only if the hash and
//!    size match ([`http::serve`]). A partial or tampered upload leaves nothing behind.
//! 3. Messages carry a `MediaRef` (hash, size, type, client metadata), never the bytes. A
//!    send whose media is not stored is refused ([`check_attachment`]).
//! 4. A member asks for a download URL for the media of one message
//!    (`MediaDownloadRequest`: conversation, seq). The gateway reads that message as the
//!    member (group join points apply), and signs a `GET` URL for its hash and type.
//!    Downloads honour `Range`.
//!
//! Objects live in an [`object_store`] store ([`store`]): the local filesystem under
//! `<data_dir>/media` by default, or S3 (`media_store = "s3://bucket/prefix"`), so a
//! deployment moves media to object storage, and puts a CDN in front of the download
//! URLs (`media_public_url`), by configuration alone.

pub mod http;
pub mod signing;
pub mod store;

use std::rc::Rc;

use wire::message::{
    ErrorCode, MediaDownloadRequest, MediaDownloadResponse, MediaPresignRequest,
    MediaPresignResponse, MediaRef, Sha256,
};

use crate::chat::{self, ApiError, ReadRange, ShardMsg};
use crate::config::Config;
use crate::shard::Shard;
use signing::{Grant, Op};

/// Bytes fetched from the store per read while serving a download: bounds the memory
/// one download holds.
pub const DOWNLOAD_CHUNK_BYTES: u64 = 1024 * 1024;

/// Whether `content_type` is a plain `type/subtype` (no parameters, nothing a header
/// could be split with) that the configuration allows.
pub fn content_type_allowed(config: &Config, content_type: &str) -> bool {
    let plain = |s: &str| {
        !s.is_empty()
            && s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"!#$&^_.+-".contains(&b))
    };
    let Some((kind, subtype)) = content_type.split_once('/') else {
        return false;
    };
    if !plain(kind) || !plain(subtype) {
        return false;
    }
    config
        .media_allowed_types
        .iter()
        .any(|allowed| match allowed.strip_suffix("/*") {
            Some(prefix) => kind.eq_ignore_ascii_case(prefix),
            None => allowed.eq_ignore_ascii_case(content_type),
        })
}

fn check_size_and_type(config: &Config, size: u64, content_type: &str) -> Result<(), ApiError> {
    if size == 0 {
        return Err(ApiError::new(ErrorCode::InvalidArgument, "media size is 0"));
    }
    if size > config.media_bytes_max {
        return Err(ApiError::new(
            ErrorCode::TooLarge,
            format!("media over {} bytes", config.media_bytes_max),
        ));
    }
    if !content_type_allowed(config, content_type) {
        return Err(ApiError::new(
            ErrorCode::InvalidArgument,
            format!("content type {content_type:?} is not allowed"),
        ));
    }
    Ok(())
}

/// The size of the stored object `sha256`, if it exists.
async fn stored_size(shard: &Shard, sha256: &[u8; 32]) -> Result<Option<u64>, ApiError> {
    shard.media.head(sha256).await.map_err(|e| e.api_error())
}

/// Answer a `MediaPresignRequest` of `user_id`.
pub async fn presign_upload(
    shard: &Rc<Shard>,
    user_id: u64,
    request: MediaPresignRequest,
) -> Result<MediaPresignResponse, ApiError> {
    let config = &shard.config;
    check_size_and_type(config, request.size, &request.content_type)?;
    let media = MediaRef {
        sha256: request.sha256,
        size: request.size,
        content_type: request.content_type.clone(),
        metadata: String::new(),
    };
    match stored_size(shard, &request.sha256.0).await? {
        Some(size) if size == request.size => {
            shard.counters().media_deduped();
            return Ok(MediaPresignResponse {
                media: Some(media),
                exists: true,
                upload_url: String::new(),
                expires_at_ms: 0,
            });
        }
        // Another size under this hash: damaged (or a false claim); the upload that
        // follows is verified and overwrites it.
        Some(_) | None => {}
    }
    let grant = Grant {
        op: Op::Put,
        sha256: request.sha256.0,
        size: request.size,
        content_type: request.content_type,
        user_id,
        expires_ms: chat::now_ms() + config.media_url_ttl.as_millis() as u64,
    };
    let upload_url = grant.url(
        &config.media_public_url,
        &signing::url_key(&shard.token_key),
    );
    Ok(MediaPresignResponse {
        media: Some(media),
        exists: false,
        upload_url,
        expires_at_ms: grant.expires_ms,
    })
}

/// Answer a `MediaDownloadRequest` of `user_id` (on the user's home shard): the user
/// must be able to read message `seq`, and it must carry media.
pub async fn presign_download(
    shard: &Rc<Shard>,
    user_id: u64,
    request: MediaDownloadRequest,
) -> Result<MediaDownloadResponse, ApiError> {
    let conversation_id = request.conversation_id;
    if shard.state(|s| s.membership(user_id, conversation_id).is_none()) {
        return Err(ApiError::forbidden());
    }
    if request.seq == 0 {
        return Err(ApiError::new(ErrorCode::InvalidArgument, "seq is required"));
    }
    let owner = shard.conversation_owner(conversation_id);
    let page = shard
        .call(owner, |reply| ShardMsg::Read {
            conversation_id,
            range: ReadRange::After(request.seq - 1),
            limit: 1,
            reader: user_id,
            reply,
        })
        .await??;
    let media = page
        .messages
        .into_iter()
        .find(|m| m.seq == request.seq)
        .and_then(|m| m.media)
        .ok_or_else(|| ApiError::new(ErrorCode::NotFound, "no media in that message"))?;
    let content_type = if content_type_allowed(&shard.config, &media.content_type) {
        media.content_type.clone()
    } else {
        "application/octet-stream".to_owned()
    };
    let grant = Grant {
        op: Op::Get,
        sha256: media.sha256.0,
        size: media.size,
        content_type,
        user_id,
        expires_ms: chat::now_ms() + shard.config.media_url_ttl.as_millis() as u64,
    };
    let download_url = grant.url(
        &shard.config.media_public_url,
        &signing::url_key(&shard.token_key),
    );
    Ok(MediaDownloadResponse {
        media: Some(media),
        download_url,
        expires_at_ms: grant.expires_ms,
    })
}

/// A send's attachment must be stored already, with the size it claims, and of an
/// allowed type: a message never points at bytes that are not there.
pub async fn check_attachment(shard: &Rc<Shard>, media: &MediaRef) -> Result<(), ApiError> {
    check_size_and_type(&shard.config, media.size, &media.content_type)?;
    match stored_size(shard, &media.sha256.0).await? {
        Some(size) if size == media.size => Ok(()),
        Some(_) => Err(ApiError::new(
            ErrorCode::InvalidArgument,
            "attachment size does not match the stored object",
        )),
        None => Err(ApiError::new(
            ErrorCode::InvalidArgument,
            "attachment not uploaded: presign and upload it first",
        )),
    }
}

/// Lowercase hex of a digest (object names and URLs).
pub fn hex(sha256: &[u8; 32]) -> String {
    sha256.iter().map(|b| format!("{b:02x}")).collect()
}

/// A digest from 64 hex digits.
pub fn parse_hex(text: &str) -> Option<Sha256> {
    if text.len() != 64 || !text.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, byte) in out.iter_mut().enumerate() {
        let pair = text.get(2 * i..2 * i + 2)?;
        *byte = u8::from_str_radix(pair, 16).ok()?;
    }
    Some(Sha256(out))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hex_round_trips_and_rejects_junk() {
        let digest = [0xab; 32];
        assert_eq!(parse_hex(&hex(&digest)), Some(Sha256(digest)));
        assert_eq!(parse_hex("ab"), None);
        assert_eq!(parse_hex(&"zz".repeat(32)), None);
        assert_eq!(parse_hex(&"+1".repeat(32)), None);
    }

    #[test]
    fn content_types_are_plain_and_allowed() {
        let config = Config::resolve(crate::config::Cli::default()).unwrap();
        assert!(content_type_allowed(&config, "image/png"));
        assert!(content_type_allowed(&config, "IMAGE/JPEG"));
        assert!(content_type_allowed(&config, "application/pdf"));
        assert!(!content_type_allowed(&config, "text/html"));
        assert!(!content_type_allowed(&config, "image/png\r\nX-Evil: 1"));
        assert!(!content_type_allowed(&config, "image/png; charset=utf-8"));
        assert!(!content_type_allowed(&config, "image"));
        assert!(!content_type_allowed(&config, "/png"));
    }
}
