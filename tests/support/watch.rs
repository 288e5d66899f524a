//! `fleet watch` as a child process for the GPU and monitoring tests (included with `#[path]`):
//! its log in the test's directory, its metrics on a port picked beforehand, and small HTTP and
//! polling helpers. The process is killed when the value is dropped, also when a test fails.

use std::io::{Read, Write};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::common::World;

/// The id of `pool`'s scale set once the watch has made it and opened a session on it.
#[allow(dead_code)] // Only the tests with autoscaled pools ask.
pub fn listening_scale_set(w: &World, watch: &WatchProcess, pool: &str) -> u64 {
    let name = format!("{}-{pool}", w.run);
    let mut id = None;
    watch.eventually(Duration::from_secs(60), "a listened scale set", || {
        id = w
            .fake
            .scale_sets(Some(&w.scope))
            .into_iter()
            .find(|s| s.name == name && s.session.is_some())
            .map(|s| s.id);
        id.is_some()
    });
    id.expect("scale set")
}

/// A free port on 127.0.0.1 (the listener is closed again; the caller binds it next).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

pub struct WatchProcess {
    child: Child,
    log: std::path::PathBuf,
    pub metrics_port: u16,
}

impl WatchProcess {
    /// `fleet watch --metrics-addr 127.0.0.1:PORT` with `args` and `env` added.
    pub fn start(w: &World, args: &[&str], env: &[(&str, String)]) -> WatchProcess {
        let log = w.dir.path().join("watch.log");
        let file = std::fs::File::create(&log).expect("log file");
        let metrics_port = free_port();
        let mut command = Command::new(env!("CARGO_BIN_EXE_fleet"));
        command
            .current_dir(w.dir.path())
            .arg("watch")
            .args(["--metrics-addr", &format!("127.0.0.1:{metrics_port}")])
            .args(args)
            .env("GITHUB_API_URL", w.fake.url())
            .env_remove("DOCKER_HOST")
            .env("GITHUB_TOKEN", w.fake.token())
            .env("FLEET_LOCK_DIR", w.dir.path())
            // History goes to the test's directory (as under systemd's StateDirectory=).
            .env("STATE_DIRECTORY", w.dir.path())
            .env("NO_COLOR", "1")
            .stdout(Stdio::null())
            .stderr(file);
        for (k, v) in env {
            command.env(k, v);
        }
        let child = command.spawn().expect("spawn fleet watch");
        WatchProcess {
            child,
            log,
            metrics_port,
        }
    }

    /// Sends SIGTERM and waits for the process to end.
    #[allow(dead_code)] // Only the tests of clean stops ask.
    pub fn terminate(&mut self) -> std::process::ExitStatus {
        let pid = self.child.id().to_string();
        let sent = Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .expect("kill");
        assert!(sent.success(), "kill -TERM {pid}");
        self.child.wait().expect("wait for fleet watch")
    }

    /// The process id of `fleet watch`.
    #[allow(dead_code)] // Only the tests that look at its threads ask.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// CPU time (user and system, in clock ticks) of the watch's thread named `name`, from
    /// `/proc`; `None` when no such thread runs.
    #[allow(dead_code)] // Only the tests that look at its threads ask.
    pub fn thread_cpu_ticks(&self, name: &str) -> Option<u64> {
        let tasks = std::fs::read_dir(format!("/proc/{}/task", self.pid())).ok()?;
        for task in tasks.flatten() {
            let comm = std::fs::read_to_string(task.path().join("comm")).unwrap_or_default();
            if comm.trim() != name {
                continue;
            }
            let stat = std::fs::read_to_string(task.path().join("stat")).ok()?;
            // The fields after the command's closing parenthesis: utime and stime are the
            // 12th and 13th of them.
            let after = stat.rsplit_once(')')?.1;
            let fields: Vec<&str> = after.split_whitespace().collect();
            let utime: u64 = fields.get(11)?.parse().ok()?;
            let stime: u64 = fields.get(12)?.parse().ok()?;
            return Some(utime + stime);
        }
        None
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The `/metrics` page, or an empty string while the server is not up.
    pub fn metrics(&self) -> String {
        http_get(self.metrics_port, "/metrics").unwrap_or_default()
    }

    /// Waits until `check` holds, at most `limit`; fails with the watch log.
    pub fn eventually(&self, limit: Duration, what: &str, mut check: impl FnMut() -> bool) {
        let started = Instant::now();
        while started.elapsed() < limit {
            if check() {
                return;
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        panic!("timed out waiting for {what}; watch log:\n{}", self.log());
    }
}

impl Drop for WatchProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// An HTTP/1.0 GET on 127.0.0.1 (no chunked answers); the body, `None` when nobody answers.
pub fn http_get(port: u16, path_and_query: &str) -> Option<String> {
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .ok()?;
    write!(
        stream,
        "GET {path_and_query} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n"
    )
    .ok()?;
    let mut answer = String::new();
    stream.read_to_string(&mut answer).ok()?;
    let (head, body) = answer.split_once("\r\n\r\n")?;
    head.starts_with("HTTP/1.")
        .then(|| body.to_string())
        .filter(|_| head.split(' ').nth(1) == Some("200"))
}

/// The value of the sample whose line starts with `name{` and carries every label of `labels`.
pub fn sample(page: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    page.lines()
        .filter(|l| l.starts_with(&format!("{name}{{")) || l.starts_with(&format!("{name} ")))
        .find(|l| {
            labels.iter().all(|(k, v)| {
                l.contains(&format!("{{{k}=\"{v}\"")) || l.contains(&format!(",{k}=\"{v}\""))
            })
        })
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}
