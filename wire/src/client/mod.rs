//! A small blocking Confab client: what integration tests, `loadgen` and bot writers use.
//!
//! Unlike the rest of this crate it does I/O, with `std::net` only (no async runtime): one
//! thread per connection, every read bounded by a timeout. The pieces:
//!
//! - [`http`]: the HTTP API of `gateway/API.md` (register, login, token refresh, history)
//!   over a minimal HTTP/1.1 client, plus a generic [`http::request`].
//! - [`Connection`]: one socket session, WebSocket (`/ws`, `confab.v1` or
//!   `confab.v1.json`) or raw TCP (length-prefixed FlatBuffers). `Hello`/`Welcome`,
//!   request ids, [`Connection::call`] (send a request, wait for its answer, keep pushes
//!   that arrive meanwhile in an inbox), typed helpers for every common request.
//! - [`sync_until_live`] / [`catch_up`]: read the catch-up `SyncBatch` frames that follow
//!   `Welcome` until the device is live.
//! - [`Bot`]: a reconnecting client for long-running users of the protocol: sends with
//!   retry under one idempotency key ([`Bot::send_with_retry`]), dedupes deliveries by
//!   `(conversation, seq)` ([`Seen`]), optionally acknowledges them (auto-ack), and keeps
//!   the connection alive with `Ping`s.
//! - [`e2ee`] (feature `e2ee`): end-to-end encryption with Olm and Megolm (vodozemac):
//!   key uploads, encrypted envelopes for direct and group conversations, pickling.
//!
//! Every failure is a [`ClientError`]; nothing the network controls can panic.
//!
//! # Example
//!
//! ```no_run
//! use std::time::Duration;
//! use wire::client::{self, http, Connection};
//!
//! # fn main() -> Result<(), client::ClientError> {
//! let api = "127.0.0.1:8080";
//! let alice = http::register(api, "alice", "correct horse")?;
//! let bob = http::register(api, "bob", "battery staple")?;
//! let login = http::login(api, "alice", "correct horse", None, Some("laptop"))?;
//!
//! let (mut conn, welcome) = Connection::connect_ws(api, false, &login.access_token)?;
//! assert_eq!(welcome.user_id, alice);
//! let missed = client::sync_until_live(&mut conn, Duration::from_secs(5))?;
//! println!("{} messages while offline", missed.len());
//!
//! let conversation = conn.open_direct(bob)?;
//! let ack = conn.send_message(conversation.conversation_id, b"hi bob", client::new_key())?;
//! println!("stored as seq {}", ack.seq);
//! while let Some(frame) = conn.recv(Duration::from_secs(1))? {
//!     println!("got {}", frame.body.type_name());
//! }
//! conn.close()?;
//! # Ok(())
//! # }
//! ```

use std::net::{IpAddr, SocketAddr, TcpStream, ToSocketAddrs};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::OnceLock;
use std::time::Duration;

use crate::error::{HandshakeError, WireError};
use crate::message::{self, ErrorCode, IdempotencyKey};

mod bot;
mod conn;
#[cfg(feature = "e2ee")]
pub mod e2ee;
pub mod http;
#[cfg(test)]
mod test_peer;

pub use bot::{Bot, Seen};
pub use conn::{catch_up, sync_until_live, Connection, Transport};

/// How long connecting, the WebSocket handshake, `Hello`, HTTP requests, writes and the
/// typed request helpers may take unless told otherwise.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);

/// The `Hello.client` string this library announces.
pub const CLIENT_NAME: &str = concat!("confab-wire-client/", env!("CARGO_PKG_VERSION"));

/// Everything that can go wrong talking to a Confab server.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The socket failed (connect refused, reset, write timeout...).
    #[error("i/o error: {0}")]
    Io(#[from] std::io::Error),
    /// The server sent bytes that are not valid protocol (framing or frame contents).
    #[error(transparent)]
    Wire(#[from] WireError),
    /// The WebSocket upgrade response was unacceptable (bad accept key, wrong
    /// subprotocol...). A refused upgrade (a non-101 status) is [`ClientError::Http`].
    #[error("websocket handshake failed: {0}")]
    Handshake(HandshakeError),
    /// An HTTP error status whose body is not an API error object.
    #[error("HTTP {status}: {body}")]
    Http { status: u16, body: String },
    /// An HTTP API error: `{"error": {"code", "message"}}` with its status.
    #[error("API error {status} {code}: {message}")]
    Api {
        status: u16,
        code: String,
        message: String,
    },
    /// The session ended: the server's WebSocket close code and reason; 1005 for a close
    /// frame without a code, 1006 for a WebSocket that ended without a close frame, 0 for
    /// a raw-TCP connection that ended (EOF or reset).
    #[error("connection closed (code {code}): {reason}")]
    Closed { code: u16, reason: String },
    /// No answer (or no complete HTTP response) in time.
    #[error("timed out")]
    Timeout,
    /// The server answered with something this client did not expect.
    #[error("unexpected answer: {0}")]
    Protocol(String),
    /// The server answered the request with an `Error` frame.
    #[error("server error {}: {}", .0.code.as_str(), .0.message)]
    ServerError(message::Error),
    /// Cluster mode: this node does not serve the user; connect to `address` (`host:port`
    /// for raw TCP, `ws://host:port/ws` for WebSocket) instead. The server closed with 4030.
    #[error("redirected to node {node_id} at {address}")]
    Redirect { address: String, node_id: u16 },
}

impl ClientError {
    /// Whether the connection this error came from is unusable: reconnecting (and, for a
    /// send, retrying with the same idempotency key) is the remedy. A [`Timeout`] counts:
    /// an answer that does not come may be stuck behind a dead connection.
    ///
    /// [`Timeout`]: ClientError::Timeout
    pub fn is_connection_failure(&self) -> bool {
        match self {
            ClientError::Io(_)
            | ClientError::Wire(_)
            | ClientError::Closed { .. }
            | ClientError::Redirect { .. }
            | ClientError::Timeout => true,
            ClientError::ServerError(e) => e.code == ErrorCode::ShuttingDown,
            ClientError::Handshake(_)
            | ClientError::Http { .. }
            | ClientError::Api { .. }
            | ClientError::Protocol(_) => false,
        }
    }

    /// Whether the server refused for now but the same request may succeed later
    /// (`Unavailable`, `RateLimited`, `Internal`, `ShuttingDown`); see
    /// [`ClientError::retry_after`].
    pub fn is_transient_server_error(&self) -> bool {
        matches!(
            self,
            ClientError::ServerError(e) if matches!(
                e.code,
                ErrorCode::Unavailable
                    | ErrorCode::RateLimited
                    | ErrorCode::Internal
                    | ErrorCode::ShuttingDown
            )
        )
    }

    /// The wait the server asked for in `Error.retry_after_ms`, if any.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            ClientError::ServerError(e) if e.retry_after_ms > 0 => {
                Some(Duration::from_millis(u64::from(e.retry_after_ms)))
            }
            _ => None,
        }
    }

    /// The error code of an `Error` frame ([`ClientError::ServerError`]).
    pub fn server_code(&self) -> Option<ErrorCode> {
        match self {
            ClientError::ServerError(e) => Some(e.code),
            _ => None,
        }
    }

    /// The error code of an HTTP API error ([`ClientError::Api`]), e.g. `"conflict"`.
    pub fn api_code(&self) -> Option<&str> {
        match self {
            ClientError::Api { code, .. } => Some(code),
            _ => None,
        }
    }
}

/// A fresh random idempotency key, for one message. Keep it for every retry of that
/// message: the server stores a message once per key (see [`Bot::send_with_retry`]).
pub fn new_key() -> IdempotencyKey {
    let mut raw = [0u8; 16];
    if getrandom::fill(&mut raw).is_err() {
        // No OS entropy (never seen on Linux): the clock, the process id and a counter
        // still make keys that differ within this process and, very likely, across them.
        use std::sync::atomic::{AtomicU64, Ordering};
        static COUNTER: AtomicU64 = AtomicU64::new(0);
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0);
        let count = COUNTER.fetch_add(1, Ordering::Relaxed);
        let low = nanos ^ (u64::from(std::process::id()) << 32);
        raw = ((u128::from(count) << 64) | u128::from(low)).to_le_bytes();
    }
    IdempotencyKey(raw)
}

/// Connect to the first address `addr` resolves to that accepts, within `timeout` each.
/// Local addresses that new connections bind to before connecting, taken round robin
/// (see [`set_source_addresses`]); unset: the kernel chooses.
static SOURCE_ADDRESSES: OnceLock<Vec<IpAddr>> = OnceLock::new();
static NEXT_SOURCE: AtomicUsize = AtomicUsize::new(0);

/// Make every later connection of this process (sessions and HTTP) bind to one of
/// `addrs`, round robin, before it connects — with `IP_BIND_ADDRESS_NO_PORT`, so the
/// source port is chosen at connect time per destination. The kernel allows ~64K
/// connections per (source address, destination) pair; a load generator holding more
/// against one server spreads them over several source addresses (on loopback, any of
/// 127.0.0.0/8). Once per process: a second call returns `false` and changes nothing.
/// A destination whose family no source address has is connected without binding.
pub fn set_source_addresses(addrs: Vec<IpAddr>) -> bool {
    SOURCE_ADDRESSES.set(addrs).is_ok()
}

/// The next source address for a connection to `to`, if any are set for its family.
fn next_source(to: &SocketAddr) -> Option<IpAddr> {
    let all = SOURCE_ADDRESSES.get()?;
    let family: Vec<&IpAddr> = all.iter().filter(|a| a.is_ipv4() == to.is_ipv4()).collect();
    if family.is_empty() {
        return None;
    }
    let i = NEXT_SOURCE.fetch_add(1, Ordering::Relaxed) % family.len();
    family.get(i).map(|a| **a)
}

/// Connect to `to` from `from` (any port).
fn connect_from(from: IpAddr, to: &SocketAddr, timeout: Duration) -> std::io::Result<TcpStream> {
    use socket2::{Domain, Protocol, SockAddr, Socket, Type};
    use std::os::fd::AsRawFd;
    let socket = Socket::new(Domain::for_address(*to), Type::STREAM, Some(Protocol::TCP))?;
    if from.is_ipv4() {
        let enable: libc::c_int = 1;
        // SAFETY: a valid socket descriptor and a pointer to a live c_int of the size given.
        let rc = unsafe {
            libc::setsockopt(
                socket.as_raw_fd(),
                libc::IPPROTO_IP,
                libc::IP_BIND_ADDRESS_NO_PORT,
                (&enable as *const libc::c_int).cast(),
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            )
        };
        if rc != 0 {
            return Err(std::io::Error::last_os_error());
        }
    }
    socket.bind(&SockAddr::from(SocketAddr::new(from, 0)))?;
    socket.connect_timeout(&SockAddr::from(*to), timeout)?;
    Ok(socket.into())
}

fn connect_stream(addr: impl ToSocketAddrs, timeout: Duration) -> Result<TcpStream, ClientError> {
    let mut last = None;
    for candidate in addr.to_socket_addrs()? {
        let connected = match next_source(&candidate) {
            Some(from) => connect_from(from, &candidate, timeout),
            None => TcpStream::connect_timeout(&candidate, timeout),
        };
        match connected {
            Ok(stream) => {
                stream.set_read_timeout(Some(timeout))?;
                stream.set_write_timeout(Some(timeout))?;
                return Ok(stream);
            }
            Err(e) => last = Some(e),
        }
    }
    Err(ClientError::Io(last.unwrap_or_else(|| {
        std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            "address resolved to nothing",
        )
    })))
}

/// The `Host` header for a connection to `peer`.
fn host_header(peer: SocketAddr) -> String {
    peer.to_string()
}
