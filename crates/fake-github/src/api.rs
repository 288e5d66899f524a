//! GitHub's REST API, as far as a runner manager uses it: routes, handlers and the request
//! pipeline (latency, faults, authentication, rate limit, headers, request log).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{FromRequestParts, Path, Query, Request, State};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use http::header::{AUTHORIZATION, CONTENT_TYPE, HOST, LINK, RETRY_AFTER};
use http::request::Parts;
use http::{HeaderMap, HeaderName, HeaderValue, StatusCode, Uri};
use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_json::{Value, json};

use crate::state::{
    self, CreateError, LabelError, RateDecision, Runner, State as World, TOKEN_TTL_SECS,
};
use crate::util::{self, JwtError};
use crate::{Fault, JitRunnerSettings, NewRunner, RequestRecord, Scope, Shared};

const DOCS_REST: &str = "https://docs.github.com/rest";
const DOCS_RUNNERS: &str = "https://docs.github.com/rest/actions/self-hosted-runners";
const DOCS_JIT: &str = "https://docs.github.com/rest/actions/self-hosted-runners#create-configuration-for-a-just-in-time-runner-for-an-organization";
const DOCS_DELETE: &str = "https://docs.github.com/rest/actions/self-hosted-runners#delete-a-self-hosted-runner-from-an-organization";
const DOCS_LABELS: &str = "https://docs.github.com/rest/actions/self-hosted-runners#add-custom-labels-to-a-self-hosted-runner-for-an-organization";
const DOCS_GROUPS: &str = "https://docs.github.com/rest/actions/self-hosted-runner-groups#add-a-self-hosted-runner-to-a-group-for-an-organization";
const DOCS_APPS: &str =
    "https://docs.github.com/rest/apps/apps#create-an-installation-access-token-for-an-app";
const DOCS_RATE: &str = "https://docs.github.com/rest/overview/rate-limits-for-the-rest-api";
const DOCS_SECONDARY: &str = "https://docs.github.com/free-pro-team@latest/rest/overview/rate-limits-for-the-rest-api#about-secondary-rate-limits";
const DOCS_PERMISSIONS: &str = "https://docs.github.com/rest/actions/self-hosted-runners#list-self-hosted-runners-for-a-repository";

const JSON_UTF8: &str = "application/json; charset=utf-8";
const API_VERSION: &str = "2022-11-28";
const DEFAULT_PER_PAGE: usize = 30;
const MAX_PER_PAGE: usize = 100;
const MAX_LABELS: usize = 100;
/// How long a `Fault::Timeout` holds a request.
const TIMEOUT_HOLD: Duration = Duration::from_secs(60);
/// Permissions the fake App's installation grants.
const INSTALLATION_PERMISSIONS: &[(&str, &str)] = &[
    ("actions", "read"),
    ("administration", "write"),
    ("metadata", "read"),
    ("organization_self_hosted_runners", "write"),
];

type Ctx = State<Arc<Shared>>;

/// The API router, wrapped in the request pipeline.
pub(crate) fn router(shared: Arc<Shared>) -> Router {
    let mut router = Router::new();
    for prefix in [
        "/repos/{owner}/{repo}/actions/runners",
        "/orgs/{org}/actions/runners",
    ] {
        router = router
            .route(prefix, get(list_runners))
            .route(&format!("{prefix}/downloads"), get(runner_downloads))
            .route(
                &format!("{prefix}/registration-token"),
                post(registration_token),
            )
            .route(&format!("{prefix}/remove-token"), post(remove_token))
            .route(
                &format!("{prefix}/generate-jitconfig"),
                post(generate_jitconfig),
            )
            .route(
                &format!("{prefix}/{{runner_id}}"),
                get(get_runner).delete(delete_runner),
            )
            .route(
                &format!("{prefix}/{{runner_id}}/labels"),
                get(list_labels)
                    .post(add_labels)
                    .put(set_labels)
                    .delete(remove_custom_labels),
            )
            .route(
                &format!("{prefix}/{{runner_id}}/labels/{{name}}"),
                delete(remove_label),
            );
    }
    router
        .route("/orgs/{org}/actions/runner-groups", get(list_runner_groups))
        .route(
            "/orgs/{org}/actions/runner-groups/{runner_group_id}/runners/{runner_id}",
            axum::routing::put(add_runner_to_group).delete(remove_runner_from_group),
        )
        .route("/repos/{owner}/{repo}/installation", get(installation))
        .route("/orgs/{org}/installation", get(installation))
        .route(
            "/app/installations/{installation_id}/access_tokens",
            post(installation_token),
        )
        .route(
            "/repos/{owner}/{repo}/actions/runs",
            get(crate::workflows::list_runs),
        )
        .route(
            "/repos/{owner}/{repo}/actions/runs/{run_id}/jobs",
            get(crate::workflows::list_jobs),
        )
        .route("/rate_limit", get(rate_limit))
        .route(
            "/actions/runner-registration",
            post(crate::scaleset::registration_exchange),
        )
        // GitHub answers an unknown path, or a known one with the wrong method, with 404.
        .fallback(not_found)
        .method_not_allowed_fallback(not_found)
        .layer(middleware::from_fn_with_state(shared.clone(), pipeline))
        .with_state(shared)
}

// ---- responses --------------------------------------------------------------------------

pub(crate) fn json_response(status: StatusCode, body: &Value) -> Response {
    let mut response = (status, body.to_string()).into_response();
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static(JSON_UTF8));
    response
}

/// An error in GitHub's shape: `{"message", "documentation_url", "status"}`.
pub(crate) struct ApiError {
    status: StatusCode,
    message: String,
    documentation_url: &'static str,
    headers: Vec<(HeaderName, String)>,
}

impl ApiError {
    fn new(
        status: StatusCode,
        message: impl Into<String>,
        documentation_url: &'static str,
    ) -> Self {
        ApiError {
            status,
            message: message.into(),
            documentation_url,
            headers: Vec::new(),
        }
    }

    fn not_found(documentation_url: &'static str) -> Self {
        ApiError::new(StatusCode::NOT_FOUND, "Not Found", documentation_url)
    }

    fn unprocessable(message: impl Into<String>, documentation_url: &'static str) -> Self {
        ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, message, documentation_url)
    }

    fn header(mut self, name: HeaderName, value: impl ToString) -> Self {
        self.headers.push((name, value.to_string()));
        self
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut response = json_response(
            self.status,
            &json!({
                "message": self.message,
                "documentation_url": self.documentation_url,
                "status": self.status.as_u16().to_string(),
            }),
        );
        for (name, value) in self.headers {
            if let Ok(value) = HeaderValue::from_str(&value) {
                response.headers_mut().insert(name, value);
            }
        }
        response
    }
}

type ApiResult = Result<Response, ApiError>;

async fn not_found() -> ApiError {
    ApiError::not_found(DOCS_REST)
}

/// Parses a JSON request body the way GitHub reports problems: unparsable JSON is a 400,
/// JSON of the wrong shape a 422.
fn parse_body<T: DeserializeOwned>(body: &Bytes, docs: &'static str) -> Result<T, ApiError> {
    let value: Value = serde_json::from_slice(body)
        .map_err(|_| ApiError::new(StatusCode::BAD_REQUEST, "Problems parsing JSON", docs))?;
    serde_json::from_value(value)
        .map_err(|e| ApiError::unprocessable(format!("Invalid request.\n\n{e}."), docs))
}

// ---- request pipeline -------------------------------------------------------------------

/// Which credentials an endpoint wants.
#[derive(Clone, Copy, PartialEq, Eq)]
enum AuthKind {
    /// The API token or an installation token.
    Token,
    /// A GitHub App JWT.
    AppJwt,
    /// `RemoteAuth <registration token>` (the scale set service's registration exchange).
    RemoteAuth,
}

fn auth_kind(path: &str) -> AuthKind {
    let segments: Vec<&str> = path.trim_matches('/').split('/').collect();
    match segments.as_slice() {
        ["app", ..] | ["repos", _, _, "installation"] | ["orgs", _, "installation"] => {
            AuthKind::AppJwt
        }
        ["actions", "runner-registration"] => AuthKind::RemoteAuth,
        _ => AuthKind::Token,
    }
}

/// The credential of an `Authorization: Bearer X` or `token X` header.
fn credential(headers: &HeaderMap) -> Option<&str> {
    let value = headers.get(AUTHORIZATION)?.to_str().ok()?.trim();
    let (scheme, credential) = value.split_once(' ')?;
    let scheme_ok = scheme.eq_ignore_ascii_case("bearer") || scheme.eq_ignore_ascii_case("token");
    scheme_ok.then(|| credential.trim())
}

/// The credential of an `Authorization: RemoteAuth X` header.
fn remote_auth(headers: &HeaderMap) -> Option<&str> {
    let value = headers.get(AUTHORIZATION)?.to_str().ok()?.trim();
    let (scheme, credential) = value.split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("remoteauth")
        .then(|| credential.trim())
}

fn authenticate(
    world: &mut World,
    headers: &HeaderMap,
    kind: AuthKind,
    now: u64,
) -> Result<(), ApiError> {
    if kind == AuthKind::RemoteAuth {
        let live = remote_auth(headers)
            .is_some_and(|token| world.scalesets.registration_scope(token, now).is_some());
        return if live {
            Ok(())
        } else {
            Err(ApiError::new(
                StatusCode::UNAUTHORIZED,
                "Bad credentials",
                DOCS_REST,
            ))
        };
    }
    let Some(credential) = credential(headers) else {
        return Err(ApiError::new(
            StatusCode::UNAUTHORIZED,
            "Requires authentication",
            DOCS_REST,
        ));
    };
    match kind {
        AuthKind::Token if world.token_accepted(credential, now) => Ok(()),
        AuthKind::Token => Err(ApiError::new(
            StatusCode::UNAUTHORIZED,
            "Bad credentials",
            DOCS_REST,
        )),
        AuthKind::AppJwt => {
            let verdict = match world.app {
                Some(app) => util::check_app_jwt(credential, app.app_id, now),
                None => Err(JwtError::WrongIssuer),
            };
            match verdict {
                Ok(()) => Ok(()),
                Err(JwtError::Expired) => Err(ApiError::new(
                    StatusCode::UNAUTHORIZED,
                    "'Expiration time' claim ('exp') must be a numeric value representing the future time at which the assertion expires",
                    DOCS_REST,
                )),
                Err(JwtError::Undecodable | JwtError::WrongIssuer) => Err(ApiError::new(
                    StatusCode::UNAUTHORIZED,
                    "A JSON web token could not be decoded",
                    DOCS_REST,
                )),
            }
        }
        AuthKind::RemoteAuth => Err(ApiError::new(
            StatusCode::UNAUTHORIZED,
            "Bad credentials",
            DOCS_REST,
        )),
    }
}

fn fault_response(fault: &Fault, request_id: &str) -> Response {
    match fault {
        Fault::Status {
            status,
            retry_after,
        } => {
            let status = StatusCode::from_u16(*status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
            let (message, docs) = match status.as_u16() {
                401 => ("Bad credentials".to_owned(), DOCS_REST),
                404 => ("Not Found".to_owned(), DOCS_REST),
                422 => ("Validation Failed".to_owned(), DOCS_REST),
                429 => (secondary_message(request_id), DOCS_SECONDARY),
                500 | 502 => ("Server Error".to_owned(), DOCS_REST),
                504 => (timeout_message(), DOCS_REST),
                _ => (
                    status.canonical_reason().unwrap_or("Error").to_owned(),
                    DOCS_REST,
                ),
            };
            let mut error = ApiError::new(status, message, docs);
            if let Some(secs) = retry_after {
                error = error.header(RETRY_AFTER, secs);
            }
            error.into_response()
        }
        Fault::SecondaryRateLimit { retry_after } => ApiError::new(
            StatusCode::FORBIDDEN,
            secondary_message(request_id),
            DOCS_SECONDARY,
        )
        .header(RETRY_AFTER, retry_after)
        .into_response(),
        Fault::Forbidden {
            accepted_permissions,
        } => ApiError::new(
            StatusCode::FORBIDDEN,
            "Resource not accessible by personal access token",
            DOCS_PERMISSIONS,
        )
        .header(
            HeaderName::from_static("x-accepted-github-permissions"),
            accepted_permissions,
        )
        .into_response(),
        Fault::Timeout => {
            ApiError::new(StatusCode::GATEWAY_TIMEOUT, timeout_message(), DOCS_REST).into_response()
        }
        Fault::Suspended => ApiError::new(
            StatusCode::FORBIDDEN,
            "This installation has been suspended",
            DOCS_APPS,
        )
        .into_response(),
        Fault::ClockSkew => ApiError::new(
            StatusCode::UNAUTHORIZED,
            "'Issued at' claim ('iat') must be an Integer representing a time in the past",
            DOCS_REST,
        )
        .into_response(),
        // Answered as usual by the pipeline; never an error of its own.
        Fault::RunnersVanish { .. } => StatusCode::OK.into_response(),
    }
}

fn secondary_message(request_id: &str) -> String {
    format!(
        "You have exceeded a secondary rate limit. Please wait a few minutes before you try again. \
         If you reach out to GitHub Support for help, please include the request ID {request_id}."
    )
}

fn timeout_message() -> String {
    "We couldn't respond to your request in time. Sorry about that. Please try resubmitting \
     your request and contact us if the problem persists."
        .to_owned()
}

fn primary_message(request_id: &str, now: u64) -> String {
    let stamp = util::rfc3339(now).replace('T', " ").replace('Z', " UTC");
    format!(
        "API rate limit exceeded for user ID 1. If you reach out to GitHub Support for help, \
         please include the request ID {request_id} and timestamp {stamp}."
    )
}

/// Every API request passes here: latency, then faults, authentication, the rate limit and the
/// handler; GitHub's headers go on every answer and the request goes into the log.
async fn pipeline(State(shared): Ctx, request: Request, next: Next) -> Response {
    let if_none_match = request
        .headers()
        .get(http::header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
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
    let method = request.method().to_string();
    let path = request.uri().path().to_owned();
    let query = request.uri().query().unwrap_or_default().to_owned();
    let (latency, request_id) = {
        let mut world = shared.lock();
        (world.latency, world.request_id())
    };
    if !latency.is_zero() {
        shared.sleep(latency).await;
    }
    let now = util::now_epoch();
    let (auth, fault) = {
        let mut world = shared.lock();
        let auth = authenticate(&mut world, request.headers(), auth_kind(&path), now);
        (auth, world.take_fault())
    };
    let authenticated = auth.is_ok();
    let (fault, vanish) = match fault {
        Some(Fault::RunnersVanish { count }) => (None, count),
        other => (other, 0),
    };
    let record = |status: StatusCode| RequestRecord {
        method: method.clone(),
        path: path.clone(),
        query: query.clone(),
        status: status.as_u16(),
        authenticated,
        user_agent: user_agent.clone(),
        accept: accept.clone(),
    };

    let mut response = match (fault, auth) {
        (Some(Fault::Timeout), _) => {
            // Logged now: the client will most likely give up before the answer comes.
            shared.record(record(StatusCode::GATEWAY_TIMEOUT));
            shared.sleep(TIMEOUT_HOLD).await;
            let mut response = fault_response(&Fault::Timeout, &request_id);
            add_github_headers(&shared, response.headers_mut(), &request_id);
            return response;
        }
        (Some(fault), _) => fault_response(&fault, &request_id),
        (None, Err(error)) => error.into_response(),
        (None, Ok(())) => {
            // GitHub does not count calls to /rate_limit against the limit.
            let decision = if path == "/rate_limit" {
                RateDecision::Allowed
            } else {
                shared.lock().consume_rate_limit(now)
            };
            match decision {
                RateDecision::Allowed => {
                    let response = next.run(request).await;
                    conditional(&shared, &method, if_none_match.as_deref(), response).await
                }
                RateDecision::Exhausted => ApiError::new(
                    StatusCode::FORBIDDEN,
                    primary_message(&request_id, now),
                    DOCS_RATE,
                )
                .into_response(),
            }
        }
    };
    // axum names the allowed methods on its 405 path; GitHub answers 404 without that header.
    response.headers_mut().remove(http::header::ALLOW);
    add_github_headers(&shared, response.headers_mut(), &request_id);
    shared.record(record(response.status()));
    if vanish > 0 {
        shared.lock().vanish_runners(vanish);
    }
    response
}

/// GitHub's conditional requests: a 200 to a GET carries an `ETag`; the same GET with
/// `If-None-Match` set to it gets `304 Not Modified`, which does not count against the rate limit.
async fn conditional(
    shared: &Shared,
    method: &str,
    if_none_match: Option<&str>,
    response: Response,
) -> Response {
    if method != "GET" || response.status() != StatusCode::OK {
        return response;
    }
    let (mut parts, body) = response.into_parts();
    let Ok(bytes) = axum::body::to_bytes(body, usize::MAX).await else {
        return Response::from_parts(parts, axum::body::Body::empty());
    };
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    std::hash::Hash::hash(&bytes[..], &mut hasher);
    let etag = format!("W/\"{:016x}\"", std::hash::Hasher::finish(&hasher));
    if let Ok(value) = HeaderValue::from_str(&etag) {
        parts.headers.insert(http::header::ETAG, value);
    }
    if if_none_match.is_some_and(|tags| tags.split(',').any(|t| t.trim() == etag)) {
        shared.lock().refund_rate_limit();
        parts.status = StatusCode::NOT_MODIFIED;
        parts.headers.remove(http::header::CONTENT_TYPE);
        // Keep `Link`: GitHub sends it on 304s too, and a client walks pages with it.
        return Response::from_parts(parts, axum::body::Body::empty());
    }
    Response::from_parts(parts, axum::body::Body::from(bytes))
}

fn add_github_headers(shared: &Shared, headers: &mut HeaderMap, request_id: &str) {
    let rate = shared.lock().rate_snapshot(util::now_epoch());
    let pairs = [
        ("x-ratelimit-limit", rate.limit.to_string()),
        ("x-ratelimit-remaining", rate.remaining.to_string()),
        ("x-ratelimit-used", rate.used.to_string()),
        ("x-ratelimit-reset", rate.reset.to_string()),
        ("x-ratelimit-resource", "core".to_owned()),
        ("x-github-request-id", request_id.to_owned()),
        ("x-github-api-version-selected", API_VERSION.to_owned()),
        ("x-github-media-type", "github.v3; format=json".to_owned()),
    ];
    for (name, value) in pairs {
        if let Ok(value) = HeaderValue::from_str(&value) {
            headers.insert(HeaderName::from_static(name), value);
        }
    }
}

// ---- path parameters and pagination -----------------------------------------------------

/// The scope (and runner, label) a request addresses, from the path parameters.
struct Target {
    scope: Scope,
    runner_id: Option<u64>,
    label: Option<String>,
}

impl Target {
    fn runner_id(&self) -> Result<u64, ApiError> {
        self.runner_id
            .ok_or_else(|| ApiError::not_found(DOCS_RUNNERS))
    }
}

impl FromRequestParts<Arc<Shared>> for Target {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &Arc<Shared>,
    ) -> Result<Self, Self::Rejection> {
        let Path(params) = Path::<HashMap<String, String>>::from_request_parts(parts, state)
            .await
            .map_err(|_| ApiError::not_found(DOCS_REST))?;
        let scope = match (params.get("owner"), params.get("repo"), params.get("org")) {
            (Some(owner), Some(repo), _) => Scope::repo(owner.as_str(), repo.as_str()),
            (_, _, Some(org)) => Scope::org(org.as_str()),
            _ => return Err(ApiError::not_found(DOCS_REST)),
        };
        // A runner id that is not a number names no runner.
        let runner_id = params
            .get("runner_id")
            .map(|id| id.parse::<u64>())
            .transpose()
            .map_err(|_| ApiError::not_found(DOCS_RUNNERS))?;
        Ok(Target {
            scope,
            runner_id,
            label: params.get("name").cloned(),
        })
    }
}

pub(crate) fn query_pairs(uri: &Uri) -> Vec<(String, String)> {
    Query::<Vec<(String, String)>>::try_from_uri(uri)
        .map(|Query(pairs)| pairs)
        .unwrap_or_default()
}

fn query_value<'a>(pairs: &'a [(String, String)], key: &str) -> Option<&'a str> {
    pairs
        .iter()
        .find(|(k, _)| k == key)
        .map(|(_, v)| v.as_str())
}

/// `per_page` (default 30, at most 100) and `page` (from 1); GitHub ignores values it cannot
/// read rather than failing.
fn page_params(pairs: &[(String, String)]) -> (usize, usize) {
    let per_page = query_value(pairs, "per_page")
        .and_then(|v| v.parse::<usize>().ok())
        .filter(|&n| n > 0)
        .map_or(DEFAULT_PER_PAGE, |n| n.min(MAX_PER_PAGE));
    let page = query_value(pairs, "page")
        .and_then(|v| v.parse::<usize>().ok())
        .filter(|&n| n > 0)
        .unwrap_or(1);
    (page, per_page)
}

fn page_of<T>(items: &[T], page: usize, per_page: usize) -> &[T] {
    let start = (page - 1).saturating_mul(per_page).min(items.len());
    let end = start.saturating_add(per_page).min(items.len());
    items.get(start..end).unwrap_or_default()
}

/// `http://HOST`, from the request's Host header, so links point where the client connected.
pub(crate) fn base_url(headers: &HeaderMap) -> String {
    let host = headers
        .get(HOST)
        .and_then(|h| h.to_str().ok())
        .unwrap_or("localhost");
    format!("http://{host}")
}

/// GitHub's `Link` header: `<URL>; rel="prev", <URL>; rel="next", <URL>; rel="last",
/// <URL>; rel="first"`, each present only when it applies; the other query parameters stay.
fn link_header(
    headers: &HeaderMap,
    uri: &Uri,
    page: usize,
    per_page: usize,
    total: usize,
) -> Option<String> {
    let last = total.div_ceil(per_page).max(1);
    let base = format!("{}{}", base_url(headers), uri.path());
    let kept: Vec<&str> = uri
        .query()
        .unwrap_or_default()
        .split('&')
        .filter(|p| !p.is_empty() && p.split('=').next() != Some("page"))
        .collect();
    let url = |n: usize| {
        let mut params = kept.clone();
        let page = format!("page={n}");
        params.push(&page);
        format!("<{base}?{}>", params.join("&"))
    };
    let mut links = Vec::new();
    if page > 1 {
        links.push(format!("{}; rel=\"prev\"", url(page - 1)));
    }
    if page < last {
        links.push(format!("{}; rel=\"next\"", url(page + 1)));
        links.push(format!("{}; rel=\"last\"", url(last)));
    }
    if page > 1 {
        links.push(format!("{}; rel=\"first\"", url(1)));
    }
    (!links.is_empty()).then(|| links.join(", "))
}

fn with_link(mut response: Response, link: Option<String>) -> Response {
    if let Some(value) = link.and_then(|l| HeaderValue::from_str(&l).ok()) {
        response.headers_mut().insert(LINK, value);
    }
    response
}

// ---- runners ----------------------------------------------------------------------------

async fn list_runners(
    State(shared): Ctx,
    target: Target,
    headers: HeaderMap,
    uri: Uri,
) -> Response {
    let pairs = query_pairs(&uri);
    let (page, per_page) = page_params(&pairs);
    let mut runners = shared.lock().runners(&target.scope);
    if let Some(name) = query_value(&pairs, "name") {
        runners.retain(|r| r.name == name);
    }
    let body = json!({
        "total_count": runners.len(),
        "runners": page_of(&runners, page, per_page).iter().map(Runner::to_json).collect::<Vec<_>>(),
    });
    let link = link_header(&headers, &uri, page, per_page, runners.len());
    with_link(json_response(StatusCode::OK, &body), link)
}

async fn get_runner(State(shared): Ctx, target: Target) -> ApiResult {
    let id = target.runner_id()?;
    let world = shared.lock();
    let runner = world
        .runner(&target.scope, id)
        .ok_or_else(|| ApiError::not_found(DOCS_RUNNERS))?;
    Ok(json_response(StatusCode::OK, &runner.to_json()))
}

async fn delete_runner(State(shared): Ctx, target: Target) -> ApiResult {
    let id = target.runner_id()?;
    let mut world = shared.lock();
    let runner = world
        .runner(&target.scope, id)
        .ok_or_else(|| ApiError::not_found(DOCS_RUNNERS))?;
    if runner.busy {
        // GitHub's message, stray closing quote included.
        return Err(ApiError::unprocessable(
            format!(
                "Bad request - Runner \"{}\" is still running a job\"",
                runner.name
            ),
            DOCS_DELETE,
        ));
    }
    world.remove_runner(&target.scope, id);
    Ok(StatusCode::NO_CONTENT.into_response())
}

fn runner_token_response(world: &mut World) -> Response {
    let expires = util::now_epoch() + TOKEN_TTL_SECS;
    json_response(
        StatusCode::CREATED,
        &json!({
            "token": world.runner_token(),
            "expires_at": util::rfc3339_millis(expires),
        }),
    )
}

async fn registration_token(State(shared): Ctx, target: Target) -> Response {
    let mut world = shared.lock();
    world.registration_tokens_issued += 1;
    // Remembered: the scale set service's registration exchange accepts it.
    let token = world.runner_token();
    let expires = util::now_epoch() + TOKEN_TTL_SECS;
    world
        .scalesets
        .record_registration_token(&target.scope, &token, expires);
    json_response(
        StatusCode::CREATED,
        &json!({"token": token, "expires_at": util::rfc3339_millis(expires)}),
    )
}

async fn remove_token(State(shared): Ctx, _target: Target) -> Response {
    runner_token_response(&mut shared.lock())
}

#[derive(Deserialize)]
struct JitRequest {
    name: String,
    runner_group_id: u64,
    labels: Vec<String>,
    #[serde(default)]
    work_folder: Option<String>,
}

async fn generate_jitconfig(State(shared): Ctx, target: Target, body: Bytes) -> ApiResult {
    let request: JitRequest = parse_body(&body, DOCS_JIT)?;
    if request.labels.is_empty() || request.labels.len() > MAX_LABELS {
        return Err(ApiError::unprocessable(
            format!(
                "Invalid request.\n\nlabels must have between 1 and {MAX_LABELS} items, got {}.",
                request.labels.len()
            ),
            DOCS_JIT,
        ));
    }
    if request.name.trim().is_empty() {
        return Err(ApiError::unprocessable(
            "Invalid request.\n\nname must not be empty.",
            DOCS_JIT,
        ));
    }
    let mut world = shared.lock();
    let new = NewRunner {
        name: request.name.clone(),
        labels: request.labels,
        status_online: false,
        busy: false,
        runner_group_id: request.runner_group_id,
        ephemeral: true,
    };
    let runner = world
        .create_runner(&target.scope, new)
        .map_err(|e| match e {
            CreateError::NameTaken => ApiError::new(
                StatusCode::CONFLICT,
                format!(
                    "Already exists - A runner with the name {} already exists.",
                    request.name
                ),
                DOCS_JIT,
            ),
            CreateError::UnknownGroup => ApiError::unprocessable(
                format!(
                    "Invalid request.\n\nNo runner group with id {} exists.",
                    request.runner_group_id
                ),
                DOCS_JIT,
            ),
        })?;
    world.jit_configs_issued += 1;
    let group_name = match &target.scope {
        Scope::Org(org) => world
            .runner_groups(org)
            .into_iter()
            .find(|g| g.id == runner.group_id)
            .map_or_else(|| "Default".to_owned(), |g| g.name),
        Scope::Repo { .. } => "Default".to_owned(),
    };
    let encoded = encode_jit_config(
        &mut world,
        &target.scope,
        &runner,
        &group_name,
        request.work_folder.as_deref().unwrap_or("_work"),
    );
    Ok(json_response(
        StatusCode::CREATED,
        &json!({"runner": runner.to_json(), "encoded_jit_config": encoded}),
    ))
}

/// Builds a config shaped like GitHub's: base64 of `{".runner", ".credentials",
/// ".credentials_rsaparams"}`, each a base64 JSON file. Its secrets are random, never the API
/// token.
pub(crate) fn encode_jit_config(
    world: &mut World,
    scope: &Scope,
    runner: &Runner,
    group_name: &str,
    work_folder: &str,
) -> String {
    let github_url = match scope {
        Scope::Repo { owner, repo } => format!("https://github.com/{owner}/{repo}"),
        Scope::Org(org) => format!("https://github.com/{org}"),
    };
    let runner_file = json!({
        "agentId": runner.id,
        "agentName": runner.name,
        "poolId": runner.group_id,
        "poolName": group_name,
        "serverUrl": format!("https://pipelinesghubeus1.actions.githubusercontent.com/{}/", world.secret(40)),
        "gitHubUrl": github_url,
        "workFolder": work_folder,
        "ephemeral": true,
        "disableUpdate": false,
    });
    let credentials = json!({
        "scheme": "OAuth",
        "data": {
            "clientId": world.secret(32),
            "authorizationUrl": format!("https://vstoken.actions.githubusercontent.com/_apis/oauth2/token/{}", world.secret(32)),
            "requireFipsCryptography": "False",
        },
    });
    let rsa = json!({
        "d": world.secret(64), "dp": world.secret(32), "dq": world.secret(32),
        "exponent": "AQAB", "inverseQ": world.secret(32), "modulus": world.secret(64),
        "p": world.secret(32), "q": world.secret(32),
    });
    let outer = json!({
        ".runner": util::base64_encode(runner_file.to_string().as_bytes()),
        ".credentials": util::base64_encode(credentials.to_string().as_bytes()),
        ".credentials_rsaparams": util::base64_encode(rsa.to_string().as_bytes()),
    });
    util::base64_encode(outer.to_string().as_bytes())
}

pub(crate) fn decode_jit_config(encoded: &str) -> Option<JitRunnerSettings> {
    let outer: Value = serde_json::from_slice(&util::base64_decode(encoded)?).ok()?;
    let runner: Value =
        serde_json::from_slice(&util::base64_decode(outer.get(".runner")?.as_str()?)?).ok()?;
    Some(JitRunnerSettings {
        runner_id: runner.get("agentId")?.as_u64()?,
        name: runner.get("agentName")?.as_str()?.to_owned(),
        runner_group_id: runner.get("poolId")?.as_u64()?,
        work_folder: runner.get("workFolder")?.as_str()?.to_owned(),
        github_url: runner.get("gitHubUrl")?.as_str()?.to_owned(),
    })
}

// ---- labels -----------------------------------------------------------------------------

#[derive(Deserialize)]
struct LabelsRequest {
    labels: Vec<String>,
}

fn labels_response(labels: &[state::Label]) -> Response {
    json_response(
        StatusCode::OK,
        &json!({"total_count": labels.len(), "labels": state::labels_json(labels)}),
    )
}

fn label_error(error: LabelError, name: Option<&str>) -> ApiError {
    match error {
        LabelError::NoRunner | LabelError::NoLabel => ApiError::not_found(DOCS_LABELS),
        LabelError::ReadOnly => ApiError::unprocessable(
            format!(
                "Invalid request.\n\nThe label {} is read-only and cannot be removed.",
                name.unwrap_or_default()
            ),
            DOCS_LABELS,
        ),
    }
}

fn parse_labels(body: &Bytes, min: usize) -> Result<Vec<String>, ApiError> {
    let request: LabelsRequest = parse_body(body, DOCS_LABELS)?;
    let n = request.labels.len();
    if n < min || n > MAX_LABELS || request.labels.iter().any(|l| l.trim().is_empty()) {
        return Err(ApiError::unprocessable(
            format!(
                "Invalid request.\n\nlabels must have between {min} and {MAX_LABELS} non-empty items, got {n}."
            ),
            DOCS_LABELS,
        ));
    }
    Ok(request.labels)
}

async fn list_labels(State(shared): Ctx, target: Target) -> ApiResult {
    let id = target.runner_id()?;
    let labels = shared
        .lock()
        .runner_labels(&target.scope, id)
        .ok_or_else(|| ApiError::not_found(DOCS_LABELS))?;
    Ok(labels_response(&labels))
}

async fn add_labels(State(shared): Ctx, target: Target, body: Bytes) -> ApiResult {
    let id = target.runner_id()?;
    if shared.lock().runner(&target.scope, id).is_none() {
        return Err(ApiError::not_found(DOCS_LABELS));
    }
    let names = parse_labels(&body, 1)?;
    let labels = shared
        .lock()
        .add_labels(&target.scope, id, &names)
        .map_err(|e| label_error(e, None))?;
    Ok(labels_response(&labels))
}

async fn set_labels(State(shared): Ctx, target: Target, body: Bytes) -> ApiResult {
    let id = target.runner_id()?;
    if shared.lock().runner(&target.scope, id).is_none() {
        return Err(ApiError::not_found(DOCS_LABELS));
    }
    let names = parse_labels(&body, 0)?;
    let labels = shared
        .lock()
        .set_labels(&target.scope, id, &names)
        .map_err(|e| label_error(e, None))?;
    Ok(labels_response(&labels))
}

async fn remove_custom_labels(State(shared): Ctx, target: Target) -> ApiResult {
    let id = target.runner_id()?;
    let labels = shared
        .lock()
        .set_labels(&target.scope, id, &[])
        .map_err(|e| label_error(e, None))?;
    Ok(labels_response(&labels))
}

async fn remove_label(State(shared): Ctx, target: Target) -> ApiResult {
    let id = target.runner_id()?;
    let name = target.label.clone().unwrap_or_default();
    let labels = shared
        .lock()
        .remove_label(&target.scope, id, &name)
        .map_err(|e| label_error(e, Some(&name)))?;
    Ok(labels_response(&labels))
}

// ---- runner groups ----------------------------------------------------------------------

async fn list_runner_groups(
    State(shared): Ctx,
    target: Target,
    headers: HeaderMap,
    uri: Uri,
) -> ApiResult {
    let Scope::Org(org) = &target.scope else {
        return Err(ApiError::not_found(DOCS_REST));
    };
    let pairs = query_pairs(&uri);
    let (page, per_page) = page_params(&pairs);
    let groups = shared.lock().runner_groups(org);
    let base = base_url(&headers);
    let items: Vec<Value> = page_of(&groups, page, per_page)
        .iter()
        .map(|g| {
            json!({
                "id": g.id,
                "name": g.name,
                "visibility": "all",
                "default": g.id == state::DEFAULT_GROUP_ID,
                "runners_url": format!("{base}/orgs/{org}/actions/runner-groups/{}/runners", g.id),
                "inherited": false,
                "allows_public_repositories": false,
                "restricted_to_workflows": false,
                "selected_workflows": [],
                "workflow_restrictions_read_only": false,
            })
        })
        .collect();
    let body = json!({"total_count": groups.len(), "runner_groups": items});
    let link = link_header(&headers, &uri, page, per_page, groups.len());
    Ok(with_link(json_response(StatusCode::OK, &body), link))
}

/// `PUT /orgs/{org}/actions/runner-groups/{group}/runners/{id}`: 204, or 404 when the group
/// or the runner is not the organization's.
async fn add_runner_to_group(
    State(shared): Ctx,
    Path((org, group, runner)): Path<(String, String, String)>,
) -> ApiResult {
    move_to_group(&shared, &org, group.parse().ok(), &runner)
}

/// `DELETE` of the same path: the runner goes back to the Default group.
async fn remove_runner_from_group(
    State(shared): Ctx,
    Path((org, group, runner)): Path<(String, String, String)>,
) -> ApiResult {
    let known = group
        .parse::<u64>()
        .is_ok_and(|g| shared.lock().group_exists(&Scope::org(org.as_str()), g));
    if !known {
        return Err(ApiError::not_found(DOCS_GROUPS));
    }
    move_to_group(&shared, &org, Some(state::DEFAULT_GROUP_ID), &runner)
}

fn move_to_group(shared: &Shared, org: &str, group: Option<u64>, runner: &str) -> ApiResult {
    let (Some(group), Ok(runner)) = (group, runner.parse::<u64>()) else {
        return Err(ApiError::not_found(DOCS_GROUPS));
    };
    shared
        .lock()
        .move_runner_to_group(org, runner, group)
        .map_err(|_| ApiError::not_found(DOCS_GROUPS))?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

// ---- GitHub App -------------------------------------------------------------------------

/// A stable, positive id for an account name (FNV-1a), so repeated calls agree.
fn account_id(login: &str) -> u64 {
    let hash = login.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    });
    hash % 100_000_000 + 1
}

fn account_json(base: &str, login: &str, organization: bool) -> Value {
    let id = account_id(login);
    let (kind, node_prefix, url) = if organization {
        ("Organization", "O_", format!("{base}/orgs/{login}"))
    } else {
        ("User", "U_", format!("{base}/users/{login}"))
    };
    let users = format!("{base}/users/{login}");
    json!({
        "login": login,
        "id": id,
        "node_id": format!("{node_prefix}{}", util::base64_encode(id.to_string().as_bytes())),
        "avatar_url": format!("https://avatars.githubusercontent.com/u/{id}?v=4"),
        "gravatar_id": "",
        "url": url,
        "html_url": format!("https://github.com/{login}"),
        "followers_url": format!("{users}/followers"),
        "following_url": format!("{users}/following{{/other_user}}"),
        "gists_url": format!("{users}/gists{{/gist_id}}"),
        "starred_url": format!("{users}/starred{{/owner}}{{/repo}}"),
        "subscriptions_url": format!("{users}/subscriptions"),
        "organizations_url": format!("{users}/orgs"),
        "repos_url": format!("{users}/repos"),
        "events_url": format!("{users}/events{{/privacy}}"),
        "received_events_url": format!("{users}/received_events"),
        "type": kind,
        "site_admin": false,
    })
}

fn permissions_json() -> Value {
    Value::Object(
        INSTALLATION_PERMISSIONS
            .iter()
            .map(|(k, v)| ((*k).to_owned(), json!(v)))
            .collect(),
    )
}

async fn installation(State(shared): Ctx, target: Target, headers: HeaderMap) -> ApiResult {
    let Some(app) = shared.lock().app else {
        return Err(ApiError::not_found(DOCS_APPS));
    };
    let base = base_url(&headers);
    let (login, organization) = match &target.scope {
        Scope::Repo { owner, .. } => (owner.as_str(), false),
        Scope::Org(org) => (org.as_str(), true),
    };
    let id = app.installation_id;
    let html_url = if organization {
        format!("https://github.com/organizations/{login}/settings/installations/{id}")
    } else {
        format!("https://github.com/settings/installations/{id}")
    };
    let created = util::rfc3339(1_700_000_000);
    let body = json!({
        "id": id,
        "client_id": format!("Iv23li{:014x}", app.app_id),
        "account": account_json(&base, login, organization),
        "repository_selection": "all",
        "access_tokens_url": format!("{base}/app/installations/{id}/access_tokens"),
        "repositories_url": format!("{base}/installation/repositories"),
        "html_url": html_url,
        "app_id": app.app_id,
        "app_slug": "fleet-fake-app",
        "target_id": account_id(login),
        "target_type": if organization { "Organization" } else { "User" },
        "permissions": permissions_json(),
        "events": ["workflow_job"],
        "created_at": created,
        "updated_at": created,
        "single_file_name": null,
        "has_multiple_single_files": false,
        "single_file_paths": [],
        "suspended_by": null,
        "suspended_at": null,
    });
    Ok(json_response(StatusCode::OK, &body))
}

#[derive(Deserialize, Default)]
struct AccessTokenRequest {
    #[serde(default)]
    repositories: Option<Vec<String>>,
    #[serde(default)]
    repository_ids: Option<Vec<u64>>,
    #[serde(default)]
    permissions: Option<serde_json::Map<String, Value>>,
}

async fn installation_token(
    State(shared): Ctx,
    Path(installation_id): Path<String>,
    body: Bytes,
) -> ApiResult {
    let app = shared.lock().app;
    let known = app.is_some_and(|a| installation_id.parse() == Ok(a.installation_id));
    if !known {
        return Err(ApiError::not_found(DOCS_APPS));
    }
    // The body is optional; when given it may narrow repositories and permissions.
    let request: AccessTokenRequest = if body.iter().all(u8::is_ascii_whitespace) {
        AccessTokenRequest::default()
    } else {
        parse_body(&body, DOCS_APPS)?
    };
    let selected = request.repositories.is_some_and(|r| !r.is_empty())
        || request.repository_ids.is_some_and(|r| !r.is_empty());
    let permissions = request
        .permissions
        .filter(|p| !p.is_empty())
        .map_or_else(permissions_json, Value::Object);
    let expires = util::now_epoch() + TOKEN_TTL_SECS;
    let token = shared.lock().issue_installation_token(expires);
    Ok(json_response(
        StatusCode::CREATED,
        &json!({
            "token": token,
            "expires_at": util::rfc3339(expires),
            "permissions": permissions,
            "repository_selection": if selected { "selected" } else { "all" },
        }),
    ))
}

// ---- rate limit -------------------------------------------------------------------------

/// `GET .../actions/runners/downloads`: the runner application for each platform, of the
/// version the fake offers (`runner-application` in GitHub's description).
async fn runner_downloads(State(shared): Ctx, _target: Target) -> Response {
    let version = shared.lock().runner_version.clone();
    let platforms = [
        ("osx", "x64"),
        ("linux", "x64"),
        ("linux", "arm"),
        ("linux", "arm64"),
        ("win", "x64"),
    ];
    let apps: Vec<serde_json::Value> = platforms
        .iter()
        .map(|(os, arch)| {
            let ext = if *os == "win" { "zip" } else { "tar.gz" };
            let filename = format!("actions-runner-{os}-{arch}-{version}.{ext}");
            json!({
                "os": os,
                "architecture": arch,
                "download_url": format!("https://github.com/actions/runner/releases/download/v{version}/{filename}"),
                "filename": filename,
                "sha256_checksum": "0".repeat(64),
            })
        })
        .collect();
    json_response(StatusCode::OK, &serde_json::Value::Array(apps))
}

async fn rate_limit(State(shared): Ctx) -> Response {
    let now = util::now_epoch();
    let core = shared.lock().rate_snapshot(now);
    let core = json!({"limit": core.limit, "remaining": core.remaining, "reset": core.reset, "used": core.used});
    let fresh = |limit: u32, window: u64| json!({"limit": limit, "remaining": limit, "reset": now + window, "used": 0});
    json_response(
        StatusCode::OK,
        &json!({
            "resources": {
                "core": core,
                "search": fresh(30, 60),
                "graphql": fresh(5000, 3600),
                "actions_runner_registration": fresh(10_000, 3600),
            },
            "rate": core,
        }),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(host: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(HOST, HeaderValue::from_str(host).expect("valid host"));
        h
    }

    #[test]
    fn link_header_matches_github() {
        let uri: Uri = "/orgs/a/actions/runners?per_page=100&page=2"
            .parse()
            .expect("uri");
        let link = link_header(&headers("h:1"), &uri, 2, 100, 250).expect("links");
        assert_eq!(
            link,
            "<http://h:1/orgs/a/actions/runners?per_page=100&page=1>; rel=\"prev\", \
             <http://h:1/orgs/a/actions/runners?per_page=100&page=3>; rel=\"next\", \
             <http://h:1/orgs/a/actions/runners?per_page=100&page=3>; rel=\"last\", \
             <http://h:1/orgs/a/actions/runners?per_page=100&page=1>; rel=\"first\""
        );
        let first: Uri = "/x".parse().expect("uri");
        assert_eq!(link_header(&headers("h"), &first, 1, 30, 30), None);
    }

    #[test]
    fn auth_kind_by_path() {
        assert!(auth_kind("/app/installations/3/access_tokens") == AuthKind::AppJwt);
        assert!(auth_kind("/orgs/acme/installation") == AuthKind::AppJwt);
        assert!(auth_kind("/repos/a/b/installation") == AuthKind::AppJwt);
        assert!(auth_kind("/repos/a/b/actions/runners") == AuthKind::Token);
        assert!(auth_kind("/actions/runner-registration") == AuthKind::RemoteAuth);
    }

    #[test]
    fn page_params_clamp() {
        let p = |q: &[(&str, &str)]| {
            page_params(
                &q.iter()
                    .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                    .collect::<Vec<_>>(),
            )
        };
        assert_eq!(p(&[]), (1, 30));
        assert_eq!(p(&[("per_page", "500"), ("page", "3")]), (3, 100));
        assert_eq!(p(&[("per_page", "x"), ("page", "0")]), (1, 30));
    }
}
