//! The scale set part of the control API under `/_fake/`: jobs, runners taking and finishing
//! them, statistics, token expiry and faults.

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use http::StatusCode;
use serde::Deserialize;
use serde_json::{Value, json};

use super::{QueueJobs, ScaleSetEndpoint, ScaleSetFault};
use crate::api::json_response;
use crate::{Scope, Shared};

type Ctx = State<Arc<Shared>>;

pub(crate) fn router(shared: Arc<Shared>) -> Router {
    Router::new()
        .route("/_fake/scalesets", get(list))
        .route("/_fake/scalesets/{id}/statistics", get(statistics))
        .route("/_fake/scalesets/{id}/runners/{name}/start", post(start))
        .route(
            "/_fake/scalesets/{id}/runners/{name}/complete",
            post(complete),
        )
        .route("/_fake/jobs", get(jobs).post(queue_jobs))
        .route("/_fake/jobs/{job}/reassign", post(reassign))
        .route("/_fake/scaleset-tokens/expire", post(expire_tokens))
        .route(
            "/_fake/scaleset-faults",
            post(add_fault).delete(clear_faults),
        )
        .with_state(shared)
}

fn error(status: StatusCode, message: impl Into<String>) -> Response {
    json_response(status, &json!({"error": message.into()}))
}

/// A body the control API could not read.
struct BadBody(String);

impl IntoResponse for BadBody {
    fn into_response(self) -> Response {
        error(
            StatusCode::BAD_REQUEST,
            format!("bad request body: {}", self.0),
        )
    }
}

/// Unknown fields are refused so that a typo in a test does not silently do nothing.
fn parse<T: serde::de::DeserializeOwned>(body: &Bytes) -> Result<T, BadBody> {
    serde_json::from_slice(body).map_err(|e| BadBody(e.to_string()))
}

fn to_json(value: &impl serde::Serialize) -> Value {
    serde_json::to_value(value).unwrap_or(Value::Null)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ScopeQuery {
    #[serde(default)]
    scope: Option<String>,
}

async fn list(State(shared): Ctx, Query(query): Query<ScopeQuery>) -> Response {
    let scope = match query.scope.as_deref().map(str::parse::<Scope>).transpose() {
        Ok(scope) => scope,
        Err(e) => return error(StatusCode::BAD_REQUEST, e),
    };
    let infos = shared.lock().scale_set_infos(scope.as_ref());
    json_response(StatusCode::OK, &to_json(&infos))
}

async fn statistics(State(shared): Ctx, Path(id): Path<u64>) -> Response {
    let world = shared.lock();
    match world.scalesets.sets.get(&id) {
        Some(set) => json_response(StatusCode::OK, &to_json(&world.statistics(set))),
        None => error(StatusCode::NOT_FOUND, format!("no scale set {id}")),
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CompleteBody {
    #[serde(default)]
    result: Option<String>,
}

async fn start(State(shared): Ctx, Path((id, name)): Path<(u64, String)>) -> Response {
    let result = shared.lock().start_job(id, &name);
    shared.scaleset_changed();
    match result {
        Ok(job) => json_response(StatusCode::OK, &to_json(&job)),
        Err(e) => error(StatusCode::CONFLICT, e),
    }
}

async fn complete(
    State(shared): Ctx,
    Path((id, name)): Path<(u64, String)>,
    body: Bytes,
) -> Response {
    let request: CompleteBody = if body.is_empty() {
        CompleteBody { result: None }
    } else {
        match parse(&body) {
            Ok(request) => request,
            Err(bad) => return bad.into_response(),
        }
    };
    let outcome = request.result.as_deref().unwrap_or("succeeded");
    let result = shared.lock().complete_job(id, &name, outcome);
    shared.scaleset_changed();
    match result {
        Ok(job) => json_response(StatusCode::OK, &to_json(&job)),
        Err(e) => error(StatusCode::CONFLICT, e),
    }
}

async fn jobs(State(shared): Ctx) -> Response {
    json_response(StatusCode::OK, &to_json(&shared.lock().job_infos()))
}

/// `{scope, labels, count}`, or `{scale_set_id, count}` for jobs asking for that scale set's
/// labels.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct QueueBody {
    #[serde(default)]
    scope: Option<String>,
    #[serde(default)]
    labels: Vec<String>,
    #[serde(default)]
    scale_set_id: Option<u64>,
    #[serde(default = "one")]
    count: usize,
}

fn one() -> usize {
    1
}

async fn queue_jobs(State(shared): Ctx, body: Bytes) -> Response {
    let request: QueueBody = match parse(&body) {
        Ok(request) => request,
        Err(bad) => return bad.into_response(),
    };
    let jobs = match (request.scale_set_id, request.scope) {
        (Some(id), None) if request.labels.is_empty() => {
            shared.lock().queue_jobs_for_scale_set(id, request.count)
        }
        (None, Some(scope)) => match scope.parse::<Scope>() {
            Ok(scope) => Some(shared.lock().queue_jobs(&QueueJobs {
                scope,
                labels: request.labels,
                count: request.count,
            })),
            Err(e) => return error(StatusCode::BAD_REQUEST, e),
        },
        _ => {
            return error(
                StatusCode::BAD_REQUEST,
                "give scope and labels, or scale_set_id alone",
            );
        }
    };
    shared.scaleset_changed();
    match jobs {
        Some(ids) => json_response(StatusCode::CREATED, &json!(ids)),
        None => error(StatusCode::NOT_FOUND, "no such scale set"),
    }
}

async fn reassign(State(shared): Ctx, Path(job): Path<String>) -> Response {
    let result = shared.lock().reassign_job(&job);
    shared.scaleset_changed();
    match result {
        Ok(job) => json_response(StatusCode::OK, &to_json(&job)),
        Err(e) => error(StatusCode::CONFLICT, e),
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ExpireBody {
    #[serde(default)]
    admin: bool,
    #[serde(default)]
    queue: bool,
}

async fn expire_tokens(State(shared): Ctx, body: Bytes) -> Response {
    let request: ExpireBody = match parse(&body) {
        Ok(request) => request,
        Err(bad) => return bad.into_response(),
    };
    shared
        .lock()
        .scalesets
        .expire_tokens(request.admin, request.queue, std::time::Instant::now());
    StatusCode::NO_CONTENT.into_response()
}

/// `{endpoint, status | slow_ms | lose_ack, next}`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FaultBody {
    #[serde(default = "any")]
    endpoint: String,
    #[serde(default)]
    status: Option<u16>,
    #[serde(default)]
    slow_ms: Option<u64>,
    #[serde(default)]
    lose_ack: bool,
    #[serde(default = "one")]
    next: usize,
}

fn any() -> String {
    "any".to_owned()
}

async fn add_fault(State(shared): Ctx, body: Bytes) -> Response {
    let request: FaultBody = match parse(&body) {
        Ok(request) => request,
        Err(bad) => return bad.into_response(),
    };
    let Some(endpoint) = ScaleSetEndpoint::parse(&request.endpoint) else {
        return error(
            StatusCode::BAD_REQUEST,
            format!("unknown endpoint {:?}", request.endpoint),
        );
    };
    let fault = match (request.status, request.slow_ms, request.lose_ack) {
        (Some(status), None, false) if (100..=599).contains(&status) => {
            ScaleSetFault::Status(status)
        }
        (None, Some(ms), false) => ScaleSetFault::Slow(Duration::from_millis(ms)),
        (None, None, true) => ScaleSetFault::LoseAcknowledgement,
        _ => {
            return error(
                StatusCode::BAD_REQUEST,
                "give exactly one of status (100-599), slow_ms, lose_ack",
            );
        }
    };
    shared
        .lock()
        .scalesets
        .fail_next(endpoint, fault, request.next);
    StatusCode::NO_CONTENT.into_response()
}

async fn clear_faults(State(shared): Ctx) -> Response {
    shared.lock().scalesets.clear_faults();
    StatusCode::NO_CONTENT.into_response()
}
