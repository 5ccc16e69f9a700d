//! The result of `tune check`: one [`Item`] per setting, rendered as a table with the fix
//! commands, or as JSON.
//!
//! # JSON (`tune check --json`)
//! ```text
//! { "connections": 500000, "nodes": 27, "nodes_needed": 27, "shards_per_node": 1,
//!   "loadgen_on_host": true, "loadgen_processes": 27, "fit": false,
//!   "items": [ { "name": "net.core.somaxconn", "current": "4096", "required": ">= 4096",
//!                "status": "ok" | "gap" | "warn", "fix": "sysctl -w …" | null,
//!                "note": "…" | null, "why": "…" } ] }
//! ```
//! `fit` is false when any item is a `gap`; warnings do not make a host unfit.

use serde::Serialize;

use crate::plan::Knob;

/// How a setting compares with what the plan needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    /// Meets the requirement.
    Ok,
    /// Falls short: the host is not fit until it is fixed.
    Gap,
    /// Works, with a cost worth knowing (degraded, not broken).
    Warn,
}

impl Status {
    /// The word in the text table.
    pub fn label(self) -> &'static str {
        match self {
            Status::Ok => "OK",
            Status::Gap => "GAP",
            Status::Warn => "WARN",
        }
    }
}

/// A kernel value `tune apply` can write to close a gap.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct KnobWrite {
    /// Where.
    pub knob: Knob,
    /// What (the file's text, fields separated by spaces).
    pub value: String,
}

/// One checked setting.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Item {
    /// Sysctl name, sysfs path, or limit name.
    pub name: String,
    /// What the host has.
    pub current: String,
    /// What the plan needs.
    pub required: String,
    /// The verdict.
    pub status: Status,
    /// For a gap or warning: the exact command or instruction that fixes it.
    pub fix: Option<String>,
    /// Context: the arithmetic behind a figure, or why something passes.
    pub note: Option<String>,
    /// Why the setting matters, in one line.
    pub why: String,
    /// For a kernel knob whose fix `tune apply` can perform.
    #[serde(skip)]
    pub write: Option<KnobWrite>,
}

/// Everything `tune check` found.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Report {
    /// Client connections the host is checked for.
    pub connections: u64,
    /// Gateway processes on the host (given, or the fewest the hard NOFILE limit allows).
    pub nodes: u64,
    /// The fewest nodes the hard NOFILE limit allows (`None`: it allows none).
    pub nodes_needed: Option<u64>,
    /// Shards per node the memory and memlock figures assume.
    pub shards_per_node: u64,
    /// Whether the load generator's socket ends are counted on this host.
    pub loadgen_on_host: bool,
    /// Load-generator processes needed at the same hard NOFILE limit (when on host).
    pub loadgen_processes: Option<u64>,
    /// No gaps.
    pub fit: bool,
    /// One per setting, in a stable order.
    pub items: Vec<Item>,
}

impl Report {
    /// Build a report; `fit` follows from the items.
    pub fn new(header: ReportHeader, items: Vec<Item>) -> Report {
        let fit = items.iter().all(|item| item.status != Status::Gap);
        Report {
            connections: header.connections,
            nodes: header.nodes,
            nodes_needed: header.nodes_needed,
            shards_per_node: header.shards_per_node,
            loadgen_on_host: header.loadgen_on_host,
            loadgen_processes: header.loadgen_processes,
            fit,
            items,
        }
    }

    /// Items with this status.
    pub fn with_status(&self, status: Status) -> impl Iterator<Item = &Item> {
        self.items.iter().filter(move |item| item.status == status)
    }

    /// The report as pretty JSON.
    pub fn to_json(&self) -> String {
        // Serializing plain structs of strings and integers cannot fail.
        serde_json::to_string_pretty(self).unwrap_or_else(|e| format!("{{\"error\": \"{e}\"}}"))
    }

    /// The report as a table, then fixes, warnings, notes and the verdict.
    pub fn to_text(&self) -> String {
        let mut out = self.title();
        out.push('\n');
        out.push_str(&self.table());
        append_section(&mut out, "Gaps — fix with:", self.fix_lines(Status::Gap));
        append_section(&mut out, "Warnings:", self.fix_lines(Status::Warn));
        append_section(&mut out, "Notes:", self.note_lines());
        out.push('\n');
        out.push_str(&self.verdict());
        out.push('\n');
        out
    }

    fn title(&self) -> String {
        let loadgen = if self.loadgen_on_host {
            "load generator on this host"
        } else {
            "load generator elsewhere"
        };
        let mut title = format!(
            "tune check: {} connections, {} node(s) × {} shard(s), {loadgen}\n",
            self.connections, self.nodes, self.shards_per_node
        );
        if let Some(processes) = self.loadgen_processes.filter(|&p| p > 1) {
            title.push_str(&format!(
                "load generator: spread over >= {processes} worker processes (same NOFILE limit)\n"
            ));
        }
        title
    }

    fn table(&self) -> String {
        let headers = ["ITEM", "CURRENT", "REQUIRED", "STATUS"];
        let rows: Vec<[&str; 4]> = self
            .items
            .iter()
            .map(|item| {
                [
                    item.name.as_str(),
                    item.current.as_str(),
                    item.required.as_str(),
                    item.status.label(),
                ]
            })
            .collect();
        let mut widths = headers.map(str::len);
        for row in &rows {
            for (width, cell) in widths.iter_mut().zip(row) {
                *width = (*width).max(cell.chars().count());
            }
        }
        let mut out = String::new();
        for row in std::iter::once(&headers).chain(&rows) {
            let cells: Vec<String> = row
                .iter()
                .zip(widths)
                .map(|(cell, width)| format!("{cell:<width$}"))
                .collect();
            out.push_str(cells.join("  ").trim_end());
            out.push('\n');
        }
        out
    }

    fn fix_lines(&self, status: Status) -> Vec<String> {
        self.with_status(status)
            .map(|item| {
                let fix = item.fix.as_deref().unwrap_or("(no command)");
                match &item.note {
                    Some(note) if status == Status::Warn => {
                        format!("{}: {note}\n      {fix}", item.name)
                    }
                    _ => format!("{}: {fix}", item.name),
                }
            })
            .collect()
    }

    fn note_lines(&self) -> Vec<String> {
        self.items
            .iter()
            .filter(|item| item.status != Status::Warn)
            .filter_map(|item| Some(format!("{}: {}", item.name, item.note.as_ref()?)))
            .collect()
    }

    fn verdict(&self) -> String {
        let gaps = self.with_status(Status::Gap).count();
        let persist = match shipped_sysctl_file(self.connections) {
            Some(file) => format!(
                "\nPersist the sysctls: install tuning/sysctl.d/{file} in /etc/sysctl.d/ (sysctl --system)."
            ),
            None => String::new(),
        };
        if self.fit {
            format!("Result: FIT for {} connections.{persist}", self.connections)
        } else {
            format!(
                "Result: NOT FIT for {} connections ({gaps} gap(s)).{persist}",
                self.connections
            )
        }
    }
}

/// The plan facts a report starts with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReportHeader {
    /// See [`Report::connections`].
    pub connections: u64,
    /// See [`Report::nodes`].
    pub nodes: u64,
    /// See [`Report::nodes_needed`].
    pub nodes_needed: Option<u64>,
    /// See [`Report::shards_per_node`].
    pub shards_per_node: u64,
    /// See [`Report::loadgen_on_host`].
    pub loadgen_on_host: bool,
    /// See [`Report::loadgen_processes`].
    pub loadgen_processes: Option<u64>,
}

fn append_section(out: &mut String, title: &str, lines: Vec<String>) {
    if lines.is_empty() {
        return;
    }
    out.push('\n');
    out.push_str(title);
    out.push('\n');
    for line in lines {
        out.push_str("  ");
        out.push_str(&line);
        out.push('\n');
    }
}

/// The shipped `tuning/sysctl.d` file sized for `connections` (the smallest that covers
/// it), if any.
pub fn shipped_sysctl_file(connections: u64) -> Option<&'static str> {
    match connections {
        0..=100_000 => Some("90-confab-100k.conf"),
        100_001..=500_000 => Some("90-confab-500k.conf"),
        500_001..=1_000_000 => Some("90-confab-1m.conf"),
        _ => None,
    }
}

/// Bytes as a short human figure (`1.5 GiB`, `512 KiB`, `unlimited`).
pub fn human_bytes(bytes: u64) -> String {
    const UNITS: [(&str, u64); 3] = [("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)];
    if bytes == crate::formats::UNLIMITED {
        return "unlimited".to_string();
    }
    for (unit, size) in UNITS {
        if bytes >= size {
            let whole = bytes / size;
            let tenths = (bytes % size) * 10 / size;
            return if tenths == 0 {
                format!("{whole} {unit}")
            } else {
                format!("{whole}.{tenths} {unit}")
            };
        }
    }
    format!("{bytes} B")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn item(name: &str, status: Status) -> Item {
        Item {
            name: name.to_string(),
            current: "1".to_string(),
            required: ">= 2".to_string(),
            status,
            fix: Some(format!("sysctl -w {name}=2")),
            note: None,
            why: String::new(),
            write: None,
        }
    }

    fn header() -> ReportHeader {
        ReportHeader {
            connections: 100_000,
            nodes: 1,
            nodes_needed: Some(1),
            shards_per_node: 2,
            loadgen_on_host: true,
            loadgen_processes: Some(1),
        }
    }

    #[test]
    fn a_gap_makes_the_host_unfit_and_a_warning_does_not() {
        let warn_only = Report::new(
            header(),
            vec![item("a", Status::Ok), item("b", Status::Warn)],
        );
        assert!(warn_only.fit);
        let gap = Report::new(header(), vec![item("a", Status::Gap)]);
        assert!(!gap.fit);
        let text = gap.to_text();
        assert!(text.contains("a: sysctl -w a=2"), "{text}");
        assert!(text.contains("NOT FIT"), "{text}");
        assert!(text.contains("90-confab-100k.conf"), "{text}");
        let json: serde_json::Value = serde_json::from_str(&gap.to_json()).unwrap();
        assert_eq!(json["items"][0]["status"], "gap");
        assert_eq!(json["fit"], false);
    }

    #[test]
    fn human_bytes_rounds_down_to_tenths() {
        assert_eq!(human_bytes(512 << 10), "512 KiB");
        assert_eq!(human_bytes(3 << 29), "1.5 GiB");
        assert_eq!(human_bytes(100), "100 B");
        assert_eq!(human_bytes(u64::MAX), "unlimited");
    }

    #[test]
    fn shipped_files_cover_up_to_a_million() {
        assert_eq!(shipped_sysctl_file(100_000), Some("90-confab-100k.conf"));
        assert_eq!(shipped_sysctl_file(100_001), Some("90-confab-500k.conf"));
        assert_eq!(shipped_sysctl_file(1_000_000), Some("90-confab-1m.conf"));
        assert_eq!(shipped_sysctl_file(1_000_001), None);
    }
}
