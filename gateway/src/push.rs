//! The push-notification outbox (docs/architecture.md, "Push notifications").
//!
//! # Jobs
//! A recipient's home shard sees every message for the recipient (the direct push, the
//! group push on write or on read). When the recipient has no connected device, the
//! message is someone else's and not a system record, the home records a job, durably
//! ([`MetaEvent::PushJob`]), due `push_delay` later. A second message for the same user
//! and conversation while the job is open joins it (its count grows, in memory): a burst
//! becomes one notification per conversation.
//!
//! # Firing
//! Each shard runs [`run`]: every [`PUSH_TICK`] it fires the jobs that are due, at most
//! [`PUSH_IN_FLIGHT_MAX`] at once. A job whose user is online when it fires, or comes
//! online before (any session opening cancels the user's open jobs), ends `Cancelled`
//! without a push. Otherwise the provider is called on the executor's blocking pool; an
//! accepted notification ends `Delivered`; a retryable failure is recorded
//! ([`MetaEvent::PushAttempt`]) and retried after an exponential backoff with full jitter
//! (`push_retry_base * 2^(attempt-1)`, capped at `push_retry_max`, times a uniform random
//! factor); after `push_attempts_max` attempts, or a permanent refusal, the job is
//! dead-lettered: it ends `DeadLettered`, stays in the shard's dead-letter list and is
//! counted in `/metrics`.
//!
//! Jobs are metadata of the home shard's log, so they survive a crash; after a restart
//! the open ones fire when due. Delivery to the provider is at least once: a crash
//! between the provider's acceptance and the `PushDone` record repeats the notification,
//! which carries the job id (`X-Confab-Delivery`) for the receiver to drop.
//!
//! # Providers
//! [`PushProvider`] is the plug-in point: one blocking call per notification, answering
//! accepted, retryable or permanent. The [`WebhookProvider`] ships; an APNs or FCM
//! provider implements the same trait (docs/architecture.md says how).

use std::collections::{BTreeSet, HashMap, HashSet};
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use hmac::{Hmac, Mac};
use serde::Serialize;
use sha2::Sha256;
use wire::message::{MessageKind, StoredMessage};

use crate::chat::{self, now_ms, persist_later};
use crate::config::Config;
use crate::shard::Shard;
use crate::state::{MetaEvent, PushJob, PushOutcome};

/// How often a shard looks for due jobs.
pub const PUSH_TICK: Duration = Duration::from_millis(50);

/// Provider calls one shard runs at once.
pub const PUSH_IN_FLIGHT_MAX: usize = 16;

/// Response bytes of a webhook receiver that are read (and ignored) at most.
pub const WEBHOOK_RESPONSE_BYTES_MAX: u64 = 4096;

/// What a provider is asked to deliver.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Notification {
    #[serde(with = "wire::json::u64_str")]
    pub job_id: u64,
    #[serde(with = "wire::json::u64_str")]
    pub user_id: u64,
    #[serde(with = "wire::json::u64_str")]
    pub conversation_id: u64,
    /// The first message of the burst.
    #[serde(with = "wire::json::u64_str")]
    pub seq: u64,
    #[serde(with = "wire::json::u64_str")]
    pub sender_user_id: u64,
    /// Messages in the burst (at least 1; after a restart, those seen since).
    pub messages: u32,
    pub created_ms: u64,
    /// 1 for the first try.
    pub attempt: u32,
}

/// Why a provider did not deliver.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PushError {
    /// Try again later (timeouts, 5xx, 429, connection errors).
    #[error("retryable: {0}")]
    Retryable(String),
    /// Never going to work (4xx other than 408/429, bad URL): dead-letter now.
    #[error("permanent: {0}")]
    Permanent(String),
}

/// A push provider: called from the executor's blocking pool, one notification a call.
pub trait PushProvider: Send + Sync + 'static {
    fn deliver(&self, notification: &Notification) -> Result<(), PushError>;
}

/// The provider configured, if any (no provider: no jobs are recorded).
pub fn provider_from(config: &Config) -> Option<Arc<dyn PushProvider>> {
    let (url, secret) = config.push_webhook.clone()?;
    Some(Arc::new(WebhookProvider::new(
        url,
        secret,
        config.push_timeout,
    )))
}

// ----- the webhook provider -----------------------------------------------------------

/// HTTP POST of the notification as JSON, signed:
/// `X-Confab-Signature: v1=<hex HMAC-SHA256(secret, "<X-Confab-Timestamp>.<body>")>`.
pub struct WebhookProvider {
    url: String,
    secret: Vec<u8>,
    agent: ureq::Agent,
}

impl WebhookProvider {
    pub fn new(url: String, secret: String, timeout: Duration) -> WebhookProvider {
        let agent = ureq::AgentBuilder::new()
            .timeout(timeout)
            .redirects(0)
            .build();
        WebhookProvider {
            url,
            secret: secret.into_bytes(),
            agent,
        }
    }
}

/// `v1=` and the hex HMAC-SHA256 of `"<timestamp>.<body>"` under `secret`.
pub fn webhook_signature(secret: &[u8], timestamp: u64, body: &[u8]) -> String {
    // HMAC accepts keys of any length.
    let mut mac = match Hmac::<Sha256>::new_from_slice(secret) {
        Ok(mac) => mac,
        Err(_) => return String::new(),
    };
    mac.update(timestamp.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    let digest = mac.finalize().into_bytes();
    let mut out = String::with_capacity(3 + digest.len() * 2);
    out.push_str("v1=");
    for byte in digest {
        out.push_str(&format!("{byte:02x}"));
    }
    out
}

impl PushProvider for WebhookProvider {
    fn deliver(&self, notification: &Notification) -> Result<(), PushError> {
        let body = serde_json::to_vec(notification)
            .map_err(|e| PushError::Permanent(format!("encoding: {e}")))?;
        let timestamp = now_ms() / 1000;
        let signature = webhook_signature(&self.secret, timestamp, &body);
        let answer = self
            .agent
            .post(&self.url)
            .set("Content-Type", "application/json")
            .set("X-Confab-Timestamp", &timestamp.to_string())
            .set("X-Confab-Signature", &signature)
            .set("X-Confab-Delivery", &notification.job_id.to_string())
            .send_bytes(&body);
        match answer {
            Ok(response) => {
                // Drain a little so the connection can be reused; the body means nothing.
                let mut sink = Vec::new();
                let _ = std::io::Read::read_to_end(
                    &mut std::io::Read::take(response.into_reader(), WEBHOOK_RESPONSE_BYTES_MAX),
                    &mut sink,
                );
                Ok(())
            }
            Err(ureq::Error::Status(status, _))
                if status == 408 || status == 429 || status >= 500 =>
            {
                Err(PushError::Retryable(format!("HTTP {status}")))
            }
            Err(ureq::Error::Status(status, _)) => {
                Err(PushError::Permanent(format!("HTTP {status}")))
            }
            Err(ureq::Error::Transport(t)) => Err(PushError::Retryable(t.to_string())),
        }
    }
}

// ----- the outbox ---------------------------------------------------------------------

/// A shard's open jobs, indexed for coalescing, cancelling and firing.
#[derive(Default)]
pub struct Outbox {
    jobs: HashMap<u64, PushJob>,
    /// Messages per job (1 + those that joined it).
    counts: HashMap<u64, u32>,
    /// The open job per (user, conversation).
    open: HashMap<(u64, u64), u64>,
    by_user: HashMap<u64, HashSet<u64>>,
    due: BTreeSet<(u64, u64)>,
    in_flight: HashSet<u64>,
}

impl Outbox {
    fn insert(&mut self, job: PushJob) {
        self.open
            .insert((job.user_id, job.conversation_id), job.job_id);
        self.by_user
            .entry(job.user_id)
            .or_default()
            .insert(job.job_id);
        self.due.insert((job.due_ms, job.job_id));
        self.counts.entry(job.job_id).or_insert(1);
        self.jobs.insert(job.job_id, job);
    }

    fn remove(&mut self, job_id: u64) -> Option<PushJob> {
        let job = self.jobs.remove(&job_id)?;
        self.counts.remove(&job_id);
        self.due.remove(&(job.due_ms, job_id));
        if self.open.get(&(job.user_id, job.conversation_id)) == Some(&job_id) {
            self.open.remove(&(job.user_id, job.conversation_id));
        }
        if let Some(set) = self.by_user.get_mut(&job.user_id) {
            set.remove(&job_id);
            if set.is_empty() {
                self.by_user.remove(&job.user_id);
            }
        }
        Some(job)
    }

    /// A failed job waits for its next attempt; it keeps its place otherwise (a newer job
    /// of the same conversation, made while this one was in flight, stays the open one).
    fn reschedule(&mut self, job_id: u64, attempts: u32, due_ms: u64) {
        if let Some(job) = self.jobs.get_mut(&job_id) {
            self.due.remove(&(job.due_ms, job_id));
            job.attempts = attempts;
            job.due_ms = due_ms;
            self.due.insert((due_ms, job_id));
        }
    }

    pub fn len(&self) -> usize {
        self.jobs.len()
    }

    pub fn is_empty(&self) -> bool {
        self.jobs.is_empty()
    }
}

/// `message` reached the home of `user_id`, who has no connected device.
pub fn note_offline(shard: &Rc<Shard>, user_id: u64, message: &StoredMessage) {
    if shard.push_provider.is_none()
        || message.kind == MessageKind::System
        || message.sender_user_id == user_id
    {
        return;
    }
    let conversation_id = message.conversation_id;
    {
        let mut outbox = shard.outbox.borrow_mut();
        if let Some(&job_id) = outbox.open.get(&(user_id, conversation_id)) {
            if !outbox.in_flight.contains(&job_id) {
                *outbox.counts.entry(job_id).or_insert(1) += 1;
                return;
            }
        }
    }
    let now = now_ms();
    let Ok(job_id) = chat::next_message_id(shard, now) else {
        tracing::warn!(
            shard = shard.id,
            user_id,
            "no id for a push job; none recorded"
        );
        return;
    };
    let job = PushJob {
        job_id,
        user_id,
        conversation_id,
        seq: message.seq,
        sender_user_id: message.sender_user_id,
        created_ms: now,
        due_ms: now.saturating_add(shard.config.push_delay.as_millis() as u64),
        attempts: 0,
    };
    shard.outbox.borrow_mut().insert(job.clone());
    shard.counters().push_created();
    persist_later(shard, MetaEvent::PushJob(job));
}

/// A session of `user_id` opened: its open jobs will not be needed.
pub fn user_online(shard: &Rc<Shard>, user_id: u64) {
    let cancelled: Vec<u64> = {
        let mut outbox = shard.outbox.borrow_mut();
        let ids: Vec<u64> = outbox
            .by_user
            .get(&user_id)
            .map_or_else(Vec::new, |s| s.iter().copied().collect());
        let mut cancelled = Vec::new();
        for id in ids {
            if !outbox.in_flight.contains(&id) && outbox.remove(id).is_some() {
                cancelled.push(id);
            }
        }
        cancelled
    };
    shard.counters().push_cancelled(cancelled.len() as u64);
    for job_id in cancelled {
        persist_later(
            shard,
            MetaEvent::PushDone {
                job_id,
                outcome: PushOutcome::Cancelled,
            },
        );
    }
}

fn online(shard: &Shard, user_id: u64) -> bool {
    shard
        .sessions
        .borrow()
        .of_user_iter(user_id)
        .any(|s| !s.is_closed())
}

/// Fire due jobs until shutdown.
pub async fn run(shard: Rc<Shard>) {
    {
        let jobs: Vec<PushJob> = shard.state(|s| s.push_jobs.values().cloned().collect());
        let mut outbox = shard.outbox.borrow_mut();
        for job in jobs {
            outbox.insert(job);
        }
    }
    if shard.push_provider.is_none() {
        return;
    }
    let mut stop = shard.shutdown.wait();
    loop {
        let never = futures_lite::future::pending::<()>();
        let deadline = Instant::now() + PUSH_TICK;
        match crate::session::io::race(never, deadline, Some(&mut stop)).await {
            crate::session::io::Woken::Deadline => {}
            _ => return,
        }
        let pending = shard.state(|s| s.push_jobs.len()) as u64;
        shard.counters().push_jobs_pending(pending);
        let now = now_ms();
        let due: Vec<u64> = {
            let outbox = shard.outbox.borrow();
            let room = PUSH_IN_FLIGHT_MAX.saturating_sub(outbox.in_flight.len());
            outbox
                .due
                .iter()
                .take_while(|(at, _)| *at <= now)
                .map(|&(_, id)| id)
                .filter(|id| !outbox.in_flight.contains(id))
                .take(room)
                .collect()
        };
        for job_id in due {
            let shard = shard.clone();
            shard.outbox.borrow_mut().in_flight.insert(job_id);
            glommio::spawn_local(async move {
                fire(&shard, job_id).await;
                shard.outbox.borrow_mut().in_flight.remove(&job_id);
            })
            .detach();
        }
    }
}

async fn fire(shard: &Rc<Shard>, job_id: u64) {
    let Some(provider) = shard.push_provider.clone() else {
        return;
    };
    let (job, messages) = {
        let outbox = shard.outbox.borrow();
        let Some(job) = outbox.jobs.get(&job_id).cloned() else {
            return;
        };
        (job, outbox.counts.get(&job_id).copied().unwrap_or(1))
    };
    if online(shard, job.user_id) {
        shard.outbox.borrow_mut().remove(job_id);
        shard.counters().push_cancelled(1);
        end(shard, job_id, PushOutcome::Cancelled).await;
        return;
    }
    let notification = Notification {
        job_id,
        user_id: job.user_id,
        conversation_id: job.conversation_id,
        seq: job.seq,
        sender_user_id: job.sender_user_id,
        messages,
        created_ms: job.created_ms,
        attempt: job.attempts + 1,
    };
    let result = glommio::executor()
        .spawn_blocking(move || provider.deliver(&notification))
        .await;
    let attempts = job.attempts + 1;
    let outcome = match result {
        Ok(()) => {
            shard.counters().push_delivered();
            Some(PushOutcome::Delivered)
        }
        Err(PushError::Permanent(reason)) => {
            tracing::warn!(shard = shard.id, job_id, %reason, "push refused for good; dead-lettered");
            Some(PushOutcome::DeadLettered)
        }
        Err(PushError::Retryable(reason)) if attempts >= shard.config.push_attempts_max => {
            tracing::warn!(shard = shard.id, job_id, attempts, %reason, "push failed; dead-lettered");
            Some(PushOutcome::DeadLettered)
        }
        Err(PushError::Retryable(reason)) => {
            shard.counters().push_failed_attempt();
            let backoff = backoff_ms(&shard.config, attempts, random_unit());
            let next_attempt_ms = now_ms().saturating_add(backoff);
            tracing::info!(shard = shard.id, job_id, attempts, backoff, %reason, "push failed; will retry");
            shard
                .outbox
                .borrow_mut()
                .reschedule(job_id, attempts, next_attempt_ms);
            persist_later(
                shard,
                MetaEvent::PushAttempt {
                    job_id,
                    attempts,
                    next_attempt_ms,
                },
            );
            None
        }
    };
    if let Some(outcome) = outcome {
        if outcome == PushOutcome::DeadLettered {
            shard.counters().push_failed_attempt();
            shard.counters().push_dead_lettered();
        }
        shard.outbox.borrow_mut().remove(job_id);
        end(shard, job_id, outcome).await;
    }
}

async fn end(shard: &Rc<Shard>, job_id: u64, outcome: PushOutcome) {
    let _ = chat::persist(shard, &MetaEvent::PushDone { job_id, outcome }).await;
}

/// The wait before retry `attempts + 1`: full jitter over an exponential bound.
pub fn backoff_ms(config: &Config, attempts: u32, unit: f64) -> u64 {
    let base = config.push_retry_base.as_millis() as u64;
    let cap = config.push_retry_max.as_millis() as u64;
    let exponent = attempts.saturating_sub(1).min(32);
    let bound = base.saturating_mul(1u64 << exponent).min(cap);
    ((bound as f64) * unit.clamp(0.0, 1.0)) as u64
}

/// A uniform number in [0, 1) from the OS (a failure gives 1: no jitter, full backoff).
fn random_unit() -> f64 {
    let mut bytes = [0u8; 8];
    match getrandom::fill(&mut bytes) {
        Ok(()) => (u64::from_le_bytes(bytes) >> 11) as f64 / (1u64 << 53) as f64,
        Err(_) => 1.0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{Cli, FileConfig};

    #[test]
    fn backoff_doubles_up_to_the_cap_and_jitters_below_the_bound() {
        let mut config = Config::merge(Cli::default(), FileConfig::default(), 1).unwrap();
        config.push_retry_base = Duration::from_millis(100);
        config.push_retry_max = Duration::from_millis(1000);
        assert_eq!(backoff_ms(&config, 1, 1.0), 100);
        assert_eq!(backoff_ms(&config, 2, 1.0), 200);
        assert_eq!(backoff_ms(&config, 3, 1.0), 400);
        assert_eq!(backoff_ms(&config, 5, 1.0), 1000, "capped");
        assert_eq!(backoff_ms(&config, 60, 1.0), 1000, "no overflow");
        assert_eq!(backoff_ms(&config, 3, 0.5), 200);
        assert_eq!(backoff_ms(&config, 3, 0.0), 0);
        let unit = random_unit();
        assert!((0.0..1.0).contains(&unit));
    }

    #[test]
    fn signature_is_hmac_sha256_of_timestamp_dot_body() {
        let signature = webhook_signature(b"Jefe", 0, b"what do ya want for nothing?");
        let mut mac = Hmac::<Sha256>::new_from_slice(b"Jefe").unwrap();
        mac.update(b"0.what do ya want for nothing?");
        let expected: String = mac
            .finalize()
            .into_bytes()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        assert_eq!(signature, format!("v1={expected}"));
        assert_ne!(
            signature,
            webhook_signature(b"Jefe", 1, b"what do ya want for nothing?")
        );
    }

    #[test]
    fn outbox_coalesces_per_user_and_conversation() {
        let mut outbox = Outbox::default();
        let job = |job_id, user_id, conversation_id| PushJob {
            job_id,
            user_id,
            conversation_id,
            seq: 1,
            sender_user_id: 9,
            created_ms: 0,
            due_ms: job_id * 10,
            attempts: 0,
        };
        outbox.insert(job(1, 5, 100));
        outbox.insert(job(2, 5, 200));
        outbox.insert(job(3, 6, 100));
        assert_eq!(outbox.open.get(&(5, 100)), Some(&1));
        assert_eq!(outbox.by_user[&5].len(), 2);
        outbox.reschedule(1, 2, 5);
        assert_eq!(outbox.due.iter().next(), Some(&(5, 1)), "due sooner now");
        assert_eq!(outbox.jobs[&1].attempts, 2);
        assert_eq!(outbox.remove(1).map(|j| j.job_id), Some(1));
        assert!(!outbox.open.contains_key(&(5, 100)));
        assert_eq!(outbox.due.len(), 2);
        assert_eq!(outbox.len(), 2);
        assert!(outbox.remove(1).is_none());
    }
}
