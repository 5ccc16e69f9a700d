//! The Redis side of cluster mode: the partition map, membership records, the admin
//! operations, and the coordinator thread that keeps a node's [`View`] current.
//!
//! # Redis keys (all under the cluster name, `confab` by default)
//! | key | value | written by |
//! |---|---|---|
//! | `<name>:map` | [`ClusterMap`] as JSON | `confab cluster init` / `assign` only |
//! | `<name>:node:<id>` | [`NodeInfo`] as JSON, `PX` = node TTL | node `<id>`, every heartbeat |
//! | `<name>:token-key` | the token signing key, hex | the first node to start (`SET NX`) |
//!
//! Every node signs and verifies tokens (and media URLs, whose key derives from it) with
//! the one cluster key, so a token from a login at any node works at every node. Each node
//! also keeps it in its data directory's `token.key` (a start while Redis is unreachable).
//!
//! Redis holds no message data and sits on no message path: a send goes client → node →
//! (link) → owner node and back. So Redis being slow or down never loses or delays a
//! message; it only freezes membership (every node keeps its last view) until it is back.
//! If Redis comes back *empty* (restarted without persistence), the nodes put the map they
//! cached in their data directory back with `SET NX`; membership records reappear with the
//! next heartbeat.
//!
//! The coordinator runs on its own thread with the blocking `redis` client (like the media
//! store's thread): shards never wait on Redis.

use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use redis::Commands as _;

use super::{ClusterMap, ClusterShared, NodeInfo, View};
use crate::shutdown::ShutdownFlag;

/// Connect/read/write timeout of one Redis round trip. A coordinator that cannot reach
/// Redis within it keeps its last view and tries again next heartbeat.
pub const REDIS_TIMEOUT: Duration = Duration::from_secs(2);

/// How long a starting node waits for Redis before it gives up (or falls back to its
/// cached map).
pub const REDIS_STARTUP_WAIT: Duration = Duration::from_secs(10);

/// The file in the data directory caching the last map this node read.
pub const MAP_CACHE_FILE: &str = "cluster-map.json";

/// What can go wrong talking to Redis or reading the map.
#[derive(Debug, thiserror::Error)]
pub enum CoordError {
    #[error("redis: {0}")]
    Redis(#[from] redis::RedisError),
    #[error("cluster map is invalid: {0}")]
    BadMap(String),
    #[error("no cluster map under {key}; create one with `confab cluster init`")]
    NoMap { key: String },
    #[error(
        "a cluster map already exists under {key} (version {version}); pass --force to replace it"
    )]
    MapExists { key: String, version: u64 },
    #[error("{0}")]
    Invalid(String),
}

/// The Redis key names of one cluster.
#[derive(Debug, Clone)]
pub struct Keys {
    name: String,
}

impl Keys {
    pub fn new(cluster_name: &str) -> Keys {
        Keys {
            name: cluster_name.to_owned(),
        }
    }
    pub fn map(&self) -> String {
        format!("{}:map", self.name)
    }
    pub fn node(&self, node: u16) -> String {
        format!("{}:node:{node}", self.name)
    }
    pub fn token_key(&self) -> String {
        format!("{}:token-key", self.name)
    }
}

/// A connection with every timeout set.
pub fn connect(url: &str) -> Result<redis::Connection, CoordError> {
    let client = redis::Client::open(url)?;
    let con = client.get_connection_with_timeout(REDIS_TIMEOUT)?;
    con.set_read_timeout(Some(REDIS_TIMEOUT))?;
    con.set_write_timeout(Some(REDIS_TIMEOUT))?;
    Ok(con)
}

/// The map stored in Redis, if any.
pub fn read_map(
    con: &mut redis::Connection,
    keys: &Keys,
) -> Result<Option<ClusterMap>, CoordError> {
    let raw: Option<String> = con.get(keys.map())?;
    raw.map(|raw| parse_map(&raw)).transpose()
}

fn parse_map(raw: &str) -> Result<ClusterMap, CoordError> {
    let map: ClusterMap =
        serde_json::from_str(raw).map_err(|e| CoordError::BadMap(e.to_string()))?;
    map.validate().map_err(CoordError::BadMap)?;
    Ok(map)
}

/// `confab cluster init`: store a new map spreading `partitions` over `nodes`. Refuses to
/// replace an existing map unless `force` (which strands the data of moved partitions).
pub fn init_map(
    con: &mut redis::Connection,
    keys: &Keys,
    nodes: &[u16],
    shards_per_node: u16,
    partitions: u32,
    force: bool,
) -> Result<ClusterMap, CoordError> {
    if nodes.is_empty() {
        return Err(CoordError::Invalid(
            "at least one node is needed".to_owned(),
        ));
    }
    let mut map = ClusterMap::spread(nodes, shards_per_node, partitions);
    map.validate().map_err(CoordError::Invalid)?;
    if let Some(old) = read_map(con, keys)? {
        if !force {
            return Err(CoordError::MapExists {
                key: keys.map(),
                version: old.version,
            });
        }
        map.version = old.version + 1;
    }
    let json = serde_json::to_string(&map).map_err(|e| CoordError::Invalid(e.to_string()))?;
    let _: () = con.set(keys.map(), json)?;
    Ok(map)
}

/// `confab cluster assign`: move one partition to `node` (version + 1), atomically with
/// respect to other admins (WATCH/MULTI). The partition's stored data does not move with
/// it: assign partitions that hold data only to a node that has that data.
pub fn assign_partition(
    con: &mut redis::Connection,
    keys: &Keys,
    partition: u32,
    node: u16,
) -> Result<ClusterMap, CoordError> {
    let key = keys.map();
    let map: ClusterMap = redis::transaction(con, &[&key], |con, pipe| {
        let raw: Option<String> = con.get(&key)?;
        let Some(raw) = raw else {
            return Err(redis::RedisError::from((
                redis::ErrorKind::ResponseError,
                "no cluster map",
            )));
        };
        let mut map = parse_map(&raw).map_err(|e| {
            redis::RedisError::from((redis::ErrorKind::ResponseError, "bad map", e.to_string()))
        })?;
        let Some(slot) = map.partitions.get_mut(partition as usize) else {
            return Err(redis::RedisError::from((
                redis::ErrorKind::ResponseError,
                "partition out of range",
            )));
        };
        *slot = node;
        map.version += 1;
        if let Err(e) = map.validate() {
            return Err(redis::RedisError::from((
                redis::ErrorKind::ResponseError,
                "invalid result",
                e,
            )));
        }
        let json = serde_json::to_string(&map).unwrap_or_default();
        pipe.set(&key, json).ignore().query::<()>(con)?;
        Ok(Some(map))
    })?;
    Ok(map)
}

/// The membership records of `nodes` (`None`: down).
pub fn read_nodes(
    con: &mut redis::Connection,
    keys: &Keys,
    nodes: &[u16],
) -> Result<Vec<(u16, Option<NodeInfo>)>, CoordError> {
    if nodes.is_empty() {
        return Ok(Vec::new());
    }
    let names: Vec<String> = nodes.iter().map(|&n| keys.node(n)).collect();
    let raw: Vec<Option<String>> = redis::cmd("MGET").arg(&names).query(con)?;
    Ok(nodes
        .iter()
        .zip(raw)
        .map(|(&node, raw)| {
            let info = raw
                .and_then(|raw| serde_json::from_str::<NodeInfo>(&raw).ok())
                .filter(|info| info.node == node);
            (node, info)
        })
        .collect())
}

/// A view from a map and membership records.
pub fn view_of(map: ClusterMap, members: Vec<(u16, Option<NodeInfo>)>) -> Result<View, CoordError> {
    let placement = map
        .placement()
        .map_err(|e| CoordError::BadMap(e.to_string()))?;
    let len = members
        .iter()
        .map(|(n, _)| usize::from(*n) + 1)
        .max()
        .unwrap_or(0);
    let mut nodes = vec![None; len];
    for (node, info) in members {
        if let Some(slot) = nodes.get_mut(usize::from(node)) {
            *slot = info;
        }
    }
    Ok(View {
        map: Arc::new(map),
        placement,
        nodes,
    })
}

/// Read the map cached in the data directory.
pub fn read_cached_map(data_dir: &Path) -> Option<ClusterMap> {
    let raw = std::fs::read_to_string(data_dir.join(MAP_CACHE_FILE)).ok()?;
    parse_map(&raw).ok()
}

fn write_cached_map(data_dir: &Path, map: &ClusterMap) {
    let path = data_dir.join(MAP_CACHE_FILE);
    let tmp = data_dir.join(format!("{MAP_CACHE_FILE}.tmp"));
    let Ok(json) = serde_json::to_string(map) else {
        return;
    };
    let written = std::fs::write(&tmp, json).and_then(|()| std::fs::rename(&tmp, &path));
    if let Err(error) = written {
        tracing::warn!(%error, path = %path.display(), "caching the cluster map failed");
    }
}

/// The cluster's token key: the stored one, else `candidate` (stored with `SET NX`, so
/// concurrent first starts agree on whichever got there first).
pub fn cluster_token_key(
    con: &mut redis::Connection,
    keys: &Keys,
    candidate: &[u8],
) -> Result<Vec<u8>, CoordError> {
    let _: Option<String> = redis::cmd("SET")
        .arg(keys.token_key())
        .arg(hex(candidate))
        .arg("NX")
        .query(con)?;
    let stored: Option<String> = con.get(keys.token_key())?;
    let stored = stored.ok_or_else(|| CoordError::Invalid("token key vanished".to_owned()))?;
    decode_hex(&stored).ok_or_else(|| CoordError::BadMap("token key is not hex".to_owned()))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn decode_hex(hex: &str) -> Option<Vec<u8>> {
    if !hex.len().is_multiple_of(2) {
        return None;
    }
    (0..hex.len())
        .step_by(2)
        .map(|i| {
            hex.get(i..i + 2)
                .and_then(|b| u8::from_str_radix(b, 16).ok())
        })
        .collect()
}

/// What a node starts from.
pub struct Bootstrap {
    pub view: View,
    /// The cluster token key (None: Redis was unreachable; use the data dir's copy).
    pub token_key: Option<Vec<u8>>,
}

/// What a node starts from: the map (Redis, or the cache if Redis cannot be reached within
/// [`REDIS_STARTUP_WAIT`]) and the members Redis knows now.
pub fn bootstrap(
    url: &str,
    keys: &Keys,
    data_dir: &Path,
    node_id: u16,
    shards: usize,
    candidate_key: &[u8],
) -> Result<Bootstrap, CoordError> {
    let deadline = std::time::Instant::now() + REDIS_STARTUP_WAIT;
    let (map, members, token_key) = loop {
        let attempt = connect(url).and_then(|mut con| {
            let map =
                read_map(&mut con, keys)?.ok_or_else(|| CoordError::NoMap { key: keys.map() })?;
            let members = read_nodes(&mut con, keys, &map.nodes())?;
            let token_key = cluster_token_key(&mut con, keys, candidate_key)?;
            Ok((map, members, Some(token_key)))
        });
        match attempt {
            Ok(found) => break found,
            Err(CoordError::Redis(error)) if std::time::Instant::now() < deadline => {
                tracing::warn!(%error, "redis not reachable yet");
                std::thread::sleep(Duration::from_millis(200));
            }
            Err(CoordError::Redis(error)) => match read_cached_map(data_dir) {
                Some(map) => {
                    tracing::warn!(%error, "redis unreachable; starting from the cached cluster map");
                    break (map, Vec::new(), None);
                }
                None => return Err(CoordError::Redis(error)),
            },
            Err(e) => return Err(e),
        }
    };
    if usize::from(map.shards_per_node) != shards {
        return Err(CoordError::Invalid(format!(
            "the cluster map says every node runs {} shards; this node was started with --shards {shards}",
            map.shards_per_node
        )));
    }
    if (usize::from(node_id) + 1) * shards > router::limits::SNOWFLAKE_WORKERS_MAX as usize {
        return Err(CoordError::Invalid(format!(
            "node id {node_id} with {shards} shards exceeds the {} Snowflake workers",
            router::limits::SNOWFLAKE_WORKERS_MAX
        )));
    }
    if map.partitions_of(node_id) == 0 {
        tracing::warn!(
            node = node_id,
            "this node owns no partitions in the cluster map"
        );
    }
    write_cached_map(data_dir, &map);
    Ok(Bootstrap {
        view: view_of(map, members)?,
        token_key,
    })
}

/// The coordinator thread's settings.
pub struct Coordinator {
    pub url: String,
    pub keys: Keys,
    pub data_dir: PathBuf,
    pub heartbeat: Duration,
    pub node_ttl: Duration,
    pub shared: Arc<ClusterShared>,
    /// This node's record (its `connections` is refreshed each heartbeat).
    pub me: NodeInfo,
    /// The cluster token key, put back if Redis lost it.
    pub token_key: Vec<u8>,
    /// Where the connection count comes from.
    pub metrics: crate::metrics::Metrics,
    pub shards: usize,
}

impl Coordinator {
    /// Heartbeat until `flag` is set, then delete this node's record (a clean leave is
    /// seen at once instead of after the TTL).
    pub fn run(self, flag: ShutdownFlag) {
        let mut con: Option<redis::Connection> = None;
        let mut failing_since: Option<std::time::Instant> = None;
        // Since when this connection has seen Redis with its data. Records written before a
        // Redis restart are gone until their nodes' next heartbeat, so for one TTL after
        // (re)connecting a missing record does not mark a node down.
        let mut settled_from = std::time::Instant::now();
        while !flag.is_set() {
            if con.is_none() {
                match connect(&self.url) {
                    Ok(c) => {
                        con = Some(c);
                        settled_from = std::time::Instant::now();
                    }
                    Err(error) => self.failed(&mut failing_since, &error),
                }
            }
            if let Some(c) = con.as_mut() {
                let settled = settled_from.elapsed() >= self.node_ttl;
                match self.tick(c, settled) {
                    Ok(TickOutcome::Normal) => {}
                    Ok(TickOutcome::RedisWasEmpty) => settled_from = std::time::Instant::now(),
                    Err(error) => {
                        con = None;
                        self.failed(&mut failing_since, &error);
                    }
                }
                if con.is_some() {
                    if failing_since.take().is_some() {
                        tracing::info!("redis reachable again; membership resumed");
                    }
                    self.shared.redis_ok.store(true, Ordering::Relaxed);
                }
            }
            std::thread::sleep(self.heartbeat);
        }
        if let Some(mut c) = con {
            let _: Result<(), _> = c.del(self.keys.node(self.me.node));
        }
    }

    fn failed(&self, failing_since: &mut Option<std::time::Instant>, error: &CoordError) {
        self.shared.redis_ok.store(false, Ordering::Relaxed);
        if failing_since.is_none() {
            *failing_since = Some(std::time::Instant::now());
            tracing::warn!(%error, "redis unreachable; keeping the last cluster view");
        }
    }

    /// One heartbeat. `settled`: Redis has held its data long enough that a missing
    /// membership record means a node stopped heartbeating.
    fn tick(&self, con: &mut redis::Connection, settled: bool) -> Result<TickOutcome, CoordError> {
        let mut outcome = TickOutcome::Normal;
        let mut me = self.me.clone();
        me.connections = (0..self.shards)
            .map(|i| self.metrics.shard(i).connections())
            .sum();
        let record = serde_json::to_string(&me).map_err(|e| CoordError::Invalid(e.to_string()))?;
        let ttl_ms = self.node_ttl.as_millis() as u64;
        let _: () = redis::cmd("SET")
            .arg(self.keys.node(me.node))
            .arg(record)
            .arg("PX")
            .arg(ttl_ms)
            .query(con)?;
        let current = self.shared.view();
        let map = match read_map(con, &self.keys)? {
            Some(map) => map,
            None => {
                // Redis lost its data: put back the token key first (so a map in Redis
                // always comes with its key), then the map every node cached (NX: the
                // first node to get there wins; they all hold the same version).
                let _: Option<String> = redis::cmd("SET")
                    .arg(self.keys.token_key())
                    .arg(hex(&self.token_key))
                    .arg("NX")
                    .query(con)?;
                let json = serde_json::to_string(current.map.as_ref())
                    .map_err(|e| CoordError::Invalid(e.to_string()))?;
                let put: bool = redis::cmd("SET")
                    .arg(self.keys.map())
                    .arg(json)
                    .arg("NX")
                    .query::<Option<String>>(con)?
                    .is_some();
                if put {
                    tracing::warn!(
                        version = current.map.version,
                        "redis had no cluster map; restored it from this node's cache"
                    );
                }
                outcome = TickOutcome::RedisWasEmpty;
                current.map.as_ref().clone()
            }
        };
        if map.version != current.map.version {
            if usize::from(map.shards_per_node) != self.shared.shards_per_node {
                tracing::error!(
                    "the new cluster map changes shards_per_node; ignoring it (restart every node)"
                );
                return Ok(outcome);
            }
            tracing::info!(
                from = current.map.version,
                to = map.version,
                "cluster map changed"
            );
            write_cached_map(&self.data_dir, &map);
        }
        let mut members = read_nodes(con, &self.keys, &map.nodes())?;
        if !settled || outcome == TickOutcome::RedisWasEmpty {
            for (node, info) in &mut members {
                if info.is_none() {
                    *info = current.node(*node).cloned();
                }
            }
        }
        // Load figures change every heartbeat; only membership and addresses matter here.
        let same = |a: Option<&NodeInfo>, b: Option<&NodeInfo>| match (a, b) {
            (Some(a), Some(b)) => {
                NodeInfo {
                    connections: 0,
                    ..a.clone()
                } == NodeInfo {
                    connections: 0,
                    ..b.clone()
                }
            }
            (None, None) => true,
            _ => false,
        };
        let changed = map.version != current.map.version
            || members
                .iter()
                .any(|(node, info)| !same(current.node(*node), info.as_ref()));
        if changed {
            for (node, info) in &members {
                let was = current.node(*node).map(|i| i.started_ms);
                let now = info.as_ref().map(|i| i.started_ms);
                if was.is_some() != now.is_some() || (was.is_some() && was != now) {
                    tracing::info!(node, up = now.is_some(), "cluster member changed");
                }
            }
            self.shared.publish(view_of(map, members)?);
        }
        Ok(outcome)
    }
}

/// What a heartbeat found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum TickOutcome {
    Normal,
    /// Redis had lost its data (restarted empty); the map was put back.
    RedisWasEmpty,
}

/// Run `confab cluster <command>` against the Redis at `url`; returns what to print.
pub fn admin(
    url: &str,
    cluster_name: &str,
    command: &crate::config::ClusterCommand,
) -> Result<String, CoordError> {
    use crate::config::ClusterCommand;
    let keys = Keys::new(cluster_name);
    let mut con = connect(url)?;
    let map = match command {
        ClusterCommand::Init {
            nodes,
            shards_per_node,
            partitions,
            force,
        } => {
            let ids: Vec<u16> = (0..*nodes).collect();
            init_map(&mut con, &keys, &ids, *shards_per_node, *partitions, *force)?
        }
        ClusterCommand::Assign { partition, node } => {
            assign_partition(&mut con, &keys, *partition, *node)?
        }
        ClusterCommand::Show => {
            read_map(&mut con, &keys)?.ok_or_else(|| CoordError::NoMap { key: keys.map() })?
        }
    };
    let members = read_nodes(&mut con, &keys, &map.nodes())?;
    let mut out = format!(
        "cluster {cluster_name}: map version {}, {} partitions, {} shards per node\n",
        map.version,
        map.partitions.len(),
        map.shards_per_node
    );
    for (node, info) in members {
        let state = match info {
            Some(info) => format!(
                "up   http={} tcp={} link={} connections={}",
                info.http, info.tcp, info.link, info.connections
            ),
            None => "down".to_owned(),
        };
        out.push_str(&format!(
            "node {node}: {} partitions, {state}\n",
            map.partitions_of(node)
        ));
    }
    Ok(out)
}
