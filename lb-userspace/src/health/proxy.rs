//! The proxy health server: `/healthz` and `/livez` with kube-proxy's
//! status codes, headers and JSON body (`pkg/proxy/healthcheck/proxy_health.go`).
//!
//! Both answer 200 unless a change has waited for the maps longer than the
//! timeout since the last successful sync; `/healthz` also answers 503 while
//! the node is not eligible (being deleted), and says so in `nodeEligible`.
//! When healthy, `lastUpdated` is the current time, as kube-proxy keeps it for
//! compatibility; the per-family `status` keeps the real time.

use std::{
    net::SocketAddr,
    sync::Arc,
    time::{Duration, Instant, SystemTime},
};

use axum::{
    extract::State,
    http::{HeaderName, HeaderValue, StatusCode},
    response::{IntoResponse, Response},
    routing::any,
    Router,
};
use serde::Serialize;

use super::{json_headers, log_bind_failure, Bind, Reply, Shared, SyncState};

/// Path of the health check that includes the node's eligibility.
pub const HEALTHZ_PATH: &str = "/healthz";
/// Path of the liveness check (the proxy alone).
pub const LIVEZ_PATH: &str = "/livez";

/// Go's zero `time.Time` as JSON: kube-proxy's `lastUpdated` before any sync.
const ZERO_TIME: &str = "0001-01-01T00:00:00Z";

/// A wall-clock time as Go marshals `time.Time` (RFC 3339, nanoseconds
/// without trailing zeros), in UTC.
#[must_use]
pub fn go_time(t: Option<SystemTime>) -> String {
    t.and_then(|t| k8s_openapi::jiff::Timestamp::try_from(t).ok())
        .map_or_else(|| ZERO_TIME.to_string(), |t| t.to_string())
}

/// One IP family's health (the agent serves IPv4 only).
#[derive(Serialize)]
struct FamilyHealth {
    #[serde(rename = "lastUpdated")]
    last_updated: String,
    healthy: bool,
}

/// kube-proxy's `ProxyHealth`, its fields in its order.
#[derive(Serialize)]
struct Body {
    #[serde(rename = "lastUpdated")]
    last_updated: String,
    #[serde(rename = "currentTime")]
    current_time: String,
    #[serde(rename = "nodeEligible", skip_serializing_if = "Option::is_none")]
    node_eligible: Option<bool>,
    healthy: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    status: Option<std::collections::BTreeMap<&'static str, FamilyHealth>>,
}

/// The answer to `/healthz` (`node_eligible` given) or `/livez` (`None`).
#[must_use]
pub fn reply(
    sync: &SyncState,
    node_eligible: Option<bool>,
    now: Instant,
    wall: SystemTime,
    timeout: Duration,
) -> Reply {
    let healthy = sync.healthy(now, timeout);
    let ok = healthy && node_eligible != Some(false);
    let status = sync.last_updated.map(|at| {
        [(
            "IPv4",
            FamilyHealth {
                last_updated: go_time(Some(at)),
                healthy,
            },
        )]
        .into()
    });
    let body = Body {
        last_updated: go_time(if ok { Some(wall) } else { sync.last_updated }),
        current_time: go_time(Some(wall)),
        node_eligible,
        healthy,
        status,
    };
    Reply {
        status: if ok { 200 } else { 503 },
        headers: json_headers(),
        body: serde_json::to_string(&body).unwrap_or_default(),
    }
}

/// An axum response from a [`Reply`].
pub(super) fn respond(reply: Reply) -> Response {
    let mut response = (
        StatusCode::from_u16(reply.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
        reply.body,
    )
        .into_response();
    for (name, value) in reply.headers {
        // from_bytes takes any case.
        if let (Ok(name), Ok(value)) = (
            HeaderName::from_bytes(name.as_bytes()),
            HeaderValue::from_str(&value),
        ) {
            response.headers_mut().insert(name, value);
        }
    }
    response
}

async fn healthz(State(shared): State<Arc<Shared>>) -> Response {
    answer(&shared, true)
}

async fn livez(State(shared): State<Arc<Shared>>) -> Response {
    answer(&shared, false)
}

fn answer(shared: &Shared, with_node: bool) -> Response {
    let (sync, eligible) = {
        let state = shared.state();
        (state.sync, state.node_eligible)
    };
    respond(reply(
        &sync,
        with_node.then_some(eligible),
        Instant::now(),
        SystemTime::now(),
        shared.options.timeout,
    ))
}

/// Serves `/healthz` and `/livez` on `addr` for as long as the runtime runs;
/// while the address is taken, tries again every `retry`.
pub(super) async fn serve(shared: Arc<Shared>, addr: SocketAddr) {
    let app = Router::new()
        .route(HEALTHZ_PATH, any(healthz))
        .route(LIVEZ_PATH, any(livez))
        .with_state(shared.clone());
    let mut first = true;
    loop {
        match tokio::net::TcpListener::bind(addr).await {
            Ok(listener) => {
                let bound = listener.local_addr().unwrap_or(addr);
                shared.state().listening.healthz = Some(Bind::Bound(bound));
                tracing::info!(addr = %bound, "serving {HEALTHZ_PATH} and {LIVEZ_PATH}");
                first = true;
                if let Err(e) = axum::serve(listener, app.clone()).await {
                    tracing::warn!(%addr, "the proxy health server stopped: {e}");
                }
            }
            Err(e) => {
                shared.state().listening.healthz = Some(Bind::Failed(e.to_string()));
                log_bind_failure("proxy health server", addr, &e, first);
                first = false;
            }
        }
        tokio::time::sleep(shared.options.retry).await;
    }
}
