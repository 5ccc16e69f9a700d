//! Append-only segmented log keyed by conversation, with group commit, recovery and retention.
//!
//! Not built yet: this crate lands with the log-engine issue (#3).
