//! `tune` end to end against fabricated procfs/sysfs trees: verdicts, fix commands, exit
//! codes, JSON, and `apply` (refusal, dry run, writes).

mod common;

use common::{stderr, stdout, Host};

fn code(output: &std::process::Output) -> i32 {
    output.status.code().unwrap()
}

fn json(output: &std::process::Output) -> serde_json::Value {
    serde_json::from_slice(&output.stdout).unwrap()
}

fn item<'a>(report: &'a serde_json::Value, name: &str) -> &'a serde_json::Value {
    report["items"]
        .as_array()
        .unwrap()
        .iter()
        .find(|item| item["name"] == name)
        .unwrap_or_else(|| panic!("no item {name} in {report}"))
}

#[test]
fn a_fit_host_passes_with_exit_0() {
    let host = Host::fit();
    let out = host.tune(&["check", "--connections", "500000"]);
    assert_eq!(code(&out), 0, "{}{}", stdout(&out), stderr(&out));
    assert!(stdout(&out).contains("Result: FIT for 500000 connections"));

    let out = host.tune(&["check", "--connections", "500000", "--json"]);
    assert_eq!(code(&out), 0);
    let report = json(&out);
    assert_eq!(report["fit"], true);
    assert_eq!(report["nodes"], 1);
    assert_eq!(report["shards_per_node"], 2);
    for item in report["items"].as_array().unwrap() {
        assert_eq!(item["status"], "ok", "{item}");
    }
    // conntrack not loaded: passes, with the reason.
    let conntrack = item(&report, "net.netfilter.nf_conntrack_max");
    assert_eq!(conntrack["current"], "absent");
    assert_eq!(conntrack["note"], "conntrack not loaded");
}

#[test]
fn low_somaxconn_is_a_gap_with_its_sysctl_command() {
    let host = Host::fit();
    host.set_proc("sys/net/core/somaxconn", "128\n");
    let out = host.tune(&["check", "--connections", "100000"]);
    assert_eq!(code(&out), 1);
    let text = stdout(&out);
    assert!(
        text.contains("net.core.somaxconn: sysctl -w net.core.somaxconn=65535"),
        "{text}"
    );
    assert!(
        text.contains("NOT FIT for 100000 connections (1 gap(s))"),
        "{text}"
    );

    let report = json(&host.tune(&["check", "--connections", "100000", "--json"]));
    let somaxconn = item(&report, "net.core.somaxconn");
    assert_eq!(somaxconn["status"], "gap");
    assert_eq!(somaxconn["current"], "128");
    assert_eq!(somaxconn["required"], ">= 4096");
    assert_eq!(somaxconn["fix"], "sysctl -w net.core.somaxconn=65535");
}

#[test]
fn low_nr_open_is_a_gap() {
    let host = Host::fit();
    host.set_proc("sys/fs/nr_open", "65536\n");
    let out = host.tune(&["check", "--connections", "100000", "--json"]);
    assert_eq!(code(&out), 1);
    let nr_open = item(&json(&out), "fs.nr_open").clone();
    assert_eq!(nr_open["status"], "gap");
    assert_eq!(nr_open["required"], ">= 101000");
    assert_eq!(nr_open["fix"], "sysctl -w fs.nr_open=1048576");
}

#[test]
fn disabled_io_uring_is_a_gap() {
    let host = Host::fit();
    host.set_proc("sys/kernel/io_uring_disabled", "2\n");
    let out = host.tune(&["check", "--connections", "1000"]);
    assert_eq!(code(&out), 1);
    assert!(stdout(&out).contains("kernel.io_uring_disabled: sysctl -w kernel.io_uring_disabled=0"));

    // An older kernel without the switch allows io_uring.
    host.remove_proc("sys/kernel/io_uring_disabled");
    assert_eq!(code(&host.tune(&["check", "--connections", "1000"])), 0);
}

#[test]
fn hard_nofile_below_a_nodes_share_with_too_few_nodes_names_the_node_count() {
    let host = Host::fit();
    host.set_limits(20_000, 8 << 20);
    let out = host.tune(&["check", "--connections", "500000", "--nodes", "10"]);
    assert_eq!(code(&out), 1);
    let text = stdout(&out);
    assert!(text.contains("RLIMIT_NOFILE (hard, per node)"), "{text}");
    assert!(
        text.contains(
            "or run ceil(500000 / (20000 − 1000)) nodes: 27 nodes (tune check --nodes 27)"
        ),
        "{text}"
    );
    assert!(text.contains("raise LimitNOFILE"), "{text}");
}

#[test]
fn hard_nofile_below_one_process_is_fine_with_enough_nodes() {
    let host = Host::fit();
    host.set_limits(20_000, 8 << 20);
    // Computed: the fewest nodes the limit allows.
    let out = host.tune(&["check", "--connections", "500000", "--json"]);
    assert_eq!(code(&out), 0, "{}", stdout(&out));
    let report = json(&out);
    assert_eq!(report["nodes"], 27);
    assert_eq!(report["nodes_needed"], 27);
    assert_eq!(report["loadgen_processes"], 27);
    assert_eq!(
        item(&report, "RLIMIT_NOFILE (hard, per node)")["status"],
        "ok"
    );
    // 27 nodes' io_uring buffers exceed 8 MiB of memlock: a warning, not a failure.
    assert_eq!(
        item(&report, "RLIMIT_MEMLOCK (io_uring buffers, per user)")["status"],
        "warn"
    );

    // Given explicitly, and more than needed: fit too.
    let out = host.tune(&["check", "--connections", "500000", "--nodes", "30"]);
    assert_eq!(code(&out), 0, "{}", stdout(&out));
    assert!(stdout(&out).contains("30 node(s) × 1 shard(s)"));
}

#[test]
fn loaded_conntrack_below_twice_the_connections_is_a_gap() {
    let host = Host::fit();
    host.set_proc("sys/net/netfilter/nf_conntrack_max", "262144\n");
    let report = json(&host.tune(&["check", "--connections", "500000", "--json"]));
    let conntrack = item(&report, "net.netfilter.nf_conntrack_max");
    assert_eq!(conntrack["status"], "gap");
    assert_eq!(conntrack["required"], ">= 1000000");
    assert!(conntrack["fix"]
        .as_str()
        .unwrap()
        .starts_with("sysctl -w net.netfilter.nf_conntrack_max=1048576"));
}

#[test]
fn thp_defrag_always_is_a_gap_with_the_sysfs_command() {
    let host = Host::fit();
    host.set_sys(
        "kernel/mm/transparent_hugepage/defrag",
        "[always] defer defer+madvise madvise never\n",
    );
    let out = host.tune(&["check", "--connections", "1000"]);
    assert_eq!(code(&out), 1);
    assert!(
        stdout(&out).contains("echo defer+madvise > /sys/kernel/mm/transparent_hugepage/defrag")
    );
}

#[test]
fn unreadable_or_malformed_files_exit_2() {
    let host = Host::fit();
    host.remove_proc("sys/fs/nr_open");
    let out = host.tune(&["check", "--connections", "1000"]);
    assert_eq!(code(&out), 2);
    assert!(stderr(&out).contains("fs.nr_open"), "{}", stderr(&out));

    let host = Host::fit();
    host.remove_proc("self/limits");
    let out = host.tune(&["check", "--connections", "1000"]);
    assert_eq!(code(&out), 2);
    assert!(stderr(&out).contains("cannot read"), "{}", stderr(&out));

    let host = Host::fit();
    host.set_proc("sys/net/ipv4/tcp_mem", "lots\n");
    assert_eq!(code(&host.tune(&["check", "--connections", "1000"])), 2);
}

#[test]
fn usage_errors_exit_2() {
    let host = Host::fit();
    assert_eq!(code(&host.tune(&["check"])), 2);
    assert_eq!(code(&host.tune(&["check", "--connections", "0"])), 2);
    assert_eq!(code(&host.tune(&["check", "--connections", "x"])), 2);
}

#[test]
fn apply_without_root_refuses_and_changes_nothing() {
    let host = Host::fit();
    host.set_proc("sys/net/core/somaxconn", "128\n");
    let out = host.tune(&["apply", "--connections", "100000"]);
    assert_eq!(code(&out), 1);
    assert!(stderr(&out).contains("needs root"), "{}", stderr(&out));
    assert_eq!(host.read_proc("sys/net/core/somaxconn"), "128\n");
}

#[test]
fn apply_dry_run_prints_the_commands_only() {
    let host = Host::fit();
    host.set_proc("sys/net/core/somaxconn", "128\n");
    host.set_proc("sys/net/ipv4/tcp_mem", "2000\t3000\t4000\n");
    let out = host.tune(&["apply", "--connections", "500000", "--dry-run"]);
    assert_eq!(code(&out), 0);
    let text = stdout(&out);
    assert!(
        text.contains("sysctl -w net.core.somaxconn=65535"),
        "{text}"
    );
    assert!(
        text.contains("sysctl -w net.ipv4.tcp_mem=\"1048576 1572864 2097152\""),
        "{text}"
    );
    assert_eq!(host.read_proc("sys/net/core/somaxconn"), "128\n");
}

#[test]
fn apply_as_root_writes_the_gaps_and_nothing_else() {
    let host = Host::fit();
    host.set_uid(0);
    host.set_proc("sys/net/core/somaxconn", "128\n");
    host.set_proc("sys/net/ipv4/tcp_mem", "2000\t3000\t3000000\n");
    host.set_proc("sys/vm/max_map_count", "300000\n");
    let out = host.tune(&["apply", "--connections", "500000"]);
    assert_eq!(code(&out), 0, "{}{}", stdout(&out), stderr(&out));
    let text = stdout(&out);
    assert!(
        text.contains("changed net.core.somaxconn: 128 -> 65535"),
        "{text}"
    );
    assert!(text.contains("after: FIT"), "{text}");
    assert_eq!(host.read_proc("sys/net/core/somaxconn"), "65535\n");
    // Passing values are untouched, even the passing fields of a multi-field value.
    assert_eq!(
        host.read_proc("sys/net/ipv4/tcp_mem"),
        "2000\t3000\t3000000\n"
    );
    assert_eq!(host.read_proc("sys/vm/max_map_count"), "300000\n");
}

#[test]
fn apply_leaves_limits_to_the_operator() {
    let host = Host::fit();
    host.set_uid(0);
    host.set_limits(20_000, 8 << 20);
    host.set_proc("sys/net/core/netdev_max_backlog", "1000\n");
    let out = host.tune(&["apply", "--connections", "500000", "--nodes", "2"]);
    assert_eq!(code(&out), 1);
    let text = stdout(&out);
    assert!(
        text.contains("changed net.core.netdev_max_backlog: 1000 -> 16384"),
        "{text}"
    );
    assert!(
        text.contains("not changed (do it by hand) RLIMIT_NOFILE"),
        "{text}"
    );
    assert!(text.contains("after: NOT FIT"), "{text}");
    assert_eq!(host.read_proc("sys/net/core/netdev_max_backlog"), "16384\n");
}
