//! Reading (and, for `tune apply`, writing) a host's kernel files under a procfs root and
//! a sysfs root: `/proc` and `/sys` on the live host, a fabricated tree in tests. The file
//! formats are documented in [`crate::formats`].
//!
//! Files read, relative to the roots:
//! - procfs: `self/limits`, `self/status`, `meminfo`, `cpuinfo` (fallback for the CPU
//!   count), `sys/<sysctl path>` for every knob of [`crate::plan::requirements`].
//! - sysfs: `devices/system/cpu/online`, `kernel/mm/transparent_hugepage/{enabled,defrag}`.

use std::io;
use std::path::{Path, PathBuf};

use thiserror::Error;

use crate::check::{self, CheckOptions, KnobValues, ProcessFacts, ValueError};
use crate::formats::{self, FormatError};
use crate::plan::{self, Knob};
use crate::report::Report;

/// Why a host could not be checked (exit code 2).
#[derive(Debug, Error)]
pub enum CheckError {
    /// A file could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: io::Error,
    },
    /// A file is not in its documented format.
    #[error("unexpected content in {path}: {source}")]
    Format {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        #[source]
        source: FormatError,
    },
    /// A knob's value is missing or not in its format.
    #[error(transparent)]
    Value(#[from] ValueError),
}

/// Where the kernel's files are.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostRoot {
    /// `/proc` on the live host.
    pub procfs: PathBuf,
    /// `/sys` on the live host.
    pub sysfs: PathBuf,
}

impl HostRoot {
    /// The live host.
    pub fn live() -> HostRoot {
        HostRoot {
            procfs: PathBuf::from("/proc"),
            sysfs: PathBuf::from("/sys"),
        }
    }

    /// The file holding `knob`.
    pub fn knob_path(&self, knob: &Knob) -> PathBuf {
        match knob {
            Knob::Sysctl(_) => self.procfs.join(knob.relative_path()),
            Knob::Sysfs(_) => self.sysfs.join(knob.relative_path()),
        }
    }

    /// A knob's content; `None` when its file does not exist.
    pub fn read_knob(&self, knob: &Knob) -> Result<Option<String>, CheckError> {
        let path = self.knob_path(knob);
        match std::fs::read_to_string(&path) {
            Ok(text) => Ok(Some(text)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(source) => Err(CheckError::Read { path, source }),
        }
    }

    /// Write a knob (the kernel parses the text as `sysctl -w` would send it).
    pub fn write_knob(&self, knob: &Knob, value: &str) -> io::Result<()> {
        std::fs::write(self.knob_path(knob), format!("{value}\n"))
    }

    /// The contents of every knob in `knobs`.
    pub fn read_knobs<'a>(
        &self,
        knobs: impl IntoIterator<Item = &'a Knob>,
    ) -> Result<KnobValues, CheckError> {
        knobs
            .into_iter()
            .map(|knob| Ok((*knob, self.read_knob(knob)?)))
            .collect()
    }

    /// Limits, memory, CPUs and identity of the process running `tune`.
    pub fn read_process_facts(&self) -> Result<ProcessFacts, CheckError> {
        Ok(ProcessFacts {
            limits: parse_file(&self.procfs.join("self/limits"), formats::parse_limits)?,
            memory: parse_file(&self.procfs.join("meminfo"), formats::parse_meminfo)?,
            cores: self.read_cores()?,
            identity: parse_file(&self.procfs.join("self/status"), formats::parse_status)?,
        })
    }

    /// Online CPUs from sysfs, else the `processor` lines of `/proc/cpuinfo`.
    fn read_cores(&self) -> Result<u64, CheckError> {
        let online = self.sysfs.join("devices/system/cpu/online");
        if online.exists() {
            return parse_file(&online, formats::parse_cpu_list);
        }
        parse_file(
            &self.procfs.join("cpuinfo"),
            formats::count_cpuinfo_processors,
        )
    }
}

fn parse_file<T>(
    path: &Path,
    parse: impl FnOnce(&str) -> Result<T, FormatError>,
) -> Result<T, CheckError> {
    let text = std::fs::read_to_string(path).map_err(|source| CheckError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    parse(&text).map_err(|source| CheckError::Format {
        path: path.to_path_buf(),
        source,
    })
}

/// Read the host and compare it with what `options` need.
pub fn check_host(root: &HostRoot, options: &CheckOptions) -> Result<Report, CheckError> {
    let facts = root.read_process_facts()?;
    let plan = check::resolve_plan(options, &facts);
    let requirements = plan::requirements(&plan);
    let knobs = root.read_knobs(requirements.iter().map(|r| &r.knob))?;
    Ok(check::evaluate(&plan, &facts, &knobs)?)
}
