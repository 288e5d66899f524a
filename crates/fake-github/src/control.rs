//! The control API under `/_fake/`: the same knobs as the [`crate::FakeGithub`] methods, for a
//! test or demo in another process. No authentication, not logged, not rate limited.

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use http::{StatusCode, Uri};
use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_json::{Value, json};

use crate::api::json_response;
use crate::state::{ConfigureError, DEFAULT_GROUP_ID};
use crate::{Fault, NewRunner, RunnerConfiguration, Scope, Shared};

type Ctx = State<Arc<Shared>>;

pub(crate) fn router(shared: Arc<Shared>) -> Router {
    Router::new()
        .route("/_fake/requests", get(requests).delete(clear_requests))
        .route("/_fake/runners", get(runners).post(add_runner))
        .route("/_fake/runners/configure", post(configure_runner))
        .route("/_fake/runners/{id}/state", post(set_state))
        .route("/_fake/runners/{id}", axum::routing::delete(remove_runner))
        .route("/_fake/runner-groups", post(add_runner_group))
        .route("/_fake/faults", post(add_faults).delete(clear_faults))
        .route("/_fake/latency", post(set_latency))
        .route("/_fake/rate-limit", post(set_rate_limit))
        .route("/_fake/stats", get(stats))
        .with_state(shared)
}

struct ControlError(StatusCode, String);

impl IntoResponse for ControlError {
    fn into_response(self) -> Response {
        json_response(self.0, &json!({"error": self.1}))
    }
}

type ControlResult = Result<Response, ControlError>;

fn bad_request(message: impl Into<String>) -> ControlError {
    ControlError(StatusCode::BAD_REQUEST, message.into())
}

fn no_runner(id: u64, scope: &Scope) -> ControlError {
    ControlError(StatusCode::NOT_FOUND, format!("no runner {id} in {scope}"))
}

/// Unknown fields are refused so that a typo in a test does not silently do nothing.
fn parse<T: DeserializeOwned>(body: &Bytes) -> Result<T, ControlError> {
    serde_json::from_slice(body).map_err(|e| bad_request(format!("bad request body: {e}")))
}

fn parse_scope(text: &str) -> Result<Scope, ControlError> {
    text.parse().map_err(bad_request)
}

fn to_json(value: &impl serde::Serialize) -> Result<Value, ControlError> {
    serde_json::to_value(value)
        .map_err(|e| ControlError(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))
}

fn no_content() -> ControlResult {
    Ok(StatusCode::NO_CONTENT.into_response())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ScopeQuery {
    scope: String,
}

async fn requests(State(shared): Ctx) -> ControlResult {
    let log = shared.lock().requests();
    Ok(json_response(StatusCode::OK, &to_json(&log)?))
}

async fn clear_requests(State(shared): Ctx) -> ControlResult {
    shared.lock().clear_requests();
    no_content()
}

/// The `scope=` query parameter.
fn query_scope(uri: &Uri) -> Result<Scope, ControlError> {
    let Query(query) = Query::<ScopeQuery>::try_from_uri(uri)
        .map_err(|_| bad_request("scope=repo:OWNER/REPO or scope=org:ORG is required"))?;
    parse_scope(&query.scope)
}

/// A runner id from the path; one that is not a number names no runner.
fn path_id(id: &str) -> Result<u64, ControlError> {
    id.parse()
        .map_err(|_| ControlError(StatusCode::NOT_FOUND, format!("no runner {id:?}")))
}

async fn runners(State(shared): Ctx, uri: Uri) -> ControlResult {
    let scope = query_scope(&uri)?;
    let infos: Vec<_> = shared
        .lock()
        .runners(&scope)
        .iter()
        .map(crate::state::Runner::info)
        .collect();
    Ok(json_response(StatusCode::OK, &to_json(&infos)?))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct AddRunner {
    scope: String,
    name: String,
    #[serde(default)]
    labels: Vec<String>,
    #[serde(default)]
    online: bool,
    #[serde(default)]
    busy: bool,
    #[serde(default)]
    runner_group_id: Option<u64>,
    #[serde(default)]
    ephemeral: bool,
}

async fn add_runner(State(shared): Ctx, body: Bytes) -> ControlResult {
    let request: AddRunner = parse(&body)?;
    let scope = parse_scope(&request.scope)?;
    let mut world = shared.lock();
    let id = world.insert_runner(
        &scope,
        NewRunner {
            name: request.name,
            labels: request.labels,
            status_online: request.online,
            busy: request.busy,
            runner_group_id: request.runner_group_id.unwrap_or(DEFAULT_GROUP_ID),
            ephemeral: request.ephemeral,
        },
    );
    let runner = world
        .runner(&scope, id)
        .ok_or_else(|| no_runner(id, &scope))?;
    Ok(json_response(
        StatusCode::CREATED,
        &to_json(&runner.info())?,
    ))
}

/// What `config.sh` sends: the body of `POST /_fake/runners/configure`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Configure {
    token: String,
    name: String,
    #[serde(default)]
    labels: Vec<String>,
    #[serde(default)]
    runner_group: Option<String>,
    #[serde(default)]
    replace: bool,
}

/// A runner registers itself as `config.sh` does: 201 with the new runner, 200 with the one it
/// replaced in place; 401 for a bad token, 404 for an unknown group, 409 for a name taken.
async fn configure_runner(State(shared): Ctx, body: Bytes) -> ControlResult {
    let request: Configure = parse(&body)?;
    let config = RunnerConfiguration {
        token: request.token,
        name: request.name,
        labels: request.labels,
        runner_group: request.runner_group,
        replace: request.replace,
    };
    let result = shared
        .lock()
        .configure_runner(&config, crate::util::now_epoch());
    match result {
        Ok((runner, replaced)) => {
            let status = if replaced {
                StatusCode::OK
            } else {
                StatusCode::CREATED
            };
            Ok(json_response(status, &to_json(&runner.info())?))
        }
        Err(e) => {
            let status = match e {
                ConfigureError::BadToken => StatusCode::UNAUTHORIZED,
                ConfigureError::NoGroup(_) => StatusCode::NOT_FOUND,
                ConfigureError::NameTaken | ConfigureError::NameInOtherGroup => {
                    StatusCode::CONFLICT
                }
            };
            Err(ControlError(status, e.to_string()))
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SetState {
    scope: String,
    online: bool,
    busy: bool,
}

async fn set_state(State(shared): Ctx, Path(id): Path<String>, body: Bytes) -> ControlResult {
    let id = path_id(&id)?;
    let request: SetState = parse(&body)?;
    let scope = parse_scope(&request.scope)?;
    let runner = shared
        .lock()
        .set_runner_state(&scope, id, request.online, request.busy)
        .ok_or_else(|| no_runner(id, &scope))?;
    Ok(json_response(StatusCode::OK, &to_json(&runner.info())?))
}

async fn remove_runner(State(shared): Ctx, Path(id): Path<String>, uri: Uri) -> ControlResult {
    let id = path_id(&id)?;
    let scope = query_scope(&uri)?;
    shared
        .lock()
        .remove_runner(&scope, id)
        .ok_or_else(|| no_runner(id, &scope))?;
    no_content()
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct AddGroup {
    org: String,
    name: String,
}

async fn add_runner_group(State(shared): Ctx, body: Bytes) -> ControlResult {
    let request: AddGroup = parse(&body)?;
    let id = shared.lock().add_runner_group(&request.org, &request.name);
    Ok(json_response(StatusCode::CREATED, &json!({"id": id})))
}

/// One fault kind (`status`, `secondary_rate_limit`, `timeout` or `accepted_permissions`) and
/// how it applies: to the `next` N requests, or to each request with probability `ratio`
/// (default 1).
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FaultRequest {
    #[serde(default)]
    status: Option<u16>,
    #[serde(default)]
    secondary_rate_limit: Option<Secondary>,
    #[serde(default)]
    timeout: bool,
    #[serde(default)]
    accepted_permissions: Option<String>,
    #[serde(default)]
    retry_after: Option<u64>,
    #[serde(default)]
    ratio: Option<f64>,
    #[serde(default)]
    next: Option<usize>,
}

/// `"secondary_rate_limit": true` (with `retry_after`, default 60) or a number of seconds.
#[derive(Deserialize, Clone, Copy)]
#[serde(untagged)]
enum Secondary {
    Flag(bool),
    RetryAfter(u64),
}

impl FaultRequest {
    fn secondary(&self) -> Option<u64> {
        match self.secondary_rate_limit? {
            Secondary::Flag(false) => None,
            Secondary::Flag(true) => Some(self.retry_after.unwrap_or(60)),
            Secondary::RetryAfter(secs) => Some(secs),
        }
    }

    fn fault(&self) -> Result<Fault, ControlError> {
        let kinds = usize::from(self.status.is_some())
            + usize::from(self.secondary().is_some())
            + usize::from(self.timeout)
            + usize::from(self.accepted_permissions.is_some());
        if kinds != 1 {
            return Err(bad_request(
                "give exactly one of status, secondary_rate_limit, timeout, accepted_permissions",
            ));
        }
        if let Some(status) = self.status {
            if !(100..=599).contains(&status) {
                return Err(bad_request(format!("{status} is not an HTTP status")));
            }
            return Ok(Fault::Status {
                status,
                retry_after: self.retry_after,
            });
        }
        if let Some(retry_after) = self.secondary() {
            return Ok(Fault::SecondaryRateLimit { retry_after });
        }
        if let Some(accepted) = &self.accepted_permissions {
            return Ok(Fault::Forbidden {
                accepted_permissions: accepted.clone(),
            });
        }
        Ok(Fault::Timeout)
    }
}

async fn add_faults(State(shared): Ctx, body: Bytes) -> ControlResult {
    let request: FaultRequest = parse(&body)?;
    let fault = request.fault()?;
    match (request.next, request.ratio) {
        (Some(_), Some(_)) => return Err(bad_request("give next or ratio, not both")),
        (Some(count), None) => shared.lock().fail_next(fault, count),
        (None, ratio) => {
            let ratio = ratio.unwrap_or(1.0);
            if !(0.0..=1.0).contains(&ratio) {
                return Err(bad_request(format!("ratio {ratio} is not within 0..=1")));
            }
            shared.lock().inject_faults(fault, ratio);
        }
    }
    no_content()
}

async fn clear_faults(State(shared): Ctx) -> ControlResult {
    shared.lock().clear_faults();
    no_content()
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Latency {
    ms: u64,
}

async fn set_latency(State(shared): Ctx, body: Bytes) -> ControlResult {
    let request: Latency = parse(&body)?;
    shared.lock().latency = Duration::from_millis(request.ms);
    no_content()
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RateLimitRequest {
    remaining: u32,
    reset: u64,
}

async fn set_rate_limit(State(shared): Ctx, body: Bytes) -> ControlResult {
    let request: RateLimitRequest = parse(&body)?;
    shared
        .lock()
        .set_rate_limit(request.remaining, request.reset);
    no_content()
}

async fn stats(State(shared): Ctx) -> ControlResult {
    let world = shared.lock();
    Ok(json_response(
        StatusCode::OK,
        &json!({
            "jit_configs_issued": world.jit_configs_issued,
            "registration_tokens_issued": world.registration_tokens_issued,
            "requests": world.requests().len(),
        }),
    ))
}
