//! The stand-in NVML library (`tests/nvml_stub/nvml_stub.c`), built with the system's C compiler
//! once per test binary; the description files it answers from; and what this machine's Docker
//! engine offers for NVIDIA GPUs, so that GPU tests assert what holds on this engine.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;

use super::{World, docker_ok, stderr, stdout};

/// The stand-in's source.
const SOURCE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/nvml_stub/nvml_stub.c");

/// Builds the stand-in once per test binary; returns the library's path.
pub fn library() -> &'static Path {
    static BUILT: OnceLock<PathBuf> = OnceLock::new();
    BUILT.get_or_init(|| {
        let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("nvml-stub");
        std::fs::create_dir_all(&dir).expect("make the stand-in's directory");
        // Test binaries run at once: each compiles to its own file, then renames it into place
        // (a process that already loaded the old file keeps it).
        let own = dir.join(format!("libnvidia-ml.so.1.{}", std::process::id()));
        let out = Command::new("cc")
            .args([
                "-shared", "-fPIC", "-pthread", "-O1", "-Wall", "-Wextra", "-Werror", "-o",
            ])
            .arg(&own)
            .arg(SOURCE)
            .output()
            .expect("run the C compiler `cc` (install gcc)");
        assert!(
            out.status.success(),
            "cannot build the NVML stand-in: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let path = dir.join("libnvidia-ml.so.1");
        std::fs::rename(&own, &path).expect("move the stand-in into place");
        path
    })
}

/// What the stand-in's `nvmlInit_v2` answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StubInit {
    Ok,
    DriverNotLoaded,
    NoPermission,
}

/// One GPU of the stand-in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StubGpu {
    pub uuid: String,
    pub name: String,
    pub memory_total_bytes: u64,
    pub memory_used_bytes: u64,
    pub utilization_percent: u32,
    pub temperature_celsius: u32,
    pub processes: u32,
    /// Every call about it answers NVML_ERROR_GPU_IS_LOST.
    pub lost: bool,
}

impl StubGpu {
    /// An 80 GiB GPU; `n` makes its UUID, utilization, memory use and temperature distinct.
    pub fn numbered(n: u32) -> StubGpu {
        StubGpu {
            uuid: format!("GPU-5e1f0000-0000-4000-8000-{n:012}"),
            name: "NVIDIA H200".into(),
            memory_total_bytes: 80 << 30,
            memory_used_bytes: u64::from(n + 1) << 30,
            utilization_percent: 10 + 20 * n,
            temperature_celsius: 40 + n,
            processes: n,
            lost: false,
        }
    }

    /// GPU `n` with nothing on it: no process, no memory in use (a GPU fleet may place on).
    pub fn idle(n: u32) -> StubGpu {
        StubGpu {
            memory_used_bytes: 0,
            processes: 0,
            ..StubGpu::numbered(n)
        }
    }
}

/// A description file for the stand-in, in a test's directory.
pub struct NvmlStub {
    pub file: PathBuf,
}

impl NvmlStub {
    /// A stand-in machine with `gpus`, initializing fine.
    pub fn new(dir: &Path, gpus: &[StubGpu]) -> NvmlStub {
        let stub = NvmlStub {
            file: dir.join("nvml-stub.txt"),
        };
        stub.write(StubInit::Ok, gpus);
        stub
    }

    /// Replaces the description; the stand-in reads it at its next initialization.
    pub fn write(&self, init: StubInit, gpus: &[StubGpu]) {
        self.write_with(init, gpus, "");
    }

    /// Replaces the description, with `extra` lines after the GPUs (`health`, `process` and
    /// `event` lines: tests/nvml_stub/nvml_stub.c).
    pub fn write_with(&self, init: StubInit, gpus: &[StubGpu], extra: &str) {
        let init = match init {
            StubInit::Ok => "ok",
            StubInit::DriverNotLoaded => "driver_not_loaded",
            StubInit::NoPermission => "no_permission",
        };
        let mut text = format!("init {init}\ndriver 550.54.15\n");
        for g in gpus {
            text.push_str(&format!(
                "gpu {} {} {} {} {} {} {} {}\n",
                g.uuid,
                g.memory_total_bytes,
                g.memory_used_bytes,
                g.utilization_percent,
                g.temperature_celsius,
                g.processes,
                if g.lost { "lost" } else { "ok" },
                g.name
            ));
        }
        text.push_str(extra);
        // Written whole, then renamed: a reader never sees half a file.
        let tmp = self.file.with_extension("tmp");
        std::fs::write(&tmp, text).expect("write the stand-in's description");
        std::fs::rename(&tmp, &self.file).expect("replace the stand-in's description");
    }

    /// The environment that makes fleet load the stand-in.
    pub fn env(&self) -> Vec<(&'static str, String)> {
        vec![
            ("FLEET_NVML_LIBRARY", library().display().to_string()),
            ("FLEET_NVML_STUB_FILE", self.file.display().to_string()),
        ]
    }
}

impl World {
    /// Runs fleet with the fake GitHub's token and the stand-in NVML.
    pub fn fleet_nvml(&self, stub: &NvmlStub, args: &[&str]) -> Output {
        let token = self.fake.token();
        let mut env: Vec<(&str, String)> = stub.env();
        env.push(("GITHUB_TOKEN", token));
        let pairs: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
        self.fleet_with_env(args, &pairs)
    }

    /// fleet.yaml with host `local` on this machine's engine, `gpus: auto` (NVML) and
    /// `gpu_mode: env`, and `pools`.
    pub fn spec_gpus_auto(&self, pools: &str) -> PathBuf {
        let path = self.spec_with(pools, "unix:///var/run/docker.sock", "auto");
        let text = std::fs::read_to_string(&path).expect("spec");
        std::fs::write(
            &path,
            text.replace("    gpus: auto\n", "    gpus: auto\n    gpu_mode: env\n"),
        )
        .expect("spec");
        path
    }

    /// Runner containers of pool `gpu` (one GPU each) holding the stand-in's first `count` GPUs.
    /// Where `gpu_mode: env` containers start on this engine (no `nvidia` runtime) fleet applies
    /// them; an engine with an `nvidia` runtime refuses the stand-in's UUIDs, so there the
    /// containers are made as fleet makes them (same labels, same ledger) and registered online.
    /// While fleet applies, the stand-in's GPUs are idle (no process, no memory in use: a GPU
    /// with those and no runner is dirty, and fleet would not place on it); the description is
    /// restored afterwards, as the runners' jobs would use the GPUs.
    pub fn gpu_runners(&self, stub: &NvmlStub, spec: &Path, count: usize) -> Vec<String> {
        if EngineNvidia::read().env_mode_starts() {
            let described = std::fs::read_to_string(&stub.file).expect("stand-in description");
            let idle: String = described
                .lines()
                .map(|line| match line.strip_prefix("gpu ") {
                    Some(rest) => {
                        let mut fields: Vec<&str> = rest.split(' ').collect();
                        fields[2] = "0"; // memory used
                        fields[5] = "0"; // processes
                        format!("gpu {}\n", fields.join(" "))
                    }
                    None => format!("{line}\n"),
                })
                .collect();
            std::fs::write(&stub.file, idle).expect("stand-in description");
            let out = self.fleet_nvml(stub, &["apply", "--auto-approve"]);
            std::fs::write(&stub.file, described).expect("stand-in description");
            assert_eq!(
                out.status.code(),
                Some(0),
                "{}{}",
                stdout(&out),
                stderr(&out)
            );
        } else {
            let config = self.config(spec, "gpu");
            let text = std::fs::read_to_string(&stub.file).expect("stand-in description");
            let uuids: Vec<&str> = text
                .lines()
                .filter_map(|l| l.strip_prefix("gpu "))
                .filter_map(|l| l.split(' ').next())
                .collect();
            for (i, uuid) in uuids.iter().take(count).enumerate() {
                let name = format!("{}-gpu-made{i:02}", self.run);
                self.add_container(&name, "gpu", &config, &[uuid], true);
                self.register(&name, true, true, false);
            }
        }
        let names = self.container_names("gpu");
        assert_eq!(names.len(), count, "{names:?}");
        names
    }

    /// The GPU ledger label of a container.
    pub fn ledger(&self, name: &str) -> String {
        self.inspect(name)["Config"]["Labels"]["fleet.gpus"]
            .as_str()
            .expect("ledger label")
            .to_string()
    }
}

/// What this machine's engine offers for NVIDIA GPUs, from `docker info` (and the toolkit's hook,
/// which makes Docker accept `driver: nvidia` device requests without any runtime configured).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EngineNvidia {
    /// A runtime named `nvidia`, or nvidia as the default runtime.
    pub runtime: bool,
    /// CDI devices of NVIDIA's (`nvidia.com/gpu=...`).
    pub cdi: bool,
    /// `nvidia-container-runtime-hook` on PATH (the daemon runs on this machine).
    pub hook: bool,
}

impl EngineNvidia {
    pub fn read() -> EngineNvidia {
        let info: serde_json::Value =
            serde_json::from_str(&docker_ok(&["info", "--format", "{{json .}}"]))
                .expect("docker info JSON");
        let runtime = info["Runtimes"]
            .as_object()
            .is_some_and(|r| r.contains_key("nvidia"))
            || info["DefaultRuntime"] == "nvidia";
        let cdi = info["DiscoveredDevices"].as_array().is_some_and(|devices| {
            devices.iter().any(|d| {
                d["Source"] == "cdi"
                    && d["ID"]
                        .as_str()
                        .is_some_and(|id| id.starts_with("nvidia.com/"))
            })
        });
        let path = std::env::var_os("PATH").unwrap_or_default();
        let hook = std::env::split_paths(&path)
            .any(|dir| dir.join("nvidia-container-runtime-hook").is_file());
        EngineNvidia { runtime, cdi, hook }
    }

    /// What fleet's plan checks before warning that the engine shows no NVIDIA support.
    pub fn shown_to_fleet(self) -> bool {
        self.runtime || self.cdi
    }

    /// Whether Docker can hand a GPU to a container in any way.
    pub fn any(self) -> bool {
        self.runtime || self.cdi || self.hook
    }

    /// Whether a `gpu_mode: env` container with made-up UUIDs starts: only without an `nvidia`
    /// runtime, which fleet uses for that mode and which refuses unknown UUIDs.
    pub fn env_mode_starts(self) -> bool {
        !self.runtime
    }
}
