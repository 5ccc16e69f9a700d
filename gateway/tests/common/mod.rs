//! Test harness: start the real `confab` binary on ephemeral ports and talk to it with
//! raw bytes and `wire`'s client codecs. Every read has a timeout so no test can hang.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant};

pub mod people;

use wire::ws::codec::{Event, WsCodec, WsConfig};
use wire::ws::handshake::{ClientHandshake, Subprotocol};

pub const IO_TIMEOUT: Duration = Duration::from_secs(5);
const READY_TIMEOUT: Duration = Duration::from_secs(20);

/// A running server; SIGKILLed on drop if still running.
pub struct Server {
    pub child: Child,
    pub data_dir: PathBuf,
    pub http: SocketAddr,
    pub tcp: SocketAddr,
    pub shards: usize,
}

impl Server {
    pub fn start(extra: &[&str]) -> Server {
        Server::start_in(fresh_dir(), extra)
    }

    /// Start on an existing data directory (a restart).
    pub fn start_in(dir: PathBuf, extra: &[&str]) -> Server {
        let mut child = command(&dir)
            .args(extra)
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn confab");
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let mut line = String::new();
            let _ = BufReader::new(stdout).read_line(&mut line);
            let _ = tx.send(line);
        });
        let line = match rx.recv_timeout(READY_TIMEOUT) {
            Ok(line) => line,
            Err(_) => {
                let _ = child.kill();
                panic!("server did not print its ready line");
            }
        };
        let (http, tcp, shards) = parse_ready(&line);
        assert!(dir.is_dir(), "data dir created");
        Server {
            child,
            data_dir: dir,
            http,
            tcp,
            shards,
        }
    }

    /// SIGKILL, and wait for the process to be gone.
    pub fn kill(&mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }

    /// Send SIGTERM.
    pub fn terminate(&self) {
        let pid = self.child.id() as libc::pid_t;
        // SAFETY: kill(2) with a pid we spawned and still own; no memory is involved.
        assert_eq!(unsafe { libc::kill(pid, libc::SIGTERM) }, 0);
    }

    pub fn wait_exit(&mut self, timeout: Duration) -> ExitStatus {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "server did not exit in {timeout:?}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// The server command the tests run: ephemeral ports, two shards, small segments and
/// cheap password hashing, on `dir`.
pub fn command(dir: &std::path::Path) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_confab"));
    command
        .args([
            "--http-port",
            "0",
            "--tcp-port",
            "0",
            "--shards",
            "2",
            "--log-segment-bytes",
            "4194304",
            "--argon2-memory-kib",
            "1024",
            "--argon2-iterations",
            "1",
            "--data-dir",
        ])
        .arg(dir);
    command
}

/// A data directory no other server uses.
pub fn fresh_dir() -> PathBuf {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!(
        "confab-{}-{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    ))
}

fn parse_ready(line: &str) -> (SocketAddr, SocketAddr, usize) {
    let rest = line
        .trim()
        .strip_prefix("confab ready ")
        .unwrap_or_else(|| panic!("{line}"));
    let mut http = None;
    let mut tcp = None;
    let mut shards = None;
    for part in rest.split(' ') {
        match part.split_once('=') {
            Some(("http", v)) => http = v.parse().ok(),
            Some(("tcp", v)) => tcp = v.parse().ok(),
            Some(("shards", v)) => shards = v.parse().ok(),
            Some(("link", _)) => {}
            _ => panic!("unexpected part {part:?} in {line:?}"),
        }
    }
    (http.unwrap(), tcp.unwrap(), shards.unwrap())
}

pub fn connect(addr: SocketAddr) -> TcpStream {
    let stream = TcpStream::connect_timeout(&addr, IO_TIMEOUT).unwrap();
    stream.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
    stream.set_write_timeout(Some(IO_TIMEOUT)).unwrap();
    stream
}

/// Send raw bytes as one HTTP request and read the whole answer (the server closes).
pub fn http_raw(addr: SocketAddr, request: &[u8]) -> String {
    let mut stream = connect(addr);
    stream.write_all(request).unwrap();
    let mut out = Vec::new();
    let _ = stream.read_to_end(&mut out);
    String::from_utf8_lossy(&out).into_owned()
}

pub fn http_get(addr: SocketAddr, path: &str) -> String {
    http_raw(
        addr,
        format!("GET {path} HTTP/1.1\r\nHost: test\r\n\r\n").as_bytes(),
    )
}

/// Sum a per-shard counter or gauge from `/metrics`.
pub fn metric_sum(server: &Server, name: &str) -> u64 {
    let text = http_get(server.http, "/metrics");
    text.lines()
        .filter(|l| l.starts_with(&format!("{name}{{")))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
        .sum()
}

/// What a WebSocket client saw next.
#[derive(Debug, PartialEq, Eq)]
pub enum Seen {
    Text(String),
    Binary(Vec<u8>),
    Ping,
    Pong,
    /// The server's close code (None: close frame without a code).
    Close(Option<u16>),
    /// The connection ended without a close frame.
    Eof,
}

pub struct WsClient {
    pub stream: TcpStream,
    pub codec: WsCodec,
    pub subprotocol: Subprotocol,
}

impl WsClient {
    pub fn connect(addr: SocketAddr, protocols: &[Subprotocol]) -> WsClient {
        let mut stream = connect(addr);
        let mut request = Vec::new();
        let handshake = ClientHandshake::new("test", "/ws", protocols, &mut request);
        stream.write_all(&request).unwrap();
        let mut buf = Vec::new();
        let mut chunk = [0u8; 1024];
        loop {
            let n = stream.read(&mut chunk).unwrap();
            assert!(
                n > 0,
                "eof during handshake: {}",
                String::from_utf8_lossy(&buf)
            );
            buf.extend_from_slice(&chunk[..n]);
            if let Some((subprotocol, len)) = handshake.parse_response(&buf).unwrap() {
                let mut codec = WsCodec::client(WsConfig::default());
                codec.feed(&buf[len..]);
                return WsClient {
                    stream,
                    codec,
                    subprotocol,
                };
            }
        }
    }

    pub fn send_raw(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).unwrap();
    }

    /// Write what the client codec has queued (frames sent with `codec.send_*`).
    pub fn flush(&mut self) {
        let out = self.codec.output().to_vec();
        self.codec.advance_output(out.len());
        let _ = self.stream.write_all(&out);
    }

    pub fn next(&mut self) -> Seen {
        let mut chunk = [0u8; 4096];
        loop {
            match self.codec.poll() {
                Ok(Some(event)) => {
                    return match event {
                        Event::Text(t) => Seen::Text(t.to_string()),
                        Event::Binary(b) => Seen::Binary(b.to_vec()),
                        Event::Ping(_) => Seen::Ping,
                        Event::Pong(_) => Seen::Pong,
                        Event::Close(frame) => Seen::Close(frame.map(|f| f.code.as_u16())),
                    }
                }
                Ok(None) => {}
                Err(e) => panic!("server sent bad websocket bytes: {e}"),
            }
            match self.stream.read(&mut chunk) {
                Ok(0) => return Seen::Eof,
                Ok(n) => self.codec.feed(&chunk[..n]),
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return Seen::Eof,
                Err(e) => panic!("read failed (timeout?): {e}"),
            }
        }
    }

    /// Skip to the close frame and return its code.
    pub fn close_code(&mut self) -> Option<u16> {
        loop {
            match self.next() {
                Seen::Close(code) => return code,
                Seen::Eof => panic!("connection ended without a close frame"),
                _ => {}
            }
        }
    }
}

/// A masked client frame with mask key 0 (payload bytes go out as they are).
pub fn masked_frame(opcode: u8, payload: &[u8]) -> Vec<u8> {
    assert!(payload.len() < 126);
    let mut out = vec![0x80 | opcode, 0x80 | payload.len() as u8, 0, 0, 0, 0];
    out.extend_from_slice(payload);
    out
}
