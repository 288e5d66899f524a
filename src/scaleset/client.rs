//! [`ScaleSetClient`]: fleet's client of GitHub's runner scale set service.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use backon::{BackoffBuilder, ExponentialBuilder};
use http::header::{ACCEPT, HeaderName};
use http::{HeaderValue, Method, StatusCode};
use serde::Deserialize;
use serde_json::json;

use super::error::{ScaleSetError, display_url};
use super::http::{Answer, Call, Http, RetryPolicy, check_url};
use super::message::{self, RawMessage, ScaleSetMessage};
use super::token::{AdminToken, RegistrationTokenSource, admin_expiry};
use super::types::{
    DEFAULT_RUNNER_GROUP_ID, JitConfig, ListOf, QueueAccess, RunnerGroup, RunnerReference,
    RunnerScaleSet, RunnerSetting, ScaleSetBody, ScaleSetSpec, Scope, Session, SessionWire,
};
use super::{Ensured, Poll};
use crate::github::ProxyConfig;
pub use crate::github::registration_url as config_url;
use crate::secret::Secret;

const API_VERSION: &str = "6.0-preview";
const SCALE_SETS: &str = "_apis/runtime/runnerscalesets";
const RUNNER_GROUPS: &str = "_apis/runtime/runnergroups/";
const RUNNERS: &str = "_apis/distributedtask/pools/0/agents";
/// The header that tells the service how many jobs the scale set can hold at once.
pub const MAX_CAPACITY_HEADER: &str = "x-scalesetmaxcapacity";
/// A fresh registration token is not always accepted at once (GitHub's own clients retry 401
/// and 403 on the exchange over about 30 s): tries after the first, with growing, jittered
/// waits (`EXCHANGE_FIRST_WAIT` doubling up to `EXCHANGE_MAX_WAIT`).
const EXCHANGE_RETRIES: usize = 5;
const EXCHANGE_FIRST_WAIT: Duration = Duration::from_secs(1);
const EXCHANGE_MAX_WAIT: Duration = Duration::from_secs(12);
/// Time the client allows beyond the caller's long-poll timeout for the answer to arrive.
const POLL_GRACE: Duration = Duration::from_secs(10);

/// How to reach the service.
#[derive(Debug, Clone)]
pub struct ClientConfig {
    /// The GitHub API the operator configured (`https://api.github.com`, `https://HOST/api/v3`).
    pub api_url: String,
    /// The scope's web URL (`https://github.com/acme/app`); see [`config_url`].
    pub config_url: String,
    pub policy: RetryPolicy,
    /// An admin token is exchanged again when it has less than this left.
    pub refresh_margin: Duration,
    /// The proxies requests go through (the GitHub client's).
    pub proxy: ProxyConfig,
    /// The first wait before exchanging a refused registration token again (it doubles, with
    /// jitter, over about 30 s).
    pub exchange_first_wait: Duration,
}

impl ClientConfig {
    pub fn new(api_url: &str, scope: &Scope) -> ClientConfig {
        ClientConfig {
            api_url: api_url.trim_end_matches('/').to_owned(),
            config_url: config_url(api_url, scope),
            policy: RetryPolicy::default(),
            refresh_margin: Duration::from_secs(60),
            proxy: ProxyConfig::from_process(),
            exchange_first_wait: EXCHANGE_FIRST_WAIT,
        }
    }
}

/// fleet's client of the scale set service. Cheap to clone; clones share the admin token.
#[derive(Clone)]
pub struct ScaleSetClient {
    inner: Arc<Inner>,
}

struct Inner {
    http: Http,
    api_url: String,
    config_url: String,
    registration: Arc<dyn RegistrationTokenSource>,
    /// Held while the admin token is read or exchanged, so only one task exchanges.
    admin: tokio::sync::Mutex<Option<Arc<AdminToken>>>,
    refresh_margin: Duration,
    exchange_first_wait: Duration,
}

/// One request to the Actions service with the admin token.
struct ServiceRequest {
    method: Method,
    path: String,
    query: Vec<(&'static str, String)>,
    body: Option<serde_json::Value>,
    /// The scale set the request concerns, for the User-Agent.
    scale_set: Option<u64>,
}

impl ServiceRequest {
    fn new(method: Method, path: String) -> ServiceRequest {
        ServiceRequest {
            method,
            path,
            query: Vec::new(),
            body: None,
            scale_set: None,
        }
    }

    fn of_scale_set(mut self, id: u64) -> ServiceRequest {
        self.scale_set = Some(id);
        self
    }

    fn query(mut self, key: &'static str, value: impl ToString) -> ServiceRequest {
        self.query.push((key, value.to_string()));
        self
    }

    fn body(mut self, body: serde_json::Value) -> ServiceRequest {
        self.body = Some(body);
        self
    }
}

impl std::fmt::Debug for ScaleSetClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ScaleSetClient")
            .field("api_url", &self.inner.api_url)
            .field("config_url", &self.inner.config_url)
            .finish_non_exhaustive()
    }
}

impl ScaleSetClient {
    pub fn new(
        config: ClientConfig,
        registration: Arc<dyn RegistrationTokenSource>,
    ) -> Result<ScaleSetClient, ScaleSetError> {
        check_url(&config.api_url)?;
        Ok(ScaleSetClient {
            inner: Arc::new(Inner {
                http: Http::new(config.policy, &config.proxy)?,
                api_url: config.api_url.trim_end_matches('/').to_owned(),
                config_url: config.config_url,
                registration,
                admin: tokio::sync::Mutex::new(None),
                refresh_margin: config.refresh_margin,
                exchange_first_wait: config.exchange_first_wait,
            }),
        })
    }

    /// The admin token, exchanged again when it is missing or about to expire.
    async fn admin_token(&self) -> Result<Arc<AdminToken>, ScaleSetError> {
        let mut cached = self.inner.admin.lock().await;
        let now = SystemTime::now();
        if let Some(token) = cached
            .as_ref()
            .filter(|t| t.is_fresh(self.inner.refresh_margin, now))
        {
            return Ok(token.clone());
        }
        tracing::debug!(
            "exchanging a registration token for the Actions service of {}",
            self.inner.config_url
        );
        let token = Arc::new(self.exchange().await?);
        *cached = Some(token.clone());
        Ok(token)
    }

    /// Forgets `token` (the service refused it), unless another task already replaced it.
    async fn invalidate(&self, token: &Arc<AdminToken>) {
        let mut cached = self.inner.admin.lock().await;
        if cached.as_ref().is_some_and(|t| Arc::ptr_eq(t, token)) {
            *cached = None;
        }
    }

    /// `POST {api}/actions/runner-registration` with `RemoteAuth <registration token>`.
    async fn exchange(&self) -> Result<AdminToken, ScaleSetError> {
        #[derive(Deserialize)]
        struct Connection {
            url: String,
            token: String,
        }
        let registration = self.inner.registration.registration_token().await?;
        let url = format!("{}/actions/runner-registration", self.inner.api_url);
        let body = json!({"url": self.inner.config_url, "runner_event": "register"});
        let mut waits = ExponentialBuilder::default()
            .with_min_delay(self.inner.exchange_first_wait)
            .with_max_delay(EXCHANGE_MAX_WAIT)
            .with_max_times(EXCHANGE_RETRIES)
            .with_jitter()
            .build();
        let answer = loop {
            let call = Call::new(
                Method::POST,
                url.clone(),
                self.inner.http.policy.request_timeout,
            )
            .auth("RemoteAuth", &registration)
            .json(&body);
            let answer = self.inner.http.send(&call).await?;
            let refused = matches!(
                answer.status,
                StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN
            );
            match waits.next() {
                Some(wait) if refused => {
                    tracing::debug!(
                        "the Actions service refused a fresh registration token ({}); trying again in {:.1}s",
                        answer.status.as_u16(),
                        wait.as_secs_f64()
                    );
                    tokio::time::sleep(wait).await;
                }
                _ => break answer,
            }
        };
        if !answer.status.is_success() {
            return Err(ScaleSetError::Registration {
                config_url: self.inner.config_url.clone(),
                status: answer.status.as_u16(),
                message: answer.error_text(),
            });
        }
        let connection: Connection = answer.decode(&Method::POST, &url)?;
        check_url(&connection.url)?;
        Ok(AdminToken {
            service_url: connection.url,
            expires_at: admin_expiry(&connection.token, SystemTime::now()),
            token: Secret::new(connection.token),
        })
    }

    /// Sends `request` to the Actions service; a 401 drops the admin token and tries once more
    /// with a fresh one. Returns the answer and the URL it came from.
    async fn service(&self, request: &ServiceRequest) -> Result<(Answer, String), ScaleSetError> {
        let mut retried = false;
        loop {
            let token = self.admin_token().await?;
            let url = service_url(&token.service_url, &request.path, &request.query);
            let mut call = Call::new(
                request.method.clone(),
                url.clone(),
                self.inner.http.policy.request_timeout,
            )
            .auth("Bearer", &token.token);
            call.scale_set = request.scale_set;
            if let Some(body) = &request.body {
                call = call.json(body);
            }
            let answer = self.inner.http.send(&call).await?;
            if answer.status != StatusCode::UNAUTHORIZED {
                return Ok((answer, url));
            }
            if retried {
                return Err(unauthorized(&request.method, &url, &answer));
            }
            tracing::debug!("the Actions service refused the admin token; exchanging a new one");
            self.invalidate(&token).await;
            retried = true;
        }
    }

    /// Sends one message-queue request built by `build` with the session's queue token; a 401
    /// refreshes the session and tries once more.
    async fn queue(
        &self,
        session: &Session,
        build: impl Fn(&QueueAccess) -> Result<(Method, String, QueueCall), ScaleSetError>,
    ) -> Result<(Answer, Method, String), ScaleSetError> {
        let mut retried = false;
        loop {
            let access = session.queue();
            let (method, url, shape) = build(&access)?;
            let mut call =
                Call::new(method.clone(), url.clone(), shape.timeout).auth("Bearer", &access.token);
            call.retry_timeouts = !shape.long_poll;
            call.scale_set = Some(session.scale_set_id);
            call.headers = shape.headers;
            call.body = shape.body;
            let answer = self.inner.http.send(&call).await?;
            if answer.status != StatusCode::UNAUTHORIZED {
                return Ok((answer, method, url));
            }
            if retried {
                return Err(unauthorized(&method, &url, &answer));
            }
            tracing::debug!(
                "the message queue token of session {} expired; refreshing the session",
                session.id
            );
            self.refresh_session(session, &access.token).await?;
            retried = true;
        }
    }

    /// `PATCH .../sessions/{id}`: new queue credentials for an open session.
    async fn refresh_session(
        &self,
        session: &Session,
        expired: &Secret,
    ) -> Result<(), ScaleSetError> {
        let path = format!(
            "{SCALE_SETS}/{}/sessions/{}",
            session.scale_set_id, session.id
        );
        let request = ServiceRequest::new(Method::PATCH, path).of_scale_set(session.scale_set_id);
        let (answer, url) = self.service(&request).await?;
        let what = format!(
            "message session {} of scale set {}",
            session.id, session.scale_set_id
        );
        let wire: SessionWire = expect(answer, StatusCode::OK, &request.method, &url, &what)?
            .decode(&request.method, &url)?;
        session.replace_queue(
            expired,
            QueueAccess {
                url: wire.message_queue_url,
                token: Secret::new(wire.message_queue_access_token),
            },
        );
        Ok(())
    }

    async fn create_scale_set(
        &self,
        group: &RunnerGroup,
        spec: &ScaleSetSpec,
    ) -> Result<RunnerScaleSet, ScaleSetError> {
        let request = ServiceRequest::new(Method::POST, SCALE_SETS.to_owned())
            .body(scale_set_body(group.id, spec)?);
        let (answer, url) = self.service(&request).await?;
        let what = format!("runner group {}", group.name);
        expect(answer, StatusCode::OK, &request.method, &url, &what)?.decode(&request.method, &url)
    }
}

/// The shape of one queue request besides its method and URL.
struct QueueCall {
    timeout: Duration,
    long_poll: bool,
    headers: Vec<(HeaderName, HeaderValue)>,
    body: Option<Vec<u8>>,
}

impl QueueCall {
    fn plain(timeout: Duration) -> QueueCall {
        QueueCall {
            timeout,
            long_poll: false,
            headers: Vec::new(),
            body: None,
        }
    }
}

fn scale_set_body(group_id: u64, spec: &ScaleSetSpec) -> Result<serde_json::Value, ScaleSetError> {
    let body = ScaleSetBody {
        name: spec.name.clone(),
        runner_group_id: group_id,
        labels: spec.wire_labels(),
        runner_setting: RunnerSetting {
            ephemeral: true,
            disable_update: spec.disable_update,
        },
    };
    serde_json::to_value(body).map_err(|e| ScaleSetError::Client {
        message: format!("cannot encode scale set {}: {e}", spec.name),
    })
}

/// `{base}/{path}?{query}&api-version=6.0-preview`.
fn service_url(base: &str, path: &str, query: &[(&'static str, String)]) -> String {
    let mut pairs: Vec<(&str, &str)> = query.iter().map(|(k, v)| (*k, v.as_str())).collect();
    pairs.push(("api-version", API_VERSION));
    let encoded = serde_urlencoded::to_string(&pairs).unwrap_or_default();
    format!(
        "{}/{}?{encoded}",
        base.trim_end_matches('/'),
        path.trim_start_matches('/')
    )
}

/// `url` with `key=value` added to its query.
fn with_query(url: &str, key: &str, value: &str) -> String {
    let separator = if url.contains('?') { '&' } else { '?' };
    let pair = serde_urlencoded::to_string([(key, value)]).unwrap_or_default();
    format!("{url}{separator}{pair}")
}

/// `url` with `/segment` added to its path, its query kept.
fn with_segment(url: &str, segment: &str) -> String {
    let (path, query) = url
        .split_once('?')
        .map_or((url, None), |(p, q)| (p, Some(q)));
    let path = format!("{}/{segment}", path.trim_end_matches('/'));
    match query {
        Some(query) => format!("{path}?{query}"),
        None => path,
    }
}

fn unauthorized(method: &Method, url: &str, answer: &Answer) -> ScaleSetError {
    ScaleSetError::Unauthorized {
        method: method.clone(),
        url: display_url(url),
        message: answer.error_text(),
    }
}

/// `answer` if its status is `expected`; otherwise the error it means. `what` names the thing
/// a 404 says is missing.
fn expect(
    answer: Answer,
    expected: StatusCode,
    method: &Method,
    url: &str,
    what: &str,
) -> Result<Answer, ScaleSetError> {
    if answer.status == expected {
        return Ok(answer);
    }
    Err(match answer.status {
        StatusCode::UNAUTHORIZED => unauthorized(method, url, &answer),
        StatusCode::NOT_FOUND => ScaleSetError::NotFound {
            what: what.to_owned(),
            method: method.clone(),
            url: display_url(url),
            message: answer.error_text(),
        },
        status => ScaleSetError::Rejected {
            method: method.clone(),
            url: display_url(url),
            status: status.as_u16(),
            message: answer.error_text(),
        },
    })
}

/// The single item of a list answer that should hold at most one.
fn single<T>(list: ListOf<T>, what: &str, name: &str) -> Result<Option<T>, ScaleSetError> {
    if list.count > 1 || list.value.len() > 1 {
        return Err(ScaleSetError::Ambiguous {
            what: what.to_owned(),
            name: name.to_owned(),
        });
    }
    Ok(list.value.into_iter().next())
}

impl ScaleSetClient {
    /// A runner group by name; `None` or "default" is the default group (no request).
    pub async fn runner_group(&self, name: Option<&str>) -> Result<RunnerGroup, ScaleSetError> {
        let name = match name {
            Some(name) if !name.eq_ignore_ascii_case("default") => name,
            _ => {
                return Ok(RunnerGroup {
                    id: DEFAULT_RUNNER_GROUP_ID,
                    name: "Default".to_owned(),
                    is_default: true,
                });
            }
        };
        let request =
            ServiceRequest::new(Method::GET, RUNNER_GROUPS.to_owned()).query("groupName", name);
        let (answer, url) = self.service(&request).await?;
        let what = format!("runner group {name}");
        let list: ListOf<RunnerGroup> =
            expect(answer, StatusCode::OK, &request.method, &url, &what)?
                .decode(&request.method, &url)?;
        single(list, "runner groups", name)?.ok_or_else(|| ScaleSetError::NotFound {
            what,
            method: request.method.clone(),
            url: display_url(&url),
            message: "no runner group has this name".to_owned(),
        })
    }

    /// The scale set of this name in this runner group, if there is one.
    pub async fn find_scale_set(
        &self,
        runner_group_id: u64,
        name: &str,
    ) -> Result<Option<RunnerScaleSet>, ScaleSetError> {
        let request = ServiceRequest::new(Method::GET, SCALE_SETS.to_owned())
            .query("runnerGroupId", runner_group_id)
            .query("name", name);
        let (answer, url) = self.service(&request).await?;
        let what = format!("runner group {runner_group_id}");
        let list: ListOf<RunnerScaleSet> =
            expect(answer, StatusCode::OK, &request.method, &url, &what)?
                .decode(&request.method, &url)?;
        single(list, "runner scale sets", name)
    }

    /// Every scale set of the scope, in every runner group (to find those of pools that left
    /// the spec).
    pub async fn list_scale_sets(&self) -> Result<Vec<RunnerScaleSet>, ScaleSetError> {
        let request = ServiceRequest::new(Method::GET, SCALE_SETS.to_owned());
        let (answer, url) = self.service(&request).await?;
        let list: ListOf<RunnerScaleSet> = expect(
            answer,
            StatusCode::OK,
            &request.method,
            &url,
            "runner scale sets",
        )?
        .decode(&request.method, &url)?;
        Ok(list.value)
    }

    /// The scale set `spec` names in its runner group, created (with its labels) if missing.
    /// An existing one is returned as it is: comparing and updating is the planner's decision.
    pub async fn get_or_create_scale_set(
        &self,
        spec: &ScaleSetSpec,
    ) -> Result<Ensured, ScaleSetError> {
        let group = self.runner_group(spec.runner_group.as_deref()).await?;
        if let Some(found) = self.find_scale_set(group.id, &spec.name).await? {
            return Ok(Ensured::Existing(found));
        }
        match self.create_scale_set(&group, spec).await {
            Ok(created) => Ok(Ensured::Created(created)),
            // Someone created it between the lookup and the creation: use theirs.
            Err(ScaleSetError::Rejected { status: 409, .. }) => self
                .find_scale_set(group.id, &spec.name)
                .await?
                .map(Ensured::Existing)
                .ok_or_else(|| ScaleSetError::Client {
                    message: format!("scale set {} conflicts yet cannot be found", spec.name),
                }),
            Err(e) => Err(e),
        }
    }

    /// Sets a scale set's name, runner group, labels and runner settings to `spec`'s.
    pub async fn update_scale_set(
        &self,
        id: u64,
        spec: &ScaleSetSpec,
    ) -> Result<RunnerScaleSet, ScaleSetError> {
        let group = self.runner_group(spec.runner_group.as_deref()).await?;
        let request = ServiceRequest::new(Method::PATCH, format!("{SCALE_SETS}/{id}"))
            .of_scale_set(id)
            .body(scale_set_body(group.id, spec)?);
        let (answer, url) = self.service(&request).await?;
        let what = format!("scale set {id}");
        expect(answer, StatusCode::OK, &request.method, &url, &what)?.decode(&request.method, &url)
    }

    pub async fn delete_scale_set(&self, id: u64) -> Result<(), ScaleSetError> {
        let request =
            ServiceRequest::new(Method::DELETE, format!("{SCALE_SETS}/{id}")).of_scale_set(id);
        let (answer, url) = self.service(&request).await?;
        let what = format!("scale set {id}");
        expect(answer, StatusCode::NO_CONTENT, &request.method, &url, &what).map(|_| ())
    }

    /// Opens the scale set's message session. [`ScaleSetError::SessionConflict`] when another
    /// is open (a second listener, or one that stopped without closing it and has not timed
    /// out yet).
    pub async fn create_session(
        &self,
        scale_set_id: u64,
        owner: &str,
    ) -> Result<Session, ScaleSetError> {
        // The service assigns the id; clients send the nil UUID, as GitHub's own do.
        let request = ServiceRequest::new(
            Method::POST,
            format!("{SCALE_SETS}/{scale_set_id}/sessions"),
        )
        .of_scale_set(scale_set_id)
        .body(json!({"sessionId": "00000000-0000-0000-0000-000000000000", "ownerName": owner}));
        let (answer, url) = self.service(&request).await?;
        if answer.status == StatusCode::CONFLICT {
            return Err(ScaleSetError::SessionConflict {
                scale_set_id,
                message: answer.error_text(),
            });
        }
        let what = format!("scale set {scale_set_id}");
        let wire: SessionWire = expect(answer, StatusCode::OK, &request.method, &url, &what)?
            .decode(&request.method, &url)?;
        check_url(&wire.message_queue_url)?;
        Ok(Session::from_wire(scale_set_id, wire))
    }

    /// Closes a session, so the next listener need not wait for it to time out.
    pub async fn delete_session(&self, session: &Session) -> Result<(), ScaleSetError> {
        let path = format!(
            "{SCALE_SETS}/{}/sessions/{}",
            session.scale_set_id, session.id
        );
        let request = ServiceRequest::new(Method::DELETE, path).of_scale_set(session.scale_set_id);
        let (answer, url) = self.service(&request).await?;
        if answer.status == StatusCode::NOT_FOUND {
            return Ok(()); // already gone: what deleting wanted
        }
        let what = format!("message session {}", session.id);
        expect(answer, StatusCode::NO_CONTENT, &request.method, &url, &what).map(|_| ())
    }

    /// Long-polls the queue: the next unacknowledged message, or `None` when the service had
    /// nothing to say within its hold time. [`ScaleSetError::NotFound`] when the session is
    /// gone (closed, or timed out and replaced): open a new one.
    pub async fn get_message(
        &self,
        session: &Session,
        poll: &Poll,
    ) -> Result<Option<ScaleSetMessage>, ScaleSetError> {
        let (answer, method, url) = self
            .queue(session, |access| {
                let url = match poll.last_message_id.filter(|id| *id > 0) {
                    Some(id) => with_query(&access.url, "lastMessageId", &id.to_string()),
                    None => access.url.clone(),
                };
                let headers = vec![
                    (
                        ACCEPT,
                        HeaderValue::from_static("application/json; api-version=6.0-preview"),
                    ),
                    (
                        HeaderName::from_static(MAX_CAPACITY_HEADER),
                        HeaderValue::from(poll.max_capacity),
                    ),
                ];
                let shape = QueueCall {
                    timeout: poll.timeout + POLL_GRACE,
                    long_poll: true,
                    headers,
                    body: None,
                };
                Ok((Method::GET, url, shape))
            })
            .await?;
        match answer.status {
            StatusCode::ACCEPTED | StatusCode::NO_CONTENT => Ok(None),
            StatusCode::OK => {
                let raw: RawMessage = answer.decode(&method, &url)?;
                Ok(Some(message::parse(raw)))
            }
            _ => {
                let what = format!("message session {}", session.id);
                expect(answer, StatusCode::OK, &method, &url, &what).map(|_| None)
            }
        }
    }

    /// Acknowledges a message; unacknowledged ones come back.
    pub async fn delete_message(
        &self,
        session: &Session,
        message_id: u64,
    ) -> Result<(), ScaleSetError> {
        let timeout = self.inner.http.policy.request_timeout;
        let (answer, method, url) = self
            .queue(session, |access| {
                let url = with_segment(&access.url, &message_id.to_string());
                Ok((Method::DELETE, url, QueueCall::plain(timeout)))
            })
            .await?;
        // 404: the message is gone already (an earlier acknowledgement whose answer was lost).
        if answer.status == StatusCode::NOT_FOUND {
            return Ok(());
        }
        let what = format!("message {message_id}");
        expect(answer, StatusCode::NO_CONTENT, &method, &url, &what).map(|_| ())
    }

    /// Acquires offered jobs (`JobAvailable` request ids); returns those acquired.
    pub async fn acquire_jobs(
        &self,
        session: &Session,
        request_ids: &[u64],
    ) -> Result<Vec<u64>, ScaleSetError> {
        if request_ids.is_empty() {
            return Ok(Vec::new());
        }
        let service = self.admin_token().await?.service_url.clone();
        let timeout = self.inner.http.policy.request_timeout;
        let body = serde_json::to_vec(request_ids).map_err(|e| ScaleSetError::Client {
            message: format!("cannot encode job request ids: {e}"),
        })?;
        let (answer, method, url) = self
            .queue(session, |_| {
                let path = format!("{SCALE_SETS}/{}/acquirejobs", session.scale_set_id);
                let mut shape = QueueCall::plain(timeout);
                shape.body = Some(body.clone());
                Ok((Method::POST, service_url(&service, &path, &[]), shape))
            })
            .await?;
        let what = format!("scale set {}", session.scale_set_id);
        let list: ListOf<u64> =
            expect(answer, StatusCode::OK, &method, &url, &what)?.decode(&method, &url)?;
        Ok(list.value)
    }

    /// Registers an ephemeral runner of the scale set and returns its id and just-in-time
    /// config. A registration of the same name left by this scale set (an earlier attempt whose
    /// answer was lost, a container that never started) is removed when idle and the
    /// registration tried again; [`ScaleSetError::RunnerExists`] when the name is taken by
    /// another scale set or a busy runner. `work_folder`: the runner's work folder, relative to
    /// its install directory or absolute.
    pub async fn generate_jit_config(
        &self,
        scale_set_id: u64,
        runner_name: &str,
        work_folder: &str,
    ) -> Result<JitConfig, ScaleSetError> {
        match self
            .jit_config(scale_set_id, runner_name, work_folder)
            .await
        {
            Err(ScaleSetError::RunnerExists { name, message }) => {
                // Left by an earlier attempt (or a container that never started): GitHub's own
                // clients remove an idle registration of the same scale set and try again.
                if !self.remove_stale_runner(scale_set_id, runner_name).await? {
                    return Err(ScaleSetError::RunnerExists { name, message });
                }
                self.jit_config(scale_set_id, runner_name, work_folder)
                    .await
            }
            other => other,
        }
    }

    /// Removes the registration named `name` if it belongs to scale set `scale_set_id` and
    /// runs no job. Whether it did.
    async fn remove_stale_runner(
        &self,
        scale_set_id: u64,
        name: &str,
    ) -> Result<bool, ScaleSetError> {
        let Some(runner) = self.get_runner_by_name(name).await? else {
            return Ok(false);
        };
        if runner.runner_scale_set_id != scale_set_id {
            tracing::warn!(
                "runner {name} is registered, but not by scale set {scale_set_id}: leaving it"
            );
            return Ok(false);
        }
        match self.remove_runner(runner.id).await {
            Ok(()) => {
                tracing::info!(
                    "removed the stale registration {} of runner {name} (scale set {scale_set_id})",
                    runner.id
                );
                Ok(true)
            }
            Err(ScaleSetError::RunnerBusy { .. }) => Ok(false),
            Err(ScaleSetError::NotFound { .. }) => Ok(true),
            Err(e) => Err(e),
        }
    }

    /// `POST .../generatejitconfig`, once.
    async fn jit_config(
        &self,
        scale_set_id: u64,
        runner_name: &str,
        work_folder: &str,
    ) -> Result<JitConfig, ScaleSetError> {
        #[derive(Deserialize)]
        struct Wire {
            runner: RunnerReference,
            #[serde(rename = "encodedJITConfig")]
            encoded: String,
        }
        let path = format!("{SCALE_SETS}/{scale_set_id}/generatejitconfig");
        let request = ServiceRequest::new(Method::POST, path)
            .of_scale_set(scale_set_id)
            .body(json!({"name": runner_name, "workFolder": work_folder}));
        let (answer, url) = self.service(&request).await?;
        if answer
            .exception()
            .is_some_and(|e| e.contains("AgentExists"))
        {
            return Err(ScaleSetError::RunnerExists {
                name: runner_name.to_owned(),
                message: answer.error_text(),
            });
        }
        let what = format!("scale set {scale_set_id}");
        let wire: Wire = expect(answer, StatusCode::OK, &request.method, &url, &what)?
            .decode(&request.method, &url)?;
        Ok(JitConfig {
            runner: wire.runner,
            encoded: Secret::new(wire.encoded),
        })
    }

    pub async fn get_runner_by_name(
        &self,
        name: &str,
    ) -> Result<Option<RunnerReference>, ScaleSetError> {
        let request = ServiceRequest::new(Method::GET, RUNNERS.to_owned()).query("agentName", name);
        let (answer, url) = self.service(&request).await?;
        let list: ListOf<RunnerReference> = expect(
            answer,
            StatusCode::OK,
            &request.method,
            &url,
            "the runner list",
        )?
        .decode(&request.method, &url)?;
        single(list, "runners", name)
    }

    /// Removes a runner's registration. [`ScaleSetError::RunnerBusy`] while it runs a job.
    pub async fn remove_runner(&self, runner_id: u64) -> Result<(), ScaleSetError> {
        let request = ServiceRequest::new(Method::DELETE, format!("{RUNNERS}/{runner_id}"));
        let (answer, url) = self.service(&request).await?;
        if answer
            .exception()
            .is_some_and(|e| e.contains("JobStillRunning"))
        {
            return Err(ScaleSetError::RunnerBusy {
                runner_id,
                message: answer.error_text(),
            });
        }
        let what = format!("runner {runner_id}");
        expect(answer, StatusCode::NO_CONTENT, &request.method, &url, &what).map(|_| ())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn repo() -> Scope {
        Scope::Repo {
            owner: "acme".into(),
            repo: "zquic".into(),
        }
    }

    #[test]
    fn config_urls_follow_the_api_url_as_registration_urls_do() {
        assert_eq!(
            config_url("https://api.github.com", &repo()),
            "https://github.com/acme/zquic"
        );
        assert_eq!(
            config_url("https://api.octo.ghe.com/", &Scope::Org("acme".into())),
            "https://octo.ghe.com/acme"
        );
        assert_eq!(
            config_url("https://ghes.example/api/v3", &repo()),
            "https://ghes.example/acme/zquic"
        );
        assert_eq!(
            config_url("http://127.0.0.1:4000", &repo()),
            "http://127.0.0.1:4000/acme/zquic"
        );
    }

    #[test]
    fn service_urls_carry_the_api_version_and_encoded_names() {
        let url = service_url(
            "https://pipelines.example/abc/",
            SCALE_SETS,
            &[("runnerGroupId", "1".into()), ("name", "zq gpu&x".into())],
        );
        assert_eq!(
            url,
            "https://pipelines.example/abc/_apis/runtime/runnerscalesets?runnerGroupId=1&name=zq+gpu%26x&api-version=6.0-preview"
        );
    }

    #[test]
    fn queue_urls_gain_ids_and_keep_their_query() {
        assert_eq!(
            with_query("https://q/x/messages", "lastMessageId", "5"),
            "https://q/x/messages?lastMessageId=5"
        );
        assert_eq!(
            with_query("https://q/x?sessionId=a", "lastMessageId", "5"),
            "https://q/x?sessionId=a&lastMessageId=5"
        );
        assert_eq!(
            with_segment("https://q/x/messages", "7"),
            "https://q/x/messages/7"
        );
        assert_eq!(
            with_segment("https://q/x/messages/?s=1", "7"),
            "https://q/x/messages/7?s=1"
        );
    }

    #[test]
    fn scale_set_bodies_name_the_group_and_labels() {
        let spec = ScaleSetSpec {
            labels: vec!["gpu".into()],
            ..ScaleSetSpec::new("zq-gpu")
        };
        let body = scale_set_body(3, &spec).expect("body");
        assert_eq!(
            body,
            json!({
                "name": "zq-gpu",
                "runnerGroupId": 3,
                "labels": [{"name": "zq-gpu", "type": "System"}, {"name": "gpu", "type": "System"}],
                "RunnerSetting": {"ephemeral": true, "disableUpdate": true}
            })
        );
    }
}
