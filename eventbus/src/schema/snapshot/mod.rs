//! Schema snapshots on disk: [`Registry::export`] writes one file per event
//! type and version, [`Registry::check`] compares the registry with them.
//!
//! Layout: `<dir>/<event type>/v<version>.json`, each a pretty JSON Schema with
//! sorted keys, its `$id` the event's `dataschema` URI and an `x-eventbus`
//! object naming type, version and destination.

mod report;

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use serde_json::{Map, Value};

use super::compat::diff;
use super::{EventSchema, Registry, SchemaError};

/// The metadata keyword an exported file carries.
const META: &str = "x-eventbus";

pub use report::{CheckOptions, CheckReport, ExportedFile, Finding, FindingKind};

/// A committed schema file.
#[derive(Debug, Clone)]
struct Committed {
    schema: Value,
    destination: Option<String>,
}

impl Registry {
    /// Writes every registered schema to `dir/<type>/v<version>.json`, creating
    /// directories as needed. Files of other versions are left alone (they are
    /// the history the check compares with); a file whose content would not
    /// change is not rewritten.
    ///
    /// # Errors
    ///
    /// [`SchemaError::Conflict`] if the registry holds a conflict,
    /// [`SchemaError::InvalidEventType`] for a type that cannot be a directory
    /// name, [`SchemaError::Io`] if writing fails.
    ///
    /// # Examples
    ///
    /// ```
    /// # use eventbus::{schema::Registry, Event};
    /// # #[derive(Event, serde::Serialize, serde::Deserialize, schemars::JsonSchema)]
    /// # #[event(type = "com.example.order.placed", destination = "orders", key = order_id)]
    /// # struct OrderPlaced { order_id: String }
    /// let dir = std::env::temp_dir().join(format!("schemas-{}", uuid::Uuid::now_v7()));
    /// let mut registry = Registry::new();
    /// registry.register::<OrderPlaced>()?;
    ///
    /// let files = registry.export(&dir)?;
    /// assert!(files[0].path.ends_with("com.example.order.placed/v1.json"));
    /// assert!(registry.check(&dir)?.passed());
    /// # std::fs::remove_dir_all(&dir).ok();
    /// # Ok::<(), eventbus::schema::SchemaError>(())
    /// ```
    pub fn export(&self, dir: impl AsRef<Path>) -> Result<Vec<ExportedFile>, SchemaError> {
        if let Some(conflict) = self.conflict() {
            return Err(conflict);
        }
        let dir = dir.as_ref();
        let mut files = Vec::new();
        for event in self {
            check_type_name(event.event_type())?;
            let type_dir = dir.join(event.event_type());
            std::fs::create_dir_all(&type_dir).map_err(SchemaError::io(&type_dir))?;
            let path = type_dir.join(format!("v{}.json", event.version()));
            let text = to_canonical_json(&document(event));
            let current = match std::fs::read_to_string(&path) {
                Ok(current) => Some(current),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
                Err(e) => return Err(SchemaError::io(&path)(e)),
            };
            let written = current.as_deref() != Some(text.as_str());
            if written {
                std::fs::write(&path, text).map_err(SchemaError::io(&path))?;
            }
            files.push(ExportedFile {
                path,
                event_type: event.event_type().to_owned(),
                version: event.version(),
                written,
            });
        }
        Ok(files)
    }

    /// Checks the registry against the schemas committed in `dir` with the
    /// default [`CheckOptions`].
    ///
    /// # Errors
    ///
    /// As for [`Registry::check_with`].
    ///
    /// # Examples
    ///
    /// ```
    /// use eventbus::schema::{EventSchema, Registry};
    /// use serde_json::json;
    ///
    /// let dir = std::env::temp_dir().join(format!("schemas-{}", uuid::Uuid::now_v7()));
    /// let v1 = json!({"type": "object", "properties": {"id": {"type": "string"}}, "required": ["id"]});
    /// let mut old = Registry::new();
    /// old.insert(EventSchema::new("com.example.thing.made", 1, "things", v1))?;
    /// old.export(&dir)?;
    ///
    /// // Same version, `id` changed from string to integer: breaking.
    /// let v1_changed = json!({"type": "object", "properties": {"id": {"type": "integer"}}, "required": ["id"]});
    /// let mut new = Registry::new();
    /// new.insert(EventSchema::new("com.example.thing.made", 1, "things", v1_changed))?;
    /// let report = new.check(&dir)?;
    /// assert!(!report.passed());
    /// assert!(report.to_string().contains("$.id: type changed from string to integer"));
    /// # std::fs::remove_dir_all(&dir).ok();
    /// # Ok::<(), eventbus::schema::SchemaError>(())
    /// ```
    pub fn check(&self, dir: impl AsRef<Path>) -> Result<CheckReport, SchemaError> {
        self.check_with(dir, &CheckOptions::default())
    }

    /// Checks the registry against the schemas committed in `dir`:
    ///
    /// - a registered version that is committed is compared with its file
    ///   under `options.same_version`;
    /// - a registered version that is not is compared with the highest lower
    ///   version (its committed file, else its registered schema) under
    ///   `options.new_version`;
    /// - a committed type no longer registered, or a committed version above
    ///   every registered one, fails.
    ///
    /// # Errors
    ///
    /// [`SchemaError::SnapshotMissing`] if `dir` does not exist,
    /// [`SchemaError::InvalidSnapshot`] for a file that is not an exported
    /// schema, [`SchemaError::Conflict`] if the registry holds a conflict,
    /// [`SchemaError::Io`] if reading fails. Incompatible changes are not
    /// errors: see [`CheckReport::passed`].
    pub fn check_with(
        &self,
        dir: impl AsRef<Path>,
        options: &CheckOptions,
    ) -> Result<CheckReport, SchemaError> {
        if let Some(conflict) = self.conflict() {
            return Err(conflict);
        }
        let dir = dir.as_ref();
        let committed = load(dir)?;
        let types: BTreeSet<&str> = self
            .iter()
            .map(EventSchema::event_type)
            .chain(committed.keys().map(String::as_str))
            .collect();
        let mut findings = Vec::new();
        for event_type in types {
            let registered: BTreeMap<u32, &EventSchema> = self
                .versions(event_type)
                .map(|e| (e.version(), e))
                .collect();
            let empty = BTreeMap::new();
            let files = committed.get(event_type).unwrap_or(&empty);
            let finding = |version, kind| Finding {
                event_type: event_type.to_owned(),
                version,
                kind,
            };
            let (Some(&newest_registered), newest_committed) =
                (registered.keys().last(), files.keys().last().copied())
            else {
                if let Some(newest) = files.keys().last() {
                    findings.push(finding(*newest, FindingKind::TypeRemoved));
                }
                continue;
            };
            if let Some(newest) = newest_committed.filter(|v| *v > newest_registered) {
                findings.push(finding(
                    newest,
                    FindingKind::VersionRemoved { newest_registered },
                ));
            }
            for (&version, event) in &registered {
                if let Some(file) = files.get(&version) {
                    let diff = diff(&file.schema, event.schema());
                    findings.push(finding(
                        version,
                        if diff.is_identical() {
                            FindingKind::Unchanged
                        } else {
                            FindingKind::Changed {
                                diff,
                                mode: options.same_version,
                            }
                        },
                    ));
                    if let Some(committed) = &file.destination {
                        if committed != event.destination() {
                            findings.push(finding(
                                version,
                                FindingKind::DestinationChanged {
                                    committed: committed.clone(),
                                    registered: event.destination().to_owned(),
                                },
                            ));
                        }
                    }
                    continue;
                }
                // The schema old messages were written with: what was committed
                // if it was, else what this code registers.
                let below_committed = files.range(..version).next_back();
                let below_registered = registered.range(..version).next_back();
                let previous = match (below_committed, below_registered) {
                    (Some((c, file)), Some((r, _))) if c >= r => Some((*c, &file.schema)),
                    (_, Some((r, e))) => Some((*r, e.schema())),
                    (Some((c, file)), None) => Some((*c, &file.schema)),
                    (None, None) => None,
                };
                findings.push(finding(
                    version,
                    match previous {
                        Some((previous, schema)) => FindingKind::NewVersion {
                            previous,
                            diff: diff(schema, event.schema()),
                            mode: options.new_version,
                        },
                        None => FindingKind::NotInSnapshot,
                    },
                ));
            }
        }
        Ok(CheckReport {
            dir: dir.to_owned(),
            findings,
        })
    }
}

/// The file content for one event: its schema, `$id` and metadata.
fn document(event: &EventSchema) -> Value {
    let mut doc = match event.schema() {
        Value::Object(map) => map.clone(),
        other => {
            // A boolean schema: keep it under `allOf` so metadata has a home.
            let mut map = Map::new();
            map.insert("allOf".to_owned(), Value::Array(vec![other.clone()]));
            map
        }
    };
    doc.insert("$id".to_owned(), Value::String(event.dataschema()));
    let mut meta = Map::new();
    meta.insert(
        "type".to_owned(),
        Value::String(event.event_type().to_owned()),
    );
    meta.insert("version".to_owned(), Value::from(event.version()));
    meta.insert(
        "destination".to_owned(),
        Value::String(event.destination().to_owned()),
    );
    doc.insert(META.to_owned(), Value::Object(meta));
    Value::Object(doc)
}

/// `value` as pretty JSON with object keys sorted at every level and a final
/// newline, so exported files diff cleanly whatever order produced them.
///
/// ```
/// let text = eventbus::schema::to_canonical_json(&serde_json::json!({"b": 1, "a": {"d": 2, "c": 3}}));
/// assert_eq!(text, "{\n  \"a\": {\n    \"c\": 3,\n    \"d\": 2\n  },\n  \"b\": 1\n}\n");
/// ```
pub fn to_canonical_json(value: &Value) -> String {
    fn sorted(value: &Value) -> Value {
        match value {
            Value::Object(map) => {
                let mut keys: Vec<&String> = map.keys().collect();
                keys.sort();
                // Inserting in sorted order keeps the order even when
                // serde_json's `preserve_order` feature is on.
                let mut out = Map::new();
                for key in keys {
                    if let Some(v) = map.get(key) {
                        out.insert(key.clone(), sorted(v));
                    }
                }
                Value::Object(out)
            }
            Value::Array(items) => Value::Array(items.iter().map(sorted).collect()),
            other => other.clone(),
        }
    }
    // Serializing a `Value` cannot fail: its keys are strings.
    let mut text = serde_json::to_string_pretty(&sorted(value)).unwrap_or_default();
    text.push('\n');
    text
}

/// Refuses types that would escape the directory or trouble a file system.
fn check_type_name(event_type: &str) -> Result<(), SchemaError> {
    let invalid = |reason| SchemaError::InvalidEventType {
        event_type: event_type.to_owned(),
        reason,
    };
    if event_type.is_empty() {
        return Err(invalid("it is empty"));
    }
    if event_type == "." || event_type == ".." {
        return Err(invalid("`.` and `..` are not directory names"));
    }
    if event_type.chars().any(|c| {
        matches!(c, '/' | '\\' | ':' | '*' | '?' | '"' | '<' | '>' | '|') || c.is_control()
    }) {
        return Err(invalid(
            "it contains a path separator or a character Windows forbids in file names",
        ));
    }
    Ok(())
}

/// Reads every committed schema: `dir/<type>/v<N>.json`. Other files (a
/// README) are ignored; a `.json` file not named `v<N>.json` is an error.
fn load(dir: &Path) -> Result<BTreeMap<String, BTreeMap<u32, Committed>>, SchemaError> {
    if !dir.is_dir() {
        return Err(SchemaError::SnapshotMissing {
            path: dir.to_owned(),
        });
    }
    let invalid = |path: &Path, reason: String| SchemaError::InvalidSnapshot {
        path: path.to_owned(),
        reason,
    };
    let mut out: BTreeMap<String, BTreeMap<u32, Committed>> = BTreeMap::new();
    for entry in std::fs::read_dir(dir).map_err(SchemaError::io(dir))? {
        let entry = entry.map_err(SchemaError::io(dir))?;
        let type_dir = entry.path();
        if !type_dir.is_dir() {
            continue;
        }
        let Some(event_type) = entry.file_name().to_str().map(str::to_owned) else {
            return Err(invalid(&type_dir, "the directory name is not UTF-8".into()));
        };
        if event_type.starts_with('.') {
            continue;
        }
        let versions = out.entry(event_type.clone()).or_default();
        for file in std::fs::read_dir(&type_dir).map_err(SchemaError::io(&type_dir))? {
            let path = file.map_err(SchemaError::io(&type_dir))?.path();
            if path.extension().and_then(|e| e.to_str()) != Some("json") {
                continue;
            }
            let version = path
                .file_stem()
                .and_then(|s| s.to_str())
                .and_then(|s| s.strip_prefix('v'))
                .and_then(|v| v.parse::<u32>().ok())
                .filter(|v| *v > 0)
                .ok_or_else(|| invalid(&path, "expected a name like `v1.json`".into()))?;
            let text = std::fs::read_to_string(&path).map_err(SchemaError::io(&path))?;
            let Value::Object(mut schema) = serde_json::from_str::<Value>(&text)
                .map_err(|e| invalid(&path, format!("not JSON: {e}")))?
            else {
                return Err(invalid(&path, "not a JSON object".into()));
            };
            schema.remove("$id");
            let destination = match schema.remove(META) {
                None => None,
                Some(Value::Object(meta)) => {
                    let named_type = meta.get("type").and_then(Value::as_str);
                    let named_version = meta.get("version").and_then(Value::as_u64);
                    if named_type.is_some_and(|t| t != event_type)
                        || named_version.is_some_and(|v| v != u64::from(version))
                    {
                        return Err(invalid(
                            &path,
                            format!(
                                "`{META}` names {} v{}, but the file is {event_type} v{version}",
                                named_type.unwrap_or("?"),
                                named_version.unwrap_or_default()
                            ),
                        ));
                    }
                    meta.get("destination")
                        .and_then(Value::as_str)
                        .map(str::to_owned)
                }
                Some(other) => {
                    return Err(invalid(
                        &path,
                        format!("`{META}` is {other}, not an object"),
                    ))
                }
            };
            versions.insert(
                version,
                Committed {
                    schema: Value::Object(schema),
                    destination,
                },
            );
        }
        if versions.is_empty() {
            out.remove(&event_type);
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn type_names_that_escape_the_directory_are_refused() {
        for bad in ["", ".", "..", "a/b", "a\\b", "c:d", "tab\there"] {
            assert!(
                matches!(
                    check_type_name(bad),
                    Err(SchemaError::InvalidEventType { .. })
                ),
                "{bad:?} accepted"
            );
        }
        assert!(check_type_name("com.example.order.placed").is_ok());
    }

    #[test]
    fn documents_strip_back_to_the_schema() {
        let event = EventSchema::new("t.x", 3, "d", serde_json::json!({"type": "string"}));
        let doc = document(&event);
        assert_eq!(doc["$id"], "urn:eventbus:schema:t.x:v3");
        assert_eq!(doc[META]["destination"], "d");
        assert_eq!(doc["type"], "string");
    }
}
