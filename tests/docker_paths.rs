//! What fleet asks a Docker engine for when names are hostile, and what the GPU probe asks it
//! to run: a recording engine on 127.0.0.1 (plain HTTP, as `insecure` allows on loopback)
//! answers `/version`, an image inspect for `evil:1` and a container create, 404 to
//! everything else, and keeps every request line and body. A name from the spec or from an
//! answer must stay one path segment: `..`, `/`, `?` and `#` never choose another request
//! (docs/security.md, "Names are grammars"; "The GPU probe runs the host's tool").

use std::sync::{Arc, Mutex};

use fleet::docker::DockerHost;
use fleet::docker::endpoint::{ConnectOptions, Endpoint};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpListener;

/// A fake engine that records `METHOD PATH` of each request.
type Seen = Arc<Mutex<Vec<String>>>;

async fn recording_engine() -> (String, Seen) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let address = listener.local_addr().expect("address");
    let seen = Arc::new(Mutex::new(Vec::new()));
    let record = seen.clone();
    tokio::spawn(async move {
        while let Ok((socket, _)) = listener.accept().await {
            tokio::spawn(serve(socket, record.clone()));
        }
    });
    (format!("tcp://{address}"), seen)
}

/// An image whose environment would preload the attacker's library into `nvidia-smi`.
const EVIL_IMAGE: &str = r#"{"Id":"sha256:0123","Config":{"Env":["PATH=/evil/bin:/usr/bin","LD_PRELOAD=/evil/forge.so"],"Entrypoint":["nvidia-smi"]}}"#;

async fn serve(socket: tokio::net::TcpStream, seen: Seen) {
    let mut reader = BufReader::new(socket);
    loop {
        let mut request = String::new();
        if reader.read_line(&mut request).await.unwrap_or(0) == 0 {
            return;
        }
        let mut length = 0usize;
        loop {
            let mut header = String::new();
            if reader.read_line(&mut header).await.unwrap_or(0) == 0 {
                return;
            }
            if header.trim().is_empty() {
                break;
            }
            if let Some((name, value)) = header.split_once(':')
                && name.eq_ignore_ascii_case("content-length")
            {
                length = value.trim().parse().unwrap_or(0);
            }
        }
        let mut body = vec![0; length];
        if reader.read_exact(&mut body).await.is_err() {
            return;
        }
        let mut parts = request.split_whitespace();
        let (method, path) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
        if !path.ends_with("/version") {
            let mut line = format!("{method} {path}");
            if !body.is_empty() {
                line = format!("{line} {}", String::from_utf8_lossy(&body));
            }
            seen.lock().expect("lock").push(line);
        }
        let (status, answer) = if path.ends_with("/version") {
            (
                "200 OK",
                r#"{"ApiVersion":"1.41","MinAPIVersion":"1.12","Version":"20.10.0"}"#,
            )
        } else if path.starts_with("/images/evil%3A1/json") {
            ("200 OK", EVIL_IMAGE)
        } else if path.starts_with("/containers/create") {
            ("201 Created", r#"{"Id":"0123abcd","Warnings":[]}"#)
        } else {
            ("404 Not Found", r#"{"message":"no such object"}"#)
        };
        let response = format!(
            "HTTP/1.1 {status}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{answer}",
            answer.len()
        );
        if reader
            .get_mut()
            .write_all(response.as_bytes())
            .await
            .is_err()
        {
            return;
        }
    }
}

async fn connect(url: &str) -> DockerHost {
    let endpoint = Endpoint {
        insecure: true,
        ..Endpoint::new(url)
    };
    DockerHost::connect_to("rec", &endpoint, &ConnectOptions::default())
        .await
        .expect("connect to the recording engine")
}

#[tokio::test]
async fn hostile_names_stay_one_path_segment() {
    let (url, seen) = recording_engine().await;
    let host = connect(&url).await;
    let read = host.read();
    for image in [
        "../containers/json?all=1&x=",
        "../containers/0123abcd/export?x=",
        "../distribution/evil.example/x/json#",
        "../events?x=",
        "ghcr.io/acme/runner:2.321.0",
    ] {
        assert!(
            !read.has_image(image).await.expect("inspect image"),
            "{image}"
        );
    }
    assert!(
        !read
            .has_network("../volumes?x=")
            .await
            .expect("inspect network")
    );
    host.write()
        .remove_owned_volume("../containers/0123abcd?force=1#", "zq")
        .await
        .expect("a missing volume is fine");
    // bollard leaves the version out of the path when it agrees with the engine's own.
    let v = "";
    let expected = [
        format!("GET {v}/images/..%2Fcontainers%2Fjson%3Fall%3D1%26x%3D/json"),
        format!("GET {v}/images/..%2Fcontainers%2F0123abcd%2Fexport%3Fx%3D/json"),
        format!("GET {v}/images/..%2Fdistribution%2Fevil.example%2Fx%2Fjson%23/json"),
        format!("GET {v}/images/..%2Fevents%3Fx%3D/json"),
        format!("GET {v}/images/ghcr.io%2Facme%2Frunner%3A2.321.0/json"),
        format!("GET {v}/networks/..%2Fvolumes%3Fx%3D?verbose=false"),
        format!("GET {v}/volumes/..%2Fcontainers%2F0123abcd%3Fforce%3D1%23"),
    ];
    assert_eq!(*seen.lock().expect("lock"), expected);
}

/// `.` and `..` are steps in a URL however they are encoded: refused, and nothing is sent.
#[tokio::test]
async fn dot_names_are_refused_before_any_request() {
    let (url, seen) = recording_engine().await;
    let host = connect(&url).await;
    for name in ["..", ".", ""] {
        let e = host.read().has_image(name).await.expect_err(name);
        assert!(e.to_string().contains("refusing"), "{e}");
        assert!(host.read().has_network(name).await.is_err(), "{name:?}");
        assert!(
            host.write().remove_owned_volume(name, "zq").await.is_err(),
            "{name:?}"
        );
    }
    assert_eq!(*seen.lock().expect("lock"), Vec::<String>::new());
}

/// The probe runs the host's `nvidia-smi` by its path, as `nobody`, with the image's variables
/// blanked, and is removed with its anonymous volumes: an image that ships its own
/// `nvidia-smi` and an `LD_PRELOAD` gets neither run.
#[tokio::test]
async fn the_gpu_probe_runs_the_hosts_tool_without_the_images_environment() {
    let (url, seen) = recording_engine().await;
    let host = connect(&url).await;
    // The fake engine cannot start it: the probe fails after its create, and removes it.
    host.run_gpu_probe("zq", "evil:1")
        .await
        .expect_err("no start");
    let seen = seen.lock().expect("lock").clone();
    let create = seen
        .iter()
        .find(|l| l.starts_with("POST /containers/create"))
        .unwrap_or_else(|| panic!("no create in {seen:?}"));
    let body: serde_json::Value = serde_json::from_str(
        create
            .split_once(' ')
            .and_then(|(_, r)| r.split_once(' '))
            .map(|(_, b)| b)
            .expect("a body"),
    )
    .expect("json body");
    assert_eq!(
        body["Entrypoint"],
        serde_json::json!(["/usr/bin/nvidia-smi"])
    );
    assert_eq!(body["User"], "65534:65534");
    assert_eq!(body["Env"], serde_json::json!(["LD_PRELOAD=", "PATH="]));
    assert!(
        seen.iter().any(
            |l| l.starts_with("DELETE /containers/fleet-gpu-probe-zq-") && l.contains("v=true")
        ),
        "{seen:?}"
    );
}

/// Without FLEET_GPU_PROBE_IMAGE, `gpus: auto` on a remote engine is unavailable, and says
/// why: the pool's image (the pull request's) is never run, and the engine is asked nothing.
#[tokio::test]
async fn no_probe_runs_a_pools_image() {
    use fleet::observe::inventory::{GpuProbe, ProbeWhen};
    let (url, seen) = recording_engine().await;
    let host = connect(&url).await;
    let spec = fleet::spec::parse_str(
        "version: 1\nname: zq\ngithub:\n  repo: acme/zq\nhosts:\n  far:\n    docker: tcp://127.0.0.1:2375\n    insecure: true\n    gpus: auto\npools:\n  gpu:\n    count: 1\n    gpus: 1\n    image: evil:1\n",
        std::path::Path::new("."),
    )
    .expect("spec");
    let pools = spec.resolved_pools();
    let inventory = GpuProbe::new(None, std::time::Duration::ZERO)
        .inventory(
            "zq",
            "far",
            &fleet::spec::HostGpus::Auto,
            &host,
            &pools,
            ProbeWhen::Needed,
        )
        .await;
    let reason = format!("{:?}", inventory.inventory.source);
    assert!(reason.contains("FLEET_GPU_PROBE_IMAGE"), "{reason}");
    assert!(reason.contains("a pool's image is never used"), "{reason}");
    assert_eq!(*seen.lock().expect("lock"), Vec::<String>::new());
}
