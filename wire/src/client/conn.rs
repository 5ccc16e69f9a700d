//! One socket session: WebSocket or raw TCP, `Hello`/`Welcome`, requests and pushes.

use std::collections::VecDeque;
use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream, ToSocketAddrs};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use super::{connect_stream, host_header, http, ClientError, CLIENT_NAME, DEFAULT_TIMEOUT};
use crate::error::{HandshakeError, WireError};
use crate::message::{
    self, Ack, Body, ConversationListRequest, ConversationSummary, Frame, GroupCreate, GroupInfo,
    GroupInfoRequest, GroupUpdate, Hello, HistoryPage, HistoryRequest, IdempotencyKey, MessageKind,
    OpenDirect, Ping, Pong, Receipt, ReceiptKind, ReceiptState, Send, StoredMessage, SyncBatch,
    SyncRequest, Welcome,
};
use crate::tcp_frame::{self, TcpFrameDecoder};
use crate::ws::{ClientHandshake, CloseCode, Event, Subprotocol, WsCodec, WsConfig};
use crate::{json, limits};

/// Most bytes read from the socket at a time.
const READ_CHUNK_BYTES: usize = 64 * 1024;
/// The first read buffer of a connection. It doubles (up to [`READ_CHUNK_BYTES`]) each time
/// a read fills it, so a busy connection soon reads in large chunks while an idle one —
/// a load generator holds tens of thousands per process — keeps a small one.
const READ_CHUNK_BYTES_MIN: usize = 2 * 1024;

/// How long [`Connection::close`] waits for the server's close echo at most.
const CLOSE_WAIT: Duration = Duration::from_secs(2);

/// Close code reported for a WebSocket that ended without a close frame (RFC 6455 §7.1.5).
const WS_ABNORMAL_CLOSURE: u16 = 1006;
/// Close code reported for a close frame without a status code (RFC 6455 §7.1.5).
const WS_NO_STATUS: u16 = 1005;
/// Close code reported for a raw-TCP connection that ended.
const TCP_ENDED: u16 = 0;

/// How a [`Connection`] reaches the server.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Transport {
    /// WebSocket on `/ws`, subprotocol `confab.v1`: FlatBuffers in binary messages.
    WsBinary,
    /// WebSocket on `/ws`, subprotocol `confab.v1.json`: JSON in text messages.
    WsJson,
    /// Raw TCP: u32 little-endian length, then a FlatBuffers frame.
    Tcp,
}

impl Transport {
    /// The WebSocket transport, JSON or binary.
    pub fn ws(json: bool) -> Transport {
        if json {
            Transport::WsJson
        } else {
            Transport::WsBinary
        }
    }
}

enum Codec {
    Ws { codec: WsCodec, json: bool },
    Tcp { decoder: TcpFrameDecoder },
}

/// A blocking client session with a Confab server.
///
/// Frames the server pushes (`Deliver`, `SyncBatch`, `ReceiptUpdate`...) and answers that
/// arrive while [`call`](Connection::call) waits for another request's answer are kept in
/// an inbox, in arrival order; [`recv`](Connection::recv) returns the inbox first, then
/// reads the socket. WebSocket pings are answered as they are read.
///
/// Once the session ends (a close frame, EOF, a broken stream), every further read
/// returns [`ClientError::Closed`] with the same code (frames already in the inbox are
/// still returned first).
pub struct Connection {
    stream: TcpStream,
    transport: Transport,
    codec: Codec,
    peer: SocketAddr,
    next_request_id: u64,
    inbox: VecDeque<Frame>,
    closed: Option<(u16, String)>,
    welcome: Option<Welcome>,
    timeout: Duration,
    chunk: Vec<u8>,
    last_sent: Instant,
}

impl std::fmt::Debug for Connection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Connection")
            .field("peer", &self.peer)
            .field("transport", &self.transport)
            .field("next_request_id", &self.next_request_id)
            .field("inbox", &self.inbox.len())
            .field("closed", &self.closed)
            .finish_non_exhaustive()
    }
}

/// What one poll of the WebSocket codec produced (short-lived: the size is fine).
#[allow(clippy::large_enum_variant)]
enum Polled {
    Frame(Result<Frame, ClientError>),
    Control,
    Closed(u16, String),
    Failed(WireError),
    Nothing,
}

impl Connection {
    /// Connect over `transport`, send `Hello{token}` and wait for `Welcome`. The catch-up
    /// that follows `Welcome` is left to read ([`sync_until_live`]).
    pub fn connect(
        addr: impl ToSocketAddrs,
        transport: Transport,
        token: &str,
    ) -> Result<(Connection, Welcome), ClientError> {
        let mut conn = Connection::open(addr, transport)?;
        let welcome = conn.hello(token)?;
        Ok((conn, welcome))
    }

    /// WebSocket session on `/ws` (`confab.v1.json` if `json`, else `confab.v1`).
    pub fn connect_ws(
        addr: impl ToSocketAddrs,
        json: bool,
        token: &str,
    ) -> Result<(Connection, Welcome), ClientError> {
        Connection::connect(addr, Transport::ws(json), token)
    }

    /// Raw-TCP session (the server's TCP port).
    pub fn connect_tcp(
        addr: impl ToSocketAddrs,
        token: &str,
    ) -> Result<(Connection, Welcome), ClientError> {
        Connection::connect(addr, Transport::Tcp, token)
    }

    /// Connect (and, for WebSocket, upgrade) without saying `Hello`: for tests of what
    /// the server does before or instead of one. Follow with [`hello`](Connection::hello).
    /// A refused upgrade is [`ClientError::Http`] (or `Api`) with the refusal's status.
    pub fn open(addr: impl ToSocketAddrs, transport: Transport) -> Result<Connection, ClientError> {
        let timeout = DEFAULT_TIMEOUT;
        let mut stream = connect_stream(addr, timeout)?;
        stream.set_nodelay(true)?;
        let peer = stream.peer_addr()?;
        let codec = match transport {
            Transport::Tcp => Codec::Tcp {
                decoder: TcpFrameDecoder::new(limits::FRAME_BYTES_MAX),
            },
            Transport::WsBinary | Transport::WsJson => {
                let json = transport == Transport::WsJson;
                let codec = ws_handshake(&mut stream, peer, json, Instant::now() + timeout)?;
                Codec::Ws { codec, json }
            }
        };
        Ok(Connection {
            stream,
            transport,
            codec,
            peer,
            next_request_id: 1,
            inbox: VecDeque::new(),
            closed: None,
            welcome: None,
            timeout,
            chunk: vec![0; READ_CHUNK_BYTES_MIN],
            last_sent: Instant::now(),
        })
    }

    /// Send `Hello{token}` and wait for `Welcome`. A refused token is
    /// [`ClientError::ServerError`] (`Unauthenticated`) or, if the server closes first,
    /// [`ClientError::Closed`].
    pub fn hello(&mut self, token: &str) -> Result<Welcome, ClientError> {
        let hello = Body::Hello(Hello {
            token: token.to_string(),
            client: CLIENT_NAME.to_string(),
            protocol_version: 1,
        });
        match self.call(hello, self.timeout)?.body {
            Body::Welcome(welcome) => {
                self.welcome = Some(welcome.clone());
                Ok(welcome)
            }
            Body::Redirect(redirect) => Err(ClientError::Redirect {
                address: redirect.address,
                node_id: redirect.node_id,
            }),
            other => Err(unexpected("welcome", &other)),
        }
    }

    /// [`Connection::connect`], following cluster redirects (at most
    /// [`REDIRECTS_MAX`]) to the user's home node.
    pub fn connect_following(
        addr: SocketAddr,
        transport: Transport,
        token: &str,
    ) -> Result<(Connection, Welcome), ClientError> {
        let mut addr = addr;
        for _ in 0..REDIRECTS_MAX {
            match Connection::connect(addr, transport, token) {
                Err(ClientError::Redirect { address, .. }) => {
                    addr = redirect_target(&address)?;
                }
                other => return other,
            }
        }
        Err(ClientError::Protocol(format!(
            "more than {REDIRECTS_MAX} redirects"
        )))
    }

    // ----- accessors --------------------------------------------------------------------

    pub fn transport(&self) -> Transport {
        self.transport
    }

    /// The server's address (what a reconnect dials).
    pub fn peer_addr(&self) -> SocketAddr {
        self.peer
    }

    /// The `Welcome` of this session, once [`hello`](Connection::hello) succeeded.
    pub fn welcome(&self) -> Option<&Welcome> {
        self.welcome.as_ref()
    }

    /// The close code and reason, once the session has ended.
    pub fn closed(&self) -> Option<(u16, &str)> {
        self.closed
            .as_ref()
            .map(|(code, reason)| (*code, reason.as_str()))
    }

    /// The timeout of `hello`, writes, and the typed request helpers.
    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    pub fn set_timeout(&mut self, timeout: Duration) -> Result<(), ClientError> {
        self.timeout = timeout.max(Duration::from_millis(1));
        self.stream.set_write_timeout(Some(self.timeout))?;
        Ok(())
    }

    /// When a frame was last written (for heartbeats).
    pub fn last_sent(&self) -> Instant {
        self.last_sent
    }

    /// Frames received but not yet returned by `recv`.
    pub fn inbox_len(&self) -> usize {
        self.inbox.len()
    }

    /// Remove and return every frame in the inbox (e.g. before dropping a broken
    /// connection, so nothing received is lost).
    pub fn take_inbox(&mut self) -> Vec<Frame> {
        self.inbox.drain(..).collect()
    }

    /// The socket itself, for tests that write raw bytes. Writing into the middle of the
    /// codec's framing breaks the session, which is usually the point.
    pub fn raw_stream(&mut self) -> &mut TcpStream {
        &mut self.stream
    }

    // ----- sending ----------------------------------------------------------------------

    /// Send one frame as it is (its request id included).
    pub fn send_frame(&mut self, frame: &Frame) -> Result<(), ClientError> {
        if let Some((code, reason)) = &self.closed {
            return Err(ClientError::Closed {
                code: *code,
                reason: reason.clone(),
            });
        }
        match &mut self.codec {
            Codec::Ws { codec, json: true } => codec
                .send_text(&json::to_json(frame))
                .map_err(WireError::from)?,
            Codec::Ws { codec, json: false } => codec
                .send_binary(&message::to_flatbuffers(frame))
                .map_err(WireError::from)?,
            Codec::Tcp { .. } => {
                let mut out = Vec::new();
                tcp_frame::encode(&message::to_flatbuffers(frame), &mut out)
                    .map_err(WireError::from)?;
                self.stream.write_all(&out)?;
            }
        }
        self.flush()?;
        self.last_sent = Instant::now();
        Ok(())
    }

    /// Send `body` under a fresh request id (increasing from 1) and return the id.
    pub fn request(&mut self, body: Body) -> Result<u64, ClientError> {
        let request_id = self.next_request_id;
        self.next_request_id += 1;
        self.send_frame(&Frame { request_id, body })?;
        Ok(request_id)
    }

    /// Send `body` and wait up to `timeout` for the frame answering it (the first one with
    /// its request id). An `Error` answer is [`ClientError::ServerError`]. Frames that
    /// arrive meanwhile stay in the inbox, in order.
    pub fn call(&mut self, body: Body, timeout: Duration) -> Result<Frame, ClientError> {
        let request_id = self.request(body)?;
        match self.recv_where(timeout, |frame| frame.request_id == request_id)? {
            None => Err(ClientError::Timeout),
            Some(Frame {
                body: Body::Error(error),
                ..
            }) => Err(ClientError::ServerError(error)),
            Some(frame) => Ok(frame),
        }
    }

    /// `OpenDirect{peer_user_id}`: the 1:1 conversation with that user (created on first
    /// use).
    pub fn open_direct(&mut self, peer_user_id: u64) -> Result<ConversationSummary, ClientError> {
        self.open_direct_with(OpenDirect {
            peer_user_id,
            peer_username: String::new(),
        })
    }

    /// `OpenDirect{peer_username}`.
    pub fn open_direct_by_name(
        &mut self,
        peer_username: &str,
    ) -> Result<ConversationSummary, ClientError> {
        self.open_direct_with(OpenDirect {
            peer_user_id: 0,
            peer_username: peer_username.to_string(),
        })
    }

    fn open_direct_with(&mut self, open: OpenDirect) -> Result<ConversationSummary, ClientError> {
        match self.call(Body::OpenDirect(open), self.timeout)?.body {
            Body::ConversationOpened(opened) => Ok(opened.conversation),
            other => Err(unexpected("conversation_opened", &other)),
        }
    }

    /// Send a chat message and wait for its `Ack` (the message is durable). Reuse `key`
    /// to retry the same message: see [`new_key`](super::new_key).
    pub fn send_message(
        &mut self,
        conversation_id: u64,
        body: &[u8],
        key: IdempotencyKey,
    ) -> Result<Ack, ClientError> {
        self.send(Send {
            conversation_id,
            idempotency_key: key,
            kind: MessageKind::Chat,
            body: body.to_vec(),
            media: None,
            reply_to_seq: 0,
        })
    }

    /// Send any `Send` (media, replies, encrypted kinds) and wait for its `Ack`.
    pub fn send(&mut self, send: Send) -> Result<Ack, ClientError> {
        match self.call(Body::Send(send), self.timeout)?.body {
            Body::Ack(ack) => Ok(ack),
            other => Err(unexpected("ack", &other)),
        }
    }

    /// Send a receipt (moves this device's cursor up to `up_to_seq`). The server answers
    /// only on failure, with an `Error` carrying the returned request id (it then shows
    /// up in `recv`).
    pub fn receipt(
        &mut self,
        conversation_id: u64,
        kind: ReceiptKind,
        up_to_seq: u64,
    ) -> Result<u64, ClientError> {
        self.request(Body::Receipt(Receipt {
            conversation_id,
            kind,
            up_to_seq,
        }))
    }

    /// `HistoryRequest`: at most one of `before_seq`/`after_seq` non-zero.
    pub fn history(
        &mut self,
        conversation_id: u64,
        before_seq: u64,
        after_seq: u64,
        limit: u32,
    ) -> Result<HistoryPage, ClientError> {
        let request = HistoryRequest {
            conversation_id,
            before_seq,
            after_seq,
            limit,
        };
        match self.call(Body::HistoryRequest(request), self.timeout)?.body {
            Body::HistoryPage(page) => Ok(page),
            other => Err(unexpected("history_page", &other)),
        }
    }

    /// `KeysUpload`: publish this device's end-to-end encryption keys; answered with the
    /// size of its one-time key pool.
    pub fn keys_upload(&mut self, upload: message::KeysUpload) -> Result<u32, ClientError> {
        match self.call(Body::KeysUpload(upload), self.timeout)?.body {
            Body::KeysUploaded(uploaded) => Ok(uploaded.one_time_keys_remaining),
            other => Err(unexpected("keys_uploaded", &other)),
        }
    }

    /// `KeysFetch`: claim a key bundle for every device of `user_id` (or one device):
    /// each bundle takes one one-time key out of that device's pool.
    pub fn keys_fetch(
        &mut self,
        user_id: u64,
        device_id: u64,
    ) -> Result<message::KeyBundle, ClientError> {
        let fetch = message::KeysFetch { user_id, device_id };
        match self.call(Body::KeysFetch(fetch), self.timeout)?.body {
            Body::KeyBundle(bundle) => Ok(bundle),
            other => Err(unexpected("key_bundle", &other)),
        }
    }

    /// `MediaPresignRequest`: an upload URL for this content, or (`exists`) its media
    /// reference at once when the server already has it.
    pub fn media_presign(
        &mut self,
        sha256: [u8; 32],
        size: u64,
        content_type: &str,
    ) -> Result<message::MediaPresignResponse, ClientError> {
        let request = message::MediaPresignRequest {
            sha256: message::Sha256(sha256),
            size,
            content_type: content_type.to_string(),
        };
        match self
            .call(Body::MediaPresignRequest(request), self.timeout)?
            .body
        {
            Body::MediaPresignResponse(answer) => Ok(answer),
            other => Err(unexpected("media_presign_response", &other)),
        }
    }

    /// `MediaDownloadRequest`: a signed download URL for the media of message `seq`.
    pub fn media_download_url(
        &mut self,
        conversation_id: u64,
        seq: u64,
    ) -> Result<message::MediaDownloadResponse, ClientError> {
        let request = message::MediaDownloadRequest {
            conversation_id,
            seq,
        };
        match self
            .call(Body::MediaDownloadRequest(request), self.timeout)?
            .body
        {
            Body::MediaDownloadResponse(answer) => Ok(answer),
            other => Err(unexpected("media_download_response", &other)),
        }
    }

    /// `GroupCreate`: a new group with this user as owner and `member_user_ids` as
    /// members; answered with its `GroupInfo`.
    pub fn create_group(
        &mut self,
        name: &str,
        member_user_ids: &[u64],
    ) -> Result<GroupInfo, ClientError> {
        let create = GroupCreate {
            name: name.to_string(),
            member_user_ids: member_user_ids.to_vec(),
        };
        match self.call(Body::GroupCreate(create), self.timeout)?.body {
            Body::GroupInfo(info) => Ok(info),
            other => Err(unexpected("group_info", &other)),
        }
    }

    /// `GroupUpdate` (rename, add/remove members, leave, set a role); answered with the
    /// group's `GroupInfo` after the change.
    pub fn update_group(&mut self, update: GroupUpdate) -> Result<GroupInfo, ClientError> {
        match self.call(Body::GroupUpdate(update), self.timeout)?.body {
            Body::GroupInfo(info) => Ok(info),
            other => Err(unexpected("group_info", &other)),
        }
    }

    /// `GroupInfoRequest`: the group's info, then (a second answer to the same request)
    /// every member's delivered/read position — who has received or read a message.
    pub fn group_info(
        &mut self,
        conversation_id: u64,
    ) -> Result<(GroupInfo, Vec<ReceiptState>), ClientError> {
        let request = Body::GroupInfoRequest(GroupInfoRequest { conversation_id });
        let info = match self.call(request, self.timeout)? {
            Frame {
                body: Body::GroupInfo(info),
                request_id,
            } => (info, request_id),
            other => return Err(unexpected("group_info", &other.body)),
        };
        let (info, request_id) = info;
        match self.recv_where(self.timeout, |f| f.request_id == request_id)? {
            Some(Frame {
                body: Body::ReceiptUpdate(update),
                ..
            }) => Ok((info, update.states)),
            Some(other) => Err(unexpected("receipt_update", &other.body)),
            None => Err(ClientError::Timeout),
        }
    }

    /// `ConversationListRequest`: this user's conversations with this device's cursors.
    pub fn conversations(&mut self, limit: u32) -> Result<Vec<ConversationSummary>, ClientError> {
        let request = Body::ConversationListRequest(ConversationListRequest { limit });
        match self.call(request, self.timeout)?.body {
            Body::ConversationList(list) => Ok(list.conversations),
            other => Err(unexpected("conversation_list", &other)),
        }
    }

    /// `SyncRequest`: ask for another catch-up; read it with [`sync_until_live`]. Returns
    /// the request id.
    pub fn sync_request(&mut self, limit: u32) -> Result<u64, ClientError> {
        self.request(Body::SyncRequest(SyncRequest { limit }))
    }

    /// The application heartbeat: `Ping` → `Pong`.
    pub fn ping(&mut self) -> Result<Pong, ClientError> {
        let ping = Body::Ping(Ping {
            nonce: self.next_request_id,
            client_time_ms: unix_ms(),
        });
        match self.call(ping, self.timeout)?.body {
            Body::Pong(pong) => Ok(pong),
            other => Err(unexpected("pong", &other)),
        }
    }

    /// End the session: WebSocket close 1000 (waiting briefly for the server's echo),
    /// or a TCP shutdown. Frames still unread are dropped.
    pub fn close(mut self) -> Result<(), ClientError> {
        if self.closed.is_none() {
            if let Codec::Ws { codec, .. } = &mut self.codec {
                codec
                    .close(CloseCode::Normal, "")
                    .map_err(WireError::from)?;
                self.flush()?;
                let deadline = Instant::now() + self.timeout.min(CLOSE_WAIT);
                // Until the echo (an Err(Closed)), EOF, an error, or the deadline.
                while let Ok(Some(_)) = self.read_frame(deadline) {}
            }
        }
        match self.stream.shutdown(Shutdown::Both) {
            Err(e) if e.kind() != ErrorKind::NotConnected => Err(e.into()),
            _ => Ok(()),
        }
    }

    // ----- receiving --------------------------------------------------------------------

    /// The next frame: from the inbox, else from the socket within `timeout`. `Ok(None)`
    /// on timeout (a zero timeout only takes what has already arrived).
    pub fn recv(&mut self, timeout: Duration) -> Result<Option<Frame>, ClientError> {
        if let Some(frame) = self.inbox.pop_front() {
            return Ok(Some(frame));
        }
        self.read_frame(Instant::now() + timeout)
    }

    /// The first frame `wanted` accepts: from the inbox, else from the socket within
    /// `timeout`. Frames it does not accept stay in the inbox, in order.
    pub fn recv_where(
        &mut self,
        timeout: Duration,
        mut wanted: impl FnMut(&Frame) -> bool,
    ) -> Result<Option<Frame>, ClientError> {
        if let Some(at) = self.inbox.iter().position(&mut wanted) {
            return Ok(self.inbox.remove(at));
        }
        let deadline = Instant::now() + timeout;
        loop {
            match self.read_frame(deadline)? {
                None => return Ok(None),
                Some(frame) if wanted(&frame) => return Ok(Some(frame)),
                Some(frame) => self.inbox.push_back(frame),
            }
        }
    }

    /// The next frame from the socket (not the inbox), `Ok(None)` at the deadline.
    fn read_frame(&mut self, deadline: Instant) -> Result<Option<Frame>, ClientError> {
        let mut looked_without_waiting = false;
        loop {
            let frame = self.poll_codec();
            // Pongs and close echoes queued by the codec go out at once.
            self.flush()?;
            if let Some(frame) = frame? {
                return Ok(Some(frame));
            }
            let remaining = deadline.saturating_duration_since(Instant::now());
            let result = if remaining.is_zero() {
                if looked_without_waiting {
                    return Ok(None);
                }
                looked_without_waiting = true;
                read_now(&self.stream, &mut self.chunk)
            } else {
                self.stream.set_read_timeout(Some(remaining))?;
                self.stream.read(&mut self.chunk)
            };
            match result {
                Ok(0) => return Err(self.ended("connection closed by the server".into())),
                Ok(n) => {
                    let bytes = self.chunk.get(..n).unwrap_or_default();
                    match &mut self.codec {
                        Codec::Ws { codec, .. } => codec.feed(bytes),
                        Codec::Tcp { decoder } => decoder.feed(bytes),
                    }
                    if n == self.chunk.len() && n < READ_CHUNK_BYTES {
                        self.chunk.resize((n * 2).min(READ_CHUNK_BYTES), 0);
                    }
                }
                Err(e)
                    if matches!(
                        e.kind(),
                        ErrorKind::WouldBlock | ErrorKind::TimedOut | ErrorKind::Interrupted
                    ) => {}
                Err(e)
                    if matches!(
                        e.kind(),
                        ErrorKind::ConnectionReset | ErrorKind::ConnectionAborted
                    ) =>
                {
                    return Err(self.ended(e.to_string()))
                }
                Err(e) => return Err(e.into()),
            }
        }
    }

    /// The next complete frame already buffered.
    fn poll_codec(&mut self) -> Result<Option<Frame>, ClientError> {
        loop {
            if let Some((code, reason)) = &self.closed {
                return Err(ClientError::Closed {
                    code: *code,
                    reason: reason.clone(),
                });
            }
            let polled = match &mut self.codec {
                Codec::Ws { codec, json } => poll_ws(codec, *json),
                Codec::Tcp { decoder } => match decoder.poll() {
                    Ok(Some(bytes)) => {
                        Polled::Frame(message::from_flatbuffers(bytes).map_err(Into::into))
                    }
                    Ok(None) => Polled::Nothing,
                    Err(e) => Polled::Failed(e),
                },
            };
            match polled {
                Polled::Frame(frame) => return frame.map(Some),
                Polled::Control => continue,
                Polled::Nothing => return Ok(None),
                Polled::Closed(code, reason) => {
                    // Our echo is queued: send it before reporting the close.
                    let _ = self.flush();
                    self.closed = Some((code, reason.clone()));
                    return Err(ClientError::Closed { code, reason });
                }
                Polled::Failed(error) => {
                    // The WebSocket codec queued a close with the matching code.
                    let _ = self.flush();
                    let code = match self.transport {
                        Transport::Tcp => TCP_ENDED,
                        Transport::WsBinary | Transport::WsJson => error.close_code().as_u16(),
                    };
                    self.closed = Some((code, error.to_string()));
                    return Err(error.into());
                }
            }
        }
    }

    /// Write whatever the WebSocket codec has queued.
    fn flush(&mut self) -> Result<(), ClientError> {
        if let Codec::Ws { codec, .. } = &mut self.codec {
            let out = codec.output();
            if !out.is_empty() {
                let n = out.len();
                self.stream.write_all(out)?;
                codec.advance_output(n);
            }
        }
        Ok(())
    }

    /// The stream ended without a close frame: remember it and report it.
    fn ended(&mut self, reason: String) -> ClientError {
        let code = match self.transport {
            Transport::Tcp => TCP_ENDED,
            Transport::WsBinary | Transport::WsJson => WS_ABNORMAL_CLOSURE,
        };
        self.closed = Some((code, reason.clone()));
        ClientError::Closed { code, reason }
    }
}

/// Read what `stream` already has into `buf`, without waiting (`WouldBlock` if nothing):
/// `recv(2)` with `MSG_DONTWAIT` is one system call, where switching the socket to
/// non-blocking and back around a read is three; load generators and bots polling many
/// connections make this call once or twice per readiness.
fn read_now(stream: &TcpStream, buf: &mut [u8]) -> std::io::Result<usize> {
    use std::os::fd::AsRawFd;
    // SAFETY: a valid socket descriptor and a writable buffer of the given length.
    let n = unsafe {
        libc::recv(
            stream.as_raw_fd(),
            buf.as_mut_ptr().cast(),
            buf.len(),
            libc::MSG_DONTWAIT,
        )
    };
    if n < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(n as usize)
}

fn poll_ws(codec: &mut WsCodec, json: bool) -> Polled {
    match codec.poll() {
        Ok(Some(Event::Binary(bytes))) if !json => {
            Polled::Frame(message::from_flatbuffers(bytes).map_err(Into::into))
        }
        Ok(Some(Event::Text(text))) if json => {
            Polled::Frame(json::from_json(text).map_err(Into::into))
        }
        Ok(Some(Event::Binary(_))) => Polled::Frame(Err(ClientError::Protocol(
            "binary message on the confab.v1.json subprotocol".into(),
        ))),
        Ok(Some(Event::Text(_))) => Polled::Frame(Err(ClientError::Protocol(
            "text message on the confab.v1 subprotocol".into(),
        ))),
        // The codec queued the pong itself.
        Ok(Some(Event::Ping(_) | Event::Pong(_))) => Polled::Control,
        Ok(Some(Event::Close(Some(frame)))) => {
            Polled::Closed(frame.code.as_u16(), frame.reason.to_string())
        }
        Ok(Some(Event::Close(None))) => Polled::Closed(WS_NO_STATUS, String::new()),
        Ok(None) => Polled::Nothing,
        Err(e) => Polled::Failed(e),
    }
}

/// The client side of the opening handshake: the codec to use afterwards, already fed
/// with any bytes that followed the 101 response.
fn ws_handshake(
    stream: &mut TcpStream,
    peer: SocketAddr,
    json: bool,
    deadline: Instant,
) -> Result<WsCodec, ClientError> {
    let protocol = if json {
        Subprotocol::Json
    } else {
        Subprotocol::Binary
    };
    let mut request = Vec::new();
    let handshake = ClientHandshake::new(&host_header(peer), "/ws", &[protocol], &mut request);
    stream.write_all(&request)?;
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        match handshake.parse_response(&buf) {
            Ok(Some((_, head_len))) => {
                let mut codec = WsCodec::client(WsConfig::default());
                codec.feed(buf.get(head_len..).unwrap_or_default());
                return Ok(codec);
            }
            Ok(None) => {}
            Err(HandshakeError::NotSwitching(status)) => {
                // A refusal: read it whole for its reason.
                let refusal = http::read_response(stream, buf, deadline, false);
                return Err(match refusal {
                    Ok(response) => match response.error_for_status() {
                        Err(error) => error,
                        Ok(response) => ClientError::Http {
                            status: response.status,
                            body: response.text(),
                        },
                    },
                    Err(_) => ClientError::Http {
                        status,
                        body: String::new(),
                    },
                });
            }
            Err(e) => return Err(ClientError::Handshake(e)),
        }
        let remaining = deadline.saturating_duration_since(Instant::now());
        if remaining.is_zero() {
            return Err(ClientError::Timeout);
        }
        stream.set_read_timeout(Some(remaining))?;
        match stream.read(&mut chunk) {
            Ok(0) => {
                return Err(ClientError::Io(std::io::Error::new(
                    ErrorKind::UnexpectedEof,
                    "connection closed during the websocket handshake",
                )))
            }
            Ok(n) => buf.extend_from_slice(chunk.get(..n).unwrap_or_default()),
            Err(e)
                if matches!(
                    e.kind(),
                    ErrorKind::WouldBlock | ErrorKind::TimedOut | ErrorKind::Interrupted
                ) => {}
            Err(e) => return Err(e.into()),
        }
    }
}

/// Redirects [`Connection::connect_following`] follows before giving up.
pub const REDIRECTS_MAX: usize = 3;

/// The socket address of a Redirect's `address` (`host:port` or `ws://host:port/ws`).
pub fn redirect_target(address: &str) -> Result<SocketAddr, ClientError> {
    let host_port = address
        .strip_prefix("ws://")
        .map_or(address, |rest| rest.split('/').next().unwrap_or(rest));
    host_port
        .parse()
        .map_err(|_| ClientError::Protocol(format!("bad redirect address {address:?}")))
}

fn unexpected(wanted: &str, got: &Body) -> ClientError {
    ClientError::Protocol(format!("expected {wanted}, got {}", got.type_name()))
}

fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// Read the catch-up: `SyncBatch` frames (whatever their request id) until one with
/// `has_more == false`, all within `timeout`; their messages and receipts, merged in
/// order. Other frames stay in the inbox.
pub fn catch_up(conn: &mut Connection, timeout: Duration) -> Result<SyncBatch, ClientError> {
    let deadline = Instant::now() + timeout;
    let mut all = SyncBatch::default();
    loop {
        let remaining = deadline.saturating_duration_since(Instant::now());
        let frame = conn.recv_where(remaining, |f| matches!(f.body, Body::SyncBatch(_)))?;
        match frame.map(|f| f.body) {
            None => return Err(ClientError::Timeout),
            Some(Body::SyncBatch(batch)) => {
                all.messages.extend(batch.messages);
                all.receipts.extend(batch.receipts);
                if !batch.has_more {
                    return Ok(all);
                }
            }
            Some(other) => return Err(unexpected("sync_batch", &other)),
        }
    }
}

/// [`catch_up`], keeping only the messages: everything missed, per conversation in
/// sequence order. The device is live afterwards.
pub fn sync_until_live(
    conn: &mut Connection,
    timeout: Duration,
) -> Result<Vec<StoredMessage>, ClientError> {
    Ok(catch_up(conn, timeout)?.messages)
}

#[cfg(test)]
mod tests {
    use super::super::test_peer::{self, chat, Peer, PeerEvent};
    use super::*;
    use crate::message::{AckStatus, Deliver, ErrorCode, ReceiptUpdate};
    use std::net::TcpListener;

    const KEY: IdempotencyKey = IdempotencyKey([7; 16]);

    /// Hello/Welcome, catch-up, a call with pushes arriving before its answer, history,
    /// ping, timeout, close: one session per transport.
    fn session_scenario(transport: Transport) {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let server = std::thread::spawn(move || {
            let mut peer = Peer::accept(&listener, transport);
            let hello = peer.hello(7);
            assert_eq!(hello.request_id, 1);
            peer.send(&[
                Frame {
                    request_id: 0,
                    body: Body::SyncBatch(SyncBatch {
                        messages: vec![chat(1, 1)],
                        receipts: vec![],
                        has_more: true,
                    }),
                },
                Frame {
                    request_id: 0,
                    body: Body::SyncBatch(SyncBatch {
                        messages: vec![chat(1, 2), chat(2, 1)],
                        receipts: vec![],
                        has_more: false,
                    }),
                },
            ]);
            let send = peer.recv();
            let Body::Send(body) = &send.body else {
                panic!("{send:?}")
            };
            assert_eq!((body.idempotency_key, &body.body[..]), (KEY, &b"hi"[..]));
            peer.send(&[
                Frame {
                    request_id: 0,
                    body: Body::Deliver(Deliver {
                        message: chat(1, 3),
                    }),
                },
                Frame {
                    request_id: 0,
                    body: Body::ReceiptUpdate(ReceiptUpdate {
                        conversation_id: 1,
                        states: vec![],
                    }),
                },
                Frame {
                    request_id: send.request_id,
                    body: Body::Ack(Ack {
                        conversation_id: 1,
                        seq: 4,
                        status: AckStatus::Stored,
                        ..Ack::default()
                    }),
                },
            ]);
            let history = peer.recv();
            assert!(history.request_id > send.request_id);
            assert!(matches!(history.body, Body::HistoryRequest(ref h) if h.before_seq == 3));
            peer.send(&[Frame {
                request_id: history.request_id,
                body: Body::HistoryPage(HistoryPage {
                    conversation_id: 1,
                    messages: vec![chat(1, 1), chat(1, 2)],
                    has_more: false,
                }),
            }]);
            let ping = peer.recv();
            assert!(ping.request_id > history.request_id);
            let Body::Ping(p) = &ping.body else {
                panic!("{ping:?}")
            };
            peer.send(&[Frame {
                request_id: ping.request_id,
                body: Body::Pong(Pong {
                    nonce: p.nonce,
                    server_time_ms: 5,
                }),
            }]);
            peer.next()
        });

        let (mut conn, welcome) = Connection::connect(addr, transport, "tok").unwrap();
        assert_eq!(welcome.user_id, 7);
        assert_eq!(conn.welcome(), Some(&welcome));
        let missed = sync_until_live(&mut conn, Duration::from_secs(5)).unwrap();
        let seqs: Vec<(u64, u64)> = missed.iter().map(|m| (m.conversation_id, m.seq)).collect();
        assert_eq!(seqs, [(1, 1), (1, 2), (2, 1)]);

        let ack = conn.send_message(1, b"hi", KEY).unwrap();
        assert_eq!(ack.seq, 4);
        assert_eq!(conn.inbox_len(), 2);
        let page = conn.history(1, 3, 0, 10).unwrap();
        assert_eq!(page.messages.len(), 2);
        assert_eq!(conn.ping().unwrap().server_time_ms, 5);
        // The pushes that came before the Ack, in arrival order.
        let first = conn.recv(Duration::ZERO).unwrap().unwrap();
        assert!(matches!(first.body, Body::Deliver(ref d) if d.message.seq == 3));
        let second = conn.recv(Duration::ZERO).unwrap().unwrap();
        assert!(matches!(second.body, Body::ReceiptUpdate(_)));
        let start = Instant::now();
        assert_eq!(conn.recv(Duration::from_millis(20)).unwrap(), None);
        assert!(start.elapsed() >= Duration::from_millis(20));
        conn.close().unwrap();

        let last = server.join().unwrap();
        match transport {
            Transport::Tcp => assert_eq!(last, PeerEvent::Eof),
            _ => assert_eq!(last, PeerEvent::Close(Some(1000))),
        }
    }

    #[test]
    fn session_over_websocket_binary() {
        session_scenario(Transport::WsBinary);
    }

    #[test]
    fn session_over_websocket_json() {
        session_scenario(Transport::WsJson);
    }

    #[test]
    fn session_over_raw_tcp() {
        session_scenario(Transport::Tcp);
    }

    #[test]
    fn refused_token_is_a_server_error() {
        let (addr, server) = test_peer::serve(Transport::WsBinary, |mut peer| {
            let hello = peer.recv();
            peer.send(&[Frame {
                request_id: hello.request_id,
                body: Body::Error(message::Error {
                    code: ErrorCode::Unauthenticated,
                    message: "bad token".into(),
                    retry_after_ms: 0,
                }),
            }]);
            peer.close(4001, "unauthenticated");
        });
        let error = Connection::connect_ws(addr, false, "nope").unwrap_err();
        assert_eq!(error.server_code(), Some(ErrorCode::Unauthenticated));
        assert!(!error.is_connection_failure());
        server.join().unwrap();
    }

    #[test]
    fn pings_are_answered_and_close_codes_reported() {
        let (addr, server) = test_peer::serve(Transport::WsJson, |mut peer| {
            peer.hello(1);
            peer.ping(b"are you there");
            assert_eq!(peer.next(), PeerEvent::Pong(b"are you there".to_vec()));
            peer.close(4008, "slow consumer");
            assert_eq!(peer.next(), PeerEvent::Close(Some(4008)));
        });
        let (mut conn, _) = Connection::connect_ws(addr, true, "tok").unwrap();
        for _ in 0..2 {
            match conn.recv(Duration::from_secs(5)) {
                Err(ClientError::Closed { code, reason }) => {
                    assert_eq!((code, &*reason), (4008, "slow consumer"))
                }
                other => panic!("{other:?}"),
            }
        }
        assert_eq!(conn.closed(), Some((4008, "slow consumer")));
        assert!(matches!(
            conn.send_frame(&Frame {
                request_id: 9,
                body: Body::SyncRequest(SyncRequest::default()),
            }),
            Err(ClientError::Closed { code: 4008, .. })
        ));
        server.join().unwrap();
    }

    #[test]
    fn tcp_eof_is_closed_with_code_0() {
        let (addr, server) = test_peer::serve(Transport::Tcp, |mut peer| {
            peer.hello(1);
        });
        let (mut conn, _) = Connection::connect_tcp(addr, "tok").unwrap();
        server.join().unwrap();
        let error = conn.recv(Duration::from_secs(5)).unwrap_err();
        assert!(
            matches!(error, ClientError::Closed { code: 0, .. }),
            "{error:?}"
        );
        assert!(error.is_connection_failure());
    }

    #[test]
    fn call_times_out_and_keeps_later_answers_for_recv() {
        let (addr, server) = test_peer::serve(Transport::Tcp, |mut peer| {
            peer.hello(1);
            let first = peer.recv();
            let second = peer.recv();
            // Answer the second request, then (late) the first.
            for request_id in [second.request_id, first.request_id] {
                peer.send(&[Frame {
                    request_id,
                    body: Body::Pong(Pong::default()),
                }]);
            }
            let third = peer.recv();
            // Unanswered: the client times out, then closes.
            assert_eq!(peer.next(), PeerEvent::Eof);
            third
        });
        let (mut conn, _) = Connection::connect_tcp(addr, "tok").unwrap();
        let first = conn.request(Body::Ping(Ping::default())).unwrap();
        let answer = conn
            .call(Body::Ping(Ping::default()), Duration::from_secs(5))
            .unwrap();
        assert_eq!(answer.request_id, first + 1);
        let late = conn.recv(Duration::from_secs(5)).unwrap().unwrap();
        assert_eq!(late.request_id, first);
        assert!(matches!(
            conn.call(Body::Ping(Ping::default()), Duration::from_millis(20)),
            Err(ClientError::Timeout)
        ));
        conn.close().unwrap();
        assert_eq!(
            server.join().unwrap(),
            Frame {
                request_id: first + 2,
                body: Body::Ping(Ping::default()),
            }
        );
    }

    #[test]
    fn refused_upgrade_is_an_http_error_with_its_reason() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let server = std::thread::spawn(move || {
            let (mut stream, _) = listener.accept().unwrap();
            stream
                .set_read_timeout(Some(Duration::from_secs(5)))
                .unwrap();
            let mut buf = [0u8; 4096];
            let _ = stream.read(&mut buf).unwrap();
            let mut out = Vec::new();
            crate::ws::handshake::write_reject(&HandshakeError::NoSubprotocol, &mut out);
            stream.write_all(&out).unwrap();
        });
        let error = Connection::connect_ws(addr, false, "tok").unwrap_err();
        match error {
            ClientError::Http { status, body } => {
                assert_eq!(status, 400);
                assert!(body.contains("subprotocol"), "{body}");
            }
            other => panic!("{other:?}"),
        }
        server.join().unwrap();
    }
}
