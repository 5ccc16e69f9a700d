//! A minimal level-triggered epoll set, for threads that read many connections: unlike
//! `poll(2)`, a wait costs what is ready, not how many descriptors are watched (the
//! heartbeat scenario waits thousands of times a second on up to ~18K connections).

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::time::Duration;

use wire::client::{ClientError, Connection};
use wire::message::Frame;

/// How many readiness events one [`Epoll::wait`] returns at most.
pub const EVENTS_PER_WAIT: usize = 1024;

pub struct Epoll {
    fd: OwnedFd,
    events: Vec<libc::epoll_event>,
}

impl Epoll {
    pub fn new() -> io::Result<Epoll> {
        // SAFETY: plain syscall; the result is checked before use.
        let fd = unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(Epoll {
            // SAFETY: `fd` is a fresh descriptor that nothing else owns.
            fd: unsafe { OwnedFd::from_raw_fd(fd) },
            events: vec![libc::epoll_event { events: 0, u64: 0 }; EVENTS_PER_WAIT],
        })
    }

    /// Watch `conn`'s socket for input; [`wait`](Epoll::wait) reports it as `token`.
    pub fn add(&self, conn: &mut Connection, token: usize) -> io::Result<()> {
        let fd = conn.raw_stream().as_raw_fd();
        self.ctl(libc::EPOLL_CTL_ADD, fd, token)
    }

    /// Stop watching `conn`'s socket (a connection that ended stays readable forever).
    pub fn remove(&self, conn: &mut Connection) {
        let fd = conn.raw_stream().as_raw_fd();
        let _ = self.ctl(libc::EPOLL_CTL_DEL, fd, 0);
    }

    fn ctl(&self, op: libc::c_int, fd: RawFd, token: usize) -> io::Result<()> {
        let mut event = libc::epoll_event {
            events: libc::EPOLLIN as u32,
            u64: token as u64,
        };
        // SAFETY: valid epoll and socket descriptors, a valid event for the call.
        let rc = unsafe { libc::epoll_ctl(self.fd.as_raw_fd(), op, fd, &mut event) };
        if rc < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    /// Wait up to `timeout` (to the nanosecond: `epoll_pwait2`, so a sender waiting for
    /// its next due send still reads the answers that arrive meanwhile, instead of
    /// sleeping through them) and append the tokens of the readable connections to
    /// `ready` (cleared first).
    pub fn wait(&mut self, timeout: Duration, ready: &mut Vec<usize>) {
        ready.clear();
        let timeout = libc::timespec {
            tv_sec: timeout.as_secs().min(i32::MAX as u64) as libc::time_t,
            tv_nsec: timeout.subsec_nanos() as libc::c_long,
        };
        // SAFETY: `events` is a valid, writable array of its length; `timeout` is a valid
        // timespec; a null sigmask leaves the signal mask as it is.
        let n = unsafe {
            libc::epoll_pwait2(
                self.fd.as_raw_fd(),
                self.events.as_mut_ptr(),
                self.events.len() as libc::c_int,
                &timeout,
                std::ptr::null(),
            )
        };
        for event in self.events.iter().take(n.max(0) as usize) {
            // A by-value read: the struct is packed on x86-64.
            let token = { event.u64 };
            ready.push(token as usize);
        }
    }
}

/// Hand every frame already received on `conn` (its inbox, what its codec holds, what the
/// socket has) to `each`, without waiting. An error means the connection is over.
pub fn drain(conn: &mut Connection, mut each: impl FnMut(Frame)) -> Result<(), ClientError> {
    while let Some(frame) = conn.recv(Duration::ZERO)? {
        each(frame);
    }
    Ok(())
}

/// Take what `conn` already holds (handing its frames to `each`: whatever the catch-up
/// left unread would otherwise wait for the next readiness) and watch it as `token`. An
/// error means the connection is unusable.
pub fn adopt(
    epoll: &Epoll,
    conn: &mut Connection,
    token: usize,
    each: impl FnMut(Frame),
) -> Result<(), String> {
    drain(conn, each).map_err(|e| e.to_string())?;
    epoll.add(conn, token).map_err(|e| e.to_string())
}
