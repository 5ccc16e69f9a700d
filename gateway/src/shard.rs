//! One shard: the state a pinned executor owns, its two accept loops, and its drain.
//!
//! A shard's state is `Rc`/`Cell` only: it never leaves its thread. The only state other
//! threads see is its metrics slot (written here, read by `/metrics` anywhere).

use std::cell::Cell;
use std::rc::Rc;
use std::time::{Duration, Instant};

use glommio::net::{TcpListener, TcpStream};

use crate::config::Config;
use crate::metrics::{Listener, Metrics, ShardCounters};
use crate::session::io::{race, Woken};
use crate::shutdown::{Shutdown, ShutdownFlag};
use crate::{http, session};

/// How long a shard waits, after shutdown starts, for its sessions to finish closing.
pub const DRAIN_TIMEOUT: Duration = Duration::from_secs(3);

/// Pause after a failed accept (e.g. out of file descriptors) before trying again.
const ACCEPT_ERROR_BACKOFF: Duration = Duration::from_millis(20);

/// Per-shard state, shared by the shard's tasks.
#[derive(Debug)]
pub struct Shard {
    pub id: usize,
    pub config: Config,
    pub metrics: Metrics,
    pub shutdown: Shutdown,
    open: Cell<usize>,
}

impl Shard {
    pub fn new(id: usize, config: Config, metrics: Metrics) -> Rc<Shard> {
        Rc::new(Shard {
            id,
            config,
            metrics,
            shutdown: Shutdown::default(),
            open: Cell::new(0),
        })
    }

    pub fn counters(&self) -> &ShardCounters {
        self.metrics.shard(self.id)
    }

    /// Connections this shard holds open.
    pub fn open_connections(&self) -> usize {
        self.open.get()
    }
}

/// Counts one open connection for its lifetime.
struct ConnGuard(Rc<Shard>);

impl ConnGuard {
    fn new(shard: &Rc<Shard>, listener: Listener) -> ConnGuard {
        shard.open.set(shard.open.get() + 1);
        shard.counters().accepted(listener);
        ConnGuard(shard.clone())
    }
}

impl Drop for ConnGuard {
    fn drop(&mut self) {
        self.0.open.set(self.0.open.get().saturating_sub(1));
        self.0.counters().closed();
    }
}

/// Serve both listeners until the process is told to stop, then drain.
pub async fn serve(shard: Rc<Shard>, flag: ShutdownFlag, http: TcpListener, tcp: TcpListener) {
    let watcher = glommio::spawn_local(shard.shutdown.clone().watch(flag));
    let http_loop = glommio::spawn_local(accept_loop(shard.clone(), http, Listener::Http));
    let tcp_loop = glommio::spawn_local(accept_loop(shard.clone(), tcp, Listener::Tcp));
    watcher.await;
    http_loop.await;
    tcp_loop.await;
    let deadline = Instant::now() + DRAIN_TIMEOUT;
    while shard.open_connections() > 0 && Instant::now() < deadline {
        glommio::timer::sleep(Duration::from_millis(10)).await;
    }
    tracing::info!(
        shard = shard.id,
        left_open = shard.open_connections(),
        "shard stopped"
    );
}

async fn accept_loop(shard: Rc<Shard>, listener: TcpListener, kind: Listener) {
    let mut stop = shard.shutdown.wait();
    let never = Instant::now() + Duration::from_secs(365 * 24 * 3600);
    loop {
        match race(listener.accept(), never, Some(&mut stop)).await {
            Woken::Io(Ok(stream)) => {
                let guard = ConnGuard::new(&shard, kind);
                glommio::spawn_local(connection(guard, stream, kind)).detach();
            }
            Woken::Io(Err(e)) => {
                tracing::warn!(shard = shard.id, error = %e, "accept failed");
                glommio::timer::sleep(ACCEPT_ERROR_BACKOFF).await;
            }
            Woken::Deadline | Woken::Shutdown => break,
        }
    }
    // Dropping the listener closes this shard's socket; the kernel stops routing to it.
}

async fn connection(guard: ConnGuard, mut stream: TcpStream, kind: Listener) {
    let shard = &guard.0;
    let accepted_at = Instant::now();
    let _ = stream.set_nodelay(true);
    let _ = stream.set_write_timeout(Some(shard.config.idle_timeout));
    match kind {
        Listener::Http => http::serve(shard, &mut stream, accepted_at).await,
        Listener::Tcp => session::tcp::run(shard, &mut stream, accepted_at).await,
    }
    session::io::linger_close(&mut stream).await;
}
