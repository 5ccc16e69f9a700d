//! Server configuration: flags, then environment (`CONFAB_*`), then an optional TOML file,
//! then the embedded defaults, so `cargo run --release` serves with no setup at all.
//!
//! Every field is optional at each layer; the first layer that sets it wins. Limits may be
//! lowered from the wire crate's maxima, never raised (a larger value is a startup error).

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::Parser;
use serde::Deserialize;
use wire::limits::FRAME_BYTES_MAX;

use crate::auth::password::{self, PasswordParams};

/// The most shards one process runs (one per core; this bounds per-shard metric slots).
pub const SHARDS_MAX: usize = 256;

pub const DEFAULT_HTTP_PORT: u16 = 8080;
pub const DEFAULT_TCP_PORT: u16 = 7070;
pub const DEFAULT_DATA_DIR: &str = "./confab-data";
pub const DEFAULT_HANDSHAKE_TIMEOUT_MS: u64 = 10_000;
pub const DEFAULT_IDLE_TIMEOUT_MS: u64 = 90_000;
/// Clients are told to Ping this often (a third of the idle timeout).
pub const DEFAULT_HEARTBEAT_INTERVAL_MS: u64 = 30_000;
/// Log segment size: large enough that rolls are rare, small enough that retention
/// deletes in useful steps.
pub const DEFAULT_LOG_SEGMENT_BYTES: u64 = 256 * 1024 * 1024;
pub const DEFAULT_ACCESS_TOKEN_TTL_MS: u64 = 15 * 60 * 1000;
pub const DEFAULT_REFRESH_TOKEN_TTL_MS: u64 = 30 * 24 * 3600 * 1000;
/// Inbound frames per second per connection, sustained.
pub const DEFAULT_RATE_LIMIT_PER_SEC: u32 = 200;
/// Inbound frames a connection may send at once after being quiet.
pub const DEFAULT_RATE_LIMIT_BURST: u32 = 400;
/// Frames waiting to be written to one connection before it is closed as a slow
/// consumer (4008).
pub const DEFAULT_OUTBOUND_QUEUE_FRAMES: usize = 1024;

/// Members a group may hold (the wire protocol's maximum is the ceiling).
pub const DEFAULT_GROUP_MEMBERS_MAX: usize = 1024;
/// Groups up to this size fan out on write (a push per member's home shard, offline
/// members noted); larger ones on read (online devices only; offline members read the
/// group log on reconnect).
pub const DEFAULT_GROUP_FANOUT_WRITE_MAX: usize = 256;

/// Presence updates to subscribers: at most one per user per this window, in ms [default: 1000].
pub const DEFAULT_PRESENCE_COALESCE_MS: u64 = 1_000;
/// Last-seen times are written at most once per user per this interval, in ms [default: 60000].
pub const DEFAULT_PRESENCE_PERSIST_INTERVAL_MS: u64 = 60_000;
/// A typing indicator stops after this long without a refresh, in ms [default: 5000].
pub const DEFAULT_TYPING_TTL_MS: u64 = 5_000;
/// A push job waits this long for the recipient to come online before firing, in ms [default: 3000].
pub const DEFAULT_PUSH_DELAY_MS: u64 = 3_000;
/// First push retry backoff (doubles per attempt, full jitter), in ms [default: 1000].
pub const DEFAULT_PUSH_RETRY_BASE_MS: u64 = 1_000;
/// Longest push retry backoff, in ms [default: 300000].
pub const DEFAULT_PUSH_RETRY_MAX_MS: u64 = 300_000;
/// Push attempts before a job is dead-lettered [default: 8].
pub const DEFAULT_PUSH_ATTEMPTS_MAX: u32 = 8;
/// Timeout of one push provider request, in ms [default: 5000].
pub const DEFAULT_PUSH_TIMEOUT_MS: u64 = 5_000;
/// Largest media object, in bytes [default: 16 MiB]. An upload is held in memory while
/// it is verified, so this times `media_uploads_per_shard` bounds upload memory per shard.
pub const DEFAULT_MEDIA_BYTES_MAX: u64 = 16 * 1024 * 1024;
/// The largest `media_bytes_max` a configuration may set: an upload is held in memory
/// while it is hashed.
pub const MEDIA_BYTES_MAX_CEILING: u64 = 256 * 1024 * 1024;
/// Media content types accepted (`type/*` allows a whole type).
pub const DEFAULT_MEDIA_ALLOWED_TYPES: &[&str] = &[
    "image/*",
    "video/*",
    "audio/*",
    "application/pdf",
    "application/octet-stream",
];
/// Signed media URLs (upload and download) expire after this long, in ms [default: 300000].
pub const DEFAULT_MEDIA_URL_TTL_MS: u64 = 300_000;
/// An upload's body must arrive within this long, in ms [default: 120000].
pub const DEFAULT_MEDIA_TRANSFER_TIMEOUT_MS: u64 = 120_000;
/// Media uploads one shard receives at once; more get 503 [default: 4].
pub const DEFAULT_MEDIA_UPLOADS_PER_SHARD: usize = 4;

/// Node-link port (cluster mode: other nodes connect here); 0 picks a free one [default: 9090].
pub const DEFAULT_LINK_PORT: u16 = 9090;
/// Cluster name: the prefix of every Redis key this cluster uses [default: confab].
pub const DEFAULT_CLUSTER_NAME: &str = "confab";
/// A node refreshes its membership record in Redis this often, in ms [default: 500].
pub const DEFAULT_CLUSTER_HEARTBEAT_MS: u64 = 500;
/// A node whose membership record is this old is down, in ms [default: 3000].
pub const DEFAULT_CLUSTER_NODE_TTL_MS: u64 = 3_000;
/// A request forwarded to another node fails as unavailable after this long, in ms
/// [default: 10000].
pub const DEFAULT_LINK_CALL_TIMEOUT_MS: u64 = 10_000;

/// Command-line flags; each also reads its `CONFAB_*` environment variable.
#[derive(Debug, Default, Parser)]
#[command(
    name = "confab",
    version,
    about = "Confab chat server (thread-per-core gateway)"
)]
pub struct Cli {
    /// Administration instead of serving (see `confab cluster --help`).
    #[command(subcommand)]
    pub command: Option<Command>,
    /// TOML config file; flags and environment variables override it.
    #[arg(long, env = "CONFAB_CONFIG")]
    pub config: Option<PathBuf>,
    /// Address to listen on [default: 127.0.0.1, loopback only; use 0.0.0.0 to serve others].
    #[arg(long, env = "CONFAB_BIND")]
    pub bind: Option<IpAddr>,
    /// HTTP + WebSocket (`/ws`) port; 0 picks a free one [default: 8080].
    #[arg(long, env = "CONFAB_HTTP_PORT")]
    pub http_port: Option<u16>,
    /// Raw-TCP port (u32 length-prefixed frames); 0 picks a free one [default: 7070].
    #[arg(long, env = "CONFAB_TCP_PORT")]
    pub tcp_port: Option<u16>,
    /// Number of shards (pinned executors) [default: available cores].
    #[arg(long, env = "CONFAB_SHARDS")]
    pub shards: Option<usize>,
    /// Index (in the online CPU list) of the CPU shard 0 is pinned to; shard i gets the
    /// one (first_cpu + i) places on, wrapping. Several nodes on one host set different
    /// values to spread over the cores [default: 0].
    #[arg(long, env = "CONFAB_FIRST_CPU")]
    pub first_cpu: Option<usize>,
    /// Data directory, created if missing [default: ./confab-data].
    #[arg(long, env = "CONFAB_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    /// Time for the HTTP upgrade and the Hello frame, in ms [default: 10000].
    #[arg(long, env = "CONFAB_HANDSHAKE_TIMEOUT_MS")]
    pub handshake_timeout_ms: Option<u64>,
    /// Close a connection that sends nothing for this long, in ms [default: 90000].
    #[arg(long, env = "CONFAB_IDLE_TIMEOUT_MS")]
    pub idle_timeout_ms: Option<u64>,
    /// Largest accepted protocol frame in bytes; at most 4194304 [default: 4194304].
    #[arg(long, env = "CONFAB_MAX_FRAME_BYTES")]
    pub max_frame_bytes: Option<usize>,
    /// This node's id (Snowflake node bits; 0 on a single node) [default: 0].
    #[arg(long, env = "CONFAB_NODE_ID")]
    pub node_id: Option<u16>,
    /// Log segment size in bytes [default: 268435456].
    #[arg(long, env = "CONFAB_LOG_SEGMENT_BYTES")]
    pub log_segment_bytes: Option<u64>,
    /// Heartbeat interval announced in Welcome, in ms [default: 30000].
    #[arg(long, env = "CONFAB_HEARTBEAT_INTERVAL_MS")]
    pub heartbeat_interval_ms: Option<u64>,
    /// Access token lifetime in ms [default: 900000].
    #[arg(long, env = "CONFAB_ACCESS_TOKEN_TTL_MS")]
    pub access_token_ttl_ms: Option<u64>,
    /// Refresh token lifetime in ms [default: 2592000000].
    #[arg(long, env = "CONFAB_REFRESH_TOKEN_TTL_MS")]
    pub refresh_token_ttl_ms: Option<u64>,
    /// argon2id memory cost in KiB for new password hashes [default: 19456].
    #[arg(long, env = "CONFAB_ARGON2_MEMORY_KIB")]
    pub argon2_memory_kib: Option<u32>,
    /// argon2id iterations for new password hashes [default: 2].
    #[arg(long, env = "CONFAB_ARGON2_ITERATIONS")]
    pub argon2_iterations: Option<u32>,
    /// Inbound frames per second per connection [default: 200].
    #[arg(long, env = "CONFAB_RATE_LIMIT_PER_SEC")]
    pub rate_limit_per_sec: Option<u32>,
    /// Inbound frame burst per connection [default: 400].
    #[arg(long, env = "CONFAB_RATE_LIMIT_BURST")]
    pub rate_limit_burst: Option<u32>,
    /// Idempotency keys each shard's log remembers (the newest; a retry older than the
    /// newest this-many keys of its shard is stored again) [default: 1048576].
    #[arg(long, env = "CONFAB_DEDUPE_ENTRIES")]
    pub dedupe_entries: Option<usize>,
    /// Outbound frames queued per connection before 4008 [default: 1024].
    #[arg(long, env = "CONFAB_OUTBOUND_QUEUE_FRAMES")]
    pub outbound_queue_frames: Option<usize>,
    /// Members a group may hold [default: 1024, at most 1024].
    #[arg(long, env = "CONFAB_GROUP_MEMBERS_MAX")]
    pub group_members_max: Option<usize>,
    /// Groups up to this many members fan out on write, larger ones on read [default: 256].
    #[arg(long, env = "CONFAB_GROUP_FANOUT_WRITE_MAX")]
    pub group_fanout_write_max: Option<usize>,
    /// Presence updates to subscribers: at most one per user per this window, in ms [default: 1000].
    #[arg(long, env = "CONFAB_PRESENCE_COALESCE_MS")]
    pub presence_coalesce_ms: Option<u64>,
    /// Last-seen times are written at most once per user per this interval, in ms [default: 60000].
    #[arg(long, env = "CONFAB_PRESENCE_PERSIST_INTERVAL_MS")]
    pub presence_persist_interval_ms: Option<u64>,
    /// A typing indicator stops after this long without a refresh, in ms [default: 5000].
    #[arg(long, env = "CONFAB_TYPING_TTL_MS")]
    pub typing_ttl_ms: Option<u64>,
    /// A push job waits this long for the recipient to come online before firing, in ms [default: 3000].
    #[arg(long, env = "CONFAB_PUSH_DELAY_MS")]
    pub push_delay_ms: Option<u64>,
    /// First push retry backoff (doubles per attempt, full jitter), in ms [default: 1000].
    #[arg(long, env = "CONFAB_PUSH_RETRY_BASE_MS")]
    pub push_retry_base_ms: Option<u64>,
    /// Longest push retry backoff, in ms [default: 300000].
    #[arg(long, env = "CONFAB_PUSH_RETRY_MAX_MS")]
    pub push_retry_max_ms: Option<u64>,
    /// Push attempts before a job is dead-lettered [default: 8].
    #[arg(long, env = "CONFAB_PUSH_ATTEMPTS_MAX")]
    pub push_attempts_max: Option<u32>,
    /// Timeout of one push provider request, in ms [default: 5000].
    #[arg(long, env = "CONFAB_PUSH_TIMEOUT_MS")]
    pub push_timeout_ms: Option<u64>,
    /// Webhook push provider: POST notifications here (http:// or https://); no URL, no
    /// push provider (jobs are still recorded and cancelled or dead-lettered).
    #[arg(long, env = "CONFAB_PUSH_WEBHOOK_URL")]
    pub push_webhook_url: Option<String>,
    /// HMAC-SHA256 key signing webhook bodies (required with a webhook URL).
    #[arg(long, env = "CONFAB_PUSH_WEBHOOK_SECRET", hide_env_values = true)]
    pub push_webhook_secret: Option<String>,
    /// Media object store: empty for <data_dir>/media, file:///path, or s3://bucket[/prefix]
    /// (credentials, region and endpoint from the AWS_* environment) [default: empty].
    #[arg(long, env = "CONFAB_MEDIA_STORE")]
    pub media_store: Option<String>,
    /// Base of signed media URLs, e.g. a CDN in front of this server; empty gives
    /// relative URLs (/v1/media/...) [default: empty].
    #[arg(long, env = "CONFAB_MEDIA_PUBLIC_URL")]
    pub media_public_url: Option<String>,
    /// Largest media object in bytes [default: 16777216].
    #[arg(long, env = "CONFAB_MEDIA_BYTES_MAX")]
    pub media_bytes_max: Option<u64>,
    /// Accepted media content types, comma-separated; type/* allows a whole type
    /// [default: image/*,video/*,audio/*,application/pdf,application/octet-stream].
    #[arg(long, env = "CONFAB_MEDIA_ALLOWED_TYPES", value_delimiter = ',')]
    pub media_allowed_types: Option<Vec<String>>,
    /// Signed media URLs expire after this long, in ms [default: 300000].
    #[arg(long, env = "CONFAB_MEDIA_URL_TTL_MS")]
    pub media_url_ttl_ms: Option<u64>,
    /// An upload's body must arrive within this long, in ms [default: 120000].
    #[arg(long, env = "CONFAB_MEDIA_TRANSFER_TIMEOUT_MS")]
    pub media_transfer_timeout_ms: Option<u64>,
    /// Media uploads one shard receives at once [default: 4].
    #[arg(long, env = "CONFAB_MEDIA_UPLOADS_PER_SHARD")]
    pub media_uploads_per_shard: Option<usize>,
    /// Cluster mode: the Redis holding the partition map and membership
    /// (redis://host:port[/db]); none runs a single node that needs nothing else.
    #[arg(long, env = "CONFAB_REDIS_URL")]
    pub redis_url: Option<String>,
    /// Cluster name, the prefix of this cluster's Redis keys [default: confab].
    #[arg(long, env = "CONFAB_CLUSTER_NAME")]
    pub cluster_name: Option<String>,
    /// Node-link port (cluster mode); 0 picks a free one [default: 9090].
    #[arg(long, env = "CONFAB_LINK_PORT")]
    pub link_port: Option<u16>,
    /// Address other nodes and redirected clients use to reach this node [default: bind].
    #[arg(long, env = "CONFAB_ADVERTISE")]
    pub advertise: Option<IpAddr>,
    /// Membership heartbeat interval in ms [default: 500].
    #[arg(long, env = "CONFAB_CLUSTER_HEARTBEAT_MS")]
    pub cluster_heartbeat_ms: Option<u64>,
    /// A node silent this long is down, in ms [default: 3000].
    #[arg(long, env = "CONFAB_CLUSTER_NODE_TTL_MS")]
    pub cluster_node_ttl_ms: Option<u64>,
    /// A forwarded request fails as unavailable after this long, in ms [default: 10000].
    #[arg(long, env = "CONFAB_LINK_CALL_TIMEOUT_MS")]
    pub link_call_timeout_ms: Option<u64>,
}

/// Administrative commands.
#[derive(Debug, clap::Subcommand)]
pub enum Command {
    /// Cluster administration: the partition map in Redis (needs --redis-url).
    #[command(subcommand)]
    Cluster(ClusterCommand),
}

/// `confab cluster ...`
#[derive(Debug, clap::Subcommand)]
pub enum ClusterCommand {
    /// Create the partition map, spreading partitions round-robin over nodes 0..nodes.
    Init {
        /// Number of nodes (ids 0..nodes).
        #[arg(long)]
        nodes: u16,
        /// Shards every node runs (each node's --shards must equal it).
        #[arg(long)]
        shards_per_node: u16,
        /// Partitions (a power of two; fixed for the cluster's life).
        #[arg(long, default_value_t = router::limits::PARTITIONS_DEFAULT)]
        partitions: u32,
        /// Replace an existing map (partitions that move strand their data).
        #[arg(long)]
        force: bool,
    },
    /// Print the map version, partitions per node and which nodes are up.
    Show,
    /// Move one partition to another node (its stored data does not move).
    Assign {
        #[arg(long)]
        partition: u32,
        #[arg(long)]
        node: u16,
    },
}

/// The TOML file: the same keys as the flags, in snake_case.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    pub bind: Option<IpAddr>,
    pub http_port: Option<u16>,
    pub tcp_port: Option<u16>,
    pub shards: Option<usize>,
    pub first_cpu: Option<usize>,
    pub data_dir: Option<PathBuf>,
    pub handshake_timeout_ms: Option<u64>,
    pub idle_timeout_ms: Option<u64>,
    pub max_frame_bytes: Option<usize>,
    pub node_id: Option<u16>,
    pub log_segment_bytes: Option<u64>,
    pub heartbeat_interval_ms: Option<u64>,
    pub access_token_ttl_ms: Option<u64>,
    pub refresh_token_ttl_ms: Option<u64>,
    pub argon2_memory_kib: Option<u32>,
    pub argon2_iterations: Option<u32>,
    pub rate_limit_per_sec: Option<u32>,
    pub rate_limit_burst: Option<u32>,
    pub outbound_queue_frames: Option<usize>,
    pub dedupe_entries: Option<usize>,
    pub group_members_max: Option<usize>,
    pub group_fanout_write_max: Option<usize>,
    pub presence_coalesce_ms: Option<u64>,
    pub presence_persist_interval_ms: Option<u64>,
    pub typing_ttl_ms: Option<u64>,
    pub push_delay_ms: Option<u64>,
    pub push_retry_base_ms: Option<u64>,
    pub push_retry_max_ms: Option<u64>,
    pub push_attempts_max: Option<u32>,
    pub push_timeout_ms: Option<u64>,
    pub push_webhook_url: Option<String>,
    pub push_webhook_secret: Option<String>,
    pub media_store: Option<String>,
    pub media_public_url: Option<String>,
    pub media_bytes_max: Option<u64>,
    pub media_allowed_types: Option<Vec<String>>,
    pub media_url_ttl_ms: Option<u64>,
    pub media_transfer_timeout_ms: Option<u64>,
    pub media_uploads_per_shard: Option<usize>,
    pub redis_url: Option<String>,
    pub cluster_name: Option<String>,
    pub link_port: Option<u16>,
    pub advertise: Option<IpAddr>,
    pub cluster_heartbeat_ms: Option<u64>,
    pub cluster_node_ttl_ms: Option<u64>,
    pub link_call_timeout_ms: Option<u64>,
}

/// The resolved configuration every shard gets a copy of.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    pub bind: IpAddr,
    pub http_port: u16,
    pub tcp_port: u16,
    pub shards: usize,
    pub first_cpu: usize,
    pub data_dir: PathBuf,
    pub handshake_timeout: Duration,
    pub idle_timeout: Duration,
    pub max_frame_bytes: usize,
    pub node_id: u16,
    pub log_segment_bytes: u64,
    pub heartbeat_interval: Duration,
    pub access_token_ttl_ms: u64,
    pub refresh_token_ttl_ms: u64,
    pub password: PasswordParams,
    pub rate_limit_per_sec: u32,
    pub rate_limit_burst: u32,
    pub outbound_queue_frames: usize,
    pub dedupe_entries: usize,
    pub group_members_max: usize,
    pub group_fanout_write_max: usize,
    pub presence_coalesce: Duration,
    pub presence_persist_interval: Duration,
    pub typing_ttl: Duration,
    pub push_delay: Duration,
    pub push_retry_base: Duration,
    pub push_retry_max: Duration,
    pub push_attempts_max: u32,
    pub push_timeout: Duration,
    /// Webhook provider URL and signing secret, if push is configured.
    pub push_webhook: Option<(String, String)>,
    /// Media object store URL (empty: `<data_dir>/media`).
    pub media_store: String,
    /// Base of signed media URLs (empty: relative).
    pub media_public_url: String,
    pub media_bytes_max: u64,
    pub media_allowed_types: Vec<String>,
    pub media_url_ttl: Duration,
    pub media_transfer_timeout: Duration,
    pub media_uploads_per_shard: usize,
    /// Cluster mode's Redis (None: a single node).
    pub redis_url: Option<String>,
    pub cluster_name: String,
    pub link_port: u16,
    /// The address others reach this node at.
    pub advertise: IpAddr,
    pub cluster_heartbeat: Duration,
    pub cluster_node_ttl: Duration,
    pub link_call_timeout: Duration,
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("reading config file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("parsing config file {path}: {source}")]
    Parse {
        path: PathBuf,
        source: toml::de::Error,
    },
    #[error("{0}")]
    Invalid(String),
}

impl Config {
    /// Resolve flags (already parsed, environment included) over an optional file.
    pub fn resolve(cli: Cli) -> Result<Config, ConfigError> {
        let file = match &cli.config {
            Some(path) => read_file(path)?,
            None => FileConfig::default(),
        };
        Config::merge(cli, file, available_cores())
    }

    /// Flags over file over defaults; `cores` is the default shard count.
    pub fn merge(cli: Cli, file: FileConfig, cores: usize) -> Result<Config, ConfigError> {
        let bind = cli
            .bind
            .or(file.bind)
            .unwrap_or(IpAddr::from([127, 0, 0, 1]));
        let config = Config {
            bind,
            http_port: cli
                .http_port
                .or(file.http_port)
                .unwrap_or(DEFAULT_HTTP_PORT),
            tcp_port: cli.tcp_port.or(file.tcp_port).unwrap_or(DEFAULT_TCP_PORT),
            shards: cli.shards.or(file.shards).unwrap_or(cores),
            first_cpu: cli.first_cpu.or(file.first_cpu).unwrap_or(0),
            data_dir: cli
                .data_dir
                .or(file.data_dir)
                .unwrap_or_else(|| PathBuf::from(DEFAULT_DATA_DIR)),
            handshake_timeout: Duration::from_millis(
                cli.handshake_timeout_ms
                    .or(file.handshake_timeout_ms)
                    .unwrap_or(DEFAULT_HANDSHAKE_TIMEOUT_MS),
            ),
            idle_timeout: Duration::from_millis(
                cli.idle_timeout_ms
                    .or(file.idle_timeout_ms)
                    .unwrap_or(DEFAULT_IDLE_TIMEOUT_MS),
            ),
            max_frame_bytes: cli
                .max_frame_bytes
                .or(file.max_frame_bytes)
                .unwrap_or(FRAME_BYTES_MAX),
            node_id: cli.node_id.or(file.node_id).unwrap_or(0),
            log_segment_bytes: cli
                .log_segment_bytes
                .or(file.log_segment_bytes)
                .unwrap_or(DEFAULT_LOG_SEGMENT_BYTES),
            heartbeat_interval: Duration::from_millis(
                cli.heartbeat_interval_ms
                    .or(file.heartbeat_interval_ms)
                    .unwrap_or(DEFAULT_HEARTBEAT_INTERVAL_MS),
            ),
            access_token_ttl_ms: cli
                .access_token_ttl_ms
                .or(file.access_token_ttl_ms)
                .unwrap_or(DEFAULT_ACCESS_TOKEN_TTL_MS),
            refresh_token_ttl_ms: cli
                .refresh_token_ttl_ms
                .or(file.refresh_token_ttl_ms)
                .unwrap_or(DEFAULT_REFRESH_TOKEN_TTL_MS),
            password: PasswordParams {
                memory_kib: cli
                    .argon2_memory_kib
                    .or(file.argon2_memory_kib)
                    .unwrap_or(password::DEFAULT_MEMORY_KIB),
                iterations: cli
                    .argon2_iterations
                    .or(file.argon2_iterations)
                    .unwrap_or(password::DEFAULT_ITERATIONS),
                parallelism: password::DEFAULT_PARALLELISM,
            },
            rate_limit_per_sec: cli
                .rate_limit_per_sec
                .or(file.rate_limit_per_sec)
                .unwrap_or(DEFAULT_RATE_LIMIT_PER_SEC),
            rate_limit_burst: cli
                .rate_limit_burst
                .or(file.rate_limit_burst)
                .unwrap_or(DEFAULT_RATE_LIMIT_BURST),
            outbound_queue_frames: cli
                .outbound_queue_frames
                .or(file.outbound_queue_frames)
                .unwrap_or(DEFAULT_OUTBOUND_QUEUE_FRAMES),
            dedupe_entries: cli
                .dedupe_entries
                .or(file.dedupe_entries)
                .unwrap_or(log_engine::limits::DEDUPE_ENTRIES_DEFAULT),
            group_members_max: cli
                .group_members_max
                .or(file.group_members_max)
                .unwrap_or(DEFAULT_GROUP_MEMBERS_MAX),
            group_fanout_write_max: cli
                .group_fanout_write_max
                .or(file.group_fanout_write_max)
                .unwrap_or(DEFAULT_GROUP_FANOUT_WRITE_MAX),
            presence_coalesce: Duration::from_millis(
                cli.presence_coalesce_ms
                    .or(file.presence_coalesce_ms)
                    .unwrap_or(DEFAULT_PRESENCE_COALESCE_MS),
            ),
            presence_persist_interval: Duration::from_millis(
                cli.presence_persist_interval_ms
                    .or(file.presence_persist_interval_ms)
                    .unwrap_or(DEFAULT_PRESENCE_PERSIST_INTERVAL_MS),
            ),
            typing_ttl: Duration::from_millis(
                cli.typing_ttl_ms
                    .or(file.typing_ttl_ms)
                    .unwrap_or(DEFAULT_TYPING_TTL_MS),
            ),
            push_delay: Duration::from_millis(
                cli.push_delay_ms
                    .or(file.push_delay_ms)
                    .unwrap_or(DEFAULT_PUSH_DELAY_MS),
            ),
            push_retry_base: Duration::from_millis(
                cli.push_retry_base_ms
                    .or(file.push_retry_base_ms)
                    .unwrap_or(DEFAULT_PUSH_RETRY_BASE_MS),
            ),
            push_retry_max: Duration::from_millis(
                cli.push_retry_max_ms
                    .or(file.push_retry_max_ms)
                    .unwrap_or(DEFAULT_PUSH_RETRY_MAX_MS),
            ),
            push_attempts_max: cli
                .push_attempts_max
                .or(file.push_attempts_max)
                .unwrap_or(DEFAULT_PUSH_ATTEMPTS_MAX),
            push_timeout: Duration::from_millis(
                cli.push_timeout_ms
                    .or(file.push_timeout_ms)
                    .unwrap_or(DEFAULT_PUSH_TIMEOUT_MS),
            ),
            push_webhook: match (
                cli.push_webhook_url.or(file.push_webhook_url),
                cli.push_webhook_secret.or(file.push_webhook_secret),
            ) {
                (Some(url), Some(secret)) => Some((url, secret)),
                (None, None) => None,
                _ => {
                    return Err(ConfigError::Invalid(
                        "push_webhook_url and push_webhook_secret go together".to_string(),
                    ))
                }
            },
            media_store: cli.media_store.or(file.media_store).unwrap_or_default(),
            media_public_url: cli
                .media_public_url
                .or(file.media_public_url)
                .unwrap_or_default(),
            media_bytes_max: cli
                .media_bytes_max
                .or(file.media_bytes_max)
                .unwrap_or(DEFAULT_MEDIA_BYTES_MAX),
            media_allowed_types: cli
                .media_allowed_types
                .or(file.media_allowed_types)
                .unwrap_or_else(|| {
                    DEFAULT_MEDIA_ALLOWED_TYPES
                        .iter()
                        .map(|t| (*t).to_owned())
                        .collect()
                }),
            media_url_ttl: Duration::from_millis(
                cli.media_url_ttl_ms
                    .or(file.media_url_ttl_ms)
                    .unwrap_or(DEFAULT_MEDIA_URL_TTL_MS),
            ),
            media_transfer_timeout: Duration::from_millis(
                cli.media_transfer_timeout_ms
                    .or(file.media_transfer_timeout_ms)
                    .unwrap_or(DEFAULT_MEDIA_TRANSFER_TIMEOUT_MS),
            ),
            media_uploads_per_shard: cli
                .media_uploads_per_shard
                .or(file.media_uploads_per_shard)
                .unwrap_or(DEFAULT_MEDIA_UPLOADS_PER_SHARD),
            redis_url: cli.redis_url.or(file.redis_url).filter(|u| !u.is_empty()),
            cluster_name: cli
                .cluster_name
                .or(file.cluster_name)
                .unwrap_or_else(|| DEFAULT_CLUSTER_NAME.to_owned()),
            link_port: cli
                .link_port
                .or(file.link_port)
                .unwrap_or(DEFAULT_LINK_PORT),
            advertise: cli.advertise.or(file.advertise).unwrap_or(bind),
            cluster_heartbeat: Duration::from_millis(
                cli.cluster_heartbeat_ms
                    .or(file.cluster_heartbeat_ms)
                    .unwrap_or(DEFAULT_CLUSTER_HEARTBEAT_MS),
            ),
            cluster_node_ttl: Duration::from_millis(
                cli.cluster_node_ttl_ms
                    .or(file.cluster_node_ttl_ms)
                    .unwrap_or(DEFAULT_CLUSTER_NODE_TTL_MS),
            ),
            link_call_timeout: Duration::from_millis(
                cli.link_call_timeout_ms
                    .or(file.link_call_timeout_ms)
                    .unwrap_or(DEFAULT_LINK_CALL_TIMEOUT_MS),
            ),
        };
        config.validate()?;
        Ok(config)
    }

    fn validate(&self) -> Result<(), ConfigError> {
        let invalid = |s: String| Err(ConfigError::Invalid(s));
        if self.shards == 0 || self.shards > SHARDS_MAX {
            return invalid(format!(
                "shards must be 1..={SHARDS_MAX}, got {}",
                self.shards
            ));
        }
        if self.max_frame_bytes == 0 || self.max_frame_bytes > FRAME_BYTES_MAX {
            return invalid(format!(
                "max_frame_bytes must be 1..={FRAME_BYTES_MAX} (config may lower the wire \
                 limit, never raise it), got {}",
                self.max_frame_bytes
            ));
        }
        if self.handshake_timeout.is_zero() || self.idle_timeout.is_zero() {
            return invalid("timeouts must be greater than zero".to_string());
        }
        if self.password.validate().is_err() {
            return invalid(format!("argon2 parameters rejected: {:?}", self.password));
        }
        if self.group_members_max < 2 || self.group_members_max > wire::limits::GROUP_MEMBERS_MAX {
            return invalid(format!(
                "group_members_max must be 2..={}, got {}",
                wire::limits::GROUP_MEMBERS_MAX,
                self.group_members_max
            ));
        }
        if self.rate_limit_per_sec == 0
            || self.rate_limit_burst == 0
            || self.outbound_queue_frames == 0
        {
            return invalid(
                "rate limits and the outbound queue must be greater than zero".to_string(),
            );
        }
        if self.access_token_ttl_ms == 0
            || self.refresh_token_ttl_ms == 0
            || self.heartbeat_interval.is_zero()
        {
            return invalid(
                "token lifetimes and the heartbeat must be greater than zero".to_string(),
            );
        }
        let segment = log_engine::limits::SEGMENT_BYTES_MIN..=log_engine::limits::SEGMENT_BYTES_MAX;
        if !segment.contains(&self.log_segment_bytes) {
            return invalid(format!(
                "log_segment_bytes must be in {segment:?}, got {}",
                self.log_segment_bytes
            ));
        }
        if self.media_bytes_max > MEDIA_BYTES_MAX_CEILING {
            return invalid(format!(
                "media_bytes_max is at most {MEDIA_BYTES_MAX_CEILING} (uploads are verified \
                 in memory), got {}",
                self.media_bytes_max
            ));
        }
        if self.media_bytes_max == 0
            || self.media_url_ttl.is_zero()
            || self.media_transfer_timeout.is_zero()
            || self.media_uploads_per_shard == 0
        {
            return invalid(
                "media_bytes_max, media_url_ttl_ms, media_transfer_timeout_ms and \
                 media_uploads_per_shard must be greater than zero"
                    .to_string(),
            );
        }
        if self.http_port != 0 && self.http_port == self.tcp_port {
            return invalid(format!(
                "http_port and tcp_port are both {}",
                self.http_port
            ));
        }
        if self.presence_coalesce.is_zero()
            || self.presence_persist_interval.is_zero()
            || self.typing_ttl.is_zero()
            || self.push_retry_base.is_zero()
            || self.push_retry_max < self.push_retry_base
            || self.push_attempts_max == 0
            || self.push_timeout.is_zero()
        {
            return invalid(
                "presence, typing and push intervals must be greater than zero (and the \
                 retry maximum at least the base)"
                    .to_string(),
            );
        }
        if self.cluster_heartbeat.is_zero()
            || self.cluster_node_ttl <= self.cluster_heartbeat
            || self.link_call_timeout.is_zero()
        {
            return invalid(
                "cluster_heartbeat_ms and link_call_timeout_ms must be greater than zero and \
                 cluster_node_ttl_ms greater than the heartbeat"
                    .to_string(),
            );
        }
        if self.cluster_name.is_empty()
            || !self
                .cluster_name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        {
            return invalid(format!(
                "cluster_name must be non-empty ASCII letters, digits, - or _, got {:?}",
                self.cluster_name
            ));
        }
        if let Some((url, secret)) = &self.push_webhook {
            if !(url.starts_with("http://") || url.starts_with("https://")) || secret.is_empty() {
                return invalid(format!(
                    "push_webhook_url must be an http(s) URL and the secret non-empty, got {url:?}"
                ));
            }
        }
        Ok(())
    }

    /// Create the data directory if it does not exist.
    pub fn create_data_dir(&self) -> std::io::Result<()> {
        std::fs::create_dir_all(&self.data_dir)
    }
}

fn read_file(path: &Path) -> Result<FileConfig, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    toml::from_str(&text).map_err(|source| ConfigError::Parse {
        path: path.to_path_buf(),
        source,
    })
}

fn available_cores() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_need_nothing() {
        let config = Config::merge(Cli::default(), FileConfig::default(), 3).unwrap();
        assert_eq!(config.bind, IpAddr::from([127, 0, 0, 1]));
        assert_eq!((config.http_port, config.tcp_port), (8080, 7070));
        assert_eq!(config.shards, 3);
        assert_eq!(config.data_dir, PathBuf::from("./confab-data"));
        assert_eq!(config.max_frame_bytes, FRAME_BYTES_MAX);
    }

    #[test]
    fn flags_override_file() {
        let file: FileConfig = toml::from_str("http_port = 9000\ntcp_port = 9001\n").unwrap();
        let cli = Cli::try_parse_from(["confab", "--http-port", "0"]).unwrap();
        let config = Config::merge(cli, file, 1).unwrap();
        assert_eq!((config.http_port, config.tcp_port), (0, 9001));
    }

    #[test]
    fn limits_may_be_lowered_never_raised() {
        let lower = FileConfig {
            max_frame_bytes: Some(1024),
            ..FileConfig::default()
        };
        assert_eq!(
            Config::merge(Cli::default(), lower, 1)
                .unwrap()
                .max_frame_bytes,
            1024
        );
        let raise = FileConfig {
            max_frame_bytes: Some(FRAME_BYTES_MAX + 1),
            ..FileConfig::default()
        };
        assert!(Config::merge(Cli::default(), raise, 1).is_err());
    }

    #[test]
    fn unknown_file_keys_are_rejected() {
        assert!(toml::from_str::<FileConfig>("htp_port = 1\n").is_err());
    }
}
