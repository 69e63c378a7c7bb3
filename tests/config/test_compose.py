"""docker-compose.yml against the Compose specification's JSON schema (vendored in
deploy/compose-spec/, no Docker engine needed), and every image it and the Dockerfile run pinned
by exact tag."""

import copy
import hashlib
import json
import re
from pathlib import Path

import pytest
import yaml
from jsonschema.validators import validator_for

ROOT = Path(__file__).resolve().parents[2]
SCHEMA = ROOT / "deploy" / "compose-spec" / "compose-spec.json"
# deploy/compose-spec/README.md names the file this must stay: the upstream schema, unedited.
SCHEMA_SHA256 = "d549057ebc2925f39f62799eab0db7b9e2c18b35b6c00595199116da3ed10e64"
# name:VERSION with an optional variant (-slim-bookworm, -alpine) and an optional @sha256 digest.
IMAGE = re.compile(
    r"^(?P<name>[a-z0-9./-]+):(?P<version>[0-9.]+)(-[a-z0-9.-]+)?(@sha256:[0-9a-f]{64})?$"
)
# A release's full version: PostgreSQL's has two parts (15.14), the others three (7.4.5).
VERSION_PARTS = {"postgres": 2}


def compose() -> dict:
    return yaml.safe_load((ROOT / "docker-compose.yml").read_text())


def violations(document: dict) -> list[str]:
    schema = json.loads(SCHEMA.read_text())
    validator_class = validator_for(schema)
    validator_class.check_schema(schema)
    return [
        f"{'/'.join(map(str, error.absolute_path)) or '(top)'}: {error.message}"
        for error in validator_class(schema).iter_errors(document)
    ]


def test_the_vendored_schema_is_the_upstream_file():
    assert hashlib.sha256(SCHEMA.read_bytes()).hexdigest() == SCHEMA_SHA256
    assert SCHEMA_SHA256 in (SCHEMA.parent / "README.md").read_text()
    assert "Apache License" in (SCHEMA.parent / "LICENSE").read_text()


def test_docker_compose_yml_validates_against_the_compose_specification():
    assert violations(compose()) == []


def _typo_in_a_service_key(document):
    document["services"]["web"]["helthcheck"] = document["services"]["web"].pop("healthcheck")


def _unknown_dependency_condition(document):
    document["services"]["web"]["depends_on"]["postgres"]["condition"] = "service_ready"


def _ports_as_a_mapping(document):
    document["services"]["proxy"]["ports"] = {"8000": 8080}


def _unknown_top_level_key(document):
    document["service"] = document["services"]


@pytest.mark.parametrize(
    "break_it",
    [
        _typo_in_a_service_key,
        _unknown_dependency_condition,
        _ports_as_a_mapping,
        _unknown_top_level_key,
    ],
)
def test_the_schema_catches_a_file_that_breaks_the_specification(break_it):
    document = copy.deepcopy(compose())
    break_it(document)
    assert violations(document) != []


def test_every_image_is_pinned_by_exact_tag():
    pulled = [
        service["image"]
        for service in compose()["services"].values()
        if "image" in service and "build" not in service
    ]
    bases = re.findall(r"^FROM\s+(\S+)", (ROOT / "Dockerfile").read_text(), flags=re.MULTILINE)
    assert len(pulled) >= 2 and len(bases) >= 2, (pulled, bases)
    for image in pulled + bases:
        match = IMAGE.match(image)
        assert match, f"{image} is not pinned by exact tag"
        parts = match["version"].split(".")
        assert len(parts) == VERSION_PARTS.get(match["name"], 3) and all(parts), (
            f"{image} is not pinned by exact tag"
        )
