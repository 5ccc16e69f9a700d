//! A connection's life after the HTTP upgrade (or the TCP accept): the Hello gate, the
//! hand-off to the user's home shard, and the authenticated session there.
//!
//! # The session loop
//! One task per connection owns the socket and the codec. Each turn it decodes every
//! buffered frame (requests that wait — sends, reads, opens — get a task of their own, so
//! a client may pipeline), encodes everything waiting in the outbound queue, writes, then
//! waits for the first of: bytes from the peer, something queued, the idle deadline, or
//! shutdown.
//!
//! # The outbound queue and slow consumers
//! Other tasks (pushes from the mesh, acks, catch-up) put frames in the session's
//! [`SessionHandle`] queue, bounded by `outbound_queue_frames`. A live push or answer
//! that finds it full closes the connection with 4008: nothing is lost, because cursors
//! move only on the device's own receipts, so the device catches up on reconnect.
//! Catch-up itself waits for room instead (it is the reader's own backlog).
//!
//! # Delivery order per device
//! [`Delivery`] keeps, per conversation, the highest sequence this connection has sent
//! (`upto`). A push of `upto + 1` is sent at once; an older one is dropped; a newer one
//! (a gap: catch-up still running, or pushes raced) marks the conversation for a read
//! from `upto` at the owner, so each connection sees each sequence once, in order.

use std::cell::{Cell, RefCell};
use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll, Waker};
use std::time::Instant;

use futures_lite::{future, AsyncReadExt, AsyncWriteExt};
use glommio::net::TcpStream;
use wire::message::{
    Body, ConversationList, ConversationOpened, ConversationSummary, Deliver, ErrorCode, Frame,
    HistoryPage, MessageKind, Pong, ReceiptKind, ReceiptState, ReceiptUpdate, StoredMessage,
    SyncBatch, Welcome,
};
use wire::ws::CloseCode;

use crate::auth::{self, Claims, TokenKind};
use crate::chat::{self, ApiError, AppendMsg, Handoff, ReadRange, ShardMsg};
use crate::session::codec::{Codec, InputEnd, Sent, Transport};
use crate::session::io::{race, race_stop, Woken};
use crate::session::{idle_read_bytes, CLOSE_LINGER, READ_BYTES};
use crate::shard::{ConnGuard, Shard};
use crate::state::{Cursor, MetaEvent};

/// Messages per catch-up read.
pub const SYNC_PAGE_MESSAGES: usize = 200;

/// Body bytes per `SyncBatch` frame (a batch closes early past this), far below the
/// frame limit so a batch of maximum-size bodies still fits.
pub const SYNC_BATCH_BODY_BYTES: usize = 512 * 1024;

/// Consecutive rate-limited frames before the connection is closed with 4029.
pub const RATE_LIMIT_STRIKES_MAX: u32 = 64;

/// How a connection task ended.
pub enum Ended {
    /// Close the socket (with the lingering close).
    Close,
    /// The socket moved to another shard: drop this descriptor without a shutdown.
    HandedOff,
    /// The Hello was accepted and this shard is the user's home: the caller moves the
    /// socket into a session task of its own ([`spawn_session`]).
    Authenticated(Box<Authenticated>),
}

/// A connection whose Hello this shard accepted, ready for its session task.
pub struct Authenticated {
    codec: Codec,
    handle: Rc<SessionHandle>,
    hello_request_id: u64,
}

/// Run an authenticated session in a task of its own, then close the socket.
///
/// Why a separate task: a task's memory is its future's largest state, fixed at spawn.
/// The task that accepted the connection is sized for the HTTP upgrade, the Hello and
/// the lingering close; an idle session would carry all of that for hours. The session
/// task holds only the session loop (see the memory budget in docs/architecture.md).
pub fn spawn_session(
    shard: &Rc<Shard>,
    guard: ConnGuard,
    mut stream: TcpStream,
    authenticated: Authenticated,
) {
    let shard = shard.clone();
    let Authenticated {
        mut codec,
        handle,
        hello_request_id,
    } = authenticated;
    glommio::spawn_local(async move {
        let websocket = codec.is_websocket();
        if websocket {
            shard.counters().ws_opened();
        }
        serve(&shard, &mut stream, &mut codec, handle, hello_request_id).await;
        drop(codec);
        crate::session::io::linger_close(&mut stream).await;
        if websocket {
            shard.counters().ws_closed();
        }
        drop(guard);
    })
    .detach();
}

// ----- the gate -----------------------------------------------------------------------

/// Run a new connection: wait for a valid Hello, then serve it here or hand it to the
/// user's home shard.
pub async fn run(
    shard: &Rc<Shard>,
    stream: &mut TcpStream,
    transport: Transport,
    early: &[u8],
    accepted_at: Instant,
) -> Ended {
    let mut codec = Codec::new(transport, shard.config.max_frame_bytes);
    codec.feed(early);
    let deadline = accepted_at + shard.config.handshake_timeout;
    let mut stop = shard.shutdown.wait();
    let (claims, request_id) = loop {
        match codec.next_frame() {
            Ok(Some(frame)) => match check_hello(shard, &frame) {
                Ok(claims) => break (claims, frame.request_id),
                Err(error) => {
                    codec.send(&error.frame(frame.request_id));
                    codec.close(CloseCode::Unauthenticated, "unauthenticated");
                    let _ = write_all(stream, &mut codec).await;
                    return Ended::Close;
                }
            },
            Ok(None) => {}
            Err(end) => {
                refuse_input(shard, &mut codec, end);
                let _ = write_all(stream, &mut codec).await;
                return Ended::Close;
            }
        }
        if write_all(stream, &mut codec).await.is_err() {
            return Ended::Close;
        }
        let read = stream.read(codec.read_space(READ_BYTES));
        match race(read, deadline, Some(&mut stop)).await {
            Woken::Io(Ok(n)) if n > 0 => codec.commit_read(n, READ_BYTES),
            Woken::Deadline => {
                codec.close(CloseCode::HandshakeTimeout, "handshake timeout");
                let _ = write_all(stream, &mut codec).await;
                return Ended::Close;
            }
            Woken::Shutdown => {
                codec.close(CloseCode::GoingAway, "server shutting down");
                let _ = write_all(stream, &mut codec).await;
                return Ended::Close;
            }
            Woken::Io(_) => return Ended::Close,
        }
    };
    let home = shard.user_home(claims.user_id);
    if shard.node_of(home) != shard.node_id {
        // Cluster mode: a user's connections live on its home node (docs/architecture.md,
        // "Cluster"). Say where that is, or that it is down, and close.
        match crate::cluster::redirect_for(shard, shard.node_of(home), transport) {
            Some(redirect) => {
                codec.send(&Frame {
                    request_id,
                    body: Body::Redirect(redirect),
                });
                codec.close(CloseCode::Redirect, "connect to your home node");
            }
            None => {
                let error = ApiError::unavailable("your home node is unavailable; retry later");
                codec.send(&error.frame(request_id));
                codec.close(CloseCode::TryAgainLater, "home node unavailable");
            }
        }
        shard.counters().redirected();
        let _ = write_all(stream, &mut codec).await;
        return Ended::Close;
    }
    if home == shard.global_id() {
        let handle = match open_session(shard, &claims) {
            Ok(handle) => handle,
            Err(error) => {
                codec.send(&error.frame(request_id));
                codec.close(CloseCode::Unauthenticated, "unauthenticated");
                let _ = write_all(stream, &mut codec).await;
                return Ended::Close;
            }
        };
        return Ended::Authenticated(Box::new(Authenticated {
            codec,
            handle,
            hello_request_id: request_id,
        }));
    }
    let Some(unread) = codec.take_unread_input() else {
        codec.close(
            CloseCode::PolicyViolation,
            "hello inside a fragmented message",
        );
        let _ = write_all(stream, &mut codec).await;
        return Ended::Close;
    };
    // SAFETY: dup(2) of a descriptor this stream owns and keeps open for the call.
    let dup = unsafe { libc::dup(stream.as_raw_fd()) };
    if dup < 0 {
        tracing::warn!(
            shard = shard.id,
            "dup failed; serving the connection here is not possible"
        );
        return Ended::Close;
    }
    // SAFETY: `dup` is a new descriptor owned by nobody else.
    let fd = unsafe { OwnedFd::from_raw_fd(dup) };
    shard.counters().handed_off();
    shard
        .route(
            home,
            ShardMsg::Handoff(Handoff {
                fd,
                transport,
                unread,
                user_id: claims.user_id,
                device_id: claims.device_id,
                hello_request_id: request_id,
            }),
        )
        .await;
    Ended::HandedOff
}

fn check_hello(shard: &Shard, frame: &Frame) -> Result<Claims, ApiError> {
    let Body::Hello(hello) = &frame.body else {
        return Err(ApiError::new(
            ErrorCode::UnexpectedFrame,
            "the first frame must be Hello",
        ));
    };
    auth::verify(
        &shard.token_key,
        &hello.token,
        chat::now_ms(),
        TokenKind::Access,
    )
    .map_err(|e| ApiError::new(ErrorCode::Unauthenticated, format!("bad token: {e}")))
}

fn refuse_input(shard: &Shard, codec: &mut Codec, end: InputEnd) {
    if let InputEnd::Invalid(code, reason) = end {
        shard.counters().protocol_error();
        tracing::debug!(shard = shard.id, %reason, code = code.as_u16(), "bad input");
        codec.close(code, "invalid frame");
    }
}

/// A connection handed over by another shard.
pub fn adopt(shard: &Rc<Shard>, handoff: Handoff) {
    let Handoff {
        fd,
        transport,
        unread,
        user_id,
        device_id,
        hello_request_id,
    } = handoff;
    let claims = Claims {
        kind: TokenKind::Access,
        user_id,
        device_id,
        expires_ms: 0,
    };
    let guard = ConnGuard::adopted(shard);
    // SAFETY: the descriptor is a connected TCP socket whose ownership moved here.
    let mut stream = unsafe { TcpStream::from_raw_fd(std::os::fd::IntoRawFd::into_raw_fd(fd)) };
    let _ = stream.set_nodelay(true);
    let _ = stream.set_write_timeout(Some(shard.config.idle_timeout));
    let mut codec = Codec::new(transport, shard.config.max_frame_bytes);
    codec.feed(&unread);
    match open_session(shard, &claims) {
        Ok(handle) => spawn_session(
            shard,
            guard,
            stream,
            Authenticated {
                codec,
                handle,
                hello_request_id,
            },
        ),
        Err(error) => {
            glommio::spawn_local(async move {
                codec.send(&error.frame(hello_request_id));
                codec.close(CloseCode::Unauthenticated, "unauthenticated");
                let _ = write_all(&mut stream, &mut codec).await;
                crate::session::io::linger_close(&mut stream).await;
                drop(guard);
            })
            .detach();
        }
    }
}

pub(crate) fn open_session(
    shard: &Rc<Shard>,
    claims: &Claims,
) -> Result<Rc<SessionHandle>, ApiError> {
    let known = shard.state(|s| {
        s.users
            .get(&claims.user_id)
            .is_some_and(|u| u.devices.contains_key(&claims.device_id))
    });
    if !known {
        return Err(ApiError::new(
            ErrorCode::Unauthenticated,
            "unknown user or device",
        ));
    }
    let handle = Rc::new(SessionHandle::new(
        claims.user_id,
        claims.device_id,
        shard.next_session_id(),
        shard.config.outbound_queue_frames,
    ));
    shard.sessions.borrow_mut().add(handle.clone());
    crate::presence::changed(shard, claims.user_id);
    crate::push::user_online(shard, claims.user_id);
    Ok(handle)
}

// ----- the session handle -------------------------------------------------------------

/// Per conversation: what this connection has been sent.
#[derive(Debug, Default, Clone, Copy)]
pub struct Delivery {
    /// Highest sequence sent on this connection (or covered by the device's cursor).
    pub upto: u64,
    /// A read from `upto` is running.
    pub reading: bool,
    /// A push arrived during that read: read again when it ends.
    pub dirty: bool,
}

/// What other tasks may do to a live session.
pub struct SessionHandle {
    pub user_id: u64,
    pub device_id: u64,
    pub session_id: u64,
    queue: RefCell<VecDeque<Frame>>,
    queue_max: usize,
    close: Cell<Option<(CloseCode, &'static str)>>,
    closed: Cell<bool>,
    /// When the peer was last heard (any frame); the shard's idle wheel reads it.
    last_heard: Cell<Instant>,
    /// The session loop, parked.
    waker: RefCell<Option<Waker>>,
    /// Tasks waiting for room in the queue.
    room: RefCell<Vec<Waker>>,
    /// Per conversation this connection was offered (allocated at the first).
    pub delivery: super::lazy::Lazy<HashMap<u64, Delivery>>,
    /// Presence shown, subscriptions and typing state.
    pub presence: crate::presence::SessionPresence,
}

impl SessionHandle {
    fn new(user_id: u64, device_id: u64, session_id: u64, queue_max: usize) -> SessionHandle {
        SessionHandle {
            user_id,
            device_id,
            session_id,
            queue: RefCell::new(VecDeque::new()),
            queue_max: queue_max.max(1),
            close: Cell::new(None),
            closed: Cell::new(false),
            last_heard: Cell::new(Instant::now()),
            waker: RefCell::new(None),
            room: RefCell::new(Vec::new()),
            delivery: super::lazy::Lazy::default(),
            presence: crate::presence::SessionPresence::default(),
        }
    }

    /// Asks the session to close if it was idle for the idle timeout (the shard's wheel
    /// found it due).
    pub fn close_idle(&self) {
        self.request_close(CloseCode::IdleTimeout, "idle timeout");
    }

    pub fn is_closed(&self) -> bool {
        self.closed.get() || self.close.get().is_some()
    }

    fn wake(&self) {
        if let Some(waker) = self.waker.borrow_mut().take() {
            waker.wake();
        }
    }

    /// Ask the session loop to close with `code`.
    pub fn request_close(&self, code: CloseCode, reason: &'static str) {
        if self.close.get().is_none() {
            self.close.set(Some((code, reason)));
        }
        self.wake();
    }

    /// Queue a frame; a full queue closes the connection as a slow consumer.
    pub fn push_live(&self, frame: Frame) {
        if self.is_closed() {
            return;
        }
        let mut queue = self.queue.borrow_mut();
        if queue.len() >= self.queue_max {
            queue.clear();
            drop(queue);
            self.request_close(CloseCode::SlowConsumer, "outbound queue full");
            return;
        }
        queue.push_back(frame);
        drop(queue);
        self.wake();
    }

    /// Queue a frame once there is room. `false` if the session closed meanwhile.
    pub async fn push_wait(&self, frame: Frame) -> bool {
        loop {
            if self.is_closed() {
                return false;
            }
            if self.queue.borrow().len() < self.queue_max {
                self.queue.borrow_mut().push_back(frame);
                self.wake();
                return true;
            }
            Room(self, false).await;
        }
    }

    /// Wait until a frame is queued or a close is requested.
    pub async fn queued(&self) {
        Notified(self).await
    }

    /// Take at most `n` queued frames, oldest first.
    pub fn take_up_to(&self, n: usize) -> Vec<Frame> {
        let frames: Vec<Frame> = {
            let mut queue = self.queue.borrow_mut();
            let n = n.min(queue.len());
            queue.drain(..n).collect()
        };
        for waker in self.room.borrow_mut().drain(..) {
            waker.wake();
        }
        frames
    }

    /// End a session that has no socket (an HTTP long-poll device): as if it closed.
    pub fn end_without_socket(self: &Rc<Self>, shard: &Rc<Shard>) {
        if self.closed.replace(true) {
            return;
        }
        self.mark_closed();
        shard.sessions.borrow_mut().remove(self);
        crate::presence::session_ended(shard, self);
        shard.counters().session_closed();
    }

    fn take_queued(&self) -> VecDeque<Frame> {
        let frames = std::mem::take(&mut *self.queue.borrow_mut());
        for waker in self.room.borrow_mut().drain(..) {
            waker.wake();
        }
        frames
    }

    fn mark_closed(&self) {
        self.closed.set(true);
        self.queue.borrow_mut().clear();
        for waker in self.room.borrow_mut().drain(..) {
            waker.wake();
        }
    }

    /// This device's own send became `seq`: it needs no push of it. `cursor` is the
    /// device's delivered cursor, for a conversation this connection has not seen yet.
    pub fn own_message_acked(&self, conversation_id: u64, seq: u64, cursor: u64) {
        let mut delivery = self.delivery.borrow_mut();
        let d = delivery.entry(conversation_id).or_insert_with(|| Delivery {
            upto: cursor,
            ..Delivery::default()
        });
        if !d.reading && d.upto + 1 == seq {
            d.upto = seq;
        }
    }
}

struct Room<'a>(&'a SessionHandle, bool);

impl Future for Room<'_> {
    type Output = ();
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        if self.1 || self.0.is_closed() || self.0.queue.borrow().len() < self.0.queue_max {
            return Poll::Ready(());
        }
        self.1 = true;
        self.0.room.borrow_mut().push(cx.waker().clone());
        Poll::Pending
    }
}

/// Resolves when the session has frames to send or must close.
struct Notified<'a>(&'a SessionHandle);

impl Future for Notified<'_> {
    type Output = ();
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        // A close request wakes the loop once: after it acted (`closed`), only the peer's
        // answer or the linger deadline may end the wait.
        let close_pending = self.0.close.get().is_some() && !self.0.closed.get();
        if !self.0.queue.borrow().is_empty() || close_pending {
            return Poll::Ready(());
        }
        *self.0.waker.borrow_mut() = Some(cx.waker().clone());
        Poll::Pending
    }
}

impl crate::session::idle::Watched for SessionHandle {
    fn last_heard(&self) -> Instant {
        self.last_heard.get()
    }

    fn is_done(&self) -> bool {
        self.is_closed()
    }
}

/// The sessions a home shard holds, by user.
#[derive(Default)]
pub struct Registry {
    by_user: HashMap<u64, Vec<Rc<SessionHandle>>>,
}

impl Registry {
    pub fn add(&mut self, handle: Rc<SessionHandle>) {
        self.by_user.entry(handle.user_id).or_default().push(handle);
    }

    pub fn remove(&mut self, handle: &SessionHandle) {
        if let Some(list) = self.by_user.get_mut(&handle.user_id) {
            list.retain(|h| h.session_id != handle.session_id);
            if list.is_empty() {
                self.by_user.remove(&handle.user_id);
            }
        }
    }

    pub fn of_user(&self, user_id: u64) -> Vec<Rc<SessionHandle>> {
        self.by_user.get(&user_id).cloned().unwrap_or_default()
    }

    /// The user's sessions, without copying the list.
    pub fn of_user_iter(&self, user_id: u64) -> impl Iterator<Item = &Rc<SessionHandle>> {
        self.by_user.get(&user_id).into_iter().flatten()
    }

    pub fn len(&self) -> usize {
        self.by_user.values().map(Vec::len).sum()
    }

    /// Every user with a session here, with its sessions.
    pub fn users(&self) -> impl Iterator<Item = (u64, &Vec<Rc<SessionHandle>>)> {
        self.by_user
            .iter()
            .map(|(&user, sessions)| (user, sessions))
    }

    pub fn is_empty(&self) -> bool {
        self.by_user.is_empty()
    }
}

// ----- delivery -----------------------------------------------------------------------

/// Offer a new durable message to a session (see the module docs).
pub fn offer(shard: &Rc<Shard>, session: &Rc<SessionHandle>, message: &StoredMessage) {
    let conversation_id = message.conversation_id;
    let start_read = {
        let mut deliveries = session.delivery.borrow_mut();
        let delivery = deliveries
            .entry(conversation_id)
            .or_insert_with(|| Delivery {
                upto: shard.state(|s| {
                    s.delivered_floor(session.user_id, session.device_id, conversation_id)
                }),
                ..Delivery::default()
            });
        if delivery.reading {
            delivery.dirty = true;
            false
        } else if message.seq <= delivery.upto {
            false
        } else if message.seq == delivery.upto + 1 {
            delivery.upto = message.seq;
            session.push_live(Frame {
                request_id: 0,
                body: Body::Deliver(Deliver {
                    message: message.clone(),
                }),
            });
            false
        } else {
            delivery.reading = true;
            true
        }
    };
    if start_read {
        let (shard, session) = (shard.clone(), session.clone());
        glommio::spawn_local(async move {
            drain(&shard, &session, conversation_id, Emit::Deliver).await;
        })
        .detach();
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Emit {
    Deliver,
    Sync,
}

/// Read a conversation from the session's `upto` until caught up (its `reading` flag is
/// already set), sending what it finds. Returns false if the session ended.
async fn drain(
    shard: &Rc<Shard>,
    session: &Rc<SessionHandle>,
    conversation_id: u64,
    emit: Emit,
) -> bool {
    let owner = shard.conversation_owner(conversation_id);
    loop {
        let after = {
            let mut deliveries = session.delivery.borrow_mut();
            let d = deliveries.entry(conversation_id).or_default();
            d.dirty = false;
            d.upto
        };
        let page = shard
            .call(owner, |reply| ShardMsg::Read {
                conversation_id,
                range: ReadRange::After(after),
                limit: SYNC_PAGE_MESSAGES,
                reader: session.user_id,
                reply,
            })
            .await
            .and_then(|r| r);
        let page = match page {
            Ok(page) => page,
            // Removed from a group (its home is being told): nothing more to read there.
            Err(error) if matches!(error.code, ErrorCode::Forbidden | ErrorCode::NotFound) => {
                if let Some(d) = session.delivery.borrow_mut().get_mut(&conversation_id) {
                    d.reading = false;
                }
                return true;
            }
            // Cluster mode: the owner's node is down. Skip this conversation (the others
            // still catch up) and say so; the next push into it, or a SyncRequest once
            // the node is back, reads on from the unchanged cursor.
            Err(error) if error.code == ErrorCode::Unavailable => {
                if let Some(d) = session.delivery.borrow_mut().get_mut(&conversation_id) {
                    d.reading = false;
                }
                session.push_live(
                    ApiError::unavailable(&format!(
                        "conversation {conversation_id} is unavailable (its node is down); \
                         send a SyncRequest later"
                    ))
                    .frame(0),
                );
                return true;
            }
            Err(error) => {
                tracing::warn!(
                    shard = shard.id,
                    conversation_id,
                    ?error,
                    "catch-up read failed"
                );
                session.request_close(CloseCode::InternalError, "catch-up failed");
                return false;
            }
        };
        shard.note_last_seq(conversation_id, page.last_seq);
        let mut messages: Vec<StoredMessage> = Vec::new();
        let mut upto = after;
        for message in page.messages {
            if message.seq == upto + 1 {
                upto = message.seq;
                messages.push(message);
            }
        }
        if let Some(d) = session.delivery.borrow_mut().get_mut(&conversation_id) {
            d.upto = d.upto.max(upto);
        }
        match emit {
            Emit::Deliver => {
                for message in messages {
                    let frame = Frame {
                        request_id: 0,
                        body: Body::Deliver(Deliver { message }),
                    };
                    if !session.push_wait(frame).await {
                        return false;
                    }
                }
            }
            Emit::Sync => {
                for chunk in sync_chunks(messages) {
                    let frame = Frame {
                        request_id: 0,
                        body: Body::SyncBatch(SyncBatch {
                            messages: chunk,
                            receipts: Vec::new(),
                            has_more: true,
                        }),
                    };
                    if !session.push_wait(frame).await {
                        return false;
                    }
                }
            }
        }
        let again = {
            let mut deliveries = session.delivery.borrow_mut();
            let d = deliveries.entry(conversation_id).or_default();
            let again = page.has_more || d.dirty;
            if !again {
                d.reading = false;
            }
            again
        };
        if !again {
            return true;
        }
        if session.is_closed() {
            return false;
        }
    }
}

/// Split messages into `SyncBatch`-sized groups by count and body bytes.
fn sync_chunks(messages: Vec<StoredMessage>) -> Vec<Vec<StoredMessage>> {
    let mut chunks = Vec::new();
    let mut chunk = Vec::new();
    let mut bytes = 0usize;
    for message in messages {
        let size = message.body.len();
        if !chunk.is_empty()
            && (bytes + size > SYNC_BATCH_BODY_BYTES
                || chunk.len() >= wire::limits::SYNC_BATCH_MESSAGES_MAX)
        {
            chunks.push(std::mem::take(&mut chunk));
            bytes = 0;
        }
        bytes += size;
        chunk.push(message);
    }
    if !chunk.is_empty() {
        chunks.push(chunk);
    }
    chunks
}

/// Catch-up: every conversation of the user from this device's cursor, then a final
/// batch with the peers' receipt states and `has_more = false`.
pub(crate) async fn catch_up(shard: Rc<Shard>, session: Rc<SessionHandle>) {
    let conversations: Vec<(u64, u64)> = shard.state(|s| {
        s.users.get(&session.user_id).map_or_else(Vec::new, |u| {
            u.conversations
                .keys()
                .map(|&c| (c, s.delivered_floor(session.user_id, session.device_id, c)))
                .collect()
        })
    });
    {
        let mut deliveries = session.delivery.borrow_mut();
        for &(conversation_id, delivered) in &conversations {
            let d = deliveries.entry(conversation_id).or_default();
            if !d.reading {
                d.upto = d.upto.max(delivered);
                d.reading = true;
            }
        }
    }
    for &(conversation_id, _) in &conversations {
        if !drain(&shard, &session, conversation_id, Emit::Sync).await {
            return;
        }
    }
    let receipts = peer_receipts(&shard, session.user_id);
    let done = Frame {
        request_id: 0,
        body: Body::SyncBatch(SyncBatch {
            messages: Vec::new(),
            receipts,
            has_more: false,
        }),
    };
    let _ = session.push_wait(done).await;
}

fn peer_receipts(shard: &Shard, user_id: u64) -> Vec<ReceiptUpdate> {
    shard.state(|s| {
        let Some(user) = s.users.get(&user_id) else {
            return Vec::new();
        };
        user.conversations
            .iter()
            .filter(|(_, m)| !m.peer_receipts.is_empty())
            .take(wire::limits::SYNC_BATCH_RECEIPT_UPDATES_MAX)
            .map(|(&conversation_id, m)| ReceiptUpdate {
                conversation_id,
                states: m
                    .peer_receipts
                    .iter()
                    .map(|(&device_id, c)| ReceiptState {
                        user_id: m.peer_user_id,
                        device_id,
                        delivered_seq: c.delivered,
                        read_seq: c.read,
                    })
                    .collect(),
            })
            .collect()
    })
}

// ----- the session loop ---------------------------------------------------------------

/// A token bucket over inbound frames.
pub(crate) struct RateLimit {
    tokens: f64,
    rate: f64,
    burst: f64,
    last: Instant,
    strikes: u32,
}

impl RateLimit {
    /// A full bucket with the configured rate and burst.
    pub(crate) fn new(config: &crate::config::Config) -> RateLimit {
        RateLimit {
            tokens: config.rate_limit_burst as f64,
            rate: config.rate_limit_per_sec as f64,
            burst: config.rate_limit_burst as f64,
            last: Instant::now(),
            strikes: 0,
        }
    }

    pub(crate) fn allow(&mut self, now: Instant) -> bool {
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.last = now;
        self.tokens = (self.tokens + elapsed * self.rate).min(self.burst);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            self.strikes = 0;
            true
        } else {
            self.strikes += 1;
            false
        }
    }

    /// How long since the bucket was last used.
    pub(crate) fn idle_for(&self, now: Instant) -> std::time::Duration {
        now.saturating_duration_since(self.last)
    }

    pub(crate) fn retry_after_ms(&self) -> u32 {
        (((1.0 - self.tokens) / self.rate) * 1000.0).ceil() as u32
    }
}

async fn serve(
    shard: &Rc<Shard>,
    stream: &mut TcpStream,
    codec: &mut Codec,
    session: Rc<SessionHandle>,
    hello_request_id: u64,
) {
    shard.counters().session_opened();
    session.last_heard.set(Instant::now());
    shard.idle.borrow_mut().watch(&session);
    let config = &shard.config;
    session.push_live(Frame {
        request_id: hello_request_id,
        body: Body::Welcome(Welcome {
            user_id: session.user_id,
            device_id: session.device_id,
            session_id: session.session_id,
            node_id: config.node_id,
            protocol_version: 1,
            server_time_ms: chat::now_ms(),
            heartbeat_interval_ms: config.heartbeat_interval.as_millis() as u32,
            max_frame_bytes: config.max_frame_bytes as u32,
        }),
    });
    if let Some(low) = crate::keys::low_on_connect(shard, session.user_id, session.device_id) {
        session.push_live(low);
    }
    glommio::spawn_local(catch_up(shard.clone(), session.clone())).detach();
    let mut rate = RateLimit::new(config);
    // The idle timeout is the shard's wheel (`session::idle`); the loop keeps a timer
    // only while its close handshake lingers.
    let mut linger_until: Option<Instant> = None;
    let mut stop = Some(shard.shutdown.wait());
    // Bytes read since the input was last empty, and the idle read they sized (a wake
    // with no input, e.g. for an ack to send, keeps the size).
    let mut burst = 0usize;
    let mut idle_offer = idle_read_bytes(0);
    loop {
        // Input. Any frame is the device's heartbeat: presence's last seen moves once
        // per batch, not per frame.
        let mut heard = false;
        loop {
            match codec.next_frame() {
                Ok(Some(frame)) => {
                    let now = Instant::now();
                    if !codec.is_closing() {
                        session.last_heard.set(now);
                    }
                    heard = true;
                    if !rate.allow(now) {
                        shard.counters().rate_limited();
                        if rate.strikes > RATE_LIMIT_STRIKES_MAX {
                            session.request_close(CloseCode::RateLimited, "rate limit exceeded");
                            break;
                        }
                        let mut error = ApiError::new(ErrorCode::RateLimited, "slow down")
                            .frame(frame.request_id);
                        if let Body::Error(e) = &mut error.body {
                            e.retry_after_ms = rate.retry_after_ms();
                        }
                        session.push_live(error);
                        continue;
                    }
                    dispatch(shard, &session, frame);
                }
                Ok(None) => break,
                Err(end) => {
                    if let InputEnd::Invalid(..) = end {
                        refuse_input(shard, codec, end);
                    }
                    break;
                }
            }
        }
        if heard {
            session.presence.last_active_ms.set(chat::now_ms());
        }
        // Output.
        for frame in session.take_queued() {
            match codec.send(&frame) {
                Sent::Queued => shard.counters().frame_out(),
                Sent::Closing => break,
                // One oversized answer must not take the frames queued after it with it:
                // its asker gets a typed error instead, and the loop goes on.
                Sent::TooLarge(bytes) => {
                    tracing::warn!(
                        shard = shard.id,
                        bytes,
                        "outbound frame over the frame limit; answered with too_large"
                    );
                    let refusal = ApiError::new(
                        ErrorCode::TooLarge,
                        "the answer is over the frame limit; ask for less (smaller pages)",
                    )
                    .frame(frame.request_id);
                    if codec.send(&refusal) == Sent::Queued {
                        shard.counters().frame_out();
                    }
                }
            }
        }
        if let Some((code, reason)) = session.close.get().filter(|_| !session.closed.get()) {
            codec.close(code, reason);
            session.mark_closed();
        }
        if codec.is_closing() && linger_until.is_none() {
            linger_until = Some(Instant::now() + CLOSE_LINGER);
        }
        if write_all(stream, codec).await.is_err() || codec.is_finished() {
            break;
        }
        // Wait. An idle connection keeps no buffers: they are freed here and the next
        // read offers a small one, sized by the last burst of input (a read that fills
        // it is followed by full-size ones).
        let offered = if codec.release_idle_memory() {
            if burst > 0 {
                idle_offer = idle_read_bytes(std::mem::take(&mut burst));
            }
            idle_offer
        } else {
            READ_BYTES
        };
        let read = stream.read(codec.read_space(offered));
        let queued = async {
            Notified(&session).await;
            Ok(usize::MAX)
        };
        let io = future::or(read, queued);
        let woken = match linger_until {
            Some(deadline) => race(io, deadline, stop.as_mut()).await,
            None => race_stop(io, stop.as_mut()).await,
        };
        match woken {
            Woken::Io(Ok(usize::MAX)) => codec.commit_read(0, offered),
            Woken::Io(Ok(0)) | Woken::Io(Err(_)) => break,
            Woken::Io(Ok(n)) => {
                burst = burst.saturating_add(n);
                codec.commit_read(n, offered);
            }
            Woken::Deadline => break,
            Woken::Shutdown => {
                codec.commit_read(0, offered);
                stop = None;
                session.request_close(CloseCode::GoingAway, "server shutting down");
            }
        }
    }
    session.mark_closed();
    shard.sessions.borrow_mut().remove(&session);
    crate::presence::session_ended(shard, &session);
    shard.counters().session_closed();
}

/// Write everything the codec has queued.
async fn write_all(stream: &mut TcpStream, codec: &mut Codec) -> std::io::Result<()> {
    while !codec.output().is_empty() {
        let n = stream.write(codec.output()).await?;
        if n == 0 {
            return Err(std::io::ErrorKind::WriteZero.into());
        }
        codec.advance_output(n);
    }
    stream.flush().await
}

/// Handle one request frame of an authenticated session.
fn dispatch(shard: &Rc<Shard>, session: &Rc<SessionHandle>, frame: Frame) {
    let request_id = frame.request_id;
    // Both decoders (FlatBuffers, JSON) already validated the frame's limits.
    shard.counters().frame_in();
    match frame.body {
        Body::Ping(ping) => session.push_live(Frame {
            request_id,
            body: Body::Pong(Pong {
                nonce: ping.nonce,
                server_time_ms: chat::now_ms(),
            }),
        }),
        Body::Receipt(receipt) => {
            if let Err(error) = on_receipt(
                shard,
                session,
                receipt.conversation_id,
                receipt.kind,
                receipt.up_to_seq,
            ) {
                session.push_live(error.frame(request_id));
            }
        }
        Body::ConversationListRequest(request) => {
            // 0 (the field's default) means "as many as allowed".
            let limit = match request.limit as usize {
                0 => wire::limits::CONVERSATION_LIST_MAX,
                n => n.min(wire::limits::CONVERSATION_LIST_MAX),
            };
            let (shard, session) = (shard.clone(), session.clone());
            glommio::spawn_local(async move {
                let body = match conversation_list(&shard, &session, limit).await {
                    Ok(list) => Body::ConversationList(list),
                    Err(error) => error.frame(request_id).body,
                };
                session.push_live(Frame { request_id, body });
            })
            .detach();
        }
        Body::SyncRequest(_) => {
            glommio::spawn_local(catch_up(shard.clone(), session.clone())).detach();
        }
        Body::GroupInfoRequest(request) => {
            let (shard, session) = (shard.clone(), session.clone());
            glommio::spawn_local(async move {
                match group_info(&shard, &session, request.conversation_id).await {
                    Ok((info, states)) => {
                        let conversation_id = info.conversation_id;
                        session.push_live(Frame {
                            request_id,
                            body: Body::GroupInfo(info),
                        });
                        // The same request's second answer: every member's receipts.
                        session.push_live(Frame {
                            request_id,
                            body: Body::ReceiptUpdate(ReceiptUpdate {
                                conversation_id,
                                states,
                            }),
                        });
                    }
                    Err(error) => session.push_live(error.frame(request_id)),
                }
            })
            .detach();
        }
        body @ (Body::Send(_)
        | Body::HistoryRequest(_)
        | Body::OpenDirect(_)
        | Body::GroupCreate(_)
        | Body::GroupUpdate(_)
        | Body::KeysUpload(_)
        | Body::KeysFetch(_)
        | Body::MediaPresignRequest(_)
        | Body::MediaDownloadRequest(_)) => {
            let (shard, session) = (shard.clone(), session.clone());
            glommio::spawn_local(async move {
                let answer = match request(&shard, &session, body).await {
                    Ok(body) => Frame { request_id, body },
                    Err(error) => error.frame(request_id),
                };
                session.push_live(answer);
            })
            .detach();
        }
        body @ (Body::PresenceQuery(_) | Body::PresenceSubscribe(_)) => {
            let (user_ids, watch) = match body {
                Body::PresenceSubscribe(s) => (s.user_ids, true),
                Body::PresenceQuery(q) => (q.user_ids, false),
                _ => (Vec::new(), false),
            };
            let (shard, session) = (shard.clone(), session.clone());
            glommio::spawn_local(async move {
                let answer = crate::presence::query_or_subscribe(&shard, &session, user_ids, watch)
                    .await
                    .map_or_else(
                        |e| e.frame(request_id),
                        |update| Frame {
                            request_id,
                            body: Body::PresenceUpdate(update),
                        },
                    );
                session.push_live(answer);
            })
            .detach();
        }
        Body::PresenceUnsubscribe(unsubscribe) => {
            crate::presence::unsubscribe(shard, session, &unsubscribe.user_ids);
            session.push_live(Frame {
                request_id,
                body: Body::PresenceUpdate(wire::message::PresenceUpdate::default()),
            });
        }
        Body::PresenceSet(set) => crate::presence::set_status(shard, session, set.status),
        Body::Typing(typing) => {
            if let Err(error) = crate::presence::typing(shard, session, &typing) {
                session.push_live(error.frame(request_id));
            }
        }
        Body::Hello(_) => session.push_live(
            ApiError::new(ErrorCode::UnexpectedFrame, "already authenticated").frame(request_id),
        ),
        _ => session.push_live(
            ApiError::new(
                ErrorCode::UnexpectedFrame,
                "not supported by this server yet",
            )
            .frame(request_id),
        ),
    }
}

async fn request(
    shard: &Rc<Shard>,
    session: &Rc<SessionHandle>,
    body: Body,
) -> Result<Body, ApiError> {
    match body {
        Body::Send(send) => {
            let ack = send_message(shard, session.user_id, session.device_id, send).await?;
            let conversation_id = ack.conversation_id;
            let floor = shard
                .state(|s| s.delivered_floor(session.user_id, session.device_id, conversation_id));
            session.own_message_acked(conversation_id, ack.seq, floor);
            Ok(Body::Ack(ack))
        }
        Body::HistoryRequest(history) => {
            let conversation_id = history.conversation_id;
            if shard.state(|s| s.membership(session.user_id, conversation_id).is_none()) {
                return Err(ApiError::forbidden());
            }
            let page = history_page(
                shard,
                session.user_id,
                conversation_id,
                history.before_seq,
                history.after_seq,
                history.limit as usize,
            )
            .await?;
            Ok(Body::HistoryPage(page))
        }
        Body::OpenDirect(open) => {
            let (peer, wanted) = if open.peer_user_id != 0 {
                (open.peer_user_id, None)
            } else {
                let name = open.peer_username.as_str();
                (chat::user_id_of(name), Some(name))
            };
            let title = chat::user_name(shard, peer, wanted).await?;
            let (a, b) = (session.user_id, peer);
            let conversation_id = router::direct_conversation_id(a, b);
            let owner = shard.conversation_owner(conversation_id);
            let last_seq = shard
                .call(owner, |reply| ShardMsg::OpenDirect { a, b, reply })
                .await??;
            shard.note_last_seq(conversation_id, last_seq);
            for (user_id, peer_user_id) in [(a, b), (b, a)] {
                let home = shard.user_home(user_id);
                shard
                    .call(home, |reply| ShardMsg::Joined {
                        user_id,
                        conversation_id,
                        peer_user_id,
                        reply,
                    })
                    .await?;
            }
            let conversation = chat::summary(
                shard,
                session.user_id,
                session.device_id,
                conversation_id,
                title,
            );
            Ok(Body::ConversationOpened(ConversationOpened {
                conversation,
            }))
        }
        Body::GroupCreate(create) => {
            let conversation_id = router::conversation::group_conversation_id(
                &mut shard.ids.borrow_mut(),
                chat::now_ms(),
            )
            .map_err(|e| ApiError::unavailable(&format!("group id: {e}")))?;
            let owner = shard.conversation_owner(conversation_id);
            let info = shard
                .call(owner, |reply| ShardMsg::GroupCreate {
                    conversation_id,
                    creator: session.user_id,
                    name: create.name,
                    member_user_ids: create.member_user_ids,
                    reply,
                })
                .await??;
            Ok(Body::GroupInfo(info))
        }
        Body::GroupUpdate(update) => {
            if router::ConversationKind::of(update.conversation_id)
                != router::ConversationKind::Group
            {
                return Err(ApiError::new(ErrorCode::NotFound, "no such group"));
            }
            let owner = shard.conversation_owner(update.conversation_id);
            let info = shard
                .call(owner, |reply| ShardMsg::GroupUpdate {
                    actor: session.user_id,
                    update,
                    reply,
                })
                .await??;
            Ok(Body::GroupInfo(info))
        }
        Body::KeysUpload(upload) => {
            let uploaded =
                crate::keys::upload(shard, session.user_id, session.device_id, upload).await?;
            Ok(Body::KeysUploaded(uploaded))
        }
        Body::KeysFetch(fetch) => Ok(Body::KeyBundle(crate::keys::fetch(shard, fetch).await?)),
        Body::MediaPresignRequest(request) => Ok(Body::MediaPresignResponse(
            crate::media::presign_upload(shard, session.user_id, request).await?,
        )),
        Body::MediaDownloadRequest(request) => Ok(Body::MediaDownloadResponse(
            crate::media::presign_download(shard, session.user_id, request).await?,
        )),
        _ => Err(ApiError::new(
            ErrorCode::UnexpectedFrame,
            "unexpected frame",
        )),
    }
}

/// Send a message as `user_id`'s device `device_id` (on the user's home shard): refuse
/// system kinds and non-members, then append at the conversation's owner.
pub async fn send_message(
    shard: &Rc<Shard>,
    user_id: u64,
    device_id: u64,
    send: wire::message::Send,
) -> Result<wire::message::Ack, ApiError> {
    let conversation_id = send.conversation_id;
    if send.kind == MessageKind::System {
        return Err(ApiError::new(
            ErrorCode::InvalidArgument,
            "system messages are written by the server only",
        ));
    }
    if shard.state(|s| s.membership(user_id, conversation_id).is_none()) {
        return Err(ApiError::forbidden());
    }
    if let Some(media) = &send.media {
        crate::media::check_attachment(shard, media).await?;
    }
    let append = AppendMsg {
        conversation_id,
        sender_user_id: user_id,
        sender_device_id: device_id,
        key: send.idempotency_key.0,
        kind: send.kind,
        body: send.body,
        media: send.media,
        reply_to_seq: send.reply_to_seq,
    };
    let owner = shard.conversation_owner(conversation_id);
    shard
        .call(owner, |reply| ShardMsg::Append { append, reply })
        .await?
}

/// A group's info and receipts, from its owner (which checks membership).
async fn group_info(
    shard: &Rc<Shard>,
    session: &SessionHandle,
    conversation_id: u64,
) -> Result<(wire::message::GroupInfo, Vec<ReceiptState>), ApiError> {
    if router::ConversationKind::of(conversation_id) != router::ConversationKind::Group {
        return Err(ApiError::new(ErrorCode::NotFound, "no such group"));
    }
    let owner = shard.conversation_owner(conversation_id);
    let reader = session.user_id;
    shard
        .call(owner, |reply| ShardMsg::GroupInfo {
            conversation_id,
            reader,
            reply,
        })
        .await?
}

/// The user's conversations with this device's cursors and their titles (peer username
/// or group name): one `Titles` call per shard that holds any of them, all at once.
async fn conversation_list(
    shard: &Rc<Shard>,
    session: &SessionHandle,
    limit: usize,
) -> Result<ConversationList, ApiError> {
    let ids: Vec<u64> = shard.state(|s| {
        s.users.get(&session.user_id).map_or_else(Vec::new, |u| {
            u.conversations.keys().copied().take(limit).collect()
        })
    });
    let mut conversations: Vec<ConversationSummary> = ids
        .into_iter()
        .map(|c| chat::summary(shard, session.user_id, session.device_id, c, String::new()))
        .collect();
    let mut asks: HashMap<usize, (Vec<u64>, Vec<u64>)> = HashMap::new();
    for c in &conversations {
        if c.peer_user_id != 0 {
            let home = shard.user_home(c.peer_user_id);
            asks.entry(home).or_default().0.push(c.peer_user_id);
        } else {
            let owner = shard.conversation_owner(c.conversation_id);
            asks.entry(owner).or_default().1.push(c.conversation_id);
        }
    }
    let calls: Vec<_> = asks
        .into_iter()
        .map(|(to, (users, groups))| {
            let shard = shard.clone();
            glommio::spawn_local(async move {
                shard
                    .call(to, |reply| ShardMsg::Titles {
                        users,
                        groups,
                        reply,
                    })
                    .await
            })
        })
        .collect();
    let (mut users, mut groups) = (HashMap::new(), HashMap::new());
    for call in calls {
        let (u, g) = call.await?;
        users.extend(u);
        groups.extend(g);
    }
    for c in &mut conversations {
        let title = if c.peer_user_id != 0 {
            users.get(&c.peer_user_id)
        } else {
            groups.get(&c.conversation_id)
        };
        if let Some(title) = title {
            c.title.clone_from(title);
        }
    }
    Ok(ConversationList { conversations })
}

/// A history page from the conversation's owner (membership already checked).
pub async fn history_page(
    shard: &Rc<Shard>,
    reader: u64,
    conversation_id: u64,
    before: u64,
    after: u64,
    limit: usize,
) -> Result<HistoryPage, ApiError> {
    let range = match (before, after) {
        (0, 0) => ReadRange::Latest,
        (before, 0) => ReadRange::Before(before),
        (0, after) => ReadRange::After(after),
        _ => {
            return Err(ApiError::new(
                ErrorCode::InvalidArgument,
                "at most one of before and after may be set",
            ))
        }
    };
    let limit = if limit == 0 {
        crate::api::HISTORY_PAGE_DEFAULT
    } else {
        limit.min(wire::limits::HISTORY_PAGE_MESSAGES_MAX)
    };
    let owner = shard.conversation_owner(conversation_id);
    let page = shard
        .call(owner, |reply| ShardMsg::Read {
            conversation_id,
            range,
            limit,
            reader,
            reply,
        })
        .await??;
    Ok(HistoryPage {
        conversation_id,
        messages: page.messages,
        has_more: page.has_more,
    })
}

pub(crate) fn on_receipt(
    shard: &Rc<Shard>,
    session: &Rc<SessionHandle>,
    conversation_id: u64,
    kind: ReceiptKind,
    up_to: u64,
) -> Result<(), ApiError> {
    let (user_id, device_id) = (session.user_id, session.device_id);
    let Some(peer) = shard.state(|s| {
        s.membership(user_id, conversation_id)
            .map(|m| m.peer_user_id)
    }) else {
        return Err(ApiError::forbidden());
    };
    // A device can only acknowledge what exists: clamp to what this connection was sent
    // or the newest sequence this shard has seen.
    let known = session
        .delivery
        .with_existing(|d| d.get(&conversation_id).map(|d| d.upto))
        .flatten()
        .unwrap_or(0)
        .max(shard.last_seq(conversation_id));
    let up_to = up_to.min(known);
    let current = shard.state(|s| s.cursor(user_id, device_id, conversation_id));
    let mut next = current;
    match kind {
        ReceiptKind::Delivered => next.merge(Cursor {
            delivered: up_to,
            read: 0,
        }),
        ReceiptKind::Read => next.merge(Cursor {
            delivered: up_to,
            read: up_to,
        }),
    }
    if next == current {
        return Ok(());
    }
    chat::persist_later(
        shard,
        MetaEvent::Cursor {
            user_id,
            device_id,
            conversation_id,
            delivered: next.delivered,
            read: next.read,
        },
    );
    let state = ReceiptState {
        user_id,
        device_id,
        delivered_seq: next.delivered,
        read_seq: next.read,
    };
    if peer == 0 {
        // A group: the owner aggregates the member's devices and batches the pushes.
        let aggregate = shard.state(|s| {
            let mut all = next;
            if let Some(user) = s.users.get(&user_id) {
                for device in user.devices.values() {
                    if let Some(c) = device.cursors.get(&conversation_id) {
                        all.merge(*c);
                    }
                }
            }
            all
        });
        let owner = shard.conversation_owner(conversation_id);
        let msg = ShardMsg::GroupReceipt {
            conversation_id,
            user_id,
            delivered: aggregate.delivered,
            read: aggregate.read,
        };
        let shard_for_owner = shard.clone();
        glommio::spawn_local(async move { shard_for_owner.route(owner, msg).await }).detach();
    }
    let mut targets = vec![user_id];
    if peer != user_id && peer != 0 {
        targets.push(peer);
    }
    for target in targets {
        let home = shard.user_home(target);
        let msg = ShardMsg::ReceiptPush {
            user_id: target,
            conversation_id,
            state: state.clone(),
        };
        let shard = shard.clone();
        glommio::spawn_local(async move { shard.route(home, msg).await }).detach();
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message(seq: u64, body: usize) -> StoredMessage {
        StoredMessage {
            seq,
            body: vec![0; body],
            ..StoredMessage::default()
        }
    }

    #[test]
    fn sync_chunks_split_by_bytes_and_count() {
        let small: Vec<_> = (1..=1200).map(|s| message(s, 10)).collect();
        let chunks = sync_chunks(small);
        assert_eq!(chunks.len(), 3);
        assert!(chunks
            .iter()
            .all(|c| c.len() <= wire::limits::SYNC_BATCH_MESSAGES_MAX));
        let big: Vec<_> = (1..=20).map(|s| message(s, 64 * 1024)).collect();
        let chunks = sync_chunks(big);
        assert!(chunks
            .iter()
            .all(|c| c.len() * 64 * 1024 <= SYNC_BATCH_BODY_BYTES));
        let seqs: Vec<u64> = chunks.into_iter().flatten().map(|m| m.seq).collect();
        assert_eq!(seqs, (1..=20).collect::<Vec<_>>(), "order kept");
    }

    #[test]
    fn slow_consumer_queue_overflow_requests_4008() {
        let session = SessionHandle::new(1, 1, 1, 2);
        let frame = Frame {
            request_id: 0,
            body: Body::Pong(Pong::default()),
        };
        session.push_live(frame.clone());
        session.push_live(frame.clone());
        assert!(!session.is_closed());
        session.push_live(frame);
        assert_eq!(
            session.close.get().map(|c| c.0),
            Some(CloseCode::SlowConsumer)
        );
        assert!(
            session.queue.borrow().is_empty(),
            "queue dropped, not grown"
        );
    }

    #[test]
    fn rate_limit_refills_over_time() {
        let start = Instant::now();
        let mut rate = RateLimit {
            tokens: 2.0,
            rate: 10.0,
            burst: 2.0,
            last: start,
            strikes: 0,
        };
        assert!(rate.allow(start));
        assert!(rate.allow(start));
        assert!(!rate.allow(start));
        assert_eq!(rate.strikes, 1);
        assert!(rate.retry_after_ms() > 0);
        assert!(rate.allow(start + std::time::Duration::from_millis(150)));
        assert_eq!(rate.strikes, 0);
    }
}

#[cfg(test)]
mod handle_size {
    use super::SessionHandle;

    /// Every idle connection holds one `Rc<SessionHandle>`: its counts and the handle must
    /// fit the allocator's 256-byte size class (it was 512 with the presence sets and the
    /// delivery map inline; `docs/architecture.md`, per-connection budget).
    #[test]
    fn an_idle_session_handle_fits_256_bytes_with_its_rc_counts() {
        let rc_counts = 2 * std::mem::size_of::<usize>();
        let size = std::mem::size_of::<SessionHandle>() + rc_counts;
        assert!(size <= 256, "Rc<SessionHandle> takes {size} bytes");
    }
}
