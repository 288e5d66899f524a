//! `scripts/gpu-check.sh`'s inventory step, on this machine without an NVIDIA GPU: fleet reads
//! the stand-in NVML, and an `nvidia-smi` stand-in (a shell script on PATH) prints the same GPUs
//! in nvidia-smi's CSV format, or different ones. The container step needs a real GPU and the
//! NVIDIA container toolkit; docs/gpus.md says where it has run.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Command, Output};

use common::nvml::{NvmlStub, StubGpu};

/// An `nvidia-smi` that answers `-L` and the script's `--query-gpu` query for `gpus`.
fn fake_nvidia_smi(dir: &Path, gpus: &[StubGpu]) {
    let mut listing = String::new();
    let mut query = String::new();
    for (i, g) in gpus.iter().enumerate() {
        listing.push_str(&format!("GPU {i}: {} (UUID: {})\n", g.name, g.uuid));
        query.push_str(&format!(
            "{i}, {}, {}, {}\n",
            g.uuid,
            g.name,
            g.memory_total_bytes >> 20
        ));
    }
    let script = format!(
        "#!/bin/sh\ncase \"$1\" in\n  -L) printf '%s' '{listing}' ;;\n  --query-gpu=index,uuid,name,memory.total) printf '%s' '{query}' ;;\n  -q) echo '    ECC Errors (stand-in)' ;;\n  *) echo \"unexpected: $*\" >&2; exit 2 ;;\nesac\n"
    );
    let path = dir.join("nvidia-smi");
    std::fs::write(&path, script).expect("write nvidia-smi");
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).expect("chmod");
}

fn run_check(dir: &Path, stub: &NvmlStub) -> Output {
    let path = format!(
        "{}:{}",
        dir.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let mut command = Command::new(concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/gpu-check.sh"));
    command
        .arg("--inventory-only")
        .env("PATH", path)
        .env("FLEET_BIN", env!("CARGO_BIN_EXE_fleet"));
    for (k, v) in stub.env() {
        command.env(k, v);
    }
    command.output().expect("run scripts/gpu-check.sh")
}

#[test]
fn the_inventory_step_passes_when_fleet_and_nvidia_smi_agree_and_fails_when_they_do_not() {
    let dir = tempfile::tempdir().expect("tempdir");
    let gpus = [StubGpu::numbered(0), StubGpu::numbered(1)];
    let stub = NvmlStub::new(dir.path(), &gpus);

    fake_nvidia_smi(dir.path(), &gpus);
    let out = run_check(dir.path(), &stub);
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        text.contains(&format!(
            "PASS  fleet gpus matches nvidia-smi: 2 GPU(s): {} {} \n",
            gpus[0].uuid, gpus[1].uuid
        )),
        "{text}"
    );
    assert!(
        text.contains("SKIP  the runner's container sees exactly its GPU: --inventory-only"),
        "{text}"
    );
    // Read-only, the health fleet reads, beside nvidia-smi's own sections.
    assert!(
        text.contains(&format!(
            "PASS  fleet reads each GPU's health: {} healthy; {} healthy; ",
            gpus[0].uuid, gpus[1].uuid
        )),
        "{text}"
    );
    assert!(text.contains("    ECC Errors (stand-in)"), "{text}");
    assert!(
        text.ends_with("gpu-check: 2 passed, 0 failed, 1 skipped\n"),
        "{text}"
    );

    // nvidia-smi sees a GPU that fleet reads differently: the step fails and shows the line.
    let mut other = gpus.clone();
    other[1].memory_total_bytes = 40 << 30;
    fake_nvidia_smi(dir.path(), &other);
    let out = run_check(dir.path(), &stub);
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(
        text.contains(
            "FAIL  fleet gpus matches nvidia-smi: index, UUID, name or memory (MiB) differ"
        ),
        "{text}"
    );
    assert!(
        text.contains(&format!("-1\t{}\tNVIDIA H200\t40960", gpus[1].uuid))
            && text.contains(&format!("+1\t{}\tNVIDIA H200\t81920", gpus[1].uuid)),
        "{text}"
    );
}
