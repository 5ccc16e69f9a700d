//! What the crash appender (`src/bin/crash_appender.rs`) writes and the crash test
//! (`tests/crash.rs`) checks: one definition, included by both with `#[path]`, so the
//! two can never disagree about a record.

use log_engine::Config;

/// Conversations the appender spreads records over.
pub const CONVERSATIONS: u64 = 8;

/// The log configuration of the appender (small segments and checkpoints, so that kills
/// land during rolls, spare preparation, checkpoint writes and retention; a small size
/// limit, so that retention retires segments and rolls reuse them as recycled spares);
/// the test reopens with it.
pub fn crash_config() -> Config {
    Config {
        segment_bytes: 256 * 1024,
        checkpoint_interval_bytes: 128 * 1024,
        retention_bytes: RETENTION_BYTES,
        ..Config::default()
    }
}

/// The appender's retention limit: four segments.
pub const RETENTION_BYTES: u64 = 1024 * 1024;

/// The payload of message `id`.
pub fn payload_for(id: u64) -> Vec<u8> {
    let len = 16 + (id % 97) as usize * 4;
    (0..len)
        .map(|i| (id as u8).wrapping_mul(31).wrapping_add(i as u8))
        .collect()
}

/// The idempotency key of message `id`.
pub fn key_for(id: u64) -> [u8; 16] {
    let mut key = [0u8; 16];
    key[..8].copy_from_slice(&id.to_le_bytes());
    key[8..].copy_from_slice(&(id ^ 0x5EED_5EED_5EED_5EED).to_le_bytes());
    key
}
