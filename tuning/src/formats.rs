//! Parsers for the kernel files `tune` reads. Pure: text in, values out; no file access.
//!
//! # The formats read (Linux 5.x/6.x)
//! - **`/proc/sys/<a>/<b>/<c>`** — sysctl `a.b.c`: one line of one or more unsigned
//!   integers separated by whitespace (`net.ipv4.ip_local_port_range` is `32768\t60999`;
//!   `net.ipv4.tcp_mem` is three page counts `min pressure max`; `tcp_rmem`/`tcp_wmem`
//!   are three byte counts `min default max`). [`parse_ints`].
//! - **`/proc/self/limits`** — a header line, then one line per resource: the name in
//!   words (`Max open files`, `Max locked memory`), then the soft and the hard limit
//!   (decimal, or `unlimited`), then the unit (`files`, `bytes`); columns are padded with
//!   spaces. [`parse_limits`].
//! - **`/proc/meminfo`** — `Key:   <n> kB` lines (`kB` means KiB). [`parse_meminfo`].
//! - **`/proc/self/status`** — `Key:\tvalue` lines; `Uid:` holds the real, effective,
//!   saved and filesystem uids; `CapEff:` the effective capability set as 16 hex digits
//!   (bit n = capability n). [`parse_status`].
//! - **`/sys/devices/system/cpu/online`** — a CPU list such as `0-3,8,10-11`.
//!   [`parse_cpu_list`]. Fallback: **`/proc/cpuinfo`**, one `processor\t: <n>` line per
//!   logical CPU. [`count_cpuinfo_processors`].
//! - **`/sys/kernel/mm/transparent_hugepage/{enabled,defrag}`** — the possible values
//!   separated by spaces, the selected one in brackets: `always defer [madvise] never`.
//!   [`parse_sysfs_choice`].

use thiserror::Error;

/// A value in a kernel file that is not in the documented format.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum FormatError {
    /// A field that should be an unsigned integer is not one.
    #[error("not an unsigned integer: {0:?}")]
    NotAnInteger(String),
    /// The file has no line for a value that must be there.
    #[error("missing {0}")]
    Missing(&'static str),
    /// A CPU list range or a bracketed choice is malformed.
    #[error("malformed {what}: {text:?}")]
    Malformed {
        /// What was being parsed.
        what: &'static str,
        /// The offending text.
        text: String,
    },
}

/// `unlimited` in `/proc/self/limits` (the kernel's `RLIM_INFINITY` is all ones too).
pub const UNLIMITED: u64 = u64::MAX;

/// The whitespace-separated unsigned integers of a sysctl file.
pub fn parse_ints(text: &str) -> Result<Vec<u64>, FormatError> {
    let ints: Vec<u64> = text
        .split_whitespace()
        .map(|field| {
            field
                .parse::<u64>()
                .map_err(|_| FormatError::NotAnInteger(field.to_string()))
        })
        .collect::<Result<_, _>>()?;
    if ints.is_empty() {
        return Err(FormatError::Missing("value"));
    }
    Ok(ints)
}

/// A soft and a hard resource limit; [`UNLIMITED`] for `unlimited`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct Limit {
    /// What the process may use now (it may raise it up to `hard` by itself).
    pub soft: u64,
    /// The ceiling; raising it needs CAP_SYS_RESOURCE.
    pub hard: u64,
}

/// The limits of `/proc/self/limits` that matter for connections.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct ProcessLimits {
    /// RLIMIT_NOFILE: descriptors; every connection is one.
    pub nofile: Limit,
    /// RLIMIT_MEMLOCK in bytes: io_uring registered buffers are charged to it.
    pub memlock: Limit,
}

/// Parse `/proc/self/limits`.
pub fn parse_limits(text: &str) -> Result<ProcessLimits, FormatError> {
    Ok(ProcessLimits {
        nofile: find_limit(text, "Max open files")?,
        memlock: find_limit(text, "Max locked memory")?,
    })
}

fn find_limit(text: &str, name: &'static str) -> Result<Limit, FormatError> {
    let rest = text
        .lines()
        .find_map(|line| line.strip_prefix(name))
        .ok_or(FormatError::Missing(name))?;
    let mut fields = rest.split_whitespace();
    let soft = parse_limit_value(fields.next())?;
    let hard = parse_limit_value(fields.next())?;
    Ok(Limit { soft, hard })
}

fn parse_limit_value(field: Option<&str>) -> Result<u64, FormatError> {
    match field {
        None => Err(FormatError::Missing("limit value")),
        Some("unlimited") => Ok(UNLIMITED),
        Some(value) => value
            .parse()
            .map_err(|_| FormatError::NotAnInteger(value.to_string())),
    }
}

/// The two `/proc/meminfo` figures the memory estimate is compared with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct MemInfo {
    /// `MemTotal`, bytes.
    pub total_bytes: u64,
    /// `MemAvailable`, bytes: what can be allocated without swapping (free + reclaimable).
    pub available_bytes: u64,
}

/// Parse `/proc/meminfo`.
pub fn parse_meminfo(text: &str) -> Result<MemInfo, FormatError> {
    Ok(MemInfo {
        total_bytes: meminfo_kib(text, "MemTotal:")? * 1024,
        available_bytes: meminfo_kib(text, "MemAvailable:")? * 1024,
    })
}

fn meminfo_kib(text: &str, key: &'static str) -> Result<u64, FormatError> {
    let rest = text
        .lines()
        .find_map(|line| line.strip_prefix(key))
        .ok_or(FormatError::Missing(key))?;
    let number = rest
        .split_whitespace()
        .next()
        .ok_or(FormatError::Missing(key))?;
    number
        .parse()
        .map_err(|_| FormatError::NotAnInteger(number.to_string()))
}

/// Who the process is, from `/proc/self/status`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct Identity {
    /// The effective uid (0 = root).
    pub euid: u64,
    /// The effective capability set, bit n = capability n.
    pub cap_eff: u64,
}

/// CAP_IPC_LOCK: io_uring does not charge registered buffers to RLIMIT_MEMLOCK with it.
pub const CAP_IPC_LOCK: u32 = 14;
/// CAP_SYS_RESOURCE: a process with it may raise its hard limits (up to `fs.nr_open`).
pub const CAP_SYS_RESOURCE: u32 = 24;

impl Identity {
    /// Whether the effective set holds capability `cap`.
    pub fn has_capability(&self, cap: u32) -> bool {
        cap < 64 && self.cap_eff & (1 << cap) != 0
    }
}

/// Parse `/proc/self/status`.
pub fn parse_status(text: &str) -> Result<Identity, FormatError> {
    let uids = status_field(text, "Uid:")?;
    let euid_text = uids
        .split_whitespace()
        .nth(1)
        .ok_or(FormatError::Missing("effective uid"))?;
    let euid = euid_text
        .parse()
        .map_err(|_| FormatError::NotAnInteger(euid_text.to_string()))?;
    let cap_text = status_field(text, "CapEff:")?.trim();
    let cap_eff = u64::from_str_radix(cap_text, 16)
        .map_err(|_| FormatError::NotAnInteger(cap_text.to_string()))?;
    Ok(Identity { euid, cap_eff })
}

fn status_field<'a>(text: &'a str, key: &'static str) -> Result<&'a str, FormatError> {
    text.lines()
        .find_map(|line| line.strip_prefix(key))
        .ok_or(FormatError::Missing(key))
}

/// The number of CPUs in a CPU list (`0-3,8,10-11` → 7).
pub fn parse_cpu_list(text: &str) -> Result<u64, FormatError> {
    let mut count = 0;
    for part in text.trim().split(',').filter(|part| !part.is_empty()) {
        count += match part.split_once('-') {
            None => {
                cpu_number(part)?;
                1
            }
            Some((first, last)) => {
                let (first, last) = (cpu_number(first)?, cpu_number(last)?);
                if last < first {
                    return Err(malformed("CPU range", part));
                }
                last - first + 1
            }
        };
    }
    if count == 0 {
        return Err(malformed("CPU list", text));
    }
    Ok(count)
}

fn cpu_number(text: &str) -> Result<u64, FormatError> {
    text.trim()
        .parse()
        .map_err(|_| FormatError::NotAnInteger(text.to_string()))
}

/// The number of `processor` lines in `/proc/cpuinfo`.
pub fn count_cpuinfo_processors(text: &str) -> Result<u64, FormatError> {
    let count = text
        .lines()
        .filter(|line| {
            line.split(':')
                .next()
                .is_some_and(|key| key.trim() == "processor")
        })
        .count() as u64;
    if count == 0 {
        return Err(FormatError::Missing("processor lines"));
    }
    Ok(count)
}

/// The selected word of a sysfs choice file (`always [madvise] never` → `madvise`).
pub fn parse_sysfs_choice(text: &str) -> Result<String, FormatError> {
    text.split_whitespace()
        .find_map(|word| word.strip_prefix('[')?.strip_suffix(']'))
        .map(str::to_string)
        .ok_or_else(|| malformed("sysfs choice (no [selected] word)", text))
}

fn malformed(what: &'static str, text: &str) -> FormatError {
    FormatError::Malformed {
        what,
        text: text.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMITS: &str = "\
Limit                     Soft Limit           Hard Limit           Units     
Max cpu time              unlimited            unlimited            seconds   
Max open files            20000                20000                files     
Max locked memory         8388608              unlimited            bytes     
";

    #[test]
    fn limits_are_read_by_name_with_unlimited() {
        let limits = parse_limits(LIMITS).unwrap();
        assert_eq!(
            limits.nofile,
            Limit {
                soft: 20_000,
                hard: 20_000
            }
        );
        assert_eq!(
            limits.memlock,
            Limit {
                soft: 8_388_608,
                hard: UNLIMITED
            }
        );
        assert_eq!(
            parse_limits("Limit\nMax open files 1 2\n"),
            Err(FormatError::Missing("Max locked memory"))
        );
    }

    #[test]
    fn ints_are_whitespace_separated() {
        assert_eq!(parse_ints("32768\t60999\n").unwrap(), vec![32768, 60999]);
        assert_eq!(parse_ints("4096").unwrap(), vec![4096]);
        assert!(parse_ints("").is_err());
        assert!(parse_ints("12 x").is_err());
    }

    #[test]
    fn meminfo_is_in_kib() {
        let info =
            parse_meminfo("MemTotal:  100 kB\nMemFree: 5 kB\nMemAvailable:   60 kB\n").unwrap();
        assert_eq!(info.total_bytes, 102_400);
        assert_eq!(info.available_bytes, 61_440);
    }

    #[test]
    fn status_gives_effective_uid_and_capabilities() {
        let identity =
            parse_status("Name:\tx\nUid:\t1000\t0\t0\t0\nCapEff:\t000001fffeffffff\n").unwrap();
        assert_eq!(identity.euid, 0);
        assert!(identity.has_capability(CAP_IPC_LOCK));
        assert!(!identity.has_capability(CAP_SYS_RESOURCE));
    }

    #[test]
    fn cpu_lists_count_ranges_and_singles() {
        assert_eq!(parse_cpu_list("0-1\n").unwrap(), 2);
        assert_eq!(parse_cpu_list("0-3,8,10-11").unwrap(), 7);
        assert!(parse_cpu_list("3-1").is_err());
        assert!(parse_cpu_list("").is_err());
        assert_eq!(
            count_cpuinfo_processors("processor\t: 0\nmodel\t: x\n\nprocessor\t: 1\n").unwrap(),
            2
        );
    }

    #[test]
    fn sysfs_choice_is_the_bracketed_word() {
        assert_eq!(
            parse_sysfs_choice("always defer defer+madvise [madvise] never\n").unwrap(),
            "madvise"
        );
        assert!(parse_sysfs_choice("always madvise never").is_err());
    }
}
