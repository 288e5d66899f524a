//! Several Docker engines through `fleet::endpoint`: extra engines on this machine, reached over
//! a Unix socket, plain TCP on loopback (`insecure`), TLS, and SSH to a test sshd. Each test
//! starts what it needs (tests/common/engines.rs) and removes it afterwards.

mod common;

use std::collections::HashMap;
use std::path::Path;
use std::time::{Duration, Instant};

use bollard::Docker;
use bollard::models::{ContainerCreateBody, HostConfig};
use bollard::query_parameters::{
    CreateContainerOptionsBuilder, ListContainersOptionsBuilder, RemoveContainerOptionsBuilder,
    StartContainerOptions,
};
use common::engines::{Engine, Listen, RunDir, Sshd, free_port, processes_naming};
use common::{RUN_LABEL, TEST_IMAGE, engine_with_image, tls_listener};
use fleet::docker::endpoint::{
    ConnectOptions, Endpoint, EndpointError, TlsFiles, connect, connect_with,
};

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime")
}

/// Names of the containers that `docker` lists, sorted.
async fn listed_names(docker: &Docker) -> Vec<String> {
    let options = ListContainersOptionsBuilder::new().all(true).build();
    let mut names: Vec<String> = docker
        .list_containers(Some(options))
        .await
        .expect("list containers")
        .into_iter()
        .flat_map(|c| c.names.unwrap_or_default())
        .map(|n| n.trim_start_matches('/').to_string())
        .collect();
    names.sort();
    names
}

/// Through `docker`: lists, creates and starts a labelled test-image container (network none),
/// checks that it runs on `engine` (and not on the main engine), and removes it.
fn run_probe_container(rt: &tokio::runtime::Runtime, docker: &Docker, engine: &Engine, host: &str) {
    let run = engine.run_dir().id().to_string();
    let name = format!("{run}-{host}-probe");
    let by_run = format!("label={RUN_LABEL}={run}");
    let body = ContainerCreateBody {
        image: Some(TEST_IMAGE.to_string()),
        labels: Some(HashMap::from([(RUN_LABEL.to_string(), run.clone())])),
        host_config: Some(HostConfig {
            network_mode: Some("none".into()),
            ..Default::default()
        }),
        ..Default::default()
    };
    rt.block_on(async {
        assert_eq!(listed_names(docker).await, Vec::<String>::new());
        let options = CreateContainerOptionsBuilder::new().name(&name).build();
        docker
            .create_container(Some(options), body)
            .await
            .expect("create the probe container");
        docker
            .start_container(&name, None::<StartContainerOptions>)
            .await
            .expect("start the probe container");
        assert_eq!(listed_names(docker).await, vec![name.clone()]);
        let state = docker
            .inspect_container(&name, None)
            .await
            .expect("inspect the probe container")
            .state
            .and_then(|s| s.running);
        assert_eq!(state, Some(true));
    });
    let on_engine = engine.docker_ok(&["ps", "--filter", &by_run, "--format", "{{.Names}}"]);
    assert_eq!(on_engine, name, "the probe runs on the extra engine");
    assert_eq!(
        common::docker_ok(&["ps", "-a", "-q", "--filter", &by_run]),
        ""
    );
    rt.block_on(async {
        let options = RemoveContainerOptionsBuilder::new().force(true).build();
        docker
            .remove_container(&name, Some(options))
            .await
            .expect("remove the probe container");
        assert_eq!(listed_names(docker).await, Vec::<String>::new());
    });
}

/// More requests at once than sshd's MaxSessions (10 by default): containers that each sleep a
/// few seconds, created, started and waited for all at once; all exit 0, then are removed.
fn many_requests_at_once(rt: &tokio::runtime::Runtime, docker: &Docker, run: &str) {
    use futures_util::{StreamExt, future::join_all};
    let names: Vec<String> = (0..12).map(|i| format!("{run}-wait-{i}")).collect();
    let body = || ContainerCreateBody {
        image: Some(TEST_IMAGE.to_string()),
        cmd: Some(vec!["/bin/busybox".into(), "sleep".into(), "3".into()]),
        labels: Some(HashMap::from([(RUN_LABEL.to_string(), run.to_string())])),
        host_config: Some(HostConfig {
            network_mode: Some("none".into()),
            ..Default::default()
        }),
        ..Default::default()
    };
    rt.block_on(async {
        let started = join_all(names.iter().map(|name| async move {
            let options = CreateContainerOptionsBuilder::new().name(name).build();
            docker.create_container(Some(options), body()).await?;
            docker
                .start_container(name, None::<StartContainerOptions>)
                .await
        }))
        .await;
        for result in started {
            result.expect("create and start over SSH");
        }
        let waited = join_all(
            names
                .iter()
                .map(|name| async move { docker.wait_container(name, None).next().await }),
        )
        .await;
        for exit in waited {
            let exit = exit.expect("an answer").expect("wait over SSH");
            assert_eq!(exit.status_code, 0);
        }
        let removed = join_all(names.iter().map(|name| async move {
            let options = RemoveContainerOptionsBuilder::new().force(true).build();
            docker.remove_container(name, Some(options)).await
        }))
        .await;
        for result in removed {
            result.expect("remove over SSH");
        }
    });
}

fn connect_error(
    rt: &tokio::runtime::Runtime,
    host: &str,
    endpoint: &Endpoint,
    options: &ConnectOptions,
) -> EndpointError {
    match rt.block_on(connect_with(host, endpoint, options)) {
        Ok(_) => panic!("{endpoint} connected"),
        Err(e) => {
            // What an operator would read, for whoever runs this with --nocapture.
            eprintln!("refused as expected: {e}");
            e
        }
    }
}

#[test]
fn a_unix_engine_and_its_loopback_port_answer_and_are_refused_while_stopped() {
    let rt = runtime();
    let run = RunDir::new();
    let port = free_port();
    let mut engine = engine_with_image(&run, "plain", Listen::PlainLoopback { port });
    let unix = Endpoint::new(engine.unix_url());
    let docker = rt
        .block_on(connect("plain", &unix))
        .expect("connect over the socket");
    run_probe_container(&rt, &docker, &engine, "plain");

    let tcp_url = engine.tcp_url().expect("a TCP port");
    let loopback = Endpoint {
        insecure: true,
        ..Endpoint::new(tcp_url.clone())
    };
    let plain_tcp = rt
        .block_on(connect("plain", &loopback))
        .expect("connect on loopback");
    assert_eq!(rt.block_on(listed_names(&plain_tcp)), Vec::<String>::new());
    let not_insecure = Endpoint::new(tcp_url.clone());
    let refused = connect_error(&rt, "plain", &not_insecure, &ConnectOptions::default());
    assert!(
        matches!(refused, EndpointError::Invalid { .. }),
        "{refused:?}"
    );

    engine.stop();
    for endpoint in [&unix, &loopback] {
        let e = connect_error(&rt, "plain", endpoint, &ConnectOptions::default());
        assert!(matches!(e, EndpointError::Unreachable { .. }), "{e:?}");
        let message = e.to_string();
        let expected = format!(
            "host `plain`: the Docker engine at {} does not answer: ",
            endpoint.url
        );
        assert!(message.starts_with(&expected), "{message}");
    }

    engine.start_again();
    eprintln!(
        "engine `plain`: answered {:.2}s after its restart",
        engine.startup.as_secs_f64()
    );
    let again = rt
        .block_on(connect("plain", &unix))
        .expect("reachable again");
    assert_eq!(rt.block_on(listed_names(&again)), Vec::<String>::new());
    let again_tcp = rt
        .block_on(connect("plain", &loopback))
        .expect("reachable again on TCP");
    assert_eq!(rt.block_on(listed_names(&again_tcp)), Vec::<String>::new());
}

fn tls_endpoint(url: &str, files: TlsFiles) -> Endpoint {
    Endpoint {
        tls: Some(files),
        ..Endpoint::new(url)
    }
}

#[test]
fn a_tls_engine_answers_fleets_certificate_and_nothing_else() {
    let rt = runtime();
    let run = RunDir::new();
    let (listen, certs, cert_dir) = tls_listener(&run);
    let engine = engine_with_image(&run, "tls", listen);
    let url = engine.tcp_url().expect("a TCP port");
    let docker = rt
        .block_on(connect("tower", &tls_endpoint(&url, certs.client_files())))
        .expect("connect over TLS");
    run_probe_container(&rt, &docker, &engine, "tower");

    let before = engine.containers();
    let options = ConnectOptions::default();
    let wrong_ca = TlsFiles {
        ca: certs.wrong_ca.clone(),
        ..certs.client_files()
    };
    let e = connect_error(&rt, "tower", &tls_endpoint(&url, wrong_ca), &options);
    assert!(matches!(e, EndpointError::Tls { .. }), "{e:?}");
    assert_eq!(
        e.to_string(),
        format!(
            "host `tower`: the TLS handshake with the Docker engine at {url} failed: invalid peer certificate: UnknownIssuer (the engine's certificate is not signed by the CA in `tls.ca`)"
        )
    );

    let missing_key = TlsFiles {
        key: cert_dir.join("missing-key.pem"),
        ..certs.client_files()
    };
    let e = connect_error(&rt, "tower", &tls_endpoint(&url, missing_key), &options);
    let message = e.to_string();
    let expected = format!(
        "host `tower`: cannot use the client key {}/missing-key.pem for {url}: not usable (the reason is in fleet's log: run with -v)",
        cert_dir.display()
    );
    assert!(message.starts_with(&expected), "{message}");

    let stranger = TlsFiles {
        cert: certs.stranger_cert.clone(),
        key: certs.stranger_key.clone(),
        ..certs.client_files()
    };
    let e = connect_error(&rt, "tower", &tls_endpoint(&url, stranger), &options);
    assert!(matches!(e, EndpointError::Tls { .. }), "{e:?}");
    let message = e.to_string();
    assert!(
        message.contains("the engine refused fleet's client certificate"),
        "{message}"
    );
    assert_eq!(engine.containers(), before, "nothing changed on the engine");
}

/// Waits until no process names `needle` (the SSH master of a dropped client, for instance).
fn wait_for_no_process_naming(needle: &Path) -> Vec<u32> {
    let needle = needle.to_string_lossy();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let left = processes_naming(&needle);
        if left.is_empty() || Instant::now() > deadline {
            return left;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn an_engine_behind_ssh_answers_and_a_changed_host_key_is_refused() {
    let rt = runtime();
    let run = RunDir::new();
    let mut engine = engine_with_image(&run, "remote", Listen::Unix);
    let sshd = Sshd::start(&run, &engine.unix_url());
    eprintln!(
        "sshd: answered {:.2}s after start",
        sshd.startup.as_secs_f64()
    );
    let endpoint = Endpoint::new(sshd.url());
    let options = ConnectOptions {
        ssh_config: Some(sshd.client_config.clone()),
        ..ConnectOptions::default()
    };
    let started = Instant::now();
    let docker = rt
        .block_on(connect_with("pve-vm", &endpoint, &options))
        .unwrap_or_else(|e| panic!("{e}\nsshd's log:\n{}", sshd.log()));
    eprintln!(
        "ssh: connected and pinged in {:.2}s",
        started.elapsed().as_secs_f64()
    );
    run_probe_container(&rt, &docker, &engine, "pve-vm");
    let started = Instant::now();
    many_requests_at_once(&rt, &docker, run.id());
    eprintln!(
        "ssh: 12 containers at once in {:.2}s",
        started.elapsed().as_secs_f64()
    );
    drop(docker);
    let masters = wait_for_no_process_naming(&sshd.client_config);
    assert_eq!(
        masters,
        Vec::<u32>::new(),
        "the SSH master ends with its client"
    );

    let before = engine.containers();
    let known_hosts = std::fs::read_to_string(sshd.known_hosts()).expect("known_hosts");
    let mismatch = ConnectOptions {
        ssh_config: Some(sshd.wrong_host_key_config.clone()),
        ..ConnectOptions::default()
    };
    let e = connect_error(&rt, "pve-vm", &endpoint, &mismatch);
    assert!(matches!(e, EndpointError::Ssh { .. }), "{e:?}");
    let message = e.to_string();
    let expected = format!(
        "host `pve-vm`: ssh could not connect to {}; ssh said:\n",
        endpoint.url
    );
    assert!(message.starts_with(&expected), "{message}");
    assert!(
        message.contains("REMOTE HOST IDENTIFICATION HAS CHANGED"),
        "{message}"
    );
    assert!(
        message.ends_with("Host key verification failed."),
        "{message}"
    );
    assert_eq!(engine.containers(), before, "nothing changed on the engine");
    assert_eq!(
        std::fs::read_to_string(sshd.known_hosts()).expect("known_hosts"),
        known_hosts
    );

    engine.stop();
    let e = connect_error(&rt, "pve-vm", &endpoint, &options);
    assert!(matches!(e, EndpointError::RemoteDocker { .. }), "{e:?}");
    let message = e.to_string();
    let expected = format!(
        "host `pve-vm`: ssh reached {}, but `docker` there failed (exit status 1):\n",
        endpoint.url
    );
    assert!(message.starts_with(&expected), "{message}");
    assert!(
        message.contains("Cannot connect to the Docker daemon"),
        "{message}"
    );
    assert_eq!(
        wait_for_no_process_naming(&sshd.client_config),
        Vec::<u32>::new()
    );
}

/// The stand-in for the NVIDIA toolkit's prestart hook: it bind-mounts the "host's"
/// `nvidia-smi` (`host_tool`) over `/usr/bin/nvidia-smi` in the container, in the container's
/// mount namespace, as the real hook does for the host's binaries.
fn fake_nvidia_hook(host_tool: &Path) -> String {
    format!(
        r#"#!/bin/sh
state=$(cat)
pid=$(printf '%s' "$state" | tr -d '\n\t ' | sed -n 's/.*"pid":\([0-9]*\).*/\1/p')
bundle=$(printf '%s' "$state" | tr -d '\n\t ' | sed -n 's/.*"bundle":"\([^"]*\)".*/\1/p')
root=$(tr -d '\n\t ' < "$bundle/config.json" | sed -n 's/.*"root":{{"path":"\([^"]*\)".*/\1/p')
case "$root" in /*) ;; *) root="$bundle/$root" ;; esac
exec nsenter -t "$pid" -m sh -c "mkdir -p '$root/usr/bin' && touch '$root/usr/bin/nvidia-smi' && mount --bind '{}' '$root/usr/bin/nvidia-smi'"
"#,
        host_tool.display()
    )
}

/// A probe image that ships its own `nvidia-smi` (in `/usr/bin` and first on its `PATH`) and
/// an `LD_PRELOAD`, on an extra engine reached over TLS whose toolkit mounts the host's
/// `nvidia-smi`: the probe runs the host's, as `nobody`, with `LD_PRELOAD` blanked, so the
/// image cannot forge the inventory (docs/security.md, "The GPU probe runs the host's tool").
#[test]
fn a_probe_image_with_its_own_nvidia_smi_runs_the_hosts_over_tls() {
    use std::os::unix::fs::PermissionsExt;
    let rt = runtime();
    let run = RunDir::new();
    let toolkit = run.path().join("toolkit");
    std::fs::create_dir(&toolkit).expect("toolkit folder");
    let host_tool = toolkit.join("host-nvidia-smi");
    std::fs::write(
        &host_tool,
        "#!/bin/sh\nuid=?\nwhile read k v rest; do [ \"$k\" = Uid: ] && uid=$v; done < /proc/self/status\necho \"0, GPU-host-0000, host uid=$uid preload=$LD_PRELOAD., 1024, 0, 34, 0, 0, No, No, No, 0x0000000000000000\"\n",
    )
    .expect("write the host's nvidia-smi");
    let hook = toolkit.join("nvidia-container-runtime-hook");
    std::fs::write(&hook, fake_nvidia_hook(&host_tool)).expect("write the hook");
    for file in [&host_tool, &hook] {
        std::fs::set_permissions(file, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    }
    let (listen, certs, _) = tls_listener(&run);
    let image = common::test_image();
    let engine = Engine::start_with_path(&run, "gpu-tls", listen, Some(toolkit.clone()));
    engine.load_image(image);

    // The probe image: its own nvidia-smi in /usr/bin and in /evil/bin, first on its PATH.
    let builder = format!("{}-evil-build", run.id());
    let forge = "#!/bin/sh\\necho '0, GPU-forged-0000, forged, 1'\\n";
    engine.docker_ok(&[
        "run",
        "--name",
        &builder,
        "--network",
        "none",
        image,
        "/bin/sh",
        "-c",
        &format!(
            "/bin/busybox mkdir -p /usr/bin /evil/bin && printf \"{forge}\" > /usr/bin/nvidia-smi && printf \"{forge}\" > /evil/bin/nvidia-smi && /bin/busybox chmod 755 /usr/bin/nvidia-smi /evil/bin/nvidia-smi"
        ),
    ]);
    let evil = format!("{}-evil-probe:1", run.id());
    engine.docker_ok(&[
        "commit",
        "--change",
        "ENV PATH=/evil/bin:/usr/bin:/bin",
        "--change",
        "ENV LD_PRELOAD=/evil/forge.so",
        &builder,
        &evil,
    ]);
    engine.docker_ok(&["rm", "-f", &builder]);

    let url = engine.tcp_url().expect("a TCP port");
    let endpoint = tls_endpoint(&url, certs.client_files());
    let host = rt
        .block_on(fleet::docker::DockerHost::connect_to(
            "tower",
            &endpoint,
            &ConnectOptions::default(),
        ))
        .expect("connect over TLS");
    let gpus = rt
        .block_on(host.run_gpu_probe("zq", &evil))
        .expect("the probe answers");
    assert_eq!(gpus.len(), 1, "{gpus:?}");
    assert_eq!(gpus[0].info.uuid, "GPU-host-0000", "{gpus:?}");
    assert_eq!(gpus[0].info.name, "host uid=65534 preload=.", "{gpus:?}");
    // The probe container is gone, with its anonymous volumes.
    assert_eq!(engine.docker_ok(&["ps", "-a", "-q"]), "");
    assert_eq!(engine.docker_ok(&["volume", "ls", "-q"]), "");
}
