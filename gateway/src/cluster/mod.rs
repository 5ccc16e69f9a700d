//! Cluster mode: many nodes (gateway processes) serving as one, coordinated through Redis.
//!
//! # Pieces
//! - [`ClusterMap`]: the partition → node table, kept in Redis and changed only by the
//!   admin command (`confab cluster init|assign|show`, [`coord`]). A partition's shard
//!   within its node is `partition % shards_per_node`, exactly the single-node rule, so a
//!   [`router::Placement`] is built from the map with no further lookup.
//! - [`coord`]: the coordinator thread. Every heartbeat it refreshes this node's
//!   membership record (a Redis key with a TTL), reads the others' and the map version, and
//!   publishes a [`View`] that shards pick up with one atomic load per route.
//! - [`link`]: node links, persistent TCP connections between shards of different nodes
//!   carrying forwarded [`crate::chat::ShardMsg`]s ([`remote`] takes them apart).
//!
//! # Global shard indices
//! Inside the gateway a shard is named by one `usize`: `node × shards_per_node + shard`
//! (the Snowflake worker formula). On a single node (node 0) that is the local index, so the
//! single-node code paths are unchanged; [`crate::shard::Shard::route`] sends an index of
//! another node over a link. Every node of a cluster runs the same shard count (the map
//! records it and a node with another count refuses to start).
//!
//! # Availability
//! A node whose record expired is down: requests for its partitions fail at once with
//! `Unavailable` (no timeouts for clients to sit through), one-way pushes to it are dropped
//! (its users catch up from the log when they reconnect). When Redis itself is unreachable
//! every node keeps the last view it had: the data path does not go through Redis, so the
//! cluster keeps serving and recovers its membership when Redis is back.

pub mod coord;
pub mod link;
pub mod remote;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, RwLock};

use router::limits::NODES_MAX;
use router::{Home, Placement, PlacementError};
use serde::{Deserialize, Serialize};

/// The partition → node table, as stored in Redis (JSON) and cached in the data dir.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterMap {
    /// Bumped by every change; nodes reload the map when it moves.
    pub version: u64,
    /// Shards every node runs.
    pub shards_per_node: u16,
    /// `partitions[p]` is the node owning partition `p`; the length is a power of two.
    pub partitions: Vec<u16>,
}

impl ClusterMap {
    /// Partitions spread over `nodes` round-robin (`p` → `nodes[p % len]`).
    pub fn spread(nodes: &[u16], shards_per_node: u16, partitions: u32) -> ClusterMap {
        let partitions = (0..partitions as usize)
            .map(|p| nodes.get(p % nodes.len().max(1)).copied().unwrap_or(0))
            .collect();
        ClusterMap {
            version: 1,
            shards_per_node,
            partitions,
        }
    }

    /// The nodes that own at least one partition, ascending.
    pub fn nodes(&self) -> Vec<u16> {
        let mut nodes = self.partitions.clone();
        nodes.sort_unstable();
        nodes.dedup();
        nodes
    }

    /// Partitions owned by `node`.
    pub fn partitions_of(&self, node: u16) -> usize {
        self.partitions.iter().filter(|&&n| n == node).count()
    }

    /// The placement table: partition `p` → (`partitions[p]`, `p % shards_per_node`).
    pub fn placement(&self) -> Result<Placement, PlacementError> {
        let spn = u32::from(self.shards_per_node.max(1));
        let homes = self
            .partitions
            .iter()
            .enumerate()
            .map(|(p, &node)| Home {
                node,
                // Below spn ≤ u16::MAX.
                shard: (p as u32 % spn) as u16,
            })
            .collect();
        Placement::from_homes(homes)
    }

    /// Checks a map read from Redis or disk before anything uses it.
    pub fn validate(&self) -> Result<(), String> {
        if self.shards_per_node == 0 {
            return Err("shards_per_node is 0".to_owned());
        }
        if let Some(bad) = self.partitions.iter().find(|&&n| u32::from(n) >= NODES_MAX) {
            return Err(format!("node id {bad} is not below {NODES_MAX}"));
        }
        let workers = (u32::from(self.nodes().last().copied().unwrap_or(0)) + 1)
            * u32::from(self.shards_per_node);
        if workers > router::limits::SNOWFLAKE_WORKERS_MAX {
            return Err(format!(
                "node ids × shards_per_node = {workers} Snowflake workers, more than {}",
                router::limits::SNOWFLAKE_WORKERS_MAX
            ));
        }
        self.placement().map(|_| ()).map_err(|e| e.to_string())
    }
}

/// One node's membership record: where to reach it, and how loaded it is.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeInfo {
    pub node: u16,
    /// HTTP + WebSocket listener.
    pub http: SocketAddr,
    /// Raw-TCP listener.
    pub tcp: SocketAddr,
    /// Node-link listener.
    pub link: SocketAddr,
    pub shards: u16,
    /// Open client connections when the record was written.
    pub connections: u64,
    /// Process start (ms since the Unix epoch): a new value means the node restarted.
    pub started_ms: u64,
}

/// What a node currently believes about the cluster.
#[derive(Debug, Clone)]
pub struct View {
    pub map: Arc<ClusterMap>,
    pub placement: Placement,
    /// Indexed by node id; `None` is down (or never seen).
    pub nodes: Vec<Option<NodeInfo>>,
}

impl View {
    pub fn node(&self, node: u16) -> Option<&NodeInfo> {
        self.nodes.get(usize::from(node)).and_then(Option::as_ref)
    }
}

/// Shared between the coordinator thread (writer) and every shard (readers). Shards poll
/// `version` (one atomic load) and clone the view only when it moved.
pub struct ClusterShared {
    pub node_id: u16,
    pub shards_per_node: usize,
    version: AtomicU64,
    view: RwLock<Arc<View>>,
    /// Per node id: up (a fresh membership record) or down. Read on every remote route.
    up: Vec<AtomicBool>,
    /// Whether the last Redis round trip worked (metrics, logs).
    pub redis_ok: AtomicBool,
}

impl ClusterShared {
    pub fn new(node_id: u16, view: View) -> Arc<ClusterShared> {
        let shards_per_node = usize::from(view.map.shards_per_node.max(1));
        let up = (0..NODES_MAX).map(|_| AtomicBool::new(false)).collect();
        let shared = Arc::new(ClusterShared {
            node_id,
            shards_per_node,
            version: AtomicU64::new(0),
            view: RwLock::new(Arc::new(view.clone())),
            up,
            redis_ok: AtomicBool::new(true),
        });
        shared.publish(view);
        shared
    }

    /// Install a new view (coordinator thread).
    pub fn publish(&self, view: View) {
        for (node, slot) in self.up.iter().enumerate() {
            let is_up = node == usize::from(self.node_id)
                || view.nodes.get(node).is_some_and(Option::is_some);
            slot.store(is_up, Ordering::Release);
        }
        if let Ok(mut current) = self.view.write() {
            *current = Arc::new(view);
        }
        self.version.fetch_add(1, Ordering::AcqRel);
    }

    pub fn version(&self) -> u64 {
        self.version.load(Ordering::Acquire)
    }

    pub fn view(&self) -> Arc<View> {
        match self.view.read() {
            Ok(view) => view.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    /// Is `node` up (this node always is)?
    pub fn is_up(&self, node: u16) -> bool {
        self.up
            .get(usize::from(node))
            .is_some_and(|up| up.load(Ordering::Acquire))
    }
}

/// The global index of `home` with `shards_per_node` shards per node.
pub fn global_index(home: Home, shards_per_node: usize) -> usize {
    usize::from(home.node) * shards_per_node + usize::from(home.shard)
}

/// The Redirect frame sending a client of `transport` to `node`, if that node is up.
/// WebSocket clients get a `ws://host:port/ws` URL, raw-TCP clients `host:port`.
pub fn redirect_for(
    shard: &crate::shard::Shard,
    node: u16,
    transport: crate::session::codec::Transport,
) -> Option<wire::message::Redirect> {
    let cluster = shard.cluster.as_ref()?;
    if !cluster.shared.is_up(node) {
        return None;
    }
    let info = cluster.with_view(|view| view.node(node).cloned())?;
    let address = match transport {
        crate::session::codec::Transport::Tcp => info.tcp.to_string(),
        crate::session::codec::Transport::Ws(_) => format!("ws://{}/ws", info.http),
    };
    Some(wire::message::Redirect {
        address,
        node_id: node,
    })
}
