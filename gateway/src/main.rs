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
    // Before anything else: this may run the program again (see the function).
    let huge_pages = log_engine::huge_pages::set_up_for_mimalloc();
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
    report_huge_pages(huge_pages);
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

/// Transparent huge pages only for the logs' batch buffers (see
/// `log_engine::huge_pages`), off for the rest of the process.
///
/// mimalloc would ask for huge pages on all its arenas (`MADV_HUGEPAGE`), so the first
/// write to every fresh 2 MiB of heap would fault in a whole huge page, on a shard
/// thread. On the VMs we run on that fault costs 4–6 ms: measured as half of all lone
/// sends to an idle shard waiting that long for their ack (the idempotency table's
/// random inserts kept landing on untouched huge pages between the fdatasync and the
/// ack). With 4 KiB pages the same first touches cost microseconds each. The batch
/// buffers are touched once, when a log opens, and their `O_DIRECT` writes are much
/// faster from huge pages.
fn report_huge_pages(policy: log_engine::huge_pages::ThpPolicy) {
    use log_engine::huge_pages::ThpPolicy;
    match policy {
        ThpPolicy::AdvisedOnly => {
            tracing::info!("transparent huge pages: log batch buffers only");
        }
        ThpPolicy::Off => tracing::info!(
            "transparent huge pages: off (kernel before 6.18, or {} set)",
            log_engine::huge_pages::MIMALLOC_THP_VAR
        ),
        ThpPolicy::Unchanged => tracing::warn!(
            "could not limit transparent huge pages; first touches of heap may stall shards"
        ),
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
