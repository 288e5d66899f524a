//! Extra Docker engines on this machine, for tests of hosts other than the main engine: over a
//! Unix socket, over TLS on 127.0.0.1 with certificates made by `openssl`, and through an
//! `sshd` of the test's own on 127.0.0.1 whose sessions reach one of these engines.
//!
//! Everything lives in one run directory, `$TMPDIR/fleet-engines-<pid>-<nanos>`: each engine's
//! `--config-file` (holding `{}`, so that /etc/docker/daemon.json does not apply), socket,
//! data root, exec root, pid file and log; certificates; sshd's keys and config. Dropping an
//! [`Engine`] or [`Sshd`] stops it; dropping the last handle on the [`RunDir`] then kills
//! whatever process still names the directory, unmounts what is mounted under it and removes it,
//! also when a test fails. A run directory left by a killed test process (its pid is gone) is
//! swept the same way by the next [`RunDir::new`].
//!
//! SSH client side: fleet runs the system's `ssh`, which reads `~/.ssh/config` from the passwd
//! home directory whatever `$HOME` says. The tests do not touch it: they pass their own config
//! file through `fleet::docker::endpoint::ConnectOptions::ssh_config` (`ssh -F`), naming the test's
//! identity and known_hosts file. With `-F`, ssh reads neither `~/.ssh/config` nor
//! /etc/ssh/ssh_config, and does not create `~/.ssh`.
//!
//! These need root (dockerd), `dockerd` with the main engine's storage driver, `openssl`,
//! `ssh-keygen`, `/usr/sbin/sshd` and `ssh` (Debian: docker.io, openssl, openssh-server,
//! openssh-client); `.ci/run` installs them.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use fleet::docker::endpoint::TlsFiles;

/// How long an engine or sshd may take to answer after it starts (a loaded 2-core machine).
const STARTUP_LIMIT: Duration = Duration::from_secs(120);
/// How long dockerd may take to stop its containers and exit after SIGTERM.
const STOP_LIMIT: Duration = Duration::from_secs(30);
const RUN_DIR_PREFIX: &str = "fleet-engines-";

/// The directory of one test's engines; removed (with all it holds) when the last handle goes.
pub struct RunDir {
    path: PathBuf,
    id: String,
}

impl RunDir {
    /// Sweeps run directories of dead test processes, then makes a fresh one.
    pub fn new() -> Arc<RunDir> {
        sweep_stale_run_dirs();
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        let pid = std::process::id();
        let path = std::env::temp_dir().join(format!("{RUN_DIR_PREFIX}{pid}-{nanos}"));
        std::fs::create_dir(&path).expect("create the engines' run directory");
        Arc::new(RunDir {
            path,
            id: format!("e{pid:x}-{nanos}"),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The run id: label value of what tests create on these engines, part of container names.
    pub fn id(&self) -> &str {
        &self.id
    }

    fn subdir(&self, name: &str) -> PathBuf {
        let dir = self.path.join(name);
        std::fs::create_dir_all(&dir).expect("create a directory in the run directory");
        dir
    }
}

impl Drop for RunDir {
    fn drop(&mut self) {
        if let Err(problem) = remove_run_dir(&self.path) {
            if std::thread::panicking() {
                eprintln!("{problem}");
            } else {
                panic!("{problem}");
            }
        }
    }
}

/// Stops every process that names `dir`, unmounts everything under it and removes it.
fn remove_run_dir(dir: &Path) -> Result<(), String> {
    let dir_text = dir.to_string_lossy().into_owned();
    stop_engines_left_in(dir);
    let control_dirs = ssh_control_dirs(&processes_naming(&dir_text));
    for pid in processes_naming(&dir_text) {
        let _ = Command::new("kill")
            .args(["-KILL", &pid.to_string()])
            .status();
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    while !processes_naming(&dir_text).is_empty() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
    }
    for mount in mounts_under(&dir_text) {
        let _ = Command::new("umount").args(["-l", &mount]).status();
    }
    if !mounts_under(&dir_text).is_empty() {
        return Err(format!("mounts remain under {dir_text}"));
    }
    for control_dir in control_dirs {
        let _ = std::fs::remove_dir_all(control_dir);
    }
    std::fs::remove_dir_all(dir).map_err(|e| format!("cannot remove {dir_text}: {e}"))
}

/// Engines still running in `dir` (their test process was killed): their containers are
/// removed and they are stopped as [`Engine::stop`] does, so that no container process is
/// orphaned when the rest is killed.
fn stop_engines_left_in(dir: &Path) {
    let dir_text = dir.to_string_lossy().into_owned();
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for engine_dir in entries.flatten().map(|e| e.path()) {
        let socket = engine_dir.join("docker.sock");
        if ping_unix(&socket) {
            remove_all_containers(&socket);
        }
        let pid = std::fs::read_to_string(engine_dir.join("docker.pid")).unwrap_or_default();
        let Ok(pid) = pid.trim().parse::<u32>() else {
            continue;
        };
        if !processes_naming(&dir_text).contains(&pid) {
            continue;
        }
        let _ = Command::new("kill")
            .args(["-TERM", &pid.to_string()])
            .status();
        let deadline = Instant::now() + STOP_LIMIT;
        while Path::new(&format!("/proc/{pid}")).exists() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

/// `docker rm -f -v` of every container on the engine at `socket`.
fn remove_all_containers(socket: &Path) {
    let docker = |args: &[&str]| {
        Command::new("docker")
            .arg("--host")
            .arg(format!("unix://{}", socket.display()))
            .args(args)
            .output()
    };
    let Ok(ids) = docker(&["ps", "-aq"]) else {
        return;
    };
    for id in String::from_utf8_lossy(&ids.stdout).split_whitespace() {
        let _ = docker(&["rm", "-f", "-v", id]);
    }
}

/// The control directories (`-S <dir>/master`) of SSH masters among `pids`: a master killed
/// here cannot remove its own, and the test process that made it is gone.
fn ssh_control_dirs(pids: &[u32]) -> Vec<PathBuf> {
    let mut dirs = Vec::new();
    for pid in pids {
        let raw = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
        let args: Vec<String> = raw
            .split(|b| *b == 0)
            .map(|a| String::from_utf8_lossy(a).into_owned())
            .collect();
        let socket = args
            .windows(2)
            .find(|w| w[0] == "-S")
            .map(|w| PathBuf::from(&w[1]));
        let dir = socket.as_deref().and_then(Path::parent);
        let is_openssh_dir = dir
            .and_then(Path::file_name)
            .is_some_and(|n| n.to_string_lossy().starts_with(".ssh-connection"));
        if let (Some(dir), true) = (dir, is_openssh_dir) {
            dirs.push(dir.to_path_buf());
        }
    }
    dirs
}

/// Pids (not ours) whose command line contains `needle`: a run directory's path is unique,
/// so this finds exactly the processes of that run.
pub fn processes_naming(needle: &str) -> Vec<u32> {
    let own = std::process::id();
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| *pid != own)
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/cmdline"))
                .map(|raw| {
                    String::from_utf8_lossy(&raw)
                        .replace('\0', " ")
                        .contains(needle)
                })
                .unwrap_or(false)
        })
        .collect()
}

/// Mount points under `dir`, deepest first (fuse-overlayfs layers, dockerd's private bind).
fn mounts_under(dir: &str) -> Vec<String> {
    let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let mut mounts: Vec<String> = info
        .lines()
        .filter_map(|line| line.split(' ').nth(4))
        .map(unescape_mount_path)
        .filter(|mount| mount == dir || mount.starts_with(&format!("{dir}/")))
        .collect();
    mounts.sort_by_key(|m| std::cmp::Reverse(m.len()));
    mounts
}

/// mountinfo writes space, tab, newline and backslash as `\ooo`.
fn unescape_mount_path(raw: &str) -> String {
    let mut out = String::new();
    let mut rest = raw;
    while let Some(pos) = rest.find('\\') {
        out.push_str(&rest[..pos]);
        let code = rest
            .get(pos + 1..pos + 4)
            .and_then(|o| u8::from_str_radix(o, 8).ok());
        match code {
            Some(byte) => {
                out.push(byte as char);
                rest = &rest[pos + 4..];
            }
            None => {
                out.push('\\');
                rest = &rest[pos + 1..];
            }
        }
    }
    out.push_str(rest);
    out
}

/// Removes run directories whose test process is gone (it was killed before its Drop ran).
fn sweep_stale_run_dirs() {
    let Ok(entries) = std::fs::read_dir(std::env::temp_dir()) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(pid) = name
            .strip_prefix(RUN_DIR_PREFIX)
            .and_then(|rest| rest.split('-').next())
            .and_then(|pid| pid.parse::<u32>().ok())
        else {
            continue;
        };
        if Path::new(&format!("/proc/{pid}")).exists() {
            continue;
        }
        if let Err(problem) = remove_run_dir(&entry.path()) {
            eprintln!("stale engine directory: {problem}");
        }
    }
}

/// A port on 127.0.0.1 that was free a moment ago.
pub fn free_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
    listener.local_addr().expect("local address").port()
}

fn run(program: &str, args: &[&str]) -> Output {
    Command::new(program)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {program}: {e} (is it installed?)"))
}

fn run_ok(program: &str, args: &[&str]) -> String {
    let out = run(program, args);
    assert!(
        out.status.success(),
        "{program} {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

fn log_tail(path: &Path, lines: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// The main engine's storage driver (here fuse-overlayfs): an extra engine must use the same.
pub fn main_storage_driver() -> &'static str {
    static DRIVER: OnceLock<String> = OnceLock::new();
    DRIVER.get_or_init(|| run_ok("docker", &["info", "--format", "{{.Driver}}"]))
}

/// Certificates made with openssl for one TLS engine, and some that must be refused.
#[derive(Debug, Clone)]
pub struct Certificates {
    pub ca: PathBuf,
    pub server_cert: PathBuf,
    pub server_key: PathBuf,
    pub client_cert: PathBuf,
    /// Mode 0600, as fleet requires.
    pub client_key: PathBuf,
    /// A CA that signed nothing the engine has: the client must refuse the engine with it.
    pub wrong_ca: PathBuf,
    /// A client certificate and key signed by `wrong_ca`: the engine must refuse them.
    pub stranger_cert: PathBuf,
    pub stranger_key: PathBuf,
}

impl Certificates {
    pub fn make(dir: &Path) -> Certificates {
        let path = |name: &str| dir.join(name);
        make_ca(dir, "ca", "fleet test CA");
        make_ca(dir, "wrong-ca", "fleet test wrong CA");
        let server_ext = "subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth\n\
                          basicConstraints=critical,CA:FALSE\nkeyUsage=critical,digitalSignature\n";
        let client_ext = "extendedKeyUsage=clientAuth\n\
                          basicConstraints=critical,CA:FALSE\nkeyUsage=critical,digitalSignature\n";
        sign(dir, "server", "localhost", "ca", server_ext, 2);
        sign(dir, "client", "fleet-test-client", "ca", client_ext, 3);
        sign(
            dir,
            "stranger",
            "fleet-test-stranger",
            "wrong-ca",
            client_ext,
            4,
        );
        for key in ["client-key.pem", "stranger-key.pem"] {
            std::fs::set_permissions(path(key), std::fs::Permissions::from_mode(0o600))
                .expect("chmod 0600 a client key");
        }
        Certificates {
            ca: path("ca.pem"),
            server_cert: path("server.pem"),
            server_key: path("server-key.pem"),
            client_cert: path("client.pem"),
            client_key: path("client-key.pem"),
            wrong_ca: path("wrong-ca.pem"),
            stranger_cert: path("stranger.pem"),
            stranger_key: path("stranger-key.pem"),
        }
    }

    /// What fleet is given for a TLS host: this CA, the client certificate and key.
    pub fn client_files(&self) -> TlsFiles {
        TlsFiles {
            ca: self.ca.clone(),
            cert: self.client_cert.clone(),
            key: self.client_key.clone(),
        }
    }
}

fn make_ca(dir: &Path, name: &str, common_name: &str) {
    let dir = dir.to_string_lossy();
    run_ok(
        "openssl",
        &[
            "req",
            "-x509",
            "-new",
            "-nodes",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-days",
            "2",
            "-keyout",
            &format!("{dir}/{name}-key.pem"),
            "-out",
            &format!("{dir}/{name}.pem"),
            "-subj",
            &format!("/CN={common_name}"),
        ],
    );
}

/// Makes `<name>-key.pem` and `<name>.pem`, signed by the CA `<ca>.pem`.
fn sign(dir: &Path, name: &str, common_name: &str, ca: &str, extensions: &str, serial: u32) {
    let ext = dir.join(format!("{name}.ext"));
    std::fs::write(&ext, extensions).expect("write an openssl extension file");
    let dir = dir.to_string_lossy();
    let csr = format!("{dir}/{name}.csr");
    run_ok(
        "openssl",
        &[
            "req",
            "-new",
            "-nodes",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-keyout",
            &format!("{dir}/{name}-key.pem"),
            "-out",
            &csr,
            "-subj",
            &format!("/CN={common_name}"),
        ],
    );
    run_ok(
        "openssl",
        &[
            "x509",
            "-req",
            "-in",
            &csr,
            "-days",
            "2",
            "-CA",
            &format!("{dir}/{ca}.pem"),
            "-CAkey",
            &format!("{dir}/{ca}-key.pem"),
            "-set_serial",
            &serial.to_string(),
            "-extfile",
            &ext.to_string_lossy(),
            "-out",
            &format!("{dir}/{name}.pem"),
        ],
    );
}

/// What an extra engine listens on besides its own Unix socket (which the harness uses).
#[derive(Debug, Clone)]
pub enum Listen {
    /// Only the Unix socket.
    Unix,
    /// Also plain HTTP on 127.0.0.1:`port`, no TLS: for `insecure` loopback endpoints.
    PlainLoopback { port: u16 },
    /// Also TLS on 127.0.0.1:`port`, requiring a client certificate signed by `certs.ca`.
    Tls { port: u16, certs: Certificates },
}

/// One extra dockerd, stopped when dropped.
pub struct Engine {
    run: Arc<RunDir>,
    dir: PathBuf,
    listen: Listen,
    /// A folder put first on dockerd's PATH (a stand-in `nvidia-container-runtime-hook`).
    path_first: Option<PathBuf>,
    child: Option<Child>,
    /// Start to the first answered ping, for the last start.
    pub startup: Duration,
}

impl Engine {
    /// Starts `dockerd` in `run`'s directory `<name>/` and waits until it answers.
    pub fn start(run: &Arc<RunDir>, name: &str, listen: Listen) -> Engine {
        Engine::start_with_path(run, name, listen, None)
    }

    /// [`Engine::start`] with `path_first` first on dockerd's PATH: dockerd registers the
    /// `nvidia` device driver when it finds `nvidia-container-runtime-hook` there.
    pub fn start_with_path(
        run: &Arc<RunDir>,
        name: &str,
        listen: Listen,
        path_first: Option<PathBuf>,
    ) -> Engine {
        let dir = run.subdir(name);
        std::fs::write(dir.join("daemon.json"), "{}").expect("write the engine's config file");
        let mut engine = Engine {
            run: Arc::clone(run),
            dir,
            listen,
            path_first,
            child: None,
            startup: Duration::ZERO,
        };
        engine.start_again();
        engine
    }

    pub fn socket(&self) -> PathBuf {
        self.dir.join("docker.sock")
    }

    /// `unix:///.../docker.sock`: the endpoint of this engine's own socket.
    pub fn unix_url(&self) -> String {
        format!("unix://{}", self.socket().display())
    }

    /// `tcp://127.0.0.1:<port>` when the engine listens on TCP.
    pub fn tcp_url(&self) -> Option<String> {
        match &self.listen {
            Listen::Unix => None,
            Listen::PlainLoopback { port } | Listen::Tls { port, .. } => {
                Some(format!("tcp://127.0.0.1:{port}"))
            }
        }
    }

    pub fn run_dir(&self) -> &Arc<RunDir> {
        &self.run
    }

    fn arguments(&self) -> Vec<String> {
        let dir = self.dir.to_string_lossy();
        let mut args: Vec<String> = vec![
            format!("--config-file={dir}/daemon.json"),
            format!("--host=unix://{dir}/docker.sock"),
            format!("--data-root={dir}/data"),
            format!("--exec-root={dir}/exec"),
            format!("--pidfile={dir}/docker.pid"),
            "--bridge=none".into(),
            "--iptables=false".into(),
            "--ip-masq=false".into(),
            format!("--storage-driver={}", main_storage_driver()),
        ];
        match &self.listen {
            Listen::Unix => {}
            Listen::PlainLoopback { port } => args.push(format!("--host=tcp://127.0.0.1:{port}")),
            Listen::Tls { port, certs } => args.extend([
                format!("--host=tcp://127.0.0.1:{port}"),
                "--tlsverify".into(),
                format!("--tlscacert={}", certs.ca.display()),
                format!("--tlscert={}", certs.server_cert.display()),
                format!("--tlskey={}", certs.server_key.display()),
            ]),
        }
        args
    }

    /// Starts dockerd (again, after [`Engine::stop`]) on the same directories.
    pub fn start_again(&mut self) {
        assert!(self.child.is_none(), "the engine is already running");
        let log_path = self.dir.join("dockerd.log");
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)
            .expect("open the engine's log");
        let started = Instant::now();
        let mut command = Command::new("dockerd");
        if let Some(first) = &self.path_first {
            let path = std::env::var("PATH").unwrap_or_default();
            command.env("PATH", format!("{}:{path}", first.display()));
        }
        let mut child = command
            .args(self.arguments())
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("clone the log handle"))
            .stderr(log)
            .spawn()
            .expect("start dockerd (is docker.io installed, and are we root?)");
        let ready = wait_until(&mut child, || ping_unix(&self.socket()));
        self.child = Some(child);
        if let Err(why) = ready {
            let tail = log_tail(&log_path, 40);
            self.stop();
            panic!(
                "the extra engine in {} {why}; its log ends:\n{tail}",
                self.dir.display()
            );
        }
        self.startup = started.elapsed();
    }

    /// Freezes dockerd (SIGSTOP): it accepts connections but answers nothing, as an engine
    /// cut off by the network or hung does, while its containers keep running.
    pub fn pause(&self) {
        self.signal("-STOP");
    }

    /// Lets a paused dockerd go on (SIGCONT).
    pub fn resume(&self) {
        self.signal("-CONT");
    }

    fn signal(&self, signal: &str) {
        if let Some(child) = &self.child {
            let status = Command::new("kill")
                .args([signal, &child.id().to_string()])
                .status()
                .expect("run kill");
            assert!(status.success(), "kill {signal} dockerd");
        }
    }

    /// Removes its containers, then SIGTERM (SIGKILL after 30 s) and waits for the exit.
    pub fn stop(&mut self) {
        // A paused engine neither removes containers nor stops.
        self.resume();
        let Some(mut child) = self.child.take() else {
            return;
        };
        if matches!(child.try_wait(), Ok(None)) {
            remove_all_containers(&self.socket());
            let _ = Command::new("kill")
                .args(["-TERM", &child.id().to_string()])
                .status();
        }
        let deadline = Instant::now() + STOP_LIMIT;
        while matches!(child.try_wait(), Ok(None)) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = child.kill();
        let _ = child.wait();
    }

    pub fn is_running(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }

    /// The docker CLI on this engine's Unix socket.
    pub fn docker(&self, args: &[&str]) -> Output {
        Command::new("docker")
            .arg("--host")
            .arg(self.unix_url())
            .args(args)
            .output()
            .expect("run the docker CLI")
    }

    pub fn docker_ok(&self, args: &[&str]) -> String {
        let out = self.docker(args);
        assert!(
            out.status.success(),
            "docker {args:?} on {} failed: {}",
            self.unix_url(),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }

    /// `docker save IMAGE | docker -H <this engine> load`; returns how long it took.
    pub fn load_image(&self, image: &str) -> Duration {
        let started = Instant::now();
        let mut save = Command::new("docker")
            .args(["save", image])
            .stdout(Stdio::piped())
            .spawn()
            .expect("run docker save");
        let saved = save.stdout.take().expect("docker save's stdout");
        let load = Command::new("docker")
            .arg("--host")
            .arg(self.unix_url())
            .args(["load", "--quiet"])
            .stdin(Stdio::from(saved))
            .output()
            .expect("run docker load");
        let save_status = save.wait().expect("wait for docker save");
        assert!(
            save_status.success() && load.status.success(),
            "loading {image} into {} failed: {}",
            self.unix_url(),
            String::from_utf8_lossy(&load.stderr)
        );
        started.elapsed()
    }

    /// Name, state and labels of every container on this engine, to compare before and after.
    pub fn containers(&self) -> String {
        self.docker_ok(&[
            "ps",
            "-a",
            "--no-trunc",
            "--format",
            "{{.ID}} {{.Names}} {{.State}} {{.Labels}}",
        ])
    }
}

impl Drop for Engine {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Polls `ready` every 100 ms until it holds, the process exits, or [`STARTUP_LIMIT`] passes.
fn wait_until(child: &mut Child, mut ready: impl FnMut() -> bool) -> Result<(), String> {
    let deadline = Instant::now() + STARTUP_LIMIT;
    loop {
        if ready() {
            return Ok(());
        }
        if let Ok(Some(status)) = child.try_wait() {
            return Err(format!("exited with {status} before it answered"));
        }
        if Instant::now() > deadline {
            return Err(format!(
                "did not answer within {}s",
                STARTUP_LIMIT.as_secs()
            ));
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// `GET /_ping` on a Unix socket, by hand: cheaper than the docker CLI in a polling loop.
fn ping_unix(socket: &Path) -> bool {
    let Ok(mut stream) = UnixStream::connect(socket) else {
        return false;
    };
    let _ = stream.set_read_timeout(Some(Duration::from_secs(5)));
    if stream
        .write_all(b"GET /_ping HTTP/1.0\r\nHost: docker\r\n\r\n")
        .is_err()
    {
        return false;
    }
    let mut answer = String::new();
    let _ = stream.read_to_string(&mut answer);
    answer.starts_with("HTTP/1.0 200") || answer.starts_with("HTTP/1.1 200")
}

/// An sshd on 127.0.0.1 with its own host key and authorized key, whose sessions have
/// `DOCKER_HOST` set to one engine's socket; stopped when dropped.
pub struct Sshd {
    _run: Arc<RunDir>,
    dir: PathBuf,
    child: Option<Child>,
    pub port: u16,
    pub user: String,
    /// The client side: `ssh -F` this file (the test's identity and known_hosts).
    pub client_config: PathBuf,
    /// The same, with a known_hosts entry holding another key for this sshd.
    pub wrong_host_key_config: PathBuf,
    pub startup: Duration,
}

impl Sshd {
    /// Starts `/usr/sbin/sshd -D -e` in `run`'s directory `sshd/`, whose sessions reach the
    /// engine at `docker_host` (`unix:///...`).
    pub fn start(run: &Arc<RunDir>, docker_host: &str) -> Sshd {
        let dir = run.subdir("sshd");
        let port = free_port();
        let user = run_ok("id", &["-un"]);
        for key in ["host_key", "client_key", "other_host_key"] {
            let path = dir.join(key).to_string_lossy().into_owned();
            run_ok(
                "ssh-keygen",
                &[
                    "-q",
                    "-t",
                    "ed25519",
                    "-N",
                    "",
                    "-C",
                    "fleet-test",
                    "-f",
                    &path,
                ],
            );
        }
        let public = |key: &str| {
            std::fs::read_to_string(dir.join(format!("{key}.pub")))
                .expect("read a public key")
                .trim()
                .to_string()
        };
        std::fs::write(dir.join("authorized_keys"), public("client_key") + "\n")
            .expect("write authorized_keys");
        let known = |key: &str| format!("[127.0.0.1]:{port} {}\n", public(key));
        std::fs::write(dir.join("known_hosts"), known("host_key")).expect("write known_hosts");
        std::fs::write(dir.join("wrong_known_hosts"), known("other_host_key"))
            .expect("write the wrong known_hosts");
        write_sshd_config(&dir, port, &user, docker_host);
        let client_config = write_client_config(&dir, "ssh_config", "known_hosts");
        let wrong_host_key_config =
            write_client_config(&dir, "ssh_config_wrong_host_key", "wrong_known_hosts");
        let mut sshd = Sshd {
            _run: Arc::clone(run),
            dir,
            child: None,
            port,
            user,
            client_config,
            wrong_host_key_config,
            startup: Duration::ZERO,
        };
        sshd.spawn();
        sshd
    }

    fn spawn(&mut self) {
        // sshd's privilege separation directory; Debian's service unit makes it at boot.
        std::fs::create_dir_all("/run/sshd").expect("create /run/sshd");
        let log_path = self.dir.join("sshd.log");
        let log = std::fs::File::create(&log_path).expect("create sshd's log");
        let started = Instant::now();
        let mut child = Command::new("/usr/sbin/sshd")
            .arg("-D")
            .arg("-e")
            .arg("-f")
            .arg(self.dir.join("sshd_config"))
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("clone the log handle"))
            .stderr(log)
            .spawn()
            .expect("start /usr/sbin/sshd (is openssh-server installed?)");
        let port = self.port;
        let ready = wait_until(&mut child, || ssh_banner(port));
        self.child = Some(child);
        if let Err(why) = ready {
            let tail = log_tail(&log_path, 40);
            self.stop();
            panic!("the test's sshd {why}; its log ends:\n{tail}");
        }
        self.startup = started.elapsed();
    }

    /// `ssh://<user>@127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("ssh://{}@127.0.0.1:{}", self.user, self.port)
    }

    pub fn known_hosts(&self) -> PathBuf {
        self.dir.join("known_hosts")
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("sshd.log")).unwrap_or_default()
    }

    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for Sshd {
    fn drop(&mut self) {
        self.stop();
    }
}

fn write_sshd_config(dir: &Path, port: u16, user: &str, docker_host: &str) {
    let d = dir.display();
    // StrictModes off: the run directory is under /tmp, which others can write to.
    let config = format!(
        "Port {port}\nListenAddress 127.0.0.1\nHostKey {d}/host_key\nPidFile {d}/sshd.pid\n\
         AuthorizedKeysFile {d}/authorized_keys\nAllowUsers {user}\nPubkeyAuthentication yes\n\
         PasswordAuthentication no\nKbdInteractiveAuthentication no\nPermitRootLogin prohibit-password\n\
         UsePAM no\nStrictModes no\nX11Forwarding no\nAllowTcpForwarding no\nAllowAgentForwarding no\n\
         PermitTTY no\nPrintMotd no\nLogLevel VERBOSE\nSetEnv DOCKER_HOST={docker_host}\n"
    );
    std::fs::write(dir.join("sshd_config"), config).expect("write sshd_config");
}

fn write_client_config(dir: &Path, name: &str, known_hosts: &str) -> PathBuf {
    let d = dir.display();
    let config = format!(
        "Host *\n  IdentityFile {d}/client_key\n  IdentitiesOnly yes\n  IdentityAgent none\n  \
         UserKnownHostsFile {d}/{known_hosts}\n  GlobalKnownHostsFile /dev/null\n  \
         StrictHostKeyChecking yes\n  UpdateHostKeys no\n  PasswordAuthentication no\n"
    );
    let path = dir.join(name);
    std::fs::write(&path, config).expect("write an ssh client config");
    path
}

/// Whether something on 127.0.0.1:`port` greets like an SSH server.
fn ssh_banner(port: u16) -> bool {
    let Ok(mut stream) = TcpStream::connect(("127.0.0.1", port)) else {
        return false;
    };
    let _ = stream.set_read_timeout(Some(Duration::from_secs(5)));
    let mut greeting = [0u8; 8];
    stream.read_exact(&mut greeting).is_ok() && &greeting == b"SSH-2.0-"
}
