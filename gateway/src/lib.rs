//! # Layout
//!
//! The Confab server: thread-per-core executors, listeners, sessions, HTTP endpoints.
//!
//! - [`config`]: flags + `CONFAB_*` environment + optional TOML file over embedded defaults.
//! - [`server`]: one pinned glommio executor per shard, SO_REUSEPORT listeners on the HTTP
//!   and raw-TCP ports, the ready line.
//! - [`shard`]: per-core state, accept loops, drain on shutdown.
//! - [`http`]: `/healthz`, `/metrics`, the `/ws` upgrade, 404/431.
//! - [`session`]: WebSocket and raw-TCP sessions over the sans-IO `wire` codecs, and the
//!   pre-authentication gate.
//! - [`metrics`]: per-shard counters (one atomic slot per shard) and Prometheus text.
//! - [`shutdown`]: SIGTERM/SIGINT → process flag → each shard's local signal.
//!
//! - [`auth`]: signed expiring tokens, argon2id password hashes, credential rules.
//! - [`api`]: the HTTP `/v1` JSON API (accounts, login, refresh, history).
//! - [`chat`]: mesh messages between shards and their handlers (user home, conversation
//!   owner): the delivery contract lives here.
//! - [`state`]: the metadata each shard folds from its log (users, devices, memberships,
//!   cursors, receipts, direct conversations, published keys).
//! - [`keys`]: the end-to-end encryption key directory (one-time keys claimed once each).
//! - [`media`]: media attachments: presigned upload/download URLs, the object store.
//! - [`cluster`]: cluster mode: the Redis coordinator, node links, forwarded messages.
#![deny(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
#![cfg_attr(test, allow(clippy::unwrap_used, clippy::expect_used, clippy::panic))]

pub mod api;
pub mod auth;
pub mod chat;
pub mod cluster;
pub mod config;
pub mod group;
pub mod http;
pub mod keys;
pub mod media;
pub mod metrics;
pub mod poll;
pub mod presence;
pub mod push;
pub mod server;
pub mod session;
pub mod shard;
pub mod shutdown;
pub mod state;
pub mod web;
