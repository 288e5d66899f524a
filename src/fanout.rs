//! A plan applied host by host: each host's part (`Plan::by_host`) runs through its own
//! executor, at the same time as the other hosts' parts, so that a slow or dead host does not
//! hold back the others' changes. Within a part the executor keeps its phases (volumes,
//! removals, creations, then what waits) and its bound on steps at once; the changes that touch
//! only GitHub form a part of their own. `fleet apply`, `fleet destroy` and `fleet watch` use it
//! (docs/apply.md).

use futures_util::future::join_all;

use crate::apply::{ApplyReport, Executor, Progress};
use crate::observe::Observers;
use crate::observe::state::Observed;
use crate::plan::Plan;
use crate::spec::Spec;

/// Applies `plan`, each host's part at once with the others'; at most `parallelism` steps run
/// at once per part. The report holds every step, part by part in host order.
pub async fn apply_by_host(
    spec: &Spec,
    observers: &Observers,
    observed: &Observed,
    plan: &Plan,
    parallelism: usize,
    progress: &dyn Progress,
) -> ApplyReport {
    let (scale_sets_first, scale_sets_last) = plan.scale_set_stages();
    let first = Executor::new(spec, observers, observed, parallelism);
    let mut steps = first.apply(&scale_sets_first, progress).await.steps;
    let scale_set_ids = first.scale_set_ids().await;
    let parts = plan.by_host();
    let runs = parts.iter().map(|(host, part)| async {
        let report = Executor::new(spec, observers, observed, parallelism)
            .with_scale_set_ids(scale_set_ids.clone())
            .apply(part, progress)
            .await;
        tracing::debug!(
            "{}: {} step(s) done",
            host.as_deref()
                .map_or("GitHub".to_string(), |h| format!("host `{h}`")),
            report.steps.len()
        );
        report
    });
    let reports = join_all(runs).await;
    steps.extend(reports.into_iter().flat_map(|r| r.steps));
    let last = Executor::new(spec, observers, observed, parallelism);
    steps.extend(last.apply(&scale_sets_last, progress).await.steps);
    ApplyReport { steps }
}
