//! The media object store: an [`object_store`] backend driven by one thread of its own.
//!
//! `object_store` is async on tokio (S3 speaks HTTP through reqwest; the local backend
//! runs file I/O on tokio's blocking pool). The shards run glommio and must never block,
//! so the store lives on a `confab-media` thread with a current-thread tokio runtime.
//! Shards hand it jobs over a bounded channel and await a oneshot answer; a full queue is
//! `Unavailable`, never a stall. Media is off the message hot path: a send never waits
//! on it, except a send with an attachment, which checks the object exists.
//!
//! Objects are named `objects/<first two hex digits>/<sha256 hex>`. Only verified bytes
//! are ever written under that name, and both backends make a put visible atomically
//! (the local one writes a temporary file and renames it), so "the name exists" means
//! "the content is complete and matches its hash". `object_store`'s local backend does
//! not fsync, so after a local put this thread syncs the file and its directories before
//! the put is answered: an object a durable message points at survives a power loss.

use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::Bytes;
use futures_channel::oneshot;
use object_store::path::Path as ObjectPath;
use object_store::{ObjectStore, PutPayload};
use wire::message::ErrorCode;

use crate::chat::ApiError;

/// Store requests queued before shards are told `Unavailable`.
pub const STORE_QUEUE_MAX: usize = 1024;

/// Store requests running at once (S3 connections, blocking file reads).
pub const STORE_IN_FLIGHT_MAX: usize = 64;

/// A store request failed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum StoreError {
    #[error("media store busy")]
    Busy,
    #[error("media store stopped")]
    Stopped,
    #[error("media store: {0}")]
    Backend(String),
}

impl StoreError {
    pub fn api_error(&self) -> ApiError {
        tracing::warn!(error = %self, "media store request failed");
        ApiError::new(ErrorCode::Unavailable, self.to_string())
    }
}

enum Job {
    Head {
        sha256: [u8; 32],
        reply: oneshot::Sender<Result<Option<u64>, StoreError>>,
    },
    Put {
        sha256: [u8; 32],
        bytes: Bytes,
        reply: oneshot::Sender<Result<(), StoreError>>,
    },
    Get {
        sha256: [u8; 32],
        range: Range<u64>,
        reply: oneshot::Sender<Result<Bytes, StoreError>>,
    },
}

/// A handle to the store thread; cheap to clone, one per shard.
#[derive(Clone)]
pub struct MediaStore {
    jobs: tokio::sync::mpsc::Sender<Job>,
    /// What backs it, for the startup log ("file:/…" or "s3://…").
    pub describe: String,
}

impl std::fmt::Debug for MediaStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MediaStore")
            .field("describe", &self.describe)
            .finish()
    }
}

fn object_path(sha256: &[u8; 32]) -> ObjectPath {
    let hex = super::hex(sha256);
    ObjectPath::from(format!("objects/{}/{hex}", hex.get(..2).unwrap_or("00")))
}

fn backend(error: object_store::Error) -> StoreError {
    StoreError::Backend(error.to_string())
}

impl MediaStore {
    /// Open the store `url` (empty: the local filesystem under `default_dir`;
    /// `file:///path`; `s3://bucket/prefix` with credentials, region and endpoint from
    /// the usual `AWS_*` environment variables) and start its thread.
    pub fn open(url: &str, default_dir: &Path) -> anyhow::Result<MediaStore> {
        let mut local_root = None;
        let (store, describe): (Arc<dyn ObjectStore>, String) =
            if let Some(bucket) = url.strip_prefix("s3://") {
                let (bucket_name, prefix) = bucket.split_once('/').unwrap_or((bucket, ""));
                let s3 = object_store::aws::AmazonS3Builder::from_env()
                    .with_bucket_name(bucket_name)
                    .build()?;
                let store: Arc<dyn ObjectStore> = if prefix.is_empty() {
                    Arc::new(s3)
                } else {
                    Arc::new(object_store::prefix::PrefixStore::new(s3, prefix))
                };
                (store, url.to_owned())
            } else {
                let dir = match url {
                    "" => default_dir.to_path_buf(),
                    url => match url.strip_prefix("file://") {
                        Some(path) => path.into(),
                        None => anyhow::bail!(
                            "media_store must be empty, file:///path or s3://bucket[/prefix], \
                             got {url:?}"
                        ),
                    },
                };
                std::fs::create_dir_all(&dir)?;
                local_root = Some(dir.clone());
                let local = object_store::local::LocalFileSystem::new_with_prefix(&dir)?;
                (Arc::new(local), format!("file:{}", dir.display()))
            };
        let (jobs, receiver) = tokio::sync::mpsc::channel(STORE_QUEUE_MAX);
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        std::thread::Builder::new()
            .name("confab-media".into())
            .spawn(move || runtime.block_on(run(store, local_root, receiver)))?;
        Ok(MediaStore { jobs, describe })
    }

    fn submit(&self, job: Job) -> Result<(), StoreError> {
        self.jobs.try_send(job).map_err(|e| match e {
            tokio::sync::mpsc::error::TrySendError::Full(_) => StoreError::Busy,
            tokio::sync::mpsc::error::TrySendError::Closed(_) => StoreError::Stopped,
        })
    }

    /// The size of object `sha256`, or `None` if it is not stored.
    pub async fn head(&self, sha256: &[u8; 32]) -> Result<Option<u64>, StoreError> {
        let (reply, answer) = oneshot::channel();
        self.submit(Job::Head {
            sha256: *sha256,
            reply,
        })?;
        answer.await.map_err(|_| StoreError::Stopped)?
    }

    /// Store verified bytes as object `sha256` (visible atomically).
    pub async fn put(&self, sha256: &[u8; 32], bytes: Bytes) -> Result<(), StoreError> {
        let (reply, answer) = oneshot::channel();
        self.submit(Job::Put {
            sha256: *sha256,
            bytes,
            reply,
        })?;
        answer.await.map_err(|_| StoreError::Stopped)?
    }

    /// Bytes `range` of object `sha256`.
    pub async fn get(&self, sha256: &[u8; 32], range: Range<u64>) -> Result<Bytes, StoreError> {
        let (reply, answer) = oneshot::channel();
        self.submit(Job::Get {
            sha256: *sha256,
            range,
            reply,
        })?;
        answer.await.map_err(|_| StoreError::Stopped)?
    }
}

/// The store thread: run each job as a task, at most [`STORE_IN_FLIGHT_MAX`] at once.
async fn run(
    store: Arc<dyn ObjectStore>,
    local_root: Option<PathBuf>,
    mut jobs: tokio::sync::mpsc::Receiver<Job>,
) {
    let running = Arc::new(tokio::sync::Semaphore::new(STORE_IN_FLIGHT_MAX));
    while let Some(job) = jobs.recv().await {
        let Ok(permit) = running.clone().acquire_owned().await else {
            break;
        };
        let store = store.clone();
        let local_root = local_root.clone();
        tokio::spawn(async move {
            serve(store.as_ref(), local_root, job).await;
            drop(permit);
        });
    }
}

/// fsync a local object, its directory and the directories above it up to `root`.
fn sync_local(root: &Path, object: &ObjectPath) -> std::io::Result<()> {
    let file = root.join(object.as_ref());
    std::fs::File::open(&file)?.sync_all()?;
    let mut dir = file.parent();
    while let Some(d) = dir {
        std::fs::File::open(d)?.sync_all()?;
        if d == root {
            break;
        }
        dir = d.parent();
    }
    Ok(())
}

async fn serve(store: &dyn ObjectStore, local_root: Option<PathBuf>, job: Job) {
    match job {
        Job::Head { sha256, reply } => {
            let answer = match store.head(&object_path(&sha256)).await {
                Ok(meta) => Ok(Some(meta.size)),
                Err(object_store::Error::NotFound { .. }) => Ok(None),
                Err(e) => Err(backend(e)),
            };
            let _ = reply.send(answer);
        }
        Job::Put {
            sha256,
            bytes,
            reply,
        } => {
            let path = object_path(&sha256);
            let mut answer = store
                .put(&path, PutPayload::from_bytes(bytes))
                .await
                .map(|_| ())
                .map_err(backend);
            if let (Ok(()), Some(root)) = (&answer, local_root) {
                answer = tokio::task::spawn_blocking(move || sync_local(&root, &path))
                    .await
                    .map_err(|e| StoreError::Backend(e.to_string()))
                    .and_then(|synced| synced.map_err(|e| StoreError::Backend(e.to_string())));
            }
            let _ = reply.send(answer);
        }
        Job::Get {
            sha256,
            range,
            reply,
        } => {
            let answer = store
                .get_range(&object_path(&sha256), range)
                .await
                .map_err(backend);
            let _ = reply.send(answer);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn objects_round_trip_through_the_local_store() {
        let dir = tempfile::tempdir().unwrap();
        let store = MediaStore::open("", dir.path()).unwrap();
        let digest = [0x5a; 32];
        futures_lite::future::block_on(async {
            assert_eq!(store.head(&digest).await.unwrap(), None);
            store
                .put(&digest, Bytes::from_static(b"hello media"))
                .await
                .unwrap();
            assert_eq!(store.head(&digest).await.unwrap(), Some(11));
            assert_eq!(store.get(&digest, 6..11).await.unwrap(), &b"media"[..]);
        });
        let on_disk = dir
            .path()
            .join("objects/5a")
            .join(super::super::hex(&digest));
        assert_eq!(std::fs::read(on_disk).unwrap(), b"hello media");
    }

    #[test]
    fn unknown_schemes_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let error = MediaStore::open("ftp://x", dir.path()).unwrap_err();
        assert!(error.to_string().contains("media_store"), "{error}");
    }
}
