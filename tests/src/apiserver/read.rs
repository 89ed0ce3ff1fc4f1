//! Reads: one object, lists (filtered, in pages) and watches (filtered, a
//! change seen through the watch's selector).

use std::{collections::HashMap, convert::Infallible, sync::Arc, time::Duration};

use axum::{
    body::{Body, Bytes},
    http::StatusCode,
    response::{IntoResponse, Response},
};
use serde_json::{json, Value};
use tokio_stream::{wrappers::ReceiverStream, StreamExt};

use super::{failure, select::Filter, status, Change, OpenWatch, Page, Shared, KINDS};

/// The kind and store key of one object's path (`.../namespaces/{ns}/services/{name}`,
/// `/api/v1/nodes/{name}`).
pub(super) fn object_route(path: &str) -> Option<(&'static str, String)> {
    KINDS.iter().find_map(|&(collection, _, kind)| {
        let (prefix, resource) = collection.rsplit_once('/')?;
        let parts: Vec<&str> = path.strip_prefix(prefix)?.split('/').skip(1).collect();
        match parts.as_slice() {
            ["namespaces", ns, r, name] if *r == resource && kind != "Node" => {
                Some((kind, format!("{ns}/{name}")))
            }
            [r, name] if *r == resource && kind == "Node" => Some((kind, format!("/{name}"))),
            _ => None,
        }
    })
}

/// A list of the objects `filter` selects, in pages of `limit` when asked
/// (the real server may answer a `resourceVersion=0` list whole from its
/// cache; this one pages whenever asked, so the client's paging runs). Each
/// page is of the first page's resourceVersion, as with the real server.
pub(super) fn list_response(
    shared: &Arc<Shared>,
    api_version: &str,
    kind: &str,
    query: &HashMap<String, String>,
    filter: &Filter,
) -> Response {
    let mut store = shared.store.lock().unwrap();
    store.lists += 1;
    let (rv, mut items) = if let Some(token) = query.get("continue") {
        match store.pages.remove(token) {
            Some(page) if page.kind == kind => (page.rv, page.rest),
            _ => {
                return failure(
                    StatusCode::GONE,
                    "Expired",
                    "the provided continue parameter is too old",
                )
            }
        }
    } else {
        let items = store
            .objects
            .get(kind)
            .map(|o| o.values().filter(|o| filter.passes(o)).cloned().collect())
            .unwrap_or_default();
        (store.rv, items)
    };
    let mut metadata = json!({"resourceVersion": rv.to_string()});
    let limit = query
        .get("limit")
        .and_then(|l| l.parse::<usize>().ok())
        .filter(|&l| l > 0);
    if let Some(limit) = limit.filter(|&l| items.len() > l) {
        let rest = items.split_off(limit);
        let token = format!("{kind}-{rv}-{}", store.requests);
        metadata["continue"] = json!(token);
        metadata["remainingItemCount"] = json!(rest.len());
        let kind = kind.to_string();
        store.pages.insert(token, Page { kind, rv, rest });
    }
    axum::Json(json!({
        "apiVersion": api_version,
        "kind": format!("{kind}List"),
        "metadata": metadata,
        "items": items,
    }))
    .into_response()
}

/// What a watch with `filter` sees of `change`: an object that starts
/// matching is ADDED, one that stops is DELETED (its previous content at
/// the change's resourceVersion), as the real server's watch cache does.
fn seen(filter: &Filter, change: &Change) -> Option<(&'static str, Value)> {
    if change.kind_of_event == "BOOKMARK" {
        return Some(("BOOKMARK", change.object.clone()));
    }
    let now = change.kind_of_event != "DELETED" && filter.passes(&change.object);
    let before = change.previous.as_ref().filter(|p| filter.passes(p));
    match (now, before) {
        (true, None) => Some(("ADDED", change.object.clone())),
        (true, Some(_)) => Some(("MODIFIED", change.object.clone())),
        (false, Some(previous)) => {
            let mut gone = previous.clone();
            gone["metadata"]["resourceVersion"] = json!(change.rv.to_string());
            Some(("DELETED", gone))
        }
        (false, None) => None,
    }
}

pub(super) fn watch_response(
    shared: &Arc<Shared>,
    kind: &str,
    query: &HashMap<String, String>,
    filter: Filter,
) -> Response {
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
            let Some((event, object)) = seen(&filter, &change) else {
                continue;
            };
            if tx.send(line(event, &object)).await.is_err() {
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
                    if change.kind == kind && change.kind_of_event == "ERROR" {
                        let _ = tx.send(line("ERROR", &status(410, "Expired", "too old resource version"))).await;
                        return;
                    }
                    if change.kind != kind || (change.kind_of_event != "BOOKMARK" && change.rv <= last) {
                        continue;
                    }
                    last = last.max(change.rv);
                    let Some((event, object)) = seen(&filter, &change) else {
                        continue;
                    };
                    if tx.send(line(event, &object)).await.is_err() {
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
