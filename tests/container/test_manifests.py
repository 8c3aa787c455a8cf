"""The Kubernetes example, validated against the Kubernetes API schema.

``kubernetes-validate`` (PyPI, in the ``test`` extra) bundles the OpenAPI schemas of
each Kubernetes release, so this runs offline. Strict: a misspelt field fails. It
checks structure and types, not enum values (``mountPropagation: Sideways`` would
pass); ``tests/test_ops_helpers.py`` checks the privileges and propagation modes.
No cluster applies the manifest here (see docs/CONTAINERS.md).
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
import yaml

kubernetes_validate = pytest.importorskip(
    "kubernetes_validate", reason="kubernetes-validate is not installed (pip install -e .[test])"
)

SIDECAR = Path(__file__).resolve().parents[2] / "contrib" / "kubernetes" / "sidecar.yaml"
#: the oldest release with native sidecars (the manifest mentions them), and the newest known
VERSIONS = ["1.29.0", kubernetes_validate.latest_version()]


def documents() -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all(SIDECAR.read_text()) if doc]


@pytest.mark.parametrize("version", VERSIONS)
def test_sidecar_manifest_is_valid(version: str) -> None:
    docs = documents()
    assert [doc["kind"] for doc in docs] == ["Pod"]
    for doc in docs:
        kubernetes_validate.validate(doc, version, strict=True)


def test_a_misspelt_field_fails_validation() -> None:
    pod = copy.deepcopy(documents()[0])
    mount = pod["spec"]["containers"][0]["volumeMounts"][0]
    mount["mountPropogation"] = mount.pop("mountPropagation")
    with pytest.raises(kubernetes_validate.ValidationError, match="mountPropogation"):
        kubernetes_validate.validate(pod, VERSIONS[-1], strict=True)
