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

/// The wait before connecting again after a connection that lasted `lasted`.
fn wait_after(backoff: Duration, lasted: Duration) -> Duration {
    if lasted >= STABLE {
        MIN_BACKOFF
    } else {
        backoff
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
}

impl Keeper {
    /// Connects (unless `first` is a connection already), follows events until the stream ends
    /// or the loop marks the host down, and starts again; until the loop's channel closes.
    async fn run(mut self, mut first: Option<DockerHost>) {
        let mut backoff = MIN_BACKOFF;
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
                        backoff = (backoff * 2).min(MAX_BACKOFF);
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
            let wait = wait_after(backoff, connected.elapsed());
            tokio::time::sleep(wait).await;
            backoff = (wait * 2).min(MAX_BACKOFF);
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
            let wait = wait_after(backoff, Duration::from_millis(50));
            waits.push(wait.as_millis());
            backoff = (wait * 2).min(MAX_BACKOFF);
        }
        assert_eq!(waits, [500, 1000, 2000, 4000, 8000]);
        // A connection that lasted starts the waits over.
        assert_eq!(wait_after(backoff, STABLE), MIN_BACKOFF);
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
