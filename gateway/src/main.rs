//! `confab`: the server binary. Parses the config, sets up logging and signals, runs the
//! shards; everything else lives in the `gateway` library.

use std::io::Write as _;

use anyhow::Context as _;
use clap::Parser as _;
use gateway::config::{Cli, Command, Config};
use gateway::shutdown::ShutdownFlag;
use signal_hook::consts::{SIGINT, SIGTERM};

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> anyhow::Result<()> {
    let mut cli = Cli::parse();
    if let Some(Command::Cluster(command)) = cli.command.take() {
        let url = cli
            .redis_url
            .as_deref()
            .context("cluster commands need --redis-url (or CONFAB_REDIS_URL)")?;
        let name = cli
            .cluster_name
            .as_deref()
            .unwrap_or(gateway::config::DEFAULT_CLUSTER_NAME);
        let out = gateway::cluster::coord::admin(url, name, &command)?;
        print!("{out}");
        return Ok(());
    }
    let config = Config::resolve(cli)?;
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .init();
    raise_fd_limit();
    disable_transparent_huge_pages();
    let flag = ShutdownFlag::default();
    watch_signals(flag.clone())?;
    gateway::server::run(config, flag, |ready| {
        let mut stdout = std::io::stdout().lock();
        let _ = writeln!(stdout, "{ready}");
        let _ = stdout.flush();
        tracing::info!(%ready, "serving");
    })?;
    tracing::info!("stopped");
    Ok(())
}

/// The first SIGTERM/SIGINT starts a graceful shutdown; a second one exits at once.
fn watch_signals(flag: ShutdownFlag) -> anyhow::Result<()> {
    let mut signals = signal_hook::iterator::Signals::new([SIGTERM, SIGINT])
        .context("installing signal handlers")?;
    std::thread::Builder::new()
        .name("signals".to_string())
        .spawn(move || {
            for signal in signals.forever() {
                if flag.is_set() {
                    std::process::exit(128 + signal);
                }
                tracing::info!(signal, "shutting down");
                flag.trigger();
            }
        })
        .context("starting the signal thread")?;
    Ok(())
}

/// Turn transparent huge pages off for this process (as Redis does at start).
///
/// mimalloc asks for huge pages on its arenas (`MADV_HUGEPAGE`), so the first write to
/// every fresh 2 MiB of heap faults in a whole huge page, on a shard thread. On the VMs
/// we run on that fault costs 4–6 ms: measured as half of all lone sends to an idle
/// shard waiting that long for their ack (the idempotency table's random inserts kept
/// landing on untouched huge pages between the fdatasync and the ack). With 4 KiB pages
/// the same first touches cost microseconds each. Memory already mapped keeps its pages.
fn disable_transparent_huge_pages() {
    // SAFETY: prctl with integer arguments only.
    let rc = unsafe { libc::prctl(libc::PR_SET_THP_DISABLE, 1, 0, 0, 0) };
    if rc != 0 {
        tracing::warn!(
            error = %std::io::Error::last_os_error(),
            "could not disable transparent huge pages; first touches of heap may stall shards"
        );
    }
}

/// Raise the soft open-files limit to the hard limit: every connection is a descriptor.
fn raise_fd_limit() {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit with a valid pointer to a local struct.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) == 0 && limit.rlim_cur < limit.rlim_max
        {
            limit.rlim_cur = limit.rlim_max;
            if libc::setrlimit(libc::RLIMIT_NOFILE, &limit) != 0 {
                tracing::warn!("could not raise the open-files limit");
            }
        }
    }
}
