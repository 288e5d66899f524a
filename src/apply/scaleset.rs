//! The steps of an autoscaled pool's runner scale set (create, update, delete) and the
//! registration of its runners through the scale set's just-in-time configs.

use super::{Executor, StepError, StepResult};
use crate::contract;
use crate::github::JitConfig;
use crate::plan::{ScaleSetChange, ScaleSetOp};
use crate::scaleset::{ScaleSetClient, ScaleSetError, ScaleSetSpec};
use crate::spec::{ResolvedPool, RunnerUpdate};

impl Executor<'_> {
    fn scale_set_client(&self) -> Result<&ScaleSetClient, StepError> {
        self.observers.scale_sets.as_ref().ok_or_else(|| {
            StepError::Plan("the spec has no autoscaled pool: no scale set client".into())
        })
    }

    pub(super) async fn scale_set(&self, change: &ScaleSetChange) -> Result<StepResult, StepError> {
        let client = self.scale_set_client()?;
        let failed = |what: &str| {
            let what = format!("cannot {what} scale set {}", change.name);
            move |source: ScaleSetError| StepError::ScaleSet { what, source }
        };
        // As actions-runner-controller: runners keep the runner of their image unless the pool
        // says `runner_update: enabled`.
        let update = change
            .pool
            .as_deref()
            .and_then(|p| self.pools.get(p))
            .map_or(RunnerUpdate::default(), |p| p.runner_update);
        let spec = ScaleSetSpec {
            name: change.name.clone(),
            runner_group: change.runner_group.clone(),
            labels: change.labels.clone(),
            disable_update: update == RunnerUpdate::Disabled,
        };
        match (&change.op, change.id) {
            (ScaleSetOp::Create, _) => {
                let ensured = client
                    .get_or_create_scale_set(&spec)
                    .await
                    .map_err(failed("create"))?;
                let created = matches!(ensured, crate::scaleset::Ensured::Created(_));
                let set = ensured.scale_set();
                // Made by this call: fleet's, even when the service dropped its labels (some
                // GitHub Enterprise Server versions do); the record made below proves it later.
                if !created && !contract::scale_set_owned(&set.label_names(), &self.spec.name) {
                    return Err(StepError::Plan(format!(
                        "a runner scale set `{}` (id {}) appeared on GitHub that fleet did not create; fleet never adopts it",
                        set.name, set.id
                    )));
                }
                self.remember_scale_set(change, set.id).await;
                self.record(change, true).await?;
            }
            (ScaleSetOp::Update { .. }, Some(id)) => {
                client
                    .update_scale_set(id, &spec)
                    .await
                    .map_err(failed("update"))?;
                self.remember_scale_set(change, id).await;
            }
            (ScaleSetOp::Delete, Some(id)) => match client.delete_scale_set(id).await {
                Ok(()) => self.record(change, false).await?,
                Err(ScaleSetError::RunnerBusy { .. }) => {
                    return Ok(StepResult::deferred(
                        "a runner of the scale set is running a job: deleted after it",
                    ));
                }
                Err(e) => return Err(failed("delete")(e)),
            },
            (_, None) => {
                return Err(StepError::Plan(format!(
                    "the plan gives no id for scale set {}",
                    change.name
                )));
            }
        }
        Ok(StepResult::done())
    }

    /// Makes or removes the volume that records the scale set (it tells later applies, without
    /// reading GitHub, that there is a scale set to look after).
    async fn record(&self, change: &ScaleSetChange, made: bool) -> Result<(), StepError> {
        let Some((host, volume)) = &change.record else {
            return Ok(());
        };
        let write = self.host(host)?.write();
        if made {
            let mut labels = contract::volume_labels(
                &self.spec.name,
                change.pool.as_deref().unwrap_or_default(),
                None,
            );
            labels.insert(contract::labels::SCALE_SET.to_string(), change.name.clone());
            write
                .create_owned_volume(volume, labels.into_iter().collect(), &self.spec.name)
                .await?;
        } else {
            write.remove_owned_volume(volume, &self.spec.name).await?;
        }
        Ok(())
    }

    /// The scale set ids this executor made or updated, by pool.
    pub async fn scale_set_ids(&self) -> std::collections::BTreeMap<String, u64> {
        self.scale_set_ids.lock().await.clone()
    }

    /// Takes the scale set ids another executor made (the first stage of an apply by host).
    pub fn with_scale_set_ids(self, ids: std::collections::BTreeMap<String, u64>) -> Self {
        Executor {
            scale_set_ids: tokio::sync::Mutex::new(ids),
            ..self
        }
    }

    async fn remember_scale_set(&self, change: &ScaleSetChange, id: u64) {
        if let Some(pool) = &change.pool {
            self.scale_set_ids.lock().await.insert(pool.clone(), id);
        }
    }

    /// The id of an autoscaled pool's scale set: made in this apply, or observed.
    async fn scale_set_id(&self, pool: &ResolvedPool) -> Result<u64, StepError> {
        if let Some(id) = self.scale_set_ids.lock().await.get(&pool.name) {
            return Ok(*id);
        }
        let name = pool.autoscale.as_ref().map(|a| a.scale_set.as_str());
        self.observed
            .github
            .scale_sets
            .iter()
            .flatten()
            .find(|s| name.is_some_and(|n| contract::same_scale_set_name(&s.name, n)))
            .map(|s| s.id)
            .ok_or_else(|| {
                StepError::Plan(format!(
                    "pool `{}`: its runner scale set is not on GitHub yet (apply creates it first)",
                    pool.name
                ))
            })
    }

    /// Registers runner `name` of an autoscaled pool in its scale set. `Ok(None)`: the name is
    /// taken; the caller picks another.
    pub(super) async fn register_in_scale_set(
        &self,
        pool: &ResolvedPool,
        name: &str,
    ) -> Result<Option<JitConfig>, StepError> {
        let id = self.scale_set_id(pool).await?;
        let work_folder = contract::container::registered_work_folder(pool, name);
        match self
            .scale_set_client()?
            .generate_jit_config(id, name, &work_folder)
            .await
        {
            Ok(jit) => Ok(Some(JitConfig {
                runner_id: jit.runner.id,
                encoded: jit.encoded,
            })),
            Err(ScaleSetError::RunnerExists { .. }) => Ok(None),
            Err(source) => Err(StepError::ScaleSet {
                what: format!("cannot register runner {name} in scale set {id}"),
                source,
            }),
        }
    }
}
