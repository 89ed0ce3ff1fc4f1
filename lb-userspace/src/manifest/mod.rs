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
    sync::Arc,
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

pub use self::mirror::{
    mirror, Mirrored, LEADER_ANNOTATION, MAX_ENDPOINTS_PER_SUBSET, SKIP_MIRROR_LABEL,
};

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
    pub services: BTreeMap<ObjectName, Arc<ServiceSpec>>,
    /// EndpointSlices by name.
    pub slices: BTreeMap<ObjectName, Arc<SliceSpec>>,
    /// Mirrored slices by the name of the Endpoints object they came from.
    pub endpoints: BTreeMap<ObjectName, Vec<Arc<SliceSpec>>>,
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
    /// never replaces a real EndpointSlice of the same name. Endpoints are
    /// mirrored only for a Service that exists without a selector.
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
            if !mirror::wanted(&endpoints, &cluster.services) {
                continue;
            }
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
    let parsed = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read: {e}"))
        .and_then(|text| {
            let parts = if is_yaml(path) && text.len() >= PARALLEL_PARSE_BYTES {
                split_documents(&text, parse_threads())
            } else {
                vec![text.as_str()]
            };
            if parts.len() > 1 {
                if let Ok(parsed) = parse_parts(path, &parts, before) {
                    return Ok(parsed);
                }
                // A syntax error: parse in one piece, for its exact position.
            }
            parse_objects(path, &text, before)
        });
    match parsed {
        Ok((objects, mut found)) => {
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

/// Files at least this large are parsed on several threads.
const PARALLEL_PARSE_BYTES: usize = 1 << 20;

/// Threads that parse one large file.
fn parse_threads() -> usize {
    std::thread::available_parallelism()
        .map_or(1, std::num::NonZero::get)
        .min(4)
}

fn is_yaml(path: &Path) -> bool {
    path.extension().and_then(|e| e.to_str()) != Some("json")
}

/// The objects of the documents in `text` (part of `path`) and the problems
/// with single objects; fails on a syntax error. Each document becomes an
/// object as soon as it is parsed, so a large file never holds all its
/// documents as generic values at once.
fn parse_objects(
    path: &Path,
    text: &str,
    before: &FileObjects,
) -> Result<(FileObjects, Vec<ManifestError>), String> {
    let mut objects = FileObjects::default();
    let mut found = Vec::new();
    for_each_document(path, text, |doc| {
        add_object(path, doc, before, &mut objects, &mut found);
    })?;
    Ok((objects, found))
}

/// [`parse_objects`] of each part on a thread of its own, merged in order:
/// as one piece gives, since each document only inserts its object (a later
/// one of the same name wins) or reports a problem.
fn parse_parts(
    path: &Path,
    parts: &[&str],
    before: &FileObjects,
) -> Result<(FileObjects, Vec<ManifestError>), String> {
    let results: Vec<_> = std::thread::scope(|scope| {
        let threads: Vec<_> = parts
            .iter()
            .map(|part| scope.spawn(move || parse_objects(path, part, before)))
            .collect();
        threads
            .into_iter()
            .map(|t| {
                t.join()
                    .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
            })
            .collect()
    });
    let mut objects = FileObjects::default();
    let mut found = Vec::new();
    for result in results {
        let (part, mut errors) = result?;
        objects.services.extend(part.services);
        objects.slices.extend(part.slices);
        objects.endpoints.extend(part.endpoints);
        found.append(&mut errors);
    }
    Ok((objects, found))
}

/// Cuts a YAML stream into at most `parts` runs of whole documents of about
/// equal size. Each cut is at the start of a `---` line: a document start
/// marker at column 0 ends any scalar, so it never falls inside a document.
/// A stream with directives (`%` lines, which belong to the document after
/// them) stays whole.
#[must_use]
pub fn split_documents(text: &str, parts: usize) -> Vec<&str> {
    if parts <= 1 || text.starts_with('%') || text.contains("\n%") {
        return vec![text];
    }
    let bytes = text.as_bytes();
    let is_marker_end = |at: usize| bytes.get(at).is_none_or(|b| b" \t\r\n".contains(b));
    let mut cuts = vec![0];
    for k in 1..parts {
        let mut from = (text.len() * k / parts).max(cuts[cuts.len() - 1]);
        while !text.is_char_boundary(from) {
            from += 1;
        }
        let cut = loop {
            let Some(found) = text[from..].find("\n---") else {
                break None;
            };
            let line = from + found + 1;
            if is_marker_end(line + 3) {
                break Some(line);
            }
            from = line;
        };
        match cut {
            Some(line) if line > cuts[cuts.len() - 1] => cuts.push(line),
            Some(_) => {}
            None => break,
        }
    }
    cuts.push(text.len());
    cuts.windows(2).map(|w| &text[w[0]..w[1]]).collect()
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
                .map(|spec| (spec.name.clone(), Arc::new(spec)));
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
                .map(|spec| (spec.name.clone(), Arc::new(spec)));
            keep_last_good(
                parsed,
                name,
                &previous.slices,
                &mut objects.slices,
                &mut report,
            );
        }
        ("v1", "Endpoints") => {
            let mut skipped = Vec::new();
            let parsed = serde_json::from_value::<Endpoints>(value)
                .map_err(|e| format!("invalid Endpoints: {e}"))
                .and_then(|e| mirror(&e))
                .map(|mirrored| {
                    skipped = mirrored.skipped;
                    (
                        name.clone(),
                        mirrored.slices.into_iter().map(Arc::new).collect(),
                    )
                });
            keep_last_good(
                parsed,
                name,
                &previous.endpoints,
                &mut objects.endpoints,
                &mut report,
            );
            // What mirroring left out of a valid object, named with it.
            errors.extend(skipped.into_iter().map(|message| ManifestError {
                file: path.to_path_buf(),
                object: Some(object.clone()),
                message,
            }));
        }
        _ => debug!(file = %path.display(), "ignoring {object} ({api_version})"),
    }
}

#[cfg(test)]
mod family_tests;
#[cfg(test)]
mod mirror_tests;
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
