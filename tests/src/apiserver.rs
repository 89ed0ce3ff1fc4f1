//! A test API server on loopback that speaks the Kubernetes list/watch
//! protocol for Services, EndpointSlices and Nodes: resourceVersions, chunked
//! watch streams, bookmarks, dropped connections, `410 Gone` after compaction
//! (on a new watch, or ending an open one),
//! label and field selectors (an object that stops or starts matching a
//! watch's selector is sent as DELETED or ADDED, as the real server does),
//! paged lists (`limit`, `continue`), GET of one object, `events.k8s.io`
//! Events (created and patched, kept for the tests), and an unreachable mode.
//! The real kube client talks to it over HTTP.

mod events;
mod read;
mod select;

use std::{
    collections::{BTreeMap, HashMap},
    net::SocketAddr,
    path::Path,
    sync::{Arc, Mutex},
};

use anyhow::{Context, Result};
use axum::{
    body::Bytes,
    extract::{Query, State},
    http::{Method, StatusCode, Uri},
    response::{IntoResponse, Response},
    serve::ListenerExt as _,
    Router,
};
use serde_json::{json, Value};
use tokio::sync::{broadcast, oneshot, watch};

use self::{
    read::{list_response, object_route, watch_response},
    select::Filter,
};
use crate::netns::Netns;

/// The resources served: (collection path, apiVersion, kind).
const KINDS: [(&str, &str, &str); 3] = [
    ("/api/v1/services", "v1", "Service"),
    (
        "/apis/discovery.k8s.io/v1/endpointslices",
        "discovery.k8s.io/v1",
        "EndpointSlice",
    ),
    ("/api/v1/nodes", "v1", "Node"),
];

#[derive(Clone, Debug)]
struct Change {
    kind: String,
    rv: u64,
    kind_of_event: &'static str,
    object: Value,
    /// The object before the change (for a deletion, the deleted object):
    /// a watch's selector decides on both.
    previous: Option<Value>,
}

/// The rest of a paged list, kept until its last page is read.
struct Page {
    kind: String,
    rv: u64,
    rest: Vec<Value>,
}

#[derive(Default)]
struct Store {
    rv: u64,
    /// Objects by kind, then "namespace/name".
    objects: HashMap<String, BTreeMap<String, Value>>,
    /// Changes since the last compaction.
    history: Vec<Change>,
    /// Watches from before this resourceVersion get 410 Gone.
    compacted: u64,
    /// While true every request gets 503.
    down: bool,
    requests: u64,
    lists: u64,
    log: Vec<String>,
    /// Paged lists under way, by continue token.
    pages: HashMap<String, Page>,
    /// Events created (and patched since), in order.
    events: Vec<Value>,
    /// While true Event requests get 403, as without RBAC for them.
    events_forbidden: bool,
}

/// Counts a watch as open while it lives.
struct OpenWatch(Arc<std::sync::atomic::AtomicUsize>);

impl Drop for OpenWatch {
    fn drop(&mut self) {
        self.0.fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
    }
}

struct Shared {
    store: Mutex<Store>,
    changes: broadcast::Sender<Change>,
    /// Bumped to end every open watch (a dropped connection).
    generation: watch::Sender<u64>,
    /// Watches currently streaming.
    open_watches: Arc<std::sync::atomic::AtomicUsize>,
}

/// The running server; stopped on drop.
pub struct TestApiServer {
    shared: Arc<Shared>,
    addr: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl TestApiServer {
    /// Starts a server on 127.0.0.1 of this process's network namespace.
    pub fn start() -> Result<Self> {
        Self::start_in(None)
    }

    /// Starts a server on 127.0.0.1 inside `ns` (the agent's node), or here.
    pub fn start_in(ns: Option<&Netns>) -> Result<Self> {
        Self::start_at(ns, std::net::Ipv4Addr::LOCALHOST)
    }

    /// Starts a server on `ip` (an address of `ns`, or of this process's
    /// namespace), on a port of the kernel's choosing.
    pub fn start_at(ns: Option<&Netns>, ip: std::net::Ipv4Addr) -> Result<Self> {
        let (changes, _) = broadcast::channel(4096);
        let shared = Arc::new(Shared {
            store: Mutex::new(Store::default()),
            changes,
            generation: watch::channel(0).0,
            open_watches: Arc::default(),
        });
        let listener = match ns {
            Some(ns) => ns.run(move || std::net::TcpListener::bind((ip, 0)))??,
            None => std::net::TcpListener::bind((ip, 0))?,
        };
        listener.set_nonblocking(true)?;
        let addr = listener.local_addr()?;
        let (stop, stopped) = oneshot::channel();
        let app = Router::new().fallback(handle).with_state(shared.clone());
        let thread = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("test API server runtime");
            runtime.block_on(async move {
                let listener = tokio::net::TcpListener::from_std(listener).expect("listener");
                // No Nagle: Go, which the real API server is written in, sets
                // TCP_NODELAY on every connection. Without it, watch events
                // sent a millisecond apart wait for the client's delayed ACK
                // and arrive in batches (tens of ms late).
                let listener = listener.tap_io(|tcp| {
                    let _ = tcp.set_nodelay(true);
                });
                let _ = axum::serve(listener, app)
                    .with_graceful_shutdown(async {
                        let _ = stopped.await;
                    })
                    .await;
            });
        });
        Ok(Self {
            shared,
            addr,
            stop: Some(stop),
            thread: Some(thread),
        })
    }

    /// The server's URL.
    #[must_use]
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Writes a kubeconfig pointing at this server.
    pub fn write_kubeconfig(&self, path: &Path) -> Result<()> {
        let config = Self::kubeconfig_text(&self.url());
        std::fs::write(path, config).with_context(|| format!("writing {}", path.display()))
    }

    /// A kubeconfig naming `server` (a URL), without credentials.
    #[must_use]
    pub fn kubeconfig_text(server: &str) -> String {
        format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: test\n  cluster: {{server: \"{server}\"}}\n\
             users:\n- name: test\n  user: {{}}\ncontexts:\n- name: test\n  context: {{cluster: test, user: test}}\n\
             current-context: test\n"
        )
    }

    /// Creates or replaces an object (given as YAML or JSON), as `kubectl apply` would.
    pub fn apply(&self, manifest: &str) -> Result<()> {
        let mut object: Value = serde_yaml_ng_compat(manifest)?;
        let kind = object["kind"]
            .as_str()
            .context("object without kind")?
            .to_string();
        let key = key_of(&object);
        let mut store = self.shared.store.lock().unwrap();
        store.rv += 1;
        let rv = store.rv;
        object["metadata"]["resourceVersion"] = json!(rv.to_string());
        let objects = store.objects.entry(kind.clone()).or_default();
        if object["metadata"]["uid"].is_null() {
            // The real server gives each object a uid at creation.
            object["metadata"]["uid"] = objects.get(&key).map_or_else(
                || json!(format!("uid-{rv}")),
                |o| o["metadata"]["uid"].clone(),
            );
        }
        let previous = objects.insert(key, object.clone());
        let change = Change {
            kind,
            rv,
            kind_of_event: if previous.is_some() {
                "MODIFIED"
            } else {
                "ADDED"
            },
            object,
            previous,
        };
        store.history.push(change.clone());
        let _ = self.shared.changes.send(change);
        Ok(())
    }

    /// Deletes an object; returns whether it existed.
    #[must_use = "a false result means nothing was deleted"]
    pub fn delete(&self, kind: &str, namespace: &str, name: &str) -> bool {
        let mut store = self.shared.store.lock().unwrap();
        let key = format!("{namespace}/{name}");
        let Some(mut object) = store.objects.get_mut(kind).and_then(|o| o.remove(&key)) else {
            return false;
        };
        store.rv += 1;
        let rv = store.rv;
        object["metadata"]["resourceVersion"] = json!(rv.to_string());
        let change = Change {
            kind: kind.to_string(),
            rv,
            kind_of_event: "DELETED",
            previous: Some(object.clone()),
            object,
        };
        store.history.push(change.clone());
        let _ = self.shared.changes.send(change);
        true
    }

    /// Sends a BOOKMARK with the current resourceVersion on every open watch.
    pub fn bookmark(&self) {
        let store = self.shared.store.lock().unwrap();
        self.to_every_watch("BOOKMARK", store.rv);
    }

    /// Compacts (see [`TestApiServer::compact`]) and ends every open watch
    /// with an ERROR event of `410 Gone` ("too old resource version"), as
    /// the real server does when a watch falls behind compaction: the
    /// client relists.
    pub fn expire_watches(&self) {
        self.compact();
        let store = self.shared.store.lock().unwrap();
        self.to_every_watch("ERROR", store.rv);
    }

    /// Sends `event` (BOOKMARK or ERROR) at `rv` on every open watch.
    fn to_every_watch(&self, event: &'static str, rv: u64) {
        for (_, api_version, kind) in KINDS {
            let _ = self.shared.changes.send(Change {
                kind: kind.to_string(),
                rv,
                kind_of_event: event,
                object: json!({"apiVersion": api_version, "kind": kind, "metadata": {"resourceVersion": rv.to_string()}}),
                previous: None,
            });
        }
    }

    /// Forgets the change history: a watch resuming from before now gets `410 Gone`.
    pub fn compact(&self) {
        let mut store = self.shared.store.lock().unwrap();
        store.compacted = store.rv;
        store.history.clear();
        // A continue token from before now is too old, as with the real server.
        store.pages.clear();
    }

    /// Ends every open watch, as a dropped connection would.
    pub fn drop_watches(&self) {
        self.shared.generation.send_modify(|g| *g += 1);
    }

    /// Makes the server unreachable (every request 503, watches end) or reachable again.
    pub fn set_down(&self, down: bool) {
        self.shared.store.lock().unwrap().down = down;
        if down {
            self.drop_watches();
        }
    }

    /// How many list (not watch) requests the server has answered: relists show here.
    #[must_use]
    pub fn lists(&self) -> u64 {
        self.shared.store.lock().unwrap().lists
    }

    /// How many watches are streaming now.
    #[must_use]
    pub fn open_watches(&self) -> usize {
        self.shared
            .open_watches
            .load(std::sync::atomic::Ordering::SeqCst)
    }

    /// Every request's URI, in order.
    #[must_use]
    pub fn log(&self) -> Vec<String> {
        self.shared.store.lock().unwrap().log.clone()
    }

    /// Refuses Event requests with 403 Forbidden (as without RBAC for
    /// them), or takes them again.
    pub fn set_events_forbidden(&self, forbidden: bool) {
        self.shared.store.lock().unwrap().events_forbidden = forbidden;
    }

    /// The Events created (as last patched), in order of creation.
    #[must_use]
    pub fn events(&self) -> Vec<Value> {
        self.shared.store.lock().unwrap().events.clone()
    }

    /// How many requests the server has answered.
    #[must_use]
    pub fn requests(&self) -> u64 {
        self.shared.store.lock().unwrap().requests
    }
}

impl Drop for TestApiServer {
    fn drop(&mut self) {
        self.drop_watches();
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// Parses YAML (a superset of JSON) into a JSON value.
fn serde_yaml_ng_compat(text: &str) -> Result<Value> {
    let value: Value = serde_yaml_ng::from_str(text).context("parsing the object")?;
    Ok(value)
}

fn key_of(object: &Value) -> String {
    let meta = &object["metadata"];
    format!(
        "{}/{}",
        meta["namespace"]
            .as_str()
            .unwrap_or(if object["kind"] == "Node" {
                ""
            } else {
                "default"
            }),
        meta["name"].as_str().unwrap_or_default()
    )
}

fn status(code: u16, reason: &str, message: &str) -> Value {
    json!({"apiVersion": "v1", "kind": "Status", "status": "Failure", "message": message, "reason": reason, "code": code})
}

async fn handle(
    State(shared): State<Arc<Shared>>,
    method: Method,
    uri: Uri,
    Query(query): Query<HashMap<String, String>>,
    body: Bytes,
) -> Response {
    {
        let mut store = shared.store.lock().unwrap();
        store.requests += 1;
        store.log.push(uri.to_string());
        if store.down {
            return failure(
                StatusCode::SERVICE_UNAVAILABLE,
                "ServiceUnavailable",
                "the test API server is down",
            );
        }
    }
    if let Some(route) = events::route(uri.path()) {
        let mut store = shared.store.lock().unwrap();
        let store = &mut *store;
        if store.events_forbidden {
            return failure(
                StatusCode::FORBIDDEN,
                "Forbidden",
                "events.events.k8s.io is forbidden for this user",
            );
        }
        let (code, answer) =
            events::handle(&mut store.events, &mut store.rv, &method, &route, &body);
        return (code, axum::Json(answer)).into_response();
    }
    if method != Method::GET {
        return failure(
            StatusCode::METHOD_NOT_ALLOWED,
            "MethodNotAllowed",
            "the test API server only reads these",
        );
    }
    if let Some((kind, key)) = object_route(uri.path()) {
        let store = shared.store.lock().unwrap();
        return match store.objects.get(kind).and_then(|o| o.get(&key)) {
            Some(object) => axum::Json(object.clone()).into_response(),
            None => failure(
                StatusCode::NOT_FOUND,
                "NotFound",
                &format!("{kind} {key} not found"),
            ),
        };
    }
    let Some(&(_, api_version, kind)) = KINDS.iter().find(|(path, _, _)| *path == uri.path())
    else {
        return failure(
            StatusCode::NOT_FOUND,
            "NotFound",
            "not served by the test API server",
        );
    };
    let filter = match Filter::from_query(query.get("labelSelector"), query.get("fieldSelector")) {
        Ok(filter) => filter,
        Err(message) => return failure(StatusCode::BAD_REQUEST, "BadRequest", &message),
    };
    if query.get("watch").is_some_and(|w| w == "true" || w == "1") {
        watch_response(&shared, kind, &query, filter)
    } else {
        list_response(&shared, api_version, kind, &query, &filter)
    }
}

/// A failure answered with its Status.
fn failure(code: StatusCode, reason: &str, message: &str) -> Response {
    (code, axum::Json(status(code.as_u16(), reason, message))).into_response()
}
