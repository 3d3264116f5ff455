"""Validates a Compose file against the vendored compose-spec JSON schema (tests/deploy_manifests.rs).

Usage: python validate_compose.py SCHEMA COMPOSE_FILE
Resolves YAML anchors and merge keys as Compose does, then prints every schema violation with its
path and exits 1, or prints `valid` and exits 0. Variables (${VAR:-default}) stay as text: the schema
accepts strings where Compose interpolates.
"""
import json
import sys

import jsonschema
import yaml


def main():
    schema_path, compose_path = sys.argv[1], sys.argv[2]
    with open(schema_path, encoding="utf-8") as f:
        schema = json.load(f)
    with open(compose_path, encoding="utf-8") as f:
        document = yaml.safe_load(f)
    validator = jsonschema.Draft7Validator(schema, format_checker=jsonschema.FormatChecker())
    errors = sorted(validator.iter_errors(document), key=lambda e: list(e.absolute_path))
    for error in errors:
        path = "/".join(str(p) for p in error.absolute_path) or "(top)"
        print(f"{compose_path}: {path}: {error.message}")
    if errors:
        sys.exit(1)
    print("valid")


if __name__ == "__main__":
    main()
