//! The file source: YAML, JSON or TOML data files, chosen by extension,
//! flattened into keys. Nested maps become `/a/b`, lists `/a/0`, and scalars
//! strings. Several files merge in order; a later file wins a key.

use std::path::{Path, PathBuf};

use crate::error::SourceError;
use crate::store::{is_plain, normalize_key, Store};

/// A parsed data document, independent of its format.
enum Node {
    Scalar(String),
    Map(Vec<(String, Node)>),
    List(Vec<Node>),
}

/// Reads and merges `paths` in order.
pub fn load(paths: &[PathBuf]) -> Result<Store, SourceError> {
    let mut store = Store::new();
    for path in paths {
        load_into(path, &mut store)?;
    }
    Ok(store)
}

/// Reads one data file into `store`.
pub fn load_into(path: &Path, store: &mut Store) -> Result<(), SourceError> {
    let err = |message: String| SourceError::DataFile {
        path: path.to_path_buf(),
        message,
    };
    let text = std::fs::read_to_string(path).map_err(|e| err(e.to_string()))?;
    let node = parse(path, &text).map_err(err)?;
    flatten(&node, &mut String::new(), store);
    Ok(())
}

fn parse(path: &Path, text: &str) -> Result<Node, String> {
    let ext = path
        .extension()
        .and_then(|e| e.to_str())
        .map(str::to_ascii_lowercase);
    match ext.as_deref() {
        Some("yaml" | "yml") => serde_yaml_ng::from_str::<serde_yaml_ng::Value>(text)
            .map_err(|e| format!("invalid YAML: {e}"))
            .and_then(from_yaml),
        Some("json") => serde_json::from_str::<serde_json::Value>(text)
            .map(from_json)
            .map_err(|e| format!("invalid JSON: {e}")),
        Some("toml") => toml::from_str::<toml::Table>(text)
            .map(|t| from_toml(toml::Value::Table(t)))
            .map_err(|e| format!("invalid TOML: {}", e.to_string().trim_end())),
        _ => Err("unknown data file type: use a .yaml, .yml, .json or .toml extension".into()),
    }
}

fn from_yaml(value: serde_yaml_ng::Value) -> Result<Node, String> {
    use serde_yaml_ng::Value as Y;
    Ok(match value {
        Y::Null => Node::Scalar(String::new()),
        Y::Bool(b) => Node::Scalar(b.to_string()),
        Y::Number(n) => Node::Scalar(n.to_string()),
        Y::String(s) => Node::Scalar(s),
        Y::Sequence(items) => {
            Node::List(items.into_iter().map(from_yaml).collect::<Result<_, _>>()?)
        }
        Y::Mapping(map) => Node::Map(
            map.into_iter()
                .map(|(k, v)| Ok((yaml_key(k)?, from_yaml(v)?)))
                .collect::<Result<_, String>>()?,
        ),
        Y::Tagged(tagged) => from_yaml(tagged.value)?,
    })
}

fn yaml_key(key: serde_yaml_ng::Value) -> Result<String, String> {
    use serde_yaml_ng::Value as Y;
    match key {
        Y::String(s) => Ok(s),
        Y::Number(n) => Ok(n.to_string()),
        Y::Bool(b) => Ok(b.to_string()),
        other => Err(format!("a map key must be a scalar, not {other:?}")),
    }
}

fn from_json(value: serde_json::Value) -> Node {
    use serde_json::Value as J;
    match value {
        J::Null => Node::Scalar(String::new()),
        J::Bool(b) => Node::Scalar(b.to_string()),
        J::Number(n) => Node::Scalar(n.to_string()),
        J::String(s) => Node::Scalar(s),
        J::Array(items) => Node::List(items.into_iter().map(from_json).collect()),
        J::Object(map) => Node::Map(map.into_iter().map(|(k, v)| (k, from_json(v))).collect()),
    }
}

fn from_toml(value: toml::Value) -> Node {
    use toml::Value as T;
    match value {
        T::String(s) => Node::Scalar(s),
        T::Integer(i) => Node::Scalar(i.to_string()),
        T::Float(f) => Node::Scalar(f.to_string()),
        T::Boolean(b) => Node::Scalar(b.to_string()),
        T::Datetime(d) => Node::Scalar(d.to_string()),
        T::Array(items) => Node::List(items.into_iter().map(from_toml).collect()),
        T::Table(map) => Node::Map(map.into_iter().map(|(k, v)| (k, from_toml(v))).collect()),
    }
}

/// Writes every leaf of `node` under `path` into `store`.
fn flatten(node: &Node, path: &mut String, store: &mut Store) {
    match node {
        Node::Scalar(value) => {
            // Data files are written by users: their keys are normalised
            // (a map key "a/" or "" must not make an empty segment).
            if is_plain(path) {
                store.insert(path, value.clone());
            } else {
                store.insert(&normalize_key(path), value.clone());
            }
        }
        Node::Map(entries) => {
            for (key, child) in entries {
                with_segment(path, key, |p| flatten(child, p, store));
            }
        }
        Node::List(items) => {
            for (i, child) in items.iter().enumerate() {
                with_segment(path, &i.to_string(), |p| flatten(child, p, store));
            }
        }
    }
}

fn with_segment(path: &mut String, segment: &str, f: impl FnOnce(&mut String)) {
    let len = path.len();
    path.push('/');
    path.push_str(segment);
    f(path);
    path.truncate(len);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load_text(name: &str, text: &str) -> Result<Store, SourceError> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(name);
        std::fs::write(&path, text).unwrap();
        load(&[path])
    }

    fn pairs(store: &Store) -> Vec<(String, String)> {
        store
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn nested_maps_flatten_to_paths_and_lists_to_indices() {
        let s = load_text(
            "d.yaml",
            "node:\n  asn: 65001\n  up: true\npeers:\n  - 10.0.0.1\n  - {ip: 10.0.0.2}\nempty: ~\n",
        )
        .unwrap();
        assert_eq!(
            pairs(&s),
            [
                ("/empty", ""),
                ("/node/asn", "65001"),
                ("/node/up", "true"),
                ("/peers/0", "10.0.0.1"),
                ("/peers/1/ip", "10.0.0.2"),
            ]
            .map(|(k, v)| (k.to_string(), v.to_string()))
        );
    }

    #[test]
    fn json_and_toml_flatten_the_same_way() {
        let j = load_text("d.json", r#"{"a": {"b": [1, "x"]}, "c": 1.5}"#).unwrap();
        let t = load_text("d.toml", "c = 1.5\n[a]\nb = [1, \"x\"]\n").unwrap();
        assert_eq!(pairs(&j), pairs(&t));
        assert_eq!(j.get("/a/b/1"), Some("x"));
    }

    #[test]
    fn later_files_override_earlier_ones() {
        let dir = tempfile::tempdir().unwrap();
        let a = dir.path().join("a.yaml");
        let b = dir.path().join("b.json");
        std::fs::write(&a, "x: 1\ny: 2\n").unwrap();
        std::fs::write(&b, r#"{"y": 3}"#).unwrap();
        let s = load(&[a, b]).unwrap();
        assert_eq!((s.get("/x"), s.get("/y")), (Some("1"), Some("3")));
    }

    #[test]
    fn bad_files_name_the_path_and_the_problem() {
        let e = load_text("d.yaml", "a: [1, 2\n").unwrap_err().to_string();
        assert!(e.contains("d.yaml") && e.contains("invalid YAML"), "{e}");
        let e = load_text("d.txt", "a=1").unwrap_err().to_string();
        assert!(e.contains("unknown data file type"), "{e}");
        let e = load(&[PathBuf::from("/nonexistent/data.yaml")])
            .unwrap_err()
            .to_string();
        assert!(e.contains("/nonexistent/data.yaml"), "{e}");
    }
}
