"""``python -m deploy k8s render|validate``: the Kubernetes manifests' command line.

``render``'s flags mirror ``K8sConfig`` one to one (``tunestack.cli``; ``--config FILE`` with the same keys).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import yaml

from deploy.config import K8sConfig, K8sError
from deploy.manifests import render, write
from deploy.validate import validate_manifest
from export.s3 import S3Location
from tunestack.cli import parse_dataclass

PROG = "python -m deploy k8s"
USAGE = (f"usage: {PROG} render --experiment FILE --repository s3://BUCKET/PREFIX [--out DIR] ...\n"
         f"       {PROG} validate DIR [--kubernetes-version 1.31]\n"
         f"Run `{PROG} render --help` for every option.")


def run_validate(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog=f"{PROG} validate", description="Validate rendered manifests offline.")
    p.add_argument("dir", type=Path, help="folder of rendered manifests")
    p.add_argument("--kubernetes-version", default="1.31", help="Kubernetes version to validate against")
    args = p.parse_args(argv)
    docs = [d for path in sorted(args.dir.glob("*.yaml")) for d in yaml.safe_load_all(path.read_text()) if d]
    for doc in docs:
        validate_manifest(doc, args.kubernetes_version)
    print(f"{len(docs)} manifests in {args.dir} are valid (Kubernetes {args.kubernetes_version}, KServe v1beta1)")
    return 0


def run_render(argv: list[str]) -> int:
    cfg = parse_dataclass(K8sConfig, argv, prog=f"{PROG} render", errors=(),
                          description="Write Kubernetes manifests for Triton, the router and Locust.")
    written = write(render(cfg), cfg.out)
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


def main(argv: list[str]) -> int:
    """``argv``: ``["k8s", "render", ...]`` or ``["k8s", "validate", DIR]`` (the leading ``k8s`` optional)."""
    rest = argv[1:] if argv and argv[0] == "k8s" else argv
    if not rest or rest[0] not in ("render", "validate"):
        asked = bool(rest) and rest[0] in ("-h", "--help")
        print(USAGE, file=sys.stdout if asked else sys.stderr)
        return 0 if asked else 2
    try:
        return run_validate(rest[1:]) if rest[0] == "validate" else run_render(rest[1:])
    except K8sError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
