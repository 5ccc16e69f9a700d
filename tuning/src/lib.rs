//! Kernel and process tuning for hosts that hold many connections: the logic behind the
//! `tune` binary, next to the playbooks (`README.md`, `playbook.md`) and ready-to-install
//! files (`sysctl.d/`, `limits.d/`, `systemd/`, `tmpfiles.d/`) of this crate.
//!
//! # Layout
//! - [`plan`]: what a host needs for N connections — pure functions of a [`plan::HostPlan`]
//!   and named, documented constants ([`plan::requirements`], [`plan::nodes_needed`],
//!   [`plan::memory_estimate`]).
//! - [`formats`]: parsers of the kernel files read (formats documented there).
//! - [`check`]: sans-IO comparison of host facts with a plan → [`report::Report`].
//! - [`host`]: reads (and writes) a procfs/sysfs root: the live host or a fabricated tree.
//! - [`apply`]: which knob writes close which gaps.
//! - [`report`]: the report as a table with fix commands, or JSON.
//! - [`sysctl_conf`]: `sysctl.d` file parser (the shipped files are tested with it).
//!
//! Depends on nothing of Confab's; nothing of Confab's depends on it.
#![deny(
    missing_docs,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]
#![cfg_attr(
    test,
    allow(
        clippy::unwrap_used,
        clippy::expect_used,
        clippy::indexing_slicing,
        clippy::panic
    )
)]

pub mod apply;
pub mod check;
pub mod formats;
pub mod host;
pub mod plan;
pub mod report;
pub mod sysctl_conf;
