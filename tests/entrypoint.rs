//! The reference runner image's entrypoint (`ci/runner/entrypoint.sh`), run for real on the
//! machine's Docker engine. Each test builds a small image `FROM` the project's busybox runner
//! image with the entrypoint, a `runner` user (uid 1001) that owns the runner and state
//! directories, and the stub `config.sh` and `run.sh` of `ci/runner/tests/`, which record how
//! (and as whom) they were called in a directory the test mounts at /records. The entrypoint
//! starts as root, as in the reference images. Containers run with `--init` (tini as PID 1, as
//! in the real image) and `--network none`. Everything a test makes (containers, volumes, its
//! image) carries the label `fleet-test.run=<run id>` and is removed when the test ends, failed
//! or not. The last test runs `fleet apply` with this image against the fake GitHub.
//!
//! The stubs play the runner's parts as the real ones behave where the entrypoint can tell:
//! `bin/Runner.Listener` exits with the real listener's codes, keeps a session per runner that
//! only a graceful stop deletes, and updates itself when allowed; `run.sh` and
//! `run-helper.sh.template` map its codes as actions/runner's scripts do (which is why the
//! entrypoint starts the listener itself).

mod common;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use common::{RUN_LABEL, World, docker, docker_ok};
use fleet::contract::container::{JIT_CONFIG_VAR, TOKEN_VAR, secret_file_archive};
use fleet::secret::Secret;

const ENTRYPOINT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/ci/runner/entrypoint.sh");
const STUBS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/ci/runner/tests");
/// The runner user of the test image.
const RUNNER_UID: &str = "1001";
/// The users of the test image, and the directories the runner user owns.
const IMAGE_SETUP: &str = "mkdir -p /etc /home/runner /runner /var/lib/fleet-runner /tmp \
 && echo 'root:x:0:0:root:/root:/bin/sh' > /etc/passwd \
 && echo 'runner:x:1001:1001:runner:/home/runner:/bin/sh' >> /etc/passwd \
 && printf 'root:x:0:\\nrunner:x:1001:\\n' > /etc/group \
 && chown 1001:1001 /home/runner /runner /var/lib/fleet-runner \
 && chmod 0700 /var/lib/fleet-runner && chmod 1777 /tmp";

/// Held while an image of these tests is built or removed. With the legacy builder, the tests'
/// images share cached intermediate images, and removing one test's image removes the
/// intermediates it no longer needs, possibly under another test's build ("failed to get
/// digest"); builds and removals therefore take turns.
static IMAGES: Mutex<()> = Mutex::new(());

fn images_lock() -> MutexGuard<'static, ()> {
    IMAGES.lock().unwrap_or_else(PoisonError::into_inner)
}

/// How long a stopped runner may take: the entrypoint forwards SIGTERM at once, so anything
/// near `docker stop`'s own timeout (30 s here) means the signal was lost.
const STOP_WITHIN: Duration = Duration::from_secs(5);

/// One test's image, containers, volumes and record directory; removed on drop.
struct Lab {
    run: String,
    image: String,
    dir: tempfile::TempDir,
}

impl Lab {
    fn new(test: &str) -> Lab {
        Lab::with_files(test, &[])
    }

    /// A lab whose image also holds `files` of this machine, at the same paths (the host's
    /// util-linux setpriv and the libraries it loads, say).
    fn with_files(test: &str, files: &[PathBuf]) -> Lab {
        let base = common::test_image();
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        let run = format!("ep-{test}-{:x}{nanos:x}", std::process::id());
        let lab = Lab {
            image: format!("fleet-entrypoint-test:{run}"),
            run,
            dir: tempfile::tempdir().expect("tempdir"),
        };
        let context = lab.dir.path().join("context");
        std::fs::create_dir_all(&context).expect("context dir");
        std::fs::create_dir_all(lab.records()).expect("records dir");
        // The stubs run as the runner user.
        open_to_all(&lab.records());
        std::fs::create_dir_all(context.join("bin")).expect("context bin dir");
        for (from, to) in [
            (PathBuf::from(ENTRYPOINT), "entrypoint.sh"),
            (Path::new(STUBS).join("config.sh"), "config.sh"),
            (Path::new(STUBS).join("run.sh"), "run.sh"),
            (
                Path::new(STUBS).join("run-helper.sh.template"),
                "run-helper.sh.template",
            ),
            (
                Path::new(STUBS).join("bin/Runner.Listener"),
                "bin/Runner.Listener",
            ),
        ] {
            std::fs::copy(&from, context.join(to))
                .unwrap_or_else(|e| panic!("copy {}: {e}", from.display()));
        }
        // Only when there are files: the legacy builder stumbles over layers of empty copies
        // shared by images built and removed at the same time ("layer does not exist").
        let rootfs = context.join("rootfs");
        let copy_rootfs = if files.is_empty() {
            ""
        } else {
            "COPY rootfs/ /\n"
        };
        for file in files {
            let to = rootfs.join(file.strip_prefix("/").expect("an absolute path"));
            std::fs::create_dir_all(to.parent().expect("a parent")).expect("rootfs dir");
            std::fs::copy(file, &to).unwrap_or_else(|e| panic!("copy {}: {e}", file.display()));
        }
        std::fs::write(
            context.join("Dockerfile"),
            format!(
                "FROM {base}\n\
                 RUN [\"/bin/busybox\", \"--install\", \"-s\", \"/bin\"]\n\
                 RUN {IMAGE_SETUP}\n\
                 {copy_rootfs}\
                 COPY entrypoint.sh /usr/local/bin/fleet-entrypoint\n\
                 COPY config.sh run.sh run-helper.sh.template /runner/\n\
                 COPY bin/Runner.Listener /runner/bin/\n\
                 ENV FLEET_RUNNER_DIR=/runner\n\
                 ENTRYPOINT [\"/usr/local/bin/fleet-entrypoint\"]\n"
            ),
        )
        .expect("write Dockerfile");
        let label = format!("{RUN_LABEL}={}", lab.run);
        let _images = images_lock();
        docker_ok(&[
            "build",
            "-q",
            "--network",
            "none",
            "--label",
            &label,
            "-t",
            &lab.image,
            context.to_str().expect("UTF-8 path"),
        ]);
        lab
    }

    fn records(&self) -> PathBuf {
        self.dir.path().join("records")
    }

    /// A record the stubs wrote, if they wrote it.
    fn record(&self, name: &str) -> Option<String> {
        std::fs::read_to_string(self.records().join(name)).ok()
    }

    /// A record the stubs wrote, removed: the test takes a secret out of the container's view
    /// before it looks for copies of it.
    fn take_record(&self, name: &str) -> Option<String> {
        let record = self.record(name);
        let _ = std::fs::remove_file(self.records().join(name));
        record
    }

    /// The user id a stub recorded.
    fn uid(&self, name: &str) -> String {
        self.record(name).unwrap_or_default().trim().to_string()
    }

    fn lines(&self, name: &str) -> Vec<String> {
        self.record(name)
            .unwrap_or_default()
            .lines()
            .map(str::to_string)
            .collect()
    }

    fn count(&self, name: &str) -> u32 {
        self.record(name)
            .map(|s| s.trim().parse().expect("a count"))
            .unwrap_or(0)
    }

    /// A named volume labelled with the run id, as fleet's per-runner state volume.
    fn volume(&self, suffix: &str) -> String {
        let name = format!("{}-{suffix}", self.run);
        let label = format!("{RUN_LABEL}={}", self.run);
        docker_ok(&["volume", "create", "--label", &label, &name]);
        name
    }

    /// Starts a container of the test image; returns its name.
    fn start(&self, suffix: &str, env: &[(&str, &str)], state: Option<&str>) -> String {
        self.container(&["run", "-d"], suffix, env, state)
    }

    /// Creates a container as fleet does with `secrets: file`: `var=secret` in a root-only file
    /// written into it (with fleet's own archive) before it starts. Returns its name.
    fn start_with_secret(
        &self,
        suffix: &str,
        env: &[(&str, &str)],
        state: Option<&str>,
        (var, secret): (&'static str, &str),
    ) -> String {
        let mut env = env.to_vec();
        env.push(("FLEET_SECRET_FILE", "/run/fleet/registration"));
        let c = self.container(&["create"], suffix, &env, state);
        let archive = secret_file_archive(var, &Secret::new(secret)).expect("archive");
        let mut child = Command::new("docker")
            .args(["cp", "-", &format!("{c}:/")])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("run docker cp");
        child
            .stdin
            .take()
            .expect("stdin")
            .write_all(&archive)
            .expect("write to docker cp");
        let out = child.wait_with_output().expect("docker cp");
        assert!(
            out.status.success(),
            "docker cp failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        docker_ok(&["start", &c]);
        c
    }

    /// `docker <command> ... IMAGE` for a test container; returns its name.
    fn container(
        &self,
        command: &[&str],
        suffix: &str,
        env: &[(&str, &str)],
        state: Option<&str>,
    ) -> String {
        let name = format!("{}-{suffix}", self.run);
        let label = format!("{RUN_LABEL}={}", self.run);
        let records = format!("{}:/records", self.records().display());
        let mut args: Vec<String> = command.iter().map(|s| s.to_string()).collect();
        args.extend(
            [
                "--init",
                "--network",
                "none",
                "--name",
                &name,
                "--label",
                &label,
                "-v",
                &records,
            ]
            .iter()
            .map(|s| s.to_string()),
        );
        if let Some(volume) = state {
            let dir = env
                .iter()
                .find(|(k, _)| *k == "FLEET_STATE_DIR")
                .map_or("/var/lib/fleet-runner", |(_, v)| *v);
            args.push("-v".into());
            args.push(format!("{volume}:{dir}"));
        }
        for (k, v) in env {
            args.push("-e".into());
            args.push(format!("{k}={v}"));
        }
        args.push(self.image.clone());
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        docker_ok(&args);
        name
    }

    fn logs(&self, container: &str) -> String {
        let out = docker(&["logs", container]);
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    }

    fn wait_for_log(&self, container: &str, needle: &str) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let logs = self.logs(container);
            if logs.contains(needle) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "{container} never logged {needle:?}; logs:\n{logs}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Waits until the container has exited on its own; returns its exit code.
    fn wait_exit(&self, container: &str) -> i64 {
        let out = docker_ok(&["wait", container]);
        out.parse().expect("an exit code")
    }

    /// `docker stop` (SIGTERM, then SIGKILL after 30 s); returns how long it took and the code.
    fn stop(&self, container: &str) -> (Duration, i64) {
        let started = Instant::now();
        docker_ok(&["stop", "-t", "30", container]);
        let took = started.elapsed();
        let code = docker_ok(&["inspect", "-f", "{{.State.ExitCode}}", container]);
        (took, code.parse().expect("an exit code"))
    }

    fn remove(&self, container: &str) {
        docker_ok(&["rm", "-f", container]);
    }

    /// Writes `text` to `path` inside a running container, through stdin (no command line).
    fn write_file(&self, container: &str, path: &str, text: &str) {
        let script = format!("cat > {path}");
        let mut child = Command::new("docker")
            .args(["exec", "-i", container, "sh", "-c", &script])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("run docker exec");
        child
            .stdin
            .take()
            .expect("stdin")
            .write_all(text.as_bytes())
            .expect("write to docker exec");
        let out: Output = child.wait_with_output().expect("docker exec");
        assert!(
            out.status.success(),
            "docker exec failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// The command lines of the container's processes, as the host sees them.
    fn process_args(&self, container: &str) -> String {
        docker_ok(&["top", container, "-eo", "pid,args"])
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        // Runs on failure too.
        let filter = format!("label={RUN_LABEL}={}", self.run);
        let ids = docker(&["ps", "-aq", "--filter", &filter]);
        for id in String::from_utf8_lossy(&ids.stdout).split_whitespace() {
            let _ = docker(&["rm", "-f", "-v", id]);
        }
        let volumes = docker(&["volume", "ls", "-q", "--filter", &filter]);
        for v in String::from_utf8_lossy(&volumes.stdout).split_whitespace() {
            let _ = docker(&["volume", "rm", "-f", v]);
        }
        let _images = images_lock();
        let _ = docker(&["rmi", "-f", &self.image]);
    }
}

/// This machine's util-linux setpriv (the reference images' way to the runner user) and the
/// shared libraries it loads, as `ldd` lists them.
fn host_setpriv() -> Vec<PathBuf> {
    let out = Command::new("sh")
        .args(["-c", "command -v setpriv"])
        .output()
        .expect("run sh");
    let setpriv = String::from_utf8_lossy(&out.stdout).trim().to_string();
    assert!(
        setpriv.starts_with('/'),
        "no setpriv on this machine: install util-linux"
    );
    let setpriv = std::fs::canonicalize(&setpriv).expect("setpriv's path");
    let ldd = Command::new("ldd").arg(&setpriv).output().expect("run ldd");
    assert!(ldd.status.success(), "ldd {}", setpriv.display());
    let mut files: Vec<PathBuf> = String::from_utf8_lossy(&ldd.stdout)
        .split_whitespace()
        .filter(|word| word.starts_with('/'))
        .map(PathBuf::from)
        .collect();
    files.push(setpriv);
    files
}

/// Lets every user write into `dir` (the stubs run as the runner user).
fn open_to_all(dir: &Path) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o777)).expect("chmod");
}

/// Waits until a stub has written `record` into `dir`.
fn wait_for_record(dir: &Path, record: &str) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !dir.join(record).exists() {
        assert!(
            Instant::now() < deadline,
            "{record} never appeared in {}",
            dir.display()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Where `secret` shows in a running container to `user`: in the environment of a process
/// (`/proc/*/environ`, those `user` may read), in a new process's environment, and with
/// `files` in any file but those of /proc, /sys and /dev. One line per sighting, none when it
/// is nowhere. The secret goes to the container on stdin: never in an argument of `docker` or
/// an environment.
fn sightings(container: &str, user: &str, secret: &str, files: bool) -> String {
    // busybox's `grep -F` stops at a NUL, and environments are NUL-separated: `tr` first.
    const LOOK: &str = r#"IFS= read -r secret
has() { tr '\000' '\n' <"$1" 2>/dev/null | grep -qF -e "$secret"; }
for f in /proc/[0-9]*/environ; do
  has "$f" && echo "the environment of process ${f#/proc/}"
done
env | grep -qF -e "$secret" && echo "the environment of a new process"
if [ "$1" = files ]; then
  find / \( -path /proc -o -path /sys -o -path /dev \) -prune -o -type f -print |
    while IFS= read -r f; do
      has "$f" && echo "file $f"
    done
fi
exit 0"#;
    let scope = if files { "files" } else { "processes" };
    let mut child = Command::new("docker")
        .args([
            "exec", "-i", "-u", user, container, "sh", "-c", LOOK, "sh", scope,
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run docker exec");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(format!("{secret}\n").as_bytes())
        .expect("write to docker exec");
    let out = child.wait_with_output().expect("docker exec");
    assert!(
        out.status.success(),
        "docker exec failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// `secret` is in no process environment the runner user or root can read, no file, and not in
/// `docker inspect`; except, with `runner_env`, in the environments of the runner user's
/// processes (a JIT configuration, which the runner reads from its environment).
fn assert_no_copy_left(container: &str, secret: &str, runner_env: bool) {
    let inspect = docker_ok(&["inspect", container]);
    assert_secret_free("docker inspect", &inspect, &[secret]);
    // Root without CAP_SYS_PTRACE reads only root's processes; the runner user only its own.
    let users: &[&str] = if runner_env {
        &["0"]
    } else {
        &[RUNNER_UID, "0"]
    };
    for user in users {
        let seen = sightings(container, user, secret, false);
        assert!(seen.is_empty(), "as user {user}, the secret is in:\n{seen}");
    }
    let seen = sightings(container, "0", secret, true);
    let files: Vec<&str> = seen.lines().filter(|l| l.starts_with("file ")).collect();
    assert!(files.is_empty(), "the secret is in:\n{}", files.join("\n"));
    let gone = docker(&["exec", container, "test", "-e", "/run/fleet/registration"]);
    assert!(!gone.status.success(), "the secret file is still there");
}

/// Fails when a secret appears in `text`; the message shows the text with the secrets masked.
fn assert_secret_free(what: &str, text: &str, secrets: &[&str]) {
    if secrets.iter().any(|secret| text.contains(secret)) {
        let masked = secrets
            .iter()
            .fold(text.to_string(), |t, secret| t.replace(secret, "<SECRET>"));
        panic!("a secret appears in {what}:\n{masked}");
    }
}

fn persistent_env<'a>(
    name: &'a str,
    labels: &'a str,
    token: Option<&'a str>,
) -> Vec<(&'a str, &'a str)> {
    let mut env = vec![
        ("RUNNER_NAME", name),
        ("RUNNER_LABELS", labels),
        ("FLEET_POOL", "cpu"),
        ("ACTIONS_RUNNER_INPUT_URL", "https://github.com/acme/zquic"),
        ("ACTIONS_RUNNER_INPUT_NAME", name),
        ("ACTIONS_RUNNER_INPUT_LABELS", labels),
        ("FLEET_STATE_DIR", "/var/lib/fleet-runner"),
    ];
    // As fleet sets it: the pool's no_default_labels.
    let no_defaults = if labels.starts_with("self-hosted") {
        "0"
    } else {
        "1"
    };
    env.push(("FLEET_NO_DEFAULT_LABELS", no_defaults));
    if let Some(token) = token {
        env.push(("ACTIONS_RUNNER_INPUT_TOKEN", token));
    }
    env
}

#[test]
fn jit_mode_runs_the_runner_with_its_jit_config_and_never_configures() {
    let lab = Lab::new("jit");
    let jit = format!("FAKE-JIT-CONFIG-{}", lab.run);
    let c = lab.start(
        "gpu-7f3k2a",
        &[
            ("RUNNER_NAME", "zq-gpu-7f3k2a"),
            ("RUNNER_LABELS", "self-hosted,Linux,X64,gpu,fleet.zq"),
            ("FLEET_POOL", "gpu"),
            ("ACTIONS_RUNNER_INPUT_JITCONFIG", &jit),
        ],
        None,
    );
    lab.wait_for_log(&c, "runner stub: listening");

    assert_eq!(lab.count("run.count"), 1, "run.sh started once");
    assert_eq!(
        lab.uid("run.uid"),
        RUNNER_UID,
        "the runner runs as the runner user"
    );
    assert_eq!(lab.record("run.jitconfig").as_deref(), Some(jit.as_str()));
    assert_eq!(
        lab.lines("run.env-names"),
        ["ACTIONS_RUNNER_INPUT_JITCONFIG"],
        "the runner reads its JIT configuration from the environment"
    );
    assert_eq!(lab.lines("run.args"), ["run"], "the listener itself");
    assert_eq!(lab.record("run.trap-sig").as_deref(), Some("1"));
    assert_eq!(lab.count("config.count"), 0, "config.sh is never called");
    assert_secret_free("the command lines", &lab.process_args(&c), &[&jit]);

    let (took, code) = lab.stop(&c);
    assert!(took < STOP_WITHIN, "docker stop took {took:?}");
    assert_eq!(code, 0, "a clean exit after SIGTERM");
    assert_eq!(
        lab.record("run.signal").as_deref(),
        Some("TERM\n"),
        "SIGTERM reaches the listener"
    );
    let logs = lab.logs(&c);
    assert!(logs.contains("stopped (SIGTERM)"), "{logs}");
    assert_secret_free("the logs", &logs, &[&jit]);
}

#[test]
fn a_runner_that_ends_by_itself_ends_the_container_with_its_status() {
    // 1: credentials refused or registration deleted; 5: session conflict; 7: deprecated.
    let lab = Lab::new("exit");
    for status in ["0", "1", "5", "7", "9"] {
        let jit = format!("FAKE-JIT-CONFIG-{}-{status}", lab.run);
        let c = lab.start(
            &format!("done-{status}"),
            &[
                ("RUNNER_NAME", "zq-gpu-done"),
                ("ACTIONS_RUNNER_INPUT_JITCONFIG", &jit),
                ("FLEET_TEST_RUNNER_EXIT", status),
            ],
            None,
        );
        assert_eq!(lab.wait_exit(&c).to_string(), status);
        let logs = lab.logs(&c);
        assert!(
            logs.contains(&format!("the runner exited with status {status}")),
            "{logs}"
        );
        assert_secret_free("the logs", &logs, &[&jit]);
    }
}

#[test]
fn persistent_runner_configures_once_and_a_recreated_container_keeps_its_registration() {
    let lab = Lab::new("persist");
    let token = format!("FAKE-REGISTRATION-TOKEN-{}", lab.run);
    let state = lab.volume("cpu-0-state");
    let labels = "self-hosted,Linux,X64,cpu,fleet.zq";
    let mut logs = String::new();

    // First container: not registered yet, so fleet passes a registration token.
    let first = lab.start(
        "cpu-0-a",
        &persistent_env("zq-cpu-0", labels, Some(&token)),
        Some(&state),
    );
    lab.wait_for_log(&first, "runner stub: listening");
    assert_eq!(lab.count("config.count"), 1);
    assert_eq!(
        lab.uid("config.uid"),
        RUNNER_UID,
        "config.sh runs as the runner user"
    );
    assert_eq!(lab.uid("run.uid"), RUNNER_UID);
    assert_eq!(
        lab.lines("config.args"),
        ["--unattended", "--replace", "--disableupdate"]
    );
    assert_eq!(
        lab.lines("config.env-names"),
        [
            "ACTIONS_RUNNER_INPUT_LABELS",
            "ACTIONS_RUNNER_INPUT_NAME",
            "ACTIONS_RUNNER_INPUT_TOKEN",
            "ACTIONS_RUNNER_INPUT_URL"
        ]
    );
    assert_eq!(lab.record("run.deprecated-exit-code").as_deref(), Some("1"));
    assert_eq!(lab.record("config.token").as_deref(), Some(token.as_str()));
    assert_eq!(
        lab.record("config.url").as_deref(),
        Some("https://github.com/acme/zquic")
    );
    assert_eq!(lab.record("config.name").as_deref(), Some("zq-cpu-0"));
    assert_eq!(
        lab.record("config.labels").as_deref(),
        Some("cpu,fleet.zq"),
        "config.sh adds the default labels itself: they are not sent twice"
    );
    assert_eq!(
        lab.lines("run.config-files"),
        [".runner", ".credentials", ".credentials_rsaparams"]
    );
    assert_eq!(
        lab.lines("run.env-names"),
        Vec::<String>::new(),
        "the registration inputs are not passed on to the runner and its jobs"
    );
    assert_secret_free("the command lines", &lab.process_args(&first), &[&token]);
    // With the token in the container's environment (`secrets: env`), the look finds it: in
    // root's processes (tini's, the entrypoint's) and in every process `docker exec` starts.
    let seen = sightings(&first, "0", &token, false);
    assert!(
        seen.contains("the environment of process 1/environ"),
        "{seen}"
    );
    let seen = sightings(&first, RUNNER_UID, &token, false);
    assert!(seen.contains("the environment of a new process"), "{seen}");
    let (took, code) = lab.stop(&first);
    assert!(took < STOP_WITHIN, "docker stop took {took:?}");
    assert_eq!(code, 0);
    assert_eq!(
        lab.count("config.count"),
        1,
        "no removal without a removal token"
    );
    assert!(lab.record("remove.token").is_none());
    logs.push_str(&lab.logs(&first));
    lab.remove(&first);

    // Recreated on the same state volume, registered already: fleet passes no token.
    let second = lab.start(
        "cpu-0-b",
        &persistent_env("zq-cpu-0", labels, None),
        Some(&state),
    );
    lab.wait_for_log(&second, "runner stub: listening");
    assert_eq!(lab.count("config.count"), 1, "configured once");
    assert_eq!(lab.count("run.count"), 2);
    assert_eq!(
        lab.lines("run.config-files"),
        [".runner", ".credentials", ".credentials_rsaparams"],
        "the registration was restored"
    );
    let (took, code) = lab.stop(&second);
    assert!(took < STOP_WITHIN, "docker stop took {took:?}");
    assert_eq!(code, 0);
    logs.push_str(&lab.logs(&second));
    lab.remove(&second);

    // A container that still carries its first token (a restart keeps the environment) does not
    // register again either: the saved registration wins.
    let third = lab.start(
        "cpu-0-c",
        &persistent_env("zq-cpu-0", labels, Some(&token)),
        Some(&state),
    );
    lab.wait_for_log(&third, "runner stub: listening");
    assert_eq!(lab.count("config.count"), 1, "configured once");
    assert_eq!(lab.count("run.count"), 3);
    lab.stop(&third);
    logs.push_str(&lab.logs(&third));

    assert!(logs.contains("restoring its registration"), "{logs}");
    assert_secret_free("the logs", &logs, &[&token]);
}

#[test]
fn persistent_runner_without_default_labels_registers_with_no_default_labels() {
    let lab = Lab::new("nodefault");
    let token = format!("FAKE-REGISTRATION-TOKEN-{}", lab.run);
    let state = lab.volume("bare-0-state");
    let c = lab.start(
        "bare-0",
        &persistent_env("zq-bare-0", "gpu,fleet.zq", Some(&token)),
        Some(&state),
    );
    lab.wait_for_log(&c, "runner stub: listening");
    assert_eq!(
        lab.lines("config.args"),
        [
            "--unattended",
            "--replace",
            "--disableupdate",
            "--no-default-labels"
        ]
    );
    assert_eq!(lab.record("config.labels").as_deref(), Some("gpu,fleet.zq"));
    lab.stop(&c);
    assert_secret_free("the logs", &lab.logs(&c), &[&token]);
}

#[test]
fn persistent_runner_without_registration_or_token_asks_to_be_registered_again() {
    let lab = Lab::new("notoken");
    let state = lab.volume("cpu-1-state");
    let c = lab.start(
        "cpu-1",
        &persistent_env("zq-cpu-1", "self-hosted,cpu", None),
        Some(&state),
    );
    assert_eq!(
        lab.wait_exit(&c),
        75,
        "the code that makes fleet register it"
    );
    let logs = lab.logs(&c);
    assert!(
        logs.contains("no saved registration") && logs.contains("register it again"),
        "{logs}"
    );
    assert_eq!(lab.count("config.count"), 0);
    assert_eq!(lab.count("run.count"), 0);
}

#[test]
fn without_the_contract_environment_it_refuses_to_start() {
    let lab = Lab::new("noenv");
    let c = lab.start("bare", &[("RUNNER_NAME", "zq-x-0")], None);
    assert_eq!(lab.wait_exit(&c), 78, "a configuration error");
    let logs = lab.logs(&c);
    assert!(
        logs.contains("neither ACTIONS_RUNNER_INPUT_JITCONFIG"),
        "{logs}"
    );
    assert_eq!(lab.count("run.count"), 0);
    assert_eq!(lab.count("config.count"), 0);
}

#[test]
fn a_persistent_runner_removes_its_registration_only_when_given_a_removal_token() {
    let lab = Lab::new("remove");
    let token = format!("FAKE-REGISTRATION-TOKEN-{}", lab.run);
    let removal = format!("FAKE-REMOVAL-TOKEN-{}", lab.run);
    let state = lab.volume("cpu-2-state");
    let env = persistent_env("zq-cpu-2", "self-hosted,cpu", Some(&token));
    let c = lab.start("cpu-2", &env, Some(&state));
    lab.wait_for_log(&c, "runner stub: listening");
    assert_eq!(lab.count("config.count"), 1);

    // The operator's explicit request: a removal token in the state directory, then a stop.
    lab.write_file(&c, "/var/lib/fleet-runner/remove-token", &removal);
    let (took, code) = lab.stop(&c);
    assert!(took < STOP_WITHIN, "docker stop took {took:?}");
    assert_eq!(code, 0);
    assert_eq!(lab.count("config.count"), 2);
    assert_eq!(lab.lines("config.args"), ["remove"]);
    assert_eq!(
        lab.record("remove.token").as_deref(),
        Some(removal.as_str()),
        "config.sh remove got the removal token from the environment"
    );
    let logs = lab.logs(&c);
    assert!(logs.contains("registration was removed"), "{logs}");
    assert_secret_free("the logs", &logs, &[&token, &removal]);
    lab.remove(&c);

    // The saved registration and the token file are gone: without a new token it cannot start.
    let again = lab.start(
        "cpu-2-again",
        &persistent_env("zq-cpu-2", "self-hosted,cpu", None),
        Some(&state),
    );
    assert_eq!(lab.wait_exit(&again), 75);
    assert!(lab.logs(&again).contains("no saved registration"));
    assert_eq!(lab.count("config.count"), 2, "no removal attempted twice");
}

#[test]
fn a_registration_github_dropped_is_configured_again_on_its_volume_once() {
    let lab = Lab::new("rereg");
    let first_token = format!("FAKE-REGISTRATION-TOKEN-A-{}", lab.run);
    let second_token = format!("FAKE-REGISTRATION-TOKEN-B-{}", lab.run);
    let state = lab.volume("cpu-0-state");
    let labels = "self-hosted,Linux,X64,cpu,fleet.zq";
    let register = |token: &str| {
        let mut env: Vec<(String, String)> = persistent_env("zq-cpu-0", labels, Some(token))
            .into_iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        env.push(("FLEET_REGISTRATION".into(), "register".into()));
        env
    };
    let start = |suffix: &str, env: &[(String, String)]| {
        let refs: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        lab.start(suffix, &refs, Some(&state))
    };
    let mut logs = String::new();

    // Registered with a token.
    let first = start("cpu-0-a", &register(&first_token));
    lab.wait_for_log(&first, "runner stub: listening");
    assert_eq!(lab.count("config.count"), 1);
    // Restarted (the environment, token included, is the container's own): it restores.
    docker_ok(&["restart", "-t", "5", &first]);
    let deadline = Instant::now() + Duration::from_secs(30);
    while lab.count("run.count") < 2 {
        assert!(Instant::now() < deadline, "the runner never ran again");
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(
        lab.count("config.count"),
        1,
        "a restart does not register again"
    );
    logs.push_str(&lab.logs(&first));
    // fleet stops a container before it removes it: the listener ends its session.
    lab.stop(&first);
    lab.remove(&first);

    // GitHub dropped the registration: fleet makes the container again with a new token and
    // FLEET_REGISTRATION=register. The stale registration goes, and it configures again.
    let second = start("cpu-0-b", &register(&second_token));
    lab.wait_for_log(&second, "runner stub: listening");
    assert_eq!(lab.count("config.count"), 2, "configured again");
    assert_eq!(
        lab.record("config.token").as_deref(),
        Some(second_token.as_str())
    );
    let second_logs = lab.logs(&second);
    assert!(
        second_logs.contains("GitHub no longer knows the registration"),
        "{second_logs}"
    );
    logs.push_str(&second_logs);
    lab.stop(&second);
    lab.remove(&second);

    // Known to GitHub again: restored, never configured a third time.
    let mut restore: Vec<(String, String)> = persistent_env("zq-cpu-0", labels, None)
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    restore.push(("FLEET_REGISTRATION".into(), "restore".into()));
    let third = start("cpu-0-c", &restore);
    lab.wait_for_log(&third, "runner stub: listening");
    assert_eq!(lab.count("config.count"), 2);
    assert_eq!(
        lab.lines("run.config-files"),
        [".runner", ".credentials", ".credentials_rsaparams"]
    );
    logs.push_str(&lab.logs(&third));
    assert_secret_free("the logs", &logs, &[&first_token, &second_token]);
}

#[test]
fn a_persistent_runner_registers_from_the_secret_file_and_no_copy_of_the_token_is_left() {
    let lab = Lab::new("file-per");
    let token = format!("FAKE-REGISTRATION-TOKEN-{}", lab.run);
    let state = lab.volume("cpu-0-state");
    let labels = "self-hosted,Linux,X64,cpu,fleet.zq";
    let mut env = persistent_env("zq-cpu-0", labels, None);
    env.push(("FLEET_REGISTRATION", "register"));
    let c = lab.start_with_secret("cpu-0", &env, Some(&state), (TOKEN_VAR, &token));
    lab.wait_for_log(&c, "runner stub: listening");

    assert_eq!(lab.count("config.count"), 1);
    assert_eq!(lab.uid("config.uid"), RUNNER_UID);
    assert_eq!(lab.uid("run.uid"), RUNNER_UID);
    assert!(
        lab.lines("config.env-names")
            .contains(&"ACTIONS_RUNNER_INPUT_TOKEN".to_string()),
        "config.sh got the token in its environment"
    );
    // The look finds a copy where there is one: the stub's record of the token.
    let seen = sightings(&c, "0", &token, true);
    assert!(seen.contains("file /records/config.token"), "{seen}");
    assert_eq!(
        lab.take_record("config.token").as_deref(),
        Some(token.as_str())
    );
    assert_eq!(lab.lines("run.env-names"), Vec::<String>::new());
    assert_no_copy_left(&c, &token, false);
    assert_secret_free("the command lines", &lab.process_args(&c), &[&token]);

    // Restarted, it finds no file (its token was used) and restores what it saved.
    docker_ok(&["restart", "-t", "5", &c]);
    let deadline = Instant::now() + Duration::from_secs(30);
    while lab.count("run.count") < 2 {
        assert!(Instant::now() < deadline, "the runner never ran again");
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(
        lab.count("config.count"),
        1,
        "a restart does not register again"
    );
    assert_eq!(
        lab.lines("run.config-files"),
        [".runner", ".credentials", ".credentials_rsaparams"]
    );
    let logs = lab.logs(&c);
    assert!(logs.contains("read and removed the secret file"), "{logs}");
    assert!(logs.contains("restoring its registration"), "{logs}");
    assert_secret_free("the logs", &logs, &[&token]);
}

#[test]
fn a_jit_runner_reads_its_config_from_the_secret_file() {
    let lab = Lab::new("file-jit");
    let jit = format!("FAKE-JIT-CONFIG-{}", lab.run);
    let env = [
        ("RUNNER_NAME", "zq-gpu-7f3k2a"),
        ("RUNNER_LABELS", "self-hosted,Linux,X64,gpu,fleet.zq"),
        ("FLEET_POOL", "gpu"),
    ];
    let c = lab.start_with_secret("gpu-7f3k2a", &env, None, (JIT_CONFIG_VAR, &jit));
    lab.wait_for_log(&c, "runner stub: listening");

    assert_eq!(lab.uid("run.uid"), RUNNER_UID);
    assert_eq!(lab.count("config.count"), 0);
    assert_eq!(
        lab.lines("run.env-names"),
        ["ACTIONS_RUNNER_INPUT_JITCONFIG"],
        "the runner reads its JIT configuration from its own environment"
    );
    assert_eq!(
        lab.take_record("run.jitconfig").as_deref(),
        Some(jit.as_str())
    );
    // Only the runner's own processes have it (root without CAP_SYS_PTRACE cannot read their
    // environments, and the runner user can read only its own): no file, no root process.
    assert_no_copy_left(&c, &jit, true);
    let seen = sightings(&c, RUNNER_UID, &jit, false);
    assert!(
        seen.contains("the environment of process"),
        "the runner's own environment has it: {seen}"
    );
    assert!(!seen.contains("a new process"), "{seen}");
    let (took, code) = lab.stop(&c);
    assert!(took < STOP_WITHIN, "docker stop took {took:?}");
    assert_eq!(code, 0);
    assert_secret_free("the logs", &lab.logs(&c), &[&jit]);
}

#[test]
fn an_entrypoint_that_cannot_read_the_secret_file_says_how_to_fix_it() {
    let lab = Lab::new("file-user");
    let jit = format!("FAKE-JIT-CONFIG-{}", lab.run);
    let env = [
        ("RUNNER_NAME", "zq-gpu-a"),
        ("FLEET_SECRET_FILE", "/run/fleet/registration"),
    ];
    let c = lab.container(&["create", "--user", RUNNER_UID], "gpu-a", &env, None);
    let archive = secret_file_archive(JIT_CONFIG_VAR, &Secret::new(jit.clone())).expect("archive");
    let mut child = Command::new("docker")
        .args(["cp", "-", &format!("{c}:/")])
        .stdin(Stdio::piped())
        .spawn()
        .expect("docker cp");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(&archive)
        .expect("write");
    assert!(child.wait().expect("docker cp").success());
    docker_ok(&["start", &c]);
    assert_eq!(lab.wait_exit(&c), 78);
    let logs = lab.logs(&c);
    assert!(
        logs.contains("cannot read the secret file") && logs.contains("secrets: env"),
        "{logs}"
    );
    assert_eq!(lab.count("run.count"), 0);
    assert_secret_free("the logs", &logs, &[&jit]);
}

/// A pool of the entrypoint image whose stubs record into `records`.
fn lab_pool(name: &str, ephemeral: bool, image: &str, records: &Path) -> String {
    format!(
        "  {name}:\n    count: 1\n    ephemeral: {ephemeral}\n    image: {image}\n    pull: never\n    network: none\n    volumes: [{{ source: {}, target: /records }}]\n",
        records.display()
    )
}

/// fleet apply with the reference entrypoint: the ephemeral pool gets its JIT config on standard
/// input (`secrets: stdin`, the default), the persistent pool its token in the secret file
/// (`secrets: file`); neither leaves a copy.
#[test]
fn fleet_apply_hands_over_each_secret_and_the_entrypoint_leaves_no_copy() {
    let lab = Lab::new("apply");
    let w = World::new();
    let (eph_records, per_records) = (lab.records().join("eph"), lab.records().join("per"));
    for dir in [&eph_records, &per_records] {
        std::fs::create_dir_all(dir).expect("records dir");
        open_to_all(dir);
    }
    w.spec(&format!(
        "{}{}    secrets: file\n",
        lab_pool("eph", true, &lab.image, &eph_records),
        lab_pool("per", false, &lab.image, &per_records)
    ));
    let out = w.apply();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}{}",
        common::stdout(&out),
        common::stderr(&out)
    );
    let eph = w.container_names("eph").pop().expect("an ephemeral runner");
    let per = format!("{}-per-0", w.run);
    wait_for_record(&eph_records, "run.uid");
    wait_for_record(&per_records, "run.uid");
    let read = |dir: &Path, name: &str| std::fs::read_to_string(dir.join(name)).unwrap_or_default();
    let take = |dir: &Path, name: &str| {
        let value = read(dir, name);
        let _ = std::fs::remove_file(dir.join(name));
        value
    };

    // The persistent runner registered with the token fleet asked for, as the runner user.
    assert_eq!(read(&per_records, "config.uid").trim(), RUNNER_UID);
    assert_eq!(read(&per_records, "run.uid").trim(), RUNNER_UID);
    let token = take(&per_records, "config.token");
    assert_eq!(token.len(), 29, "a registration token of the fake");
    assert_eq!(w.fake.registration_tokens_issued(), 1);
    assert!(
        w.env_of(&per)
            .contains(&"FLEET_SECRET_FILE=/run/fleet/registration".to_string())
    );
    assert_no_copy_left(&per, &token, false);

    // The ephemeral runner got the JIT config of its own name, on standard input.
    assert!(w.env_of(&eph).contains(&"FLEET_SECRET_STDIN=1".to_string()));
    assert!(
        !w.env_of(&eph)
            .iter()
            .any(|e| e.starts_with("FLEET_SECRET_FILE="))
    );
    assert_eq!(read(&eph_records, "run.uid").trim(), RUNNER_UID);
    let jit = take(&eph_records, "run.jitconfig");
    let settings = fake_github::decode_jit_config(&jit).expect("a JIT config of the fake");
    assert_eq!(settings.name, eph);
    assert_no_copy_left(&eph, &jit, true);

    let logs = format!("{}{}", lab.logs(&eph), lab.logs(&per));
    assert!(logs.contains("switched with"), "{logs}");
    assert_secret_free("the logs", &logs, &[&token, &jit]);
    drop(w);
}

#[test]
fn with_util_linux_setpriv_the_entrypoint_drops_with_it() {
    let lab = Lab::with_files("setpriv", &host_setpriv());
    let token = format!("FAKE-REGISTRATION-TOKEN-{}", lab.run);
    let state = lab.volume("cpu-0-state");
    let mut env = persistent_env("zq-cpu-0", "self-hosted,Linux,X64,cpu,fleet.zq", None);
    env.push(("FLEET_REGISTRATION", "register"));
    let c = lab.start_with_secret("cpu-0", &env, Some(&state), (TOKEN_VAR, &token));
    lab.wait_for_log(&c, "runner stub: listening");
    let logs = lab.logs(&c);
    assert!(logs.contains("/setpriv)"), "{logs}");
    assert_eq!(lab.uid("config.uid"), RUNNER_UID);
    assert_eq!(lab.uid("run.uid"), RUNNER_UID);
    assert_eq!(
        lab.take_record("config.token").as_deref(),
        Some(token.as_str())
    );
    assert_no_copy_left(&c, &token, false);
    let (took, code) = lab.stop(&c);
    assert!(took < STOP_WITHIN, "docker stop took {took:?}");
    assert_eq!(code, 0);
    assert_eq!(lab.record("run.signal").as_deref(), Some("TERM\n"));
    assert_secret_free("the logs", &lab.logs(&c), &[&token]);
}

/// Waits until `count` of a stub's record reaches `n`.
fn wait_for_count(lab: &Lab, record: &str, n: u32) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while lab.count(record) < n {
        assert!(Instant::now() < deadline, "{record} never reached {n}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn the_runners_own_run_sh_turns_the_listener_failures_into_0() {
    // Why the entrypoint starts the listener itself: through run.sh, a refused credential (1)
    // and a session conflict (5) look like a job done; only 7 survives, and only when asked.
    let lab = Lab::new("runsh");
    for (status, deprecated, expected) in [("1", "", 0), ("5", "", 0), ("7", "", 0), ("7", "1", 7)]
    {
        let name = format!("zq-runsh-{status}-{expected}");
        let c = lab.container(
            &[
                "run",
                "-d",
                "-u",
                RUNNER_UID,
                "--entrypoint",
                "/runner/run.sh",
            ],
            &format!("runsh-{status}-{expected}"),
            &[
                ("RUNNER_NAME", &name),
                ("FLEET_TEST_RUNNER_EXIT", status),
                (
                    "ACTIONS_RUNNER_RETURN_VERSION_DEPRECATED_EXIT_CODE",
                    deprecated,
                ),
            ],
            None,
        );
        assert_eq!(
            lab.wait_exit(&c),
            expected,
            "run.sh with a listener that exits {status}"
        );
    }
}

#[test]
fn retryable_errors_and_self_updates_start_the_listener_again() {
    let lab = Lab::new("retry");
    let jit = format!("FAKE-JIT-CONFIG-{}", lab.run);
    let c = lab.start(
        "retry",
        &[
            ("RUNNER_NAME", "zq-retry"),
            ("ACTIONS_RUNNER_INPUT_JITCONFIG", &jit),
            ("FLEET_TEST_LISTENER_EXITS", "2 3 0"),
        ],
        None,
    );
    assert_eq!(lab.wait_exit(&c), 0, "the job is done after two restarts");
    assert_eq!(lab.count("run.count"), 3);
    let logs = lab.logs(&c);
    assert!(logs.contains("status 2 (retryable)"), "{logs}");
    assert!(logs.contains("updated itself"), "{logs}");
    assert!(logs.contains("exited with status 0"), "{logs}");
    assert_secret_free("the logs", &logs, &[&jit]);
}

#[test]
fn a_graceful_stop_ends_the_session_and_a_killed_runner_leaves_a_conflict() {
    let lab = Lab::new("session");
    let token = format!("FAKE-REGISTRATION-TOKEN-{}", lab.run);
    let state = lab.volume("cpu-3-state");
    let labels = "self-hosted,cpu";
    let session = lab.records().join("sessions/zq-cpu-3");
    let first = lab.start(
        "cpu-3-a",
        &persistent_env("zq-cpu-3", labels, Some(&token)),
        Some(&state),
    );
    lab.wait_for_log(&first, "runner stub: listening");
    assert!(session.exists(), "the listener holds a session");
    lab.stop(&first);
    assert!(!session.exists(), "a graceful stop deletes the session");
    lab.remove(&first);

    let second = lab.start(
        "cpu-3-b",
        &persistent_env("zq-cpu-3", labels, None),
        Some(&state),
    );
    lab.wait_for_log(&second, "runner stub: listening");
    docker_ok(&["kill", "-s", "KILL", &second]);
    lab.wait_exit(&second);
    assert!(session.exists(), "SIGKILL leaves the session behind");
    lab.remove(&second);

    let third = lab.start(
        "cpu-3-c",
        &persistent_env("zq-cpu-3", labels, None),
        Some(&state),
    );
    assert_eq!(lab.wait_exit(&third), 5, "a session conflict is a failure");
    let logs = lab.logs(&third);
    assert!(logs.contains("holds this runner's session"), "{logs}");
}

#[test]
fn the_save_mirrors_deletions_so_a_deleted_registration_is_not_restored() {
    let lab = Lab::new("mirror");
    let token = format!("FAKE-REGISTRATION-TOKEN-{}", lab.run);
    let state = lab.volume("cpu-4-state");
    let env = persistent_env("zq-cpu-4", "self-hosted,cpu", Some(&token));
    let c = lab.start("cpu-4", &env, Some(&state));
    lab.wait_for_log(&c, "runner stub: listening");
    // What the runner does when GitHub deleted its registration: it deletes its configuration.
    docker_ok(&[
        "exec",
        "-u",
        RUNNER_UID,
        &c,
        "rm",
        "-f",
        "/runner/.runner",
        "/runner/.credentials",
        "/runner/.credentials_rsaparams",
    ]);
    lab.stop(&c);
    lab.remove(&c);

    let again = lab.start(
        "cpu-4-again",
        &persistent_env("zq-cpu-4", "self-hosted,cpu", None),
        Some(&state),
    );
    assert_eq!(
        lab.wait_exit(&again),
        75,
        "nothing left to restore: register it again"
    );
    assert_eq!(
        lab.count("run.count"),
        1,
        "the dead registration was not restored"
    );
}

#[test]
fn a_state_directory_root_owns_is_given_to_the_runner_user() {
    let lab = Lab::new("chown");
    let token = format!("FAKE-REGISTRATION-TOKEN-{}", lab.run);
    let state = lab.volume("cpu-5-state");
    // A path the image lacks: Docker makes the volume's root root's.
    let mut env = persistent_env("zq-cpu-5", "self-hosted,cpu", Some(&token));
    env.retain(|(k, _)| *k != "FLEET_STATE_DIR");
    env.push(("FLEET_STATE_DIR", "/var/lib/other-state"));
    let c = lab.start("cpu-5", &env, Some(&state));
    lab.wait_for_log(&c, "runner stub: listening");
    let owner = docker_ok(&["exec", &c, "stat", "-c", "%u", "/var/lib/other-state"]);
    assert_eq!(owner, RUNNER_UID);
    assert_eq!(lab.count("config.count"), 1, "registered and saved");
}

#[test]
fn config_sh_is_tried_again_after_a_failure_and_gives_up_with_78() {
    let lab = Lab::new("cfgretry");
    let token = format!("FAKE-REGISTRATION-TOKEN-{}", lab.run);
    let state = lab.volume("cpu-6-state");
    let mut env = persistent_env("zq-cpu-6", "self-hosted,cpu", Some(&token));
    env.extend([
        ("FLEET_TEST_CONFIG_FAILS", "2"),
        ("FLEET_CONFIG_RETRY_DELAY", "1"),
    ]);
    let c = lab.start("cpu-6", &env, Some(&state));
    lab.wait_for_log(&c, "runner stub: listening");
    assert_eq!(
        lab.count("config.count"),
        3,
        "two failures, then registered"
    );
    lab.stop(&c);
    let logs = lab.logs(&c);
    assert!(
        logs.contains("trying again in 1 s") && logs.contains("trying again in 2 s"),
        "{logs}"
    );
    assert_secret_free("the logs", &logs, &[&token]);

    let other = lab.volume("cpu-7-state");
    let mut env = persistent_env("zq-cpu-7", "self-hosted,cpu", Some(&token));
    env.extend([
        ("FLEET_TEST_CONFIG_FAILS", "100"),
        ("FLEET_CONFIG_RETRY_DELAY", "1"),
        ("FLEET_CONFIG_ATTEMPTS", "2"),
    ]);
    let c = lab.start("cpu-7", &env, Some(&other));
    assert_eq!(lab.wait_exit(&c), 78);
    assert!(lab.logs(&c).contains("2 times"));
}

#[test]
fn a_restarted_container_does_not_wait_for_a_secret_line() {
    let lab = Lab::new("restart");
    let token = format!("FAKE-REGISTRATION-TOKEN-{}", lab.run);
    let state = lab.volume("cpu-8-state");
    let mut env = persistent_env("zq-cpu-8", "self-hosted,cpu", Some(&token));
    env.push(("FLEET_SECRET_STDIN", "1"));
    // Standard input open and never written: the first start waits for a line (10 s at most).
    let c = lab.container(&["run", "-d", "-i"], "cpu-8", &env, Some(&state));
    lab.wait_for_log(&c, "runner stub: listening");
    let started = Instant::now();
    docker_ok(&["restart", "-t", "10", &c]);
    wait_for_count(&lab, "run.count", 2);
    let took = started.elapsed();
    assert!(took < Duration::from_secs(5), "the restart took {took:?}");
    assert!(lab.logs(&c).contains("this container started before"));
}

#[test]
fn labels_go_to_config_sh_as_written_and_defaults_once() {
    let lab = Lab::new("labels");
    let token = format!("FAKE-REGISTRATION-TOKEN-{}", lab.run);
    let state = lab.volume("cpu-9-state");
    let labels = "self-hosted,Linux,X64,linux,GPU-A100,fleet.zq";
    let c = lab.start(
        "cpu-9",
        &persistent_env("zq-cpu-9", labels, Some(&token)),
        Some(&state),
    );
    lab.wait_for_log(&c, "runner stub: listening");
    assert_eq!(
        lab.record("config.labels").as_deref(),
        Some("linux,GPU-A100,fleet.zq"),
        "the runner adds self-hosted, Linux and X64 itself; a custom `linux` stays"
    );
    assert!(
        !lab.lines("config.args")
            .contains(&"--no-default-labels".to_string())
    );
}

#[test]
fn runner_updates_happen_only_when_the_pool_enables_them() {
    let lab = Lab::new("update");
    let token = format!("FAKE-REGISTRATION-TOKEN-{}", lab.run);
    // Disabled (the default): --disableupdate, and the runner stays as it is.
    let state = lab.volume("cpu-10-state");
    let mut env = persistent_env("zq-cpu-10", "self-hosted,cpu", Some(&token));
    env.push(("FLEET_TEST_NEWER_RUNNER", "1"));
    let c = lab.start("cpu-10", &env, Some(&state));
    lab.wait_for_log(&c, "runner stub: listening");
    assert!(
        lab.lines("config.args")
            .contains(&"--disableupdate".to_string())
    );
    assert!(lab.record("updates").is_none(), "no update");
    lab.stop(&c);

    // Enabled: the runner updates itself, and the entrypoint starts it again.
    let state = lab.volume("cpu-11-state");
    let mut env = persistent_env("zq-cpu-11", "self-hosted,cpu", Some(&token));
    env.extend([
        ("FLEET_TEST_NEWER_RUNNER", "1"),
        ("FLEET_RUNNER_UPDATE", "enabled"),
    ]);
    let c = lab.start("cpu-11", &env, Some(&state));
    lab.wait_for_log(&c, "runner stub: listening");
    assert!(
        !lab.lines("config.args")
            .contains(&"--disableupdate".to_string())
    );
    assert_eq!(lab.lines("updates").len(), 1, "updated once");
    assert!(lab.logs(&c).contains("updated itself"));
}

/// fleet stops a runner before it removes it: a persistent runner that is replaced ends its
/// session (the next container of the same runner starts with no conflict), and a runner that
/// ignores SIGTERM is killed after its pool's `stop_timeout`, not before.
#[test]
fn fleet_stops_runners_gracefully_within_the_pools_stop_timeout() {
    let lab = Lab::new("stop");
    let w = World::new();
    let (per_records, slow_records) = (lab.records().join("per"), lab.records().join("slow"));
    for dir in [&per_records, &slow_records] {
        std::fs::create_dir_all(dir).expect("records dir");
        open_to_all(dir);
    }
    let pools = |generation: &str| {
        format!(
            "{}    env: {{ GENERATION: '{generation}' }}\n{}    stop_timeout: 3s\n    env: {{ FLEET_TEST_IGNORE_TERM: '1' }}\n",
            lab_pool("per", false, &lab.image, &per_records),
            lab_pool("slow", true, &lab.image, &slow_records),
        )
    };
    w.spec(&pools("1"));
    let out = w.apply();
    assert_eq!(out.status.code(), Some(0), "{}", common::stderr(&out));
    let per = format!("{}-per-0", w.run);
    let slow = w
        .container_names("slow")
        .pop()
        .expect("an ephemeral runner");
    wait_for_record(&per_records, "run.uid");
    wait_for_record(&slow_records, "run.uid");
    let inspect = w.inspect(&slow);
    assert_eq!(
        inspect["HostConfig"]["Init"], true,
        "an init process as PID 1"
    );
    assert_eq!(inspect["Config"]["StopTimeout"], 3);

    // The persistent runner registers with GitHub (the stub config.sh only writes files).
    let token = std::fs::read_to_string(per_records.join("config.token")).expect("a token");
    let labels = w
        .env_value(&per, "ACTIONS_RUNNER_INPUT_LABELS")
        .expect("labels");
    let runner = w
        .fake
        .configure_runner(&fake_github::RunnerConfiguration {
            token,
            name: per.clone(),
            labels: labels.split(',').map(str::to_string).collect(),
            runner_group: None,
            replace: true,
        })
        .expect("configure");
    w.fake.set_runner_state(&w.scope, runner.id, true, false);

    // A change replaces it: stopped with SIGTERM, so its session is gone and the new container
    // of the same runner starts listening.
    w.spec(&pools("2"));
    let out = w.apply();
    assert_eq!(out.status.code(), Some(0), "{}", common::stderr(&out));
    assert_eq!(
        std::fs::read_to_string(per_records.join("run.signal"))
            .ok()
            .as_deref(),
        Some("TERM\n")
    );
    let deadline = Instant::now() + Duration::from_secs(30);
    let session = per_records.join("sessions").join(&per);
    // The stub counts its start before it opens its session.
    while std::fs::read_to_string(per_records.join("run.count"))
        .ok()
        .as_deref()
        != Some("2\n")
        || !session.exists()
    {
        assert!(
            Instant::now() < deadline,
            "the new container never started its runner"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(
        docker_ok(&["inspect", "-f", "{{.State.Status}}", &per]),
        "running",
        "no session conflict"
    );

    // The runner that ignores SIGTERM goes after its 3 s, not at once and not after 30 s.
    let started = Instant::now();
    let out = w.fleet(&["destroy", "--auto-approve"]);
    let took = started.elapsed();
    assert_eq!(out.status.code(), Some(0), "{}", common::stderr(&out));
    assert!(
        took >= Duration::from_secs(3) && took < Duration::from_secs(20),
        "destroy took {took:?}"
    );
    assert_eq!(
        std::fs::read_to_string(slow_records.join("run.signal"))
            .ok()
            .as_deref(),
        Some("TERM\n"),
        "it was asked to stop first"
    );
    assert!(
        w.owned_containers().is_empty(),
        "{:?}",
        w.owned_containers()
    );
    drop(w);
}

#[test]
fn with_the_docker_socket_mounted_the_runner_user_joins_its_group() {
    use std::os::unix::fs::PermissionsExt;
    let lab = Lab::new("socket");
    // A stand-in for the engine's socket, of a group the image does not have.
    let socket = lab.dir.path().join("docker.sock");
    let _listener = std::os::unix::net::UnixListener::bind(&socket).expect("bind");
    std::os::unix::fs::chown(&socket, Some(0), Some(4242)).expect("chown");
    std::fs::set_permissions(&socket, std::fs::Permissions::from_mode(0o660)).expect("chmod");
    let jit = format!("FAKE-JIT-CONFIG-{}", lab.run);
    let mount = format!("{}:/var/run/docker.sock", socket.display());
    let c = lab.container(
        &["run", "-d", "-v", &mount],
        "socket",
        &[
            ("RUNNER_NAME", "zq-docker-0"),
            ("ACTIONS_RUNNER_INPUT_JITCONFIG", &jit),
        ],
        None,
    );
    lab.wait_for_log(&c, "runner stub: listening");
    assert!(
        lab.lines("run.groups").contains(&"4242".to_string()),
        "{:?}",
        lab.lines("run.groups")
    );
    assert_eq!(lab.uid("run.uid"), RUNNER_UID, "still the runner user");
    let logs = lab.logs(&c);
    assert!(
        logs.contains("joins group fleet-docker (gid 4242)"),
        "{logs}"
    );
    lab.stop(&c);
}

/// `docker_socket: true`: the runner's work folder is the host's `<work_dir>/<runner>` at the
/// identical path, so that what a job writes there is what the host's engine mounts into the
/// job's containers; the runner user is in the socket's group; an ephemeral runner's work
/// folder is emptied when it ends and removed with the runner, a persistent runner's is kept.
#[test]
fn a_docker_socket_pool_shares_its_work_folder_with_the_hosts_engine_at_the_same_path() {
    let lab = Lab::new("work");
    let w = World::new();
    let records = lab.records().join("eph");
    let per_records = lab.records().join("per");
    for dir in [&records, &per_records] {
        std::fs::create_dir_all(dir).expect("records dir");
        open_to_all(dir);
    }
    let work = lab.dir.path().join("work");
    w.spec(&format!(
        "{}    docker_socket: true\n    work_dir: {}\n{}    docker_socket: true\n    work_dir: {}\n",
        lab_pool("eph", true, &lab.image, &records),
        work.display(),
        lab_pool("per", false, &lab.image, &per_records),
        work.display()
    ));
    let out = w.apply();
    assert_eq!(out.status.code(), Some(0), "{}", common::stderr(&out));
    let eph = w.container_names("eph").pop().expect("an ephemeral runner");
    wait_for_record(&records, "run.uid");
    let folder = work.join(&eph);
    let folder_text = folder.to_str().expect("UTF-8").to_string();
    assert_eq!(
        w.env_value(&eph, "FLEET_WORK_DIR").as_deref(),
        Some(folder_text.as_str())
    );
    let jit = std::fs::read_to_string(records.join("run.jitconfig")).expect("the JIT config");
    let settings = fake_github::decode_jit_config(&jit).expect("a JIT config of the fake");
    assert_eq!(
        settings.work_folder, folder_text,
        "the runner's work folder"
    );

    // A job step writes its checkout, then runs `docker run -v "$GITHUB_WORKSPACE":/w ...`
    // through the host's engine: the engine finds the file at the same path.
    let repo = format!("{folder_text}/repo/repo");
    docker_ok(&[
        "exec",
        "-u",
        RUNNER_UID,
        &eph,
        "sh",
        "-c",
        &format!("mkdir -p {repo} && echo built > {repo}/checked-out"),
    ]);
    let mount = format!("{repo}:/w");
    let label = format!("{RUN_LABEL}={}", lab.run);
    let seen = docker_ok(&[
        "run",
        "--rm",
        "--network",
        "none",
        "--label",
        &label,
        "-v",
        &mount,
        common::test_image(),
        "/bin/busybox",
        "ls",
        "/w",
    ]);
    assert_eq!(seen, "checked-out");
    let socket_gid = {
        use std::os::unix::fs::MetadataExt;
        std::fs::metadata("/var/run/docker.sock")
            .expect("the socket")
            .gid()
    };
    let groups = std::fs::read_to_string(records.join("run.groups")).unwrap_or_default();
    assert!(
        socket_gid == 0 || groups.lines().any(|g| g == socket_gid.to_string()),
        "the runner user is in the socket's group {socket_gid}: {groups}"
    );

    // The runners end: the ephemeral runner's work folder is emptied and removed with it; the
    // persistent runner's stays.
    let per_folder = work.join(format!("{}-per-0", w.run));
    wait_for_record(&per_records, "run.uid");
    assert!(per_folder.is_dir(), "{}", per_folder.display());
    let out = w.fleet(&["destroy", "--auto-approve"]);
    assert_eq!(out.status.code(), Some(0), "{}", common::stderr(&out));
    let left: Vec<_> = std::fs::read_dir(&folder)
        .map(|d| d.map(|e| e.map(|e| e.file_name())).collect())
        .unwrap_or_default();
    assert!(!folder.exists(), "the work folder stays, holding {left:?}");
    assert!(per_folder.is_dir(), "{}", per_folder.display());
    let helpers = docker_ok(&[
        "ps",
        "-aq",
        "--filter",
        &format!("label=fleet.work-dir-helper={}", w.run),
    ]);
    assert!(helpers.is_empty(), "helper containers left: {helpers}");
    drop(w);
}

/// A persistent runner that outlives its stop timeout and took a job meanwhile (GitHub says
/// busy when fleet asks again) is kept, not killed: the replace is deferred.
#[test]
fn a_runner_that_took_a_job_while_being_stopped_is_kept() {
    let lab = Lab::new("busystop");
    let w = World::new();
    let records = lab.records().join("per");
    std::fs::create_dir_all(&records).expect("records dir");
    open_to_all(&records);
    let pool = |generation: &str| {
        format!(
            "{}    stop_timeout: 3s\n    env: {{ FLEET_TEST_IGNORE_TERM: '1', GENERATION: '{generation}' }}\n",
            lab_pool("per", false, &lab.image, &records),
        )
    };
    w.spec(&pool("1"));
    let out = w.apply();
    assert_eq!(out.status.code(), Some(0), "{}", common::stderr(&out));
    let per = format!("{}-per-0", w.run);
    wait_for_record(&records, "run.uid");
    let token = std::fs::read_to_string(records.join("config.token")).expect("a token");
    let labels = w
        .env_value(&per, "ACTIONS_RUNNER_INPUT_LABELS")
        .expect("labels");
    let runner = w
        .fake
        .configure_runner(&fake_github::RunnerConfiguration {
            token,
            name: per.clone(),
            labels: labels.split(',').map(str::to_string).collect(),
            runner_group: None,
            replace: true,
        })
        .expect("configure");
    w.fake.set_runner_state(&w.scope, runner.id, true, false);
    let id_before = docker_ok(&["inspect", "-f", "{{.Id}}", &per]);

    // Idle when apply checks; a job arrives while the runner ignores SIGTERM.
    w.spec(&pool("2"));
    let out = std::thread::scope(|s| {
        s.spawn(|| {
            let deadline = Instant::now() + Duration::from_secs(30);
            while !records.join("run.signal").exists() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(50));
            }
            w.fake.set_runner_state(&w.scope, runner.id, true, true);
        });
        w.apply()
    });
    assert_eq!(out.status.code(), Some(0), "{}", common::stderr(&out));
    let text = common::stdout(&out);
    assert!(
        text.contains("the runner took a job while it was being stopped"),
        "{text}"
    );
    assert_eq!(
        docker_ok(&["inspect", "-f", "{{.Id}} {{.State.Status}}", &per]),
        format!("{id_before} running"),
        "the same container, still running its job"
    );
    drop(w);
}

/// A pool whose runners exit without taking a job (the listener's exit 1, as when GitHub
/// refuses the runner's credentials) backs off after three in a row: `plan` and `status` say
/// why, `apply` spends no registration until the delay has passed, the delay grows with each
/// further failure, and a new configuration of the pool ends it (src/plan/crashloop.rs).
#[test]
fn a_pool_whose_runners_cannot_start_backs_off_and_a_new_configuration_ends_it() {
    let lab = Lab::new("crashloop");
    let w = World::new();
    let records = lab.records().join("eph");
    std::fs::create_dir_all(&records).expect("records dir");
    open_to_all(&records);
    let broken = format!(
        "{}    env: {{ FLEET_TEST_RUNNER_EXIT: '1' }}\n",
        lab_pool("eph", true, &lab.image, &records)
    );
    w.spec(&broken);
    let failures_label = |name: &str| {
        w.inspect(name)["Config"]["Labels"]["fleet.start-failures"]
            .as_str()
            .map(str::to_string)
    };
    let apply_and_fail = |expected_label: Option<&str>| {
        let out = w.apply();
        assert_eq!(out.status.code(), Some(0), "{}", common::stderr(&out));
        let name = w.container_names("eph").pop().expect("a runner");
        assert_eq!(lab.wait_exit(&name), 1, "{}", lab.logs(&name));
        assert_eq!(failures_label(&name).as_deref(), expected_label);
        name
    };
    apply_and_fail(None);
    apply_and_fail(Some("1"));
    let third = apply_and_fail(Some("2"));
    assert_eq!(w.fake.jit_configs_issued(), 3);

    // Three in a row: the pool backs off, says why, and spends no registration.
    let out = w.fleet(&["plan"]);
    let text = common::stdout(&out);
    assert!(text.contains("Backing off"), "{text}");
    assert!(
        text.contains("3 runners in a row exited without taking a job, the last with code 1"),
        "{text}"
    );
    let json = w.fleet(&["plan", "--format", "json"]);
    let doc: serde_json::Value = serde_json::from_slice(&json.stdout).expect("plan JSON");
    assert_eq!(doc["backoff"][0]["pool"], "eph", "{doc}");
    assert_eq!(doc["backoff"][0]["failures"], 3, "{doc}");
    assert_eq!(doc["backoff"][0]["delay_secs"], 30, "{doc}");
    let markdown = common::stdout(&w.fleet(&["plan", "--format", "markdown"]));
    assert!(markdown.contains("**Backing off"), "{markdown}");
    let out = w.apply();
    assert_eq!(out.status.code(), Some(0), "{}", common::stderr(&out));
    assert_eq!(w.fake.jit_configs_issued(), 3);
    assert_eq!(w.container_names("eph"), std::slice::from_ref(&third));
    let status = common::stdout(&w.fleet(&["status"]));
    assert!(status.contains("backing off"), "{status}");

    // Once the delay has passed, one more runner; it fails too, and the delay doubles.
    let retry = doc["backoff"][0]["retry_in_secs"]
        .as_u64()
        .expect("retry_in_secs");
    std::thread::sleep(Duration::from_secs(retry + 1));
    let fourth = apply_and_fail(Some("3"));
    assert_ne!(fourth, third);
    assert_eq!(w.fake.jit_configs_issued(), 4);
    let json = w.fleet(&["plan", "--format", "json"]);
    let doc: serde_json::Value = serde_json::from_slice(&json.stdout).expect("plan JSON");
    assert_eq!(doc["backoff"][0]["failures"], 4, "{doc}");
    assert_eq!(doc["backoff"][0]["delay_secs"], 60, "{doc}");

    // The image is fixed (here: the pool's configuration changes): the run ends at once.
    w.spec(&lab_pool("eph", true, &lab.image, &records));
    let out = w.apply();
    assert_eq!(out.status.code(), Some(0), "{}", common::stderr(&out));
    assert_eq!(w.fake.jit_configs_issued(), 5);
    let fixed = w.container_names("eph");
    assert_eq!(fixed.len(), 1, "the failed runner is gone: {fixed:?}");
    assert_eq!(failures_label(&fixed[0]), None);
    let out = w.fleet(&["plan", "--format", "json"]);
    let doc: serde_json::Value = serde_json::from_slice(&out.stdout).expect("plan JSON");
    assert!(doc.get("backoff").is_none(), "{doc}");
}

/// A persistent runner whose registration GitHub deleted: the runner deletes its configuration,
/// the save on the way out mirrors that, and, started again by Docker, it has nothing to
/// restore and no token, so it exits 75 (Docker keeps restarting it). `fleet apply` makes it
/// again with a fresh registration token, on the same state volume, and it configures itself.
#[test]
fn fleet_apply_registers_again_a_persistent_runner_that_exits_75() {
    let lab = Lab::new("exit75");
    let w = World::new();
    let records = lab.records().join("per");
    std::fs::create_dir_all(&records).expect("records dir");
    open_to_all(&records);
    w.spec(&lab_pool("per", false, &lab.image, &records));
    let out = w.apply();
    assert_eq!(out.status.code(), Some(0), "{}", common::stderr(&out));
    let per = format!("{}-per-0", w.run);
    wait_for_record(&records, "run.uid");
    let count = |name: &str| {
        std::fs::read_to_string(records.join(name))
            .ok()
            .and_then(|s| s.trim().parse::<u32>().ok())
            .unwrap_or(0)
    };
    assert_eq!(count("config.count"), 1);
    assert_eq!(w.fake.registration_tokens_issued(), 1);

    // GitHub deletes the registration; the runner deletes its configuration and stops.
    for r in w.fake.runners(&w.scope) {
        if r.name == per {
            w.fake.remove_runner(&w.scope, r.id);
        }
    }
    docker_ok(&[
        "exec",
        &per,
        "rm",
        "-f",
        "/runner/.runner",
        "/runner/.credentials",
        "/runner/.credentials_rsaparams",
    ]);
    docker_ok(&["restart", "-t", "10", &per]);
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let code = docker_ok(&["inspect", "-f", "{{.State.ExitCode}}", &per]);
        if code == "75" {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "never exited 75 (last {code}): {}",
            lab.logs(&per)
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(lab.logs(&per).contains("no saved registration"));

    let plan = common::stdout(&w.fleet(&["plan"]));
    assert!(plan.contains("container exited with code 75"), "{plan}");
    let out = w.apply();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}{}",
        common::stdout(&out),
        common::stderr(&out)
    );
    assert_eq!(w.fake.registration_tokens_issued(), 2);
    let deadline = Instant::now() + Duration::from_secs(30);
    while count("config.count") < 2 {
        assert!(
            Instant::now() < deadline,
            "never configured again: {}",
            lab.logs(&per)
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(w.container_names("per"), std::slice::from_ref(&per));
    assert_eq!(
        docker_ok(&["inspect", "-f", "{{.State.Status}}", &per]),
        "running"
    );
    let token = std::fs::read_to_string(records.join("config.token")).unwrap_or_default();
    let _ = std::fs::remove_file(records.join("config.token"));
    assert_eq!(token.len(), 29, "a registration token of the fake");
    drop(w);
}
