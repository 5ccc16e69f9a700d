//! Password hashing (argon2id, PHC strings) and the username / password rules.
//!
//! Hashing is slow on purpose (tens of milliseconds at the defaults); callers on an
//! executor should run it where it cannot stall other connections.

use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::{Algorithm, Argon2, Params, Version};

use super::AuthError;

/// Default argon2id memory cost in KiB (OWASP: 19 MiB).
pub const DEFAULT_MEMORY_KIB: u32 = 19_456;
/// Default argon2id iteration count (OWASP: 2).
pub const DEFAULT_ITERATIONS: u32 = 2;
/// Default argon2id parallelism (OWASP: 1).
pub const DEFAULT_PARALLELISM: u32 = 1;
/// Length of the random salt of each new hash, in bytes.
pub const SALT_BYTES: usize = 16;
/// Shortest username, in bytes.
pub const USERNAME_BYTES_MIN: usize = 3;
/// Longest username, in bytes.
pub const USERNAME_BYTES_MAX: usize = 32;
/// Shortest password, in bytes.
pub const PASSWORD_BYTES_MIN: usize = 8;
/// Longest password, in bytes (bounds the work a login request can ask for).
pub const PASSWORD_BYTES_MAX: usize = 256;

/// argon2id cost parameters for new hashes. Existing hashes carry their own.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PasswordParams {
    /// Memory cost in KiB.
    pub memory_kib: u32,
    /// Number of passes over the memory.
    pub iterations: u32,
    /// Degree of parallelism (lanes).
    pub parallelism: u32,
}

impl Default for PasswordParams {
    /// OWASP's argon2id recommendation: 19 MiB, 2 iterations, 1 lane.
    fn default() -> Self {
        PasswordParams {
            memory_kib: DEFAULT_MEMORY_KIB,
            iterations: DEFAULT_ITERATIONS,
            parallelism: DEFAULT_PARALLELISM,
        }
    }
}

impl PasswordParams {
    /// `Err(AuthError::Params)` if argon2 does not accept these parameters (for example a
    /// memory cost under 8 KiB per lane, or zero iterations). Check at startup.
    pub fn validate(&self) -> Result<(), AuthError> {
        self.argon2_params().map(|_| ())
    }

    fn argon2_params(&self) -> Result<Params, AuthError> {
        Params::new(self.memory_kib, self.iterations, self.parallelism, None)
            .map_err(|e| AuthError::Params(format!("{e} (in {self:?})")))
    }
}

/// A new argon2id PHC string for `password`, with a random [`SALT_BYTES`]-byte salt.
pub fn hash_password(password: &str, params: &PasswordParams) -> Result<String, AuthError> {
    let argon2 = Argon2::new(Algorithm::Argon2id, Version::V0x13, params.argon2_params()?);
    let mut salt = [0u8; SALT_BYTES];
    getrandom::fill(&mut salt).map_err(AuthError::Random)?;
    let salt = SaltString::encode_b64(&salt).map_err(|e| AuthError::Hash(e.to_string()))?;
    let hash = argon2
        .hash_password(password.as_bytes(), &salt)
        .map_err(|e| AuthError::Hash(e.to_string()))?;
    Ok(hash.to_string())
}

/// Whether `password` matches the stored PHC string `phc`: `Ok(false)` on a mismatch.
/// The cost parameters are those in `phc`, not the current configuration. A `phc` that
/// is not a complete argon2id PHC string is `Err(AuthError::CorruptHash)`: we wrote it.
pub fn verify_password(password: &str, phc: &str) -> Result<bool, AuthError> {
    let hash = PasswordHash::new(phc).map_err(|e| AuthError::CorruptHash(e.to_string()))?;
    if hash.algorithm != Algorithm::Argon2id.ident() {
        return Err(AuthError::CorruptHash(format!(
            "algorithm {} is not argon2id",
            hash.algorithm
        )));
    }
    if hash.salt.is_none() || hash.hash.is_none() {
        return Err(AuthError::CorruptHash(
            "salt or hash output missing".to_string(),
        ));
    }
    // `Argon2::default()` only supplies the verifier; algorithm, version and costs all
    // come from `hash`.
    match Argon2::default().verify_password(password.as_bytes(), &hash) {
        Ok(()) => Ok(true),
        Err(argon2::password_hash::Error::Password) => Ok(false),
        Err(e) => Err(AuthError::CorruptHash(e.to_string())),
    }
}

/// A username or password that breaks the rules. The messages are for the client
/// (`invalid_argument`) and state the rule.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum CredentialError {
    /// Too short or too long.
    #[error(
        "username must be {}..={} bytes of [a-z0-9_.-] (it is {len} bytes)",
        USERNAME_BYTES_MIN,
        USERNAME_BYTES_MAX
    )]
    UsernameLength { len: usize },
    /// A byte outside `[a-z0-9_.-]`.
    #[error(
        "username must be {}..={} bytes of [a-z0-9_.-] (it has another character)",
        USERNAME_BYTES_MIN,
        USERNAME_BYTES_MAX
    )]
    UsernameCharacter,
    /// Too short or too long.
    #[error(
        "password must be {}..={} bytes (it is {len} bytes)",
        PASSWORD_BYTES_MIN,
        PASSWORD_BYTES_MAX
    )]
    PasswordLength { len: usize },
}

/// `Ok` if `name` is [`USERNAME_BYTES_MIN`]..=[`USERNAME_BYTES_MAX`] bytes of `[a-z0-9_.-]`.
pub fn check_username(name: &str) -> Result<(), CredentialError> {
    let len = name.len();
    if !(USERNAME_BYTES_MIN..=USERNAME_BYTES_MAX).contains(&len) {
        return Err(CredentialError::UsernameLength { len });
    }
    let allowed = |b: &u8| b.is_ascii_lowercase() || b.is_ascii_digit() || b"_.-".contains(b);
    if !name.as_bytes().iter().all(allowed) {
        return Err(CredentialError::UsernameCharacter);
    }
    Ok(())
}

/// `Ok` if `password` is [`PASSWORD_BYTES_MIN`]..=[`PASSWORD_BYTES_MAX`] bytes.
pub fn check_password(password: &str) -> Result<(), CredentialError> {
    let len = password.len();
    if !(PASSWORD_BYTES_MIN..=PASSWORD_BYTES_MAX).contains(&len) {
        return Err(CredentialError::PasswordLength { len });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Small costs so the tests are fast.
    const FAST: PasswordParams = PasswordParams {
        memory_kib: 256,
        iterations: 1,
        parallelism: 1,
    };

    #[test]
    fn defaults_are_owasp_and_valid() {
        let d = PasswordParams::default();
        assert_eq!((d.memory_kib, d.iterations, d.parallelism), (19_456, 2, 1));
        d.validate().unwrap();
        FAST.validate().unwrap();
    }

    #[test]
    fn invalid_params_are_rejected() {
        for bad in [
            PasswordParams {
                memory_kib: 1,
                ..FAST
            },
            PasswordParams {
                iterations: 0,
                ..FAST
            },
            PasswordParams {
                parallelism: 0,
                ..FAST
            },
        ] {
            assert!(
                matches!(bad.validate(), Err(AuthError::Params(_))),
                "{bad:?}"
            );
            assert!(matches!(
                hash_password("password1", &bad),
                Err(AuthError::Params(_))
            ));
        }
    }

    #[test]
    fn hash_then_verify() {
        let phc = hash_password("correct horse", &FAST).unwrap();
        assert!(phc.starts_with("$argon2id$v=19$m=256,t=1,p=1$"), "{phc}");
        assert!(verify_password("correct horse", &phc).unwrap());
        assert!(!verify_password("correct horsf", &phc).unwrap());
        assert!(!verify_password("", &phc).unwrap());
        assert!(!verify_password("correct horse ", &phc).unwrap());
    }

    #[test]
    fn same_password_different_salts() {
        let a = hash_password("same password", &FAST).unwrap();
        let b = hash_password("same password", &FAST).unwrap();
        assert_ne!(a, b);
        assert!(verify_password("same password", &a).unwrap());
        assert!(verify_password("same password", &b).unwrap());
    }

    #[test]
    fn old_hashes_verify_under_new_params() {
        let old = hash_password("pw before", &FAST).unwrap();
        let newer = PasswordParams {
            memory_kib: 512,
            iterations: 2,
            parallelism: 2,
        };
        let new = hash_password("pw after", &newer).unwrap();
        assert!(new.contains("m=512,t=2,p=2"), "{new}");
        assert!(verify_password("pw before", &old).unwrap());
        assert!(verify_password("pw after", &new).unwrap());
    }

    #[test]
    fn malformed_phc_is_corruption() {
        let good = hash_password("password", &FAST).unwrap();
        let (without_hash, _) = good.rsplit_once('$').unwrap();
        let cases = [
            String::new(),
            "not a hash".to_string(),
            "$argon2id$".to_string(),
            good.replace("argon2id", "argon2i"),
            good.replace("argon2id", "scrypt"),
            good.replace("m=256", "m=1"),
            good.replace("t=1", "t=0"),
            without_hash.to_string(),
            format!("{good}$extra"),
            good[..good.len() - 3].to_string() + "!!!",
        ];
        for phc in &cases {
            let err = verify_password("password", phc).unwrap_err();
            assert!(matches!(err, AuthError::CorruptHash(_)), "{phc:?}: {err:?}");
            assert!(err.to_string().contains("corrupt"), "{err}");
        }
    }

    #[test]
    fn username_rules_at_the_boundaries() {
        assert_eq!(
            check_username("ab"),
            Err(CredentialError::UsernameLength { len: 2 })
        );
        check_username("abc").unwrap();
        check_username(&"a".repeat(32)).unwrap();
        assert_eq!(
            check_username(&"a".repeat(33)),
            Err(CredentialError::UsernameLength { len: 33 })
        );
        assert_eq!(
            check_username(""),
            Err(CredentialError::UsernameLength { len: 0 })
        );
        check_username("a.b_c-d09z").unwrap();
        check_username("...").unwrap();
        for bad in [
            "Alice", "al ice", "al/ice", "al@ice", "ali\0", "alï", "al+ce",
        ] {
            assert_eq!(
                check_username(bad),
                Err(CredentialError::UsernameCharacter),
                "{bad:?}"
            );
        }
        // Multi-byte characters count in bytes: 2 chars, 4 bytes, still refused.
        assert_eq!(
            check_username("éé"),
            Err(CredentialError::UsernameCharacter)
        );
        let msg = CredentialError::UsernameCharacter.to_string();
        assert!(
            msg.contains("3..=32") && msg.contains("[a-z0-9_.-]"),
            "{msg}"
        );
    }

    #[test]
    fn password_rules_at_the_boundaries() {
        assert_eq!(
            check_password("1234567"),
            Err(CredentialError::PasswordLength { len: 7 })
        );
        check_password("12345678").unwrap();
        check_password(&"p".repeat(256)).unwrap();
        assert_eq!(
            check_password(&"p".repeat(257)),
            Err(CredentialError::PasswordLength { len: 257 })
        );
        // Bytes, not characters: 4 × 'é' is 8 bytes.
        check_password("éééé").unwrap();
        let msg = CredentialError::PasswordLength { len: 7 }.to_string();
        assert!(msg.contains("8..=256"), "{msg}");
    }
}
