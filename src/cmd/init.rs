//! `fleet init`: a starter fleet.yaml for this machine, every field explained by a comment.
//!
//! Where the runners register comes from `--repo`/`--org`, else from the `origin` remote of the
//! git repository in the current folder; the GPUs from NVML. What is written is read back with
//! [`crate::spec::parse_str`] before it is written.

use std::collections::BTreeMap;
use std::path::Path;

use super::{Done, Failure, print_stdout};
use crate::import::emit::{self, Comments};
use crate::import::place::{self, Place, Scope};
use crate::import::{sanitize_name, write_file};
use crate::observe::gpu::{GpuDevice, NvmlProblem};
use crate::spec::{Auth, Github, GpuRequest, Pool, Spec};

/// The version of the runner in fleet's reference image (ci/runner/Dockerfile).
pub const REFERENCE_RUNNER_VERSION: &str = "2.336.0";

/// `fleet init` on the command line.
#[derive(Debug, Clone, clap::Args)]
pub struct InitArgs {
    /// The repository the runners register on (default: the `origin` remote of the git
    /// repository in the current folder).
    #[arg(long, value_name = "OWNER/NAME", conflicts_with = "org")]
    pub repo: Option<String>,
    /// The organization the runners register on, instead of a repository.
    #[arg(long, value_name = "ORG")]
    pub org: Option<String>,
    /// The fleet's name (default: the repository's or the organization's name).
    #[arg(long, value_name = "NAME")]
    pub name: Option<String>,
    /// Overwrite the file when it exists.
    #[arg(long)]
    pub force: bool,
}

/// Why `fleet init` wrote nothing.
#[derive(Debug, thiserror::Error)]
pub enum InitError {
    #[error("{0}")]
    BadArgument(String),
    #[error("no --repo or --org was given, and {0}: pass --repo OWNER/NAME or --org NAME")]
    NoScope(String),
    #[error("{} exists; `fleet init --force` overwrites it. Nothing was written.", path.display())]
    Exists { path: std::path::PathBuf },
    #[error("cannot write {}: {source}", path.display())]
    Write {
        path: std::path::PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "internal error: the fleet.yaml made by fleet init does not validate (a bug; nothing was written):\n{0}"
    )]
    Invalid(String),
}

/// Runs `fleet init`, writing to `file`.
pub fn run(file: &Path, args: &InitArgs) -> Result<Done, Failure> {
    let summary = init(file, args).map_err(Failure::Init)?;
    print_stdout(&format!("{summary}\n"))
}

fn init(file: &Path, args: &InitArgs) -> Result<String, InitError> {
    let cwd = std::env::current_dir().unwrap_or_else(|_| ".".into());
    let (place, source) = decide_place(args, &cwd)?;
    let name = match &args.name {
        Some(name) if sanitize_name(name) == *name => name.clone(),
        Some(name) => {
            return Err(InitError::BadArgument(format!(
                "--name expects 1 to 24 lowercase letters, digits and '-', found {name:?}"
            )));
        }
        None => default_name(&place.scope),
    };
    let (devices, no_gpu_reason) = match crate::observe::gpu::nvml_devices() {
        Ok(devices) => (devices, None),
        Err(NvmlProblem::Absent(reason)) => (vec![], Some(reason)),
        Err(NvmlProblem::Failed(reason)) => {
            eprintln!("warning: NVML failed ({reason}); writing a fleet without a GPU pool");
            (vec![], Some(reason))
        }
    };
    let base_dir = file
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let text = render(
        &Starter {
            name: &name,
            place: &place,
            source: &source,
            devices: &devices,
            no_gpu_reason: no_gpu_reason.as_deref(),
        },
        base_dir,
    )?;
    write_file(file, &text, args.force).map_err(|source| match source.kind() {
        std::io::ErrorKind::AlreadyExists => InitError::Exists {
            path: file.to_path_buf(),
        },
        _ => InitError::Write {
            path: file.to_path_buf(),
            source,
        },
    })?;
    let pools = if devices.is_empty() {
        "pool cpu (1 runner)".to_string()
    } else {
        format!(
            "pools gpu ({n} runners, one GPU each) and cpu (1 runner)",
            n = devices.len()
        )
    };
    Ok(format!(
        "Wrote {}: fleet `{name}` for the {}, {pools}.\nNext: build the runner image (ci/runner), put its tag in defaults.image, then `fleet validate` and `fleet plan`.",
        file.display(),
        place
    ))
}

/// The fleet's default name: the repository's or the organization's.
fn default_name(scope: &Scope) -> String {
    let raw = match scope {
        Scope::Repo(repo) => repo.rsplit('/').next().unwrap_or(repo),
        Scope::Org(org) => org,
    };
    match sanitize_name(raw) {
        name if name.is_empty() => "fleet".to_string(),
        name => name,
    }
}

/// Hosts whose remotes are not GitHub.
const NOT_GITHUB: &[&str] = &[
    "gitlab.com",
    "bitbucket.org",
    "codeberg.org",
    "git.sr.ht",
    "gitea.com",
];

/// Where the runners register, and what said so.
pub fn decide_place(args: &InitArgs, cwd: &Path) -> Result<(Place, String), InitError> {
    let github = |scope| Place {
        host: place::GITHUB_COM.to_string(),
        scope,
    };
    match (&args.repo, &args.org) {
        (Some(repo), _) if place::valid_repo(repo) => {
            return Ok((github(Scope::Repo(repo.clone())), "--repo".into()));
        }
        (Some(repo), _) => {
            return Err(InitError::BadArgument(format!(
                "--repo expects OWNER/NAME, found {repo:?}"
            )));
        }
        (None, Some(org)) if place::valid_org(org) => {
            return Ok((github(Scope::Org(org.clone())), "--org".into()));
        }
        (None, Some(org)) => {
            return Err(InitError::BadArgument(format!(
                "--org expects an organization name, found {org:?}"
            )));
        }
        (None, None) => {}
    }
    let url = origin_url(cwd).map_err(InitError::NoScope)?;
    // The URL may hold credentials: messages name the remote, never print it.
    let place = place::place_from_url(&url)
        .map_err(|why| InitError::NoScope(format!("the `origin` remote cannot be used: {why}")))?;
    if NOT_GITHUB.contains(&place.host.as_str()) {
        return Err(InitError::NoScope(format!(
            "the `origin` remote is on {}, not GitHub",
            place.host
        )));
    }
    match place.scope {
        Scope::Repo(_) => Ok((place, "the git remote `origin`".into())),
        Scope::Org(_) => Err(InitError::NoScope(
            "the `origin` remote names no repository".into(),
        )),
    }
}

/// The URL of the `origin` remote of the git repository at `dir`.
pub fn origin_url(dir: &Path) -> Result<String, String> {
    let out = std::process::Command::new("git")
        .arg("-C")
        .arg(dir)
        .args(["remote", "get-url", "origin"])
        .output()
        .map_err(|e| format!("git cannot be run to read the `origin` remote ({e})"))?;
    let url = String::from_utf8_lossy(&out.stdout).trim().to_string();
    if !out.status.success() || url.is_empty() {
        return Err(format!(
            "{} is not in a git repository with an `origin` remote",
            dir.display()
        ));
    }
    Ok(url)
}

/// What the starter file is made of.
pub struct Starter<'a> {
    pub name: &'a str,
    pub place: &'a Place,
    /// What said where the runners register (`--repo`, the git remote `origin`).
    pub source: &'a str,
    pub devices: &'a [GpuDevice],
    /// Why there are no GPUs, when there are none.
    pub no_gpu_reason: Option<&'a str>,
}

/// The starter fleet.yaml, checked with the spec's own loader.
pub fn render(starter: &Starter, base_dir: &Path) -> Result<String, InitError> {
    let (spec, comments) = starter_spec(starter);
    let text = emit::render(&spec, &comments).map_err(|e| InitError::Invalid(e.to_string()))?;
    match crate::spec::parse_str(&text, base_dir) {
        Ok(read) if read == spec => Ok(text),
        Ok(_) => Err(InitError::Invalid(format!(
            "it reads back as a different spec:\n{text}"
        ))),
        Err(diagnostics) => Err(InitError::Invalid(
            diagnostics
                .iter()
                .map(|d| d.render("fleet.yaml", &text))
                .collect::<Vec<_>>()
                .join("\n"),
        )),
    }
}

fn starter_spec(s: &Starter) -> (Spec, Comments) {
    let mut c = Comments {
        header: vec![
        "fleet.yaml for this machine, written by `fleet init`. Every field: docs/spec.md; the schema: `fleet schema`.".into(),
        "Check it with `fleet validate`; `fleet plan` shows what `fleet apply` would do, and changes nothing.".into(),
        ],
        ..Comments::default()
    };
    c.above("/version", "The spec format's version. Only 1 exists.");
    let whose = if matches!(s.place.scope, Scope::Repo(_)) {
        "repository"
    } else {
        "organization"
    };
    c.above("/name", format!("The fleet's id: the {whose}'s name (--name chooses another). Every runner and container fleet owns is named <name>-<pool>-<suffix>, and fleet touches nothing without its marks; two fleets must never share a name."));
    let (repo, org) = match &s.place.scope {
        Scope::Repo(r) => {
            c.above("/github/repo", format!("Runners register on this repository (from {}). For an organization, write `org: NAME` instead.", s.source));
            (Some(r.clone()), None)
        }
        Scope::Org(o) => {
            c.above(
                "/github/org",
                format!("Runners register on this organization (from {}).", s.source),
            );
            (None, Some(o.clone()))
        }
    };
    let api_url = s.place.api_url();
    if api_url.is_some() {
        c.above("/github/api_url", format!("GitHub Enterprise Server on {}: fleet sends its token only to $GITHUB_API_URL, so set that to the same URL.", s.place.host));
    }
    c.above("/github/auth/token_env", "fleet reads its GitHub token from this variable when it runs (admin rights on the repository, or a GitHub App: docs/operations.md); no token is ever written here.");
    c.above("/defaults", "No `hosts`: one host `local`, the Docker engine on $DOCKER_HOST or /var/run/docker.sock, whose GPUs NVML reads (`gpus: auto`). More hosts: docs/hosts.md.");
    c.above(
        "/defaults",
        "Values every pool takes unless it sets its own.",
    );
    c.above("/defaults/ephemeral", "One job per runner: each gets a single-use JIT config and is replaced after its job. `false` keeps runners, and their registration in a volume of their own, between jobs.");
    c.above("/defaults/image", "fleet's reference runner image, built from ci/runner in fleet's repository (ci/runner/README.md): build it, push it where this host can pull it, and put its tag here. Any image whose entrypoint follows the container contract (docs/apply.md) works.");
    let owner = match &s.place.scope {
        Scope::Repo(r) => r.split('/').next().unwrap_or(r).to_lowercase(),
        Scope::Org(o) => o.to_lowercase(),
    };
    let defaults = Pool {
        ephemeral: Some(true),
        image: Some(format!(
            "ghcr.io/{owner}/arch-runner:{REFERENCE_RUNNER_VERSION}"
        )),
        ..Pool::default()
    };
    let mut pools = BTreeMap::new();
    if !s.devices.is_empty() {
        pools.insert("gpu".to_string(), gpu_pool(s.devices, &mut c));
        c.order
            .insert("/pools".into(), vec!["gpu".into(), "cpu".into()]);
    }
    c.above("/pools/cpu", "Jobs that need no GPU.");
    c.above(
        "/pools/cpu/count",
        "Runners kept, idle and busy together: raise it to run more jobs at once.",
    );
    c.above("/pools/cpu/labels", "Workflows choose these runners with `runs-on: [self-hosted, cpu]` (fleet adds self-hosted, Linux and X64).");
    pools.insert(
        "cpu".to_string(),
        Pool {
            count: Some(1),
            labels: Some(vec!["cpu".into()]),
            ..Pool::default()
        },
    );
    if s.devices.is_empty() {
        no_gpu_comment(&mut c, s.no_gpu_reason);
    }
    let spec = Spec {
        version: 1,
        name: s.name.to_string(),
        github: Github {
            repo,
            org,
            api_url,
            auth: Some(Auth {
                token_env: Some(crate::spec::DEFAULT_TOKEN_ENV.into()),
                app: None,
            }),
        },
        hosts: None,
        defaults: Some(defaults),
        pools,
        gpu_health: None,
    };
    (spec, c)
}

fn gpu_pool(devices: &[GpuDevice], c: &mut Comments) -> Pool {
    let listed: Vec<String> = devices
        .iter()
        .map(|d| format!("{} {} ({})", d.index, d.name, d.uuid))
        .collect();
    c.above(
        "/pools/gpu",
        format!(
            "{} GPU(s) found through NVML on this machine: {}.",
            devices.len(),
            listed.join(", ")
        ),
    );
    c.above("/pools/gpu/count", "One runner per GPU.");
    c.above("/pools/gpu/gpus", "Each runner gets one GPU of its own, by UUID, that no other runner holds. The host needs the NVIDIA driver and nvidia-container-toolkit (docs/gpu-host.md).");
    c.above(
        "/pools/gpu/labels",
        "Workflows choose these runners with `runs-on: [self-hosted, gpu]`.",
    );
    Pool {
        count: Some(u32::try_from(devices.len()).unwrap_or(u32::MAX).min(1000)),
        labels: Some(vec!["gpu".into(), "nvidia".into()]),
        gpus: Some(GpuRequest::Count(1)),
        ..Pool::default()
    }
}

fn no_gpu_comment(c: &mut Comments, reason: Option<&str>) {
    let why = reason.map(|r| format!(" ({r})")).unwrap_or_default();
    c.after("/pools", format!("No NVIDIA GPU was found through NVML on this machine{why}. Once the host has the NVIDIA driver and nvidia-container-toolkit (docs/gpu-host.md) and `fleet gpus` lists its GPUs, add a pool with a GPU per runner:"));
    for line in [
        "   gpu:",
        "     count: 1",
        "     gpus: 1",
        "     labels: [gpu, nvidia]",
    ] {
        c.after("/pools", line);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn device(index: u32) -> GpuDevice {
        GpuDevice {
            index,
            uuid: format!("GPU-{index}0000000-0000-0000-0000-000000000000"),
            name: "NVIDIA H200".into(),
            memory_total_bytes: 1,
            memory_used_bytes: 0,
            utilization_percent: None,
            temperature_celsius: None,
            processes: None,
        }
    }

    fn starter(devices: &[GpuDevice], reason: Option<&'static str>) -> String {
        let place = Place {
            host: place::GITHUB_COM.into(),
            scope: Scope::Repo("Acme/zquic".into()),
        };
        let s = Starter {
            name: "zquic",
            place: &place,
            source: "--repo",
            devices,
            no_gpu_reason: reason,
        };
        render(&s, Path::new(".")).expect("a valid starter")
    }

    #[test]
    fn gpus_make_a_gpu_pool_sized_to_them() {
        let text = starter(&[device(0), device(1)], None);
        let spec = crate::spec::parse_str(&text, Path::new(".")).expect("valid");
        let gpu = &spec.pools["gpu"];
        assert_eq!(gpu.count, Some(2));
        assert_eq!(gpu.gpus, Some(GpuRequest::Count(1)));
        assert_eq!(spec.pools["cpu"].count, Some(1));
        assert!(
            text.contains("GPU-00000000-0000-0000-0000-000000000000"),
            "{text}"
        );
        assert!(
            text.contains("image: ghcr.io/acme/arch-runner:2.336.0"),
            "{text}"
        );
    }

    #[test]
    fn without_gpus_a_cpu_pool_and_how_to_add_gpus() {
        let text = starter(&[], Some("NVML is not available"));
        let spec = crate::spec::parse_str(&text, Path::new(".")).expect("valid");
        assert_eq!(spec.pools.keys().collect::<Vec<_>>(), ["cpu"]);
        assert!(
            text.contains(
                "# No NVIDIA GPU was found through NVML on this machine (NVML is not available)"
            ),
            "{text}"
        );
        assert!(text.contains("  #     gpus: 1\n"), "{text}");
    }

    #[test]
    fn every_field_has_a_comment() {
        let text = starter(&[device(0)], None);
        let lines: Vec<&str> = text.lines().collect();
        for (i, line) in lines.iter().enumerate() {
            let comment_or_blank = line.trim_start().starts_with('#') || line.trim().is_empty();
            let field =
                !comment_or_blank && (line.trim_end().ends_with(':') || line.contains(": "));
            let commented = lines[..i]
                .last()
                .is_some_and(|l| l.trim_start().starts_with('#'));
            let plain_parent = matches!(line.trim(), "github:" | "auth:" | "pools:");
            assert!(
                !field || commented || plain_parent,
                "line {} has no comment: {line}\n{text}",
                i + 1
            );
        }
    }
}
