//! A tiny runner image for fleet's tests and offline demo, built locally because no registry
//! can be reached: `FROM scratch` plus the host's static busybox (Debian: busybox-static).
//! Its "runner" says who it is and waits; tests and the demo play the rest of its life.

use std::path::Path;
use std::process::Command;
use std::sync::OnceLock;

/// The image's name. It is the one image fleet's tests leave on the engine.
pub const RUNNER_IMAGE: &str = "fleet-busybox-runner:2";

/// With `secrets: stdin`, the "runner" keeps the secret line fleet sends on its standard input
/// in the root-only file /run/fleet/registration, where `secrets: file` puts it, so that tests
/// read it there whatever the delivery.
const DOCKERFILE: &str = "FROM scratch\n\
COPY busybox /bin/busybox\n\
COPY busybox /bin/sh\n\
CMD if [ \"$FLEET_SECRET_STDIN\" = 1 ] && [ ! -e /run/fleet/registration ]; then \
/bin/busybox mkdir -p -m 700 /run/fleet; \
(umask 077; /bin/busybox timeout 5 /bin/busybox head -n 1 > /run/fleet/registration); fi; \
echo runner $RUNNER_NAME of pool $FLEET_POOL ready; exec /bin/busybox sleep 86400\n";

fn docker(args: &[&str]) -> Result<String, String> {
    let out = Command::new("docker")
        .args(args)
        .output()
        .map_err(|e| format!("cannot run the docker CLI: {e}"))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
    } else {
        Err(format!(
            "docker {} failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

/// Builds [`RUNNER_IMAGE`] unless the engine has it; once per process. Returns its name.
pub fn ensure_runner_image() -> Result<&'static str, String> {
    static BUILT: OnceLock<Result<(), String>> = OnceLock::new();
    BUILT.get_or_init(build).clone().map(|()| RUNNER_IMAGE)
}

fn build() -> Result<(), String> {
    if docker(&["image", "inspect", RUNNER_IMAGE]).is_ok() {
        return Ok(());
    }
    let busybox = ["/bin/busybox", "/usr/bin/busybox"]
        .into_iter()
        .map(Path::new)
        .find(|p| p.exists())
        .ok_or("no static busybox on this machine: install Debian's busybox-static")?;
    let dir = std::env::temp_dir().join(format!("fleet-runner-image-{}", std::process::id()));
    std::fs::create_dir_all(&dir).map_err(|e| format!("cannot make {}: {e}", dir.display()))?;
    let result = (|| {
        std::fs::copy(busybox, dir.join("busybox"))
            .map_err(|e| format!("cannot copy {}: {e}", busybox.display()))?;
        std::fs::write(dir.join("Dockerfile"), DOCKERFILE)
            .map_err(|e| format!("cannot write the Dockerfile: {e}"))?;
        let context = dir.to_str().ok_or("temporary path is not UTF-8")?;
        docker(&["build", "-q", "-t", RUNNER_IMAGE, context]).map(|_| ())
    })();
    let _ = std::fs::remove_dir_all(&dir);
    result
}
