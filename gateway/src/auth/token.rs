//! Signed, expiring bearer tokens: `v1.<base64url(payload)>.<base64url(mac)>`.
//!
//! The payload is [`TOKEN_PAYLOAD_BYTES`] bytes: kind (`u8`: 1 access, 2 refresh), user id,
//! device id, expiry in Unix ms (each a little-endian `u64`). The mac is
//! HMAC-SHA256(key, [`TOKEN_MAC_DOMAIN`] || payload), all 32 bytes. [`verify`] checks the
//! mac (in constant time) before it reads anything from the payload.

use std::ffi::OsString;
use std::fmt;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use hmac::digest::Key;
use hmac::{Hmac, Mac};
use sha2::Sha256;

use super::AuthError;

type HmacSha256 = Hmac<Sha256>;

/// Length of the server's token signing key, in bytes.
pub const TOKEN_KEY_BYTES: usize = 32;
/// Every token starts with this; a new token format gets a new prefix.
pub const TOKEN_PREFIX: &str = "v1.";
/// Length of the decoded payload: kind (1) + user id (8) + device id (8) + expiry (8).
pub const TOKEN_PAYLOAD_BYTES: usize = 25;
/// Length of the decoded mac (untruncated HMAC-SHA256).
pub const TOKEN_MAC_BYTES: usize = 32;
/// Longest token string [`verify`] looks at; longer ones are `Malformed` without decoding.
/// A real token is 81 bytes.
pub const TOKEN_BYTES_MAX: usize = 256;
/// Domain-separation string hashed before the payload, so this key's macs mean nothing
/// in any other context (or any other token version).
pub const TOKEN_MAC_DOMAIN: &[u8] = b"confab-token-v1";
/// Unix permissions of a newly created key file (owner read/write only).
pub const TOKEN_KEY_FILE_MODE: u32 = 0o600;

/// What a token may be used for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TokenKind {
    /// Short-lived; authenticates `Hello` and HTTP API requests.
    Access,
    /// Long-lived; only exchanged at `POST /v1/token/refresh` for a new pair.
    Refresh,
}

impl TokenKind {
    /// The payload's kind byte.
    pub const fn to_byte(self) -> u8 {
        match self {
            TokenKind::Access => 1,
            TokenKind::Refresh => 2,
        }
    }

    /// The kind for a payload's kind byte, if it is one.
    pub const fn from_byte(byte: u8) -> Option<TokenKind> {
        match byte {
            1 => Some(TokenKind::Access),
            2 => Some(TokenKind::Refresh),
            _ => None,
        }
    }
}

/// What a token says. Trust it only as returned by [`verify`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Claims {
    pub kind: TokenKind,
    pub user_id: u64,
    pub device_id: u64,
    /// The token is valid while `now_ms < expires_ms` (Unix milliseconds).
    pub expires_ms: u64,
}

/// Why a token was refused. All of these are the client's problem (401 / close 4001).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    /// Not a token: wrong prefix, wrong number of parts, bad base64, wrong lengths, or
    /// longer than [`TOKEN_BYTES_MAX`].
    #[error("malformed token")]
    Malformed,
    /// Well-formed, but not signed by this server's key (or altered).
    #[error("token signature does not verify")]
    BadSignature,
    /// Genuine, but expired at `expired_ms` (Unix ms).
    #[error("token expired at {expired_ms} ms")]
    Expired { expired_ms: u64 },
    /// Genuine, but an access token where a refresh token was wanted or vice versa.
    #[error("wrong kind of token")]
    WrongKind,
}

/// The server's token signing key. `Debug` does not print it.
#[derive(Clone)]
pub struct TokenKey([u8; TOKEN_KEY_BYTES]);

impl fmt::Debug for TokenKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("TokenKey(<redacted>)")
    }
}

impl TokenKey {
    /// A new random key from the operating system.
    pub fn generate() -> Result<TokenKey, AuthError> {
        let mut bytes = [0u8; TOKEN_KEY_BYTES];
        getrandom::fill(&mut bytes).map_err(AuthError::Random)?;
        Ok(TokenKey(bytes))
    }

    /// A key from exactly [`TOKEN_KEY_BYTES`] bytes.
    pub fn from_bytes(bytes: &[u8]) -> Result<TokenKey, AuthError> {
        <[u8; TOKEN_KEY_BYTES]>::try_from(bytes)
            .map(TokenKey)
            .map_err(|_| AuthError::KeyLength {
                path: PathBuf::new(),
                len: bytes.len() as u64,
            })
    }

    /// The raw key bytes.
    pub fn as_bytes(&self) -> &[u8; TOKEN_KEY_BYTES] {
        &self.0
    }

    /// Reads the key from `path` (exactly [`TOKEN_KEY_BYTES`] bytes). If the file does not
    /// exist, generates a key and writes it durably: to `<path>.tmp` with mode
    /// [`TOKEN_KEY_FILE_MODE`], fsync, rename to `path`, fsync the directory. The directory
    /// must exist. Blocking; call it once at startup, from one thread.
    pub fn load_or_create(path: &Path) -> Result<TokenKey, AuthError> {
        match File::open(path) {
            Ok(file) => Self::read_key_file(path, file),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Self::create_key_file(path),
            Err(source) => Err(io_error(path, source)),
        }
    }

    fn read_key_file(path: &Path, mut file: File) -> Result<TokenKey, AuthError> {
        let len = file.metadata().map_err(|e| io_error(path, e))?.len();
        if len != TOKEN_KEY_BYTES as u64 {
            return Err(AuthError::KeyLength {
                path: path.to_path_buf(),
                len,
            });
        }
        let mut bytes = [0u8; TOKEN_KEY_BYTES];
        file.read_exact(&mut bytes).map_err(|e| io_error(path, e))?;
        Ok(TokenKey(bytes))
    }

    fn create_key_file(path: &Path) -> Result<TokenKey, AuthError> {
        let key = Self::generate()?;
        Self::store(path, &key)?;
        tracing::info!(path = %path.display(), "created a new token signing key");
        Ok(key)
    }

    /// Write `key` to `path` atomically and durably (tmp file, fsync, rename, fsync dir);
    /// a cluster node stores the cluster's key this way.
    pub fn store(path: &Path, key: &TokenKey) -> Result<(), AuthError> {
        let tmp = tmp_path(path);
        // A leftover from a crash mid-creation: start over (and with our file mode).
        match fs::remove_file(&tmp) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(io_error(&tmp, e)),
        }
        let mut file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(TOKEN_KEY_FILE_MODE)
            .open(&tmp)
            .map_err(|e| io_error(&tmp, e))?;
        file.write_all(&key.0).map_err(|e| io_error(&tmp, e))?;
        file.sync_all().map_err(|e| io_error(&tmp, e))?;
        drop(file);
        fs::rename(&tmp, path).map_err(|e| io_error(path, e))?;
        let dir = match path.parent() {
            Some(dir) if !dir.as_os_str().is_empty() => dir,
            _ => Path::new("."),
        };
        File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(|e| io_error(dir, e))?;
        Ok(())
    }
}

fn io_error(path: &Path, source: io::Error) -> AuthError {
    AuthError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// `<path>.tmp` (appended, not an extension swap: `token.key` → `token.key.tmp`).
fn tmp_path(path: &Path) -> PathBuf {
    let mut name = OsString::from(path.as_os_str());
    name.push(".tmp");
    PathBuf::from(name)
}

/// The HMAC state over [`TOKEN_MAC_DOMAIN`] and `payload`.
fn mac(key: &TokenKey, payload: &[u8]) -> HmacSha256 {
    // HMAC zero-pads a key shorter than the hash's block size (RFC 2104), so padding it
    // here gives the same MAC as `new_from_slice`, without its (unreachable) error path.
    let mut block = Key::<HmacSha256>::default();
    for (dst, src) in block.iter_mut().zip(key.0.iter()) {
        *dst = *src;
    }
    let mut mac = <HmacSha256 as Mac>::new(&block);
    mac.update(TOKEN_MAC_DOMAIN);
    mac.update(payload);
    mac
}

fn encode_payload(claims: &Claims) -> [u8; TOKEN_PAYLOAD_BYTES] {
    let bytes = std::iter::once(claims.kind.to_byte())
        .chain(claims.user_id.to_le_bytes())
        .chain(claims.device_id.to_le_bytes())
        .chain(claims.expires_ms.to_le_bytes());
    let mut payload = [0u8; TOKEN_PAYLOAD_BYTES];
    for (dst, src) in payload.iter_mut().zip(bytes) {
        *dst = src;
    }
    payload
}

/// The claims of a payload whose mac has already been verified.
fn decode_payload(payload: &[u8]) -> Option<Claims> {
    let (&kind, rest) = payload.split_first()?;
    let (user_id, rest) = rest.split_first_chunk::<8>()?;
    let (device_id, rest) = rest.split_first_chunk::<8>()?;
    let (expires_ms, rest) = rest.split_first_chunk::<8>()?;
    if !rest.is_empty() {
        return None;
    }
    Some(Claims {
        kind: TokenKind::from_byte(kind)?,
        user_id: u64::from_le_bytes(*user_id),
        device_id: u64::from_le_bytes(*device_id),
        expires_ms: u64::from_le_bytes(*expires_ms),
    })
}

/// The token for `claims`, signed with `key`.
pub fn sign(key: &TokenKey, claims: &Claims) -> String {
    let payload = encode_payload(claims);
    let tag = mac(key, &payload).finalize().into_bytes();
    let mut token = String::with_capacity(TOKEN_BYTES_MAX);
    token.push_str(TOKEN_PREFIX);
    URL_SAFE_NO_PAD.encode_string(payload, &mut token);
    token.push('.');
    URL_SAFE_NO_PAD.encode_string(tag, &mut token);
    token
}

/// The claims of `token` if it is well-formed, signed with `key`, of kind `want`, and not
/// expired at `now_ms` (Unix ms).
pub fn verify(
    key: &TokenKey,
    token: &str,
    now_ms: u64,
    want: TokenKind,
) -> Result<Claims, TokenError> {
    if token.len() > TOKEN_BYTES_MAX {
        return Err(TokenError::Malformed);
    }
    let rest = token
        .strip_prefix(TOKEN_PREFIX)
        .ok_or(TokenError::Malformed)?;
    let (payload_b64, tag_b64) = rest.split_once('.').ok_or(TokenError::Malformed)?;
    // Strict decoding: no padding, no non-zero trailing bits, so each token has exactly
    // one encoding and no other string maps onto a valid one.
    let payload = URL_SAFE_NO_PAD
        .decode(payload_b64)
        .map_err(|_| TokenError::Malformed)?;
    let tag = URL_SAFE_NO_PAD
        .decode(tag_b64)
        .map_err(|_| TokenError::Malformed)?;
    if payload.len() != TOKEN_PAYLOAD_BYTES || tag.len() != TOKEN_MAC_BYTES {
        return Err(TokenError::Malformed);
    }
    mac(key, &payload)
        .verify_slice(&tag)
        .map_err(|_| TokenError::BadSignature)?;
    // Only now is the payload ours. An unknown kind byte under a good mac cannot be
    // produced by `sign`; treat it as not a token.
    let claims = decode_payload(&payload).ok_or(TokenError::Malformed)?;
    if claims.kind != want {
        return Err(TokenError::WrongKind);
    }
    if now_ms >= claims.expires_ms {
        return Err(TokenError::Expired {
            expired_ms: claims.expires_ms,
        });
    }
    Ok(claims)
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: u64 = 1_790_000_000_000;

    fn key(byte: u8) -> TokenKey {
        TokenKey([byte; TOKEN_KEY_BYTES])
    }

    fn claims(kind: TokenKind) -> Claims {
        Claims {
            kind,
            user_id: 123,
            device_id: u64::MAX - 1,
            expires_ms: NOW + 900_000,
        }
    }

    #[test]
    fn round_trip_both_kinds() {
        let k = key(7);
        for kind in [TokenKind::Access, TokenKind::Refresh] {
            let c = claims(kind);
            let t = sign(&k, &c);
            assert!(t.starts_with("v1."));
            assert_eq!(t.len(), 81);
            assert!(t.len() <= TOKEN_BYTES_MAX);
            assert_eq!(verify(&k, &t, NOW, kind), Ok(c));
        }
    }

    #[test]
    fn format_matches_the_documented_layout() {
        let k = key(9);
        let c = claims(TokenKind::Refresh);
        let t = sign(&k, &c);
        let parts: Vec<&str> = t.split('.').collect();
        assert_eq!(parts.len(), 3);
        assert_eq!(parts[0], "v1");
        let payload = URL_SAFE_NO_PAD.decode(parts[1]).unwrap();
        let mut want = vec![2u8];
        want.extend_from_slice(&123u64.to_le_bytes());
        want.extend_from_slice(&(u64::MAX - 1).to_le_bytes());
        want.extend_from_slice(&(NOW + 900_000).to_le_bytes());
        assert_eq!(payload, want);
        // Independently computed with the variable-length key constructor.
        let mut reference = HmacSha256::new_from_slice(k.as_bytes()).unwrap();
        reference.update(b"confab-token-v1");
        reference.update(&payload);
        let tag = URL_SAFE_NO_PAD.decode(parts[2]).unwrap();
        assert_eq!(tag, reference.finalize().into_bytes().to_vec());
    }

    #[test]
    fn every_single_byte_change_fails() {
        let k = key(1);
        let t = sign(&k, &claims(TokenKind::Access));
        let bytes = t.as_bytes();
        let mut tried = 0;
        for i in 0..bytes.len() {
            for b in 0..=255u8 {
                if b == bytes[i] {
                    continue;
                }
                let mut changed = bytes.to_vec();
                changed[i] = b;
                let Ok(changed) = String::from_utf8(changed) else {
                    continue;
                };
                tried += 1;
                assert!(
                    verify(&k, &changed, NOW, TokenKind::Access).is_err(),
                    "byte {i} -> {b:#x} still verifies: {changed}"
                );
            }
        }
        assert!(tried > 81 * 100);
    }

    #[test]
    fn every_single_bit_change_of_the_payload_is_bad_signature() {
        let k = key(1);
        let payload = encode_payload(&claims(TokenKind::Access));
        let tag = mac(&k, &payload).finalize().into_bytes();
        for i in 0..payload.len() {
            for bit in 0..8 {
                let mut p = payload;
                p[i] ^= 1 << bit;
                let t = format!(
                    "v1.{}.{}",
                    URL_SAFE_NO_PAD.encode(p),
                    URL_SAFE_NO_PAD.encode(tag)
                );
                assert_eq!(
                    verify(&k, &t, NOW, TokenKind::Access),
                    Err(TokenError::BadSignature)
                );
            }
        }
    }

    #[test]
    fn expired() {
        let k = key(2);
        let c = claims(TokenKind::Access);
        let t = sign(&k, &c);
        assert!(verify(&k, &t, c.expires_ms - 1, TokenKind::Access).is_ok());
        for now in [c.expires_ms, c.expires_ms + 1, u64::MAX] {
            assert_eq!(
                verify(&k, &t, now, TokenKind::Access),
                Err(TokenError::Expired {
                    expired_ms: c.expires_ms
                })
            );
        }
    }

    #[test]
    fn wrong_kind() {
        let k = key(3);
        let access = sign(&k, &claims(TokenKind::Access));
        let refresh = sign(&k, &claims(TokenKind::Refresh));
        assert_eq!(
            verify(&k, &access, NOW, TokenKind::Refresh),
            Err(TokenError::WrongKind)
        );
        assert_eq!(
            verify(&k, &refresh, NOW, TokenKind::Access),
            Err(TokenError::WrongKind)
        );
    }

    #[test]
    fn garbage_is_malformed() {
        let k = key(4);
        let good = sign(&k, &claims(TokenKind::Access));
        let (_, rest) = good.split_once('.').unwrap();
        let (payload, tag) = rest.split_once('.').unwrap();
        let huge = "v1.".to_string() + &"A".repeat(10_000) + "." + tag;
        let just_over = format!("{good}{}", "A".repeat(TOKEN_BYTES_MAX + 1 - good.len()));
        let cases = [
            String::new(),
            "v1".into(),
            "v1.".into(),
            "v1..".into(),
            "v1...".into(),
            "v2.AAAA.AAAA".into(),
            "Bearer v1.AAAA.AAAA".into(),
            "v1.!!!!.????".into(),
            "v1.AAAA.AAAA".into(),
            format!("v2.{payload}.{tag}"),
            format!("V1.{payload}.{tag}"),
            format!("v1.{payload}"),
            format!("v1.{payload}.{tag}."),
            format!("v1.{payload}.{tag}.{tag}"),
            format!("v1.{payload}=.{tag}"),
            format!("v1.{payload}.{tag}="),
            format!("v1.{payload}A.{tag}"),
            format!("v1.{payload}.{tag}A"),
            format!("v1.{payload}AAAA.{tag}"),
            format!("v1.{payload}.{}", &tag[..tag.len() - 4]),
            format!("v1. {payload}.{tag}"),
            format!("v1.{}.{tag}", payload.replace('A', "+")),
            huge,
            just_over,
            "é".repeat(200),
        ];
        for t in &cases {
            assert_eq!(
                verify(&k, t, NOW, TokenKind::Access),
                Err(TokenError::Malformed),
                "{t:?}"
            );
        }
    }

    #[test]
    fn another_key_is_bad_signature() {
        let t = sign(&key(5), &claims(TokenKind::Access));
        assert_eq!(
            verify(&key(6), &t, NOW, TokenKind::Access),
            Err(TokenError::BadSignature)
        );
        let a = TokenKey::generate().unwrap();
        let b = TokenKey::generate().unwrap();
        assert_ne!(a.as_bytes(), b.as_bytes());
        let t = sign(&a, &claims(TokenKind::Refresh));
        assert!(verify(&a, &t, NOW, TokenKind::Refresh).is_ok());
        assert_eq!(
            verify(&b, &t, NOW, TokenKind::Refresh),
            Err(TokenError::BadSignature)
        );
    }

    #[test]
    fn unknown_kind_byte_under_a_good_mac_is_malformed() {
        let k = key(8);
        let mut payload = encode_payload(&claims(TokenKind::Access));
        payload[0] = 3;
        let tag = mac(&k, &payload).finalize().into_bytes();
        let t = format!(
            "v1.{}.{}",
            URL_SAFE_NO_PAD.encode(payload),
            URL_SAFE_NO_PAD.encode(tag)
        );
        assert_eq!(
            verify(&k, &t, NOW, TokenKind::Access),
            Err(TokenError::Malformed)
        );
    }

    #[test]
    fn debug_does_not_print_the_key() {
        let k = key(0xab);
        let shown = format!("{k:?} {:#?}", k);
        assert!(!shown.contains("171"), "{shown}");
        assert!(!shown.to_lowercase().contains("ab, "), "{shown}");
        assert!(shown.contains("redacted"));
    }

    #[test]
    fn from_bytes_wants_exactly_32() {
        assert_eq!(TokenKey::from_bytes(&[7; 32]).unwrap().as_bytes(), &[7; 32]);
        for len in [0usize, 31, 33, 64] {
            let err = TokenKey::from_bytes(&vec![0; len]).unwrap_err();
            assert!(
                matches!(err, AuthError::KeyLength { len: l, .. } if l == len as u64),
                "{err:?}"
            );
            assert!(err.to_string().contains(&format!("{len} bytes")), "{err}");
        }
    }

    #[test]
    fn load_or_create_creates_then_loads() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("token.key");
        let created = TokenKey::load_or_create(&path).unwrap();
        let meta = fs::metadata(&path).unwrap();
        assert_eq!(meta.len(), 32);
        assert_eq!(meta.permissions().mode() & 0o777, 0o600);
        assert!(!dir.path().join("token.key.tmp").exists());
        let loaded = TokenKey::load_or_create(&path).unwrap();
        assert_eq!(created.as_bytes(), loaded.as_bytes());
        assert_eq!(fs::read(&path).unwrap(), created.as_bytes().to_vec());
        // Tokens survive a "restart".
        let t = sign(&created, &claims(TokenKind::Access));
        assert!(verify(&loaded, &t, NOW, TokenKind::Access).is_ok());
    }

    #[test]
    fn load_or_create_replaces_a_stale_tmp_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("token.key");
        fs::write(dir.path().join("token.key.tmp"), b"half-written").unwrap();
        let created = TokenKey::load_or_create(&path).unwrap();
        assert_eq!(fs::read(&path).unwrap(), created.as_bytes().to_vec());
    }

    #[test]
    fn load_or_create_wrong_length_names_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("token.key");
        for len in [0usize, 31, 33] {
            fs::write(&path, vec![1u8; len]).unwrap();
            let err = TokenKey::load_or_create(&path).unwrap_err();
            match &err {
                AuthError::KeyLength { path: p, len: l } => {
                    assert_eq!(p, &path);
                    assert_eq!(*l, len as u64);
                }
                other => panic!("{other:?}"),
            }
            let shown = err.to_string();
            assert!(shown.contains(&path.display().to_string()), "{shown}");
            // The bad file is left alone for the operator.
            assert_eq!(fs::read(&path).unwrap().len(), len);
        }
    }

    #[test]
    fn load_or_create_missing_directory_is_io_naming_the_path() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("nope").join("token.key");
        let err = TokenKey::load_or_create(&path).unwrap_err();
        assert!(matches!(err, AuthError::Io { .. }), "{err:?}");
        assert!(err.to_string().contains("nope"), "{err}");
    }
}
