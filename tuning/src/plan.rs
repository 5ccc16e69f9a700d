//! What a host needs for N connections: pure functions of a [`HostPlan`] and named
//! constants. `tune check` compares a host with these; `tune apply` writes them; the
//! shipped `sysctl.d` files are tested against them, so files and checker cannot drift.
//!
//! Every value is a ceiling or a queue length unless said otherwise: raising it reserves
//! no memory. Memory figures are budgets and estimates, labelled as such; the measured
//! figures (`loadgen idle`) are in `bench/RESULTS.md`.

use serde::Serialize;

// ---------------------------------------------------------------------------------------
// Descriptors
// ---------------------------------------------------------------------------------------

/// Descriptors a node holds besides client sockets: stdio and log files, each shard's log
/// segments and index files, two listeners per shard, io_uring ring fds and eventfds,
/// cross-shard channels, node links (shards × nodes) and the Redis connection. A few
/// hundred in practice; 1,000 leaves room for segment rotation and link reconnects.
pub const FD_RESERVE_PER_PROCESS: u64 = 1_000;

/// Kernel file objects for everything else on the host (sshd, journald, page-cache
/// users, the Redis server, shells) on top of the connections' own.
pub const SYSTEM_FILES_HEADROOM: u64 = 65_536;

/// `fs.nr_open` written by the fixes and the 100K/500K files: the kernel default, and
/// enough for one process to hold 1,047,576 connections.
pub const NR_OPEN_DEFAULT: u64 = 1_048_576;

// ---------------------------------------------------------------------------------------
// Accept path
// ---------------------------------------------------------------------------------------

/// `net.core.somaxconn` floor: the kernel clamps every `listen()` backlog to it. glommio
/// 0.9 listens with a backlog of 1,024 per shard listener, so the gateway needs ≥ 1,024;
/// 4,096 (the default since Linux 5.4) leaves room for other listeners and a larger
/// backlog without being the clamp.
pub const SOMAXCONN_MIN: u64 = 4_096;
/// `net.core.somaxconn` written by the fixes and the files.
pub const SOMAXCONN_SET: u64 = 65_535;

/// `net.ipv4.tcp_max_syn_backlog` floor: half-open connections per listener. A reconnect
/// storm after a node restart sends its whole share of SYNs within seconds; beyond this
/// the kernel answers with SYN cookies (no drop, but without TCP options it cannot encode).
pub const TCP_MAX_SYN_BACKLOG_MIN: u64 = 8_192;
/// `net.ipv4.tcp_max_syn_backlog` written by the fixes and the files.
pub const TCP_MAX_SYN_BACKLOG_SET: u64 = 65_535;

/// `net.core.netdev_max_backlog` floor: packets queued per CPU between the driver (or
/// loopback, which queues every packet it sends here) and the protocol stack; beyond it
/// packets are dropped and TCP retransmits after ≥ 200 ms. The default 1,000 overflows in
/// reconnect bursts.
pub const NETDEV_MAX_BACKLOG_MIN: u64 = 16_384;

// ---------------------------------------------------------------------------------------
// Ports
// ---------------------------------------------------------------------------------------

/// Lowest ephemeral port the fixes and files configure (below are the privileged ports).
pub const PORT_RANGE_LOW: u64 = 1_024;
/// Highest ephemeral port.
pub const PORT_RANGE_HIGH: u64 = 65_535;
/// Ports in `PORT_RANGE_LOW..=PORT_RANGE_HIGH`: the most connections one client address
/// can open to one destination (address, port). Linux picks connect() ports per
/// destination, so more destinations (one per node, or extra loopback addresses of one
/// node) multiply it.
pub const PORT_RANGE_FULL_WIDTH: u64 = PORT_RANGE_HIGH - PORT_RANGE_LOW + 1;
/// The ephemeral range must be this many times one destination's share of the
/// connections: `connect()` searches for a free port, and the search lengthens as the range
/// fills. Measured (bench/RESULTS.md, 500K over 30 nodes, 16,700 connections per node):
/// with the default 32768–60999 (59% used) the ramp ran at 1,143 connects/s and the load
/// generator burned 573 CPU-seconds; with 1024–65535 (26%), 5,797/s and 75 s.
pub const PORT_RANGE_HEADROOM: u64 = 2;

// ---------------------------------------------------------------------------------------
// Memory
// ---------------------------------------------------------------------------------------

/// `tcp_mem` counts pages of this size (4 KiB on x86-64 and most arm64 kernels).
pub const PAGE_BYTES: u64 = 4_096;
/// `tcp_rmem[0]` ceiling: the receive buffer a socket is guaranteed under memory pressure.
/// The kernel default (one page). Raising it raises what every idle socket may pin.
pub const SOCKET_RMEM_MIN_BYTES: u64 = 4_096;
/// `tcp_wmem[0]` ceiling: the send buffer guaranteed under pressure; kernel default.
pub const SOCKET_WMEM_MIN_BYTES: u64 = 4_096;
/// `tcp_mem[2]` rounding: fixes and files round the ceiling up to whole GiB of pages.
pub const TCP_MEM_ROUNDING_PAGES: u64 = (1 << 30) / PAGE_BYTES;

/// Gateway user-space memory per idle authenticated connection: the budget (the target in
/// `bench/RESULTS.md`, ≤ 4 KiB); measured at 10K connections: 2.0–2.9 KiB.
pub const GATEWAY_BYTES_PER_CONNECTION: u64 = 4_096;
/// Kernel memory per idle TCP socket end (no queued data). **Estimate**, from slab object
/// sizes on Linux 6.x (`/proc/slabinfo`): TCP 2,368 + sock_inode_cache 832 + filp 192 +
/// dentry 192 + eventpoll_epi 128 = 3,712 bytes, rounded up to 4 KiB.
pub const KERNEL_BYTES_PER_SOCKET: u64 = 4_096;
/// Load-generator user-space memory per idle connection. **Estimate** (a budget of one
/// page per connection: its read buffer and bookkeeping); not measured yet.
pub const LOADGEN_BYTES_PER_CONNECTION: u64 = 4_096;
/// Memory of a node before it holds any connection: startup RSS 58 MB recorded in
/// `bench/RESULTS.md` (THP off), rounded up (pre-sized idempotency tables, log buffers,
/// io_uring buffers).
pub const NODE_BASE_BYTES: u64 = 64 << 20;

/// glommio 0.9 refuses to start an executor when RLIMIT_MEMLOCK (soft) is below this.
pub const GLOMMIO_MEMLOCK_FLOOR_BYTES: u64 = 512 << 10;
/// io_uring buffer memory per shard (`gateway::server::IO_MEMORY_BYTES`).
pub const IO_URING_BYTES_PER_SHARD: u64 = 1 << 20;
/// glommio 0.9 registers each shard's io_uring memory with its three rings (main, poll,
/// latency), and the kernel charges each registration to the owning user's locked memory.
pub const IO_URING_REGISTRATIONS_PER_SHARD: u64 = 3;

/// conntrack entries per connection: one per live connection, and as many again lingering
/// (TIME_WAIT, 120 s) while all clients of a restarted node reconnect.
pub const CONNTRACK_ENTRIES_PER_CONNECTION: u64 = 2;

/// `vm.max_map_count` floor (per process): glommio's buffers, thread stacks, mimalloc
/// segments and the memory-mapped sealed log segments are each a mapping; at the default
/// 65,530 an `mmap` fails and takes a shard down. A count costs nothing until used.
pub const MAX_MAP_COUNT_MIN: u64 = 262_144;

// ---------------------------------------------------------------------------------------
// The plan
// ---------------------------------------------------------------------------------------

/// What one host is asked to hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct HostPlan {
    /// Client connections on this host (gateway side).
    pub connections: u64,
    /// Gateway processes (nodes) on this host; connections are spread evenly.
    pub nodes: u64,
    /// Shards (pinned executors) per node.
    pub shards_per_node: u64,
    /// Whether the load generator runs on this host too (our benchmarks: loopback), so
    /// every connection has two socket ends and uses an ephemeral port here.
    pub loadgen_on_host: bool,
}

impl HostPlan {
    /// The largest share of connections one node holds.
    pub fn connections_per_node(&self) -> u64 {
        self.connections.div_ceil(self.nodes.max(1))
    }

    /// Descriptors one node needs.
    pub fn fds_per_node(&self) -> u64 {
        self.connections_per_node() + FD_RESERVE_PER_PROCESS
    }

    /// Socket ends on this host per connection.
    pub fn socket_ends(&self) -> u64 {
        if self.loadgen_on_host {
            2
        } else {
            1
        }
    }

    /// Locked memory the io_uring registrations of every shard on the host need. It is
    /// charged per user, so all nodes run by one user share one RLIMIT_MEMLOCK.
    pub fn io_uring_locked_bytes(&self) -> u64 {
        self.nodes
            * self.shards_per_node
            * IO_URING_REGISTRATIONS_PER_SHARD
            * IO_URING_BYTES_PER_SHARD
    }
}

/// Nodes (processes) needed when each may hold `hard_nofile` descriptors:
/// `ceil(connections / (hard_nofile − FD_RESERVE_PER_PROCESS))`. `None` when the limit
/// leaves nothing past the reserve.
pub fn nodes_needed(connections: u64, hard_nofile: u64) -> Option<u64> {
    let per_process = hard_nofile.checked_sub(FD_RESERVE_PER_PROCESS)?;
    if per_process == 0 {
        return None;
    }
    Some(connections.div_ceil(per_process).max(1))
}

/// A memory estimate and how it was computed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct MemoryEstimate {
    /// The estimate in bytes.
    pub bytes: u64,
    /// The arithmetic, for the report.
    pub formula: String,
}

/// Memory the plan needs: per connection (gateway budget, kernel socket ends, load
/// generator) plus each node's base. An estimate, not a measurement.
pub fn memory_estimate(plan: &HostPlan) -> MemoryEstimate {
    let loadgen = if plan.loadgen_on_host {
        LOADGEN_BYTES_PER_CONNECTION
    } else {
        0
    };
    let per_connection =
        GATEWAY_BYTES_PER_CONNECTION + plan.socket_ends() * KERNEL_BYTES_PER_SOCKET + loadgen;
    let bytes = plan.connections * per_connection + plan.nodes * NODE_BASE_BYTES;
    let loadgen_term = if plan.loadgen_on_host {
        " + 4 KiB loadgen"
    } else {
        ""
    };
    let formula = format!(
        "{} conns × (4 KiB gateway + {} × 4 KiB kernel socket{loadgen_term}) + {} nodes × 64 MiB",
        plan.connections,
        plan.socket_ends(),
        plan.nodes,
    );
    MemoryEstimate { bytes, formula }
}

// ---------------------------------------------------------------------------------------
// Kernel knobs
// ---------------------------------------------------------------------------------------

/// A kernel setting `tune` can read and, as root, write.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub enum Knob {
    /// A sysctl by its dotted name, stored at `/proc/sys/<name with / for .>`.
    Sysctl(&'static str),
    /// A file under `/sys`, by its path relative to `/sys`.
    Sysfs(&'static str),
}

impl Knob {
    /// The name shown in reports: the sysctl name, or the sysfs path.
    pub fn name(&self) -> String {
        match self {
            Knob::Sysctl(name) => (*name).to_string(),
            Knob::Sysfs(path) => format!("/sys/{path}"),
        }
    }

    /// The path under the procfs root (for sysctls) or the sysfs root.
    pub fn relative_path(&self) -> String {
        match self {
            Knob::Sysctl(name) => format!("sys/{}", name.replace('.', "/")),
            Knob::Sysfs(path) => (*path).to_string(),
        }
    }

    /// The shell command that sets it to `value` on the live host.
    pub fn set_command(&self, value: &str) -> String {
        match self {
            Knob::Sysctl(name) if value.contains(' ') => format!("sysctl -w {name}=\"{value}\""),
            Knob::Sysctl(name) => format!("sysctl -w {name}={value}"),
            Knob::Sysfs(path) => format!("echo {value} > /sys/{path}"),
        }
    }
}

/// What a knob's current value must satisfy, and the value a fix writes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub enum Rule {
    /// A single integer ≥ `min`; fixes write `set` (≥ `min`).
    AtLeast {
        /// The floor.
        min: u64,
        /// What fixes write.
        set: u64,
    },
    /// Field `index` of a multi-integer value ≥ `min`; fixes write, field by field, the
    /// larger of the current value and `set` (never lowering a field).
    FieldAtLeast {
        /// Which field (0-based).
        index: usize,
        /// The floor.
        min: u64,
        /// What fixes write, all fields.
        set: Vec<u64>,
    },
    /// Field `index` ≤ `max`; fixes lower that field to `max` and keep the others.
    FieldAtMost {
        /// Which field (0-based).
        index: usize,
        /// The ceiling.
        max: u64,
    },
    /// A `low high` range holding ≥ `min_width` values; fixes write `set`.
    RangeWidth {
        /// The least `high − low + 1`.
        min_width: u64,
        /// What fixes write.
        set: (u64, u64),
    },
    /// A single integer, one of `allowed`; fixes write `set`.
    OneOf {
        /// The accepted values.
        allowed: Vec<u64>,
        /// What fixes write.
        set: u64,
    },
    /// A sysfs choice: OK when the selection is in `ok`, a warning in `warn`, else a gap;
    /// fixes write `set`.
    Choice {
        /// Selections that pass.
        ok: &'static [&'static str],
        /// Selections that pass with a warning.
        warn: &'static [&'static str],
        /// Why the warning.
        warn_note: &'static str,
        /// What the warning's fix writes.
        warn_set: &'static str,
        /// What gap fixes write.
        set: &'static str,
    },
}

/// What a missing knob file means.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum WhenAbsent {
    /// The file must exist; its absence is a read error.
    ReadError,
    /// Absence satisfies the requirement, for this reason (e.g. module not loaded).
    Fine(&'static str),
}

/// One kernel knob's requirement.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Requirement {
    /// Which setting.
    pub knob: Knob,
    /// What it must satisfy.
    pub rule: Rule,
    /// What its absence means.
    pub when_absent: WhenAbsent,
    /// Why, in one line.
    pub why: &'static str,
    /// Another way to close a gap, printed after the command.
    pub alternative: Option<&'static str>,
}

/// The kernel knobs a host needs for `plan`. Pure; see the module constants for why each
/// value. The port range and TIME_WAIT reuse only matter when the load generator (the
/// side that opens connections) runs on this host.
pub fn requirements(plan: &HostPlan) -> Vec<Requirement> {
    let mut list = descriptor_requirements(plan);
    list.extend(accept_requirements());
    if plan.loadgen_on_host {
        list.extend(client_side_requirements(plan));
    }
    list.extend(memory_requirements(plan));
    list.extend(runtime_requirements(plan));
    list
}

fn descriptor_requirements(plan: &HostPlan) -> Vec<Requirement> {
    let per_process = plan.fds_per_node();
    let system_files = plan.connections * plan.socket_ends()
        + plan.nodes * FD_RESERVE_PER_PROCESS
        + SYSTEM_FILES_HEADROOM;
    vec![
        Requirement {
            knob: Knob::Sysctl("fs.nr_open"),
            rule: Rule::AtLeast {
                min: per_process,
                set: per_process.next_power_of_two().max(NR_OPEN_DEFAULT),
            },
            when_absent: WhenAbsent::ReadError,
            why: "ceiling for any process's RLIMIT_NOFILE: one node's connections + reserve",
            alternative: None,
        },
        Requirement {
            knob: Knob::Sysctl("fs.file-max"),
            rule: Rule::AtLeast {
                min: system_files,
                set: system_files.next_power_of_two(),
            },
            when_absent: WhenAbsent::ReadError,
            why: "open files on the whole host: every socket end + reserves + headroom",
            alternative: None,
        },
    ]
}

fn accept_requirements() -> Vec<Requirement> {
    vec![
        Requirement {
            knob: Knob::Sysctl("net.core.somaxconn"),
            rule: Rule::AtLeast {
                min: SOMAXCONN_MIN,
                set: SOMAXCONN_SET,
            },
            when_absent: WhenAbsent::ReadError,
            why: "clamps every listen() backlog (glommio listens with 1024 per shard)",
            alternative: None,
        },
        Requirement {
            knob: Knob::Sysctl("net.ipv4.tcp_max_syn_backlog"),
            rule: Rule::AtLeast {
                min: TCP_MAX_SYN_BACKLOG_MIN,
                set: TCP_MAX_SYN_BACKLOG_SET,
            },
            when_absent: WhenAbsent::ReadError,
            why: "half-open connections per listener during reconnect storms",
            alternative: None,
        },
        Requirement {
            knob: Knob::Sysctl("net.core.netdev_max_backlog"),
            rule: Rule::AtLeast {
                min: NETDEV_MAX_BACKLOG_MIN,
                set: NETDEV_MAX_BACKLOG_MIN,
            },
            when_absent: WhenAbsent::ReadError,
            why: "per-CPU input packet queue (loopback too); overflow drops packets",
            alternative: None,
        },
    ]
}

fn client_side_requirements(plan: &HostPlan) -> Vec<Requirement> {
    vec![
        Requirement {
            knob: Knob::Sysctl("net.ipv4.ip_local_port_range"),
            rule: Rule::RangeWidth {
                min_width: (PORT_RANGE_HEADROOM * plan.connections_per_node())
                    .min(PORT_RANGE_FULL_WIDTH),
                set: (PORT_RANGE_LOW, PORT_RANGE_HIGH),
            },
            when_absent: WhenAbsent::ReadError,
            why: "ephemeral ports per destination (address, port) for the load generator",
            alternative: None,
        },
        Requirement {
            knob: Knob::Sysctl("net.ipv4.tcp_tw_reuse"),
            rule: Rule::OneOf {
                allowed: vec![1, 2],
                set: 1,
            },
            when_absent: WhenAbsent::ReadError,
            why: "load generator reuses TIME_WAIT ports on reconnect (2 = loopback only)",
            alternative: None,
        },
    ]
}

/// `tcp_mem[2]` in pages: every socket end can hold its guaranteed minimum buffers at
/// once (the state memory pressure drives sockets to; idle sockets hold less).
pub fn tcp_mem_pages_needed(plan: &HostPlan) -> u64 {
    let bytes =
        plan.connections * plan.socket_ends() * (SOCKET_RMEM_MIN_BYTES + SOCKET_WMEM_MIN_BYTES);
    bytes.div_ceil(PAGE_BYTES)
}

fn memory_requirements(plan: &HostPlan) -> Vec<Requirement> {
    let high = tcp_mem_pages_needed(plan);
    let high_set = high.div_ceil(TCP_MEM_ROUNDING_PAGES).max(1) * TCP_MEM_ROUNDING_PAGES;
    vec![
        Requirement {
            knob: Knob::Sysctl("net.ipv4.tcp_mem"),
            rule: Rule::FieldAtLeast {
                index: 2,
                min: high,
                set: vec![high_set / 2, high_set / 4 * 3, high_set],
            },
            when_absent: WhenAbsent::ReadError,
            why: "TCP memory ceiling (pages): every socket end's rmem[0] + wmem[0]",
            alternative: None,
        },
        Requirement {
            knob: Knob::Sysctl("net.ipv4.tcp_rmem"),
            rule: Rule::FieldAtMost {
                index: 0,
                max: SOCKET_RMEM_MIN_BYTES,
            },
            when_absent: WhenAbsent::ReadError,
            why: "receive buffer every socket keeps under pressure, idle ones too",
            alternative: None,
        },
        Requirement {
            knob: Knob::Sysctl("net.ipv4.tcp_wmem"),
            rule: Rule::FieldAtMost {
                index: 0,
                max: SOCKET_WMEM_MIN_BYTES,
            },
            when_absent: WhenAbsent::ReadError,
            why: "send buffer every socket keeps under pressure, idle ones too",
            alternative: None,
        },
        Requirement {
            knob: Knob::Sysctl("net.netfilter.nf_conntrack_max"),
            rule: Rule::AtLeast {
                min: plan.connections * CONNTRACK_ENTRIES_PER_CONNECTION,
                set: (plan.connections * CONNTRACK_ENTRIES_PER_CONNECTION).next_power_of_two(),
            },
            when_absent: WhenAbsent::Fine("conntrack not loaded"),
            why: "tracked flows: live connections + TIME_WAIT of a reconnect; full = drops",
            alternative: Some("or keep nf_conntrack unloaded: no stateful firewall rules"),
        },
        Requirement {
            knob: Knob::Sysctl("vm.max_map_count"),
            rule: Rule::AtLeast {
                min: MAX_MAP_COUNT_MIN,
                set: MAX_MAP_COUNT_MIN,
            },
            when_absent: WhenAbsent::ReadError,
            why: "mappings per process (buffers, stacks, heap segments, mmapped logs)",
            alternative: None,
        },
    ]
}

/// THP `defrag` selections that never stall a page fault on compaction for the load
/// generator (which, unlike the gateway, does not opt out of THP).
const DEFRAG_NO_STALL: &[&str] = &["defer", "never"];
/// THP `defrag` selections that stall faults only in `MADV_HUGEPAGE` regions.
const DEFRAG_MADVISE: &[&str] = &["defer+madvise", "madvise"];
/// Every `defrag` selection but `always`.
const DEFRAG_NOT_ALWAYS: &[&str] = &["defer", "never", "defer+madvise", "madvise"];

fn runtime_requirements(plan: &HostPlan) -> Vec<Requirement> {
    let (defrag_ok, defrag_warn): (&'static [&'static str], &'static [&'static str]) =
        if plan.loadgen_on_host {
            (DEFRAG_NO_STALL, DEFRAG_MADVISE)
        } else {
            (DEFRAG_NOT_ALWAYS, &[])
        };
    vec![
        Requirement {
            knob: Knob::Sysctl("kernel.io_uring_disabled"),
            rule: Rule::OneOf {
                allowed: vec![0],
                set: 0,
            },
            when_absent: WhenAbsent::Fine("kernel predates the switch: io_uring allowed"),
            why: "glommio runs every shard on io_uring",
            alternative: Some("or (value 1) add the service's group to kernel.io_uring_group"),
        },
        Requirement {
            knob: Knob::Sysfs("kernel/mm/transparent_hugepage/enabled"),
            rule: Rule::Choice {
                ok: &["madvise", "never"],
                warn: &[],
                warn_note: "",
                warn_set: "madvise",
                set: "madvise",
            },
            when_absent: WhenAbsent::Fine("kernel built without THP"),
            why: "`always` backs every heap with huge pages: RSS and first-touch stalls",
            alternative: Some("persist with tuning/tmpfiles.d/confab-thp.conf"),
        },
        Requirement {
            knob: Knob::Sysfs("kernel/mm/transparent_hugepage/defrag"),
            rule: Rule::Choice {
                ok: defrag_ok,
                warn: defrag_warn,
                warn_note:
                    "the load generator (mimalloc marks its heap MADV_HUGEPAGE, no opt-out) \
                            may stall in page faults on compaction; benchmark hosts: never",
                warn_set: "never",
                set: "defer+madvise",
            },
            when_absent: WhenAbsent::Fine("kernel built without THP"),
            why: "`always` compacts memory inside page faults (ms stalls on shard threads)",
            alternative: Some("persist with tuning/tmpfiles.d/confab-thp.conf"),
        },
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan(connections: u64, nodes: u64) -> HostPlan {
        HostPlan {
            connections,
            nodes,
            shards_per_node: 2,
            loadgen_on_host: true,
        }
    }

    fn rule_of(plan: &HostPlan, name: &str) -> Rule {
        requirements(plan)
            .into_iter()
            .find(|r| r.knob.name() == name)
            .map(|r| r.rule)
            .unwrap()
    }

    #[test]
    fn nodes_needed_is_ceil_of_connections_over_usable_descriptors() {
        // 500K at a 20,000 hard limit: 19,000 per node → 27 nodes (the design's ~30).
        assert_eq!(nodes_needed(500_000, 20_000), Some(27));
        assert_eq!(nodes_needed(100_000, 20_000), Some(6));
        assert_eq!(nodes_needed(1_000_000, 20_000), Some(53));
        assert_eq!(nodes_needed(19_000, 20_000), Some(1));
        assert_eq!(nodes_needed(10, 1_048_576), Some(1));
        assert_eq!(nodes_needed(10, 1_000), None);
        assert_eq!(nodes_needed(10, 500), None);
    }

    #[test]
    fn descriptor_needs_scale_with_connections_and_nodes() {
        assert_eq!(
            rule_of(&plan(500_000, 1), "fs.nr_open"),
            Rule::AtLeast {
                min: 501_000,
                set: 1_048_576
            }
        );
        assert_eq!(
            rule_of(&plan(500_000, 27), "fs.nr_open"),
            Rule::AtLeast {
                min: 18_519 + 1_000,
                set: 1_048_576
            }
        );
        // Both socket ends on the host, 27 reserves, headroom.
        let Rule::AtLeast { min, .. } = rule_of(&plan(500_000, 27), "fs.file-max") else {
            panic!("file-max is AtLeast")
        };
        assert_eq!(min, 1_000_000 + 27_000 + 65_536);
    }

    #[test]
    fn tcp_mem_covers_every_socket_ends_minimum_buffers() {
        // 500K × 2 ends × 8 KiB = 7.6 GiB = 2,000,000 pages; rounded up to 8 GiB.
        assert_eq!(tcp_mem_pages_needed(&plan(500_000, 1)), 2_000_000);
        assert_eq!(
            rule_of(&plan(500_000, 1), "net.ipv4.tcp_mem"),
            Rule::FieldAtLeast {
                index: 2,
                min: 2_000_000,
                set: vec![1_048_576, 1_572_864, 2_097_152]
            }
        );
    }

    #[test]
    fn port_range_needs_twice_one_nodes_share_up_to_the_full_range() {
        let width = |p| match rule_of(&p, "net.ipv4.ip_local_port_range") {
            Rule::RangeWidth { min_width, .. } => min_width,
            other => panic!("{other:?}"),
        };
        // Twice one node's share: the default 28,232-port range is refused for 500K.
        assert_eq!(width(plan(500_000, 27)), 37_038);
        assert_eq!(width(plan(100_000, 27)), 7_408);
        assert_eq!(width(plan(500_000, 1)), PORT_RANGE_FULL_WIDTH);
    }

    #[test]
    fn client_side_knobs_only_with_the_load_generator_on_host() {
        let remote = HostPlan {
            loadgen_on_host: false,
            ..plan(100_000, 1)
        };
        let names: Vec<String> = requirements(&remote)
            .iter()
            .map(|r| r.knob.name())
            .collect();
        assert!(!names.contains(&"net.ipv4.ip_local_port_range".to_string()));
        assert!(!names.contains(&"net.ipv4.tcp_tw_reuse".to_string()));
        assert_eq!(remote.socket_ends(), 1);
    }

    #[test]
    fn memory_estimate_shows_its_arithmetic() {
        let estimate = memory_estimate(&plan(100_000, 1));
        assert_eq!(estimate.bytes, 100_000 * 16_384 + (64 << 20));
        assert!(estimate.formula.contains("100000 conns"));
    }

    #[test]
    fn io_uring_locked_memory_is_per_shard_on_the_host() {
        assert_eq!(
            plan(500_000, 27).io_uring_locked_bytes(),
            (27 * 2 * 3) << 20
        );
    }

    #[test]
    fn set_commands_quote_multi_field_values() {
        assert_eq!(
            Knob::Sysctl("net.core.somaxconn").set_command("65535"),
            "sysctl -w net.core.somaxconn=65535"
        );
        assert_eq!(
            Knob::Sysctl("net.ipv4.ip_local_port_range").set_command("1024 65535"),
            "sysctl -w net.ipv4.ip_local_port_range=\"1024 65535\""
        );
        assert_eq!(
            Knob::Sysfs("kernel/mm/transparent_hugepage/defrag").set_command("never"),
            "echo never > /sys/kernel/mm/transparent_hugepage/defrag"
        );
        assert_eq!(
            Knob::Sysctl("net.core.somaxconn").relative_path(),
            "sys/net/core/somaxconn"
        );
    }
}
