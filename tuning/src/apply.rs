//! `tune apply`: close the kernel-knob gaps of a [`Report`] by writing `/proc/sys` and
//! `/sys` directly. Only gaps are written (a value that passes is never touched, and no
//! write lowers a ceiling); limits and memory are printed as instructions, never changed.
//! Writes are not persistent: the shipped `sysctl.d` and `tmpfiles.d` files are.

use crate::host::HostRoot;
use crate::report::{Item, Report, Status};

/// A write `tune apply` will make.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlannedWrite<'a> {
    /// The item it closes.
    pub item: &'a Item,
    /// The value written.
    pub value: &'a str,
    /// The same change as a shell command (what `--dry-run` prints).
    pub command: String,
}

/// The writes that close the report's knob gaps.
pub fn planned_writes(report: &Report) -> Vec<PlannedWrite<'_>> {
    report
        .with_status(Status::Gap)
        .filter_map(|item| {
            let write = item.write.as_ref()?;
            Some(PlannedWrite {
                item,
                value: &write.value,
                command: write.knob.set_command(&write.value),
            })
        })
        .collect()
}

/// Gaps no write can close (limits, memory): the operator's part.
pub fn manual_steps(report: &Report) -> Vec<&Item> {
    report
        .with_status(Status::Gap)
        .filter(|item| item.write.is_none())
        .collect()
}

/// Whether the process may write kernel settings: effective uid 0. Read from
/// `<procfs>/self/status`, so a fabricated tree decides for itself in tests.
pub fn is_root(root: &HostRoot) -> Result<bool, crate::host::CheckError> {
    Ok(root.read_process_facts()?.identity.euid == 0)
}

/// The outcome of one write.
#[derive(Debug)]
pub struct WriteOutcome {
    /// The knob's name.
    pub name: String,
    /// The value before.
    pub from: String,
    /// The value written.
    pub to: String,
    /// The error, if the kernel refused.
    pub error: Option<std::io::Error>,
}

/// Perform the writes, in order, continuing past failures.
pub fn perform(root: &HostRoot, writes: &[PlannedWrite<'_>]) -> Vec<WriteOutcome> {
    writes
        .iter()
        .filter_map(|planned| {
            let knob = planned.item.write.as_ref()?.knob;
            Some(WriteOutcome {
                name: planned.item.name.clone(),
                from: planned.item.current.clone(),
                to: planned.value.to_string(),
                error: root.write_knob(&knob, planned.value).err(),
            })
        })
        .collect()
}
