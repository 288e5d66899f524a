//! The planner alone: `plan()` on converged worlds of 100, 1,000 and 10,000 runners.
//! Run: `cargo bench -p fleet --bench plan`. Goal: 10,000 runners in under 50 ms.

use std::collections::BTreeMap;
use std::hint::black_box;
use std::path::Path;

use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use fleet::contract::{RunnerConfig, labels};
use fleet::observe::state::{
    ContainerState, ContainerStatus, GithubRunner, GithubState, GpuInventory, GpuSource, HostState,
    Observed,
};
use fleet::plan::plan;
use fleet::spec::Spec;

const POOLS: usize = 10;

/// A spec of 10 pools and the world where every runner of it runs, registered and idle;
/// a tenth of them exited, so the plan has work to do.
fn world(runners: usize) -> (Spec, Observed) {
    let per_pool = runners / POOLS;
    let mut yaml = String::from(
        "version: 1\nname: bench\ngithub:\n  repo: acme/bench\nhosts:\n  local:\n    gpus: none\npools:\n",
    );
    for p in 0..POOLS {
        yaml.push_str(&format!(
            "  p{p}:\n    count: {per_pool}\n    image: runner:1\n    labels: [bench, pool{p}]\n    env: {{ POOL: \"{p}\" }}\n"
        ));
    }
    let spec = match fleet::spec::parse_str(&yaml, Path::new(".")) {
        Ok(spec) => spec,
        Err(e) => panic!("bench spec: {e:?}"),
    };
    let mut containers = Vec::new();
    let mut registrations = Vec::new();
    for pool in spec.resolved_pools() {
        let config = RunnerConfig::for_pool("bench", &pool);
        for i in 0..per_pool {
            let name = format!("bench-{}-{i:06}", pool.name);
            let exited = i % 10 == 0;
            containers.push(ContainerState {
                id: format!("id-{name}"),
                name: name.clone(),
                labels: BTreeMap::from([
                    (labels::FLEET.to_string(), "bench".to_string()),
                    (labels::POOL.to_string(), pool.name.clone()),
                    (labels::CONFIG_HASH.to_string(), config.hash()),
                    (labels::CONFIG.to_string(), config.to_label()),
                    (labels::GPUS.to_string(), String::new()),
                ]),
                status: if exited {
                    ContainerStatus::Exited
                } else {
                    ContainerStatus::Running
                },
                exit_code: exited.then_some(0),
                created: i as i64,
                finished: None,
            });
            if !exited {
                registrations.push(GithubRunner {
                    id: registrations.len() as u64 + 1,
                    name,
                    online: true,
                    busy: i % 3 == 0,
                    labels: config.labels.clone(),
                    ..GithubRunner::default()
                });
            }
        }
    }
    containers.sort_by(|a, b| a.name.cmp(&b.name));
    let host = HostState {
        containers,
        gpus: GpuInventory {
            uuids: vec![],
            source: GpuSource::None,
            ..GpuInventory::default()
        },
        ..HostState::default()
    };
    let observed = Observed {
        hosts: BTreeMap::from([("local".to_string(), host)]),
        github: GithubState {
            runners: registrations,
            ..GithubState::default()
        },
        ..Observed::default()
    };
    (spec, observed)
}

fn bench_plan(c: &mut Criterion) {
    let mut group = c.benchmark_group("plan");
    group.sample_size(20);
    for runners in [100usize, 1_000, 10_000] {
        let (spec, observed) = world(runners);
        let check = plan(&spec, &observed).map(|p| p.summary().replace);
        assert_eq!(
            check,
            Ok(runners / 10),
            "a tenth of the runners exited and are replaced"
        );
        group.bench_with_input(BenchmarkId::from_parameter(runners), &runners, |b, _| {
            b.iter(|| plan(black_box(&spec), black_box(&observed)))
        });
    }
    group.finish();
}

criterion_group!(benches, bench_plan);
criterion_main!(benches);
