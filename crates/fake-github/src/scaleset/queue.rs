//! The message queue of a session: `GET {queue}` long-polls (held until a message is due, or
//! answered 202 after `ScaleSetConfig::long_poll`), `DELETE {queue}/{id}` acknowledges.

use std::sync::Arc;
use std::time::Instant;

use axum::Router;
use axum::extract::{Path, State};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get};
use http::{HeaderMap, StatusCode};

use super::jobs::PollStep;
use super::service::{LoseAck, bearer, unauthorized};
use crate::Shared;
use crate::api::json_response;

type Ctx = State<Arc<Shared>>;

pub(crate) fn routes() -> Router<Arc<Shared>> {
    Router::new()
        .route("/_queue/{tenant}/{session}/messages", get(get_message))
        .route(
            "/_queue/{tenant}/{session}/messages/{message}",
            delete(delete_message),
        )
}

/// The scale set of the session the request's queue token opens.
fn session_set(shared: &Shared, tenant: &str, session: &str, headers: &HeaderMap) -> Option<u64> {
    let token = bearer(headers)?;
    shared
        .lock()
        .queue_session(tenant, session, token, Instant::now())
}

/// The capacity the poll advertises; a poll without the header sets no limit.
fn capacity(headers: &HeaderMap) -> Option<u32> {
    match headers.get("x-scalesetmaxcapacity") {
        Some(value) => value.to_str().ok().and_then(|v| v.trim().parse().ok()),
        None => Some(u32::MAX),
    }
}

/// Counts a poll as held on its session while it waits, so the session stays alive.
struct Held<'a> {
    shared: &'a Shared,
    set: u64,
    session: &'a str,
}

impl<'a> Held<'a> {
    fn new(shared: &'a Shared, set: u64, session: &'a str) -> Held<'a> {
        let held = Held {
            shared,
            set,
            session,
        };
        held.update(|s| s.polls += 1);
        held
    }

    /// Applies `change` to the session, if it is still the scale set's session.
    fn update(&self, change: impl FnOnce(&mut super::world::Session)) {
        let mut world = self.shared.lock();
        let session = world
            .scalesets
            .sets
            .get_mut(&self.set)
            .and_then(|s| s.session.as_mut())
            .filter(|s| s.id == self.session);
        if let Some(session) = session {
            change(session);
        }
    }
}

impl Drop for Held<'_> {
    fn drop(&mut self) {
        self.update(|session| {
            session.polls = session.polls.saturating_sub(1);
            session.last_seen = Instant::now();
        });
    }
}

async fn get_message(
    State(shared): Ctx,
    Path((tenant, session)): Path<(String, String)>,
    headers: HeaderMap,
) -> Response {
    let Some(set) = session_set(&shared, &tenant, &session, &headers) else {
        return unauthorized();
    };
    let capacity = capacity(&headers);
    let hold = shared.lock().scalesets.config.long_poll;
    let deadline = tokio::time::Instant::now() + hold;
    let _held = Held::new(&shared, set, &session);
    loop {
        // Registered before looking, so a change made between the look and the wait wakes it.
        let changed = shared.scaleset_notify().notified();
        tokio::pin!(changed);
        changed.as_mut().enable();
        let step = shared
            .lock()
            .poll_step(set, &session, capacity, Instant::now());
        let wake = match step {
            PollStep::Deliver(message) => return json_response(StatusCode::OK, &message),
            PollStep::Gone => {
                return json_response(
                    StatusCode::NOT_FOUND,
                    &serde_json::json!({"message": "The message session is gone."}),
                );
            }
            PollStep::Wait { until } => until
                .map(|at| tokio::time::Instant::from_std(at).min(deadline))
                .unwrap_or(deadline),
        };
        if tokio::time::Instant::now() >= deadline {
            return StatusCode::ACCEPTED.into_response();
        }
        tokio::select! {
            () = &mut changed => {}
            () = tokio::time::sleep_until(wake) => {}
            () = shared.stopped() => return StatusCode::ACCEPTED.into_response(),
        }
    }
}

async fn delete_message(
    State(shared): Ctx,
    Path((tenant, session, message)): Path<(String, String, String)>,
    headers: HeaderMap,
    lose: Option<axum::Extension<LoseAck>>,
) -> Response {
    let Some(set) = session_set(&shared, &tenant, &session, &headers) else {
        return unauthorized();
    };
    let Ok(message) = message.parse::<u64>() else {
        return StatusCode::NOT_FOUND.into_response();
    };
    if lose.is_some() {
        return StatusCode::NO_CONTENT.into_response();
    }
    if shared.lock().acknowledge(set, message) {
        StatusCode::NO_CONTENT.into_response()
    } else {
        json_response(
            StatusCode::NOT_FOUND,
            &serde_json::json!({"message": format!("No message {message} in this queue.")}),
        )
    }
}
