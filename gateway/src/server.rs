//! Starting the shards: one pinned glommio executor per shard, each with its own
//! SO_REUSEPORT listeners on both ports, and the ready line once all of them listen.
//!
//! Port 0 (tests): shard 0 binds first and reports the ports it got; the other shards then
//! bind those exact ports, so all shards share each port and the kernel spreads accepts.
//! glommio's `TcpListener::bind` sets SO_REUSEPORT itself (backlog 1024).

use std::net::SocketAddr;
use std::sync::mpsc;

use anyhow::{anyhow, Context as _};

use glommio::{CpuSet, LocalExecutorBuilder, Placement};

use crate::config::Config;
use crate::metrics::Metrics;
use crate::shard::{self, Shard};
use crate::shutdown::ShutdownFlag;

/// io_uring buffer memory per executor. glommio's default (10 MiB) is registered, hence
/// locked, memory; this machine class allows 8 MiB of locked memory per process, so each
/// shard gets 1 MiB (sockets do not use these buffers; they serve DMA file I/O).
pub const IO_MEMORY_BYTES: usize = 1 << 20;

/// Submission queue depth per ring (glommio's default).
pub const RING_DEPTH: usize = 128;

/// Where the server listens, once every shard does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ready {
    pub http: SocketAddr,
    pub tcp: SocketAddr,
    pub shards: usize,
}

impl std::fmt::Display for Ready {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "confab ready http={} tcp={} shards={}",
            self.http, self.tcp, self.shards
        )
    }
}

type Bound = Result<(SocketAddr, SocketAddr), String>;

/// Run the server until `flag` is set and every shard has drained. `on_ready` is called
/// once, when all shards are listening.
pub fn run(config: Config, flag: ShutdownFlag, on_ready: impl FnOnce(Ready)) -> anyhow::Result<()> {
    config
        .create_data_dir()
        .with_context(|| format!("creating data dir {}", config.data_dir.display()))?;
    let cpus = cpus()?;
    let metrics = Metrics::new(config.shards);
    let (bound_tx, bound_rx) = mpsc::channel::<Bound>();
    let mut handles = Vec::with_capacity(config.shards);
    let mut ports = (config.http_port, config.tcp_port);
    let mut first: Option<(SocketAddr, SocketAddr)> = None;
    for id in 0..config.shards {
        let cpu = cpus[id % cpus.len()];
        let spawned = spawn_shard(id, cpu, ports, &config, &metrics, &flag, bound_tx.clone());
        let bound = spawned.and_then(|handle| {
            handles.push(handle);
            bound_rx
                .recv()
                .map_err(|_| anyhow!("shard {id} exited before binding"))?
                .map_err(|e| anyhow!("shard {id}: {e}"))
        });
        match bound {
            Ok(addrs) => {
                ports = (addrs.0.port(), addrs.1.port());
                first.get_or_insert(addrs);
            }
            Err(e) => {
                flag.trigger();
                let _ = join(handles); // the bind error is the one to report
                return Err(e);
            }
        }
    }
    let (http, tcp) = first.ok_or_else(|| anyhow!("no shards"))?;
    on_ready(Ready {
        http,
        tcp,
        shards: config.shards,
    });
    join(handles)
}

fn spawn_shard(
    id: usize,
    cpu: usize,
    (http_port, tcp_port): (u16, u16),
    config: &Config,
    metrics: &Metrics,
    flag: &ShutdownFlag,
    bound: mpsc::Sender<Bound>,
) -> anyhow::Result<glommio::ExecutorJoinHandle<()>> {
    let (config, metrics, flag) = (config.clone(), metrics.clone(), flag.clone());
    LocalExecutorBuilder::new(Placement::Fixed(cpu))
        .name(&format!("shard{id}"))
        .io_memory(IO_MEMORY_BYTES)
        .ring_depth(RING_DEPTH)
        .spawn(move || async move {
            let bind = |port| glommio::net::TcpListener::bind(SocketAddr::new(config.bind, port));
            let listeners = bind(http_port).and_then(|h| Ok((h, bind(tcp_port)?)));
            let (http, tcp) = match listeners {
                Ok(pair) => pair,
                Err(e) => {
                    let _ = bound.send(Err(format!("binding {}: {e}", config.bind)));
                    return;
                }
            };
            let addrs = http.local_addr().and_then(|h| Ok((h, tcp.local_addr()?)));
            let _ = bound.send(addrs.map_err(|e| e.to_string()));
            tracing::info!(shard = id, cpu, "shard listening");
            shard::serve(Shard::new(id, config, metrics), flag, http, tcp).await;
        })
        .map_err(|e| anyhow!("starting executor for shard {id} on cpu {cpu}: {e}"))
}

fn join(handles: Vec<glommio::ExecutorJoinHandle<()>>) -> anyhow::Result<()> {
    let mut result = Ok(());
    for (id, handle) in handles.into_iter().enumerate() {
        if let Err(e) = handle.join() {
            result = Err(anyhow!("shard {id} failed: {e}"));
        }
    }
    result
}

/// The CPUs shards are pinned to, in order; shard `i` gets `cpus[i % len]`.
fn cpus() -> anyhow::Result<Vec<usize>> {
    let mut cpus: Vec<usize> = CpuSet::online()
        .map_err(|e| anyhow!("listing online CPUs: {e}"))?
        .into_iter()
        .map(|location| location.cpu)
        .collect();
    cpus.sort_unstable();
    cpus.dedup();
    if cpus.is_empty() {
        return Err(anyhow!("no online CPUs"));
    }
    Ok(cpus)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ready_line_format() {
        let ready = Ready {
            http: "127.0.0.1:8080".parse().unwrap(),
            tcp: "127.0.0.1:7070".parse().unwrap(),
            shards: 2,
        };
        assert_eq!(
            ready.to_string(),
            "confab ready http=127.0.0.1:8080 tcp=127.0.0.1:7070 shards=2"
        );
    }
}
