//! Transparent huge pages for the log's batch buffers, and only for them.
//!
//! Why: a batch is written with one `O_DIRECT` write straight from its buffer. From
//! 4 KiB pages a 4 MiB write pins 1,024 pages and goes to the device as ~1,000
//! scatter-gather segments (this virtio disk takes at most 254 per request: five
//! requests); from 2 MiB pages it is two segments and one request. Measured here
//! (`bench/RESULTS.md`, session 7): fio 4 MiB O_DIRECT write + fdatasync ~2.2 GB/s from
//! 4 KiB pages vs ~2.6 GB/s from huge pages; the log's 16 KiB closed loop in steady
//! state 1.6–1.8 GB/s → 2.8–3.2 GB/s.
//!
//! Why not everywhere: on these VMs the first touch of a fresh 2 MiB page costs 4–6 ms,
//! so the servers turn huge pages off for their heap (mimalloc would ask for them on
//! every arena). The batch buffers are few, long-lived and touched once at open
//! ([`crate::writer::Writer::warm_buffers`]), so they pay that cost before the first
//! append, never on the owner thread's hot path.
//!
//! How: the process disables THP except where advised ([`limit_to_advised_regions`],
//! Linux ≥ 6.18's `PR_THP_DISABLE_EXCEPT_ADVISED`; on older kernels THP stays off
//! entirely and the buffers simply get 4 KiB pages), and the writer advises
//! `MADV_HUGEPAGE` on the 2 MiB-aligned interior of each pooled buffer before touching
//! it ([`advise`]). Advice is only advice: every failure leaves ordinary pages.

/// Size of a transparent huge page on x86-64 and most arm64 kernels.
pub const HUGE_PAGE_BYTES: usize = 2 * 1024 * 1024;

/// `PR_THP_DISABLE_EXCEPT_ADVISED` (linux/prctl.h, 6.18): with `PR_SET_THP_DISABLE`,
/// disable THP except in regions marked `MADV_HUGEPAGE`. Not in the `libc` crate yet.
const PR_THP_DISABLE_EXCEPT_ADVISED: libc::c_ulong = 1 << 1;

/// What [`limit_to_advised_regions`] managed to set.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ThpPolicy {
    /// Huge pages only in `MADV_HUGEPAGE` regions (the log's batch buffers).
    AdvisedOnly,
    /// No huge pages in this process (kernel older than 6.18).
    Off,
    /// Neither call worked; the system's own policy applies.
    Unchanged,
}

/// Turns transparent huge pages off for the process except in regions advised
/// `MADV_HUGEPAGE`; falls back to turning them off entirely where the kernel does not
/// know the exception. Call it early in `main`. Any heap region the allocator already
/// advised keeps huge pages, so pair it with the allocator told not to advise (for
/// mimalloc: `MIMALLOC_ALLOW_THP=0` in the environment at exec).
pub fn limit_to_advised_regions() -> ThpPolicy {
    // SAFETY: prctl with integer arguments only.
    let rc = unsafe {
        libc::prctl(
            libc::PR_SET_THP_DISABLE,
            1 as libc::c_ulong,
            PR_THP_DISABLE_EXCEPT_ADVISED,
            0 as libc::c_ulong,
            0 as libc::c_ulong,
        )
    };
    if rc == 0 {
        return ThpPolicy::AdvisedOnly;
    }
    turn_off()
}

/// Transparent huge pages off for the whole process.
fn turn_off() -> ThpPolicy {
    // SAFETY: prctl with integer arguments only.
    match unsafe { libc::prctl(libc::PR_SET_THP_DISABLE, 1, 0, 0, 0) } {
        0 => ThpPolicy::Off,
        _ => ThpPolicy::Unchanged,
    }
}

/// The variable that makes mimalloc leave its arenas alone (no `MADV_HUGEPAGE`). It is
/// read once, when the process starts.
pub const MIMALLOC_THP_VAR: &str = "MIMALLOC_ALLOW_THP";

/// For a program whose global allocator is mimalloc; call it first thing in `main`.
///
/// Unless [`MIMALLOC_THP_VAR`] is set, runs the program again with it set to `0`
/// ([`exec_self_with_env`]; on success this call does not return). With it at `0`,
/// huge pages are limited to advised regions ([`limit_to_advised_regions`]); with it
/// set otherwise, or when the exec failed, they are turned off for the whole process.
pub fn set_up_for_mimalloc() -> ThpPolicy {
    let allocator = std::env::var_os(MIMALLOC_THP_VAR);
    if allocator.is_none() {
        let error = exec_self_with_env(MIMALLOC_THP_VAR, "0");
        eprintln!("could not restart with {MIMALLOC_THP_VAR}=0 ({error}); huge pages off");
    }
    if allocator.as_deref() == Some(std::ffi::OsStr::new("0")) {
        return limit_to_advised_regions();
    }
    turn_off()
}

/// Runs this same program again (its binary, same arguments and environment)
/// with `var=value` added. For allocator settings read only when a process starts (for
/// mimalloc, `MIMALLOC_ALLOW_THP`). Does not return when it works; returns the error
/// when it does not. Call it first thing in `main`, before any thread exists.
pub fn exec_self_with_env(var: &str, value: &str) -> std::io::Error {
    use std::os::unix::process::CommandExt;
    let mut args = std::env::args_os();
    // The binary's own path, not `/proc/self/exe`: the process keeps its name in `ps`.
    let program = std::env::current_exe().unwrap_or_else(|_| "/proc/self/exe".into());
    let mut command = std::process::Command::new(program);
    if let Some(name) = args.next() {
        command.arg0(name);
    }
    command.args(args).env(var, value).exec()
}

/// Marks the whole 2 MiB pages inside `buffer`'s allocation `MADV_HUGEPAGE`. Call it
/// before the first touch: pages already faulted in stay small. Returns whether the
/// kernel took the advice (false also when the allocation holds no whole huge page).
pub fn advise(buffer: &Vec<u8>) -> bool {
    let start = buffer.as_ptr() as usize;
    let end = start.saturating_add(buffer.capacity());
    let first = start.div_ceil(HUGE_PAGE_BYTES) * HUGE_PAGE_BYTES;
    let last = end / HUGE_PAGE_BYTES * HUGE_PAGE_BYTES;
    if last <= first {
        return false;
    }
    // SAFETY: the range lies inside `buffer`'s live allocation, and MADV_HUGEPAGE only
    // changes how its pages are backed, never their contents.
    let rc = unsafe {
        libc::madvise(
            first as *mut libc::c_void,
            last - first,
            libc::MADV_HUGEPAGE,
        )
    };
    rc == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn advice_covers_only_whole_huge_pages_inside_the_buffer() {
        let small: Vec<u8> = Vec::with_capacity(HUGE_PAGE_BYTES / 2);
        assert!(!advise(&small), "no whole huge page inside");
        let big: Vec<u8> = Vec::with_capacity(3 * HUGE_PAGE_BYTES);
        // On a kernel with THP compiled in the advice is taken; the buffer stays usable.
        let taken = advise(&big);
        let mut big = big;
        big.resize(3 * HUGE_PAGE_BYTES, 7);
        assert!(big.iter().all(|b| *b == 7));
        assert!(taken || !std::path::Path::new("/sys/kernel/mm/transparent_hugepage").exists());
    }
}
