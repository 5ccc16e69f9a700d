//! The key directory: public keys for end-to-end encryption, per device, on the user's
//! home shard (docs/architecture.md, "End-to-end encryption").
//!
//! A device publishes an identity key, a signed pre-key and a pool of one-time pre-keys
//! ([`upload`]). Anyone signed in may fetch a user's bundle ([`claim`]): one bundle per
//! device, each with one one-time key taken out of the pool. The server stores public
//! keys only and never looks inside them; what they mean (Olm keys, signatures) is the
//! client's business (`wire::client::e2ee`).
//!
//! **Once each.** The home shard is one thread, and a claim picks its keys and marks them
//! taken ([`Shard::keys_claiming`]) in the same executor step, before it waits for the
//! claim record to be durable; a concurrent claim skips keys that are marked. The key is
//! handed out only after the claim record is durable, so a crash cannot hand it out a
//! second time after restart. A claim whose record fails is undone and answered with
//! `Unavailable`.
//!
//! **Running low.** After a claim leaves a device with fewer than [`ONE_TIME_KEYS_LOW`]
//! one-time keys, its connected sessions get `KeysLow`; a device that connects with a low
//! pool gets it after `Welcome`.

use std::cell::RefCell;
use std::collections::HashSet;
use std::rc::Rc;

use wire::message::{
    Body, DeviceKeyBundle, ErrorCode, Frame, KeyBundle, KeysFetch, KeysLow, KeysUpload,
    KeysUploaded, OneTimeKey, SignedPreKey,
};

use crate::chat::{self, ApiError, ShardMsg};
use crate::shard::Shard;
use crate::state::{MetaEvent, SignedKey};

/// A device's pool holds at most this many one-time keys; an upload that would exceed it
/// is refused (`TooLarge`) and stores nothing.
pub const ONE_TIME_KEYS_PER_DEVICE_MAX: usize = 200;

/// Below this many one-time keys a device is told to upload more (`KeysLow`).
pub const ONE_TIME_KEYS_LOW: usize = 10;

/// Publish keys for `user_id`'s device `device_id` (runs on the user's home shard).
///
/// The first upload must carry the identity key and the signed pre-key. A different
/// identity key later means the device was reset: its old pre-keys are dropped. One-time
/// keys add to the pool; a key id already in the pool with the same key is accepted
/// again (a retried upload), with a different key it is refused. Ids not higher than
/// every id published before under the same identity key are skipped, so a key once
/// handed out cannot come back (clients count ids up from 1).
pub async fn upload(
    shard: &Rc<Shard>,
    user_id: u64,
    device_id: u64,
    upload: KeysUpload,
) -> Result<KeysUploaded, ApiError> {
    // One upload per device at a time: each is validated against the state the one
    // before it left (a reset racing an addition could otherwise fold stale keys).
    let Some(_uploading) = Marks::take(&shard.keys_uploading, [(user_id, device_id, 0)]) else {
        return Err(ApiError::new(
            ErrorCode::Conflict,
            "another key upload of this device is in progress; retry",
        ));
    };
    let invalid = |what: &str| ApiError::new(ErrorCode::InvalidArgument, what);
    let current = shard.state(|s| s.device(user_id, device_id).map(|d| d.keys.clone()));
    let Some(current) = current else {
        return Err(ApiError::new(ErrorCode::NotFound, "no such device"));
    };
    let reset = !upload.identity_key.is_empty()
        && current
            .as_ref()
            .is_some_and(|k| k.identity_key != upload.identity_key);
    let existing = if reset { None } else { current };
    if existing.is_none() {
        if upload.identity_key.is_empty() {
            return Err(invalid("the first key upload needs an identity key"));
        }
        if upload.signed_pre_key.is_none() {
            return Err(invalid("the first key upload needs a signed pre-key"));
        }
    }
    let signed_pre_key = match upload.signed_pre_key {
        Some(k) if k.public_key.is_empty() || k.signature.is_empty() => {
            return Err(invalid("a signed pre-key needs a key and a signature"))
        }
        Some(k) => Some(SignedKey {
            key_id: k.key_id,
            public_key: k.public_key,
            signature: k.signature,
        }),
        None => None,
    };
    let pool = existing
        .as_ref()
        .map(|k| &k.one_time)
        .cloned()
        .unwrap_or_default();
    let highest = existing.as_ref().map_or(0, |k| k.highest_key_id);
    let mut fresh = std::collections::BTreeMap::new();
    for key in upload.one_time_keys {
        if key.public_key.is_empty() {
            return Err(invalid("a one-time key is empty"));
        }
        match pool.get(&key.key_id).or(fresh.get(&key.key_id)) {
            Some(known) if *known == key.public_key => {}
            Some(_) => return Err(invalid("one-time key id reused for another key")),
            // Published before and since handed out (e.g. a retried upload): never
            // again, and not an error, so retries stay harmless.
            None if key.key_id <= highest => {}
            None => {
                fresh.insert(key.key_id, key.public_key);
            }
        }
    }
    if pool.len() + fresh.len() > ONE_TIME_KEYS_PER_DEVICE_MAX {
        return Err(ApiError::new(
            ErrorCode::TooLarge,
            format!(
                "a device holds at most {ONE_TIME_KEYS_PER_DEVICE_MAX} one-time keys \
                 ({} stored)",
                pool.len()
            ),
        ));
    }
    let identity_key = if upload.identity_key.is_empty() {
        existing.map(|k| k.identity_key).unwrap_or_default()
    } else {
        upload.identity_key
    };
    let event = MetaEvent::KeysPublished {
        user_id,
        device_id,
        identity_key,
        signed_pre_key,
        one_time_keys: fresh.into_iter().collect(),
    };
    chat::persist(shard, &event).await?;
    let remaining = remaining(shard, user_id, device_id);
    Ok(KeysUploaded {
        one_time_keys_remaining: remaining as u32,
    })
}

/// One-time keys left in a device's pool: folded, less those being claimed.
fn remaining(shard: &Shard, user_id: u64, device_id: u64) -> usize {
    let claiming = shard.keys_claiming.borrow();
    shard.state(|s| {
        s.device(user_id, device_id)
            .and_then(|d| d.keys.as_ref())
            .map_or(0, |k| {
                k.one_time
                    .keys()
                    .filter(|id| !claiming.contains(&(user_id, device_id, **id)))
                    .count()
            })
    })
}

/// Claim bundles for `fetch.user_id` (every device with keys, or one): runs on that
/// user's home shard. Each bundle takes one one-time key, if the pool has any.
pub async fn claim(shard: &Rc<Shard>, fetch: KeysFetch) -> Result<KeyBundle, ApiError> {
    let user_id = fetch.user_id;
    // Pick and mark in one step (no await in between): see the module docs.
    let picked = shard.state(|s| {
        let user = s
            .users
            .get(&user_id)
            .ok_or_else(|| ApiError::new(ErrorCode::NotFound, "no such user"))?;
        let claiming = shard.keys_claiming.borrow();
        let mut devices = Vec::new();
        for (&device_id, device) in &user.devices {
            if fetch.device_id != 0 && fetch.device_id != device_id {
                continue;
            }
            let Some(keys) = &device.keys else { continue };
            let one_time = keys
                .one_time
                .iter()
                .find(|(id, _)| !claiming.contains(&(user_id, device_id, **id)))
                .map(|(id, key)| (*id, key.clone()));
            devices.push((device_id, keys.clone(), one_time));
        }
        if fetch.device_id != 0 && devices.is_empty() {
            return Err(ApiError::new(
                ErrorCode::NotFound,
                "that device has published no keys",
            ));
        }
        Ok(devices)
    })?;
    let claims: Vec<(u64, u64)> = picked
        .iter()
        .filter_map(|(device, _, otk)| otk.as_ref().map(|(id, _)| (*device, *id)))
        .collect();
    // Unmarked when this claim ends, however it ends (also if its task is dropped).
    // The picks skipped marked keys in this same step, so marking cannot collide.
    let Some(marks) = Marks::take(
        &shard.keys_claiming,
        claims.iter().map(|&(device, key)| (user_id, device, key)),
    ) else {
        return Err(ApiError::unavailable("key claim collided; retry"));
    };
    let persisted = if claims.is_empty() {
        Ok(())
    } else {
        let event = MetaEvent::KeysClaimed {
            user_id,
            claims: claims.clone(),
        };
        chat::persist(shard, &event).await
    };
    drop(marks);
    persisted?;
    shard.counters().keys_claimed(claims.len() as u64);
    for &(device_id, _) in &claims {
        let left = remaining(shard, user_id, device_id);
        if left < ONE_TIME_KEYS_LOW {
            tell_low(shard, user_id, device_id, left);
        }
    }
    let devices = picked
        .into_iter()
        .map(|(device_id, keys, one_time)| DeviceKeyBundle {
            device_id,
            identity_key: keys.identity_key,
            signed_pre_key: keys.signed_pre_key.map(|k| SignedPreKey {
                key_id: k.key_id,
                public_key: k.public_key,
                signature: k.signature,
            }),
            one_time_key: one_time.map(|(key_id, public_key)| OneTimeKey { key_id, public_key }),
        })
        .collect();
    Ok(KeyBundle { user_id, devices })
}

/// Entries of a shard's mark set, held by one task and removed when it drops them.
struct Marks<'a> {
    set: &'a RefCell<HashSet<(u64, u64, u64)>>,
    entries: Vec<(u64, u64, u64)>,
}

impl<'a> Marks<'a> {
    /// Mark `entries`; `None` (nothing marked) if one of them is marked already.
    fn take(
        set: &'a RefCell<HashSet<(u64, u64, u64)>>,
        entries: impl IntoIterator<Item = (u64, u64, u64)>,
    ) -> Option<Marks<'a>> {
        let entries: Vec<_> = entries.into_iter().collect();
        let mut marked = set.borrow_mut();
        if entries.iter().any(|e| marked.contains(e)) {
            return None;
        }
        marked.extend(entries.iter().copied());
        Some(Marks { set, entries })
    }
}

impl Drop for Marks<'_> {
    fn drop(&mut self) {
        let mut marked = self.set.borrow_mut();
        for entry in &self.entries {
            marked.remove(entry);
        }
    }
}

/// Push `KeysLow` to the connected sessions of one device.
fn tell_low(shard: &Shard, user_id: u64, device_id: u64, left: usize) {
    for session in shard.sessions.borrow().of_user_iter(user_id) {
        if session.device_id == device_id {
            session.push_live(low_frame(left));
        }
    }
}

fn low_frame(left: usize) -> Frame {
    Frame {
        request_id: 0,
        body: Body::KeysLow(KeysLow {
            one_time_keys_remaining: left as u32,
        }),
    }
}

/// `KeysLow` for a device that just connected, if it has published keys and its pool is
/// low (a device that never published keys is not nagged).
pub fn low_on_connect(shard: &Shard, user_id: u64, device_id: u64) -> Option<Frame> {
    let published = shard.state(|s| {
        s.device(user_id, device_id)
            .is_some_and(|d| d.keys.is_some())
    });
    let left = remaining(shard, user_id, device_id);
    (published && left < ONE_TIME_KEYS_LOW).then(|| low_frame(left))
}

/// `KeysFetch` from a session: ask the target user's home shard.
pub async fn fetch(shard: &Rc<Shard>, fetch: KeysFetch) -> Result<KeyBundle, ApiError> {
    if fetch.user_id == 0 {
        return Err(ApiError::new(
            ErrorCode::InvalidArgument,
            "user_id is required",
        ));
    }
    let home = shard.user_home(fetch.user_id);
    shard
        .call(home, |reply| ShardMsg::KeysClaim { fetch, reply })
        .await?
}
