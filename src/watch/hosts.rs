//! The hosts `fleet watch` keeps: one task per host connects (again and again, with backoff),
//! follows the engine's events of the fleet's containers, and says when the host comes up or
//! goes down. The loop observes the hosts that are up; a host that fails or does not answer
//! in time is marked down, its task drops the connection and reconnects, and meanwhile the
//! planner leaves that host alone (docs/watch.md, "A host that goes away").

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use futures_util::future::join_all;
use tokio::sync::mpsc::UnboundedSender;
use tokio::task::JoinHandle;

use super::events::follow_events;
use super::{Env, Trigger};
use crate::docker::DockerHost;
use crate::spec::{Host, Spec};

/// The first wait before connecting again, doubled up to [`MAX_BACKOFF`].
const MIN_BACKOFF: Duration = Duration::from_millis(500);
const MAX_BACKOFF: Duration = Duration::from_secs(30);
/// A connection that lasted this long was a good one: the next wait starts over from
/// [`MIN_BACKOFF`]. One that failed sooner (an engine that accepts and drops) lets the wait
/// grow, so that a host failing right after connecting is not reconnected (and reconciled)
/// every half second.
const STABLE: Duration = Duration::from_secs(10);

/// The waits between connections of a host's task: from `min`, doubled up to `max`.
#[derive(Clone, Copy)]
struct Backoff {
    min: Duration,
    max: Duration,
}

const BACKOFF: Backoff = Backoff {
    min: MIN_BACKOFF,
    max: MAX_BACKOFF,
};

impl Backoff {
    /// The wait before connecting again after a connection that lasted `lasted`.
    fn after(self, backoff: Duration, lasted: Duration) -> Duration {
        if lasted >= STABLE { self.min } else { backoff }
    }

    /// The wait after `wait`, if the next attempt fails too.
    fn grown(self, wait: Duration) -> Duration {
        (wait * 2).min(self.max)
    }
}

/// The table of links, whatever another task did while holding it: a poisoned lock must never
/// read as a table without hosts (their runners would look like orphans).
fn table(links: &Mutex<BTreeMap<String, Link>>) -> MutexGuard<'_, BTreeMap<String, Link>> {
    links.lock().unwrap_or_else(PoisonError::into_inner)
}

/// One host's connection as the loop sees it.
#[derive(Clone)]
enum Link {
    Up(DockerHost),
    /// Why not: the connection's error, or what the loop saw.
    Down(String),
}

/// Every host's link, and the tasks that keep them.
pub(super) struct HostLinks {
    links: Arc<Mutex<BTreeMap<String, Link>>>,
    /// Per host: raised by [`HostLinks::mark_down`] to make its task reconnect.
    resets: BTreeMap<String, tokio::sync::watch::Sender<u64>>,
    /// Per host: the task that keeps its link.
    tasks: BTreeMap<String, JoinHandle<()>>,
    /// The hosts of the spec these links were made for.
    hosts: BTreeMap<String, Host>,
    /// The fleet whose containers' events the tasks follow.
    fleet: String,
}

impl HostLinks {
    /// Connects to every host of `spec` at once (so that the first reconcile sees them), then
    /// starts one task per host.
    pub(super) async fn start(
        spec: &Spec,
        base_dir: &Path,
        env: Env,
        tx: UnboundedSender<Trigger>,
    ) -> HostLinks {
        let mut links = HostLinks {
            links: Arc::new(Mutex::new(BTreeMap::new())),
            resets: BTreeMap::new(),
            tasks: BTreeMap::new(),
            hosts: BTreeMap::new(),
            fleet: spec.name.clone(),
        };
        links.update(spec, base_dir, env, tx).await;
        links
    }

    /// Follows a new spec's hosts: a host that left, or whose entry changed, loses its task
    /// and link; a new or changed host is connected (all at once) and gets a task. A host
    /// whose entry is the same keeps its connection. Returns the hosts connected.
    pub(super) async fn update(
        &mut self,
        spec: &Spec,
        base_dir: &Path,
        env: Env,
        tx: UnboundedSender<Trigger>,
    ) -> Vec<String> {
        let wanted = spec.effective_hosts();
        if spec.name != self.fleet {
            // Events are filtered by the fleet's name: every task starts over.
            self.fleet = spec.name.clone();
            self.hosts.clear();
        }
        let gone: Vec<String> = self
            .tasks
            .keys()
            .filter(|name| {
                wanted
                    .get(*name)
                    .is_none_or(|h| self.hosts.get(*name) != Some(h))
            })
            .cloned()
            .collect();
        for name in &gone {
            if let Some(task) = self.tasks.remove(name) {
                task.abort();
            }
            self.resets.remove(name);
            self.hosts.remove(name);
            table(&self.links).remove(name);
        }
        let fresh: BTreeMap<String, Host> = wanted
            .into_iter()
            .filter(|(name, _)| !self.hosts.contains_key(name))
            .collect();
        let attempts = fresh.iter().map(|(name, host)| {
            let env = env.clone();
            async move {
                let result = DockerHost::connect_host(name, host, base_dir, &*env).await;
                (name.clone(), result)
            }
        });
        let mut first = BTreeMap::new();
        for (name, result) in join_all(attempts).await {
            let link = match result {
                Ok(connection) => {
                    first.insert(name.clone(), connection.clone());
                    Link::Up(connection)
                }
                Err(e) => {
                    tracing::warn!("{e}; retrying in the background");
                    Link::Down(e.to_string())
                }
            };
            table(&self.links).insert(name, link);
        }
        for (name, host) in &fresh {
            let (reset, resets_rx) = tokio::sync::watch::channel(0u64);
            self.resets.insert(name.clone(), reset);
            let keeper = Keeper {
                name: name.clone(),
                host: host.clone(),
                base_dir: base_dir.to_path_buf(),
                env: env.clone(),
                fleet: spec.name.clone(),
                links: Arc::clone(&self.links),
                resets: resets_rx,
                tx: tx.clone(),
                backoff: BACKOFF,
            };
            let task = tokio::spawn(keeper.run(first.remove(name)));
            self.tasks.insert(name.clone(), task);
        }
        let connected = fresh.keys().cloned().collect();
        self.hosts.extend(fresh);
        connected
    }

    /// Whether these links were made for `spec`'s hosts (same names and endpoints).
    pub(super) fn serve(&self, spec: &Spec) -> bool {
        self.fleet == spec.name && self.hosts == spec.effective_hosts()
    }

    /// The hosts that are up, with their connections, and those that are down, with why: from
    /// one reading of the table.
    pub(super) fn split(&self) -> (BTreeMap<String, DockerHost>, BTreeMap<String, String>) {
        let (mut up, mut down) = (BTreeMap::new(), BTreeMap::new());
        for (name, link) in self.snapshot() {
            match link {
                Link::Up(connection) => up.insert(name, connection).map(|_| ()),
                Link::Down(why) => down.insert(name, why).map(|_| ()),
            };
        }
        (up, down)
    }

    /// The hosts that are down, with why.
    pub(super) fn down(&self) -> BTreeMap<String, String> {
        self.split().1
    }

    fn snapshot(&self) -> BTreeMap<String, Link> {
        table(&self.links).clone()
    }

    /// The loop saw `host` fail: it is down until its task connects again.
    pub(super) fn mark_down(&self, host: &str, why: String) {
        table(&self.links).insert(host.to_string(), Link::Down(why));
        if let Some(reset) = self.resets.get(host) {
            reset.send_modify(|n| *n += 1);
        }
    }
}

impl Drop for HostLinks {
    fn drop(&mut self) {
        for task in self.tasks.values() {
            task.abort();
        }
    }
}

/// The task of one host.
struct Keeper {
    name: String,
    host: Host,
    base_dir: PathBuf,
    env: Env,
    fleet: String,
    links: Arc<Mutex<BTreeMap<String, Link>>>,
    resets: tokio::sync::watch::Receiver<u64>,
    tx: UnboundedSender<Trigger>,
    backoff: Backoff,
}

impl Keeper {
    /// Connects (unless `first` is a connection already), follows events until the stream ends
    /// or the loop marks the host down, and starts again; until the loop's channel closes.
    async fn run(mut self, mut first: Option<DockerHost>) {
        let mut backoff = self.backoff.min;
        loop {
            let connection = match first.take() {
                Some(connection) => connection,
                None => match self.connect().await {
                    Some(connection) => connection,
                    None => {
                        if self.tx.is_closed() {
                            return;
                        }
                        tokio::time::sleep(backoff).await;
                        backoff = self.backoff.grown(backoff);
                        continue;
                    }
                },
            };
            // Resets raised before this connection was made are about an older one.
            self.resets.borrow_and_update();
            let connected = Instant::now();
            tokio::select! {
                _ = follow_events(&connection, &self.fleet, &self.tx) => {
                    tracing::warn!("host `{}`: lost Docker's event stream; reconnecting", self.name);
                    self.set(Link::Down(format!(
                        "host `{}`: lost the Docker engine's event stream at {}",
                        self.name, connection.endpoint
                    )));
                    let _ = self.tx.send(Trigger::Host { host: self.name.clone(), up: false });
                }
                _ = self.resets.changed() => {
                    tracing::info!("host `{}`: reconnecting", self.name);
                }
            }
            drop(connection);
            if self.tx.is_closed() {
                return;
            }
            let wait = self.backoff.after(backoff, connected.elapsed());
            tokio::time::sleep(wait).await;
            backoff = self.backoff.grown(wait);
        }
    }

    /// One attempt; on success the host is up and the loop is told.
    async fn connect(&mut self) -> Option<DockerHost> {
        match DockerHost::connect_host(&self.name, &self.host, &self.base_dir, &*self.env).await {
            Ok(connection) => {
                tracing::info!("host `{}`: connected again", self.name);
                self.set(Link::Up(connection.clone()));
                let _ = self.tx.send(Trigger::Host {
                    host: self.name.clone(),
                    up: true,
                });
                Some(connection)
            }
            Err(e) => {
                let why = e.to_string();
                let changed = !matches!(
                    table(&self.links).get(&self.name),
                    Some(Link::Down(old)) if *old == why
                );
                if changed {
                    tracing::warn!("{why}; retrying in the background");
                }
                self.set(Link::Down(why));
                None
            }
        }
    }

    fn set(&self, link: Link) {
        table(&self.links).insert(self.name.clone(), link);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_wait_grows_while_a_host_fails_right_after_connecting() {
        let mut backoff = MIN_BACKOFF;
        let mut waits = Vec::new();
        for _ in 0..5 {
            let wait = BACKOFF.after(backoff, Duration::from_millis(50));
            waits.push(wait.as_millis());
            backoff = BACKOFF.grown(wait);
        }
        assert_eq!(waits, [500, 1000, 2000, 4000, 8000]);
        // A connection that lasted starts the waits over.
        assert_eq!(BACKOFF.after(backoff, STABLE), MIN_BACKOFF);
    }

    /// An engine on a Unix socket that answers `GET /version` and ends every event stream at
    /// once, as an engine that accepts and drops does; it sends the time of each stream opened.
    async fn dropping_engine(
        listener: tokio::net::UnixListener,
        streams: UnboundedSender<Instant>,
    ) {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        while let Ok((mut stream, _)) = listener.accept().await {
            let streams = streams.clone();
            tokio::spawn(async move {
                let mut head = Vec::new();
                let mut buf = [0u8; 1024];
                while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                    match stream.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => head.extend_from_slice(&buf[..n]),
                    }
                }
                let line = String::from_utf8_lossy(&head)
                    .lines()
                    .next()
                    .unwrap_or_default()
                    .to_string();
                let body = if line.contains("/events") {
                    let _ = streams.send(Instant::now());
                    String::new()
                } else {
                    r#"{"ApiVersion":"1.41","MinAPIVersion":"1.12","Version":"20.10.24"}"#
                        .to_string()
                };
                let answer = format!(
                    "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = stream.write_all(answer.as_bytes()).await;
            });
        }
    }

    #[tokio::test]
    async fn the_task_of_a_host_that_drops_its_event_stream_reconnects_ever_later_up_to_the_cap() {
        let dir = tempfile::tempdir().expect("temporary directory");
        let socket = dir.path().join("engine.sock");
        let listener = tokio::net::UnixListener::bind(&socket).expect("bind");
        let (streams_tx, mut streams) = tokio::sync::mpsc::unbounded_channel();
        let engine = tokio::spawn(dropping_engine(listener, streams_tx));
        let spec = crate::plan::tests::spec(&format!(
            "version: 1\nname: zq\ngithub:\n  repo: acme/zq\nhosts:\n  a:\n    docker: unix://{}\n    gpus: none\npools:\n  p: {{ count: 0, image: r:1 }}\n",
            socket.display()
        ));
        let (tx, _rx) = tokio::sync::mpsc::unbounded_channel();
        let (_reset, resets) = tokio::sync::watch::channel(0u64);
        let min = Duration::from_millis(50);
        let max = Duration::from_millis(400);
        let keeper = Keeper {
            name: "a".into(),
            host: spec.effective_hosts()["a"].clone(),
            base_dir: dir.path().to_path_buf(),
            env: Arc::new(|_: &str| None),
            fleet: "zq".into(),
            links: Arc::new(Mutex::new(BTreeMap::new())),
            resets,
            tx,
            backoff: Backoff { min, max },
        };
        let task = tokio::spawn(keeper.run(None));
        let mut opened = Vec::new();
        while opened.len() < 8 {
            let next = tokio::time::timeout(Duration::from_secs(20), streams.recv()).await;
            opened.push(next.expect("the task reconnects").expect("the engine runs"));
        }
        task.abort();
        engine.abort();
        let intervals: Vec<Duration> = opened.windows(2).map(|w| w[1] - w[0]).collect();
        // 50, 100, 200, 400 ms, then 400 ms each time: never less than the wait, and the
        // cap holds (doubling on would reach 6.4 s by the last).
        let waits = [50u64, 100, 200, 400, 400, 400, 400].map(Duration::from_millis);
        for (i, (interval, wait)) in intervals.iter().zip(waits).enumerate() {
            assert!(*interval >= wait, "interval {i}: {intervals:?}");
        }
        assert!(
            intervals[3] > intervals[0] * 4,
            "the waits grow: {intervals:?}"
        );
        assert!(
            intervals[4..].iter().all(|i| *i < max * 4),
            "the waits stop at the cap: {intervals:?}"
        );
    }

    fn two_hosts(b_gpus: &str) -> Spec {
        crate::plan::tests::spec(&format!(
            "version: 1\nname: zq\ngithub:\n  repo: acme/zq\nhosts:\n  a:\n    docker: unix:///var/run/docker.sock\n    gpus: none\n  b:\n    docker: unix:///var/run/docker.sock\n    gpus: {b_gpus}\npools:\n  p: {{ count: 0, image: r:1, host: [a, b] }}\n"
        ))
    }

    #[tokio::test]
    async fn an_unchanged_host_keeps_its_connection_when_another_changes() {
        let (tx, _rx) = tokio::sync::mpsc::unbounded_channel();
        let env: Env = Arc::new(|_: &str| None);
        let base = Path::new(".");
        let mut links = HostLinks::start(&two_hosts("none"), base, env.clone(), tx.clone()).await;
        assert_eq!(
            links.split().0.len(),
            2,
            "both engines answer: {:?}",
            links.down()
        );
        let again = links
            .update(&two_hosts("none"), base, env.clone(), tx.clone())
            .await;
        assert!(again.is_empty(), "nothing changed: {again:?}");
        let changed = links
            .update(&two_hosts("[GPU-b-0]"), base, env.clone(), tx.clone())
            .await;
        assert_eq!(changed, ["b"], "only b's entry changed");
        assert_eq!(links.split().0.len(), 2);
        assert!(links.serve(&two_hosts("[GPU-b-0]")));
    }

    #[test]
    fn a_poisoned_host_table_still_lists_its_hosts() {
        let links = Arc::new(Mutex::new(BTreeMap::from([(
            "b".to_string(),
            Link::Down("not answering".into()),
        )])));
        let poisoner = Arc::clone(&links);
        let _ = std::thread::spawn(move || {
            let _held = poisoner.lock().expect("lock");
            panic!("a task panics while holding the host table");
        })
        .join();
        assert!(links.is_poisoned());
        let host_links = HostLinks {
            links,
            resets: BTreeMap::new(),
            tasks: BTreeMap::new(),
            hosts: BTreeMap::new(),
            fleet: "zq".into(),
        };
        let (up, down) = host_links.split();
        assert!(up.is_empty());
        assert_eq!(down.keys().collect::<Vec<_>>(), ["b"]);
        host_links.mark_down("c", "gone".into());
        assert_eq!(host_links.down().len(), 2);
    }
}
