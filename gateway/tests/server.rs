//! End to end: the real binary on loopback, spoken to with raw bytes and `wire`'s client
//! codecs.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::io::{Read, Write};
use std::time::Duration;

use common::{connect, http_get, http_raw, masked_frame, Seen, Server, WsClient};
use wire::message::{Body, ErrorCode, Frame, Hello, Ping};
use wire::ws::handshake::Subprotocol;

fn hello(request_id: u64) -> Frame {
    Frame {
        request_id,
        body: Body::Hello(Hello {
            token: "not-a-token".to_string(),
            client: "test".to_string(),
            protocol_version: 1,
        }),
    }
}

fn expect_error(frame: &Frame, request_id: u64, code: ErrorCode) {
    assert_eq!(frame.request_id, request_id);
    match &frame.body {
        Body::Error(error) => assert_eq!(error.code, code, "{error:?}"),
        other => panic!("expected Error, got {other:?}"),
    }
}

#[test]
fn healthz_and_metrics() {
    let server = Server::start(&[]);
    assert_eq!(server.shards, 2);
    let health = http_get(server.http, "/healthz");
    assert!(health.starts_with("HTTP/1.1 200 OK\r\n"), "{health}");
    assert!(health.ends_with("\r\n\r\nok\n"), "{health}");
    let metrics = http_get(server.http, "/metrics");
    assert!(metrics.starts_with("HTTP/1.1 200 OK\r\n"), "{metrics}");
    for needle in [
        "confab_connections{shard=\"0\"} ",
        "confab_connections{shard=\"1\"} ",
        "confab_connections_accepted_total{shard=\"0\",listener=\"http\"} ",
        "confab_connections_accepted_total{shard=\"1\",listener=\"tcp\"} ",
        "confab_log_batch_io_seconds_count{shard=\"0\"} ",
        "confab_log_batch_io_seconds_bucket{shard=\"1\",le=\"+Inf\"} ",
    ] {
        assert!(metrics.contains(needle), "missing {needle} in {metrics}");
    }
    assert!(http_get(server.http, "/nope").starts_with("HTTP/1.1 404 "));
}

#[test]
fn oversized_request_head_is_431() {
    let server = Server::start(&[]);
    let mut request = b"GET /healthz HTTP/1.1\r\nHost: test\r\n".to_vec();
    request.extend_from_slice(format!("X-Big: {}\r\n\r\n", "a".repeat(9000)).as_bytes());
    let answer = http_raw(server.http, &request);
    assert!(answer.starts_with("HTTP/1.1 431 "), "{answer}");
}

#[test]
fn upgrade_with_each_subprotocol() {
    let server = Server::start(&[]);
    let binary = WsClient::connect(server.http, &[Subprotocol::Binary]);
    assert_eq!(binary.subprotocol, Subprotocol::Binary);
    let json = WsClient::connect(server.http, &[Subprotocol::Json, Subprotocol::Binary]);
    assert_eq!(json.subprotocol, Subprotocol::Json);
}

#[test]
fn upgrade_without_subprotocol_is_400() {
    let server = Server::start(&[]);
    let answer = http_raw(
        server.http,
        b"GET /ws HTTP/1.1\r\nHost: test\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
          Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n",
    );
    assert!(answer.starts_with("HTTP/1.1 400 "), "{answer}");
    assert!(answer.contains("subprotocol"), "{answer}");
}

#[test]
fn wire_errors_get_their_close_codes() {
    let server = Server::start(&[]);
    // Unmasked client frame: 1002.
    let mut ws = WsClient::connect(server.http, &[Subprotocol::Binary]);
    ws.send_raw(&[0x82, 0x02, 0x01, 0x02]);
    assert_eq!(ws.close_code(), Some(1002));
    // A frame header announcing 5 MiB: 1009, before any payload.
    let mut ws = WsClient::connect(server.http, &[Subprotocol::Binary]);
    let mut header = vec![0x82, 0x80 | 127];
    header.extend_from_slice(&(5u64 << 20).to_be_bytes());
    header.extend_from_slice(&[0, 0, 0, 0]);
    ws.send_raw(&header);
    assert_eq!(ws.close_code(), Some(1009));
    // Invalid UTF-8 in a text frame on the JSON subprotocol: 1007.
    let mut ws = WsClient::connect(server.http, &[Subprotocol::Json]);
    ws.send_raw(&masked_frame(0x1, &[0xff, 0xfe, 0xfd]));
    assert_eq!(ws.close_code(), Some(1007));
    // Garbage binary on confab.v1: 1007.
    let mut ws = WsClient::connect(server.http, &[Subprotocol::Binary]);
    ws.codec.send_binary(b"definitely not flatbuffers").unwrap();
    ws.flush();
    assert_eq!(ws.close_code(), Some(1007));
    // Text on the binary subprotocol: 1003.
    let mut ws = WsClient::connect(server.http, &[Subprotocol::Binary]);
    ws.codec.send_text("{}").unwrap();
    ws.flush();
    assert_eq!(ws.close_code(), Some(1003));
}

#[test]
fn hello_is_refused_until_accounts_exist() {
    let server = Server::start(&[]);
    let mut ws = WsClient::connect(server.http, &[Subprotocol::Binary]);
    ws.codec
        .send_binary(&wire::message::to_flatbuffers(&hello(42)))
        .unwrap();
    ws.flush();
    let Seen::Binary(reply) = ws.next() else {
        panic!("expected a binary Error frame")
    };
    expect_error(
        &wire::message::from_flatbuffers(&reply).unwrap(),
        42,
        ErrorCode::Unauthenticated,
    );
    assert_eq!(ws.close_code(), Some(4001));

    let mut ws = WsClient::connect(server.http, &[Subprotocol::Json]);
    ws.codec.send_text(&wire::json::to_json(&hello(7))).unwrap();
    ws.flush();
    let Seen::Text(reply) = ws.next() else {
        panic!("expected a text Error frame")
    };
    expect_error(
        &wire::json::from_json(&reply).unwrap(),
        7,
        ErrorCode::Unauthenticated,
    );
    assert_eq!(ws.close_code(), Some(4001));

    // Anything but Hello first: UnexpectedFrame, same close.
    let mut ws = WsClient::connect(server.http, &[Subprotocol::Binary]);
    let ping = Frame {
        request_id: 9,
        body: Body::Ping(Ping::default()),
    };
    ws.codec
        .send_binary(&wire::message::to_flatbuffers(&ping))
        .unwrap();
    ws.flush();
    let Seen::Binary(reply) = ws.next() else {
        panic!("expected a binary Error frame")
    };
    expect_error(
        &wire::message::from_flatbuffers(&reply).unwrap(),
        9,
        ErrorCode::UnexpectedFrame,
    );
    assert_eq!(ws.close_code(), Some(4001));
}

#[test]
fn websocket_ping_is_answered() {
    let server = Server::start(&[]);
    let mut ws = WsClient::connect(server.http, &[Subprotocol::Binary]);
    ws.codec.ping(b"hi").unwrap();
    ws.flush();
    assert_eq!(ws.next(), Seen::Pong);
}

#[test]
fn handshake_timeout_closes_with_4002() {
    let server = Server::start(&["--handshake-timeout-ms", "300"]);
    let mut ws = WsClient::connect(server.http, &[Subprotocol::Binary]);
    assert_eq!(ws.close_code(), Some(4002));
}

#[test]
fn raw_tcp_refuses_oversized_prefix_and_hello() {
    let server = Server::start(&[]);
    let mut stream = connect(server.tcp);
    stream.write_all(&(5u32 << 20).to_le_bytes()).unwrap();
    let mut buf = [0u8; 16];
    assert!(
        matches!(stream.read(&mut buf), Ok(0) | Err(_)),
        "expected a disconnect"
    );

    let mut stream = connect(server.tcp);
    let mut out = Vec::new();
    wire::tcp_frame::encode(&wire::message::to_flatbuffers(&hello(5)), &mut out).unwrap();
    stream.write_all(&out).unwrap();
    let mut reply = Vec::new();
    stream.read_to_end(&mut reply).unwrap();
    let (frame, used) = wire::tcp_frame::parse(&reply, wire::limits::FRAME_BYTES_MAX)
        .unwrap()
        .expect("one whole frame");
    assert_eq!(used, reply.len(), "nothing after the Error frame");
    expect_error(
        &wire::message::from_flatbuffers(frame).unwrap(),
        5,
        ErrorCode::Unauthenticated,
    );
}

#[test]
fn a_bad_connection_does_not_disturb_a_good_one() {
    let server = Server::start(&[]);
    let mut good = WsClient::connect(server.http, &[Subprotocol::Json]);
    for _ in 0..4 {
        let mut bad = WsClient::connect(server.http, &[Subprotocol::Binary]);
        bad.send_raw(&[0x82, 0x02, 0x01, 0x02]);
        assert_eq!(bad.close_code(), Some(1002));
        let mut tcp = connect(server.tcp);
        tcp.write_all(&u32::MAX.to_le_bytes()).unwrap();
    }
    good.codec.ping(b"still there").unwrap();
    good.flush();
    assert_eq!(good.next(), Seen::Pong);
    assert!(http_get(server.http, "/healthz").starts_with("HTTP/1.1 200 OK\r\n"));
}

#[test]
fn sigterm_closes_sessions_with_1001_and_exits_0() {
    let mut server = Server::start(&[]);
    let mut clients: Vec<WsClient> = (0..4)
        .map(|_| WsClient::connect(server.http, &[Subprotocol::Binary]))
        .collect();
    // Let the sessions start reading before the signal.
    std::thread::sleep(Duration::from_millis(100));
    server.terminate();
    for client in &mut clients {
        assert_eq!(client.close_code(), Some(1001));
        client.flush(); // our half of the close handshake
    }
    assert_eq!(server.wait_exit(Duration::from_secs(10)).code(), Some(0));
}

#[test]
fn a_shard_that_cannot_open_its_log_stops_the_server_with_an_error() {
    let dir = common::fresh_dir();
    std::fs::create_dir_all(&dir).unwrap();
    // Shard 1's log directory is a file: shard 0 starts, shard 1 cannot.
    std::fs::write(dir.join("shard-1"), b"not a directory").unwrap();
    let stderr = start_failure(&dir);
    assert!(
        stderr.contains("shard 1") && stderr.contains("shard-1"),
        "{stderr}"
    );
}

/// Runs the server on `dir` expecting it to fail to start; returns its stderr.
fn start_failure(dir: &std::path::Path) -> String {
    let mut child = common::command(dir)
        .env("RUST_LOG", "off")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            panic!("server hung instead of failing");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(!status.success());
    let mut stderr = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut stderr)
        .unwrap();
    stderr
}

#[test]
fn a_second_server_on_ports_in_use_refuses_to_start_instead_of_sharing_them() {
    let first = Server::start(&[]);
    let (http, tcp) = (first.http.port().to_string(), first.tcp.port().to_string());
    let other_dir = common::fresh_dir();
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_confab"))
        .args(["--http-port", &http, "--tcp-port", &tcp, "--shards", "2"])
        .arg("--data-dir")
        .arg(&other_dir)
        .env("RUST_LOG", "off")
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    assert!(
        !output.status.success(),
        "a second server started on the same ports"
    );
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("is not free"), "{stderr}");
    // Every connection still reaches the first server.
    for _ in 0..20 {
        assert!(http_get(first.http, "/healthz").starts_with("HTTP/1.1 200 OK"));
    }
}

#[test]
fn a_second_server_on_a_data_dir_in_use_refuses_to_start() {
    let mut first = Server::start(&[]);
    let stderr = start_failure(&first.data_dir);
    assert!(
        stderr.contains("in use by another confab process"),
        "{stderr}"
    );
    // The first is unaffected, and once it is gone (killed: the lock goes with the
    // process) the directory can be used again.
    assert!(http_get(first.http, "/healthz").starts_with("HTTP/1.1 200 OK"));
    first.kill();
    let again = Server::start_in(first.data_dir.clone(), &[]);
    assert!(http_get(again.http, "/healthz").starts_with("HTTP/1.1 200 OK"));
}

#[test]
fn the_web_client_is_served_at_root_with_validators_and_a_strict_policy() {
    let server = Server::start(&[]);
    let page = http_get(server.http, "/");
    assert!(page.starts_with("HTTP/1.1 200 OK\r\n"), "{page}");
    assert!(page.contains("Content-Type: text/html; charset=utf-8\r\n"));
    assert!(page.contains("Content-Security-Policy: default-src 'self';"));
    assert!(page.contains("<script type=\"module\" src=\"/app.js\"></script>"));
    for (path, kind) in [
        ("/app.js", "text/javascript"),
        ("/confab.js", "text/javascript"),
        ("/style.css", "text/css"),
    ] {
        let answer = http_get(server.http, path);
        assert!(
            answer.starts_with("HTTP/1.1 200 OK\r\n"),
            "{path}: {answer}"
        );
        assert!(answer.contains(&format!("Content-Type: {kind}")), "{path}");
        // A browser that has this version revalidates to 304, with no body.
        let etag = answer
            .lines()
            .find_map(|l| l.strip_prefix("ETag: "))
            .expect("etag")
            .to_string();
        let again = http_raw(
            server.http,
            format!("GET {path} HTTP/1.1\r\nHost: t\r\nIf-None-Match: {etag}\r\n\r\n").as_bytes(),
        );
        assert!(again.starts_with("HTTP/1.1 304 "), "{again}");
        assert!(again.ends_with("\r\n\r\n"), "{again}");
    }
    let post = http_raw(
        server.http,
        b"POST /app.js HTTP/1.1\r\nHost: t\r\nContent-Length: 0\r\n\r\n",
    );
    assert!(post.starts_with("HTTP/1.1 405 "), "{post}");
    assert!(http_get(server.http, "/../Cargo.toml").starts_with("HTTP/1.1 404 "));
}

#[test]
fn users_are_looked_up_by_id_or_name_with_a_token() {
    let server = Server::start(&[]);
    let name = common::people::unique("look");
    let user_id = wire::client::http::register(server.http, &name, "correct horse").unwrap();
    let login = wire::client::http::login(server.http, &name, "correct horse", None, None).unwrap();
    let get = |path: &str, token: Option<&str>| {
        let auth = token.map_or(String::new(), |t| format!("Authorization: Bearer {t}\r\n"));
        http_raw(
            server.http,
            format!("GET {path} HTTP/1.1\r\nHost: t\r\n{auth}\r\n").as_bytes(),
        )
    };
    let token = Some(login.access_token.as_str());
    let expected = format!("{{\"user_id\":\"{user_id}\",\"username\":\"{name}\"}}");
    let by_id = get(&format!("/v1/users/{user_id}"), token);
    assert!(by_id.starts_with("HTTP/1.1 200 "), "{by_id}");
    assert!(by_id.ends_with(&expected), "{by_id}");
    let by_name = get(&format!("/v1/users?username={name}"), token);
    assert!(by_name.ends_with(&expected), "{by_name}");

    for (path, status) in [
        ("/v1/users?username=nobody_here", "404"),
        ("/v1/users?username=NOT%20VALID", "404"),
        ("/v1/users/12345", "404"),
        ("/v1/users/abc", "400"),
        ("/v1/users", "400"),
    ] {
        let answer = get(path, token);
        assert!(
            answer.starts_with(&format!("HTTP/1.1 {status} ")),
            "{path}: {answer}"
        );
    }
    let anonymous = get(&format!("/v1/users/{user_id}"), None);
    assert!(anonymous.starts_with("HTTP/1.1 401 "), "{anonymous}");
}
