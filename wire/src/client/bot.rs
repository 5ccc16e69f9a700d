//! A reconnecting client for long-running users: bots, load generators, soak tests.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::net::{SocketAddr, ToSocketAddrs};
use std::time::{Duration, Instant};

use super::conn::{Connection, Transport};
use super::{ClientError, DEFAULT_TIMEOUT};
use crate::message::{Ack, Body, Frame, IdempotencyKey, Ping, ReceiptKind, StoredMessage, Welcome};

/// Backoff before the first retry; doubled per attempt up to [`RETRY_BACKOFF_MAX`].
const RETRY_BACKOFF_START: Duration = Duration::from_millis(50);
const RETRY_BACKOFF_MAX: Duration = Duration::from_secs(2);

/// Which `(conversation, seq)` pairs were seen: the highest sequence per conversation.
///
/// The server delivers each conversation in sequence order and, across reconnects,
/// at-least-once from the device's cursor; so a message is new exactly when its sequence
/// is above the highest one seen in its conversation.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Seen {
    highest: HashMap<u64, u64>,
}

impl Seen {
    pub fn new() -> Seen {
        Seen::default()
    }

    /// Record `(conversation_id, seq)`; `false` if it (or a later message of the
    /// conversation) was seen already.
    pub fn insert(&mut self, conversation_id: u64, seq: u64) -> bool {
        let highest = self.highest.entry(conversation_id).or_insert(0);
        if seq > *highest {
            *highest = seq;
            true
        } else {
            false
        }
    }

    /// Whether `(conversation_id, seq)` counts as seen.
    pub fn contains(&self, conversation_id: u64, seq: u64) -> bool {
        seq <= self.highest(conversation_id)
    }

    /// The highest sequence seen in a conversation (0: none).
    pub fn highest(&self, conversation_id: u64) -> u64 {
        self.highest.get(&conversation_id).copied().unwrap_or(0)
    }

    /// Keep the messages not seen yet, recording them.
    pub fn filter(&mut self, messages: Vec<StoredMessage>) -> Vec<StoredMessage> {
        messages
            .into_iter()
            .filter(|m| self.insert(m.conversation_id, m.seq))
            .collect()
    }
}

/// A session that survives disconnects.
///
/// It keeps the server address, transport and token, and reconnects (with `Hello`) when
/// an operation finds the connection broken. What it receives is deduplicated by
/// `(conversation, seq)` ([`Seen`]), so the catch-up after a reconnect does not repeat
/// messages. Options: auto-ack (a `Receipt{Delivered}` per conversation for what each
/// [`recv`](Bot::recv) returned) and heartbeats (a `Ping` whenever nothing was sent for
/// half the `Welcome.heartbeat_interval_ms`, while waiting in `recv`; their `Pong`s are
/// not returned).
#[derive(Debug)]
pub struct Bot {
    addr: SocketAddr,
    transport: Transport,
    token: String,
    conn: Option<Connection>,
    welcome: Welcome,
    /// Frames received on a connection that then broke, returned before anything new.
    pending: VecDeque<Frame>,
    seen: Seen,
    /// The delivered cursor acknowledged per conversation.
    acked: HashMap<u64, u64>,
    auto_ack: bool,
    /// Request ids of heartbeat Pings whose Pong is not back yet.
    heartbeats: HashSet<u64>,
    timeout: Duration,
    reconnects: u64,
}

impl Bot {
    /// Connect and say `Hello`. The catch-up that follows comes out of
    /// [`recv`](Bot::recv).
    pub fn connect(
        addr: impl ToSocketAddrs,
        transport: Transport,
        token: &str,
    ) -> Result<Bot, ClientError> {
        let (conn, welcome) = Connection::connect(addr, transport, token)?;
        Ok(Bot {
            addr: conn.peer_addr(),
            transport,
            token: token.to_string(),
            conn: Some(conn),
            welcome,
            pending: VecDeque::new(),
            seen: Seen::new(),
            acked: HashMap::new(),
            auto_ack: false,
            heartbeats: HashSet::new(),
            timeout: DEFAULT_TIMEOUT,
            reconnects: 0,
        })
    }

    /// The `Welcome` of the current (or last) connection.
    pub fn welcome(&self) -> &Welcome {
        &self.welcome
    }

    /// Send `Receipt{Delivered}` for what `recv` returns (one per conversation per call).
    pub fn set_auto_ack(&mut self, on: bool) {
        self.auto_ack = on;
    }

    /// The token the next reconnect uses (e.g. after [`super::http::refresh`]).
    pub fn set_token(&mut self, token: &str) {
        self.token = token.to_string();
    }

    /// The timeout of reconnects and of each request's answer.
    pub fn set_timeout(&mut self, timeout: Duration) -> Result<(), ClientError> {
        self.timeout = timeout;
        match &mut self.conn {
            Some(conn) => conn.set_timeout(timeout),
            None => Ok(()),
        }
    }

    pub fn seen(&self) -> &Seen {
        &self.seen
    }

    pub fn seen_mut(&mut self) -> &mut Seen {
        &mut self.seen
    }

    /// How many times this bot reconnected.
    pub fn reconnects(&self) -> u64 {
        self.reconnects
    }

    /// The live connection, reconnecting first if there is none. Frames read directly
    /// from it bypass deduplication and auto-ack.
    pub fn connection(&mut self) -> Result<&mut Connection, ClientError> {
        if self.conn.is_none() {
            self.reconnect()?;
        }
        self.conn
            .as_mut()
            .ok_or_else(|| ClientError::Protocol("no connection".into()))
    }

    /// Drop the current connection (keeping what it received) and connect again.
    pub fn reconnect(&mut self) -> Result<(), ClientError> {
        self.disconnect();
        let (mut conn, welcome) = Connection::connect(self.addr, self.transport, &self.token)?;
        conn.set_timeout(self.timeout)?;
        self.conn = Some(conn);
        self.welcome = welcome;
        self.reconnects += 1;
        Ok(())
    }

    fn disconnect(&mut self) {
        if let Some(mut conn) = self.conn.take() {
            self.pending.extend(conn.take_inbox());
        }
        self.heartbeats.clear();
    }

    /// Send a chat message and wait for its `Ack`, up to `attempts` times. After a
    /// connection failure (I/O error, close, no answer in time) it reconnects and
    /// resends with the same `key`, so the server stores the message once: an `Ack`
    /// with `status = Duplicate` means an earlier attempt had already stored it. A
    /// transient server error (`Unavailable`, `RateLimited`, `Internal`) is retried after
    /// its `retry_after_ms`. Other errors, and the last attempt's, are returned.
    pub fn send_with_retry(
        &mut self,
        conversation_id: u64,
        body: &[u8],
        key: IdempotencyKey,
        attempts: u32,
    ) -> Result<Ack, ClientError> {
        let mut backoff = RETRY_BACKOFF_START;
        let mut attempt = 1;
        loop {
            let result = self
                .connection()
                .and_then(|conn| conn.send_message(conversation_id, body, key));
            let error = match result {
                Ok(ack) => return Ok(ack),
                Err(error) => error,
            };
            let retry = error.is_connection_failure() || error.is_transient_server_error();
            if !retry || attempt >= attempts {
                return Err(error);
            }
            if error.is_connection_failure() {
                self.disconnect();
            }
            std::thread::sleep(error.retry_after().unwrap_or(backoff));
            backoff = (backoff * 2).min(RETRY_BACKOFF_MAX);
            attempt += 1;
        }
    }

    /// Wait up to `timeout` for frames; return the first and everything already arrived
    /// after it, with repeated messages removed (a repeated `Deliver` is dropped, a
    /// `SyncBatch` keeps only its new messages). Empty on timeout. With auto-ack, the
    /// new delivered cursor of each conversation is acknowledged before returning.
    ///
    /// An error is returned only if nothing was received; otherwise the frames are, and
    /// the error is not reported. A broken connection is dropped (what it had received
    /// is kept for the next call), and the next call reconnects.
    pub fn recv(&mut self, timeout: Duration) -> Result<Vec<Frame>, ClientError> {
        let mut frames: Vec<Frame> = self.pending.drain(..).collect();
        let result = self.receive_into(&mut frames, timeout);
        let frames = self.filter(frames);
        if let Err(error) = result {
            if error.is_connection_failure() {
                self.disconnect();
            }
            if frames.is_empty() {
                return Err(error);
            }
        }
        if self.auto_ack {
            self.ack_delivered(&frames);
        }
        Ok(frames)
    }

    /// [`recv`](Bot::recv), keeping only the messages (from `Deliver` and `SyncBatch`).
    pub fn recv_messages(&mut self, timeout: Duration) -> Result<Vec<StoredMessage>, ClientError> {
        let mut messages = Vec::new();
        for frame in self.recv(timeout)? {
            match frame.body {
                Body::Deliver(deliver) => messages.push(deliver.message),
                Body::SyncBatch(batch) => messages.extend(batch.messages),
                _ => {}
            }
        }
        Ok(messages)
    }

    /// End the session.
    pub fn close(mut self) -> Result<(), ClientError> {
        match self.conn.take() {
            Some(conn) => conn.close(),
            None => Ok(()),
        }
    }

    /// Read into `frames`: wait (sending heartbeats) for one frame unless there are some
    /// already, then take what has arrived without waiting.
    fn receive_into(
        &mut self,
        frames: &mut Vec<Frame>,
        timeout: Duration,
    ) -> Result<(), ClientError> {
        let deadline = Instant::now() + timeout;
        while frames.is_empty() {
            let wait = self.heartbeat_if_due(deadline)?;
            let conn = self.connection()?;
            match conn.recv(wait)? {
                Some(frame) if self.is_heartbeat_pong(&frame) => {}
                Some(frame) => frames.push(frame),
                None if Instant::now() >= deadline => return Ok(()),
                None => {}
            }
        }
        let conn = self.connection()?;
        while let Some(frame) = conn.recv(Duration::ZERO)? {
            frames.push(frame);
        }
        Ok(())
    }

    /// Send a heartbeat Ping if one is due; how long to wait for frames before the next.
    fn heartbeat_if_due(&mut self, deadline: Instant) -> Result<Duration, ClientError> {
        let until_deadline = deadline.saturating_duration_since(Instant::now());
        let interval = u64::from(self.welcome.heartbeat_interval_ms) / 2;
        if interval == 0 {
            return Ok(until_deadline);
        }
        let interval = Duration::from_millis(interval);
        let conn = self.connection()?;
        if conn.last_sent().elapsed() >= interval {
            let id = conn.request(Body::Ping(Ping::default()))?;
            self.heartbeats.insert(id);
        }
        let conn = self.connection()?;
        let until_ping = interval.saturating_sub(conn.last_sent().elapsed());
        Ok(until_deadline.min(until_ping.max(Duration::from_millis(1))))
    }

    fn is_heartbeat_pong(&mut self, frame: &Frame) -> bool {
        matches!(frame.body, Body::Pong(_)) && self.heartbeats.remove(&frame.request_id)
    }

    /// Drop repeated messages and heartbeat Pongs.
    fn filter(&mut self, frames: Vec<Frame>) -> Vec<Frame> {
        let mut out = Vec::with_capacity(frames.len());
        for mut frame in frames {
            match &mut frame.body {
                Body::Deliver(deliver) => {
                    let message = &deliver.message;
                    if !self.seen.insert(message.conversation_id, message.seq) {
                        continue;
                    }
                }
                Body::SyncBatch(batch) => {
                    let seen = &mut self.seen;
                    batch
                        .messages
                        .retain(|m| seen.insert(m.conversation_id, m.seq));
                }
                Body::Pong(_) if self.heartbeats.remove(&frame.request_id) => continue,
                _ => {}
            }
            out.push(frame);
        }
        out
    }

    /// One `Receipt{Delivered}` per conversation whose delivered cursor `frames` moves
    /// past what was acknowledged. A failure drops the connection: the messages come
    /// again after the reconnect, and the next receipt covers them.
    fn ack_delivered(&mut self, frames: &[Frame]) {
        for (conversation_id, up_to_seq) in delivered_cursors(frames) {
            if up_to_seq <= self.acked.get(&conversation_id).copied().unwrap_or(0) {
                continue;
            }
            let sent = self
                .conn
                .as_mut()
                .map(|conn| conn.receipt(conversation_id, ReceiptKind::Delivered, up_to_seq));
            match sent {
                Some(Ok(_)) => {
                    self.acked.insert(conversation_id, up_to_seq);
                }
                Some(Err(_)) => {
                    self.disconnect();
                    return;
                }
                None => return,
            }
        }
    }
}

/// The highest delivered sequence per conversation in `frames` (`Deliver` and
/// `SyncBatch` messages), in conversation order.
fn delivered_cursors(frames: &[Frame]) -> BTreeMap<u64, u64> {
    let mut cursors = BTreeMap::new();
    let mut note = |message: &StoredMessage| {
        let cursor = cursors.entry(message.conversation_id).or_insert(0);
        *cursor = message.seq.max(*cursor);
    };
    for frame in frames {
        match &frame.body {
            Body::Deliver(deliver) => note(&deliver.message),
            Body::SyncBatch(batch) => batch.messages.iter().for_each(&mut note),
            _ => {}
        }
    }
    cursors
}

#[cfg(test)]
mod tests {
    use super::super::test_peer::{self, chat, PeerEvent};
    use super::*;
    use crate::message::{AckStatus, Deliver, Pong, Receipt, SyncBatch};
    use std::net::TcpListener;

    fn deliver(conversation_id: u64, seq: u64) -> Frame {
        Frame {
            request_id: 0,
            body: Body::Deliver(Deliver {
                message: chat(conversation_id, seq),
            }),
        }
    }

    fn batch(messages: &[(u64, u64)], has_more: bool) -> Frame {
        Frame {
            request_id: 0,
            body: Body::SyncBatch(SyncBatch {
                messages: messages.iter().map(|&(c, s)| chat(c, s)).collect(),
                receipts: vec![],
                has_more,
            }),
        }
    }

    #[test]
    fn seen_drops_repeats_per_conversation() {
        let mut seen = Seen::new();
        assert!(seen.insert(1, 1));
        assert!(seen.insert(1, 2));
        assert!(!seen.insert(1, 2));
        assert!(!seen.insert(1, 1));
        assert!(seen.insert(2, 1));
        assert!(seen.contains(1, 2) && !seen.contains(1, 3));
        assert_eq!(seen.highest(1), 2);
        assert_eq!(seen.highest(3), 0);
        let kept = seen.filter(vec![chat(1, 2), chat(1, 3), chat(2, 1), chat(3, 9)]);
        let kept: Vec<_> = kept.iter().map(|m| (m.conversation_id, m.seq)).collect();
        assert_eq!(kept, [(1, 3), (3, 9)]);
    }

    #[test]
    fn delivered_cursors_are_coalesced_per_conversation() {
        let frames = [
            batch(&[(2, 5), (1, 1), (1, 2)], false),
            deliver(1, 3),
            Frame {
                request_id: 4,
                body: Body::Pong(Pong::default()),
            },
            deliver(3, 1),
        ];
        let cursors: Vec<_> = delivered_cursors(&frames).into_iter().collect();
        assert_eq!(cursors, [(1, 3), (2, 5), (3, 1)]);
    }

    #[test]
    fn recv_dedupes_and_auto_acks_once_per_conversation() {
        let (addr, server) = test_peer::serve(Transport::WsBinary, |mut peer| {
            peer.hello(1);
            // One write: the client reads it as one batch.
            peer.send(&[
                batch(&[(1, 1), (1, 2), (2, 5)], false),
                deliver(1, 2),
                deliver(1, 3),
            ]);
            let mut receipts = Vec::new();
            loop {
                let frame = peer.recv();
                match frame.body {
                    Body::Receipt(receipt) => receipts.push(receipt),
                    Body::Ping(_) => break,
                    other => panic!("{other:?}"),
                }
            }
            // A repeat after the marker: nothing new, so no receipt.
            peer.send(&[deliver(2, 5)]);
            peer.next();
            receipts
        });
        let mut bot = Bot::connect(addr, Transport::WsBinary, "tok").unwrap();
        bot.set_auto_ack(true);
        let mut messages = Vec::new();
        while messages.len() < 4 {
            let got = bot.recv_messages(Duration::from_secs(5)).unwrap();
            assert!(!got.is_empty(), "timed out");
            messages.extend(got.into_iter().map(|m| (m.conversation_id, m.seq)));
        }
        assert_eq!(messages, [(1, 1), (1, 2), (2, 5), (1, 3)]);
        // A marker for the fake server: every receipt was sent before it.
        let marker = Body::Ping(crate::message::Ping::default());
        bot.connection().unwrap().request(marker).unwrap();
        assert!(bot.recv(Duration::from_millis(50)).unwrap().is_empty());
        bot.close().unwrap();

        let receipts = server.join().unwrap();
        let find = |conversation_id: u64| -> Vec<u64> {
            receipts
                .iter()
                .filter(|r| r.conversation_id == conversation_id)
                .map(|r: &Receipt| r.up_to_seq)
                .collect()
        };
        assert!(receipts.iter().all(|r| r.kind == ReceiptKind::Delivered));
        // Normally one receipt each ([3] and [5]); a batch split by the network can add
        // an intermediate one, but never a repeat or a step back.
        let ones = find(1);
        assert_eq!(ones.last(), Some(&3));
        assert!(ones.windows(2).all(|w| w[0] < w[1]), "{ones:?}");
        assert_eq!(find(2), [5]);
    }

    #[test]
    fn send_with_retry_reconnects_and_resends_the_same_key() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let server = std::thread::spawn(move || {
            // First connection: take the Send, then die without answering.
            let mut first = test_peer::Peer::accept(&listener, Transport::Tcp);
            first.hello(1);
            let lost = first.recv();
            drop(first);
            // Second connection: the retry, answered as a duplicate.
            let mut second = test_peer::Peer::accept(&listener, Transport::Tcp);
            second.hello(1);
            second.send(&[batch(&[(9, 1)], false)]);
            let retry = second.recv();
            let (Body::Send(a), Body::Send(b)) = (&lost.body, &retry.body) else {
                panic!("{lost:?} {retry:?}")
            };
            assert_eq!(a, b);
            second.send(&[Frame {
                request_id: retry.request_id,
                body: Body::Ack(Ack {
                    conversation_id: 9,
                    seq: 1,
                    status: AckStatus::Duplicate,
                    ..Ack::default()
                }),
            }]);
            second.next()
        });
        let mut bot = Bot::connect(addr, Transport::Tcp, "tok").unwrap();
        let key = crate::client::new_key();
        let ack = bot.send_with_retry(9, b"hello", key, 3).unwrap();
        assert_eq!((ack.seq, ack.status), (1, AckStatus::Duplicate));
        assert_eq!(bot.reconnects(), 1);
        // The catch-up of the new connection arrived during the call: recv has it.
        let messages = bot.recv_messages(Duration::from_secs(5)).unwrap();
        assert_eq!(messages.len(), 1);
        bot.close().unwrap();
        assert_eq!(server.join().unwrap(), PeerEvent::Eof);
    }

    #[test]
    fn send_with_retry_gives_up_after_its_attempts() {
        let (addr, server) = test_peer::serve(Transport::Tcp, |mut peer| {
            peer.hello(1);
            peer.recv();
        });
        let mut bot = Bot::connect(addr, Transport::Tcp, "tok").unwrap();
        let error = bot
            .send_with_retry(9, b"hello", crate::client::new_key(), 2)
            .unwrap_err();
        // The connection died; the reconnect is refused (nobody listens any more).
        assert!(matches!(error, ClientError::Io(_)), "{error:?}");
        server.join().unwrap();
    }
}
