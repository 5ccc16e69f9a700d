//! loadgen against a real `confab` on loopback, at small scale: the figures it prints with
//! `--json` must be consistent with what the server did.
//!
//! - `idle` over two worker processes: 2,000 authenticated connections opened and held
//!   with heartbeats; every ping answered, none failed, and the server's memory grew.
//! - `chat`: a short open-loop run; everything sent was acknowledged and delivered.
//!
//! The server binary is the workspace's `confab`, built next to `loadgen` (the test
//! command builds every binary before it runs any test).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};

struct Server {
    child: Child,
    http: String,
    tcp: String,
    dir: PathBuf,
}

impl Server {
    fn start() -> Server {
        let loadgen = PathBuf::from(env!("CARGO_BIN_EXE_loadgen"));
        let confab = loadgen.with_file_name("confab");
        assert!(
            confab.exists(),
            "{} missing: build the workspace first (the test command does)",
            confab.display()
        );
        let dir = std::env::temp_dir().join(format!("loadgen-test-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let mut child = Command::new(confab)
            .args(["--data-dir"])
            .arg(&dir)
            .args([
                "--http-port",
                "0",
                "--tcp-port",
                "0",
                "--shards",
                "2",
                "--argon2-memory-kib",
                "1024",
                "--argon2-iterations",
                "1",
                "--rate-limit-per-sec",
                "100000",
                "--rate-limit-burst",
                "100000",
            ])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let mut line = String::new();
        BufReader::new(stdout).read_line(&mut line).unwrap();
        let field = |key: &str| {
            line.split_whitespace()
                .find_map(|w| w.strip_prefix(key))
                .unwrap_or_else(|| panic!("no {key} in ready line {line:?}"))
                .to_string()
        };
        Server {
            http: field("http="),
            tcp: field("tcp="),
            child,
            dir,
        }
    }

    fn loadgen(&self, args: &[&str]) -> serde_json::Value {
        let out = Command::new(env!("CARGO_BIN_EXE_loadgen"))
            .args(["--json", "--http", &self.http, "--tcp", &self.tcp])
            .args(args)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "loadgen {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let text = String::from_utf8(out.stdout).unwrap();
        serde_json::from_str(text.trim()).unwrap_or_else(|e| panic!("{e}: {text}"))
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

#[test]
fn idle_over_worker_processes_and_a_chat_run_report_consistent_figures() {
    let server = Server::start();
    let pid = server.child.id().to_string();
    let idle = server.loadgen(&[
        "idle",
        "--conns",
        "2000",
        "--users",
        "20",
        "--workers",
        "2",
        "--server-pid",
        &pid,
        "--duration",
        "2",
        "--ping-interval-ms",
        "500",
    ]);
    assert_eq!(idle["workers"], 2);
    assert_eq!(idle["opened"], 2000, "{idle}");
    assert_eq!(idle["failed"], 0, "{idle}");
    assert_eq!(idle["held"], 2000, "{idle}");
    assert_eq!(idle["error_count"], 0, "{idle}");
    assert_eq!(
        idle["other_frames"], 0,
        "idle connections get no pushes: {idle}"
    );
    // 2,000 connections pinging every 0.5 s for 2 s: ~8,000 pings, each answered.
    let pings = idle["pings_per_sec"].as_f64().unwrap();
    let pongs = idle["pongs_per_sec"].as_f64().unwrap();
    assert!((3000.0..=5000.0).contains(&pings), "{idle}");
    assert!(
        (pongs - pings).abs() <= pings * 0.02,
        "every ping answered: {idle}"
    );
    assert!(
        idle["server_bytes_per_conn"].as_f64().unwrap() > 0.0,
        "{idle}"
    );
    assert!(idle["connect_per_sec"].as_f64().unwrap() > 0.0, "{idle}");

    let chat = server.loadgen(&["chat", "--pairs", "4", "--rate", "200", "--duration", "2"]);
    let sent = chat["sent"].as_u64().unwrap();
    assert!(sent >= 300, "{chat}");
    assert_eq!(chat["acked"], sent, "every send acknowledged: {chat}");
    assert_eq!(chat["delivered"], sent, "every send delivered: {chat}");
    assert_eq!(chat["errors"], serde_json::json!({}), "{chat}");
}
