//! The runner scale sets of autoscaled pools, read through the scale set service
//! (`crate::scaleset`). Reading them needs a registration token (exchanged for the service's
//! admin token): only `apply` and `watch` do it, never `plan`.

use futures_util::future::BoxFuture;

use crate::github::GithubClient;
use crate::observe::state::ScaleSetState;
use crate::scaleset::{
    ClientConfig, RegistrationTokenSource, RunnerScaleSet, ScaleSetClient, ScaleSetError,
};

/// fleet's GitHub client buys registration tokens with whatever credential it holds (a token,
/// or a GitHub App's installation token), from the API the operator configured.
impl RegistrationTokenSource for GithubClient {
    fn registration_token(&self) -> BoxFuture<'_, Result<crate::secret::Secret, ScaleSetError>> {
        Box::pin(async move {
            self.write()
                .registration_token()
                .await
                .map_err(|e| ScaleSetError::RegistrationToken {
                    message: e.to_string(),
                })
        })
    }
}

/// A scale set client for the spec's scope (it contacts nothing until used).
pub fn client_for(github: &GithubClient) -> Result<ScaleSetClient, ScaleSetError> {
    let mut config = ClientConfig::new(github.api_url(), github.scope());
    config.proxy = github.proxy().clone();
    let source = std::sync::Arc::new(github.clone());
    ScaleSetClient::new(config, source)
}

/// Every scale set of the scope (fleet's are told apart by their labels).
pub async fn read(client: &ScaleSetClient) -> Result<Vec<ScaleSetState>, ScaleSetError> {
    let mut sets: Vec<ScaleSetState> = client
        .list_scale_sets()
        .await?
        .into_iter()
        .map(state_of)
        .collect();
    sets.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(sets)
}

fn state_of(set: RunnerScaleSet) -> ScaleSetState {
    ScaleSetState {
        labels: set.label_names(),
        id: set.id,
        name: set.name,
        runner_group_id: set.runner_group_id,
        runner_group: set.runner_group_name,
        disable_update: set.runner_setting.disable_update,
    }
}
