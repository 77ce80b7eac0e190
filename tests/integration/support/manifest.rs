//! Reading examples/deploy's Kubernetes manifest: its documents, objects,
//! containers and argument lists, as the tests of the recipes need them.
//! Reads the repository's file; never writes it.

use std::fs;
use std::path::Path;

use serde_yaml_ng::Value;

use super::confdir::REPO;

pub const SIDECAR: &str = "examples/deploy/bird-sidecar.yaml";

/// The documents of the Kubernetes manifest (YAML anchors resolved).
pub fn sidecar_manifest() -> Vec<Value> {
    use serde::Deserialize;
    let text = fs::read_to_string(Path::new(REPO).join(SIDECAR)).unwrap();
    serde_yaml_ng::Deserializer::from_str(&text)
        .map(|doc| Value::deserialize(doc).expect("a valid YAML document"))
        .filter(|doc| !doc.is_null())
        .collect()
}

pub fn manifest_object<'a>(docs: &'a [Value], kind: &str) -> &'a Value {
    docs.iter()
        .find(|d| d["kind"].as_str() == Some(kind))
        .unwrap_or_else(|| panic!("{SIDECAR} has no {kind}"))
}

/// The pod template's spec of the DaemonSet.
pub fn pod_spec(docs: &[Value]) -> &Value {
    &manifest_object(docs, "DaemonSet")["spec"]["template"]["spec"]
}

/// The entry `name` of the pod's `list` (containers, initContainers).
pub fn container<'a>(pod: &'a Value, list: &str, name: &str) -> &'a Value {
    pod[list]
        .as_sequence()
        .and_then(|cs| cs.iter().find(|c| c["name"].as_str() == Some(name)))
        .unwrap_or_else(|| panic!("the pod has no {list} entry {name}"))
}

/// A list of strings (numbers written as they read), or none.
pub fn strings(value: &Value) -> Vec<String> {
    value
        .as_sequence()
        .map(|items| {
            items
                .iter()
                .map(|v| match v {
                    Value::Number(n) => n.to_string(),
                    other => other.as_str().expect("a string").to_owned(),
                })
                .collect()
        })
        .unwrap_or_default()
}

/// The argument after `flag` in `args`.
pub fn after<'a>(args: &'a [String], flag: &str) -> &'a str {
    let at = args
        .iter()
        .position(|a| a == flag)
        .unwrap_or_else(|| panic!("{flag} missing from {args:?}"));
    &args[at + 1]
}
