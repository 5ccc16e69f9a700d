//! Kernel and process tuning for many connections: playbooks, sysctl/limits files, `tune check`.
//!
//! Not built yet: this crate lands with the capacity issue (#7).
