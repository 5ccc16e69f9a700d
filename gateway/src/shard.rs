//! One shard: the state a pinned executor owns, its two accept loops, and its drain.
//!
//! A shard's state is `Rc`/`Cell` only: it never leaves its thread. Other threads see
//! only its metrics slot (written here, read by `/metrics` anywhere), the mesh channels,
//! and its log's I/O threads.
//!
//! Each shard owns one log (`<data_dir>/shard-<id>/`) holding the messages of the
//! conversations it owns and the metadata of the users whose home it is.

use std::cell::{Cell, RefCell};
use std::collections::{HashMap, HashSet};
use std::rc::Rc;
use std::time::{Duration, Instant};

use futures_channel::oneshot;
use glommio::net::{TcpListener, TcpStream};
use log_engine::{AsyncLog, FsStorage};
use router::mesh::{Incoming, Mesh, SendError};
use router::{Placement, SnowflakeGenerator};

use crate::auth::TokenKey;
use crate::chat::{self, ApiError, Reply, ShardMsg};
use crate::config::Config;
use crate::metrics::{Listener, Metrics, ShardCounters};
use crate::session::idle::IdleWheel;
use crate::session::io::{race, Woken};
use crate::session::live::{Ended, Registry, SessionHandle};
use crate::shutdown::{Shutdown, ShutdownFlag};
use crate::state::ShardState;
use crate::{http, session};

/// How long a shard waits, after shutdown starts, for its sessions to finish closing.
pub const DRAIN_TIMEOUT: Duration = Duration::from_secs(3);

/// Pause after a failed accept (e.g. out of file descriptors) before trying again.
const ACCEPT_ERROR_BACKOFF: Duration = Duration::from_millis(20);

/// The log type every shard runs.
pub type ShardLog = AsyncLog<FsStorage, ShardState>;

/// Per-shard state, shared by the shard's tasks.
pub struct Shard {
    pub id: usize,
    pub config: Config,
    pub metrics: Metrics,
    pub shutdown: Shutdown,
    /// This node's id (0 on a single node).
    pub node_id: u16,
    /// Shards per node: the divisor of global shard indices (`crate::cluster`).
    pub shards_per_node: usize,
    /// The placement of a single node; a cluster's comes from its view.
    placement: Placement,
    /// Cluster mode: the view, links to other nodes (None on a single node).
    pub cluster: Option<crate::cluster::link::ShardCluster>,
    pub mesh: Mesh<ShardMsg>,
    pub log: ShardLog,
    pub ids: RefCell<SnowflakeGenerator>,
    pub token_key: TokenKey,
    pub sessions: RefCell<Registry>,
    /// Idle deadlines of the sessions (see `session::idle`).
    pub idle: RefCell<IdleWheel<SessionHandle>>,
    /// Owner-side group bookkeeping that is not persisted (gates, receipt batches).
    pub groups: RefCell<crate::group::GroupRuntime>,
    /// Presence subscriptions, coalescing and last-seen bookkeeping.
    pub presence: RefCell<crate::presence::PresenceRuntime>,
    /// Devices using the HTTP fallback, with their socketless sessions.
    pub http_devices: RefCell<crate::poll::HttpDevices>,
    /// Open push-notification jobs of the users whose home this is.
    pub outbox: RefCell<crate::push::Outbox>,
    /// Where push notifications go (none configured: no jobs).
    pub push_provider: Option<std::sync::Arc<dyn crate::push::PushProvider>>,
    /// Users being registered (their record is not durable yet).
    pub reserving_users: RefCell<HashSet<u64>>,
    /// Highest device id handed out per user since start (ids not durable yet).
    pub reserved_devices: RefCell<HashMap<u64, u64>>,
    /// One-time keys picked by a claim whose record is not durable yet,
    /// `(user, device, key id)` (see `gateway/src/keys.rs`).
    pub keys_claiming: RefCell<HashSet<(u64, u64, u64)>>,
    /// Devices with a key upload in progress, `(user, device, 0)`.
    pub keys_uploading: RefCell<HashSet<(u64, u64, u64)>>,
    /// The media object store (shared by every shard; see `gateway/src/media/store.rs`).
    pub media: crate::media::store::MediaStore,
    /// Media uploads this shard is receiving now.
    pub media_uploads: Cell<usize>,
    /// The newest sequence this shard has seen per conversation (pushes, reads); not
    /// persisted: catch-up reads refresh it.
    last_seqs: RefCell<HashMap<u64, u64>>,
    next_session: Cell<u64>,
    open: Cell<usize>,
}

/// What a shard is built from.
pub struct ShardParts {
    pub id: usize,
    pub config: Config,
    pub metrics: Metrics,
    pub placement: Placement,
    pub cluster: Option<crate::cluster::link::ShardCluster>,
    pub mesh: Mesh<ShardMsg>,
    pub log: ShardLog,
    pub ids: SnowflakeGenerator,
    pub token_key: TokenKey,
    pub media: crate::media::store::MediaStore,
}

impl Shard {
    pub fn new(parts: ShardParts) -> Rc<Shard> {
        let push_provider = crate::push::provider_from(&parts.config);
        let (node_id, shards_per_node) = (parts.config.node_id, parts.config.shards);
        let idle_timeout = parts.config.idle_timeout;
        Rc::new(Shard {
            id: parts.id,
            presence: RefCell::new(crate::presence::PresenceRuntime::default()),
            outbox: RefCell::new(crate::push::Outbox::default()),
            http_devices: RefCell::new(crate::poll::HttpDevices::default()),
            push_provider,
            config: parts.config,
            metrics: parts.metrics,
            shutdown: Shutdown::default(),
            node_id,
            shards_per_node,
            placement: parts.placement,
            cluster: parts.cluster,
            mesh: parts.mesh,
            log: parts.log,
            ids: RefCell::new(parts.ids),
            token_key: parts.token_key,
            sessions: RefCell::new(Registry::default()),
            idle: RefCell::new(IdleWheel::new(idle_timeout, Instant::now())),
            groups: RefCell::new(crate::group::GroupRuntime::default()),
            reserving_users: RefCell::new(HashSet::new()),
            reserved_devices: RefCell::new(HashMap::new()),
            keys_claiming: RefCell::new(HashSet::new()),
            keys_uploading: RefCell::new(HashSet::new()),
            media: parts.media,
            media_uploads: Cell::new(0),
            last_seqs: RefCell::new(HashMap::new()),
            next_session: Cell::new(1),
            open: Cell::new(0),
        })
    }

    pub fn counters(&self) -> &ShardCounters {
        self.metrics.shard(self.id)
    }

    /// Connections this shard holds open.
    pub fn open_connections(&self) -> usize {
        self.open.get()
    }

    /// Read the folded state.
    pub fn state<R>(&self, f: impl FnOnce(&ShardState) -> R) -> R {
        self.log.with_log(|log| f(log.state()))
    }

    /// Run `f` on the current placement (the cluster's view, refreshed when it moved).
    pub fn with_placement<R>(&self, f: impl FnOnce(&Placement) -> R) -> R {
        match &self.cluster {
            Some(cluster) => cluster.with_view(|view| f(&view.placement)),
            None => f(&self.placement),
        }
    }

    /// This shard's global index (`node × shards_per_node + shard`; see `crate::cluster`).
    pub fn global_id(&self) -> usize {
        self.global_of_local(self.id)
    }

    /// The global index of this node's shard `local`.
    pub fn global_of_local(&self, local: usize) -> usize {
        usize::from(self.node_id) * self.shards_per_node + local
    }

    /// The node of global shard index `global`.
    pub fn node_of(&self, global: usize) -> u16 {
        (global / self.shards_per_node.max(1)) as u16
    }

    /// The global index of the shard that is `user_id`'s home.
    pub fn user_home(&self, user_id: u64) -> usize {
        let home = self.with_placement(|p| p.user_home(user_id));
        crate::cluster::global_index(home, self.shards_per_node)
    }

    /// Users grouped by their home shard (one mesh message per shard instead of per user).
    pub fn users_by_home(
        &self,
        users: impl IntoIterator<Item = u64>,
    ) -> std::collections::BTreeMap<usize, Vec<u64>> {
        let mut homes: std::collections::BTreeMap<usize, Vec<u64>> = Default::default();
        for user in users {
            homes.entry(self.user_home(user)).or_default().push(user);
        }
        homes
    }

    /// The global index of the shard that owns `conversation_id`.
    pub fn conversation_owner(&self, conversation_id: u64) -> usize {
        let home = self.with_placement(|p| p.conversation_owner(conversation_id));
        crate::cluster::global_index(home, self.shards_per_node)
    }

    /// Is global shard `global` on a node that is down? (Always false on a single node.)
    pub fn is_unavailable(&self, global: usize) -> bool {
        let node = self.node_of(global);
        node != self.node_id
            && self
                .cluster
                .as_ref()
                .is_some_and(|cluster| !cluster.shared.is_up(node))
    }

    pub fn next_session_id(&self) -> u64 {
        let id = self.next_session.get();
        self.next_session.set(id + 1);
        ((self.id as u64) << 48) | id
    }

    pub fn note_last_seq(&self, conversation_id: u64, seq: u64) {
        let mut seqs = self.last_seqs.borrow_mut();
        let entry = seqs.entry(conversation_id).or_insert(0);
        *entry = (*entry).max(seq);
    }

    pub fn last_seq(&self, conversation_id: u64) -> u64 {
        self.last_seqs
            .borrow()
            .get(&conversation_id)
            .copied()
            .unwrap_or(0)
    }

    /// Deliver `msg` to global shard `to`: this one (through a task of its own), another
    /// shard of this node over the mesh, or another node over its link.
    pub async fn route(self: &Rc<Self>, to: usize, msg: ShardMsg) {
        let node = self.node_of(to);
        if node != self.node_id {
            match &self.cluster {
                Some(cluster) => {
                    let local = (to % self.shards_per_node.max(1)) as u16;
                    crate::cluster::link::send(self, cluster, node, local, msg);
                }
                None => {
                    self.counters().mesh_dropped();
                    tracing::warn!(
                        shard = self.id,
                        to,
                        "message for another node, but no cluster"
                    );
                }
            }
            return;
        }
        let to = to % self.shards_per_node.max(1);
        if to == self.id {
            chat::handle(self, msg);
            return;
        }
        match self.mesh.send(to, msg).await {
            Ok(()) => {}
            // Dropping the message drops its reply channel: the caller sees Unavailable.
            Err(SendError::NoPeer(_)) | Err(SendError::Full(_)) => {
                self.counters().mesh_dropped();
                tracing::warn!(shard = self.id, to, "mesh message dropped");
            }
        }
    }

    /// Send a request built around a reply channel to shard `to` and wait for the answer.
    pub async fn call<T>(
        self: &Rc<Self>,
        to: usize,
        make: impl FnOnce(Reply<T>) -> ShardMsg,
    ) -> Result<T, ApiError> {
        if self.is_unavailable(to) {
            return Err(ApiError::unavailable(&format!(
                "node {} (which owns this data) is unavailable; retry later",
                self.node_of(to)
            )));
        }
        let (reply, answer) = oneshot::channel();
        self.route(to, make(reply)).await;
        answer
            .await
            .map_err(|_| ApiError::unavailable("shard unavailable"))
    }
}

/// Receive batches from one peer until it goes away; every message is handled on this
/// shard (handlers that wait run as their own tasks, so this loop never blocks).
pub async fn receive_loop(shard: Rc<Shard>, incoming: Incoming<ShardMsg>) {
    while let Some(batch) = incoming.recv().await {
        for msg in batch {
            chat::handle(&shard, msg);
        }
    }
}

/// Counts one open connection for its lifetime.
pub struct ConnGuard(Rc<Shard>);

impl ConnGuard {
    fn new(shard: &Rc<Shard>, listener: Listener) -> ConnGuard {
        shard.open.set(shard.open.get() + 1);
        shard.counters().accepted(listener);
        ConnGuard(shard.clone())
    }

    /// A connection handed over by another shard.
    pub fn adopted(shard: &Rc<Shard>) -> ConnGuard {
        shard.open.set(shard.open.get() + 1);
        shard.counters().adopted();
        ConnGuard(shard.clone())
    }
}

impl Drop for ConnGuard {
    fn drop(&mut self) {
        self.0.open.set(self.0.open.get().saturating_sub(1));
        self.0.counters().closed();
    }
}

/// Asks the sessions idle for the idle timeout to close, one wheel tick at a time
/// (see `session::idle`), until the shard shuts down.
async fn idle_loop(shard: Rc<Shard>) {
    let mut stop = shard.shutdown.wait();
    let tick = shard.idle.borrow().tick();
    loop {
        let never = futures_lite::future::pending::<()>();
        match race(never, Instant::now() + tick, Some(&mut stop)).await {
            Woken::Deadline => {}
            _ => return,
        }
        let idle = shard.idle.borrow_mut().expire(Instant::now());
        for session in idle {
            session.close_idle();
        }
    }
}

/// Serve both listeners until the process is told to stop, then drain.
pub async fn serve(shard: Rc<Shard>, flag: ShutdownFlag, http: TcpListener, tcp: TcpListener) {
    crate::group::repair_system_messages(&shard).await;
    let watcher = glommio::spawn_local(shard.shutdown.clone().watch(flag));
    let presence_loop = glommio::spawn_local(crate::presence::persist_loop(shard.clone()));
    let idle_loop = glommio::spawn_local(idle_loop(shard.clone()));
    let push_loop = glommio::spawn_local(crate::push::run(shard.clone()));
    let http_loop = glommio::spawn_local(accept_loop(shard.clone(), http, Listener::Http));
    let tcp_loop = glommio::spawn_local(accept_loop(shard.clone(), tcp, Listener::Tcp));
    watcher.await;
    http_loop.await;
    tcp_loop.await;
    let deadline = Instant::now() + DRAIN_TIMEOUT;
    while shard.open_connections() > 0 && Instant::now() < deadline {
        glommio::timer::sleep(Duration::from_millis(10)).await;
    }
    presence_loop.await;
    idle_loop.await;
    push_loop.await;
    crate::presence::persist_last_seen(&shard).await;
    // Flush the log: wait for appends still in flight, then checkpoint so the next
    // start replays little.
    while shard.log.pending() > 0 && Instant::now() < deadline + DRAIN_TIMEOUT {
        glommio::timer::sleep(Duration::from_millis(5)).await;
    }
    if let Err(error) = shard.log.with_log(|log| log.checkpoint()) {
        tracing::warn!(shard = shard.id, %error, "checkpoint at shutdown failed");
    }
    tracing::info!(
        shard = shard.id,
        left_open = shard.open_connections(),
        "shard stopped"
    );
}

async fn accept_loop(shard: Rc<Shard>, listener: TcpListener, kind: Listener) {
    let mut stop = shard.shutdown.wait();
    let never = Instant::now() + Duration::from_secs(365 * 24 * 3600);
    loop {
        match race(listener.accept(), never, Some(&mut stop)).await {
            Woken::Io(Ok(stream)) => {
                let guard = ConnGuard::new(&shard, kind);
                glommio::spawn_local(connection(guard, stream, kind)).detach();
            }
            Woken::Io(Err(e)) => {
                tracing::warn!(shard = shard.id, error = %e, "accept failed");
                glommio::timer::sleep(ACCEPT_ERROR_BACKOFF).await;
            }
            Woken::Deadline | Woken::Shutdown => break,
        }
    }
    // Dropping the listener closes this shard's socket; the kernel stops routing to it.
}

async fn connection(guard: ConnGuard, mut stream: TcpStream, kind: Listener) {
    let shard = &guard.0.clone();
    let accepted_at = Instant::now();
    let _ = stream.set_nodelay(true);
    // A peer that stops reading cannot hold a session's writer forever.
    let _ = stream.set_write_timeout(Some(shard.config.idle_timeout));
    let ended = match kind {
        Listener::Http => http::serve(shard, &mut stream, accepted_at).await,
        Listener::Tcp => {
            let transport = session::codec::Transport::Tcp;
            session::live::run(shard, &mut stream, transport, &[], accepted_at).await
        }
    };
    match ended {
        Ended::Close => session::io::linger_close(&mut stream).await,
        Ended::HandedOff => {}
        Ended::Authenticated(authenticated) => {
            session::live::spawn_session(shard, guard, stream, *authenticated)
        }
    }
}
