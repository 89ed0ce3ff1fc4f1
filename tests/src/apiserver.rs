//! A test API server on loopback that speaks the Kubernetes list/watch
//! protocol for Services, EndpointSlices and Nodes: resourceVersions, chunked
//! watch streams, bookmarks, dropped connections, `410 Gone` after compaction,
//! and an unreachable mode. The real kube client talks to it over HTTP.

use std::{
    collections::{BTreeMap, HashMap},
    convert::Infallible,
    net::SocketAddr,
    path::Path,
    sync::{Arc, Mutex},
    time::Duration,
};

use anyhow::{Context, Result};
use axum::{
    body::{Body, Bytes},
    extract::{Query, State},
    http::{StatusCode, Uri},
    response::{IntoResponse, Response},
    Router,
};
use serde_json::{json, Value};
use tokio::sync::{broadcast, oneshot, watch};
use tokio_stream::{wrappers::ReceiverStream, StreamExt};

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
        let (changes, _) = broadcast::channel(4096);
        let shared = Arc::new(Shared {
            store: Mutex::new(Store::default()),
            changes,
            generation: watch::channel(0).0,
            open_watches: Arc::default(),
        });
        let listener = match ns {
            Some(ns) => ns.run(|| std::net::TcpListener::bind("127.0.0.1:0"))??,
            None => std::net::TcpListener::bind("127.0.0.1:0")?,
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
        let config = format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: test\n  cluster: {{server: \"{}\"}}\n\
             users:\n- name: test\n  user: {{}}\ncontexts:\n- name: test\n  context: {{cluster: test, user: test}}\n\
             current-context: test\n",
            self.url()
        );
        std::fs::write(path, config).with_context(|| format!("writing {}", path.display()))
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
        let existed = store
            .objects
            .entry(kind.clone())
            .or_default()
            .insert(key, object.clone())
            .is_some();
        let change = Change {
            kind,
            rv,
            kind_of_event: if existed { "MODIFIED" } else { "ADDED" },
            object,
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
            object,
        };
        store.history.push(change.clone());
        let _ = self.shared.changes.send(change);
        true
    }

    /// Sends a BOOKMARK with the current resourceVersion on every open watch.
    pub fn bookmark(&self) {
        let store = self.shared.store.lock().unwrap();
        for (_, api_version, kind) in KINDS {
            let _ = self.shared.changes.send(Change {
                kind: kind.to_string(),
                rv: store.rv,
                kind_of_event: "BOOKMARK",
                object: json!({"apiVersion": api_version, "kind": kind, "metadata": {"resourceVersion": store.rv.to_string()}}),
            });
        }
    }

    /// Forgets the change history: a watch resuming from before now gets `410 Gone`.
    pub fn compact(&self) {
        let mut store = self.shared.store.lock().unwrap();
        store.compacted = store.rv;
        store.history.clear();
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
    uri: Uri,
    Query(query): Query<HashMap<String, String>>,
) -> Response {
    let Some(&(_, api_version, kind)) = KINDS.iter().find(|(path, _, _)| *path == uri.path())
    else {
        return (
            StatusCode::NOT_FOUND,
            axum::Json(status(404, "NotFound", "not served by the test API server")),
        )
            .into_response();
    };
    {
        let mut store = shared.store.lock().unwrap();
        store.requests += 1;
        store.log.push(uri.to_string());
        if store.down {
            return (
                StatusCode::SERVICE_UNAVAILABLE,
                axum::Json(status(
                    503,
                    "ServiceUnavailable",
                    "the test API server is down",
                )),
            )
                .into_response();
        }
    }
    if query.get("watch").is_some_and(|w| w == "true" || w == "1") {
        watch_response(&shared, kind, &query)
    } else {
        let mut store = shared.store.lock().unwrap();
        store.lists += 1;
        let items: Vec<Value> = store
            .objects
            .get(kind)
            .map(|o| o.values().cloned().collect())
            .unwrap_or_default();
        axum::Json(json!({
            "apiVersion": api_version,
            "kind": format!("{kind}List"),
            "metadata": {"resourceVersion": store.rv.to_string()},
            "items": items,
        }))
        .into_response()
    }
}

fn watch_response(shared: &Arc<Shared>, kind: &str, query: &HashMap<String, String>) -> Response {
    let from: u64 = query
        .get("resourceVersion")
        .and_then(|rv| rv.parse().ok())
        .unwrap_or(0);
    let timeout = query
        .get("timeoutSeconds")
        .and_then(|t| t.parse().ok())
        .map_or(Duration::from_mins(5), Duration::from_secs);
    let (tx, rx) = tokio::sync::mpsc::channel::<Bytes>(1024);
    // Subscribe before reading the history so no change falls in between.
    let mut changes = shared.changes.subscribe();
    let mut generation = shared.generation.subscribe();
    let backlog: Result<Vec<Change>, ()> = {
        let store = shared.store.lock().unwrap();
        if from != 0 && from < store.compacted {
            Err(())
        } else {
            Ok(store
                .history
                .iter()
                .filter(|c| c.kind == kind && c.rv > from)
                .cloned()
                .collect())
        }
    };
    let kind = kind.to_string();
    shared
        .open_watches
        .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    let open = OpenWatch(shared.open_watches.clone());
    tokio::spawn(async move {
        let _open = open;
        let line = |event: &str, object: &Value| {
            let mut text = json!({"type": event, "object": object}).to_string();
            text.push('\n');
            Bytes::from(text)
        };
        let Ok(backlog) = backlog else {
            let _ = tx
                .send(line(
                    "ERROR",
                    &status(410, "Expired", "too old resource version"),
                ))
                .await;
            return;
        };
        let mut last = from;
        for change in backlog {
            last = change.rv;
            if tx
                .send(line(change.kind_of_event, &change.object))
                .await
                .is_err()
            {
                return;
            }
        }
        let deadline = tokio::time::sleep(timeout);
        tokio::pin!(deadline);
        loop {
            tokio::select! {
                // A dropped connection wins over changes made after the drop.
                biased;
                _ = generation.changed() => return,
                () = &mut deadline => return,
                change = changes.recv() => {
                    let Ok(change) = change else { return };
                    if change.kind != kind || (change.kind_of_event != "BOOKMARK" && change.rv <= last) {
                        continue;
                    }
                    last = last.max(change.rv);
                    if tx.send(line(change.kind_of_event, &change.object)).await.is_err() {
                        return;
                    }
                }
            }
        }
    });
    let body = Body::from_stream(ReceiverStream::new(rx).map(Ok::<Bytes, Infallible>));
    Response::builder()
        .header("content-type", "application/json")
        .body(body)
        .expect("watch response")
}
