//! Media attachments end to end: presign over the socket, upload and download over real
//! HTTP with signed URLs, dedupe, tampering, forgery, expiry, ranges and membership.

mod common;

use std::time::Duration;

use common::people::{self, user, FAST, TRANSPORTS};
use common::{metric_sum, Server};
use sha2::{Digest, Sha256};
use wire::client::http::{media_download, media_upload};
use wire::client::{new_key, ClientError, Connection};
use wire::message::{ErrorCode, MediaRef, MessageKind, Send};

fn sha256(bytes: &[u8]) -> [u8; 32] {
    Sha256::digest(bytes).into()
}

/// Some bytes that look like nothing in particular (no two tests share them).
fn content(seed: u8, len: usize) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
        .collect()
}

fn code_of(error: ClientError) -> ErrorCode {
    match error {
        ClientError::ServerError(e) => e.code,
        other => panic!("expected a server error, got {other:?}"),
    }
}

/// The JSON error code of a refused media request.
fn refusal(body: &[u8]) -> String {
    let value: serde_json::Value = serde_json::from_slice(body).unwrap();
    value["error"]["code"].as_str().unwrap().to_owned()
}

fn send_media(conn: &mut Connection, conversation_id: u64, media: MediaRef) -> wire::message::Ack {
    conn.send(Send {
        conversation_id,
        idempotency_key: new_key(),
        kind: MessageKind::Chat,
        body: b"look at this".to_vec(),
        media: Some(media),
        reply_to_seq: 0,
    })
    .unwrap()
}

#[test]
fn upload_dedupe_and_range_download_between_members() {
    let server = Server::start(FAST);
    let (_, alice) = user(&server, "alice");
    let (bob_name, bob) = user(&server, "bob");
    let (_, carol) = user(&server, "carol");
    for transport in TRANSPORTS {
        let (mut a, _) = people::online(&server, transport, &alice);
        let (mut b, _) = people::online(&server, transport, &bob);
        let (mut c, _) = people::online(&server, transport, &carol);
        let conversation = a.open_direct_by_name(&bob_name).unwrap().conversation_id;
        let bytes = content(transport as u8, 300_000);
        let digest = sha256(&bytes);
        let size = bytes.len() as u64;

        // First upload: a signed URL, then the bytes.
        let presign = a.media_presign(digest, size, "image/png").unwrap();
        assert!(!presign.exists);
        assert!(
            presign.upload_url.starts_with("/v1/media/"),
            "{}",
            presign.upload_url
        );
        assert!(presign.expires_at_ms > 0);
        let stored_before = metric_sum(&server, "confab_media_bytes_in_total");
        let put = media_upload(server.http, &presign.upload_url, "image/png", &bytes).unwrap();
        assert_eq!(put.status, 201, "{}", String::from_utf8_lossy(&put.body));
        assert_eq!(
            metric_sum(&server, "confab_media_bytes_in_total"),
            stored_before + size
        );
        // The same URL again: already stored, nothing written twice.
        let again = media_upload(server.http, &presign.upload_url, "image/png", &bytes).unwrap();
        assert_eq!(again.status, 200);

        // Dedupe: anyone asking for the same content gets the reference at once.
        let dedupe = b.media_presign(digest, size, "image/png").unwrap();
        assert!(dedupe.exists);
        assert!(dedupe.upload_url.is_empty());
        let media = dedupe.media.unwrap();
        assert_eq!((media.sha256.0, media.size), (digest, size));
        assert_eq!(
            metric_sum(&server, "confab_media_bytes_in_total"),
            stored_before + size,
            "a deduplicated upload transfers nothing"
        );

        // The message carries the reference, never the bytes.
        let ack = send_media(&mut a, conversation, media.clone());
        let delivered = people::next_deliver(&mut b);
        assert_eq!(delivered.seq, ack.seq);
        assert_eq!(
            delivered.media.as_ref().map(|m| m.sha256),
            Some(media.sha256)
        );
        assert_eq!(delivered.body, b"look at this");

        // A member downloads: whole, and by range.
        let url = b.media_download_url(conversation, ack.seq).unwrap();
        assert_eq!(url.media.as_ref().map(|m| m.size), Some(size));
        let whole = media_download(server.http, &url.download_url, None).unwrap();
        assert_eq!(whole.status, 200);
        assert_eq!(whole.header("content-type"), Some("image/png"));
        assert_eq!(whole.header("accept-ranges"), Some("bytes"));
        assert_eq!(whole.header("x-content-type-options"), Some("nosniff"));
        assert!(whole.body == bytes, "whole download differs");
        let part = media_download(server.http, &url.download_url, Some((1000, 1999))).unwrap();
        assert_eq!(part.status, 206);
        assert_eq!(
            part.header("content-range"),
            Some(format!("bytes 1000-1999/{size}").as_str())
        );
        assert_eq!(part.body, &bytes[1000..2000]);
        let tail =
            media_download(server.http, &url.download_url, Some((size - 10, size + 50))).unwrap();
        assert_eq!(
            (tail.status, tail.body.as_slice()),
            (206, &bytes[bytes.len() - 10..])
        );
        let past = media_download(server.http, &url.download_url, Some((size, size + 5))).unwrap();
        assert_eq!(past.status, 416);
        assert_eq!(
            past.header("content-range"),
            Some(format!("bytes */{size}").as_str())
        );

        // A non-member gets no URL, and a message without media has none.
        let denied = c.media_download_url(conversation, ack.seq).unwrap_err();
        assert_eq!(code_of(denied), ErrorCode::Forbidden);
        let plain = a
            .send_message(conversation, b"no attachment", new_key())
            .unwrap();
        let none = b.media_download_url(conversation, plain.seq).unwrap_err();
        assert_eq!(code_of(none), ErrorCode::NotFound);
        // An upload URL does not download, nor a download URL upload.
        let swapped = media_download(server.http, &presign.upload_url, None).unwrap();
        assert_eq!(
            (swapped.status, refusal(&swapped.body).as_str()),
            (403, "forged")
        );
        let swapped = media_upload(server.http, &url.download_url, "image/png", &bytes).unwrap();
        assert_eq!(swapped.status, 403);
    }
}

#[test]
fn tampered_forged_and_unknown_media_are_refused() {
    let server = Server::start(FAST);
    let (_, alice) = user(&server, "alice");
    let (bob_name, _) = user(&server, "bob");
    let (mut a, _) = people::online(&server, wire::client::Transport::WsJson, &alice);
    let conversation = a.open_direct_by_name(&bob_name).unwrap().conversation_id;
    let bytes = content(99, 50_000);
    let digest = sha256(&bytes);
    let presign = a
        .media_presign(digest, bytes.len() as u64, "application/pdf")
        .unwrap();
    let url = presign.upload_url.clone();

    // Same length, other bytes: the hash does not match, nothing is stored.
    let mut tampered = bytes.clone();
    tampered[12_345] ^= 1;
    let put = media_upload(server.http, &url, "application/pdf", &tampered).unwrap();
    assert_eq!(
        (put.status, refusal(&put.body).as_str()),
        (400, "hash_mismatch")
    );
    // Another length than the URL was signed for: refused before the body is read.
    let put = media_upload(server.http, &url, "application/pdf", &bytes[..40_000]).unwrap();
    assert_eq!(
        (put.status, refusal(&put.body).as_str()),
        (400, "size_mismatch")
    );
    assert!(
        !a.media_presign(digest, bytes.len() as u64, "application/pdf")
            .unwrap()
            .exists,
        "a refused upload left an object behind"
    );
    assert_eq!(metric_sum(&server, "confab_media_uploads_total"), 0);

    // Forgeries: another size, another type, another signature, another object.
    let forgeries = [
        url.replace(&format!("size={}", bytes.len()), "size=40000"),
        url.replace("type=application%2Fpdf", "type=image%2Fpng"),
        {
            let (rest, sig) = url.rsplit_once("sig=").unwrap();
            let mut sig = sig.to_owned().into_bytes();
            sig[0] = if sig[0] == b'A' { b'B' } else { b'A' };
            format!("{rest}sig={}", String::from_utf8(sig).unwrap())
        },
        url.replace(&hex(&digest), &hex(&sha256(b"other"))),
    ];
    for forged in forgeries {
        assert_ne!(forged, url);
        let put = media_upload(server.http, &forged, "application/pdf", &bytes).unwrap();
        assert_eq!(put.status, 403, "{forged}");
    }
    let unsigned = format!("/v1/media/{}", hex(&digest));
    let put = media_upload(server.http, &unsigned, "application/pdf", &bytes).unwrap();
    assert_eq!(put.status, 403);

    // Presign limits: type, size, empty.
    let error = a.media_presign(digest, 10, "text/html").unwrap_err();
    assert_eq!(code_of(error), ErrorCode::InvalidArgument);
    let error = a.media_presign(digest, 1 << 40, "image/png").unwrap_err();
    assert_eq!(code_of(error), ErrorCode::TooLarge);
    let error = a.media_presign(digest, 0, "image/png").unwrap_err();
    assert_eq!(code_of(error), ErrorCode::InvalidArgument);

    // A message cannot point at bytes nobody uploaded.
    let phantom = MediaRef {
        sha256: wire::message::Sha256(digest),
        size: bytes.len() as u64,
        content_type: "application/pdf".into(),
        metadata: String::new(),
    };
    let error = a
        .send(Send {
            conversation_id: conversation,
            idempotency_key: new_key(),
            kind: MessageKind::Chat,
            body: vec![],
            media: Some(phantom),
            reply_to_seq: 0,
        })
        .unwrap_err();
    assert_eq!(code_of(error), ErrorCode::InvalidArgument);

    // The real upload still works afterwards.
    let put = media_upload(server.http, &url, "application/pdf", &bytes).unwrap();
    assert_eq!(put.status, 201);
}

#[test]
fn expired_urls_are_refused() {
    let mut args = FAST.to_vec();
    args.extend(["--media-url-ttl-ms", "1000"]);
    let server = Server::start(&args);
    let (_, alice) = user(&server, "alice");
    let (bob_name, _) = user(&server, "bob");
    let (mut a, _) = people::online(&server, wire::client::Transport::Tcp, &alice);
    let conversation = a.open_direct_by_name(&bob_name).unwrap().conversation_id;
    let bytes = content(7, 1000);
    let digest = sha256(&bytes);
    let fresh = a.media_presign(digest, 1000, "audio/ogg").unwrap();
    let stale = a.media_presign(digest, 1000, "audio/ogg").unwrap();
    let put = media_upload(server.http, &fresh.upload_url, "audio/ogg", &bytes).unwrap();
    assert_eq!(put.status, 201);
    let ack = send_media(&mut a, conversation, fresh.media.unwrap());
    let download = a.media_download_url(conversation, ack.seq).unwrap();
    assert_eq!(
        media_download(server.http, &download.download_url, None)
            .unwrap()
            .status,
        200
    );
    std::thread::sleep(Duration::from_millis(1500));
    let put = media_upload(server.http, &stale.upload_url, "audio/ogg", &bytes).unwrap();
    assert_eq!((put.status, refusal(&put.body).as_str()), (403, "expired"));
    let get = media_download(server.http, &download.download_url, None).unwrap();
    assert_eq!((get.status, refusal(&get.body).as_str()), (403, "expired"));
}

fn hex(digest: &[u8; 32]) -> String {
    digest.iter().map(|b| format!("{b:02x}")).collect()
}
