//! Parser for `sysctl.d` files (sysctl.d(5)), used to test the shipped files against
//! [`crate::plan::requirements`].
//!
//! # Format
//! One assignment per line, `key = value`. Lines that are blank or start with `#` or `;`
//! are comments. Keys use `.` (or `/`) between components; a leading `-` means "ignore
//! failure to set it" (e.g. a module's sysctl when the module is not loaded). Values keep
//! their inner whitespace (`1024 65535`).

use std::collections::BTreeMap;

use thiserror::Error;

/// A line that is neither a comment nor `key = value`.
#[derive(Debug, Error, PartialEq, Eq)]
#[error("line {line}: expected `key = value`, got {text:?}")]
pub struct SyntaxError {
    /// 1-based line number.
    pub line: usize,
    /// The line.
    pub text: String,
}

/// The assignments of a `sysctl.d` file: dotted key → value. A later line wins, as with
/// `sysctl --system`.
pub fn parse(text: &str) -> Result<BTreeMap<String, String>, SyntaxError> {
    let mut assignments = BTreeMap::new();
    for (index, raw) in text.lines().enumerate() {
        let line = raw.trim();
        if line.is_empty() || line.starts_with('#') || line.starts_with(';') {
            continue;
        }
        let (key, value) = line.split_once('=').ok_or_else(|| SyntaxError {
            line: index + 1,
            text: raw.to_string(),
        })?;
        let key = key.trim().trim_start_matches('-').replace('/', ".");
        let value = value.split_whitespace().collect::<Vec<_>>().join(" ");
        assignments.insert(key, value);
    }
    Ok(assignments)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn comments_dashes_slashes_and_inner_whitespace() {
        let parsed = parse(
            "# c\n; c\n\nfs.nr_open = 1048576\n-net/netfilter/nf_conntrack_max=5\n\
             net.ipv4.ip_local_port_range =  1024\t65535 \nfs.nr_open = 2\n",
        )
        .unwrap();
        assert_eq!(parsed["fs.nr_open"], "2");
        assert_eq!(parsed["net.netfilter.nf_conntrack_max"], "5");
        assert_eq!(parsed["net.ipv4.ip_local_port_range"], "1024 65535");
        assert_eq!(parse("oops\n").unwrap_err().line, 1);
    }
}
