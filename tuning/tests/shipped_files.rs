//! The files shipped under `tuning/` satisfy what `tune check` requires for the
//! connection counts they are named for, so files and checker cannot drift.

use std::collections::BTreeMap;
use std::path::PathBuf;

use tuning::check::knob_item;
use tuning::plan::{nodes_needed, requirements, HostPlan, Knob};
use tuning::report::{shipped_sysctl_file, Status};
use tuning::sysctl_conf;

/// The hard NOFILE limit of the machines this project runs on (no CAP_SYS_RESOURCE).
const CAPPED_HARD_NOFILE: u64 = 20_000;

const SHIPPED: &[(&str, u64)] = &[
    ("90-confab-100k.conf", 100_000),
    ("90-confab-500k.conf", 500_000),
    ("90-confab-1m.conf", 1_000_000),
];

fn crate_file(path: &str) -> String {
    let full = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(path);
    std::fs::read_to_string(&full).unwrap_or_else(|e| panic!("{}: {e}", full.display()))
}

fn sysctl_file(name: &str) -> BTreeMap<String, String> {
    sysctl_conf::parse(&crate_file(&format!("sysctl.d/{name}"))).unwrap()
}

/// The plans a file must serve: one node (limits raised), or as many nodes as a capped
/// hard limit forces; load generator on this host or elsewhere.
fn plans(connections: u64) -> Vec<HostPlan> {
    let capped_nodes = nodes_needed(connections, CAPPED_HARD_NOFILE).unwrap();
    let mut plans = Vec::new();
    for nodes in [1, capped_nodes] {
        for loadgen_on_host in [true, false] {
            plans.push(HostPlan {
                connections,
                nodes,
                shards_per_node: 2,
                loadgen_on_host,
            });
        }
    }
    plans
}

#[test]
fn each_sysctl_file_meets_the_requirements_for_its_connections() {
    for &(name, connections) in SHIPPED {
        let file = sysctl_file(name);
        for plan in plans(connections) {
            for requirement in requirements(&plan) {
                let Knob::Sysctl(key) = requirement.knob else {
                    continue; // sysfs: tmpfiles.d, tested below
                };
                let value = file
                    .get(key)
                    .unwrap_or_else(|| panic!("{name} lacks {key}"));
                let item = knob_item(&requirement, Some(value)).unwrap();
                assert_eq!(item.status, Status::Ok, "{name}, {plan:?}: {item:?}");
            }
        }
    }
}

#[test]
fn the_checker_points_at_files_that_exist() {
    for &(name, connections) in SHIPPED {
        assert_eq!(shipped_sysctl_file(connections), Some(name));
        sysctl_file(name);
    }
}

#[test]
fn the_thp_tmpfiles_satisfy_the_thp_requirements() {
    let text = crate_file("tmpfiles.d/confab-thp.conf");
    // tmpfiles.d: `w <path> <mode> <user> <group> <age> <content>`.
    let writes: BTreeMap<&str, &str> = text
        .lines()
        .filter(|line| line.starts_with("w "))
        .map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            assert_eq!(fields.len(), 7, "{line}");
            (fields[1], fields[6])
        })
        .collect();
    for plan in plans(500_000) {
        for requirement in requirements(&plan) {
            let Knob::Sysfs(path) = requirement.knob else {
                continue;
            };
            let value = writes[format!("/sys/{path}").as_str()];
            let selected = format!("always defer [{value}] never");
            let item = knob_item(&requirement, Some(&selected)).unwrap();
            // defer+madvise warns (not fails) when the load generator shares the host.
            assert_ne!(item.status, Status::Gap, "{plan:?}: {item:?}");
        }
    }
}

#[test]
fn limits_files_fit_under_every_shipped_nr_open_and_hold_a_million() {
    let smallest_nr_open = SHIPPED
        .iter()
        .map(|(name, _)| sysctl_file(name)["fs.nr_open"].parse::<u64>().unwrap())
        .min()
        .unwrap();
    let one_node_for_a_million = HostPlan {
        connections: 1_000_000,
        nodes: 1,
        shards_per_node: 2,
        loadgen_on_host: true,
    }
    .fds_per_node();

    let limits = crate_file("limits.d/90-confab.conf");
    for line in limits.lines().filter(|l| !l.trim_start().starts_with('#')) {
        let fields: Vec<&str> = line.split_whitespace().collect();
        if fields.len() != 4 {
            continue;
        }
        let value: u64 = fields[3].parse().unwrap();
        match fields[2] {
            "nofile" => {
                assert!(value <= smallest_nr_open, "{line}");
                assert!(value >= one_node_for_a_million, "{line}");
            }
            "memlock" => assert!(value * 1024 >= 512 * 1024, "{line}"),
            other => panic!("unexpected item {other}"),
        }
    }

    for unit in ["systemd/confab.service", "systemd/confab@.service"] {
        let text = crate_file(unit);
        let nofile: u64 = text
            .lines()
            .find_map(|l| l.strip_prefix("LimitNOFILE="))
            .unwrap()
            .parse()
            .unwrap();
        assert!(nofile <= smallest_nr_open, "{unit}");
        assert!(text.contains("LimitMEMLOCK="), "{unit}");
        assert!(text.contains("Restart=on-failure"), "{unit}");
        assert!(
            text.contains("ExecStart=/usr/local/bin/confab --config /etc/confab/confab.toml"),
            "{unit}"
        );
    }
}
