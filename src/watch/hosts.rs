//! The hosts `fleet watch` keeps: one task per host connects (again and again, with backoff),
//! follows the engine's events of the fleet's containers, and says when the host comes up or
//! goes down. The loop observes the hosts that are up; a host that fails or does not answer
//! in time is marked down, its task drops the connection and reconnects, and meanwhile the
//! planner leaves that host alone (docs/watch.md, "A host that goes away").

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

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
    tasks: Vec<JoinHandle<()>>,
    /// The hosts of the spec these links were made for.
    hosts: BTreeMap<String, Host>,
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
        let hosts = spec.effective_hosts();
        let attempts = hosts.iter().map(|(name, host)| {
            let env = env.clone();
            async move {
                let result = DockerHost::connect_host(name, host, base_dir, &*env).await;
                (name.clone(), result)
            }
        });
        let mut links = BTreeMap::new();
        let mut first = BTreeMap::new();
        for (name, result) in join_all(attempts).await {
            match result {
                Ok(connection) => {
                    links.insert(name.clone(), Link::Up(connection.clone()));
                    first.insert(name, connection);
                }
                Err(e) => {
                    tracing::warn!("{e}; retrying in the background");
                    links.insert(name, Link::Down(e.to_string()));
                }
            }
        }
        let links = Arc::new(Mutex::new(links));
        let mut resets = BTreeMap::new();
        let mut tasks = Vec::new();
        for (name, host) in &hosts {
            let (reset, resets_rx) = tokio::sync::watch::channel(0u64);
            resets.insert(name.clone(), reset);
            let keeper = Keeper {
                name: name.clone(),
                host: host.clone(),
                base_dir: base_dir.to_path_buf(),
                env: env.clone(),
                fleet: spec.name.clone(),
                links: Arc::clone(&links),
                resets: resets_rx,
                tx: tx.clone(),
            };
            tasks.push(tokio::spawn(keeper.run(first.remove(name))));
        }
        HostLinks {
            links,
            resets,
            tasks,
            hosts,
        }
    }

    /// Whether these links were made for `spec`'s hosts (same names and endpoints).
    pub(super) fn serve(&self, spec: &Spec) -> bool {
        self.hosts == spec.effective_hosts()
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
        self.links.lock().map(|l| l.clone()).unwrap_or_default()
    }

    /// The loop saw `host` fail: it is down until its task connects again.
    pub(super) fn mark_down(&self, host: &str, why: String) {
        if let Ok(mut links) = self.links.lock() {
            links.insert(host.to_string(), Link::Down(why));
        }
        if let Some(reset) = self.resets.get(host) {
            reset.send_modify(|n| *n += 1);
        }
    }
}

impl Drop for HostLinks {
    fn drop(&mut self) {
        for task in &self.tasks {
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
                    Some(connection) => {
                        backoff = MIN_BACKOFF;
                        connection
                    }
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
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(MAX_BACKOFF);
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
                let changed = self.links.lock().is_ok_and(
                    |l| !matches!(l.get(&self.name), Some(Link::Down(old)) if *old == why),
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
        if let Ok(mut links) = self.links.lock() {
            links.insert(self.name.clone(), link);
        }
    }
}
