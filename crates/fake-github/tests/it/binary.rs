//! The `fake-github` binary: announces its URL, serves both APIs, stops on SIGTERM.

use std::io::{BufRead, BufReader, Read};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use http::Method;
use serde_json::json;

use crate::common::Http;

const BIN: &str = env!("CARGO_BIN_EXE_fake-github");

/// Kills the child if a test fails before it has exited.
struct Guard(Child);

impl Drop for Guard {
    fn drop(&mut self) {
        if matches!(self.0.try_wait(), Ok(None)) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

fn wait_for_exit(child: &mut Child, limit: Duration) -> std::process::ExitStatus {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(status) = child.try_wait().expect("try_wait") {
            return status;
        }
        assert!(
            Instant::now() < deadline,
            "fake-github did not exit in {limit:?}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[tokio::test]
async fn binary_serves_and_stops_on_sigterm() {
    let child = Command::new(BIN)
        .args([
            "--addr",
            "127.0.0.1:0",
            "--token",
            "demo-token",
            "--seed",
            "3",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("fake-github starts");
    let mut guard = Guard(child);

    // Read the announcement on a thread so a silent binary fails the test instead of hanging.
    let stdout = guard.0.stdout.take().expect("stdout");
    let (line_tx, line_rx) = mpsc::channel();
    let (rest_tx, rest_rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut reader = BufReader::new(stdout);
        let mut line = String::new();
        let _ = reader.read_line(&mut line);
        let _ = line_tx.send(line);
        let mut rest = String::new();
        let _ = reader.read_to_string(&mut rest);
        let _ = rest_tx.send(rest);
    });
    let line = tokio::task::spawn_blocking(move || line_rx.recv_timeout(Duration::from_secs(30)))
        .await
        .expect("join")
        .expect("announcement within 30 s");
    let url = line
        .strip_suffix('\n')
        .and_then(|l| l.strip_prefix("listening on "))
        .expect("`listening on URL` line")
        .to_owned();
    assert!(url.starts_with("http://127.0.0.1:"), "{url}");

    let http = Http::new();
    let r = http
        .send(
            Method::POST,
            &format!("{url}/_fake/runners"),
            None,
            Some(&json!({"scope": "repo:octo/hello", "name": "foreign", "online": true})),
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.body);
    let r = http
        .send(
            Method::GET,
            &format!("{url}/repos/octo/hello/actions/runners"),
            Some("Bearer demo-token"),
            None,
        )
        .await;
    assert_eq!(r.status, 200);
    assert_eq!(r.body["total_count"], 1);
    assert_eq!(r.body["runners"][0]["name"], "foreign");
    let r = http
        .send(Method::GET, &format!("{url}/_fake/requests"), None, None)
        .await;
    assert_eq!(r.body.as_array().map(Vec::len), Some(1));
    drop(http);

    let pid = guard.0.id().to_string();
    let killed = Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .expect("kill runs");
    assert!(killed.success());
    let status = wait_for_exit(&mut guard.0, Duration::from_secs(10));
    assert!(status.success(), "exit status {status:?}");
    let rest = rest_rx
        .recv_timeout(Duration::from_secs(5))
        .expect("stdout closed");
    assert_eq!(rest, "", "exactly one line on stdout");

    let mut stderr = String::new();
    guard
        .0
        .stderr
        .take()
        .expect("stderr")
        .read_to_string(&mut stderr)
        .expect("stderr readable");
    assert!(
        stderr.contains("GET /repos/octo/hello/actions/runners -> 200"),
        "stderr: {stderr}"
    );
}

#[test]
fn binary_refuses_non_loopback_addresses() {
    let output = Command::new(BIN)
        .args(["--addr", "0.0.0.0:0"])
        .output()
        .expect("fake-github runs");
    assert_eq!(output.status.code(), Some(2));
    assert!(output.stdout.is_empty());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("loopback"), "{stderr}");
}
