//! The Confab server: executors, listeners, sessions, HTTP API, web client.
//!
//! Not built yet: this crate lands with the gateway issue (#4).
