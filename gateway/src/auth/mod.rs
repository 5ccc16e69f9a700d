//! Accounts and tokens: password hashing, credential rules, signed bearer tokens.
//!
//! Sans-IO apart from [`TokenKey::load_or_create`], which runs once at startup.
//!
//! # Tokens
//!
//! A token is an opaque string `v1.<payload>.<mac>` (both parts base64url without padding)
//! that the client presents as `Authorization: Bearer <token>` or in `Hello{token}`. The
//! payload is 25 bytes: the kind (1 access, 2 refresh), then the user id, the device id
//! and the expiry time in Unix milliseconds, each a little-endian `u64`. The mac is the full
//! 32-byte HMAC-SHA256 of `"confab-token-v1" || payload` under the server's key. Nothing
//! is stored per token: a token is valid while its mac verifies and it has not expired.
//! See [`token`].
//!
//! # The key
//!
//! One 32-byte random key per server, kept in `<data_dir>/token.key` (mode 0600) so tokens
//! survive restarts; created on first start. Deleting the file logs every client out.
//!
//! # Why HMAC and not a JWT library
//!
//! Only this server issues and checks tokens, so there is nothing to interoperate with.
//! One fixed algorithm means no `alg` header to negotiate (no `alg: none`, no key
//! confusion), no JSON to parse before the signature is checked, and a 25-byte payload
//! instead of a few hundred bytes of claims on every request. The version prefix `v1.` is
//! the only agility: a new format gets a new prefix and a new mac domain string.
//!
//! # Passwords
//!
//! argon2id PHC strings ([`password`]). The parameters live in each PHC string, so changing
//! [`PasswordParams`] affects new hashes only; old ones still verify.
#![deny(clippy::indexing_slicing)]
#![cfg_attr(test, allow(clippy::indexing_slicing))]

use std::path::{Path, PathBuf};

pub mod password;
pub mod token;

pub use password::{
    check_password, check_username, hash_password, verify_password, CredentialError,
    PasswordParams, DEFAULT_ITERATIONS, DEFAULT_MEMORY_KIB, DEFAULT_PARALLELISM,
    PASSWORD_BYTES_MAX, PASSWORD_BYTES_MIN, SALT_BYTES, USERNAME_BYTES_MAX, USERNAME_BYTES_MIN,
};
pub use token::{
    sign, verify, Claims, TokenError, TokenKey, TokenKind, TOKEN_BYTES_MAX, TOKEN_KEY_BYTES,
    TOKEN_KEY_FILE_MODE, TOKEN_MAC_BYTES, TOKEN_MAC_DOMAIN, TOKEN_PAYLOAD_BYTES, TOKEN_PREFIX,
};

/// Server-side failures of the auth module. None of these is the client's fault: a bad
/// username, password or token is a [`CredentialError`], `Ok(false)` or a [`TokenError`].
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    /// Reading or writing the token key file (or its temporary file or directory) failed.
    #[error("token key file {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// A token key is not exactly [`TOKEN_KEY_BYTES`] long. `path` is empty for a key that
    /// did not come from a file ([`TokenKey::from_bytes`]).
    #[error(
        "token key{} is {len} bytes, expected exactly {TOKEN_KEY_BYTES} \
         (delete the file to generate a new key; that logs every client out)",
        key_origin(.path)
    )]
    KeyLength { path: PathBuf, len: u64 },
    /// The operating system's random source failed.
    #[error("the OS random source failed: {0}")]
    Random(getrandom::Error),
    /// argon2 rejected the configured parameters ([`PasswordParams::validate`]).
    #[error("argon2 parameters rejected: {0}")]
    Params(String),
    /// argon2 failed while hashing a new password.
    #[error("password hashing failed: {0}")]
    Hash(String),
    /// A stored password hash is not a valid argon2id PHC string. The store wrote it, so
    /// the store is corrupt.
    #[error("stored password hash is corrupt (not a valid argon2id PHC string): {0}")]
    CorruptHash(String),
}

/// `" file <path>"`, or nothing for a key that did not come from a file.
fn key_origin(path: &Path) -> String {
    if path.as_os_str().is_empty() {
        String::new()
    } else {
        format!(" file {}", path.display())
    }
}
