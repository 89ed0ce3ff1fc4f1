//! `events.k8s.io/v1` Events as kube-rs' `Recorder` writes them: created
//! with POST, a series updated with a JSON merge patch. Checked for the
//! fields the real server requires, kept in order for the tests to read.

use axum::http::{Method, StatusCode};
use serde_json::{json, Value};

/// The path of the Events of every namespace, as this server routes them.
const PREFIX: &str = "/apis/events.k8s.io/v1/namespaces/";

/// An Events request: its namespace and, for one Event, its name.
pub struct Route<'a> {
    namespace: &'a str,
    name: Option<&'a str>,
}

/// The route of an Events path, if it is one.
pub fn route(path: &str) -> Option<Route<'_>> {
    let mut parts = path.strip_prefix(PREFIX)?.split('/');
    let namespace = parts.next().filter(|ns| !ns.is_empty())?;
    if parts.next()? != "events" {
        return None;
    }
    let name = parts.next();
    if parts.next().is_some() || name == Some("") {
        return None;
    }
    Some(Route { namespace, name })
}

/// Answers an Events request against `events` (a change bumps `rv`):
/// the status code and the body.
pub fn handle(
    events: &mut Vec<Value>,
    rv: &mut u64,
    method: &Method,
    route: &Route<'_>,
    body: &[u8],
) -> (StatusCode, Value) {
    let Ok(body) = serde_json::from_slice::<Value>(body) else {
        return error(
            StatusCode::BAD_REQUEST,
            "BadRequest",
            "the body is not JSON",
        );
    };
    let find = |events: &[Value], name: &str| {
        events.iter().position(|e| {
            e["metadata"]["namespace"] == route.namespace && e["metadata"]["name"] == name
        })
    };
    match (method, route.name) {
        (&Method::POST, None) => {
            let mut event = body;
            if let Err(message) = validate(&event, route.namespace) {
                return error(StatusCode::UNPROCESSABLE_ENTITY, "Invalid", &message);
            }
            let name = event["metadata"]["name"].as_str().unwrap_or_default();
            if find(events, name).is_some() {
                return error(StatusCode::CONFLICT, "AlreadyExists", "the event exists");
            }
            *rv += 1;
            event["metadata"]["namespace"] = json!(route.namespace);
            event["metadata"]["resourceVersion"] = json!(rv.to_string());
            event["metadata"]["uid"] = json!(format!("event-{rv}"));
            events.push(event.clone());
            (StatusCode::CREATED, event)
        }
        (&Method::PATCH, Some(name)) => {
            let Some(at) = find(events, name) else {
                return error(StatusCode::NOT_FOUND, "NotFound", "no such event");
            };
            let mut event = events[at].clone();
            merge(&mut event, &body);
            if let Err(message) = validate(&event, route.namespace) {
                return error(StatusCode::UNPROCESSABLE_ENTITY, "Invalid", &message);
            }
            *rv += 1;
            event["metadata"]["resourceVersion"] = json!(rv.to_string());
            events[at] = event.clone();
            (StatusCode::OK, event)
        }
        _ => error(
            StatusCode::METHOD_NOT_ALLOWED,
            "MethodNotAllowed",
            "events: POST a new one or PATCH one by name",
        ),
    }
}

/// The fields `events.k8s.io/v1` requires of an Event.
fn validate(event: &Value, namespace: &str) -> Result<(), String> {
    let text = |v: &Value| v.as_str().is_some_and(|s| !s.is_empty());
    let meta = &event["metadata"];
    if !text(&meta["name"]) {
        return Err("metadata.name: Required value".into());
    }
    if meta["namespace"].as_str().is_some_and(|ns| ns != namespace) {
        return Err("metadata.namespace: does not match the namespace of the request".into());
    }
    for field in [
        "eventTime",
        "reportingController",
        "reportingInstance",
        "action",
        "reason",
    ] {
        if !text(&event[field]) {
            return Err(format!("{field}: Required value"));
        }
    }
    if !matches!(event["type"].as_str(), Some("Normal" | "Warning")) {
        return Err("type: Unsupported value: must be Normal or Warning".into());
    }
    if event["note"].as_str().is_some_and(|n| n.len() > 1024) {
        return Err("note: Too long: must have at most 1024 bytes".into());
    }
    Ok(())
}

/// Applies a JSON merge patch (RFC 7386) to `target`.
fn merge(target: &mut Value, patch: &Value) {
    let Value::Object(patch) = patch else {
        *target = patch.clone();
        return;
    };
    if !target.is_object() {
        *target = json!({});
    }
    let Value::Object(fields) = target else {
        return;
    };
    for (key, value) in patch {
        if value.is_null() {
            fields.remove(key);
        } else {
            merge(fields.entry(key.clone()).or_insert(Value::Null), value);
        }
    }
}

/// A Status of failure, as the API server answers one.
fn error(code: StatusCode, reason: &str, message: &str) -> (StatusCode, Value) {
    (code, super::status(code.as_u16(), reason, message))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes_the_collection_and_one_event() {
        let r = route("/apis/events.k8s.io/v1/namespaces/ns/events").unwrap();
        assert_eq!((r.namespace, r.name), ("ns", None));
        let r = route("/apis/events.k8s.io/v1/namespaces/ns/events/web.17").unwrap();
        assert_eq!((r.namespace, r.name), ("ns", Some("web.17")));
        assert!(route("/apis/events.k8s.io/v1/namespaces/ns/eventsx").is_none());
        assert!(route("/api/v1/namespaces/ns/events").is_none());
    }

    #[test]
    fn a_merge_patch_replaces_adds_and_removes() {
        let mut v = json!({"a": 1, "b": {"c": 2, "d": 3}});
        merge(&mut v, &json!({"a": 5, "b": {"c": null, "e": 4}}));
        assert_eq!(v, json!({"a": 5, "b": {"d": 3, "e": 4}}));
    }
}
