//! Socket helpers shared by every connection: racing I/O against a deadline and shutdown,
//! and the lingering close.

use std::future::Future;
use std::net::Shutdown;
use std::time::Instant;

use futures_lite::{future, AsyncReadExt};
use glommio::net::TcpStream;

use crate::session::{CLOSE_LINGER, CLOSE_LINGER_BYTES_MAX, LINGER_READ_BYTES};
use crate::shutdown::Wait;

/// What ended a wait on the socket.
#[derive(Debug)]
pub enum Woken<T> {
    Io(T),
    Deadline,
    Shutdown,
}

/// Run `io` until it completes, `deadline` passes, or (if given) the shard shuts down.
pub async fn race<T>(
    io: impl Future<Output = T>,
    deadline: Instant,
    shutdown: Option<&mut Wait>,
) -> Woken<T> {
    let timer = async {
        glommio::timer::sleep(deadline.saturating_duration_since(Instant::now())).await;
        Woken::Deadline
    };
    or_shutdown(future::or(async { Woken::Io(io.await) }, timer), shutdown).await
}

/// Run `io` until it completes or (if given) the shard shuts down: [`race`] without a
/// deadline, for waits whose timeout is kept elsewhere (a session's idle timeout is the
/// shard's [`crate::session::idle`] wheel).
pub async fn race_stop<T>(io: impl Future<Output = T>, shutdown: Option<&mut Wait>) -> Woken<T> {
    or_shutdown(async { Woken::Io(io.await) }, shutdown).await
}

/// `wait` until it completes or (if given) the shard shuts down; `wait` is polled first.
async fn or_shutdown<T>(
    wait: impl Future<Output = Woken<T>>,
    shutdown: Option<&mut Wait>,
) -> Woken<T> {
    match shutdown {
        Some(stop) => {
            let stop = async {
                stop.await;
                Woken::Shutdown
            };
            future::or(wait, stop).await
        }
        None => wait.await,
    }
}

/// Half-close our side, then read and discard until the peer closes, [`CLOSE_LINGER`]
/// passes, or [`CLOSE_LINGER_BYTES_MAX`] bytes arrived. The caller drops the stream after.
pub async fn linger_close(stream: &mut TcpStream) {
    let _ = stream.shutdown(Shutdown::Write).await;
    let deadline = Instant::now() + CLOSE_LINGER;
    // On the heap, and only for the linger: an array here would be part of every
    // session task's future, idle or not.
    let mut scratch = vec![0u8; LINGER_READ_BYTES];
    let mut discarded = 0usize;
    while discarded < CLOSE_LINGER_BYTES_MAX {
        match race(stream.read(&mut scratch), deadline, None).await {
            Woken::Io(Ok(n)) if n > 0 => discarded += n,
            _ => break,
        }
    }
}
