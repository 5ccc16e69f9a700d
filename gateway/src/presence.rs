//! Presence and typing: ephemeral signals, never written to the message log
//! (docs/architecture.md, "Presence and typing").
//!
//! # Presence
//! A user's presence lives on the user's home shard, where all of its connections are.
//! The user is *Online* while any connected device says Online, *Away* while every
//! connected device that shows itself says Away, and *Offline* otherwise (a device that
//! sets Offline is invisible: connected, but not shown). A connection that stops
//! heartbeating is closed at the idle timeout, which takes the user offline.
//!
//! *Last seen* is the newest frame time of any visible connection while online, and the
//! time the last visible connection ended once offline. It is kept in memory and written
//! (one [`MetaEvent::LastSeen`] record per batch) at most once per
//! `presence_persist_interval` per user, never per heartbeat; a crash loses at most one
//! interval of it.
//!
//! *Visibility*: a user may see the presence of users it shares a conversation with
//! (a direct conversation or a group), and its own. Others are left out of answers,
//! exactly as unknown users are, so presence cannot be used to probe for accounts.
//! The check runs when a query or subscription is made; a subscription lasts until the
//! subscriber unsubscribes or disconnects.
//!
//! *Subscriptions* are held twice: the subscriber's shard keeps which of its sessions
//! watch a user; the user's home keeps which shards watch it (with a count of session
//! subscriptions each). A change marks the user dirty; at most once per
//! `presence_coalesce` window the home compares each dirty user's status with what it
//! last published and sends one batch per watching shard. A user flapping faster than
//! the window reaches subscribers at most once per window, and not at all if it ends the
//! window where it started.
//!
//! # Typing
//! A device's typing state per conversation lives in its session on the user's home.
//! Only changes travel: a start (a refresh of an active conversation only moves its
//! deadline), a stop, and the stop the server sends itself after `typing_ttl` without a
//! refresh or when the connection ends. Starts are rate-limited per connection
//! ([`TYPING_STARTS_PER_SEC`]); starts over the limit are dropped. Direct conversations go
//! straight to the peer's home; groups through the owner, which knows the members.

use std::cell::Cell;
use std::collections::{BTreeSet, HashMap, HashSet};
use std::rc::Rc;
use std::time::Instant;

use wire::message::{
    Body, ErrorCode, Frame, PresenceEntry, PresenceStatus, PresenceUpdate, Typing,
};

use crate::chat::{now_ms, ApiError, ShardMsg};
use crate::session::lazy::Lazy;
use crate::session::live::SessionHandle;
use crate::shard::Shard;
use crate::state::MetaEvent;

/// Users one connection may subscribe to at once.
pub const PRESENCE_SUBSCRIPTIONS_PER_SESSION_MAX: usize = 1024;

/// Conversations one connection may be typing in at once.
pub const TYPING_CONVERSATIONS_PER_SESSION_MAX: usize = 64;

/// Typing starts one connection may send per second, sustained (burst: twice this).
pub const TYPING_STARTS_PER_SEC: f64 = 4.0;

/// Last-seen entries per metadata record (keeps records far below the log's limit).
pub const LAST_SEEN_ENTRIES_PER_RECORD: usize = 4096;

/// Per-connection presence and typing state.
#[derive(Debug)]
pub struct SessionPresence {
    /// What this device shows (Offline = invisible).
    pub status: Cell<PresenceStatus>,
    /// Wall-clock ms of the newest frame from the device.
    pub last_active_ms: Cell<u64>,
    /// Subscriptions and typing, allocated when the connection first uses either (an
    /// idle connection never does).
    sets: Lazy<PresenceSets>,
}

/// The part of a connection's presence state that only an active connection has.
#[derive(Debug)]
struct PresenceSets {
    /// Users this connection subscribed to.
    subscriptions: HashSet<u64>,
    /// Users a subscribe of this connection is asking the homes about right now.
    pending: HashSet<u64>,
    /// Conversations this device is typing in, with when the state expires.
    typing: HashMap<u64, Instant>,
    /// Typing-start tokens (a bucket of `2 × TYPING_STARTS_PER_SEC`, full at first use).
    typing_tokens: f64,
    typing_refilled: Instant,
}

impl Default for SessionPresence {
    fn default() -> Self {
        SessionPresence {
            status: Cell::new(PresenceStatus::Online),
            last_active_ms: Cell::new(now_ms()),
            sets: Lazy::default(),
        }
    }
}

impl Default for PresenceSets {
    fn default() -> Self {
        PresenceSets {
            subscriptions: HashSet::new(),
            pending: HashSet::new(),
            typing: HashMap::new(),
            typing_tokens: TYPING_STARTS_PER_SEC * 2.0,
            typing_refilled: Instant::now(),
        }
    }
}

impl PresenceSets {
    /// Take one typing-start token; false if the connection is over the limit.
    fn allow_typing_start(&mut self, now: Instant) -> bool {
        let elapsed = now
            .saturating_duration_since(self.typing_refilled)
            .as_secs_f64();
        self.typing_refilled = now;
        let tokens =
            (self.typing_tokens + elapsed * TYPING_STARTS_PER_SEC).min(TYPING_STARTS_PER_SEC * 2.0);
        if tokens >= 1.0 {
            self.typing_tokens = tokens - 1.0;
            true
        } else {
            self.typing_tokens = tokens;
            false
        }
    }
}

/// A shard's presence bookkeeping (none of it persisted but last-seen).
#[derive(Default)]
pub struct PresenceRuntime {
    /// Home side: the status watchers were last sent, for users not Offline.
    published: HashMap<u64, PresenceStatus>,
    /// Home side: users whose status may have changed since the last flush.
    dirty: BTreeSet<u64>,
    /// Home side: dirty users a new watcher was told about before the flush: sent at the
    /// flush even if unchanged since the last publication (the watcher's view may be
    /// newer than it).
    forced: HashSet<u64>,
    flush_scheduled: bool,
    /// Home side: per user, the shards watching it and their subscription counts.
    watchers: HashMap<u64, HashMap<usize, u32>>,
    /// Home side: last-seen times newer than the folded state, not yet written.
    last_seen: HashMap<u64, u64>,
    /// Watching side: the sessions of this shard subscribed to each user.
    local: HashMap<u64, Vec<Rc<SessionHandle>>>,
    /// Updates sent to watching shards and to sessions (for metrics and benchmarks).
    pub updates_sent: u64,
}

fn rank(status: PresenceStatus) -> u8 {
    match status {
        PresenceStatus::Online => 2,
        PresenceStatus::Away => 1,
        PresenceStatus::Offline => 0,
    }
}

/// The user's presence as the home shard sees it now.
pub fn current(shard: &Shard, user_id: u64) -> PresenceEntry {
    let mut status = PresenceStatus::Offline;
    let mut active = 0;
    for session in shard.sessions.borrow().of_user_iter(user_id) {
        let shown = session.presence.status.get();
        if session.is_closed() || shown == PresenceStatus::Offline {
            continue;
        }
        if rank(shown) > rank(status) {
            status = shown;
        }
        active = active.max(session.presence.last_active_ms.get());
    }
    let last_seen_ms = if status == PresenceStatus::Offline {
        let remembered = shard.presence.borrow().last_seen.get(&user_id).copied();
        remembered
            .unwrap_or_else(|| shard.state(|s| s.users.get(&user_id).map_or(0, |u| u.last_seen_ms)))
    } else {
        active
    };
    PresenceEntry {
        user_id,
        last_seen_ms,
        status,
    }
}

// ----- home side ----------------------------------------------------------------------

/// A session of `user_id` opened, closed or changed what it shows.
pub fn changed(shard: &Rc<Shard>, user_id: u64) {
    let schedule = {
        let mut runtime = shard.presence.borrow_mut();
        runtime.dirty.insert(user_id);
        !std::mem::replace(&mut runtime.flush_scheduled, true)
    };
    if schedule {
        let shard = shard.clone();
        glommio::spawn_local(async move {
            glommio::timer::sleep(shard.config.presence_coalesce).await;
            flush_changes(&shard).await;
        })
        .detach();
    }
}

/// Send each dirty user's status to its watchers, if it differs from the last sent.
async fn flush_changes(shard: &Rc<Shard>) {
    let dirty = {
        let mut runtime = shard.presence.borrow_mut();
        runtime.flush_scheduled = false;
        std::mem::take(&mut runtime.dirty)
    };
    let mut batches: HashMap<usize, Vec<PresenceEntry>> = HashMap::new();
    for user_id in dirty {
        let entry = current(shard, user_id);
        let mut runtime = shard.presence.borrow_mut();
        let before = runtime
            .published
            .get(&user_id)
            .copied()
            .unwrap_or(PresenceStatus::Offline);
        let forced = runtime.forced.remove(&user_id);
        if before == entry.status && !forced {
            continue;
        }
        if entry.status == PresenceStatus::Offline {
            runtime.published.remove(&user_id);
        } else {
            runtime.published.insert(user_id, entry.status);
        }
        if let Some(watchers) = runtime.watchers.get(&user_id) {
            for &to in watchers.keys() {
                batches.entry(to).or_default().push(entry.clone());
            }
        }
    }
    for (to, entries) in batches {
        shard.route(to, ShardMsg::PresenceChanged { entries }).await;
    }
}

/// A device changed what it shows (Offline = invisible).
pub fn set_status(shard: &Rc<Shard>, session: &SessionHandle, status: PresenceStatus) {
    let before = session.presence.status.replace(status);
    if before == status {
        return;
    }
    if status == PresenceStatus::Offline {
        remember_last_seen(
            shard,
            session.user_id,
            session.presence.last_active_ms.get(),
        );
    }
    changed(shard, session.user_id);
}

fn remember_last_seen(shard: &Shard, user_id: u64, at: u64) {
    let mut runtime = shard.presence.borrow_mut();
    let seen = runtime.last_seen.entry(user_id).or_insert(0);
    *seen = (*seen).max(at);
}

/// The last visible connection of a user may have ended: remember when.
pub fn session_ended(shard: &Rc<Shard>, session: &SessionHandle) {
    if session.presence.status.get() != PresenceStatus::Offline {
        // The connection ended now, or at its idle timeout: seen until its last frame.
        remember_last_seen(
            shard,
            session.user_id,
            session.presence.last_active_ms.get(),
        );
    }
    unsubscribe_all(shard, session);
    stop_all_typing(shard, session);
    changed(shard, session.user_id);
}

/// Answer a query from `viewer` (whose conversations are `viewer_conversations`, sorted)
/// for the users of this home it may see; with `watch_from`, that shard now watches them.
pub fn query(
    shard: &Shard,
    viewer: u64,
    viewer_conversations: &[u64],
    user_ids: &[u64],
    watch_from: Option<usize>,
) -> Vec<PresenceEntry> {
    let visible: Vec<u64> = shard.state(|s| {
        user_ids
            .iter()
            .copied()
            .filter(|&user_id| {
                let Some(user) = s.users.get(&user_id) else {
                    return false;
                };
                user_id == viewer
                    || if user.conversations.len() < viewer_conversations.len() {
                        user.conversations
                            .keys()
                            .any(|c| viewer_conversations.binary_search(c).is_ok())
                    } else {
                        viewer_conversations
                            .iter()
                            .any(|c| user.conversations.contains_key(c))
                    }
            })
            .collect()
    });
    if let Some(from) = watch_from {
        let mut runtime = shard.presence.borrow_mut();
        for &user_id in &visible {
            if runtime.dirty.contains(&user_id) {
                runtime.forced.insert(user_id);
            }
            *runtime
                .watchers
                .entry(user_id)
                .or_default()
                .entry(from)
                .or_insert(0) += 1;
        }
    }
    visible.into_iter().map(|u| current(shard, u)).collect()
}

/// A shard dropped one subscription to each of `user_ids`.
pub fn unwatch(shard: &Shard, from: usize, user_ids: &[u64]) {
    let mut runtime = shard.presence.borrow_mut();
    for user_id in user_ids {
        let Some(watchers) = runtime.watchers.get_mut(user_id) else {
            continue;
        };
        if let Some(count) = watchers.get_mut(&from) {
            *count = count.saturating_sub(1);
            if *count == 0 {
                watchers.remove(&from);
            }
        }
        if watchers.is_empty() {
            runtime.watchers.remove(user_id);
        }
    }
}

/// Write the last-seen times that moved since they were last written: those of users
/// gone offline since the last run and of online users that were active. Run once per
/// `presence_persist_interval` (and at shutdown), so each user is written at most once
/// per interval however often it heartbeats.
pub async fn persist_last_seen(shard: &Rc<Shard>) {
    let mut entries: HashMap<u64, u64> = shard.presence.borrow().last_seen.clone();
    {
        let registry = shard.sessions.borrow();
        for (user_id, sessions) in registry.users() {
            let active = sessions
                .iter()
                .filter(|s| s.presence.status.get() != PresenceStatus::Offline)
                .map(|s| s.presence.last_active_ms.get())
                .max();
            if let Some(active) = active {
                let seen = entries.entry(user_id).or_insert(0);
                *seen = (*seen).max(active);
            }
        }
    }
    let mut entries: Vec<(u64, u64)> = shard.state(|s| {
        entries
            .into_iter()
            .filter(|&(user_id, at)| s.users.get(&user_id).is_some_and(|u| at > u.last_seen_ms))
            .collect()
    });
    entries.sort_unstable();
    for chunk in entries.chunks(LAST_SEEN_ENTRIES_PER_RECORD) {
        let event = MetaEvent::LastSeen {
            entries: chunk.to_vec(),
        };
        // A failed write keeps the times in memory for the next run.
        let _ = crate::chat::persist(shard, &event).await;
    }
    // What is written (and folded) need not be remembered any more.
    let remembered: Vec<(u64, u64)> = shard
        .presence
        .borrow()
        .last_seen
        .iter()
        .map(|(&u, &t)| (u, t))
        .collect();
    let written: Vec<u64> = shard.state(|s| {
        remembered
            .into_iter()
            .filter(|&(u, at)| s.users.get(&u).is_none_or(|user| user.last_seen_ms >= at))
            .map(|(u, _)| u)
            .collect()
    });
    let mut runtime = shard.presence.borrow_mut();
    for user_id in written {
        runtime.last_seen.remove(&user_id);
    }
}

/// Write last-seen times every `presence_persist_interval` until shutdown.
pub async fn persist_loop(shard: Rc<Shard>) {
    let mut stop = shard.shutdown.wait();
    loop {
        let deadline = Instant::now() + shard.config.presence_persist_interval;
        let never = futures_lite::future::pending::<()>();
        match crate::session::io::race(never, deadline, Some(&mut stop)).await {
            crate::session::io::Woken::Deadline => persist_last_seen(&shard).await,
            _ => return,
        }
    }
}

// ----- watching side ------------------------------------------------------------------

/// Presence changes from a home: hand each to the sessions here that subscribed.
pub fn deliver_changes(shard: &Shard, entries: Vec<PresenceEntry>) {
    let mut per_session: HashMap<u64, (Rc<SessionHandle>, Vec<PresenceEntry>)> = HashMap::new();
    {
        let runtime = shard.presence.borrow();
        for entry in entries {
            for session in runtime.local.get(&entry.user_id).into_iter().flatten() {
                per_session
                    .entry(session.session_id)
                    .or_insert_with(|| (session.clone(), Vec::new()))
                    .1
                    .push(entry.clone());
            }
        }
    }
    let sent = per_session.len() as u64;
    for (_, (session, entries)) in per_session {
        session.push_live(Frame {
            request_id: 0,
            body: Body::PresenceUpdate(PresenceUpdate { entries }),
        });
    }
    shard.presence.borrow_mut().updates_sent += sent;
    shard.counters().presence_pushed(sent);
}

/// The session's conversations, sorted (the viewer side of the visibility check).
fn conversations_of(shard: &Shard, user_id: u64) -> Vec<u64> {
    let mut ids: Vec<u64> = shard.state(|s| {
        s.users
            .get(&user_id)
            .map_or_else(Vec::new, |u| u.conversations.keys().copied().collect())
    });
    ids.sort_unstable();
    ids
}

/// Answer a `PresenceQuery` (`watch = false`) or `PresenceSubscribe` (`watch = true`).
pub async fn query_or_subscribe(
    shard: &Rc<Shard>,
    session: &Rc<SessionHandle>,
    user_ids: Vec<u64>,
    watch: bool,
) -> Result<PresenceUpdate, ApiError> {
    let mut wanted: Vec<u64> = user_ids;
    wanted.sort_unstable();
    wanted.dedup();
    if watch {
        // Subscribes run as tasks of their own, so two may be in flight: ids one of them
        // is asking about count as taken (no double watch, and the cap holds).
        let mut sets = session.presence.sets.borrow_mut();
        let PresenceSets {
            subscriptions: subscribed,
            pending,
            ..
        } = &mut *sets;
        wanted.retain(|u| !subscribed.contains(u) && !pending.contains(u));
        if subscribed.len() + pending.len() + wanted.len() > PRESENCE_SUBSCRIPTIONS_PER_SESSION_MAX
        {
            return Err(ApiError::new(
                ErrorCode::TooLarge,
                format!(
                    "a connection may subscribe to at most \
                     {PRESENCE_SUBSCRIPTIONS_PER_SESSION_MAX} users"
                ),
            ));
        }
        pending.extend(wanted.iter().copied());
    }
    let asked = wanted.clone();
    let answer = ask_homes(shard, session, wanted, watch).await;
    if watch {
        session.presence.sets.with_existing(|sets| {
            for user_id in asked {
                sets.pending.remove(&user_id);
            }
        });
    }
    answer
}

async fn ask_homes(
    shard: &Rc<Shard>,
    session: &Rc<SessionHandle>,
    wanted: Vec<u64>,
    watch: bool,
) -> Result<PresenceUpdate, ApiError> {
    let conversations = conversations_of(shard, session.user_id);
    let by_home = shard.users_by_home(wanted);
    let watch_from = watch.then_some(shard.global_id());
    let mut entries = Vec::new();
    for (home, user_ids) in by_home {
        let viewer = session.user_id;
        let viewer_conversations = conversations.clone();
        let found = shard
            .call(home, |reply| ShardMsg::PresenceQuery {
                viewer,
                viewer_conversations,
                user_ids,
                watch_from,
                reply,
            })
            .await?;
        if watch {
            let ids: Vec<u64> = found.iter().map(|e| e.user_id).collect();
            if session.is_closed() {
                // Ended meanwhile: its subscriptions were already dropped.
                shard
                    .route(
                        home,
                        ShardMsg::PresenceUnwatch {
                            from: shard.global_id(),
                            user_ids: ids,
                        },
                    )
                    .await;
            } else {
                let mut runtime = shard.presence.borrow_mut();
                let mut sets = session.presence.sets.borrow_mut();
                for user_id in ids {
                    sets.subscriptions.insert(user_id);
                    runtime
                        .local
                        .entry(user_id)
                        .or_default()
                        .push(session.clone());
                }
            }
        }
        entries.extend(found);
    }
    entries.sort_unstable_by_key(|e| e.user_id);
    Ok(PresenceUpdate { entries })
}

/// Drop some of a session's subscriptions.
pub fn unsubscribe(shard: &Rc<Shard>, session: &SessionHandle, user_ids: &[u64]) {
    let dropped: Vec<u64> = session
        .presence
        .sets
        .with_existing(|sets| {
            user_ids
                .iter()
                .copied()
                .filter(|u| sets.subscriptions.remove(u))
                .collect()
        })
        .unwrap_or_default();
    drop_local(shard, session, dropped);
}

fn unsubscribe_all(shard: &Rc<Shard>, session: &SessionHandle) {
    let dropped: Vec<u64> = session
        .presence
        .sets
        .with_existing(|sets| sets.subscriptions.drain().collect())
        .unwrap_or_default();
    drop_local(shard, session, dropped);
}

fn drop_local(shard: &Rc<Shard>, session: &SessionHandle, user_ids: Vec<u64>) {
    if user_ids.is_empty() {
        return;
    }
    {
        let mut runtime = shard.presence.borrow_mut();
        for user_id in &user_ids {
            if let Some(list) = runtime.local.get_mut(user_id) {
                list.retain(|s| s.session_id != session.session_id);
                if list.is_empty() {
                    runtime.local.remove(user_id);
                }
            }
        }
    }
    for (home, user_ids) in shard.users_by_home(user_ids) {
        let msg = ShardMsg::PresenceUnwatch {
            from: shard.global_id(),
            user_ids,
        };
        let shard = shard.clone();
        glommio::spawn_local(async move { shard.route(home, msg).await }).detach();
    }
}

// ----- typing -------------------------------------------------------------------------

/// A `Typing` frame from a device.
pub fn typing(
    shard: &Rc<Shard>,
    session: &Rc<SessionHandle>,
    typing: &Typing,
) -> Result<(), ApiError> {
    let conversation_id = typing.conversation_id;
    let Some(peer) = shard.state(|s| {
        s.membership(session.user_id, conversation_id)
            .map(|m| m.peer_user_id)
    }) else {
        return Err(ApiError::forbidden());
    };
    let now = Instant::now();
    let deadline = now + shard.config.typing_ttl;
    if typing.active {
        let mut sets = session.presence.sets.borrow_mut();
        if let Some(expires) = sets.typing.get_mut(&conversation_id) {
            *expires = deadline;
            return Ok(());
        }
        if sets.typing.len() >= TYPING_CONVERSATIONS_PER_SESSION_MAX {
            return Err(ApiError::new(
                ErrorCode::TooLarge,
                format!(
                    "typing in more than {TYPING_CONVERSATIONS_PER_SESSION_MAX} \
                     conversations at once"
                ),
            ));
        }
        if !sets.allow_typing_start(now) {
            shard.counters().rate_limited();
            return Ok(());
        }
        sets.typing.insert(conversation_id, deadline);
        drop(sets);
        forward_typing(shard, session.user_id, conversation_id, peer, true);
        let (shard, session) = (shard.clone(), session.clone());
        glommio::spawn_local(expire_typing(shard, session, conversation_id, peer)).detach();
    } else if session
        .presence
        .sets
        .with_existing(|sets| sets.typing.remove(&conversation_id))
        .flatten()
        .is_some()
    {
        forward_typing(shard, session.user_id, conversation_id, peer, false);
    }
    Ok(())
}

/// Send the stop when the state's deadline passes without a refresh.
async fn expire_typing(
    shard: Rc<Shard>,
    session: Rc<SessionHandle>,
    conversation_id: u64,
    peer: u64,
) {
    loop {
        let Some(deadline) = session
            .presence
            .sets
            .with_existing(|sets| sets.typing.get(&conversation_id).copied())
            .flatten()
        else {
            return; // stopped, or the session ended (which sent the stop)
        };
        let now = Instant::now();
        if now >= deadline {
            session
                .presence
                .sets
                .with_existing(|sets| sets.typing.remove(&conversation_id));
            forward_typing(&shard, session.user_id, conversation_id, peer, false);
            return;
        }
        glommio::timer::sleep(deadline - now).await;
    }
}

fn stop_all_typing(shard: &Rc<Shard>, session: &SessionHandle) {
    let conversations: Vec<u64> = session
        .presence
        .sets
        .with_existing(|sets| sets.typing.drain().map(|(c, _)| c).collect())
        .unwrap_or_default();
    for conversation_id in conversations {
        let peer = shard.state(|s| {
            s.membership(session.user_id, conversation_id)
                .map_or(0, |m| m.peer_user_id)
        });
        forward_typing(shard, session.user_id, conversation_id, peer, false);
    }
}

fn forward_typing(shard: &Rc<Shard>, user_id: u64, conversation_id: u64, peer: u64, active: bool) {
    if peer == user_id {
        return; // notes to self
    }
    let (to, msg) = if peer != 0 {
        (
            shard.user_home(peer),
            ShardMsg::TypingPush {
                conversation_id,
                user_id,
                active,
                users: vec![peer],
            },
        )
    } else {
        (
            shard.conversation_owner(conversation_id),
            ShardMsg::GroupTyping {
                conversation_id,
                user_id,
                active,
            },
        )
    };
    let shard = shard.clone();
    glommio::spawn_local(async move { shard.route(to, msg).await }).detach();
}

/// Owner side: relay a member's typing to the other members' homes.
pub async fn group_typing(shard: &Rc<Shard>, conversation_id: u64, user_id: u64, active: bool) {
    let members: Vec<u64> = shard.state(|s| {
        s.groups
            .get(&conversation_id)
            .filter(|g| g.members.contains_key(&user_id))
            .map_or_else(Vec::new, |g| {
                g.members
                    .keys()
                    .copied()
                    .filter(|&u| u != user_id)
                    .collect()
            })
    });
    for (home, users) in shard.users_by_home(members) {
        let msg = ShardMsg::TypingPush {
            conversation_id,
            user_id,
            active,
            users,
        };
        shard.route(home, msg).await;
    }
}

/// Home side: show a member's typing on these users' connections.
pub fn typing_push(shard: &Shard, conversation_id: u64, user_id: u64, active: bool, users: &[u64]) {
    let frame = Frame {
        request_id: 0,
        body: Body::Typing(Typing {
            conversation_id,
            user_id,
            active,
        }),
    };
    let registry = shard.sessions.borrow();
    for user in users {
        for session in registry.of_user_iter(*user) {
            session.push_live(frame.clone());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn typing_starts_are_rate_limited_and_refill() {
        let mut presence = PresenceSets::default();
        let start = presence.typing_refilled;
        let burst = (TYPING_STARTS_PER_SEC * 2.0) as usize;
        for _ in 0..burst {
            assert!(presence.allow_typing_start(start));
        }
        assert!(!presence.allow_typing_start(start), "over the burst");
        let later = start + Duration::from_secs_f64(1.0 / TYPING_STARTS_PER_SEC);
        assert!(presence.allow_typing_start(later), "one token back");
        assert!(!presence.allow_typing_start(later));
    }

    #[test]
    fn online_outranks_away_outranks_offline() {
        assert!(rank(PresenceStatus::Online) > rank(PresenceStatus::Away));
        assert!(rank(PresenceStatus::Away) > rank(PresenceStatus::Offline));
    }
}
