"""``python -m deploy k8s render|validate``: the deploy stage's entry point."""

from __future__ import annotations

import sys

from deploy.cli import main

if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
