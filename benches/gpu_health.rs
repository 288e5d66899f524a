//! What reading GPU health adds to an observation: 8 GPUs through the stand-in NVML library
//! (`tests/nvml_stub/nvml_stub.c`), NVML kept open as `fleet watch`'s reader keeps it.
//! Run: `cargo bench -p fleet --bench gpu_health` (needs `cc`). Goal: under 5 ms for 8 GPUs.
//!
//! - `devices`: the reading without health, the GPUs and their use (`gpu::report_of`);
//! - `devices+health`: what an observation reads now (`nvml_reader::read`): the same, the
//!   event set drained, each GPU's health signals, and each GPU classified.

use std::hint::black_box;
use std::path::{Path, PathBuf};
use std::process::Command;

use criterion::{Criterion, criterion_group, criterion_main};
use fleet::observe::gpu;
use fleet::observe::health::classify;
use fleet::observe::nvml_reader::{self, Events, Memory};
use fleet::spec::GpuHealthSettings;

const GPUS: u32 = 8;

/// Builds the stand-in and describes 8 idle 80 GiB GPUs, one of them with a correctable ECC
/// count and a throttle reason (so that every health field has something to read).
fn stand_in() -> (PathBuf, PathBuf) {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("nvml-stub-bench");
    if let Err(e) = std::fs::create_dir_all(&dir) {
        panic!("cannot make {}: {e}", dir.display());
    }
    let library = dir.join("libnvidia-ml.so.1");
    let source = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/nvml_stub/nvml_stub.c");
    let built = Command::new("cc")
        .args(["-shared", "-fPIC", "-pthread", "-O1", "-o"])
        .arg(&library)
        .arg(source)
        .status();
    if !matches!(built, Ok(s) if s.success()) {
        panic!("cannot build the NVML stand-in with `cc`: {built:?}");
    }
    let mut description = String::from("init ok\ndriver 550.54.15\n");
    for n in 0..GPUS {
        description.push_str(&format!(
            "gpu GPU-5e1f0000-0000-4000-8000-{n:012} {} 0 0 {} 0 ok NVIDIA H200\n",
            80u64 << 30,
            40 + n
        ));
    }
    description
        .push_str("health GPU-5e1f0000-0000-4000-8000-000000000003 ecc_corrected=2 throttle=4\n");
    let file = dir.join("nvml-stub.txt");
    if let Err(e) = std::fs::write(&file, description) {
        panic!("cannot write {}: {e}", file.display());
    }
    (library, file)
}

fn reading(c: &mut Criterion) {
    let (library, file) = stand_in();
    // SAFETY: set before any thread of this process reads the environment.
    unsafe {
        std::env::set_var(gpu::LIBRARY_ENV, &library);
        std::env::set_var("FLEET_NVML_STUB_FILE", &file);
    }
    let nvml = match gpu::open() {
        Ok(nvml) => nvml,
        Err(e) => panic!("the stand-in does not open: {e:?}"),
    };
    let set = nvml_reader::register(&nvml);
    assert!(set.is_some(), "the stand-in makes an event set");
    let settings = GpuHealthSettings::default();
    let mut memory = Memory::default();
    let mut group = c.benchmark_group("gpu_health/8_gpus");
    group.bench_function("devices", |b| {
        b.iter(|| black_box(gpu::report_of(&nvml).map(|r| r.devices.len())))
    });
    group.bench_function("devices+health", |b| {
        b.iter(|| {
            let reading = nvml_reader::read(&nvml, Events::Own(set.as_ref()), &mut memory);
            let states: Vec<_> = reading
                .iter()
                .flat_map(|r| r.signals.values())
                .map(|s| classify(s, &settings, false).state)
                .collect();
            assert_eq!(states.len(), GPUS as usize);
            black_box(states)
        })
    });
    group.finish();
}

criterion_group!(benches, reading);
criterion_main!(benches);
