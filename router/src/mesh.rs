//! The cross-shard mesh: one bounded glommio shared channel per ordered pair of shards,
//! carrying *batches* of messages, with a per-peer outbox that collects what a shard
//! sends during one turn of its executor and hands it over as one batch.
//!
//! The only file of this crate that names glommio types.
//!
//! # Why batches
//! A cross-executor send costs a cache-line handoff and, when the peer sleeps, an eventfd
//! wake. Under load a shard produces many messages per peer per executor turn (acks,
//! deliveries, reads); collecting them in the outbox and sending one `Vec` per turn makes
//! that cost per batch, not per message. At low load a batch is one message and nothing
//! waits: the flusher runs as soon as the producing task yields.
//!
//! # Bounds
//! - Each channel holds at most `capacity` batches ([`MESH_CHANNEL_BATCHES_DEFAULT`]).
//! - Each outbox holds at most [`OUTBOX_MESSAGES_MAX`] messages. [`Mesh::send`] waits for
//!   room (backpressure to the producing task); [`Mesh::try_send`] refuses instead.
//! - A batch is at most [`BATCH_MESSAGES_MAX`] messages.
//!
//! Receivers must never wait on [`Mesh::send`] inline while handling a batch (two shards
//! each waiting for the other's room would deadlock); the gateway hands every received
//! message to a task of its own.
//!
//! # Setup
//! [`full_mesh`] builds the channel ends for `n` shards (on any thread); each shard's
//! executor takes its [`MeshEnds`] and calls [`MeshEnds::connect`], which waits until
//! every peer has connected its ends too (glommio's channel handshake), then returns the
//! [`Mesh`] (for sending) and one receiver per peer.

use std::cell::{Cell, RefCell};
use std::future::Future;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll, Waker};

use glommio::channels::shared_channel::{self, ConnectedReceiver, ConnectedSender};
use glommio::channels::shared_channel::{SharedReceiver, SharedSender};

/// Batches a channel holds before the sender waits.
pub const MESH_CHANNEL_BATCHES_DEFAULT: usize = 256;

/// Messages an outbox holds before [`Mesh::send`] waits.
pub const OUTBOX_MESSAGES_MAX: usize = 64 * 1024;

/// Most messages in one batch.
pub const BATCH_MESSAGES_MAX: usize = 4096;

/// The unconnected ends one shard takes into its executor.
pub struct MeshEnds<T: Send + 'static> {
    me: usize,
    /// `senders[to]`; `None` for `to == me`.
    senders: Vec<Option<SharedSender<Vec<T>>>>,
    /// `receivers[from]`; `None` for `from == me`.
    receivers: Vec<Option<SharedReceiver<Vec<T>>>>,
}

/// Channel ends for `shards` shards: element `i` goes to shard `i`.
pub fn full_mesh<T: Send + 'static>(shards: usize, capacity: usize) -> Vec<MeshEnds<T>> {
    let mut ends: Vec<MeshEnds<T>> = (0..shards)
        .map(|me| MeshEnds {
            me,
            senders: (0..shards).map(|_| None).collect(),
            receivers: (0..shards).map(|_| None).collect(),
        })
        .collect();
    for from in 0..shards {
        for to in 0..shards {
            if from == to {
                continue;
            }
            let (tx, rx) = shared_channel::new_bounded(capacity.max(1));
            if let Some(slot) = ends.get_mut(from).and_then(|e| e.senders.get_mut(to)) {
                *slot = Some(tx);
            }
            if let Some(slot) = ends.get_mut(to).and_then(|e| e.receivers.get_mut(from)) {
                *slot = Some(rx);
            }
        }
    }
    ends
}

/// One peer's incoming batches.
pub struct Incoming<T: Send + 'static> {
    /// The peer that sends on this channel.
    pub from: usize,
    receiver: ConnectedReceiver<Vec<T>>,
}

impl<T: Send + 'static> Incoming<T> {
    /// The next batch; `None` once the peer is gone.
    pub async fn recv(&self) -> Option<Vec<T>> {
        self.receiver.recv().await
    }
}

impl<T: Send + 'static> MeshEnds<T> {
    /// The shard these ends belong to.
    pub fn me(&self) -> usize {
        self.me
    }

    /// Connect every end (inside this shard's executor). Resolves once every peer has
    /// connected its matching ends.
    pub async fn connect(self) -> (Mesh<T>, Vec<Incoming<T>>) {
        let me = self.me;
        let senders: Vec<_> = self
            .senders
            .into_iter()
            .enumerate()
            .filter_map(|(to, s)| s.map(|s| (to, glommio::spawn_local(s.connect()))))
            .collect();
        let receivers: Vec<_> = self
            .receivers
            .into_iter()
            .enumerate()
            .filter_map(|(from, r)| r.map(|r| (from, glommio::spawn_local(r.connect()))))
            .collect();
        let peers = senders.len() + 1;
        let mut outboxes: Vec<Option<Rc<Outbox<T>>>> = (0..peers).map(|_| None).collect();
        for (to, task) in senders {
            let sender = task.await;
            let outbox = Rc::new(Outbox::default());
            glommio::spawn_local(flush_loop(outbox.clone(), sender)).detach();
            if let Some(slot) = outboxes.get_mut(to) {
                *slot = Some(outbox);
            }
        }
        let mut incoming = Vec::with_capacity(receivers.len());
        for (from, task) in receivers {
            incoming.push(Incoming {
                from,
                receiver: task.await,
            });
        }
        (Mesh { me, outboxes }, incoming)
    }
}

/// Messages on their way to one peer, and the wakers of the flusher and of producers
/// waiting for room.
struct Outbox<T> {
    queue: RefCell<Vec<T>>,
    /// The flusher, parked while the queue is empty.
    flusher: RefCell<Option<Waker>>,
    /// Producers parked while the queue is full.
    producers: RefCell<Vec<Waker>>,
    /// Batches handed to the channel (for metrics and tests).
    batches: Cell<u64>,
    /// Messages handed to the channel.
    messages: Cell<u64>,
}

impl<T> Default for Outbox<T> {
    fn default() -> Self {
        Outbox {
            queue: RefCell::new(Vec::new()),
            flusher: RefCell::new(None),
            producers: RefCell::new(Vec::new()),
            batches: Cell::new(0),
            messages: Cell::new(0),
        }
    }
}

impl<T> Outbox<T> {
    fn push(&self, msg: T) -> Result<(), T> {
        let mut queue = self.queue.borrow_mut();
        if queue.len() >= OUTBOX_MESSAGES_MAX {
            return Err(msg);
        }
        queue.push(msg);
        drop(queue);
        if let Some(waker) = self.flusher.borrow_mut().take() {
            waker.wake();
        }
        Ok(())
    }

    /// Takes up to [`BATCH_MESSAGES_MAX`] messages, oldest first.
    fn take_batch(&self) -> Vec<T> {
        let mut queue = self.queue.borrow_mut();
        let batch = if queue.len() <= BATCH_MESSAGES_MAX {
            std::mem::take(&mut *queue)
        } else {
            let rest = queue.split_off(BATCH_MESSAGES_MAX);
            std::mem::replace(&mut *queue, rest)
        };
        drop(queue);
        for waker in self.producers.borrow_mut().drain(..) {
            waker.wake();
        }
        batch
    }
}

async fn flush_loop<T: Send + 'static>(outbox: Rc<Outbox<T>>, sender: ConnectedSender<Vec<T>>) {
    loop {
        NonEmpty(&outbox).await;
        // Let the other tasks of this turn add to the batch before it leaves.
        glommio::executor().yield_task_queue_now().await;
        let batch = outbox.take_batch();
        outbox.batches.set(outbox.batches.get() + 1);
        outbox
            .messages
            .set(outbox.messages.get() + batch.len() as u64);
        if sender.send(batch).await.is_err() {
            return; // the peer shard is gone (shutdown)
        }
    }
}

/// Resolves when the outbox has something to send.
struct NonEmpty<'a, T>(&'a Outbox<T>);

impl<T> Future for NonEmpty<'_, T> {
    type Output = ();
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        if !self.0.queue.borrow().is_empty() {
            return Poll::Ready(());
        }
        *self.0.flusher.borrow_mut() = Some(cx.waker().clone());
        Poll::Pending
    }
}

/// The sending side of the mesh, owned by one shard.
pub struct Mesh<T: Send + 'static> {
    me: usize,
    outboxes: Vec<Option<Rc<Outbox<T>>>>,
}

/// Why a message was not queued.
#[derive(Debug, PartialEq, Eq)]
pub enum SendError<T> {
    /// No such peer (out of range, or this shard itself).
    NoPeer(T),
    /// The peer's outbox is full.
    Full(T),
}

impl<T: Send + 'static> Mesh<T> {
    /// This shard.
    pub fn me(&self) -> usize {
        self.me
    }

    /// Number of shards in the mesh (this one included).
    pub fn shards(&self) -> usize {
        self.outboxes.len()
    }

    fn outbox(&self, to: usize) -> Option<&Rc<Outbox<T>>> {
        self.outboxes.get(to).and_then(Option::as_ref)
    }

    /// Queue `msg` for shard `to` without waiting.
    pub fn try_send(&self, to: usize, msg: T) -> Result<(), SendError<T>> {
        match self.outbox(to) {
            Some(outbox) => outbox.push(msg).map_err(SendError::Full),
            None => Err(SendError::NoPeer(msg)),
        }
    }

    /// Queue `msg` for shard `to`, waiting while its outbox is full.
    pub async fn send(&self, to: usize, msg: T) -> Result<(), SendError<T>> {
        let Some(outbox) = self.outbox(to) else {
            return Err(SendError::NoPeer(msg));
        };
        let mut msg = msg;
        loop {
            match outbox.push(msg) {
                Ok(()) => return Ok(()),
                Err(back) => {
                    msg = back;
                    Room(outbox, false).await;
                }
            }
        }
    }

    /// Messages queued for `to` and not yet handed to the channel.
    pub fn queued(&self, to: usize) -> usize {
        self.outbox(to).map_or(0, |o| o.queue.borrow().len())
    }

    /// (batches, messages) taken from the outbox towards `to` so far.
    pub fn sent(&self, to: usize) -> (u64, u64) {
        self.outbox(to)
            .map_or((0, 0), |o| (o.batches.get(), o.messages.get()))
    }
}

/// Resolves after the flusher took a batch (room may have appeared).
struct Room<'a, T>(&'a Outbox<T>, bool);

impl<T> Future for Room<'_, T> {
    type Output = ();
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        if self.1 || self.0.queue.borrow().len() < OUTBOX_MESSAGES_MAX {
            return Poll::Ready(());
        }
        self.1 = true;
        self.0.producers.borrow_mut().push(cx.waker().clone());
        Poll::Pending
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use glommio::LocalExecutorBuilder;

    #[test]
    fn three_shards_exchange_batched_messages_in_order() {
        let shards = 3;
        let ends = full_mesh::<(usize, u32)>(shards, 4);
        let handles: Vec<_> = ends
            .into_iter()
            .map(|ends| {
                LocalExecutorBuilder::default()
                    .spawn(move || async move {
                        let (mesh, incoming) = ends.connect().await;
                        let me = mesh.me();
                        for to in (0..mesh.shards()).filter(|&t| t != me) {
                            for i in 0..1000u32 {
                                mesh.send(to, (me, i)).await.unwrap();
                            }
                        }
                        assert!(matches!(
                            mesh.try_send(me, (me, 0)),
                            Err(SendError::NoPeer(_))
                        ));
                        let mut got = Vec::new();
                        for peer in &incoming {
                            let mut next = 0u32;
                            let mut batches = 0;
                            while next < 1000 {
                                let batch = peer.recv().await.unwrap();
                                batches += 1;
                                assert!(!batch.is_empty() && batch.len() <= BATCH_MESSAGES_MAX);
                                for (from, i) in batch {
                                    assert_eq!(from, peer.from);
                                    assert_eq!(i, next, "per-peer FIFO");
                                    next += 1;
                                }
                            }
                            // Batching: 1000 messages sent in one turn arrive in far
                            // fewer batches.
                            assert!(batches < 100, "{batches} batches for 1000 messages");
                            got.push(next);
                        }
                        got
                    })
                    .unwrap()
            })
            .collect();
        for handle in handles {
            assert_eq!(handle.join().unwrap(), vec![1000, 1000]);
        }
    }
}
