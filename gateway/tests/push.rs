//! End to end: the push-notification outbox against a real local HTTP receiver — one
//! signed webhook call per burst to an offline user, retries after failures, none when
//! the user came online first, dead-lettering, and jobs that survive a SIGKILL.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::people::*;
use common::Server;
use hmac::{Hmac, Mac};
use sha2::Sha256;
use wire::client::{new_key, Transport};

const SECRET: &str = "webhook-test-secret";

/// One request the receiver got.
#[derive(Debug, Clone)]
struct Call {
    headers: Vec<(String, String)>,
    body: Vec<u8>,
    /// The status it answered.
    status: u16,
}

impl Call {
    fn header(&self, name: &str) -> &str {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map_or("", |(_, v)| v.as_str())
    }

    fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap()
    }

    /// The signature checks out against the shared secret.
    fn signed(&self) -> bool {
        let mut mac = Hmac::<Sha256>::new_from_slice(SECRET.as_bytes()).unwrap();
        mac.update(self.header("X-Confab-Timestamp").as_bytes());
        mac.update(b".");
        mac.update(&self.body);
        let hex: String = mac
            .finalize()
            .into_bytes()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        self.header("X-Confab-Signature") == format!("v1={hex}")
    }
}

/// A webhook receiver on loopback: records every request, answers 500 while
/// `fail_next` is above zero (counting it down), else 200.
#[derive(Clone)]
struct Receiver {
    addr: SocketAddr,
    calls: Arc<Mutex<Vec<Call>>>,
    fail_next: Arc<AtomicUsize>,
}

impl Receiver {
    fn start() -> Receiver {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let receiver = Receiver {
            addr: listener.local_addr().unwrap(),
            calls: Arc::default(),
            fail_next: Arc::default(),
        };
        let this = receiver.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                this.serve(stream);
            }
        });
        receiver
    }

    fn serve(&self, mut stream: TcpStream) {
        stream
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        let mut buf = Vec::new();
        let mut chunk = [0u8; 4096];
        let (head_len, headers, content_length) = loop {
            let n = match stream.read(&mut chunk) {
                Ok(0) | Err(_) => return,
                Ok(n) => n,
            };
            buf.extend_from_slice(&chunk[..n]);
            let mut slots = [httparse::EMPTY_HEADER; 32];
            let mut request = httparse::Request::new(&mut slots);
            if let Ok(httparse::Status::Complete(len)) = request.parse(&buf) {
                assert_eq!(request.method, Some("POST"));
                assert_eq!(request.path, Some("/hook"));
                let headers: Vec<(String, String)> = request
                    .headers
                    .iter()
                    .map(|h| {
                        (
                            h.name.to_string(),
                            String::from_utf8_lossy(h.value).into_owned(),
                        )
                    })
                    .collect();
                let length = headers
                    .iter()
                    .find(|(n, _)| n.eq_ignore_ascii_case("content-length"))
                    .map_or(0, |(_, v)| v.parse().unwrap());
                break (len, headers, length);
            }
        };
        while buf.len() < head_len + content_length {
            match stream.read(&mut chunk) {
                Ok(0) | Err(_) => return,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        }
        let failing = self
            .fail_next
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
            .is_ok();
        let status = if failing { 500 } else { 200 };
        self.calls.lock().unwrap().push(Call {
            headers,
            body: buf[head_len..head_len + content_length].to_vec(),
            status,
        });
        let reason = if failing {
            "Internal Server Error"
        } else {
            "OK"
        };
        let _ = write!(
            stream,
            "HTTP/1.1 {status} {reason}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
        );
    }

    fn url(&self) -> String {
        format!("http://{}/hook", self.addr)
    }

    fn calls(&self) -> Vec<Call> {
        self.calls.lock().unwrap().clone()
    }

    /// Wait until `n` calls arrived; then, for `quiet`, that no more do.
    fn expect_calls(&self, n: usize, quiet: Duration) -> Vec<Call> {
        let deadline = Instant::now() + WAIT;
        while self.calls().len() < n {
            assert!(
                Instant::now() < deadline,
                "{} of {n} webhook calls arrived: {:?}",
                self.calls().len(),
                self.calls()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        std::thread::sleep(quiet);
        let calls = self.calls();
        assert_eq!(calls.len(), n, "exactly {n} calls: {calls:?}");
        calls
    }
}

fn server(receiver: &Receiver, dir: Option<std::path::PathBuf>, extra: &[&str]) -> Server {
    let url = receiver.url();
    let mut args = FAST.to_vec();
    args.extend_from_slice(&[
        "--push-webhook-url",
        &url,
        "--push-webhook-secret",
        SECRET,
        "--push-retry-base-ms",
        "100",
        "--push-retry-max-ms",
        "400",
    ]);
    args.extend_from_slice(extra);
    match dir {
        Some(dir) => Server::start_in(dir, &args),
        None => Server::start(&args),
    }
}

#[test]
fn offline_recipient_gets_one_signed_webhook_per_burst_retried_after_failures() {
    let receiver = Receiver::start();
    let server = server(&receiver, None, &["--push-delay-ms", "300"]);
    let (_, a) = user(&server, "wa");
    let (_, b) = user(&server, "wb");
    let (_, c) = user(&server, "wc");
    let (mut ca, _) = online(&server, Transport::WsBinary, &a);
    let to_b = ca.open_direct(b.user_id).unwrap().conversation_id;

    // A burst of three to offline b: one notification, on the first try.
    for text in ["one", "two", "three"] {
        ca.send_message(to_b, text.as_bytes(), new_key()).unwrap();
    }
    let calls = receiver.expect_calls(1, Duration::from_millis(1000));
    let call = &calls[0];
    assert_eq!(call.status, 200);
    assert!(call.signed(), "bad signature: {call:?}");
    assert_eq!(call.header("Content-Type"), "application/json");
    let json = call.json();
    assert_eq!(json["user_id"], b.user_id.to_string());
    assert_eq!(json["conversation_id"], to_b.to_string());
    assert_eq!(json["sender_user_id"], a.user_id.to_string());
    assert_eq!(json["seq"], "1");
    assert_eq!(json["messages"], 3, "the burst coalesced: {json}");
    assert_eq!(json["attempt"], 1);
    assert_eq!(
        call.header("X-Confab-Delivery"),
        json["job_id"].as_str().unwrap()
    );

    // The receiver fails twice: the same job comes again, signed each time, and once
    // it is accepted nothing more arrives.
    receiver.fail_next.store(2, Ordering::SeqCst);
    let (mut cc, _) = online(&server, Transport::Tcp, &c);
    let c_to_b = cc.open_direct(b.user_id).unwrap().conversation_id;
    cc.send_message(c_to_b, b"are you there?", new_key())
        .unwrap();
    let calls = receiver.expect_calls(4, Duration::from_millis(1500));
    let retries = &calls[1..];
    assert_eq!(
        retries.iter().map(|c| c.status).collect::<Vec<_>>(),
        [500, 500, 200]
    );
    let job = retries[0].header("X-Confab-Delivery").to_string();
    for (i, call) in retries.iter().enumerate() {
        assert!(call.signed(), "attempt {i}: bad signature");
        assert_eq!(call.header("X-Confab-Delivery"), job);
        assert_eq!(call.json()["attempt"], i + 1);
        assert_eq!(call.json()["conversation_id"], c_to_b.to_string());
    }
    assert_eq!(
        common::metric_sum(&server, "confab_push_delivered_total"),
        2
    );
    assert_eq!(
        common::metric_sum(&server, "confab_push_failed_attempts_total"),
        2
    );
    assert_eq!(
        common::metric_sum(&server, "confab_push_dead_lettered_total"),
        0
    );
}

#[test]
fn no_push_when_the_recipient_comes_online_first_and_dead_letter_after_the_last_try() {
    let receiver = Receiver::start();
    let server = server(
        &receiver,
        None,
        &["--push-delay-ms", "1500", "--push-attempts-max", "3"],
    );
    let (_, a) = user(&server, "na");
    let (_, b) = user(&server, "nb");
    let (mut ca, _) = online(&server, Transport::WsJson, &a);
    let to_b = ca.open_direct(b.user_id).unwrap().conversation_id;
    ca.send_message(to_b, b"quick, come online", new_key())
        .unwrap();
    // b connects within the delay and receives the message itself.
    std::thread::sleep(Duration::from_millis(200));
    let (cb, missed) = online(&server, Transport::Tcp, &b);
    assert_eq!(missed.len(), 1);
    std::thread::sleep(Duration::from_millis(2500));
    assert!(receiver.calls().is_empty(), "{:?}", receiver.calls());
    assert_eq!(
        common::metric_sum(&server, "confab_push_cancelled_total"),
        1
    );
    drop(cb);

    // Offline again, and the receiver is down for good: three tries, then dead-lettered.
    std::thread::sleep(Duration::from_millis(300));
    receiver.fail_next.store(usize::MAX, Ordering::SeqCst);
    ca.send_message(to_b, b"still there?", new_key()).unwrap();
    let calls = receiver.expect_calls(3, Duration::from_millis(1500));
    assert!(calls.iter().all(|c| c.status == 500 && c.signed()));
    let deadline = Instant::now() + WAIT;
    while common::metric_sum(&server, "confab_push_dead_lettered_total") != 1 {
        assert!(Instant::now() < deadline, "not dead-lettered");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn jobs_pending_at_sigkill_fire_after_restart() {
    let receiver = Receiver::start();
    let mut server = server(&receiver, None, &["--push-delay-ms", "2500"]);
    let (_, a) = user(&server, "ka");
    let (_, b) = user(&server, "kb");
    let (mut ca, _) = online(&server, Transport::Tcp, &a);
    let to_b = ca.open_direct(b.user_id).unwrap().conversation_id;
    ca.send_message(to_b, b"before the crash", new_key())
        .unwrap();
    // The job is durable once the shard has folded it.
    let deadline = Instant::now() + WAIT;
    while common::metric_sum(&server, "confab_push_jobs_pending") != 1 {
        assert!(Instant::now() < deadline, "job never recorded");
        std::thread::sleep(Duration::from_millis(20));
    }
    drop(ca);
    server.kill();
    assert!(receiver.calls().is_empty(), "fired before the kill");

    let server = self::server(
        &receiver,
        Some(server.data_dir.clone()),
        &["--push-delay-ms", "2500"],
    );
    let calls = receiver.expect_calls(1, Duration::from_millis(1000));
    assert!(calls[0].signed());
    assert_eq!(calls[0].json()["user_id"], b.user_id.to_string());
    assert_eq!(calls[0].json()["conversation_id"], to_b.to_string());
    let deadline = Instant::now() + WAIT;
    while common::metric_sum(&server, "confab_push_jobs_pending") != 0 {
        assert!(Instant::now() < deadline, "job not ended after delivery");
        std::thread::sleep(Duration::from_millis(20));
    }
}
