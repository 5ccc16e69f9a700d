//! `tune`: check a host's kernel settings, limits and memory for N connections, and (as
//! root) write the kernel settings that fall short.
//!
//! ```text
//! tune check --connections N [--nodes K] [--shards-per-node S] [--loadgen-on-host BOOL]
//!            [--procfs /proc] [--sysfs /sys] [--json]
//! tune apply --connections N [same options] [--dry-run]
//! ```
//! Exit codes: 0 fit (check) / applied and fit (apply) / printed (dry run); 1 not fit,
//! apply refused (not root) or a write failed; 2 usage or read errors.
#![deny(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{ArgAction, Args, Parser, Subcommand};
use tuning::apply;
use tuning::check::CheckOptions;
use tuning::host::{check_host, HostRoot};
use tuning::report::{Report, Status};

const EXIT_FIT: u8 = 0;
const EXIT_NOT_FIT: u8 = 1;
const EXIT_ERROR: u8 = 2;

#[derive(Parser)]
#[command(
    name = "tune",
    version,
    about = "Check (and apply) kernel settings and limits for N connections per host"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Compare this host with what N connections need; print the fix for every gap.
    Check(CheckArgs),
    /// As root: write the kernel settings that fall short (never lowers one).
    Apply(ApplyArgs),
}

#[derive(Args)]
struct HostArgs {
    /// Client connections this host must hold.
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
    connections: u64,
    /// Gateway processes on this host [default: the fewest the hard NOFILE limit allows].
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
    nodes: Option<u64>,
    /// Shards per node [default: cores ÷ nodes, at least 1].
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
    shards_per_node: Option<u64>,
    /// Whether the load generator runs on this host too (both socket ends counted here).
    #[arg(long, default_value_t = true, action = ArgAction::Set, value_name = "BOOL")]
    loadgen_on_host: bool,
    /// procfs root (a fabricated tree for tests or rehearsals).
    #[arg(long, default_value = "/proc")]
    procfs: PathBuf,
    /// sysfs root.
    #[arg(long, default_value = "/sys")]
    sysfs: PathBuf,
}

impl HostArgs {
    fn root(&self) -> HostRoot {
        HostRoot {
            procfs: self.procfs.clone(),
            sysfs: self.sysfs.clone(),
        }
    }

    fn options(&self) -> CheckOptions {
        CheckOptions {
            connections: self.connections,
            nodes: self.nodes,
            shards_per_node: self.shards_per_node,
            loadgen_on_host: self.loadgen_on_host,
        }
    }
}

#[derive(Args)]
struct CheckArgs {
    #[command(flatten)]
    host: HostArgs,
    /// Print the report as JSON.
    #[arg(long)]
    json: bool,
}

#[derive(Args)]
struct ApplyArgs {
    #[command(flatten)]
    host: HostArgs,
    /// Print the commands instead of writing.
    #[arg(long)]
    dry_run: bool,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let code = match cli.command {
        Command::Check(args) => run_check(&args),
        Command::Apply(args) => run_apply(&args),
    };
    ExitCode::from(code)
}

/// Check the host, or print why it could not be read (exit 2).
fn checked(host: &HostArgs) -> Result<Report, u8> {
    check_host(&host.root(), &host.options()).map_err(|e| {
        eprintln!("tune: {e}");
        EXIT_ERROR
    })
}

fn run_check(args: &CheckArgs) -> u8 {
    let report = match checked(&args.host) {
        Ok(report) => report,
        Err(code) => return code,
    };
    if args.json {
        println!("{}", report.to_json());
    } else {
        print!("{}", report.to_text());
    }
    if report.fit {
        EXIT_FIT
    } else {
        EXIT_NOT_FIT
    }
}

fn run_apply(args: &ApplyArgs) -> u8 {
    let report = match checked(&args.host) {
        Ok(report) => report,
        Err(code) => return code,
    };
    if args.dry_run {
        print_dry_run(&report);
        return EXIT_FIT;
    }
    let root = args.host.root();
    match apply::is_root(&root) {
        Ok(true) => {}
        Ok(false) => {
            eprintln!(
                "tune apply: refusing: writing kernel settings needs root (effective uid 0). \
                 Run it with sudo, or `tune apply --dry-run …` to print the commands."
            );
            return EXIT_NOT_FIT;
        }
        Err(e) => {
            eprintln!("tune: {e}");
            return EXIT_ERROR;
        }
    }
    let failed = write_gaps(&root, &report);
    print_not_changed(&report);
    let after = match checked(&args.host) {
        Ok(after) => after,
        Err(code) => return code,
    };
    let gaps = after.with_status(Status::Gap).count();
    if after.fit && !failed {
        println!("after: FIT for {} connections", after.connections);
        EXIT_FIT
    } else {
        println!(
            "after: NOT FIT for {} connections ({gaps} gap(s) left; see `tune check`)",
            after.connections
        );
        EXIT_NOT_FIT
    }
}

/// Write every knob gap; print each change. Returns whether any write failed.
fn write_gaps(root: &HostRoot, report: &Report) -> bool {
    let writes = apply::planned_writes(report);
    if writes.is_empty() {
        println!("nothing to write: every kernel setting meets the plan");
    }
    let mut failed = false;
    for outcome in apply::perform(root, &writes) {
        match outcome.error {
            None => println!(
                "changed {}: {} -> {}",
                outcome.name, outcome.from, outcome.to
            ),
            Some(e) => {
                failed = true;
                println!(
                    "FAILED  {}: {} -> {}: {e}",
                    outcome.name, outcome.from, outcome.to
                );
            }
        }
    }
    failed
}

fn print_not_changed(report: &Report) {
    for item in apply::manual_steps(report) {
        let fix = item.fix.as_deref().unwrap_or("(see tune check)");
        println!("not changed (do it by hand) {}: {fix}", item.name);
    }
    for item in report.with_status(Status::Warn) {
        let fix = item.fix.as_deref().unwrap_or("");
        println!("not changed (warning only) {}: {fix}", item.name);
    }
}

fn print_dry_run(report: &Report) {
    println!(
        "# tune apply --dry-run: {} connections, {} node(s); run as root:",
        report.connections, report.nodes
    );
    for write in apply::planned_writes(report) {
        println!("{}    # was: {}", write.command, write.item.current);
    }
    for item in apply::manual_steps(report) {
        let fix = item.fix.as_deref().unwrap_or("(see tune check)");
        println!("# by hand, {}: {fix}", item.name);
    }
    for item in report.with_status(Status::Warn) {
        let fix = item.fix.as_deref().unwrap_or("");
        println!("# optional, {}: {fix}", item.name);
    }
}
