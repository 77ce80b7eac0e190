#!/usr/bin/python3
"""Validates Kubernetes manifests against the API schema each document names.

    /usr/bin/python3 k8s_schema.py MANIFEST.yaml...

Each YAML document's apiVersion and kind name a model class of the official
Python client (Debian's python3-kubernetes: `apps/v1` + `DaemonSet` is
`V1DaemonSet`). The document is built into that class field by field, the
way the API server decodes it strictly (kubectl's --validate=strict):

- a field the class does not have is an error, with its path;
- a value of the wrong type (a string for an int, a map for a list) is an
  error;
- a required field left out is an error (the client's own validation).

Prints one line per document and every error; exits 1 when any document
fails, 2 on bad usage. Used by tests/integration/deploy.rs; it never talks
to a cluster.
"""

import sys

import yaml
from kubernetes import __version__ as client_version
from kubernetes.client import models


class SchemaError(Exception):
    pass


def describe(value):
    return type(value).__name__ if value is not None else "null"


def model_class(api_version, kind):
    """`apps/v1`, `DaemonSet` -> V1DaemonSet; `v1`, `ConfigMap` -> V1ConfigMap."""
    version = api_version.rsplit("/", 1)[-1]
    name = version[:1].upper() + version[1:] + kind
    cls = getattr(models, name, None)
    if cls is None:
        raise SchemaError(
            f"apiVersion {api_version!r} kind {kind!r}: no model {name} in the "
            f"Kubernetes client {client_version}"
        )
    return name


def build(value, type_name, path):
    """VALUE built as TYPE_NAME (an openapi_types entry), or SchemaError."""
    if type_name.startswith("list[") and type_name.endswith("]"):
        if not isinstance(value, list):
            raise SchemaError(f"{path}: a list is expected, not {describe(value)}")
        inner = type_name[len("list[") : -1]
        return [build(item, inner, f"{path}[{i}]") for i, item in enumerate(value)]
    if type_name.startswith("dict(") and type_name.endswith(")"):
        if not isinstance(value, dict):
            raise SchemaError(f"{path}: a map is expected, not {describe(value)}")
        inner = type_name[len("dict(") : -1].split(",", 1)[1].strip()
        built = {}
        for key, item in value.items():
            if not isinstance(key, str):
                raise SchemaError(f"{path}: key {key!r} is not a string")
            built[key] = build(item, inner, f"{path}.{key}")
        return built
    if type_name == "object":
        # IntOrString, Quantity, RawExtension: any JSON value.
        return value
    if type_name in ("str", "datetime", "date"):
        if not isinstance(value, str):
            raise SchemaError(f"{path}: a string is expected, not {describe(value)}")
        return value
    if type_name == "int":
        if isinstance(value, bool) or not isinstance(value, int):
            raise SchemaError(f"{path}: an integer is expected, not {describe(value)}")
        return value
    if type_name == "float":
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise SchemaError(f"{path}: a number is expected, not {describe(value)}")
        return value
    if type_name == "bool":
        if not isinstance(value, bool):
            raise SchemaError(f"{path}: true or false is expected, not {describe(value)}")
        return value

    cls = getattr(models, type_name, None)
    if cls is None:
        raise SchemaError(f"{path}: the client has no model {type_name}")
    if not isinstance(value, dict):
        raise SchemaError(f"{path}: a {type_name} map is expected, not {describe(value)}")
    attribute_of = {json_name: attr for attr, json_name in cls.attribute_map.items()}
    fields = {}
    for key, item in value.items():
        if key not in attribute_of:
            known = ", ".join(sorted(attribute_of))
            raise SchemaError(f"{path}: unknown field {key!r} in {type_name} (it has: {known})")
        attr = attribute_of[key]
        fields[attr] = build(item, cls.openapi_types[attr], f"{path}.{key}")
    try:
        return cls(**fields)
    except ValueError as err:
        raise SchemaError(f"{path}: {type_name}: {err}") from None


def validate(path):
    """Number of documents in PATH that fail."""
    failed = 0
    with open(path, encoding="utf-8") as stream:
        documents = [d for d in yaml.safe_load_all(stream) if d is not None]
    if not documents:
        print(f"{path}: no document")
        return 1
    for index, document in enumerate(documents):
        where = f"{path}: document {index + 1}"
        try:
            if not isinstance(document, dict):
                raise SchemaError(f"a map is expected, not {describe(document)}")
            api_version, kind = document.get("apiVersion"), document.get("kind")
            if not isinstance(api_version, str) or not isinstance(kind, str):
                raise SchemaError("apiVersion and kind must both be set")
            name = model_class(api_version, kind)
            built = build(document, name, kind)
            print(f"{where}: {kind} {built.metadata.name}: valid {name}")
        except SchemaError as err:
            print(f"{where}: INVALID: {err}")
            failed += 1
    return failed


def main(argv):
    if len(argv) < 2:
        print(__doc__.strip().splitlines()[2].strip(), file=sys.stderr)
        return 2
    print(f"Kubernetes client models {client_version}")
    failed = sum(validate(path) for path in argv[1:])
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
