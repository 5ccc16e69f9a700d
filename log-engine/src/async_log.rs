//! [`AsyncLog`]: appends as futures that resolve only when the record is durable.
//!
//! For a single-threaded owner (one glommio executor per shard): many tasks of the shard
//! call [`AsyncLog::append`] and `.await` the result; all appends made while a batch is in
//! flight share the next write and fdatasync (group commit), and each future resolves
//! with its [`Ack`] once its batch is durable. Executor-agnostic: it needs no runtime,
//! only `std::task::Waker`s, which the I/O thread of [`PipelinedLog`] wakes after each
//! batch completion (glommio supports wakes from foreign threads).
//!
//! The sequence number is assigned when `append` is *called*, not when the future is first
//! polled, so the order of calls is the order in the log. Dropping a future does not
//! cancel the append; its ack is discarded.
//!
//! Not `Send`/`Sync`: the log lives on its shard's thread.

use std::cell::RefCell;
use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, Waker};

use crate::error::{Error, Result};
use crate::format::RecordKind;
use crate::meta::StateMachine;
use crate::pipeline::PipelinedLog;
use crate::storage::Storage;
use crate::writer::{Ack, AppendRequest, Ticket};

/// A [`PipelinedLog`] whose appends are futures.
pub struct AsyncLog<S: Storage + Send + 'static, M: StateMachine = ()> {
    inner: RefCell<Inner<S, M>>,
}

struct Inner<S: Storage + Send + 'static, M: StateMachine> {
    log: PipelinedLog<S, M>,
    /// Acks that arrived before their future was polled again.
    resolved: HashMap<Ticket, Ack>,
    /// Futures waiting for their batch.
    waiting: HashMap<Ticket, Waker>,
    /// Futures dropped before their ack arrived: the ack is discarded.
    abandoned: HashSet<Ticket>,
    /// The log failed a write or sync: every pending append fails.
    poisoned: bool,
}

impl<S: Storage + Send + 'static, M: StateMachine> AsyncLog<S, M> {
    /// Wraps an open pipelined log.
    pub fn new(log: PipelinedLog<S, M>) -> AsyncLog<S, M> {
        AsyncLog {
            inner: RefCell::new(Inner {
                log,
                resolved: HashMap::new(),
                waiting: HashMap::new(),
                abandoned: HashSet::new(),
                poisoned: false,
            }),
        }
    }

    /// Encodes the append now (its sequence is assigned by this call) and returns a
    /// future that resolves with its ack once the record is durable.
    pub fn append(&self, req: &AppendRequest<'_>) -> Durable<'_, S, M> {
        let mut inner = self.inner.borrow_mut();
        inner.pump_if_completed();
        let ticket = inner.log.append_nowait(req).and_then(|ticket| {
            inner.log.flush()?;
            Ok(ticket)
        });
        Durable {
            log: self,
            ticket: Some(ticket),
        }
    }

    /// Encodes a metadata append now and returns a future that resolves once it is
    /// durable (and folded into the state machine).
    pub fn append_meta(&self, kind: RecordKind, payload: &[u8], now_ms: u64) -> Durable<'_, S, M> {
        let mut inner = self.inner.borrow_mut();
        inner.pump_if_completed();
        let ticket = inner
            .log
            .append_meta_nowait(kind, payload, now_ms)
            .and_then(|ticket| {
                inner.log.flush()?;
                Ok(ticket)
            });
        Durable {
            log: self,
            ticket: Some(ticket),
        }
    }

    /// Runs `f` on the underlying log (reads, checkpoints, retention, last sequences).
    pub fn with_log<R>(&self, f: impl FnOnce(&mut PipelinedLog<S, M>) -> R) -> R {
        f(&mut self.inner.borrow_mut().log)
    }

    /// Appends still waiting for durability.
    pub fn pending(&self) -> usize {
        self.inner.borrow().waiting.len()
    }

    /// Waits for everything in flight, then returns the log.
    pub fn into_inner(self) -> Result<PipelinedLog<S, M>> {
        let mut inner = self.inner.into_inner();
        inner.log.drain()?;
        Ok(inner.log)
    }
}

impl<S: Storage + Send + 'static, M: StateMachine> Inner<S, M> {
    /// [`Inner::pump`] if a batch completed since the last look (one channel check
    /// otherwise). Every append calls it: on a busy shard the task the I/O thread wakes
    /// may wait behind many others, and until some task pumps, the disk idles and the
    /// completed appends wait.
    fn pump_if_completed(&mut self) {
        match self.log.collect_completions() {
            Ok(false) => {}
            Ok(true) => self.pump(),
            Err(_) => self.poison(),
        }
    }

    /// The log failed: every waiting future is woken to see the error.
    fn poison(&mut self) {
        self.poisoned = true;
        for (_, waker) in self.waiting.drain() {
            waker.wake();
        }
    }

    /// Collect completions, wake the futures they resolve, and hand the next batch to
    /// the I/O thread.
    fn pump(&mut self) {
        loop {
            let acks = match self.log.poll_acks().and_then(|acks| {
                self.log.flush()?;
                Ok(acks)
            }) {
                Ok(acks) => acks,
                Err(_) => {
                    self.poison();
                    return;
                }
            };
            if acks.is_empty() {
                return;
            }
            for (ticket, ack) in acks {
                if self.abandoned.remove(&ticket) {
                    continue;
                }
                if let Some(waker) = self.waiting.remove(&ticket) {
                    waker.wake();
                }
                self.resolved.insert(ticket, ack);
            }
            // The I/O thread wakes the one waker armed last. It may belong to a future
            // resolved just now, which never polls again; later batches would then
            // complete unnoticed until some other append happened to poll. Arm one that
            // still waits (its poll pumps for everyone), then look again for completions
            // that landed before it was armed.
            match self.waiting.values().next() {
                Some(waker) => self.log.wake_on_completion(waker),
                None => return,
            }
        }
    }

    /// Point the I/O thread's wake at a future that still waits, if any.
    fn rearm(&self) {
        if let Some(waker) = self.waiting.values().next() {
            self.log.wake_on_completion(waker);
        }
    }
}

/// The future of one append: resolves with its [`Ack`] once durable.
#[must_use = "the append is made either way; await this to know it is durable"]
pub struct Durable<'a, S: Storage + Send + 'static, M: StateMachine> {
    log: &'a AsyncLog<S, M>,
    /// `None` once the result was returned.
    ticket: Option<Result<Ticket>>,
}

impl<S: Storage + Send + 'static, M: StateMachine> Future for Durable<'_, S, M> {
    type Output = Result<Ack>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<Ack>> {
        let this = self.get_mut();
        let ticket = match this.ticket.take() {
            Some(Ok(ticket)) => ticket,
            Some(Err(e)) => return Poll::Ready(Err(e)),
            None => return Poll::Ready(Err(Error::InvalidRequest("polled after completion"))),
        };
        let mut inner = this.log.inner.borrow_mut();
        if let Some(ack) = inner.resolved.remove(&ticket) {
            return Poll::Ready(Ok(ack));
        }
        // Arm the I/O thread's wake before looking, so a completion landing in between
        // still wakes us.
        inner.log.wake_on_completion(cx.waker());
        inner.pump();
        if let Some(ack) = inner.resolved.remove(&ticket) {
            return Poll::Ready(Ok(ack));
        }
        if inner.poisoned {
            return Poll::Ready(Err(Error::Poisoned));
        }
        inner.waiting.insert(ticket, cx.waker().clone());
        drop(inner);
        this.ticket = Some(Ok(ticket));
        Poll::Pending
    }
}

impl<S: Storage + Send + 'static, M: StateMachine> Drop for Durable<'_, S, M> {
    fn drop(&mut self) {
        if let Some(Ok(ticket)) = self.ticket.take() {
            let mut inner = self.log.inner.borrow_mut();
            let was_waiting = inner.waiting.remove(&ticket).is_some();
            if inner.resolved.remove(&ticket).is_none() {
                inner.abandoned.insert(ticket);
            }
            if was_waiting {
                // Its wake may have been the one armed, or already spent on it: arm one
                // that still waits, then collect what completed meanwhile.
                inner.rearm();
                inner.pump();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;
    use crate::sim::SimStorage;
    use crate::storage::FsStorage;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;
    use std::task::Wake;

    /// A minimal single-threaded executor: polls every future until all are ready,
    /// parking the thread until a waker fires (no busy loop).
    struct Flag {
        woken: AtomicUsize,
        thread: std::thread::Thread,
    }

    impl Wake for Flag {
        fn wake(self: Arc<Self>) {
            self.woken.fetch_add(1, Ordering::SeqCst);
            self.thread.unpark();
        }
    }

    fn block_on_all<F: Future + Unpin>(mut futures: Vec<F>) -> Vec<F::Output> {
        let flag = Arc::new(Flag {
            woken: AtomicUsize::new(0),
            thread: std::thread::current(),
        });
        let waker = Waker::from(Arc::clone(&flag));
        let mut cx = Context::from_waker(&waker);
        let mut out: Vec<Option<F::Output>> = futures.iter().map(|_| None).collect();
        loop {
            let seen = flag.woken.load(Ordering::SeqCst);
            for (future, slot) in futures.iter_mut().zip(out.iter_mut()) {
                if slot.is_none() {
                    if let Poll::Ready(v) = Pin::new(future).poll(&mut cx) {
                        *slot = Some(v);
                    }
                }
            }
            if out.iter().all(Option::is_some) {
                return out.into_iter().flatten().collect();
            }
            if flag.woken.load(Ordering::SeqCst) == seen {
                std::thread::park_timeout(std::time::Duration::from_secs(5));
            }
        }
    }

    fn request(conversation_id: u64, payload: &[u8]) -> AppendRequest<'_> {
        AppendRequest {
            conversation_id,
            message_id: 1,
            timestamp_ms: 0,
            key: None,
            kind: RecordKind::Message,
            payload,
        }
    }

    #[test]
    fn many_concurrent_appends_resolve_in_call_order_and_are_durable() {
        let config = Config {
            segment_bytes: 64 * 1024,
            ..Config::default()
        };
        let (log, _) = PipelinedLog::open(SimStorage::new(), config, ()).unwrap();
        let log = AsyncLog::new(log);
        let futures: Vec<_> = (0..500u64)
            .map(|i| log.append(&request(i % 3, b"hi")))
            .collect();
        let acks: Vec<Ack> = block_on_all(futures)
            .into_iter()
            .map(|r| r.unwrap())
            .collect();
        for conversation in 0..3u64 {
            let seqs: Vec<u64> = acks
                .iter()
                .filter(|a| a.conversation_id == conversation)
                .map(|a| a.seq)
                .collect();
            let expected: Vec<u64> = (1..=seqs.len() as u64).collect();
            assert_eq!(seqs, expected, "call order is sequence order");
        }
        assert_eq!(log.pending(), 0);
        let page = log.with_log(|l| l.read_after(1, 0, 1000)).unwrap();
        assert_eq!(
            page.records.len(),
            acks.iter().filter(|a| a.conversation_id == 1).count()
        );
    }

    #[test]
    fn dropped_futures_do_not_leak_and_records_still_land() {
        let config = Config {
            segment_bytes: 64 * 1024,
            ..Config::default()
        };
        let (log, _) = PipelinedLog::open(SimStorage::new(), config, ()).unwrap();
        let log = AsyncLog::new(log);
        for _ in 0..10 {
            drop(log.append(&request(9, b"fire and forget")));
        }
        let last = block_on_all(vec![log.append(&request(9, b"awaited"))]);
        assert_eq!(last[0].as_ref().unwrap().seq, 11);
        let log = log.into_inner().unwrap();
        assert_eq!(log.last_seq(9), 11);
    }

    #[test]
    fn metadata_appends_are_futures_too() {
        let (log, _) = PipelinedLog::open(SimStorage::new(), Config::default(), ()).unwrap();
        let log = AsyncLog::new(log);
        let acks = block_on_all(vec![
            log.append_meta(RecordKind::User, b"u", 0),
            log.append_meta(RecordKind::Cursor, b"c", 0),
        ]);
        let seqs: Vec<u64> = acks.into_iter().map(|a| a.unwrap().seq).collect();
        assert_eq!(seqs, vec![1, 2], "metadata sequence, gap-free");
    }

    /// Polls `future` once with `flag`'s waker.
    fn poll_with<F: Future + Unpin>(future: &mut F, flag: &Arc<Flag>) -> Poll<F::Output> {
        let waker = Waker::from(Arc::clone(flag));
        Pin::new(future).poll(&mut Context::from_waker(&waker))
    }

    /// Parks until `flag` was woken more than `seen` times, or `within` passes.
    fn woken_within(flag: &Flag, seen: usize, within: std::time::Duration) -> bool {
        let deadline = std::time::Instant::now() + within;
        while flag.woken.load(Ordering::SeqCst) == seen {
            let now = std::time::Instant::now();
            if now >= deadline {
                return false;
            }
            std::thread::park_timeout(deadline - now);
        }
        true
    }

    /// A log on real files with one batch in flight at a time: a second append's batch
    /// leaves only when the first one's completion is collected.
    fn one_batch_in_flight(dir: &std::path::Path) -> AsyncLog<FsStorage> {
        let storage = FsStorage::open(dir).unwrap();
        let config = Config {
            pipeline_in_flight: 1,
            ..Config::default()
        };
        AsyncLog::new(PipelinedLog::open(storage, config, ()).unwrap().0)
    }

    /// A waker that counts its wakes and unparks this thread.
    fn new_flag() -> Arc<Flag> {
        Arc::new(Flag {
            woken: AtomicUsize::new(0),
            thread: std::thread::current(),
        })
    }

    /// Two tasks wait on different batches; the one woken first finishes and never polls
    /// again. The other must still be woken when its batch completes. (This once lost the
    /// wake: the I/O thread's waker slot kept the finished task's waker, and the waiting
    /// append sat until some other append polled the log — 5–10 ms in the gateway.)
    #[test]
    fn a_waiter_on_a_later_batch_is_woken_after_the_first_waiter_finishes() {
        let dir = tempfile::tempdir().unwrap();
        let log = one_batch_in_flight(dir.path());
        let (a, b) = (new_flag(), new_flag());
        let mut first = log.append(&request(1, b"first"));
        let mut second = log.append(&request(1, b"second"));
        assert!(poll_with(&mut second, &b).is_pending());
        let seen_a = a.woken.load(Ordering::SeqCst);
        match poll_with(&mut first, &a) {
            Poll::Pending => {
                assert!(
                    woken_within(&a, seen_a, std::time::Duration::from_secs(5)),
                    "first waiter woken"
                );
                assert!(matches!(poll_with(&mut first, &a), Poll::Ready(Ok(_))));
            }
            Poll::Ready(ack) => assert!(ack.is_ok()),
        }
        // `first` is done and never polled again; `second`, parked since its first poll,
        // must be woken once its batch is durable — without anyone polling the log.
        assert!(
            woken_within(&b, 0, std::time::Duration::from_secs(5)),
            "second waiter never woken after its batch completed"
        );
        match poll_with(&mut second, &b) {
            Poll::Ready(ack) => assert_eq!(ack.unwrap().seq, 2),
            Poll::Pending => panic!("woken but not resolved"),
        }
    }

    /// A batch completes while the task the I/O thread woke has not run yet (on a busy
    /// shard it waits behind others): the next append from any task collects the
    /// completion, resolves the waiters and sends the next batch to the disk.
    #[test]
    fn the_next_append_collects_a_completion_its_woken_task_has_not() {
        let dir = tempfile::tempdir().unwrap();
        let log = one_batch_in_flight(dir.path());
        // A round needs the first poll to find its batch still in flight (a write and
        // an fdatasync take ~100 µs; the poll comes right after the append).
        for round in 0..10u64 {
            let (a, b) = (2 * round + 1, 2 * round + 2);
            let woken = new_flag();
            let mut first = log.append(&request(a, b"first"));
            if poll_with(&mut first, &woken).is_ready() {
                continue;
            }
            assert!(
                woken_within(&woken, 0, std::time::Duration::from_secs(5)),
                "the I/O thread wakes the waiting task"
            );
            // The woken task does not run; another task appends.
            assert_eq!(log.with_log(|l| l.last_seq(a)), 0, "not collected yet");
            let second = log.append(&request(b, b"second"));
            assert_eq!(
                log.with_log(|l| l.last_seq(a)),
                1,
                "the append collected the first batch's completion"
            );
            assert_eq!(
                log.with_log(|l| l.in_flight()),
                1,
                "and sent its own batch to the disk at once"
            );
            assert!(matches!(poll_with(&mut first, &woken), Poll::Ready(Ok(_))));
            let acks = block_on_all(vec![second]);
            assert_eq!(acks[0].as_ref().unwrap().seq, 1);
            return;
        }
        panic!("no first append was still in flight when polled, in 10 rounds");
    }

    /// The future whose waker the I/O thread woke is dropped before it polls: the other
    /// waiters must not be stranded.
    #[test]
    fn dropping_the_woken_waiter_does_not_strand_the_others() {
        let dir = tempfile::tempdir().unwrap();
        let log = one_batch_in_flight(dir.path());
        // The scene needs both futures parked before the first batch completes. `append`
        // hands that batch to the I/O thread at once, so on a loaded host it can be
        // durable before the first poll: then finish that round and set it up again.
        let mut rounds = 0u64;
        let (a, mut kept) = loop {
            assert!(
                rounds < 100,
                "the first batch always completed before a poll"
            );
            rounds += 1;
            let (a, b) = (new_flag(), new_flag());
            let mut kept = log.append(&request(1, b"kept"));
            let mut dropped = log.append(&request(1, b"dropped"));
            // A future that returned `Ready` must not be polled again.
            let unfinished = match poll_with(&mut kept, &a) {
                Poll::Ready(ack) => {
                    assert!(ack.is_ok());
                    dropped
                }
                Poll::Pending => match poll_with(&mut dropped, &b) {
                    Poll::Ready(ack) => {
                        assert!(ack.is_ok());
                        kept
                    }
                    Poll::Pending => {
                        // The first batch completes; its wake goes to the waker armed
                        // last: `dropped`'s.
                        assert!(woken_within(&b, 0, std::time::Duration::from_secs(5)));
                        drop(dropped);
                        break (a, kept);
                    }
                },
            };
            assert!(block_on_all(vec![unfinished]).iter().all(|ack| ack.is_ok()));
        };
        assert!(
            woken_within(&a, 0, std::time::Duration::from_secs(5)),
            "the remaining waiter was stranded"
        );
        match poll_with(&mut kept, &a) {
            // Each round appended two records to conversation 1; `kept` is the first.
            Poll::Ready(ack) => assert_eq!(ack.unwrap().seq, 2 * rounds - 1),
            Poll::Pending => panic!("woken but not resolved"),
        }
    }

    #[test]
    fn real_files_wake_from_the_io_thread() {
        let dir = tempfile::tempdir().unwrap();
        let storage = FsStorage::open(dir.path()).unwrap();
        // Small segments: the test also rolls across them while futures wait.
        let config = Config {
            segment_bytes: 16 * 1024,
            ..Config::default()
        };
        let (log, _) = PipelinedLog::open(storage, config, ()).unwrap();
        let log = AsyncLog::new(log);
        for round in 0..20u64 {
            let futures: Vec<_> = (0..50).map(|_| log.append(&request(round, b"x"))).collect();
            let acks = block_on_all(futures);
            assert!(acks.iter().all(|a| a.is_ok()));
        }
        assert_eq!(log.with_log(|l| l.last_seq(19)), 50);
    }
}
