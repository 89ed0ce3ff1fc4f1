//! Health check node ports: for each `externalTrafficPolicy: Local`
//! LoadBalancer Service, an HTTP listener on its `healthCheckNodePort`
//! answering every path as kube-proxy does
//! (`pkg/proxy/healthcheck/service_health.go`): 200 when this node has a
//! ready endpoint of the Service and the proxy is healthy, else 503; a JSON
//! body naming the Service with `localEndpoints` and `serviceProxyHealthy`,
//! and the count again in `X-Load-Balancing-Endpoint-Weight`.
//!
//! Listeners follow the Services: opened when one gets a port, closed when it
//! goes or its port changes. A port that cannot be bound is logged once and
//! tried again every retry interval, without holding up the others.

use std::{collections::BTreeMap, net::SocketAddr, sync::Arc};

use axum::{extract::State, response::Response, Router};
use tokio::{sync::watch, task::JoinHandle};

use super::{json_headers, log_bind_failure, proxy::respond, Bind, Reply, Shared};
use crate::ident::ObjectName;

/// Header through which some cloud load balancers weigh nodes.
pub const WEIGHT_HEADER: &str = "X-Load-Balancing-Endpoint-Weight";

/// The answer for Service `name` with `local` ready endpoints on this node.
#[must_use]
pub fn reply(name: &ObjectName, local: usize, proxy_healthy: bool) -> Reply {
    let quote = |s: &str| serde_json::to_string(s).unwrap_or_default();
    // kube-proxy's layout, tabs and all, without a final newline.
    let body = format!(
        "{{\n\t\"service\": {{\n\t\t\"namespace\": {},\n\t\t\"name\": {}\n\t}},\n\t\
         \"localEndpoints\": {local},\n\t\"serviceProxyHealthy\": {proxy_healthy}\n}}",
        quote(&name.namespace),
        quote(&name.name),
    );
    let mut headers = json_headers();
    headers.push((WEIGHT_HEADER, local.to_string()));
    Reply {
        status: if local > 0 && proxy_healthy { 200 } else { 503 },
        headers,
        body,
    }
}

async fn answer(State((shared, name)): State<(Arc<Shared>, ObjectName)>) -> Response {
    let local = shared.state().local.get(&name).copied().unwrap_or(0);
    respond(reply(&name, local, shared.proxy_healthy()))
}

/// A Service's listener; dropping it closes the port.
struct Instance {
    port: u16,
    server: Option<JoinHandle<()>>,
    /// Why the last bind failed (then retries log at debug).
    error: Option<String>,
}

impl Drop for Instance {
    fn drop(&mut self) {
        if let Some(server) = self.server.take() {
            server.abort();
        }
    }
}

/// Keeps one listener per entry of `desired` (Service -> port) until the
/// sender is dropped; retries failed binds every `retry`.
pub(super) async fn manage(
    shared: Arc<Shared>,
    mut desired: watch::Receiver<BTreeMap<ObjectName, u16>>,
) {
    let mut instances: BTreeMap<ObjectName, Instance> = BTreeMap::new();
    loop {
        let wanted = desired.borrow_and_update().clone();
        instances.retain(|name, instance| {
            let keep = wanted.get(name) == Some(&instance.port);
            if !keep {
                tracing::info!(service = %name, port = instance.port, "closing the health check node port");
            }
            keep
        });
        for (name, &port) in &wanted {
            let instance = instances.entry(name.clone()).or_insert(Instance {
                port,
                server: None,
                error: None,
            });
            if instance.server.is_none() {
                open(&shared, name, instance).await;
            }
        }
        publish(&shared, &instances);
        let failed = instances.values().any(|i| i.server.is_none());
        tokio::select! {
            changed = desired.changed() => if changed.is_err() { break },
            () = tokio::time::sleep(shared.options.retry), if failed => {}
        }
    }
}

/// Binds and serves one Service's port (or records why not).
async fn open(shared: &Arc<Shared>, name: &ObjectName, instance: &mut Instance) {
    let addr = SocketAddr::new(shared.options.service_ip, instance.port);
    match tokio::net::TcpListener::bind(addr).await {
        Ok(listener) => {
            tracing::info!(service = %name, %addr, "serving the health check node port");
            instance.error = None;
            let app = Router::new()
                .fallback(answer)
                .with_state((shared.clone(), name.clone()));
            let service = name.clone();
            instance.server = Some(tokio::spawn(async move {
                if let Err(e) = axum::serve(listener, app).await {
                    tracing::warn!(%service, "health check node port server stopped: {e}");
                }
            }));
        }
        Err(e) => {
            let what = format!("health check node port of Service {name}");
            log_bind_failure(&what, addr, &e, instance.error.is_none());
            instance.error = Some(e.to_string());
        }
    }
}

/// Records which ports listen, and why the others do not.
fn publish(shared: &Shared, instances: &BTreeMap<ObjectName, Instance>) {
    let services = instances
        .iter()
        .map(|(name, instance)| {
            let bind = match (&instance.server, &instance.error) {
                (Some(_), _) => {
                    Bind::Bound(SocketAddr::new(shared.options.service_ip, instance.port))
                }
                (None, error) => Bind::Failed(error.clone().unwrap_or_default()),
            };
            (name.clone(), (instance.port, bind))
        })
        .collect();
    shared.state().listening.services = services;
}
