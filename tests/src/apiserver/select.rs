//! Label and field selectors as the API server reads them on list and watch:
//! comma-separated requirements, all of which must hold (`key`, `!key`,
//! `key=value`, `key==value`, `key!=value`). Set-based forms (`in`, `notin`)
//! are refused.

use serde_json::Value;

/// One requirement of a selector.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Requirement {
    /// `key`: the key is present.
    Exists(String),
    /// `!key`: the key is absent.
    Absent(String),
    /// `key=value` or `key==value`.
    Equals(String, String),
    /// `key!=value`: absent, or another value (as the API server has it).
    Differs(String, String),
}

/// A parsed selector; empty selects everything.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Selector(Vec<Requirement>);

impl Selector {
    /// Parses a selector's text; `Err` names what it cannot read.
    pub fn parse(text: &str) -> Result<Self, String> {
        let mut requirements = Vec::new();
        for part in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let requirement = if let Some(key) = part.strip_prefix('!') {
                Requirement::Absent(key_of(key, part)?)
            } else if let Some((key, value)) = part.split_once("!=") {
                Requirement::Differs(key_of(key, part)?, value.trim().to_string())
            } else if let Some((key, value)) =
                part.split_once("==").or_else(|| part.split_once('='))
            {
                Requirement::Equals(key_of(key, part)?, value.trim().to_string())
            } else {
                Requirement::Exists(key_of(part, part)?)
            };
            requirements.push(requirement);
        }
        Ok(Self(requirements))
    }

    /// Whether every requirement holds, `lookup` giving a key's value.
    pub fn matches<'a>(&self, lookup: impl Fn(&str) -> Option<&'a str>) -> bool {
        self.0.iter().all(|r| match r {
            Requirement::Exists(key) => lookup(key).is_some(),
            Requirement::Absent(key) => lookup(key).is_none(),
            Requirement::Equals(key, value) => lookup(key) == Some(value.as_str()),
            Requirement::Differs(key, value) => lookup(key) != Some(value.as_str()),
        })
    }
}

/// A key, refusing set-based forms and anything with spaces inside.
fn key_of(key: &str, part: &str) -> Result<String, String> {
    let key = key.trim();
    if key.is_empty() || key.contains(char::is_whitespace) || key.contains(['(', ')']) {
        return Err(format!("unable to parse requirement: {part:?}"));
    }
    Ok(key.to_string())
}

/// The label and field selectors of one list or watch.
#[derive(Clone, Debug, Default)]
pub struct Filter {
    labels: Selector,
    fields: Selector,
}

impl Filter {
    /// The filter of a request's `labelSelector` and `fieldSelector`.
    pub fn from_query(labels: Option<&String>, fields: Option<&String>) -> Result<Self, String> {
        Ok(Self {
            labels: Selector::parse(labels.map_or("", String::as_str))?,
            fields: Selector::parse(fields.map_or("", String::as_str))?,
        })
    }

    /// Whether `object` is selected.
    pub fn passes(&self, object: &Value) -> bool {
        let labels = &object["metadata"]["labels"];
        self.labels
            .matches(|key| labels.get(key).and_then(Value::as_str))
            && self.fields.matches(|path| field(object, path))
    }
}

/// A dotted field path's string value (`metadata.name`, `spec.nodeName`).
fn field<'a>(object: &'a Value, path: &str) -> Option<&'a str> {
    path.split('.')
        .try_fold(object, |v, step| v.get(step))
        .and_then(Value::as_str)
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn selects(selector: &str, object: &Value) -> bool {
        Filter::from_query(Some(&selector.to_string()), None)
            .unwrap()
            .passes(object)
    }

    #[test]
    fn every_form_and_their_conjunction() {
        let object = json!({"metadata": {"labels": {"a": "1", "b": "2"}}});
        for (selector, expected) in [
            ("", true),
            ("a", true),
            ("c", false),
            ("!c", true),
            ("!a", false),
            ("a=1", true),
            ("a==1", true),
            ("a=2", false),
            ("a!=2", true),
            ("c!=2", true),
            ("a!=1", false),
            ("a=1,b=2", true),
            ("a=1, !b", false),
            (
                "!service.kubernetes.io/service-proxy-name,!service.kubernetes.io/headless",
                true,
            ),
        ] {
            assert_eq!(selects(selector, &object), expected, "{selector}");
        }
        assert!(!selects(
            "!service.kubernetes.io/headless",
            &json!({"metadata": {"labels": {"service.kubernetes.io/headless": ""}}})
        ));
        assert!(Selector::parse("a in (x,y)").is_err());
    }

    #[test]
    fn field_selectors_read_dotted_paths() {
        let object = json!({"metadata": {"name": "node1"}});
        let filter = Filter::from_query(None, Some(&"metadata.name=node1".to_string())).unwrap();
        assert!(filter.passes(&object));
        let filter = Filter::from_query(None, Some(&"metadata.name=node2".to_string())).unwrap();
        assert!(!filter.passes(&object));
    }
}
