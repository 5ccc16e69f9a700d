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

/// The most shards one process runs (one per core; this bounds per-shard metric slots).
pub const SHARDS_MAX: usize = 256;

pub const DEFAULT_HTTP_PORT: u16 = 8080;
pub const DEFAULT_TCP_PORT: u16 = 7070;
pub const DEFAULT_DATA_DIR: &str = "./confab-data";
pub const DEFAULT_HANDSHAKE_TIMEOUT_MS: u64 = 10_000;
pub const DEFAULT_IDLE_TIMEOUT_MS: u64 = 90_000;

/// Command-line flags; each also reads its `CONFAB_*` environment variable.
#[derive(Debug, Default, Parser)]
#[command(
    name = "confab",
    version,
    about = "Confab chat server (thread-per-core gateway)"
)]
pub struct Cli {
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
}

/// The TOML file: the same keys as the flags, in snake_case.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    pub bind: Option<IpAddr>,
    pub http_port: Option<u16>,
    pub tcp_port: Option<u16>,
    pub shards: Option<usize>,
    pub data_dir: Option<PathBuf>,
    pub handshake_timeout_ms: Option<u64>,
    pub idle_timeout_ms: Option<u64>,
    pub max_frame_bytes: Option<usize>,
}

/// The resolved configuration every shard gets a copy of.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    pub bind: IpAddr,
    pub http_port: u16,
    pub tcp_port: u16,
    pub shards: usize,
    pub data_dir: PathBuf,
    pub handshake_timeout: Duration,
    pub idle_timeout: Duration,
    pub max_frame_bytes: usize,
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
        let config = Config {
            bind: cli
                .bind
                .or(file.bind)
                .unwrap_or(IpAddr::from([127, 0, 0, 1])),
            http_port: cli
                .http_port
                .or(file.http_port)
                .unwrap_or(DEFAULT_HTTP_PORT),
            tcp_port: cli.tcp_port.or(file.tcp_port).unwrap_or(DEFAULT_TCP_PORT),
            shards: cli.shards.or(file.shards).unwrap_or(cores),
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
        if self.http_port != 0 && self.http_port == self.tcp_port {
            return invalid(format!(
                "http_port and tcp_port are both {}",
                self.http_port
            ));
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
