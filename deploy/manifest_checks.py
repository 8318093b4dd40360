"""Offline validation of rendered manifests: built-in kinds with ``kubernetes-validate`` (strict), the
KServe InferenceService with the schema in ``deploy/k8s_templates/`` (a subset transcribed from KServe's
v1beta1 API types, whose Kubernetes fields point at kubernetes-validate's definitions)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from deploy.config import K8sError

TEMPLATES = Path(__file__).parent / "k8s_templates"
KSERVE_SCHEMA = TEMPLATES / "inferenceservice-v1beta1.schema.json"
LIVE, READY = "/v2/health/live", "/v2/health/ready"
"""KServe v2 health endpoints: the same paths on Triton and on the router."""


def kserve_validator(kubernetes_version: str):
    """A JSON-schema validator for InferenceService: the vendored schema, k8s types from kubernetes-validate."""
    import jsonschema
    from kubernetes_validate.utils import all_versions, major_minor, schema_contents
    from referencing import Registry, Resource

    version = [v for v in all_versions() if major_minor(v) <= major_minor(kubernetes_version)][-1]
    definitions = schema_contents(f"kubernetes-json-schema/v{version}-local-strict/_definitions.json", version)
    registry = Registry().with_resource("https://kubernetes.io/api/_definitions.json", Resource.from_contents(definitions))
    return jsonschema.Draft202012Validator(json.loads(KSERVE_SCHEMA.read_text()), registry=registry)


def validate_manifest(doc: dict[str, Any], kubernetes_version: str) -> None:
    """Raise K8sError naming the object, the path and the problem if ``doc`` does not validate."""
    import jsonschema
    import kubernetes_validate

    where = f"{doc.get('kind')}/{doc.get('metadata', {}).get('name')}"
    try:
        if doc.get("apiVersion", "").startswith("serving.kserve.io/"):
            kserve_validator(kubernetes_version).validate(doc)
        else:
            kubernetes_validate.validate(doc, kubernetes_version, strict=True)
    except jsonschema.ValidationError as e:
        raise K8sError(f"{where} is invalid at {'.'.join(map(str, e.absolute_path)) or '(top)'}: {e.message}") from e
    except kubernetes_validate.SchemaNotFoundError as e:
        raise K8sError(f"{where}: {e.message}") from e
