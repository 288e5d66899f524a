//! The scale set service's state: tenants and tokens, scale sets and their sessions. Jobs and
//! messages are in `jobs.rs`. All of it lives in the one `State` behind the fake's mutex, beside
//! the runners (a scale set's runners are ordinary runners of its scope).

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::time::Instant;

use http::StatusCode;
use serde_json::{Value, json};

use super::{ScaleSetConfig, ScaleSetEndpoint, ScaleSetFault, ScaleSetInfo};
use crate::Scope;
use crate::state::{DEFAULT_GROUP_ID, State};
use crate::util;

/// An Actions exception: the service's error shape, `{typeName, typeKey, message, ...}`.
#[derive(Debug)]
pub(crate) struct ServiceError {
    pub status: StatusCode,
    pub kind: &'static str,
    pub message: String,
}

impl ServiceError {
    pub fn new(status: StatusCode, kind: &'static str, message: impl Into<String>) -> Self {
        ServiceError {
            status,
            kind,
            message: message.into(),
        }
    }

    pub fn body(&self) -> Value {
        json!({
            "$id": "1",
            "innerException": null,
            "message": self.message,
            "typeName": format!("GitHub.DistributedTask.WebApi.{}, GitHub.DistributedTask.WebApi", self.kind),
            "typeKey": self.kind,
            "errorCode": 0,
            "eventId": 3000,
        })
    }

    pub fn no_scale_set(id: u64) -> Self {
        ServiceError::new(
            StatusCode::NOT_FOUND,
            "RunnerScaleSetNotFoundException",
            format!("No runner scale set found with identifier {id}."),
        )
    }
}

pub(crate) struct Session {
    pub id: String,
    pub owner: String,
    pub queue_token: String,
    pub queue_token_expires: Instant,
    pub last_seen: Instant,
    /// Polls being held right now: a session being polled is alive however long the poll.
    pub polls: u32,
    /// The id of the next message sealed for this session, with
    /// `ScaleSetConfig::message_ids_per_session`.
    pub next_message_id: u64,
}

pub(crate) struct QueuedMessage {
    pub id: u64,
    pub body: String,
    pub delivered_at: Option<Instant>,
}

pub(crate) struct ScaleSet {
    pub id: u64,
    pub scope: Scope,
    pub name: String,
    pub group_id: u64,
    pub labels: Vec<String>,
    pub disable_update: bool,
    pub created: u64,
    pub session: Option<Session>,
    pub capacity: Option<u32>,
    /// Job events not yet put in a message.
    pub outbox: Vec<Value>,
    /// Messages created and not acknowledged.
    pub queue: VecDeque<QueuedMessage>,
    /// Request ids offered with `JobAvailable` (acquire mode), so each is offered once.
    pub offered: BTreeSet<u64>,
}

impl ScaleSet {
    pub fn matches(&self, scope: &Scope, labels: &[String]) -> bool {
        self.scope == *scope
            && !labels.is_empty()
            && labels
                .iter()
                .all(|l| self.labels.iter().any(|m| m.eq_ignore_ascii_case(l)))
    }
}

struct Grant {
    tenant: String,
    expires: Instant,
}

/// The scale set service's world.
pub(crate) struct ScaleSets {
    pub config: ScaleSetConfig,
    tenants: BTreeMap<String, Scope>,
    tenant_of: BTreeMap<Scope, String>,
    /// Registration tokens (from `.../registration-token`) -> scope and expiry (epoch seconds).
    registration_tokens: HashMap<String, (Scope, u64)>,
    admin_tokens: HashMap<String, Grant>,
    pub sets: BTreeMap<u64, ScaleSet>,
    next_set_id: u64,
    pub next_message_id: u64,
    pub next_request_id: u64,
    pub jobs: BTreeMap<u64, super::jobs::Job>,
    pub next_job: u64,
    faults: Vec<(ScaleSetEndpoint, ScaleSetFault, usize)>,
    pub exchanges: usize,
}

impl ScaleSets {
    pub fn new(config: ScaleSetConfig) -> ScaleSets {
        ScaleSets {
            config,
            tenants: BTreeMap::new(),
            tenant_of: BTreeMap::new(),
            registration_tokens: HashMap::new(),
            admin_tokens: HashMap::new(),
            sets: BTreeMap::new(),
            next_set_id: 1,
            next_message_id: 1,
            next_request_id: 1001,
            jobs: BTreeMap::new(),
            next_job: 1,
            faults: Vec::new(),
            exchanges: 0,
        }
    }

    pub fn record_registration_token(&mut self, scope: &Scope, token: &str, expires: u64) {
        self.registration_tokens
            .insert(token.to_owned(), (scope.clone(), expires));
    }

    /// The scope a live registration token was issued for.
    pub fn registration_scope(&mut self, token: &str, now: u64) -> Option<Scope> {
        self.registration_tokens.retain(|_, (_, exp)| *exp > now);
        self.registration_tokens.get(token).map(|(s, _)| s.clone())
    }

    /// The scope of a tenant, if `token` is a live admin token for it.
    pub fn admin_scope(&self, tenant: &str, token: &str, now: Instant) -> Option<Scope> {
        let grant = self.admin_tokens.get(token)?;
        if grant.tenant != tenant || grant.expires <= now {
            return None;
        }
        self.tenants.get(tenant).cloned()
    }

    /// Whether `token` is an admin or queue token the service issued (for the request log).
    pub fn knows_token(&self, token: &str, now: Instant) -> bool {
        self.admin_tokens
            .get(token)
            .is_some_and(|g| g.expires > now)
            || self.sets.values().any(|s| {
                s.session
                    .as_ref()
                    .is_some_and(|x| x.queue_token == token && x.queue_token_expires > now)
            })
    }

    /// Expires every admin token (`admin`) and queue token (`queue`) now, as if their time
    /// were up: the next request with one gets 401.
    pub fn expire_tokens(&mut self, admin: bool, queue: bool, now: Instant) {
        if admin {
            self.admin_tokens.values_mut().for_each(|g| g.expires = now);
        }
        if queue {
            for session in self.sets.values_mut().filter_map(|s| s.session.as_mut()) {
                session.queue_token_expires = now;
            }
        }
    }

    pub fn fail_next(&mut self, endpoint: ScaleSetEndpoint, fault: ScaleSetFault, count: usize) {
        if count > 0 {
            self.faults.push((endpoint, fault, count));
        }
    }

    pub fn clear_faults(&mut self) {
        self.faults.clear();
    }

    /// The fault the next request to `endpoint` suffers, if any.
    pub fn take_fault(&mut self, endpoint: ScaleSetEndpoint) -> Option<ScaleSetFault> {
        let position = self
            .faults
            .iter()
            .position(|(target, _, _)| target.covers(endpoint))?;
        let entry = self.faults.get_mut(position)?;
        let fault = entry.1.clone();
        entry.2 -= 1;
        if entry.2 == 0 {
            self.faults.remove(position);
        }
        Some(fault)
    }

    pub fn tenant_scope(&self, tenant: &str) -> Option<Scope> {
        self.tenants.get(tenant).cloned()
    }

    pub fn info(&self, set: &ScaleSet) -> ScaleSetInfo {
        ScaleSetInfo {
            id: set.id,
            scope: set.scope.to_string(),
            name: set.name.clone(),
            runner_group_id: set.group_id,
            labels: set.labels.clone(),
            disable_update: set.disable_update,
            session: set
                .session
                .as_ref()
                .map(|s| (s.id.clone(), s.owner.clone())),
            polls_held: set.session.as_ref().map_or(0, |s| s.polls),
            capacity: set.capacity,
            unacknowledged_messages: set.queue.len(),
        }
    }
}

/// A create or update body, as the service reads it.
pub(crate) struct ScaleSetBody {
    pub name: Option<String>,
    pub group_id: Option<u64>,
    pub labels: Option<Vec<String>>,
    pub disable_update: Option<bool>,
}

impl ScaleSetBody {
    pub fn parse(body: &Value) -> Result<ScaleSetBody, ServiceError> {
        let bad = |what: &str| {
            ServiceError::new(
                StatusCode::BAD_REQUEST,
                "ArgumentException",
                format!("The runner scale set has an invalid {what}."),
            )
        };
        let name = match body.get("name") {
            None | Some(Value::Null) => None,
            Some(Value::String(s)) => Some(s.clone()),
            Some(_) => return Err(bad("name")),
        };
        let group_id = match body.get("runnerGroupId") {
            None | Some(Value::Null) => None,
            Some(v) => Some(v.as_u64().ok_or_else(|| bad("runnerGroupId"))?),
        };
        let labels = match body.get("labels") {
            None | Some(Value::Null) => None,
            Some(Value::Array(items)) => Some(
                items
                    .iter()
                    .map(|l| l.get("name").and_then(Value::as_str).map(str::to_owned))
                    .collect::<Option<Vec<_>>>()
                    .ok_or_else(|| bad("label"))?,
            ),
            Some(_) => return Err(bad("labels")),
        };
        let disable_update = body
            .get("RunnerSetting")
            .and_then(|s| s.get("disableUpdate"))
            .and_then(Value::as_bool);
        Ok(ScaleSetBody {
            name,
            group_id,
            labels,
            disable_update,
        })
    }
}

impl State {
    /// `POST /actions/runner-registration`: the tenant of `scope` (made on first use) and a
    /// fresh admin token for it.
    pub(crate) fn exchange_admin_token(&mut self, scope: &Scope) -> (String, String) {
        let tenant = match self.scalesets.tenant_of.get(scope) {
            Some(tenant) => tenant.clone(),
            None => {
                let tenant = self.secret(40);
                self.scalesets
                    .tenant_of
                    .insert(scope.clone(), tenant.clone());
                self.scalesets.tenants.insert(tenant.clone(), scope.clone());
                tenant
            }
        };
        let ttl = self.scalesets.config.admin_token_ttl;
        let exp = util::now_epoch() + ttl.as_secs().max(1);
        let token = util::fake_jwt(
            &json!({"iss": "fake-github", "aud": "fake-actions", "nbf": util::now_epoch(), "exp": exp, "tenant": tenant}),
            &self.secret(43),
        );
        self.scalesets.admin_tokens.insert(
            token.clone(),
            Grant {
                tenant: tenant.clone(),
                expires: Instant::now() + ttl,
            },
        );
        self.scalesets.exchanges += 1;
        (tenant, token)
    }

    /// The name of runner group `id` of `scope`, if it has one.
    pub(crate) fn group_name(&self, scope: &Scope, id: u64) -> Option<String> {
        match scope {
            Scope::Org(org) => self
                .runner_groups(org)
                .into_iter()
                .find(|g| g.id == id)
                .map(|g| g.name),
            Scope::Repo { .. } => (id == DEFAULT_GROUP_ID).then(|| "Default".to_owned()),
        }
    }

    /// `GET runnergroups/?groupName=`: the groups of `scope` with that name (any case).
    pub(crate) fn groups_named(&self, scope: &Scope, name: Option<&str>) -> Vec<Value> {
        let groups = match scope {
            Scope::Org(org) => self.runner_groups(org),
            Scope::Repo { .. } => vec![crate::state::RunnerGroup {
                id: DEFAULT_GROUP_ID,
                name: "Default".to_owned(),
            }],
        };
        groups
            .into_iter()
            .filter(|g| name.is_none_or(|n| g.name.eq_ignore_ascii_case(n)))
            .map(|g| {
                let size = self
                    .runners(scope)
                    .iter()
                    .filter(|r| r.group_id == g.id)
                    .count();
                json!({"id": g.id, "name": g.name, "size": size, "isDefaultGroup": g.id == DEFAULT_GROUP_ID})
            })
            .collect()
    }

    pub(crate) fn scale_set_json(&self, set: &ScaleSet) -> Value {
        json!({
            "id": set.id,
            "name": set.name,
            "runnerGroupId": set.group_id,
            "runnerGroupName": self.group_name(&set.scope, set.group_id).unwrap_or_default(),
            "labels": set.labels.iter().map(|l| json!({"name": l, "type": "System"})).collect::<Vec<_>>(),
            "RunnerSetting": {"ephemeral": true, "isElastic": false, "disableUpdate": set.disable_update},
            "createdOn": util::rfc3339(set.created),
            "statistics": self.statistics(set),
        })
    }

    /// `GET runnerscalesets?runnerGroupId=&name=`.
    pub(crate) fn find_scale_sets(
        &self,
        scope: &Scope,
        group_id: Option<u64>,
        name: Option<&str>,
    ) -> Vec<Value> {
        self.scalesets
            .sets
            .values()
            .filter(|s| s.scope == *scope)
            .filter(|s| group_id.is_none_or(|g| s.group_id == g))
            .filter(|s| name.is_none_or(|n| s.name.eq_ignore_ascii_case(n)))
            .map(|s| self.scale_set_json(s))
            .collect()
    }

    pub(crate) fn scale_set(&self, scope: &Scope, id: u64) -> Result<&ScaleSet, ServiceError> {
        self.scalesets
            .sets
            .get(&id)
            .filter(|s| s.scope == *scope)
            .ok_or_else(|| ServiceError::no_scale_set(id))
    }

    fn check_name_and_group(
        &self,
        scope: &Scope,
        name: &str,
        group_id: u64,
        except: Option<u64>,
    ) -> Result<(), ServiceError> {
        if name.trim().is_empty() {
            return Err(ServiceError::new(
                StatusCode::BAD_REQUEST,
                "ArgumentException",
                "The runner scale set name is required.",
            ));
        }
        if self.group_name(scope, group_id).is_none() {
            return Err(ServiceError::new(
                StatusCode::NOT_FOUND,
                "TaskAgentPoolNotFoundException",
                format!("No runner group found with identifier {group_id}."),
            ));
        }
        // Names are unique within a runner group, without regard to case (as the service
        // finds them).
        let taken = self.scalesets.sets.values().any(|s| {
            s.scope == *scope
                && s.group_id == group_id
                && s.name.eq_ignore_ascii_case(name)
                && Some(s.id) != except
        });
        if taken {
            return Err(ServiceError::new(
                StatusCode::CONFLICT,
                "RunnerScaleSetExistsException",
                format!("A runner scale set named {name} already exists in this runner group."),
            ));
        }
        Ok(())
    }

    pub(crate) fn create_scale_set(
        &mut self,
        scope: &Scope,
        body: ScaleSetBody,
    ) -> Result<Value, ServiceError> {
        let name = body.name.unwrap_or_default();
        let group_id = body
            .group_id
            .filter(|g| *g != 0)
            .unwrap_or(DEFAULT_GROUP_ID);
        self.check_name_and_group(scope, &name, group_id, None)?;
        let labels = match body.labels {
            Some(_) if self.scalesets.config.drop_extra_labels => vec![name.clone()],
            Some(labels) if !labels.is_empty() => labels,
            _ => vec![name.clone()],
        };
        let id = self.scalesets.next_set_id;
        self.scalesets.next_set_id += 1;
        let set = ScaleSet {
            id,
            scope: scope.clone(),
            name,
            group_id,
            labels,
            disable_update: body.disable_update.unwrap_or(false),
            created: util::now_epoch(),
            session: None,
            capacity: None,
            outbox: Vec::new(),
            queue: VecDeque::new(),
            offered: BTreeSet::new(),
        };
        self.scalesets.sets.insert(id, set);
        self.scale_set(scope, id).map(|s| self.scale_set_json(s))
    }

    pub(crate) fn update_scale_set(
        &mut self,
        scope: &Scope,
        id: u64,
        body: ScaleSetBody,
    ) -> Result<Value, ServiceError> {
        let current = self.scale_set(scope, id)?;
        let name = body.name.unwrap_or_else(|| current.name.clone());
        let group_id = body
            .group_id
            .filter(|g| *g != 0)
            .unwrap_or(current.group_id);
        self.check_name_and_group(scope, &name, group_id, Some(id))?;
        let set = self
            .scalesets
            .sets
            .get_mut(&id)
            .ok_or_else(|| ServiceError::no_scale_set(id))?;
        let drop_extra = self.scalesets.config.drop_extra_labels;
        set.name = name;
        set.group_id = group_id;
        if let Some(labels) = body.labels.filter(|l| !l.is_empty()) {
            set.labels = if drop_extra {
                vec![set.name.clone()]
            } else {
                labels
            };
        }
        if let Some(disable) = body.disable_update {
            set.disable_update = disable;
        }
        self.scale_set(scope, id).map(|s| self.scale_set_json(s))
    }

    /// Deletes a scale set and its idle runners; its assigned jobs go back to the queue. A
    /// scale set with a runner at work is refused (fleet never deletes one; the real service's
    /// answer is not documented).
    pub(crate) fn delete_scale_set(&mut self, scope: &Scope, id: u64) -> Result<(), ServiceError> {
        self.scale_set(scope, id)?;
        let runners: Vec<_> = self
            .runners(scope)
            .into_iter()
            .filter(|r| r.scale_set_id == Some(id))
            .collect();
        if runners.iter().any(|r| r.busy) {
            return Err(ServiceError::new(
                StatusCode::CONFLICT,
                "JobStillRunningException",
                "A runner of this scale set is still running a job.",
            ));
        }
        for runner in runners {
            self.remove_runner(scope, runner.id);
        }
        self.requeue_jobs_of(id);
        self.scalesets.sets.remove(&id);
        Ok(())
    }

    fn session_json(&self, set: &ScaleSet, base: &str) -> Value {
        let tenant = self
            .scalesets
            .tenant_of
            .get(&set.scope)
            .cloned()
            .unwrap_or_default();
        let Some(session) = &set.session else {
            return Value::Null;
        };
        json!({
            "sessionId": session.id,
            "ownerName": session.owner,
            "runnerScaleSet": self.scale_set_json(set),
            "messageQueueUrl": format!("{base}/_queue/{tenant}/{}/messages", session.id),
            "messageQueueAccessToken": session.queue_token,
            "statistics": self.statistics(set),
        })
    }

    /// `POST .../sessions`: 409 while another session is alive.
    pub(crate) fn create_session(
        &mut self,
        scope: &Scope,
        id: u64,
        owner: &str,
        base: &str,
    ) -> Result<Value, ServiceError> {
        let now = Instant::now();
        let timeout = self.scalesets.config.session_timeout;
        let set = self.scale_set(scope, id)?;
        if let Some(session) = &set.session
            && (session.polls > 0 || now.duration_since(session.last_seen) < timeout)
        {
            return Err(ServiceError::new(
                StatusCode::CONFLICT,
                "TaskAgentSessionConflictException",
                format!(
                    "The runner scale set {} already has an active session for owner {}.",
                    set.name, session.owner
                ),
            ));
        }
        let session = Session {
            id: util::uuid(&self.secret(32)),
            owner: owner.to_owned(),
            queue_token: self.secret(48),
            queue_token_expires: now + self.scalesets.config.queue_token_ttl,
            last_seen: now,
            polls: 0,
            next_message_id: 1,
        };
        let set = self
            .scalesets
            .sets
            .get_mut(&id)
            .ok_or_else(|| ServiceError::no_scale_set(id))?;
        set.session = Some(session);
        let set = self.scale_set(scope, id)?;
        Ok(self.session_json(set, base))
    }

    fn session_mut(
        &mut self,
        scope: &Scope,
        id: u64,
        session_id: &str,
    ) -> Result<&mut Session, ServiceError> {
        self.scale_set(scope, id)?;
        self.scalesets
            .sets
            .get_mut(&id)
            .and_then(|s| s.session.as_mut())
            .filter(|s| s.id == session_id)
            .ok_or_else(|| {
                ServiceError::new(
                    StatusCode::NOT_FOUND,
                    "TaskAgentSessionExpiredException",
                    format!("The session {session_id} is not found or has expired."),
                )
            })
    }

    /// `PATCH .../sessions/{id}`: a new queue token.
    pub(crate) fn refresh_session(
        &mut self,
        scope: &Scope,
        id: u64,
        session_id: &str,
        base: &str,
    ) -> Result<Value, ServiceError> {
        let token = self.secret(48);
        let ttl = self.scalesets.config.queue_token_ttl;
        let session = self.session_mut(scope, id, session_id)?;
        session.queue_token = token;
        session.queue_token_expires = Instant::now() + ttl;
        session.last_seen = Instant::now();
        let set = self.scale_set(scope, id)?;
        Ok(self.session_json(set, base))
    }

    pub(crate) fn delete_session(
        &mut self,
        scope: &Scope,
        id: u64,
        session_id: &str,
    ) -> Result<(), ServiceError> {
        self.session_mut(scope, id, session_id)?;
        if let Some(set) = self.scalesets.sets.get_mut(&id) {
            set.session = None;
        }
        Ok(())
    }

    /// The scale set whose session `session_id` of `tenant` the queue `token` opens.
    pub(crate) fn queue_session(
        &self,
        tenant: &str,
        session_id: &str,
        token: &str,
        now: Instant,
    ) -> Option<u64> {
        let scope = self.scalesets.tenant_scope(tenant)?;
        self.scalesets
            .sets
            .values()
            .find(|s| {
                s.scope == scope
                    && s.session.as_ref().is_some_and(|x| {
                        x.id == session_id && x.queue_token == token && x.queue_token_expires > now
                    })
            })
            .map(|s| s.id)
    }

    /// The scale set `id` of `scope`, if `token` is its session's live queue token.
    pub(crate) fn queue_token_for(
        &self,
        scope: &Scope,
        id: u64,
        token: &str,
        now: Instant,
    ) -> bool {
        self.scalesets.sets.get(&id).is_some_and(|s| {
            s.scope == *scope
                && s.session
                    .as_ref()
                    .is_some_and(|x| x.queue_token == token && x.queue_token_expires > now)
        })
    }

    pub(crate) fn scale_set_infos(&self, scope: Option<&Scope>) -> Vec<ScaleSetInfo> {
        self.scalesets
            .sets
            .values()
            .filter(|s| scope.is_none_or(|scope| s.scope == *scope))
            .map(|s| self.scalesets.info(s))
            .collect()
    }
}
