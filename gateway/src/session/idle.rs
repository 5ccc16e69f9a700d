//! Idle timeouts for a whole shard: one coarse timing wheel instead of one timer per
//! session.
//!
//! A session only records when it last heard its peer (a `Cell` write per batch of
//! frames). The wheel holds a weak reference to each session in the bucket of the tick
//! its deadline falls in; one task per shard ([`run`]) advances the wheel every tick.
//! A due session that heard something since goes to the bucket of its new deadline
//! (`last heard + idle timeout`); one that did not is asked to close (`IdleTimeout`).
//! So each session is looked at about once per idle timeout, however busy it is.
//!
//! Why not a timer per session: every turn of a session's loop re-armed one. On a shard
//! holding 10K connections pinging once a second, the glommio timer insert, remove and
//! processing took ~2.4% of the shard and each re-arm's io_uring cancel walked a bucket
//! of the armed socket polls (`io_poll_find` 10.7%, `perf record` of the shard), and the
//! timer made every idle session's task bigger.
//!
//! Precision: a session closes between its idle timeout and one tick later.

use std::rc::{Rc, Weak};
use std::time::{Duration, Instant};

/// Ticks per idle timeout: the wheel closes an idle session at most this fraction of
/// the timeout late.
pub const IDLE_TICKS_PER_TIMEOUT: u32 = 16;
/// Longest tick (the default 90 s timeout gets 1 s ticks).
pub const IDLE_TICK_MAX: Duration = Duration::from_secs(1);
/// Shortest tick (tests use timeouts of about a second).
pub const IDLE_TICK_MIN: Duration = Duration::from_millis(10);

/// What the wheel needs of a session.
pub trait Watched {
    /// When the peer was last heard.
    fn last_heard(&self) -> Instant;
    /// True once the session is closing or closed: the wheel forgets it.
    fn is_done(&self) -> bool;
}

/// The tick for an idle timeout: a sixteenth of it, within
/// [`IDLE_TICK_MIN`, `IDLE_TICK_MAX`].
pub fn tick_for(timeout: Duration) -> Duration {
    (timeout / IDLE_TICKS_PER_TIMEOUT).clamp(IDLE_TICK_MIN, IDLE_TICK_MAX)
}

/// Sessions by the tick their idle deadline falls in.
pub struct IdleWheel<T> {
    timeout: Duration,
    tick: Duration,
    epoch: Instant,
    /// Ring of buckets; tick `k` is in `buckets[k % len]`. Every deadline is less than
    /// `len` ticks ahead of the tick being processed.
    buckets: Vec<Vec<Weak<T>>>,
    /// The next tick to process: every earlier bucket is empty.
    next_tick: u64,
    watched: usize,
}

impl<T: Watched> IdleWheel<T> {
    pub fn new(timeout: Duration, now: Instant) -> IdleWheel<T> {
        let tick = tick_for(timeout);
        let ticks = timeout.as_nanos().div_ceil(tick.as_nanos()) as usize;
        IdleWheel {
            timeout,
            tick,
            epoch: now,
            // A session heard now has its deadline `ticks` ahead (+1 rounding up), and
            // `next_tick` may lag now by a tick: deadlines fit the ring.
            buckets: (0..ticks + 3).map(|_| Vec::new()).collect(),
            next_tick: 0,
            watched: 0,
        }
    }

    /// How often [`IdleWheel::expire`] should run.
    pub fn tick(&self) -> Duration {
        self.tick
    }

    /// Sessions the wheel holds (some may have ended since).
    pub fn len(&self) -> usize {
        self.watched
    }

    pub fn is_empty(&self) -> bool {
        self.watched == 0
    }

    /// Starts watching a session whose peer was heard at `last_heard()`.
    pub fn watch(&mut self, session: &Rc<T>) {
        let deadline = session.last_heard() + self.timeout;
        self.place(Rc::downgrade(session), deadline);
    }

    /// The first tick at or after `deadline`, never one already processed.
    fn tick_of(&self, deadline: Instant) -> u64 {
        let since = deadline.saturating_duration_since(self.epoch).as_nanos();
        let tick = since.div_ceil(self.tick.as_nanos()) as u64;
        tick.max(self.next_tick)
    }

    fn place(&mut self, session: Weak<T>, deadline: Instant) {
        // A deadline beyond the ring (not one of a session heard now) goes to its last
        // bucket: when that comes due, the deadline is checked and the session re-placed.
        let len = self.buckets.len() as u64;
        let tick = self.tick_of(deadline).min(self.next_tick + len - 1);
        self.buckets[(tick % len) as usize].push(session);
        self.watched += 1;
    }

    /// Processes every tick up to `now`: returns the sessions idle for the timeout (each
    /// once: the wheel forgets them) and moves the others to their new deadlines.
    pub fn expire(&mut self, now: Instant) -> Vec<Rc<T>> {
        let mut idle = Vec::new();
        let now_tick =
            (now.saturating_duration_since(self.epoch).as_nanos() / self.tick.as_nanos()) as u64;
        let len = self.buckets.len() as u64;
        while self.next_tick <= now_tick {
            let due = std::mem::take(&mut self.buckets[(self.next_tick % len) as usize]);
            self.watched -= due.len();
            self.next_tick += 1;
            for weak in due {
                let Some(session) = weak.upgrade() else {
                    continue;
                };
                if session.is_done() {
                    continue;
                }
                let deadline = session.last_heard() + self.timeout;
                if deadline <= now {
                    idle.push(session);
                } else {
                    self.place(weak, deadline);
                }
            }
        }
        idle
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::Cell;

    struct Fake {
        heard: Cell<Instant>,
        done: Cell<bool>,
    }

    impl Watched for Fake {
        fn last_heard(&self) -> Instant {
            self.heard.get()
        }
        fn is_done(&self) -> bool {
            self.done.get()
        }
    }

    fn fake(at: Instant) -> Rc<Fake> {
        Rc::new(Fake {
            heard: Cell::new(at),
            done: Cell::new(false),
        })
    }

    const TIMEOUT: Duration = Duration::from_secs(16);

    #[test]
    fn a_silent_session_expires_within_one_tick_after_its_timeout() {
        let t0 = Instant::now();
        let mut wheel = IdleWheel::new(TIMEOUT, t0);
        assert_eq!(wheel.tick(), Duration::from_secs(1));
        let s = fake(t0 + Duration::from_millis(300));
        wheel.watch(&s);
        let mut at = t0;
        let expired_at = loop {
            at += Duration::from_millis(100);
            if !wheel.expire(at).is_empty() {
                break at;
            }
            assert!(at < t0 + Duration::from_secs(60), "never expired");
        };
        let deadline = s.heard.get() + TIMEOUT;
        assert!(expired_at >= deadline, "early: {:?}", deadline - expired_at);
        assert!(expired_at <= deadline + wheel.tick(), "late");
        assert!(wheel.is_empty(), "forgotten once expired");
        assert!(wheel.expire(at + TIMEOUT * 3).is_empty(), "reported once");
    }

    #[test]
    fn a_session_that_keeps_talking_never_expires_and_is_checked_once_per_timeout() {
        let t0 = Instant::now();
        let mut wheel = IdleWheel::new(TIMEOUT, t0);
        let s = fake(t0);
        wheel.watch(&s);
        for ms in (0..600_000u64).step_by(250) {
            let now = t0 + Duration::from_millis(ms);
            s.heard.set(now);
            assert!(
                wheel.expire(now).is_empty(),
                "expired while talking at {ms} ms"
            );
            assert_eq!(wheel.len(), 1);
        }
        // Then it falls silent.
        let silent_from = s.heard.get();
        let mut now = silent_from;
        while wheel.expire(now).is_empty() {
            now += Duration::from_millis(250);
        }
        assert!(now >= silent_from + TIMEOUT && now <= silent_from + TIMEOUT + wheel.tick());
    }

    #[test]
    fn ended_sessions_are_dropped_without_being_reported() {
        let t0 = Instant::now();
        let mut wheel = IdleWheel::new(TIMEOUT, t0);
        let closed = fake(t0);
        let dropped = fake(t0);
        let silent = fake(t0);
        for s in [&closed, &dropped, &silent] {
            wheel.watch(s);
        }
        closed.done.set(true);
        drop(dropped);
        let idle = wheel.expire(t0 + TIMEOUT + Duration::from_secs(1));
        assert_eq!(idle.len(), 1);
        assert!(Rc::ptr_eq(&idle[0], &silent));
        assert!(wheel.is_empty());
    }

    #[test]
    fn a_late_sweep_catches_up_over_many_ticks() {
        let t0 = Instant::now();
        let mut wheel = IdleWheel::new(TIMEOUT, t0);
        let sessions: Vec<_> = (0..100)
            .map(|i| fake(t0 + Duration::from_millis(i * 150)))
            .collect();
        for s in &sessions {
            wheel.watch(s);
        }
        // The shard was stalled for several timeouts: one call processes every tick.
        let idle = wheel.expire(t0 + TIMEOUT * 4);
        assert_eq!(idle.len(), 100);
        assert!(wheel.is_empty());
    }

    #[test]
    fn ticks_follow_the_timeout_within_bounds() {
        assert_eq!(tick_for(Duration::from_secs(90)), IDLE_TICK_MAX);
        assert_eq!(
            tick_for(Duration::from_millis(1600)),
            Duration::from_millis(100)
        );
        assert_eq!(tick_for(Duration::from_millis(50)), IDLE_TICK_MIN);
        // The longest deadline fits the ring whatever the rounding.
        let t0 = Instant::now();
        let mut wheel: IdleWheel<Fake> = IdleWheel::new(Duration::from_millis(1550), t0);
        let s = fake(t0 + Duration::from_millis(99));
        wheel.watch(&s);
        assert!(wheel.expire(t0 + Duration::from_millis(1640)).is_empty());
        assert_eq!(wheel.expire(t0 + Duration::from_millis(1800)).len(), 1);
    }
}
