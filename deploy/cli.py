"""``python -m deploy k8s render|validate``: the Kubernetes manifests' command line.

``render``'s flags mirror ``K8sConfig`` one to one, ``validate``'s ``ValidateArgs`` (``tunestack.cli``;
``--config FILE`` with the same keys); the subcommands are declared once, in ``COMMANDS``.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

from deploy.config import K8sConfig, K8sError
from deploy.manifests import render, write
from deploy.validate import validate_manifest
from export.s3 import S3Location
from tunestack.cli import Command, Commands, option, parse_dataclass
from tunestack.configfile import ConfigFileError, load_documents

PROG = "python -m deploy k8s"


@dataclass
class ValidateArgs:
    """Validate rendered manifests offline (Kubernetes schemas and KServe's InferenceService)."""

    dir: Path = option(positional=True)
    """Folder of rendered manifests (every *.yaml in it)."""
    kubernetes_version: str = "1.31"
    """Kubernetes version to validate against."""


def run_validate(argv: list[str]) -> int:
    args = parse_dataclass(ValidateArgs, argv, prog=f"{PROG} validate")
    try:
        docs = [d for path in sorted(args.dir.glob("*.yaml")) for d in load_documents(path)]
        for doc in docs:
            validate_manifest(doc, args.kubernetes_version)
    except (K8sError, ConfigFileError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"{len(docs)} manifests in {args.dir} are valid (Kubernetes {args.kubernetes_version}, KServe v1beta1)")
    return 0


def run_render(argv: list[str]) -> int:
    try:
        cfg = parse_dataclass(K8sConfig, argv, prog=f"{PROG} render", errors=(),
                              description="Write Kubernetes manifests for Triton, the router and Locust.")
        written = write(render(cfg), cfg.out)
    except K8sError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print("wrote " + ", ".join(map(str, written)))
    location = S3Location.parse(cfg.repository)
    if cfg.kind == "kserve":
        print(f"Triton: KServe copies {location.uri} to /mnt/models (storage initializer, Secret {cfg.s3_secret}).")
    else:
        print(f"Triton reads the repository itself: --model-repository={location.triton_uri(cfg.s3_endpoint)} "
              f"(credentials from Secret {cfg.s3_secret}); the image's Triton must be built with S3 support, as "
              "NGC images and the nvidia-pytriton wheel's 2.51 are.")
    print(f"Next: kubectl apply -f {cfg.out}  (see deploy/README.md for the Secrets)")
    return 0


K8S = Commands(PROG, "Kubernetes manifests for Triton, the router and Locust.", {
    "render": Command(run_render, "write the manifests from the experiment file and the flags"),
    "validate": Command(run_validate, "validate a folder of rendered manifests offline"),
})
COMMANDS = Commands("python -m deploy", "The deploy stage.", {"k8s": Command(K8S, "Kubernetes manifests")})
"""``python -m deploy k8s render|validate``, declared once."""


def main(argv: list[str]) -> int:
    """``argv``: ``["k8s", "render", ...]`` or ``["k8s", "validate", DIR]``."""
    return COMMANDS(argv)
