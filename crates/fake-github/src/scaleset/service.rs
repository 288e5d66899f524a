//! The scale set service's HTTP side: the registration exchange (on the GitHub API), the
//! Actions service routes, and their request pipeline (faults, `api-version`, request log).

use std::sync::Arc;
use std::time::Instant;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, Request, State};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use http::header::AUTHORIZATION;
use http::{HeaderMap, Method, StatusCode, Uri};
use serde_json::{Value, json};

use super::world::{ScaleSetBody, ServiceError};
use super::{ScaleSetEndpoint, ScaleSetFault, queue};
use crate::api::{base_url, json_response};
use crate::{RequestRecord, Scope, Shared};

type Ctx = State<Arc<Shared>>;
type ServiceResult = Result<Response, ServiceError>;

const SETS: &str = "/_pipelines/{tenant}/_apis/runtime/runnerscalesets";

impl IntoResponse for ServiceError {
    fn into_response(self) -> Response {
        json_response(self.status, &self.body())
    }
}

/// The Actions service's routes, in their pipeline.
pub(crate) fn router(shared: Arc<Shared>) -> Router {
    Router::new()
        .route(
            "/_pipelines/{tenant}/_apis/runtime/runnergroups/",
            get(runner_groups),
        )
        .route(
            "/_pipelines/{tenant}/_apis/runtime/runnergroups",
            get(runner_groups),
        )
        .route(SETS, get(list_scale_sets).post(create_scale_set))
        .route(
            &format!("{SETS}/{{id}}"),
            get(get_scale_set)
                .patch(update_scale_set)
                .delete(delete_scale_set),
        )
        .route(&format!("{SETS}/{{id}}/sessions"), post(create_session))
        .route(
            &format!("{SETS}/{{id}}/sessions/{{session}}"),
            axum::routing::patch(refresh_session).delete(delete_session),
        )
        .route(&format!("{SETS}/{{id}}/acquirejobs"), post(acquire_jobs))
        .route(
            &format!("{SETS}/{{id}}/generatejitconfig"),
            post(generate_jit_config),
        )
        .route(
            "/_pipelines/{tenant}/_apis/distributedtask/pools/0/agents",
            get(agents),
        )
        .route(
            "/_pipelines/{tenant}/_apis/distributedtask/pools/0/agents/{id}",
            get(agent).delete(remove_agent),
        )
        .merge(queue::routes())
        .layer(middleware::from_fn_with_state(shared.clone(), pipeline))
        .with_state(shared)
}

/// Which endpoint a request is, for faults.
fn endpoint_of(method: &Method, path: &str) -> ScaleSetEndpoint {
    let segments: Vec<&str> = path.trim_matches('/').split('/').collect();
    match segments.as_slice() {
        ["_queue", ..] if method == Method::DELETE => ScaleSetEndpoint::DeleteMessage,
        ["_queue", ..] => ScaleSetEndpoint::GetMessage,
        [.., "runnergroups"] => ScaleSetEndpoint::RunnerGroups,
        [.., "sessions"] | [.., "sessions", _] => ScaleSetEndpoint::Sessions,
        [.., "acquirejobs"] => ScaleSetEndpoint::AcquireJobs,
        [.., "generatejitconfig"] => ScaleSetEndpoint::GenerateJitConfig,
        [.., "agents"] | [.., "agents", _] => ScaleSetEndpoint::Runners,
        _ => ScaleSetEndpoint::ScaleSets,
    }
}

/// Marks a message acknowledgement whose effect is lost (`ScaleSetFault::LoseAcknowledgement`).
#[derive(Clone, Copy)]
pub(crate) struct LoseAck;

/// The bearer token of a request.
pub(crate) fn bearer(headers: &HeaderMap) -> Option<&str> {
    let value = headers.get(AUTHORIZATION)?.to_str().ok()?.trim();
    let (scheme, token) = value.split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
}

async fn pipeline(State(shared): Ctx, mut request: Request, next: Next) -> Response {
    // Taken out now: a borrow of the request may not live across an await.
    let (user_agent, accept) = {
        let header = |name: http::header::HeaderName| {
            request
                .headers()
                .get(name)
                .and_then(|v| v.to_str().ok())
                .unwrap_or_default()
                .to_owned()
        };
        (
            header(http::header::USER_AGENT),
            header(http::header::ACCEPT),
        )
    };
    let method = request.method().clone();
    let path = request.uri().path().to_owned();
    let query = request.uri().query().unwrap_or_default().to_owned();
    let endpoint = endpoint_of(&method, &path);
    let (fault, authenticated) = {
        let mut world = shared.lock();
        let known = bearer(request.headers())
            .is_some_and(|t| world.scalesets.knows_token(t, Instant::now()));
        (world.scalesets.take_fault(endpoint), known)
    };
    let versioned = path.starts_with("/_pipelines/") && query.contains("api-version=");
    let response = match fault {
        Some(ScaleSetFault::Status(status)) => fault_response(status),
        _ if path.starts_with("/_pipelines/") && !versioned => ServiceError::new(
            StatusCode::BAD_REQUEST,
            "VssServiceException",
            "No api-version was supplied for the request.",
        )
        .into_response(),
        Some(ScaleSetFault::Slow(delay)) => {
            shared.sleep(delay).await;
            next.run(request).await
        }
        Some(ScaleSetFault::LoseAcknowledgement) => {
            request.extensions_mut().insert(LoseAck);
            next.run(request).await
        }
        None => next.run(request).await,
    };
    shared.record(RequestRecord {
        method: method.to_string(),
        path,
        query,
        status: response.status().as_u16(),
        authenticated,
        user_agent,
        accept,
    });
    response
}

fn fault_response(status: u16) -> Response {
    let status = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    if status == StatusCode::UNAUTHORIZED {
        return unauthorized();
    }
    ServiceError::new(
        status,
        "VssServiceException",
        status.canonical_reason().unwrap_or("Error"),
    )
    .into_response()
}

pub(crate) fn unauthorized() -> Response {
    Unauthorized.into_response()
}

/// A request without a live token for what it asks.
pub(crate) struct Unauthorized;

impl IntoResponse for Unauthorized {
    fn into_response(self) -> Response {
        json_response(
            StatusCode::UNAUTHORIZED,
            &json!({"message": "The access token is missing, invalid or expired."}),
        )
    }
}

/// The scope a request to `tenant` may act on, by its admin token.
fn admin(shared: &Shared, tenant: &str, headers: &HeaderMap) -> Result<Scope, Unauthorized> {
    let token = bearer(headers).ok_or(Unauthorized)?;
    shared
        .lock()
        .scalesets
        .admin_scope(tenant, token, Instant::now())
        .ok_or(Unauthorized)
}

fn parse_json(body: &Bytes) -> Result<Value, ServiceError> {
    serde_json::from_slice(body).map_err(|e| {
        ServiceError::new(
            StatusCode::BAD_REQUEST,
            "ArgumentException",
            format!("The request body is not JSON: {e}."),
        )
    })
}

fn query(uri: &Uri, key: &str) -> Option<String> {
    crate::api::query_pairs(uri)
        .into_iter()
        .find(|(k, _)| k == key)
        .map(|(_, v)| v)
}

fn list(items: Vec<Value>) -> Response {
    json_response(
        StatusCode::OK,
        &json!({"count": items.len(), "value": items}),
    )
}

fn ok(value: Value) -> ServiceResult {
    Ok(json_response(StatusCode::OK, &value))
}

fn id(text: &str) -> Result<u64, ServiceError> {
    text.parse()
        .map_err(|_| ServiceError::new(StatusCode::NOT_FOUND, "NotFoundException", "Not found."))
}

/// The GitHub API side: `POST /actions/runner-registration` with `RemoteAuth <registration
/// token>` and `{url, runner_event}` answers the Actions service URL and an admin token. The
/// API pipeline has checked that the registration token is live.
pub(crate) async fn registration_exchange(
    State(shared): Ctx,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let error = |status: StatusCode, message: &str| {
        json_response(
            status,
            &json!({"message": message, "documentation_url": "https://docs.github.com/rest"}),
        )
    };
    let token = headers
        .get(AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().split_once(' '))
        .map(|(_, t)| t.trim().to_owned())
        .unwrap_or_default();
    let Ok(request) = serde_json::from_slice::<Value>(&body) else {
        return error(StatusCode::BAD_REQUEST, "Problems parsing JSON");
    };
    let Some(scope) = request
        .get("url")
        .and_then(Value::as_str)
        .and_then(scope_of_url)
    else {
        return error(
            StatusCode::NOT_FOUND,
            "The url must name a repository or an organization.",
        );
    };
    let mut world = shared.lock();
    let granted = world
        .scalesets
        .registration_scope(&token, crate::util::now_epoch());
    if granted.as_ref() != Some(&scope) {
        return error(
            StatusCode::FORBIDDEN,
            "The registration token does not grant access to this url.",
        );
    }
    let (tenant, admin_token) = world.exchange_admin_token(&scope);
    let url = format!("{}/_pipelines/{tenant}/", base_url(&headers));
    json_response(StatusCode::OK, &json!({"url": url, "token": admin_token}))
}

/// `https://HOST/OWNER/REPO` or `https://HOST/ORG` (any host: GitHub, GHES, the fake).
fn scope_of_url(url: &str) -> Option<Scope> {
    let rest = url.split_once("://")?.1;
    let path = rest.split_once('/').map_or("", |(_, p)| p);
    let parts: Vec<&str> = path
        .trim_matches('/')
        .split('/')
        .filter(|p| !p.is_empty())
        .collect();
    match parts.as_slice() {
        ["enterprises", ..] => None,
        [org] => Some(Scope::org(*org)),
        [owner, repo] => Some(Scope::repo(*owner, *repo)),
        _ => None,
    }
}

async fn runner_groups(
    State(shared): Ctx,
    Path(tenant): Path<String>,
    headers: HeaderMap,
    uri: Uri,
) -> Response {
    let scope = match admin(&shared, &tenant, &headers) {
        Ok(scope) => scope,
        Err(denied) => return denied.into_response(),
    };
    let name = query(&uri, "groupName");
    list(shared.lock().groups_named(&scope, name.as_deref()))
}

async fn list_scale_sets(
    State(shared): Ctx,
    Path(tenant): Path<String>,
    headers: HeaderMap,
    uri: Uri,
) -> Response {
    let scope = match admin(&shared, &tenant, &headers) {
        Ok(scope) => scope,
        Err(denied) => return denied.into_response(),
    };
    let group = query(&uri, "runnerGroupId").and_then(|g| g.parse().ok());
    let name = query(&uri, "name");
    list(
        shared
            .lock()
            .find_scale_sets(&scope, group, name.as_deref()),
    )
}

async fn create_scale_set(
    State(shared): Ctx,
    Path(tenant): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<ServiceResult, Unauthorized> {
    let scope = admin(&shared, &tenant, &headers)?;
    Ok((|| {
        let body = ScaleSetBody::parse(&parse_json(&body)?)?;
        ok(shared.lock().create_scale_set(&scope, body)?)
    })())
}

async fn get_scale_set(
    State(shared): Ctx,
    Path((tenant, set)): Path<(String, String)>,
    headers: HeaderMap,
) -> Result<ServiceResult, Unauthorized> {
    let scope = admin(&shared, &tenant, &headers)?;
    Ok((|| {
        let world = shared.lock();
        ok(world.scale_set_json(world.scale_set(&scope, id(&set)?)?))
    })())
}

async fn update_scale_set(
    State(shared): Ctx,
    Path((tenant, set)): Path<(String, String)>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<ServiceResult, Unauthorized> {
    let scope = admin(&shared, &tenant, &headers)?;
    let result = (|| {
        let body = ScaleSetBody::parse(&parse_json(&body)?)?;
        ok(shared.lock().update_scale_set(&scope, id(&set)?, body)?)
    })();
    shared.scaleset_changed();
    Ok(result)
}

async fn delete_scale_set(
    State(shared): Ctx,
    Path((tenant, set)): Path<(String, String)>,
    headers: HeaderMap,
) -> Result<ServiceResult, Unauthorized> {
    let scope = admin(&shared, &tenant, &headers)?;
    let result = (|| {
        shared.lock().delete_scale_set(&scope, id(&set)?)?;
        Ok(StatusCode::NO_CONTENT.into_response())
    })();
    shared.scaleset_changed();
    Ok(result)
}

async fn create_session(
    State(shared): Ctx,
    Path((tenant, set)): Path<(String, String)>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<ServiceResult, Unauthorized> {
    let scope = admin(&shared, &tenant, &headers)?;
    let base = base_url(&headers);
    let result = (|| {
        let request = parse_json(&body)?;
        let owner = request
            .get("ownerName")
            .and_then(Value::as_str)
            .unwrap_or_default();
        ok(shared
            .lock()
            .create_session(&scope, id(&set)?, owner, &base)?)
    })();
    shared.scaleset_changed();
    Ok(result)
}

async fn refresh_session(
    State(shared): Ctx,
    Path((tenant, set, session)): Path<(String, String, String)>,
    headers: HeaderMap,
) -> Result<ServiceResult, Unauthorized> {
    let scope = admin(&shared, &tenant, &headers)?;
    let base = base_url(&headers);
    Ok((|| {
        ok(shared
            .lock()
            .refresh_session(&scope, id(&set)?, &session, &base)?)
    })())
}

async fn delete_session(
    State(shared): Ctx,
    Path((tenant, set, session)): Path<(String, String, String)>,
    headers: HeaderMap,
) -> Result<ServiceResult, Unauthorized> {
    let scope = admin(&shared, &tenant, &headers)?;
    let result = (|| {
        shared.lock().delete_session(&scope, id(&set)?, &session)?;
        Ok(StatusCode::NO_CONTENT.into_response())
    })();
    // A poll held on the deleted session ends now.
    shared.scaleset_changed();
    Ok(result)
}

/// `POST .../acquirejobs` with the session's queue token and a JSON array of request ids.
async fn acquire_jobs(
    State(shared): Ctx,
    Path((tenant, set)): Path<(String, String)>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<ServiceResult, Unauthorized> {
    let scope = shared
        .lock()
        .scalesets
        .tenant_scope(&tenant)
        .ok_or(Unauthorized)?;
    let token = bearer(&headers).ok_or(Unauthorized)?.to_owned();
    let Ok(set) = id(&set) else {
        return Ok(Err(ServiceError::no_scale_set(0)));
    };
    if !shared
        .lock()
        .queue_token_for(&scope, set, &token, Instant::now())
    {
        return Err(Unauthorized);
    }
    let result = (|| {
        let ids: Vec<u64> = serde_json::from_value(parse_json(&body)?).map_err(|e| {
            ServiceError::new(
                StatusCode::BAD_REQUEST,
                "ArgumentException",
                format!("Expected an array of job request ids: {e}."),
            )
        })?;
        let acquired = shared.lock().acquire(set, &ids);
        ok(json!({"count": acquired.len(), "value": acquired}))
    })();
    shared.scaleset_changed();
    Ok(result)
}

async fn generate_jit_config(
    State(shared): Ctx,
    Path((tenant, set)): Path<(String, String)>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<ServiceResult, Unauthorized> {
    let scope = admin(&shared, &tenant, &headers)?;
    Ok((|| {
        let request = parse_json(&body)?;
        let name = request
            .get("name")
            .and_then(Value::as_str)
            .unwrap_or_default();
        let work_folder = request
            .get("workFolder")
            .and_then(Value::as_str)
            .filter(|w| !w.is_empty())
            .unwrap_or("_work");
        ok(shared
            .lock()
            .generate_scale_set_jit(&scope, id(&set)?, name, work_folder)?)
    })())
}

async fn agents(
    State(shared): Ctx,
    Path(tenant): Path<String>,
    headers: HeaderMap,
    uri: Uri,
) -> Response {
    let scope = match admin(&shared, &tenant, &headers) {
        Ok(scope) => scope,
        Err(denied) => return denied.into_response(),
    };
    let name = query(&uri, "agentName");
    let world = shared.lock();
    let items = world
        .runners(&scope)
        .iter()
        .filter(|r| name.as_deref().is_none_or(|n| r.name == n))
        .filter_map(|r| world.agent_json(&scope, r.id))
        .collect();
    list(items)
}

fn no_agent(text: &str) -> ServiceError {
    ServiceError::new(
        StatusCode::NOT_FOUND,
        "AgentNotFoundException",
        format!("No runner found with identifier {text}."),
    )
}

async fn agent(
    State(shared): Ctx,
    Path((tenant, runner)): Path<(String, String)>,
    headers: HeaderMap,
) -> Result<ServiceResult, Unauthorized> {
    let scope = admin(&shared, &tenant, &headers)?;
    Ok((|| {
        let runner_id = runner.parse().map_err(|_| no_agent(&runner))?;
        let json = shared.lock().agent_json(&scope, runner_id);
        ok(json.ok_or_else(|| no_agent(&runner))?)
    })())
}

async fn remove_agent(
    State(shared): Ctx,
    Path((tenant, runner)): Path<(String, String)>,
    headers: HeaderMap,
) -> Result<ServiceResult, Unauthorized> {
    let scope = admin(&shared, &tenant, &headers)?;
    let result = (|| {
        let runner_id = runner.parse().map_err(|_| no_agent(&runner))?;
        shared.lock().remove_agent(&scope, runner_id)?;
        Ok(StatusCode::NO_CONTENT.into_response())
    })();
    shared.scaleset_changed();
    Ok(result)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scopes_from_config_urls() {
        assert_eq!(
            scope_of_url("https://github.com/acme/zquic"),
            Some(Scope::repo("acme", "zquic"))
        );
        assert_eq!(
            scope_of_url("http://127.0.0.1:9/acme/"),
            Some(Scope::org("acme"))
        );
        assert_eq!(scope_of_url("https://github.com/enterprises/big"), None);
        assert_eq!(scope_of_url("https://github.com/"), None);
        assert_eq!(scope_of_url("https://github.com/a/b/c"), None);
    }

    #[test]
    fn endpoints_by_path() {
        let e = |m: Method, p: &str| endpoint_of(&m, p);
        assert_eq!(
            e(Method::GET, "/_queue/t/s/messages"),
            ScaleSetEndpoint::GetMessage
        );
        assert_eq!(
            e(Method::DELETE, "/_queue/t/s/messages/3"),
            ScaleSetEndpoint::DeleteMessage
        );
        let sets = "/_pipelines/t/_apis/runtime/runnerscalesets";
        assert_eq!(e(Method::POST, sets), ScaleSetEndpoint::ScaleSets);
        assert_eq!(
            e(Method::PATCH, &format!("{sets}/1/sessions/x")),
            ScaleSetEndpoint::Sessions
        );
        assert_eq!(
            e(Method::POST, &format!("{sets}/1/generatejitconfig")),
            ScaleSetEndpoint::GenerateJitConfig
        );
        assert_eq!(
            e(Method::POST, &format!("{sets}/1/acquirejobs")),
            ScaleSetEndpoint::AcquireJobs
        );
        assert_eq!(
            e(Method::GET, "/_pipelines/t/_apis/runtime/runnergroups/"),
            ScaleSetEndpoint::RunnerGroups
        );
        assert_eq!(
            e(
                Method::DELETE,
                "/_pipelines/t/_apis/distributedtask/pools/0/agents/4"
            ),
            ScaleSetEndpoint::Runners
        );
    }
}
