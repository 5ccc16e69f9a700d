//! Node links: persistent TCP connections carrying forwarded [`ShardMsg`]s between nodes.
//!
//! # Shape
//! Each shard keeps at most one outbound connection per peer node, opened on first use
//! and reopened with exponential backoff ([`LINK_BACKOFF_MIN`] … [`LINK_BACKOFF_MAX`])
//! after it breaks. Every shard also accepts links on the node's link port (SO_REUSEPORT,
//! like the client ports); a frame names its target shard on the receiving node, and the
//! accepting shard hands it on over the local mesh when it is not the target. One
//! connection per (shard, peer node) rather than per shard pair keeps a 30-node host at
//! ~60 link descriptors per process (the 20,000 open-files limit is for clients).
//!
//! # Frames
//! The raw-TCP framing of `wire` (u32 little-endian length + payload, at most
//! [`wire::limits::FRAME_BYTES_MAX`]); the payload is a [`LinkFrame`] in MessagePack
//! ([`super::remote::encode`]). The connecting side speaks first with `Hello` (cluster
//! name, node, protocol version); the acceptor drops a link whose hello does not match.
//! - `Request { id, to, request }` wants an answer: the receiver rebuilds the
//!   [`ShardMsg`] with a fresh reply channel, routes it to shard `to`, and sends
//!   `Reply { id, reply }` back on the same connection once the handler answered (`None`
//!   when the handler dropped its reply: the caller sees `Unavailable`).
//! - `Push { to, request }` is one-way (deliveries, receipts, presence, typing).
//!
//! # Batching and bounds
//! Frames are encoded into the connection's outbox as they are produced; its task writes
//! the whole outbox with one `write` per turn, so under load many frames share a syscall
//! (the mesh's per-turn batching, carried over TCP). An outbox over
//! [`LINK_OUTBOX_BYTES_MAX`] or a connection with [`LINK_PENDING_MAX`] unanswered
//! requests refuses more: the message is dropped, which its caller sees as `Unavailable`.
//!
//! # Failure
//! A request is answered exactly once: by its reply, or — when the connection breaks, the
//! peer is marked down, or the call timeout passes — by dropping its reply channel, which
//! the caller sees as `Unavailable`. A send acknowledged by its owner but whose reply was
//! lost is retried by the client with the same idempotency key and deduplicated by the
//! owner, so "unavailable" never means "stored twice". Nothing is queued for a down node.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::rc::Rc;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use futures_lite::{future, AsyncReadExt, AsyncWriteExt};
use glommio::net::{TcpListener, TcpStream};
use serde::{Deserialize, Serialize};
use wire::tcp_frame::TcpFrameDecoder;

use super::remote::{self, PendingReply, RemoteReply, RemoteRequest};
use super::{ClusterShared, View};
use crate::chat::ShardMsg;
use crate::session::io::{race, Woken};
use crate::shard::Shard;

/// Version of the link protocol; a hello with another version is refused.
pub const LINK_PROTOCOL_VERSION: u32 = 1;
/// Encoded bytes one connection may have waiting to be written.
pub const LINK_OUTBOX_BYTES_MAX: usize = 16 << 20;
/// Requests one connection may have waiting for their replies.
pub const LINK_PENDING_MAX: usize = 64 * 1024;
/// First wait before reconnecting a broken link; doubles per failure.
pub const LINK_BACKOFF_MIN: Duration = Duration::from_millis(50);
/// Longest wait before reconnecting.
pub const LINK_BACKOFF_MAX: Duration = Duration::from_secs(1);
/// Time to open a link's TCP connection.
pub const LINK_CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// Time an accepted link has to send its hello.
pub const LINK_HELLO_TIMEOUT: Duration = Duration::from_secs(5);
/// How often each shard expires timed-out calls and drops links to down nodes.
pub const LINK_SWEEP_INTERVAL: Duration = Duration::from_millis(200);
/// Read buffer offered per read.
const LINK_READ_BYTES: usize = 64 * 1024;

/// What travels on a link.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum LinkFrame {
    Hello {
        cluster: String,
        node: u16,
        shard: u16,
        version: u32,
    },
    Request {
        id: u64,
        to: u16,
        request: RemoteRequest,
    },
    Push {
        to: u16,
        request: RemoteRequest,
    },
    Reply {
        id: u64,
        reply: Option<RemoteReply>,
    },
}

/// One link connection (either direction): its outbox and, outbound, its open calls.
struct Conn {
    peer: u16,
    out: RefCell<Vec<u8>>,
    waker: RefCell<Option<Waker>>,
    closed: Cell<bool>,
    pending: RefCell<HashMap<u64, (PendingReply, Instant)>>,
    next_id: Cell<u64>,
}

impl Conn {
    fn new(peer: u16) -> Rc<Conn> {
        Rc::new(Conn {
            peer,
            out: RefCell::new(Vec::new()),
            waker: RefCell::new(None),
            closed: Cell::new(false),
            pending: RefCell::new(HashMap::new()),
            next_id: Cell::new(1),
        })
    }

    /// Queue one frame; false if the link is closed, full, or the frame cannot be encoded.
    fn push(&self, frame: &LinkFrame) -> bool {
        if self.closed.get() || self.out.borrow().len() > LINK_OUTBOX_BYTES_MAX {
            return false;
        }
        if let Err(error) = remote::encode_framed(frame, &mut self.out.borrow_mut()) {
            tracing::warn!(%error, "link frame not sendable");
            return false;
        }
        if let Some(waker) = self.waker.borrow_mut().take() {
            waker.wake();
        }
        true
    }

    /// Mark closed and fail every open call (dropping a reply is "unavailable").
    fn close(&self) {
        self.closed.set(true);
        self.out.borrow_mut().clear();
        let pending: Vec<_> = self.pending.borrow_mut().drain().collect();
        drop(pending);
        if let Some(waker) = self.waker.borrow_mut().take() {
            waker.wake();
        }
    }
}

/// Resolves when the connection has output queued or was closed.
struct Queued<'a>(&'a Conn);

impl Future for Queued<'_> {
    type Output = ();
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        if self.0.closed.get() || !self.0.out.borrow().is_empty() {
            Poll::Ready(())
        } else {
            *self.0.waker.borrow_mut() = Some(cx.waker().clone());
            Poll::Pending
        }
    }
}

/// A shard's part of the cluster: the shared view, its cached copy, and its links.
pub struct ShardCluster {
    pub shared: Arc<ClusterShared>,
    pub cluster_name: String,
    pub call_timeout: Duration,
    view: RefCell<Arc<View>>,
    version: Cell<u64>,
    peers: RefCell<HashMap<u16, Rc<Conn>>>,
    /// Per peer node: no reconnect before this instant, and the next backoff.
    backoff: RefCell<HashMap<u16, (Instant, Duration)>>,
}

impl ShardCluster {
    pub fn new(shared: Arc<ClusterShared>, cluster_name: String, call_timeout: Duration) -> Self {
        let view = shared.view();
        ShardCluster {
            version: Cell::new(shared.version()),
            view: RefCell::new(view),
            shared,
            cluster_name,
            call_timeout,
            peers: RefCell::new(HashMap::new()),
            backoff: RefCell::new(HashMap::new()),
        }
    }

    /// The current view (refreshed with one atomic load when the coordinator moved it).
    pub fn view(&self) -> Arc<View> {
        self.with_view(|_| ());
        self.view.borrow().clone()
    }

    /// Run `f` on the current view without cloning it.
    pub fn with_view<R>(&self, f: impl FnOnce(&View) -> R) -> R {
        let version = self.shared.version();
        if version != self.version.get() {
            *self.view.borrow_mut() = self.shared.view();
            self.version.set(version);
        }
        f(&self.view.borrow())
    }
}

/// Send `msg` to shard `to` of node `node` over this shard's link to that node. On any
/// failure the message is dropped — its reply channel with it, which the caller sees as
/// `Unavailable` — and counted.
pub fn send(shard: &Rc<Shard>, cluster: &ShardCluster, node: u16, to: u16, msg: ShardMsg) {
    if !cluster.shared.is_up(node) {
        shard.counters().link_dropped();
        return;
    }
    let (request, reply) = match remote::split(msg) {
        Ok(parts) => parts,
        Err(_local_only) => {
            tracing::warn!(node, "a node-local message was routed to another node");
            shard.counters().link_dropped();
            return;
        }
    };
    let Some(conn) = connection(shard, cluster, node) else {
        shard.counters().link_dropped();
        return;
    };
    let frame = match reply {
        Some(reply) => {
            if conn.pending.borrow().len() >= LINK_PENDING_MAX {
                shard.counters().link_dropped();
                return;
            }
            let id = conn.next_id.get();
            conn.next_id.set(id + 1);
            let deadline = Instant::now() + cluster.call_timeout + request_wait(&request);
            conn.pending.borrow_mut().insert(id, (reply, deadline));
            LinkFrame::Request { id, to, request }
        }
        None => LinkFrame::Push { to, request },
    };
    if !conn.push(&frame) {
        if let LinkFrame::Request { id, .. } = frame {
            conn.pending.borrow_mut().remove(&id);
        }
        shard.counters().link_dropped();
        return;
    }
    shard.counters().link_sent();
}

/// Extra time a request may legitimately take (a long poll waits on purpose).
fn request_wait(request: &RemoteRequest) -> Duration {
    match request {
        RemoteRequest::Poll { wait_ms, .. } => Duration::from_millis(*wait_ms),
        _ => Duration::ZERO,
    }
}

/// The open (or opening) link to `node`, starting one unless a backoff is running.
fn connection(shard: &Rc<Shard>, cluster: &ShardCluster, node: u16) -> Option<Rc<Conn>> {
    if let Some(conn) = cluster.peers.borrow().get(&node) {
        if !conn.closed.get() {
            return Some(conn.clone());
        }
    }
    let now = Instant::now();
    if let Some((not_before, _)) = cluster.backoff.borrow().get(&node) {
        if now < *not_before {
            return None;
        }
    }
    let address = cluster.view().node(node)?.link;
    let conn = Conn::new(node);
    cluster.peers.borrow_mut().insert(node, conn.clone());
    let hello = LinkFrame::Hello {
        cluster: cluster.cluster_name.clone(),
        node: cluster.shared.node_id,
        shard: shard.id as u16,
        version: LINK_PROTOCOL_VERSION,
    };
    conn.push(&hello);
    glommio::spawn_local(outbound(shard.clone(), conn.clone(), address)).detach();
    Some(conn)
}

/// Connect, then serve the link until it breaks; on failure start the backoff.
async fn outbound(shard: Rc<Shard>, conn: Rc<Conn>, address: SocketAddr) {
    let node = conn.peer;
    let deadline = Instant::now() + LINK_CONNECT_TIMEOUT;
    let connected = match race(TcpStream::connect(address), deadline, None).await {
        Woken::Io(Ok(stream)) => Some(stream),
        Woken::Io(Err(error)) => {
            tracing::debug!(node, %address, %error, "link connect failed");
            None
        }
        Woken::Deadline | Woken::Shutdown => None,
    };
    let healthy = match connected {
        Some(mut stream) => {
            let _ = stream.set_nodelay(true);
            tracing::info!(shard = shard.id, node, %address, "link up");
            shard.counters().link_opened();
            serve(&shard, &conn, &mut stream).await
        }
        None => false,
    };
    conn.close();
    if let Some(cluster) = shard.cluster.as_ref() {
        let mut peers = cluster.peers.borrow_mut();
        if peers.get(&node).is_some_and(|c| Rc::ptr_eq(c, &conn)) {
            peers.remove(&node);
        }
        let mut backoff = cluster.backoff.borrow_mut();
        if healthy {
            backoff.remove(&node);
        } else {
            let next = backoff
                .get(&node)
                .map_or(LINK_BACKOFF_MIN, |(_, b)| (*b * 2).min(LINK_BACKOFF_MAX));
            backoff.insert(node, (Instant::now() + next, next));
        }
    }
    tracing::info!(shard = shard.id, node, "link down");
}

/// Accept links on this shard's share of the link port until shutdown.
pub async fn accept_loop(shard: Rc<Shard>, listener: TcpListener) {
    let mut stop = shard.shutdown.wait();
    let never = Instant::now() + Duration::from_secs(365 * 24 * 3600);
    loop {
        match race(listener.accept(), never, Some(&mut stop)).await {
            Woken::Io(Ok(stream)) => {
                glommio::spawn_local(inbound(shard.clone(), stream)).detach();
            }
            Woken::Io(Err(error)) => {
                tracing::warn!(shard = shard.id, %error, "link accept failed");
                glommio::timer::sleep(Duration::from_millis(20)).await;
            }
            Woken::Deadline | Woken::Shutdown => break,
        }
    }
}

async fn inbound(shard: Rc<Shard>, mut stream: TcpStream) {
    let _ = stream.set_nodelay(true);
    // The peer is unknown until its hello: `u16::MAX` marks that.
    let conn = Conn::new(u16::MAX);
    serve(&shard, &conn, &mut stream).await;
    conn.close();
}

/// The connection's loop: write the outbox, read and handle frames. Returns whether the
/// link worked (it exchanged at least one frame) before it ended.
async fn serve(shard: &Rc<Shard>, conn: &Rc<Conn>, stream: &mut TcpStream) -> bool {
    let mut decoder = TcpFrameDecoder::new(wire::limits::FRAME_BYTES_MAX);
    let mut stop = shard.shutdown.wait();
    let mut greeted = conn.peer != u16::MAX;
    let hello_deadline = Instant::now() + LINK_HELLO_TIMEOUT;
    let mut worked = false;
    let mut batch = Vec::new();
    loop {
        // Output: everything queued since the last turn, in one write.
        std::mem::swap(&mut batch, &mut *conn.out.borrow_mut());
        if !batch.is_empty() {
            if stream.write_all(&batch).await.is_err() {
                return worked;
            }
            batch.clear();
        }
        if conn.closed.get() {
            return worked;
        }
        let deadline = if greeted {
            Instant::now() + Duration::from_secs(365 * 24 * 3600)
        } else {
            hello_deadline
        };
        let read = stream.read(decoder.read_space(LINK_READ_BYTES));
        let queued = async {
            Queued(conn).await;
            Ok(usize::MAX)
        };
        match race(future::or(read, queued), deadline, Some(&mut stop)).await {
            Woken::Io(Ok(usize::MAX)) => decoder.commit_read(0, LINK_READ_BYTES),
            Woken::Io(Ok(0)) | Woken::Io(Err(_)) => return worked,
            Woken::Io(Ok(n)) => decoder.commit_read(n, LINK_READ_BYTES),
            Woken::Deadline | Woken::Shutdown => return worked,
        }
        loop {
            let frame = match decoder.poll() {
                Ok(Some(bytes)) => remote::decode::<LinkFrame>(bytes),
                Ok(None) => break,
                Err(error) => {
                    tracing::warn!(shard = shard.id, %error, "link framing error; closing");
                    return worked;
                }
            };
            let frame = match frame {
                Ok(frame) => frame,
                Err(error) => {
                    tracing::warn!(shard = shard.id, %error, "undecodable link frame; closing");
                    shard.counters().link_bad_frame();
                    return worked;
                }
            };
            worked = true;
            if !greeted {
                match &frame {
                    LinkFrame::Hello {
                        cluster,
                        node,
                        version,
                        ..
                    } if Some(cluster.as_str())
                        == shard.cluster.as_ref().map(|c| c.cluster_name.as_str())
                        && *version == LINK_PROTOCOL_VERSION =>
                    {
                        tracing::debug!(shard = shard.id, peer = node, "link accepted");
                        greeted = true;
                        continue;
                    }
                    other => {
                        tracing::warn!(
                            shard = shard.id,
                            ?other,
                            "link without a matching hello; closing"
                        );
                        shard.counters().link_bad_frame();
                        return false;
                    }
                }
            }
            handle(shard, conn, frame);
        }
    }
}

fn handle(shard: &Rc<Shard>, conn: &Rc<Conn>, frame: LinkFrame) {
    match frame {
        LinkFrame::Hello { .. } => {}
        LinkFrame::Reply { id, reply } => {
            let pending = conn.pending.borrow_mut().remove(&id);
            if let (Some((pending, _)), Some(reply)) = (pending, reply) {
                if let Err(error) = pending.complete(reply) {
                    tracing::warn!(%error, "link reply did not match its request");
                    shard.counters().link_bad_frame();
                }
            }
            // A reply of None, or one for a call that timed out: the caller already has
            // (or now gets, by the drop) Unavailable.
        }
        LinkFrame::Push { to, request } => {
            shard.counters().link_received();
            let (msg, _) = remote::rebuild(request);
            let target = shard.global_of_local(usize::from(to));
            let shard = shard.clone();
            glommio::spawn_local(async move { shard.route(target, msg).await }).detach();
        }
        LinkFrame::Request { id, to, request } => {
            shard.counters().link_received();
            let (msg, answer) = remote::rebuild(request);
            let target = shard.global_of_local(usize::from(to));
            let (shard, conn) = (shard.clone(), conn.clone());
            glommio::spawn_local(async move {
                shard.route(target, msg).await;
                let reply = match answer {
                    Some(answer) => answer.await,
                    None => None,
                };
                conn.push(&LinkFrame::Reply { id, reply });
            })
            .detach();
        }
    }
}

/// Every [`LINK_SWEEP_INTERVAL`]: fail calls past their deadline, close links to nodes
/// marked down (their calls fail at once instead of at the timeout).
pub async fn sweep_loop(shard: Rc<Shard>) {
    let Some(cluster) = shard.cluster.as_ref() else {
        return;
    };
    while !shard.shutdown.is_triggered() {
        glommio::timer::sleep(LINK_SWEEP_INTERVAL).await;
        let now = Instant::now();
        let peers: Vec<Rc<Conn>> = cluster.peers.borrow().values().cloned().collect();
        for conn in peers {
            if !cluster.shared.is_up(conn.peer) {
                conn.close();
                continue;
            }
            let expired: Vec<u64> = conn
                .pending
                .borrow()
                .iter()
                .filter(|(_, (_, deadline))| *deadline <= now)
                .map(|(id, _)| *id)
                .collect();
            if !expired.is_empty() {
                shard.counters().link_timed_out(expired.len() as u64);
                let mut pending = conn.pending.borrow_mut();
                for id in expired {
                    pending.remove(&id);
                }
            }
        }
    }
    for conn in cluster.peers.borrow().values() {
        conn.close();
    }
}
