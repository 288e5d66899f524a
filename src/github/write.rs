//! Writes: JIT configurations, registration tokens, removals. Paced under GitHub's secondary
//! rate limit (`pacing.rs`). Only the executor (`src/apply`) calls these.

use http::Method;
use serde::Deserialize;

use super::http::decode;
use super::pacing::Write;
use super::{GithubClient, GithubError};
use crate::secret::Secret;

/// GitHub's runner registrations, to change.
#[derive(Clone)]
pub struct GithubWrite {
    client: GithubClient,
}

impl GithubClient {
    /// The write side of this client.
    pub fn write(&self) -> GithubWrite {
        GithubWrite {
            client: self.clone(),
        }
    }
}

/// What became of a request to remove a registration.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Removal {
    Removed,
    /// GitHub had no such runner (already gone): nothing to do.
    Gone,
    /// GitHub refused: the runner is running a job.
    Busy,
}

/// A JIT registration: the runner's id and its single-use configuration.
#[derive(Debug)]
pub struct JitConfig {
    pub runner_id: u64,
    pub encoded: Secret,
}

impl GithubWrite {
    /// Registers runner `name` and returns its JIT configuration
    /// (`POST .../actions/runners/generate-jitconfig`); `work_folder` is the runner's work
    /// folder, relative to its install directory or absolute.
    pub async fn generate_jitconfig(
        &self,
        name: &str,
        runner_group_id: u64,
        labels: &[String],
        work_folder: &str,
    ) -> Result<JitConfig, GithubError> {
        #[derive(Deserialize)]
        struct Runner {
            id: u64,
        }
        #[derive(Deserialize)]
        struct Answer {
            runner: Runner,
            encoded_jit_config: String,
        }
        let url = self
            .client
            .scoped_url("/actions/runners/generate-jitconfig");
        let body = serde_json::json!({
            "name": name,
            "runner_group_id": runner_group_id,
            "labels": labels,
            "work_folder": work_folder,
        });
        self.client
            .pacer
            .write("generate-jitconfig", Write::Create)
            .await;
        let answer = match self
            .client
            .send(Method::POST, &url, Some(&body), "generate-jitconfig")
            .await
        {
            Err(GithubError::NotFound { .. }) if self.scope_is_readable().await => {
                return Err(GithubError::NoJit {
                    api_url: self.client.api_url().to_string(),
                    url,
                });
            }
            other => other?,
        };
        let parsed: Answer = decode(&url, &answer.body)?;
        Ok(JitConfig {
            runner_id: parsed.runner.id,
            encoded: Secret::new(parsed.encoded_jit_config),
        })
    }

    /// Whether the scope's runner list can be read: after a 404 on generate-jitconfig, it tells
    /// a GitHub Enterprise Server without JIT (before 3.10) from a scope that does not exist.
    async fn scope_is_readable(&self) -> bool {
        let url = format!("{}?per_page=1", self.client.scoped_url("/actions/runners"));
        self.client
            .send(Method::GET, &url, None, "list-runners")
            .await
            .is_ok()
    }

    /// A registration token for `config.sh` (`POST .../actions/runners/registration-token`).
    pub async fn registration_token(&self) -> Result<Secret, GithubError> {
        #[derive(Deserialize)]
        struct Answer {
            token: String,
        }
        let url = self
            .client
            .scoped_url("/actions/runners/registration-token");
        self.client
            .pacer
            .write("registration-token", Write::Create)
            .await;
        let answer = self
            .client
            .send(Method::POST, &url, None, "registration-token")
            .await?;
        let parsed: Answer = decode(&url, &answer.body)?;
        Ok(Secret::new(parsed.token))
    }

    /// Sets the custom labels of runner `id` (`PUT .../actions/runners/{id}/labels`); the
    /// labels GitHub applied itself stay.
    pub async fn set_custom_labels(&self, id: u64, labels: &[String]) -> Result<(), GithubError> {
        let url = self
            .client
            .scoped_url(&format!("/actions/runners/{id}/labels"));
        let body = serde_json::json!({ "labels": labels });
        self.client
            .pacer
            .write("set-runner-labels", Write::Change)
            .await;
        self.client
            .send(Method::PUT, &url, Some(&body), "set-runner-labels")
            .await
            .map(|_| ())
    }

    /// Moves runner `id` into runner group `group` (organization scope:
    /// `PUT /orgs/{org}/actions/runner-groups/{group}/runners/{id}`).
    pub async fn move_to_group(&self, group: u64, id: u64) -> Result<(), GithubError> {
        let url = self
            .client
            .scoped_url(&format!("/actions/runner-groups/{group}/runners/{id}"));
        self.client
            .pacer
            .write("set-runner-group", Write::Change)
            .await;
        self.client
            .send(Method::PUT, &url, None, "set-runner-group")
            .await
            .map(|_| ())
    }

    /// Removes registration `id`. A busy runner is refused by GitHub (422) and kept.
    pub async fn delete_runner(&self, id: u64) -> Result<Removal, GithubError> {
        let url = self.client.scoped_url(&format!("/actions/runners/{id}"));
        self.client
            .pacer
            .write("delete-runner", Write::Change)
            .await;
        match self
            .client
            .send(Method::DELETE, &url, None, "delete-runner")
            .await
        {
            Ok(_) => Ok(Removal::Removed),
            Err(GithubError::NotFound { .. }) => Ok(Removal::Gone),
            Err(GithubError::Rejected { status: 422, .. }) => Ok(Removal::Busy),
            Err(e) => Err(e),
        }
    }
}
