//! Signed media URLs: what a URL grants, its canonical form, and the HMAC over it.
//!
//! A URL is `<base>/v1/media/<sha256 hex>?op=&size=&type=&user=&exp=&sig=` where `sig`
//! is unpadded base64url of HMAC-SHA256(key, canonical), and the canonical form is the
//! lines `confab-media-v1`, op, hex, size, type, user, exp joined by `\n`. The key is
//! derived from the server's token key (HMAC with a label of its own), so media URLs
//! and access tokens can never be confused for each other. Every field is signed: a
//! changed size, type, user, expiry or operation is a forgery. Verification is
//! constant-time (`Mac::verify_slice`).

use base64::Engine;
use hmac::{Hmac, Mac};
use sha2::Sha256;

use crate::auth::TokenKey;

type HmacSha256 = Hmac<Sha256>;

/// What the holder of a URL may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    /// Upload the object (once verified, it becomes visible).
    Put,
    /// Download it (with `Range`).
    Get,
}

impl Op {
    fn as_str(self) -> &'static str {
        match self {
            Op::Put => "put",
            Op::Get => "get",
        }
    }
}

/// The signed content of a media URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Grant {
    pub op: Op,
    pub sha256: [u8; 32],
    /// The object's size (an upload must be exactly this long).
    pub size: u64,
    /// The content type the object is served with.
    pub content_type: String,
    /// Who the URL was issued to (for logs and audits; URLs are bearer capabilities).
    pub user_id: u64,
    /// Unix ms after which the URL is refused.
    pub expires_ms: u64,
}

/// Why a media URL was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UrlError {
    #[error("media URL is malformed: {0}")]
    Malformed(&'static str),
    #[error("media URL signature is not valid")]
    Forged,
    #[error("media URL expired")]
    Expired,
    #[error("media URL is for another operation")]
    WrongOperation,
}

/// The key media URLs are signed with, derived from the token key.
pub fn url_key(token_key: &TokenKey) -> [u8; 32] {
    let mut mac = HmacSha256::new_from_slice(token_key.as_bytes()).unwrap_or_else(|_| {
        // HMAC takes keys of any length; this cannot happen.
        HmacSha256::new_from_slice(&[0; 32]).unwrap_or_else(|_| unreachable!())
    });
    mac.update(b"confab-media-url-v1");
    mac.finalize().into_bytes().into()
}

impl Grant {
    fn canonical(&self) -> String {
        format!(
            "confab-media-v1\n{}\n{}\n{}\n{}\n{}\n{}",
            self.op.as_str(),
            super::hex(&self.sha256),
            self.size,
            self.content_type,
            self.user_id,
            self.expires_ms
        )
    }

    fn mac(&self, key: &[u8; 32]) -> HmacSha256 {
        let mut mac = HmacSha256::new_from_slice(key).unwrap_or_else(|_| unreachable!());
        mac.update(self.canonical().as_bytes());
        mac
    }

    /// The signed URL (relative when `base` is empty).
    pub fn url(&self, base: &str, key: &[u8; 32]) -> String {
        let sig = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .encode(self.mac(key).finalize().into_bytes());
        let query = form_urlencoded::Serializer::new(String::new())
            .append_pair("op", self.op.as_str())
            .append_pair("size", &self.size.to_string())
            .append_pair("type", &self.content_type)
            .append_pair("user", &self.user_id.to_string())
            .append_pair("exp", &self.expires_ms.to_string())
            .append_pair("sig", &sig)
            .finish();
        format!(
            "{}/v1/media/{}?{query}",
            base.trim_end_matches('/'),
            super::hex(&self.sha256)
        )
    }

    /// Parse and verify the query of a request for `/v1/media/<hex>`: the signature
    /// first, then the expiry, then the operation.
    pub fn verify(
        sha256: [u8; 32],
        query: &str,
        op: Op,
        key: &[u8; 32],
        now_ms: u64,
    ) -> Result<Grant, UrlError> {
        let (mut op_seen, mut size, mut content_type, mut user, mut exp, mut sig) =
            (None, None, None, None, None, None);
        for (name, value) in form_urlencoded::parse(query.as_bytes()) {
            let slot = match name.as_ref() {
                "op" => &mut op_seen,
                "size" => &mut size,
                "type" => &mut content_type,
                "user" => &mut user,
                "exp" => &mut exp,
                "sig" => &mut sig,
                _ => continue,
            };
            if slot.replace(value.into_owned()).is_some() {
                return Err(UrlError::Malformed("a parameter is repeated"));
            }
        }
        let number = |v: Option<String>, what| {
            v.and_then(|v| v.parse::<u64>().ok())
                .ok_or(UrlError::Malformed(what))
        };
        let grant_op = match op_seen.as_deref() {
            Some("put") => Op::Put,
            Some("get") => Op::Get,
            _ => return Err(UrlError::Malformed("op")),
        };
        let grant = Grant {
            op: grant_op,
            sha256,
            size: number(size, "size")?,
            content_type: content_type.ok_or(UrlError::Malformed("type"))?,
            user_id: number(user, "user")?,
            expires_ms: number(exp, "exp")?,
        };
        let sig = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(sig.ok_or(UrlError::Malformed("sig"))?)
            .map_err(|_| UrlError::Forged)?;
        grant
            .mac(key)
            .verify_slice(&sig)
            .map_err(|_| UrlError::Forged)?;
        if now_ms > grant.expires_ms {
            return Err(UrlError::Expired);
        }
        if grant.op != op {
            return Err(UrlError::WrongOperation);
        }
        Ok(grant)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: [u8; 32] = [9; 32];

    fn grant() -> Grant {
        Grant {
            op: Op::Put,
            sha256: [1; 32],
            size: 1234,
            content_type: "image/png".into(),
            user_id: 42,
            expires_ms: 2_000,
        }
    }

    fn query_of(url: &str) -> &str {
        url.split_once('?').unwrap().1
    }

    #[test]
    fn a_signed_url_verifies_until_it_expires() {
        let url = grant().url("https://cdn.example/", &KEY);
        assert!(
            url.starts_with("https://cdn.example/v1/media/0101"),
            "{url}"
        );
        let query = query_of(&url);
        assert_eq!(
            Grant::verify([1; 32], query, Op::Put, &KEY, 1_999),
            Ok(grant())
        );
        assert_eq!(
            Grant::verify([1; 32], query, Op::Put, &KEY, 2_001),
            Err(UrlError::Expired)
        );
        assert_eq!(
            Grant::verify([1; 32], query, Op::Get, &KEY, 1_000),
            Err(UrlError::WrongOperation)
        );
    }

    #[test]
    fn every_field_is_signed() {
        let url = grant().url("", &KEY);
        assert!(url.starts_with("/v1/media/"));
        let query = query_of(&url);
        let edits = [
            ("size=1234", "size=1235"),
            ("type=image%2Fpng", "type=text%2Fhtml"),
            ("user=42", "user=43"),
            ("exp=2000", "exp=9000"),
            ("op=put", "op=get"),
        ];
        for (from, to) in edits {
            assert!(query.contains(from), "{query} has {from}");
            let forged = query.replace(from, to);
            assert_eq!(
                Grant::verify([1; 32], &forged, Op::Put, &KEY, 1_000),
                Err(UrlError::Forged),
                "{to}"
            );
        }
        // Another object, another key, a missing or repeated parameter.
        assert_eq!(
            Grant::verify([2; 32], query, Op::Put, &KEY, 1_000),
            Err(UrlError::Forged)
        );
        assert_eq!(
            Grant::verify([1; 32], query, Op::Put, &[8; 32], 1_000),
            Err(UrlError::Forged)
        );
        let no_sig = query.split("&sig=").next().unwrap();
        assert_eq!(
            Grant::verify([1; 32], no_sig, Op::Put, &KEY, 1_000),
            Err(UrlError::Malformed("sig"))
        );
        let twice = format!("{query}&user=42");
        assert!(matches!(
            Grant::verify([1; 32], &twice, Op::Put, &KEY, 1_000),
            Err(UrlError::Malformed(_))
        ));
        assert_eq!(
            Grant::verify([1; 32], "garbage", Op::Put, &KEY, 1_000),
            Err(UrlError::Malformed("op"))
        );
    }
}
