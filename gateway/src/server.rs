//! Starting the shards: one pinned glommio executor per shard, each with its own
//! SO_REUSEPORT listeners on both ports, and the ready line once all of them listen.
//!
//! Port 0 (tests): shard 0 binds first and reports the ports it got; the other shards then
//! bind those exact ports, so all shards share each port and the kernel spreads accepts.
//! glommio's `TcpListener::bind` sets SO_REUSEPORT itself (backlog 1024).

use crate::media::store::MediaStore;
use std::net::{IpAddr, SocketAddr};
use std::sync::mpsc;

use anyhow::{anyhow, Context as _};

use glommio::{CpuSet, LocalExecutorBuilder};

use log_engine::{AsyncLog, FsStorage, PipelinedLog};
use router::mesh::{full_mesh, MeshEnds, MESH_CHANNEL_BATCHES_DEFAULT};
use router::{Placement, SnowflakeGenerator};

use crate::auth::TokenKey;
use crate::chat::ShardMsg;
use crate::cluster::link::ShardCluster;
use crate::cluster::{coord, ClusterShared, NodeInfo};
use crate::config::Config;
use crate::metrics::Metrics;
use crate::shard::{self, Shard, ShardParts};
use crate::shutdown::ShutdownFlag;
use crate::state::ShardState;
use std::sync::Arc;

/// The file holding the token signing key, in the data directory.
pub const TOKEN_KEY_FILE: &str = "token.key";
/// Where media objects live when `media_store` is not set (`<data_dir>/media`).
pub const MEDIA_DIR: &str = "media";

/// The file a running server holds an exclusive lock on, so a second server on the same
/// data directory refuses to start (SO_REUSEPORT would let it bind the same ports, and two
/// writers would interleave one log).
pub const LOCK_FILE: &str = "lock";

/// The file recording the shard count the data directory was written with.
pub const LAYOUT_FILE: &str = "layout";

/// io_uring buffer memory per executor. glommio's default (10 MiB) is registered, hence
/// locked, memory; this machine class allows 8 MiB of locked memory per process, so each
/// shard gets 1 MiB (sockets do not use these buffers; they serve DMA file I/O).
pub const IO_MEMORY_BYTES: usize = 1 << 20;

/// Submission queue depth per ring. Not glommio's default (128): the kernel sizes a
/// ring's cancel hash from its completion queue (2^(log2(cq entries) - 5) buckets, at most
/// 256), and every cancel glommio issues (a dropped read, a re-armed timer) walks a bucket
/// of the armed socket polls. At 128 there are 8 buckets, so with 5,000 idle connections
/// per shard each cancel walked ~600 entries: 35% of the server's CPU in a heartbeat
/// benchmark went to `io_poll_find`. 4096 gives the full 256 buckets (bench/RESULTS.md).
pub const RING_DEPTH: usize = 4096;

/// Where the server listens, once every shard does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ready {
    pub http: SocketAddr,
    pub tcp: SocketAddr,
    pub shards: usize,
    /// The node-link listener (cluster mode only).
    pub link: Option<SocketAddr>,
}

impl std::fmt::Display for Ready {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "confab ready http={} tcp={} shards={}",
            self.http, self.tcp, self.shards
        )?;
        if let Some(link) = self.link {
            write!(f, " link={link}")?;
        }
        Ok(())
    }
}

/// What a shard bound: HTTP, raw TCP, and (cluster mode) the link port.
type Bound = Result<(SocketAddr, SocketAddr, Option<SocketAddr>), String>;

/// Run the server until `flag` is set and every shard has drained. `on_ready` is called
/// once, when all shards are listening.
pub fn run(config: Config, flag: ShutdownFlag, on_ready: impl FnOnce(Ready)) -> anyhow::Result<()> {
    config
        .create_data_dir()
        .with_context(|| format!("creating data dir {}", config.data_dir.display()))?;
    let _lock = lock_data_dir(&config)?;
    check_ports_free(&config)?;
    check_layout(&config)?;
    let key_path = config.data_dir.join(TOKEN_KEY_FILE);
    let mut token_key = TokenKey::load_or_create(&key_path).context("loading the token key")?;
    let cluster = match &config.redis_url {
        Some(url) => {
            let keys = coord::Keys::new(&config.cluster_name);
            if config.advertise.is_unspecified() {
                return Err(anyhow!(
                    "cluster mode needs --advertise (or a specific --bind): other nodes and \
                     redirected clients cannot reach {}",
                    config.advertise
                ));
            }
            check_node_id(&config)?;
            let boot = coord::bootstrap(
                url,
                &keys,
                &config.data_dir,
                config.node_id,
                config.shards,
                token_key.as_bytes(),
            )
            .context("joining the cluster")?;
            if let Some(bytes) = boot
                .token_key
                .filter(|k| k.as_slice() != token_key.as_bytes())
            {
                token_key = TokenKey::from_bytes(&bytes).context("the cluster token key")?;
                TokenKey::store(&key_path, &token_key).context("storing the cluster token key")?;
            }
            tracing::info!(
                node = config.node_id,
                map_version = boot.view.map.version,
                partitions = boot.view.map.partitions_of(config.node_id),
                "joined the cluster"
            );
            Some((
                ClusterShared::new(config.node_id, boot.view),
                url.clone(),
                keys,
            ))
        }
        None => None,
    };
    let media = MediaStore::open(&config.media_store, &config.data_dir.join(MEDIA_DIR))
        .context("opening the media store")?;
    tracing::info!(store = %media.describe, "media store open");
    let placement = match &cluster {
        Some((shared, ..)) => shared.view().placement.clone(),
        None => Placement::single_node(config.node_id, config.shards as u32)
            .map_err(|e| anyhow!("placement: {e}"))?,
    };
    let cpus = cpus()?;
    let metrics = Metrics::new(config.shards);
    let mut mesh_ends =
        full_mesh::<ShardMsg>(config.shards, MESH_CHANNEL_BATCHES_DEFAULT).into_iter();
    let (bound_tx, bound_rx) = mpsc::channel::<Bound>();
    let mut handles = Vec::with_capacity(config.shards);
    let mut ports = (
        config.http_port,
        config.tcp_port,
        cluster.as_ref().map(|_| config.link_port),
    );
    let mut first: Option<(SocketAddr, SocketAddr, Option<SocketAddr>)> = None;
    for id in 0..config.shards {
        let cpu = cpus[(config.first_cpu + id) % cpus.len()];
        let common = Common {
            config: config.clone(),
            metrics: metrics.clone(),
            flag: flag.clone(),
            token_key: token_key.clone(),
            placement: placement.clone(),
            media: media.clone(),
            cluster: cluster.as_ref().map(|(shared, ..)| shared.clone()),
        };
        let ends = mesh_ends
            .next()
            .ok_or_else(|| anyhow!("mesh ends for shard {id}"))?;
        let spawned = spawn_shard(id, cpu, ports, common, ends, bound_tx.clone());
        let bound = spawned.and_then(|handle| {
            handles.push(handle);
            bound_rx
                .recv()
                .map_err(|_| anyhow!("shard {id} exited before binding"))?
                .map_err(|e| anyhow!("shard {id}: {e}"))
        });
        match bound {
            Ok(addrs) => {
                ports = (addrs.0.port(), addrs.1.port(), addrs.2.map(|a| a.port()));
                first.get_or_insert(addrs);
            }
            Err(e) => {
                flag.trigger();
                let _ = join(handles); // the bind error is the one to report
                return Err(e);
            }
        }
    }
    let (http, tcp, link) = first.ok_or_else(|| anyhow!("no shards"))?;
    // Cluster mode: announce this node only once every shard listens.
    let coordinator = match (cluster, link) {
        (Some((shared, url, keys)), Some(link)) => {
            let advertise = |addr: SocketAddr| SocketAddr::new(config.advertise, addr.port());
            let coordinator = coord::Coordinator {
                url,
                keys,
                data_dir: config.data_dir.clone(),
                heartbeat: config.cluster_heartbeat,
                node_ttl: config.cluster_node_ttl,
                shared,
                me: NodeInfo {
                    node: config.node_id,
                    http: advertise(http),
                    tcp: advertise(tcp),
                    link: advertise(link),
                    shards: config.shards as u16,
                    connections: 0,
                    started_ms: crate::chat::now_ms(),
                },
                token_key: token_key.as_bytes().to_vec(),
                metrics: metrics.clone(),
                shards: config.shards,
            };
            let flag = flag.clone();
            Some(
                std::thread::Builder::new()
                    .name("confab-cluster".to_owned())
                    .spawn(move || coordinator.run(flag))
                    .context("starting the cluster thread")?,
            )
        }
        _ => None,
    };
    on_ready(Ready {
        http,
        tcp,
        shards: config.shards,
        link,
    });
    let joined = join(handles);
    if let Some(thread) = coordinator {
        let _ = thread.join();
    }
    joined
}

/// The file recording the node id the data directory belongs to (cluster mode).
pub const NODE_FILE: &str = "node";

/// Refuse to start a cluster node on a data directory of another node: its logs hold
/// that node's partitions.
fn check_node_id(config: &Config) -> anyhow::Result<()> {
    let path = config.data_dir.join(NODE_FILE);
    let want = format!("node={}\n", config.node_id);
    match std::fs::read_to_string(&path) {
        Ok(found) if found == want => Ok(()),
        Ok(found) => Err(anyhow!(
            "{} belongs to {} but this server is --node-id {}",
            config.data_dir.display(),
            found.trim(),
            config.node_id
        )),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            std::fs::write(&path, want).with_context(|| format!("writing {}", path.display()))
        }
        Err(e) => Err(anyhow!("reading {}: {e}", path.display())),
    }
}

/// What every shard gets a copy of.
struct Common {
    config: Config,
    metrics: Metrics,
    flag: ShutdownFlag,
    token_key: TokenKey,
    placement: Placement,
    media: MediaStore,
    cluster: Option<Arc<ClusterShared>>,
}

/// Lock the data directory for this process's lifetime (the lock goes with the file
/// handle, also when the process is killed).
fn lock_data_dir(config: &Config) -> anyhow::Result<std::fs::File> {
    let path = config.data_dir.join(LOCK_FILE);
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .with_context(|| format!("opening {}", path.display()))?;
    match file.try_lock() {
        Ok(()) => Ok(file),
        Err(std::fs::TryLockError::WouldBlock) => Err(anyhow!(
            "{} is in use by another confab process (it holds {})",
            config.data_dir.display(),
            path.display()
        )),
        Err(std::fs::TryLockError::Error(e)) => Err(anyhow!("locking {}: {e}", path.display())),
    }
}

/// How long the start-up check waits for a connection to a port it means to listen on.
pub const PORT_PROBE_TIMEOUT: std::time::Duration = std::time::Duration::from_millis(200);

/// Refuse to start on a port another process listens on. The shards' listeners set
/// SO_REUSEPORT (that is how they share a port), so a second server started on the same
/// ports with another data directory would bind too, and the kernel would silently split
/// the connections between the two. So the server first connects to each fixed port: if
/// something accepts, it is taken. (A plain bind without SO_REUSEPORT is no test: it also
/// fails on the orphaned connections a killed server leaves, which a restart must not
/// mind.) Port 0 (any free port) is skipped.
fn check_ports_free(config: &Config) -> anyhow::Result<()> {
    let link = config.redis_url.as_ref().map(|_| config.link_port);
    let host = match config.bind {
        IpAddr::V4(ip) if ip.is_unspecified() => IpAddr::V4(std::net::Ipv4Addr::LOCALHOST),
        IpAddr::V6(ip) if ip.is_unspecified() => IpAddr::V6(std::net::Ipv6Addr::LOCALHOST),
        ip => ip,
    };
    let ports = [Some(config.http_port), Some(config.tcp_port), link];
    for port in ports.into_iter().flatten().filter(|&p| p != 0) {
        let addr = SocketAddr::new(host, port);
        if std::net::TcpStream::connect_timeout(&addr, PORT_PROBE_TIMEOUT).is_ok() {
            return Err(anyhow!(
                "{addr} is not free: another server listens there (its SO_REUSEPORT \
                 listeners would share the port's connections with this one)"
            ));
        }
    }
    Ok(())
}

/// Refuse to start on a data directory written with another shard count: ownership of
/// users and conversations follows the count, so their data would be on the wrong shard.
fn check_layout(config: &Config) -> anyhow::Result<()> {
    let path = config.data_dir.join(LAYOUT_FILE);
    let want = format!("shards={}\n", config.shards);
    match std::fs::read_to_string(&path) {
        Ok(found) if found == want => Ok(()),
        Ok(found) => Err(anyhow!(
            "{} was written with {} but this server runs shards={}; resharding is not \
             supported, start with the same --shards",
            config.data_dir.display(),
            found.trim(),
            config.shards
        )),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            std::fs::write(&path, want).with_context(|| format!("writing {}", path.display()))
        }
        Err(e) => Err(anyhow!("reading {}: {e}", path.display())),
    }
}

/// Open shard `id`'s log (`<data_dir>/shard-<id>/`), recovering it.
fn open_log(config: &Config, id: usize) -> anyhow::Result<shard::ShardLog> {
    let dir = config.data_dir.join(format!("shard-{id}"));
    let storage = FsStorage::open(&dir).with_context(|| format!("opening {}", dir.display()))?;
    let log_config = log_engine::Config {
        segment_bytes: config.log_segment_bytes,
        // Persist before ack: the gateway runs the pipelined log, which is durable-only.
        durability: log_engine::Durability::Durable,
        dedupe_entries: config.dedupe_entries,
        ..log_engine::Config::default()
    };
    let (log, report) = PipelinedLog::open(storage, log_config, ShardState::default())
        .with_context(|| format!("recovering {}", dir.display()))?;
    tracing::info!(shard = id, ?report, "log open");
    Ok(AsyncLog::new(log))
}

fn spawn_shard(
    id: usize,
    cpu: usize,
    (http_port, tcp_port, link_port): (u16, u16, Option<u16>),
    common: Common,
    ends: MeshEnds<ShardMsg>,
    bound: mpsc::Sender<Bound>,
) -> anyhow::Result<glommio::ExecutorJoinHandle<()>> {
    let Common {
        config,
        metrics,
        flag,
        token_key,
        placement,
        media,
        cluster,
    } = common;
    LocalExecutorBuilder::new(glommio::Placement::Fixed(cpu))
        .name(&format!("shard{id}"))
        .io_memory(IO_MEMORY_BYTES)
        .ring_depth(RING_DEPTH)
        .spawn(move || async move {
            let bind = |port| glommio::net::TcpListener::bind(SocketAddr::new(config.bind, port));
            let listeners = bind(http_port).and_then(|h| {
                let link = link_port.map(bind).transpose()?;
                Ok((h, bind(tcp_port)?, link))
            });
            let (http, tcp, link) = match listeners {
                Ok(pair) => pair,
                Err(e) => {
                    let _ = bound.send(Err(format!("binding {}: {e}", config.bind)));
                    return;
                }
            };
            let log = match open_log(&config, id) {
                Ok(log) => {
                    metrics
                        .shard(id)
                        .log_opened(log.with_log(|l| l.batch_io_stats()));
                    log
                }
                Err(e) => {
                    let _ = bound.send(Err(format!("{e:#}")));
                    return;
                }
            };
            let ids = match SnowflakeGenerator::for_shard(
                config.node_id,
                config.shards as u32,
                id as u32,
            ) {
                Ok(ids) => ids,
                Err(e) => {
                    let _ = bound.send(Err(format!("message ids: {e}")));
                    return;
                }
            };
            let addrs = http.local_addr().and_then(|h| {
                let l = link.as_ref().map(|l| l.local_addr()).transpose()?;
                Ok((h, tcp.local_addr()?, l))
            });
            let _ = bound.send(addrs.map_err(|e| e.to_string()));
            // Every shard connects its mesh ends; this waits for all of them — or for the
            // process to stop (another shard failed to start: it will never connect).
            let stopped = async {
                while !flag.is_set() {
                    glommio::timer::sleep(crate::shutdown::WATCH_INTERVAL).await;
                }
                None
            };
            let connected = async { Some(ends.connect().await) };
            let Some((mesh, incoming)) = futures_lite::future::or(connected, stopped).await else {
                tracing::warn!(shard = id, "stopped before every shard started");
                return;
            };
            let cluster = cluster.map(|shared| {
                ShardCluster::new(
                    shared,
                    config.cluster_name.clone(),
                    config.link_call_timeout,
                )
            });
            let shard = Shard::new(ShardParts {
                id,
                cluster,
                config,
                metrics,
                placement,
                mesh,
                log,
                ids,
                token_key,
                media,
            });
            for peer in incoming {
                glommio::spawn_local(shard::receive_loop(shard.clone(), peer)).detach();
            }
            if let Some(link) = link {
                glommio::spawn_local(crate::cluster::link::accept_loop(shard.clone(), link))
                    .detach();
                glommio::spawn_local(crate::cluster::link::sweep_loop(shard.clone())).detach();
            }
            tracing::info!(shard = id, cpu, "shard listening");
            shard::serve(shard, flag, http, tcp).await;
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

/// The CPUs shards are pinned to, in order; shard `i` gets `cpus[(first_cpu + i) % len]`.
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
            link: None,
        };
        assert_eq!(
            ready.to_string(),
            "confab ready http=127.0.0.1:8080 tcp=127.0.0.1:7070 shards=2"
        );
    }
}
