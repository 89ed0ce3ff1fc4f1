//! The manifest source: a directory of YAML/JSON files read the way
//! `kubectl apply -f DIR` reads it, into the validated model.
//!
//! A file that does not parse keeps the objects it had before; an invalid
//! object keeps its previous valid version from the same file. Errors name
//! the file and the object, and never touch other files' objects.

mod mirror;

use std::{
    collections::BTreeMap,
    fmt,
    path::{Path, PathBuf},
};

use k8s_openapi::api::{
    core::v1::{Endpoints, Service},
    discovery::v1::EndpointSlice,
};
use serde::Deserialize;
use serde_json::Value;
use tracing::{debug, warn};

use crate::{
    desired::ObjectName,
    model::{Cluster, ServiceSpec, SliceSpec},
};

pub use self::mirror::{mirror, LEADER_ANNOTATION, SKIP_MIRROR_LABEL};

/// A problem with a manifest file or one object in it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ManifestError {
    /// The file.
    pub file: PathBuf,
    /// The object, e.g. "Service default/web", when the problem is one object.
    pub object: Option<String>,
    /// What is wrong.
    pub message: String,
}

impl fmt::Display for ManifestError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.object {
            Some(object) => write!(f, "{}: {object}: {}", self.file.display(), self.message),
            None => write!(f, "{}: {}", self.file.display(), self.message),
        }
    }
}

/// The valid objects of one file.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct FileObjects {
    /// Services by name.
    pub services: BTreeMap<ObjectName, ServiceSpec>,
    /// EndpointSlices by name.
    pub slices: BTreeMap<ObjectName, SliceSpec>,
    /// Mirrored slices by the name of the Endpoints object they came from.
    pub endpoints: BTreeMap<ObjectName, Vec<SliceSpec>>,
}

/// What the last load kept of each file.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ManifestCache {
    /// Objects by file.
    pub files: BTreeMap<PathBuf, FileObjects>,
}

/// The outcome of reading a directory.
#[derive(Debug, Default)]
pub struct LoadResult {
    /// Objects by file, to pass to the next load.
    pub cache: ManifestCache,
    /// Problems found, each naming its file and object.
    pub errors: Vec<ManifestError>,
}

impl LoadResult {
    /// The model: every object of every file. When files define the same
    /// object, the last file (by name) wins with a warning; a mirrored slice
    /// never replaces a real EndpointSlice of the same name.
    #[must_use]
    pub fn cluster(&self) -> Cluster {
        let mut services = BTreeMap::new();
        let mut slices = BTreeMap::new();
        let mut endpoints = BTreeMap::new();
        for (file, objects) in &self.cache.files {
            last_wins(file, "Service", &objects.services, &mut services);
            last_wins(file, "EndpointSlice", &objects.slices, &mut slices);
            last_wins(file, "Endpoints", &objects.endpoints, &mut endpoints);
        }
        let mut cluster = Cluster {
            services: services.into_iter().map(|(k, v)| (k, v.clone())).collect(),
            slices: slices.into_iter().map(|(k, v)| (k, v.clone())).collect(),
            node: None,
        };
        for (endpoints, mirrored) in endpoints {
            for slice in mirrored {
                if cluster.slices.contains_key(&slice.name) {
                    warn!(
                        "Endpoints {endpoints}: its mirrored slice {} has the name of an EndpointSlice; the EndpointSlice wins",
                        slice.name
                    );
                } else {
                    cluster.slices.insert(slice.name.clone(), slice.clone());
                }
            }
        }
        cluster
    }
}

/// Adds one file's objects of a kind to `into`, replacing (with a warning)
/// those an earlier file defined.
fn last_wins<'a, T>(
    file: &Path,
    kind: &str,
    objects: &'a BTreeMap<ObjectName, T>,
    into: &mut BTreeMap<ObjectName, &'a T>,
) {
    for (name, object) in objects {
        if into.insert(name.clone(), object).is_some() {
            warn!(
                "{kind} {name} is defined in several files; the last one, {}, wins",
                file.display()
            );
        }
    }
}

/// Whether `path` is a manifest by its extension.
#[must_use]
pub fn is_manifest(path: &Path) -> bool {
    matches!(
        path.extension().and_then(|e| e.to_str()),
        Some("yaml" | "yml" | "json")
    )
}

/// Reads every manifest in `dir` (not recursive), keeping the previous
/// objects of files or objects that are now invalid.
#[must_use]
pub fn load_dir(dir: &Path, previous: &ManifestCache) -> LoadResult {
    let mut result = LoadResult::default();
    let mut paths: Vec<PathBuf> = match std::fs::read_dir(dir) {
        Ok(entries) => entries
            .filter_map(Result::ok)
            .map(|e| e.path())
            .filter(|p| p.is_file() && is_manifest(p))
            .collect(),
        Err(e) => {
            result.errors.push(ManifestError {
                file: dir.to_path_buf(),
                object: None,
                message: format!("cannot read the directory: {e}; keeping the last known state"),
            });
            result.cache = previous.clone();
            return result;
        }
    };
    paths.sort();
    for path in paths {
        let before = previous.files.get(&path);
        let objects = load_file(&path, before, &mut result.errors);
        result.cache.files.insert(path, objects);
    }
    result
}

/// Reads one file; on a syntax error returns its previous objects.
pub fn load_file(
    path: &Path,
    previous: Option<&FileObjects>,
    errors: &mut Vec<ManifestError>,
) -> FileObjects {
    let file_error = |message: String| ManifestError {
        file: path.to_path_buf(),
        object: None,
        message,
    };
    let empty = FileObjects::default();
    let before = previous.unwrap_or(&empty);
    let mut objects = FileObjects::default();
    let mut found = Vec::new();
    // Each document becomes an object as soon as it is parsed, so a large
    // file never holds all its documents as generic values at once.
    let parsed = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read: {e}"))
        .and_then(|text| {
            for_each_document(path, &text, |doc| {
                add_object(path, doc, before, &mut objects, &mut found);
            })
        });
    match parsed {
        Ok(()) => {
            errors.append(&mut found);
            objects
        }
        Err(message) => {
            errors.push(file_error(format!(
                "{message}; keeping this file's previous objects"
            )));
            previous.cloned().unwrap_or_default()
        }
    }
}

/// Calls `each` with every document of a file as a JSON value (one per YAML
/// document, `List` items flattened), in order; fails on a syntax error.
fn for_each_document(path: &Path, text: &str, mut each: impl FnMut(Value)) -> Result<(), String> {
    let mut flatten = |value: Value| {
        if value.get("kind").and_then(Value::as_str) == Some("List") {
            if let Some(Value::Array(items)) = value.get("items").cloned() {
                items.into_iter().for_each(&mut each);
            }
        } else {
            each(value);
        }
    };
    if path.extension().and_then(|e| e.to_str()) == Some("json") {
        flatten(
            serde_json::from_str::<Value>(text).map_err(|e| format!("JSON syntax error: {e}"))?,
        );
        return Ok(());
    }
    for doc in serde_yaml_ng::Deserializer::from_str(text) {
        let value = Value::deserialize(doc).map_err(|e| format!("YAML syntax error: {e}"))?;
        if !value.is_null() {
            flatten(value);
        }
    }
    Ok(())
}

fn describe(kind: &str, value: &Value) -> String {
    let meta = value.get("metadata");
    let name = meta
        .and_then(|m| m.get("name"))
        .and_then(Value::as_str)
        .unwrap_or("<unnamed>");
    let ns = meta
        .and_then(|m| m.get("namespace"))
        .and_then(Value::as_str)
        .unwrap_or("default");
    format!("{kind} {ns}/{name}")
}

fn name_of(value: &Value) -> ObjectName {
    let meta = value.get("metadata");
    ObjectName {
        namespace: meta
            .and_then(|m| m.get("namespace"))
            .and_then(Value::as_str)
            .unwrap_or("default")
            .to_string(),
        name: meta
            .and_then(|m| m.get("name"))
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string(),
    }
}

fn add_object(
    path: &Path,
    value: Value,
    previous: &FileObjects,
    objects: &mut FileObjects,
    errors: &mut Vec<ManifestError>,
) {
    let api_version = value
        .get("apiVersion")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_string();
    let kind = value
        .get("kind")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_string();
    let object = describe(&kind, &value);
    let name = name_of(&value);
    let mut report = |message: String, kept: bool| {
        let suffix = if kept {
            "; keeping its previous version"
        } else {
            "; skipped"
        };
        errors.push(ManifestError {
            file: path.to_path_buf(),
            object: Some(object.clone()),
            message: format!("{message}{suffix}"),
        });
    };
    match (api_version.as_str(), kind.as_str()) {
        ("v1", "Service") => {
            let parsed = serde_json::from_value::<Service>(value)
                .map_err(|e| format!("invalid Service: {e}"))
                .and_then(|s| ServiceSpec::from_k8s(&s))
                .map(|spec| (spec.name.clone(), spec));
            keep_last_good(
                parsed,
                name,
                &previous.services,
                &mut objects.services,
                &mut report,
            );
        }
        ("discovery.k8s.io/v1", "EndpointSlice") => {
            let parsed = serde_json::from_value::<EndpointSlice>(value)
                .map_err(|e| format!("invalid EndpointSlice: {e}"))
                .and_then(|s| SliceSpec::from_k8s(&s))
                .map(|spec| (spec.name.clone(), spec));
            keep_last_good(
                parsed,
                name,
                &previous.slices,
                &mut objects.slices,
                &mut report,
            );
        }
        ("v1", "Endpoints") => {
            let parsed = serde_json::from_value::<Endpoints>(value)
                .map_err(|e| format!("invalid Endpoints: {e}"))
                .and_then(|e| mirror(&e))
                .map(|slices| (name.clone(), slices));
            keep_last_good(
                parsed,
                name,
                &previous.endpoints,
                &mut objects.endpoints,
                &mut report,
            );
        }
        _ => debug!(file = %path.display(), "ignoring {object} ({api_version})"),
    }
}

#[cfg(test)]
mod tests;

/// Puts a parsed object into `out`; on an error reports it and puts the
/// object's previous valid version instead, if there was one.
fn keep_last_good<T: Clone>(
    parsed: Result<(ObjectName, T), String>,
    name: ObjectName,
    previous: &BTreeMap<ObjectName, T>,
    out: &mut BTreeMap<ObjectName, T>,
    report: &mut impl FnMut(String, bool),
) {
    match parsed {
        Ok((key, value)) => {
            out.insert(key, value);
        }
        Err(message) => {
            let kept = previous.get(&name);
            report(message, kept.is_some());
            if let Some(value) = kept {
                out.insert(name, value.clone());
            }
        }
    }
}
