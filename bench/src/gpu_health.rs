//! Watch's replacement latency with GPU health read and not: the same pool of one-GPU runners
//! over 8 GPUs, first declared in the spec (`gpus: [UUID, ...]`: fleet reads no NVML, so no
//! health), then read through the stand-in NVML library (`gpus: auto`: devices, health signals,
//! Xid event thread). The second pays for all of NVML, not only for health, so its ratio to the
//! first bounds what health adds from above, with nothing in fleet switched off for the bench.

use std::path::Path;
use std::process::Command;

use crate::{Setup, percentile, time_replacements};

/// The stand-in NVML library (`tests/nvml_stub/nvml_stub.c`) built into a directory of its own,
/// describing `gpus` idle GPUs.
pub struct StandIn {
    _dir: tempfile::TempDir,
    uuids: Vec<String>,
}

/// Builds the stand-in and points this process at it (`FLEET_NVML_LIBRARY`,
/// `FLEET_NVML_STUB_FILE`). Called before any other thread runs: it sets the environment.
pub fn prepare(gpus: u32) -> Result<StandIn, String> {
    let dir = tempfile::tempdir().map_err(|e| format!("a directory for the stand-in: {e}"))?;
    let library = dir.path().join("libnvidia-ml.so.1");
    let source = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/nvml_stub/nvml_stub.c");
    let built = Command::new("cc")
        .args(["-shared", "-fPIC", "-pthread", "-O1", "-o"])
        .arg(&library)
        .arg(&source)
        .status()
        .map_err(|e| format!("run `cc` to build the NVML stand-in: {e}"))?;
    if !built.success() {
        return Err(format!("`cc` cannot build {}: {built}", source.display()));
    }
    let uuids: Vec<String> = (0..gpus)
        .map(|n| format!("GPU-5e1f0000-0000-4000-8000-{n:012}"))
        .collect();
    let mut description = String::from("init ok\ndriver 550.54.15\n");
    for (n, uuid) in uuids.iter().enumerate() {
        let temperature = 40 + n;
        description.push_str(&format!(
            "gpu {uuid} {} 0 0 {temperature} 0 ok NVIDIA H200\n",
            80u64 << 30
        ));
    }
    let file = dir.path().join("nvml-stub.txt");
    std::fs::write(&file, description).map_err(|e| format!("{}: {e}", file.display()))?;
    // SAFETY: main calls this before the runtime starts, while this is the only thread.
    unsafe {
        std::env::set_var(fleet::observe::gpu::LIBRARY_ENV, &library);
        std::env::set_var("FLEET_NVML_STUB_FILE", &file);
    }
    Ok(StandIn { _dir: dir, uuids })
}

/// Times `exits` replacements with the GPUs declared, then as many with them read through NVML.
pub async fn replacement(stand_in: &StandIn, exits: usize, runners: u32) -> Result<(), String> {
    let declared = format!("[{}]", stand_in.uuids.join(", "));
    let mut rows = Vec::new();
    for (kind, gpus, label) in [
        (
            "gpu-off",
            declared.as_str(),
            "declared (no NVML, no health)",
        ),
        ("gpu-on", "auto", "NVML stand-in, health on"),
    ] {
        let setup = Setup::with_gpus(kind, runners, Some(gpus)).await?;
        let outcome = time_replacements(&setup, exits, runners, false).await;
        setup.cleanup().await;
        let latencies = outcome?;
        eprintln!("{label}: {latencies:?}");
        rows.push((label, latencies));
    }
    println!(
        "| GPUs ({}) | exits timed | p50 | p95 |",
        stand_in.uuids.len()
    );
    println!("|---|---|---|---|");
    for (label, latencies) in &rows {
        println!(
            "| {label} | {} | {:.3} s | {:.3} s |",
            latencies.len(),
            percentile(latencies, 50.0),
            percentile(latencies, 95.0)
        );
    }
    let p50 = |i: usize| percentile(&rows[i].1, 50.0);
    println!("\np50 health on / off: {:.2}x", p50(1) / p50(0));
    Ok(())
}
