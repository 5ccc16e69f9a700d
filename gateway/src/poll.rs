//! The HTTP fallback for networks that block WebSocket: `POST /v1/messages` and the
//! long poll `POST /v1/poll` (gateway/API.md; docs/architecture.md, "HTTP fallback").
//!
//! Both run on the user's home shard (the accepting shard checks the token and forwards),
//! so an HTTP device is a device like any other: a *socketless session*
//! ([`SessionHandle`]) in the registry, which pushes, receipts, typing and presence
//! updates queue into exactly as for a socket, and which counts as online. It lives from
//! the first poll until no request came for `idle_timeout` (the same rule as a socket
//! that stopped heartbeating).
//!
//! # Cursor and delivery
//! A poll answers with the frames queued (after waiting up to the requested time, at most
//! [`LONG_POLL_MAX`], if there were none) and a cursor `"<session>.<n>"` naming answer
//! `n`. The next poll carries that cursor, which acknowledges answer `n`: its messages
//! count as delivered (the device's cursors move, senders get their receipts). A poll
//! that carries the cursor of the answer before (answer `n` was lost on the way) gets
//! answer `n` again. A poll without a cursor, or with one of a session that ended (or of
//! a server that restarted), starts a new session, which first catches up from the
//! device's durable cursors — so every message is delivered at least once and in order,
//! as over a socket. One poll per device at a time (another gets 409).

use std::collections::HashMap;
use std::rc::Rc;
use std::time::{Duration, Instant};

use wire::message::{Ack, Body, ErrorCode, Frame, ReceiptKind, Send};

use crate::auth::{Claims, TokenKind};
use crate::chat::ApiError;
use crate::session::io::{race, Woken};
use crate::session::live::{self, RateLimit, SessionHandle};
use crate::shard::Shard;

/// The longest a poll waits for something to answer.
pub const LONG_POLL_MAX: Duration = Duration::from_secs(30);

/// Frames one poll answer carries at most (the rest wait for the next poll).
pub const POLL_FRAMES_MAX: usize = 256;

/// The shortest wait of a session's expiry check.
const EXPIRE_CHECK_MIN: Duration = Duration::from_millis(10);

/// Rate-limit buckets of HTTP devices kept before idle ones are dropped.
pub const HTTP_RATE_BUCKETS_PRUNE_AT: usize = 65_536;

/// A bucket untouched this long is full again and can be dropped.
const HTTP_RATE_BUCKET_IDLE: Duration = Duration::from_secs(60);

/// One HTTP device on its home shard.
pub struct HttpDevice {
    session: Rc<SessionHandle>,
    /// The number of the newest answer.
    answer: u64,
    /// Its frames, until the next poll acknowledges them.
    unacked: Vec<Frame>,
    last_request: Instant,
    polling: bool,
}

/// HTTP devices by (user, device), and their rate-limit buckets (kept apart: a device
/// that only sends has no session, and a new session must not refill the bucket).
#[derive(Default)]
pub struct HttpDevices {
    sessions: HashMap<(u64, u64), HttpDevice>,
    rates: HashMap<(u64, u64), RateLimit>,
}

/// What a poll answers.
#[derive(Debug)]
pub struct PollAnswer {
    pub frames: Vec<Frame>,
    pub cursor: String,
}

fn parse_cursor(cursor: &str) -> Result<(u64, u64), ApiError> {
    let bad = || ApiError::new(ErrorCode::InvalidArgument, "malformed cursor");
    let (session, answer) = cursor.split_once('.').ok_or_else(bad)?;
    Ok((
        session.parse().map_err(|_| bad())?,
        answer.parse().map_err(|_| bad())?,
    ))
}

/// Take one token of the device's rate limit (a request is also its heartbeat).
fn take_token(shard: &Rc<Shard>, user_id: u64, device_id: u64) -> Result<(), ApiError> {
    let now = Instant::now();
    let mut devices = shard.http_devices.borrow_mut();
    if let Some(device) = devices.sessions.get_mut(&(user_id, device_id)) {
        device.last_request = now;
        device
            .session
            .presence
            .last_active_ms
            .set(crate::chat::now_ms());
    }
    if devices.rates.len() >= HTTP_RATE_BUCKETS_PRUNE_AT {
        devices
            .rates
            .retain(|_, rate| rate.idle_for(now) < HTTP_RATE_BUCKET_IDLE);
    }
    let rate = devices
        .rates
        .entry((user_id, device_id))
        .or_insert_with(|| RateLimit::new(&shard.config));
    if rate.allow(now) {
        Ok(())
    } else {
        shard.counters().rate_limited();
        Err(ApiError::new(
            ErrorCode::RateLimited,
            format!("slow down; retry after {} ms", rate.retry_after_ms()),
        ))
    }
}

/// `POST /v1/messages` on the home shard.
pub async fn send(
    shard: &Rc<Shard>,
    user_id: u64,
    device_id: u64,
    send: Send,
) -> Result<Ack, ApiError> {
    take_token(shard, user_id, device_id)?;
    let ack = live::send_message(shard, user_id, device_id, send).await?;
    let session = shard
        .http_devices
        .borrow()
        .sessions
        .get(&(user_id, device_id))
        .map(|d| d.session.clone());
    if let Some(session) = session {
        let floor = shard.state(|s| s.delivered_floor(user_id, device_id, ack.conversation_id));
        session.own_message_acked(ack.conversation_id, ack.seq, floor);
    }
    Ok(ack)
}

/// `POST /v1/poll` on the home shard.
pub async fn poll(
    shard: &Rc<Shard>,
    user_id: u64,
    device_id: u64,
    cursor: Option<String>,
    wait: Duration,
) -> Result<PollAnswer, ApiError> {
    let cursor = cursor.as_deref().map(parse_cursor).transpose()?;
    take_token(shard, user_id, device_id)?;
    let key = (user_id, device_id);
    // Resume the session the cursor names, or start a new one.
    let resumed = {
        let mut devices = shard.http_devices.borrow_mut();
        match (devices.sessions.get_mut(&key), cursor) {
            (Some(device), _) if device.polling => {
                return Err(ApiError::new(
                    ErrorCode::Conflict,
                    "another poll is waiting for this device",
                ))
            }
            (Some(device), Some((session, answer)))
                if session == device.session.session_id && !device.session.is_closed() =>
            {
                if answer == device.answer {
                    Some(std::mem::take(&mut device.unacked))
                } else if device.answer.checked_sub(1) == Some(answer) {
                    None // the last answer was lost: it goes again
                } else {
                    return Err(ApiError::new(
                        ErrorCode::InvalidArgument,
                        "cursor names no recent answer",
                    ));
                }
                .map(Resume::Acknowledged)
                .or(Some(Resume::Repeat))
            }
            _ => None,
        }
    };
    let session = match resumed {
        Some(Resume::Acknowledged(frames)) => {
            let session = device_session(shard, key)?;
            acknowledge(shard, &session, &frames);
            session
        }
        Some(Resume::Repeat) => device_session(shard, key)?,
        None => start(shard, user_id, device_id)?,
    };
    // A lost answer goes again at once.
    {
        let mut devices = shard.http_devices.borrow_mut();
        let device = devices
            .sessions
            .get_mut(&key)
            .ok_or_else(|| ApiError::unavailable("session ended"))?;
        if !device.unacked.is_empty() {
            return Ok(PollAnswer {
                frames: device.unacked.clone(),
                cursor: format!("{}.{}", session.session_id, device.answer),
            });
        }
        device.polling = true;
    }
    let deadline = Instant::now() + wait.min(LONG_POLL_MAX);
    let mut stop = shard.shutdown.wait();
    let _ = race(session.queued(), deadline, Some(&mut stop)).await;
    let frames = session.take_up_to(POLL_FRAMES_MAX);
    let mut devices = shard.http_devices.borrow_mut();
    let device = devices
        .sessions
        .get_mut(&key)
        .ok_or_else(|| ApiError::unavailable("session ended"))?;
    device.polling = false;
    device.last_request = Instant::now();
    device.answer += 1;
    device.unacked = frames.clone();
    Ok(PollAnswer {
        frames,
        cursor: format!("{}.{}", session.session_id, device.answer),
    })
}

enum Resume {
    Acknowledged(Vec<Frame>),
    Repeat,
}

fn device_session(shard: &Shard, key: (u64, u64)) -> Result<Rc<SessionHandle>, ApiError> {
    shard
        .http_devices
        .borrow()
        .sessions
        .get(&key)
        .map(|d| d.session.clone())
        .ok_or_else(|| ApiError::unavailable("session ended"))
}

/// A new socketless session for the device (ending an old one), catching up from the
/// device's durable cursors.
fn start(shard: &Rc<Shard>, user_id: u64, device_id: u64) -> Result<Rc<SessionHandle>, ApiError> {
    let old = shard
        .http_devices
        .borrow_mut()
        .sessions
        .remove(&(user_id, device_id));
    if let Some(old) = old {
        old.session.end_without_socket(shard);
    }
    let claims = Claims {
        kind: TokenKind::Access,
        user_id,
        device_id,
        expires_ms: 0,
    };
    let session = live::open_session(shard, &claims)?;
    shard.counters().session_opened();
    shard.http_devices.borrow_mut().sessions.insert(
        (user_id, device_id),
        HttpDevice {
            session: session.clone(),
            answer: 0,
            unacked: Vec::new(),
            last_request: Instant::now(),
            polling: false,
        },
    );
    glommio::spawn_local(live::catch_up(shard.clone(), session.clone())).detach();
    glommio::spawn_local(expire(
        shard.clone(),
        (user_id, device_id),
        session.session_id,
    ))
    .detach();
    Ok(session)
}

/// End the session once no request came for `idle_timeout` (or at shutdown).
async fn expire(shard: Rc<Shard>, key: (u64, u64), session_id: u64) {
    let mut stop = shard.shutdown.wait();
    loop {
        let (idle_since, polling) = {
            let devices = shard.http_devices.borrow();
            match devices.sessions.get(&key) {
                Some(d) if d.session.session_id == session_id => (d.last_request, d.polling),
                _ => return, // replaced or gone
            }
        };
        // While a poll waits, the device is not idle: look again a full timeout later
        // (never a deadline already past, which would not yield).
        let deadline = if polling {
            Instant::now() + shard.config.idle_timeout
        } else {
            (idle_since + shard.config.idle_timeout).max(Instant::now() + EXPIRE_CHECK_MIN)
        };
        let never = futures_lite::future::pending::<()>();
        let shutting_down = matches!(
            race(never, deadline, Some(&mut stop)).await,
            Woken::Shutdown
        );
        let ended = {
            let devices = shard.http_devices.borrow();
            devices.sessions.get(&key).is_some_and(|d| {
                d.session.session_id == session_id
                    && (shutting_down
                        || (!polling
                            && !d.polling
                            && d.last_request + shard.config.idle_timeout <= Instant::now()))
            })
        };
        if ended {
            let device = shard.http_devices.borrow_mut().sessions.remove(&key);
            if let Some(device) = device {
                device.session.end_without_socket(&shard);
            }
            return;
        }
        if shutting_down {
            return;
        }
    }
}

/// The device got these frames: its messages count as delivered.
fn acknowledge(shard: &Rc<Shard>, session: &Rc<SessionHandle>, frames: &[Frame]) {
    let mut highest: HashMap<u64, u64> = HashMap::new();
    let mut note = |conversation_id: u64, seq: u64| {
        let entry = highest.entry(conversation_id).or_insert(0);
        *entry = (*entry).max(seq);
    };
    for frame in frames {
        match &frame.body {
            Body::Deliver(d) => note(d.message.conversation_id, d.message.seq),
            Body::SyncBatch(batch) => {
                for m in &batch.messages {
                    note(m.conversation_id, m.seq);
                }
            }
            _ => {}
        }
    }
    for (conversation_id, seq) in highest {
        if let Err(error) =
            live::on_receipt(shard, session, conversation_id, ReceiptKind::Delivered, seq)
        {
            tracing::debug!(
                shard = shard.id,
                conversation_id,
                ?error,
                "poll acknowledgement refused"
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cursors_parse_or_refuse() {
        assert_eq!(
            parse_cursor("281474976710657.3").unwrap(),
            (281474976710657, 3)
        );
        for bad in ["", "3", "a.b", "1.", ".1", "1.2.3", "-1.2"] {
            assert!(parse_cursor(bad).is_err(), "{bad:?}");
        }
    }
}
