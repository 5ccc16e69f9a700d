//! A fabricated host: procfs and sysfs trees in a fresh temporary directory, filled with
//! the values of a host fit for 500,000 connections (one node, load generator on host,
//! conntrack not loaded). Tests change single files to make gaps.
#![allow(dead_code)] // each test binary uses a different part of the fixture

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::atomic::{AtomicU32, Ordering};

static NEXT: AtomicU32 = AtomicU32::new(0);

/// The default knob values (path under the procfs or sysfs root, content).
const PROC_FILES: &[(&str, &str)] = &[
    ("sys/fs/nr_open", "1048576\n"),
    ("sys/fs/file-max", "4194304\n"),
    ("sys/net/core/somaxconn", "65535\n"),
    ("sys/net/ipv4/tcp_max_syn_backlog", "65535\n"),
    ("sys/net/core/netdev_max_backlog", "16384\n"),
    ("sys/net/ipv4/ip_local_port_range", "1024\t65535\n"),
    ("sys/net/ipv4/tcp_tw_reuse", "1\n"),
    ("sys/net/ipv4/tcp_mem", "1048576\t1572864\t2097152\n"),
    ("sys/net/ipv4/tcp_rmem", "4096\t131072\t6291456\n"),
    ("sys/net/ipv4/tcp_wmem", "4096\t16384\t4194304\n"),
    ("sys/vm/max_map_count", "262144\n"),
    ("sys/kernel/io_uring_disabled", "0\n"),
    (
        "meminfo",
        "MemTotal:       24684084 kB\nMemFree:        24032200 kB\nMemAvailable:   24234968 kB\n",
    ),
];

const SYS_FILES: &[(&str, &str)] = &[
    ("devices/system/cpu/online", "0-1\n"),
    (
        "kernel/mm/transparent_hugepage/enabled",
        "always [madvise] never\n",
    ),
    (
        "kernel/mm/transparent_hugepage/defrag",
        "always defer defer+madvise madvise [never]\n",
    ),
];

/// A fabricated host; removed on drop.
pub struct Host {
    pub dir: PathBuf,
}

impl Host {
    /// A host fit for 500K connections, as a non-root user without capabilities.
    pub fn fit() -> Host {
        let unique = format!(
            "tune-test-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        );
        let dir = std::env::temp_dir().join(unique);
        let _ = std::fs::remove_dir_all(&dir);
        let host = Host { dir };
        for (path, text) in PROC_FILES {
            host.set_proc(path, text);
        }
        for (path, text) in SYS_FILES {
            host.set_sys(path, text);
        }
        host.set_limits(1_048_576, 8 << 20);
        host.set_uid(1000);
        host
    }

    pub fn procfs(&self) -> PathBuf {
        self.dir.join("proc")
    }

    pub fn sysfs(&self) -> PathBuf {
        self.dir.join("sys")
    }

    pub fn set_proc(&self, path: &str, text: &str) {
        write(&self.procfs().join(path), text);
    }

    pub fn set_sys(&self, path: &str, text: &str) {
        write(&self.sysfs().join(path), text);
    }

    pub fn read_proc(&self, path: &str) -> String {
        std::fs::read_to_string(self.procfs().join(path)).unwrap()
    }

    pub fn remove_proc(&self, path: &str) {
        std::fs::remove_file(self.procfs().join(path)).unwrap();
    }

    /// `/proc/self/limits` with this hard = soft NOFILE and MEMLOCK (bytes).
    pub fn set_limits(&self, nofile: u64, memlock: u64) {
        let text = format!(
            "Limit                     Soft Limit           Hard Limit           Units     \n\
             Max cpu time              unlimited            unlimited            seconds   \n\
             Max open files            {nofile:<20} {nofile:<20} files     \n\
             Max locked memory         {memlock:<20} {memlock:<20} bytes     \n"
        );
        self.set_proc("self/limits", &text);
    }

    /// `/proc/self/status` with this effective uid and no capabilities.
    pub fn set_uid(&self, uid: u32) {
        let text =
            format!("Name:\ttune\nUid:\t{uid}\t{uid}\t{uid}\t{uid}\nCapEff:\t0000000000000000\n");
        self.set_proc("self/status", &text);
    }

    /// Run `tune <args> --procfs … --sysfs …`.
    pub fn tune(&self, args: &[&str]) -> Output {
        let procfs = self.procfs();
        let sysfs = self.sysfs();
        Command::new(env!("CARGO_BIN_EXE_tune"))
            .args(args)
            .arg("--procfs")
            .arg(&procfs)
            .arg("--sysfs")
            .arg(&sysfs)
            .output()
            .unwrap()
    }
}

impl Drop for Host {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn write(path: &Path, text: &str) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, text).unwrap();
}

pub fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

pub fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}
