"""The docs' benchmark tables, rendered from report JSON by each bench's own renderer, never pasted.

    python -m workflows docs-tables                      # docs/tables/NAME.md for every bench below
    python -m workflows docs-tables --reports reports    # the newest reports/bench-NAME-*/bench.json first

For each bench the newest ``REPORTS/bench-NAME-*/bench.json`` is rendered when there is one, else the example
report committed in ``docs/reports/bench-NAME.json``; ``docs/benchmarks.md`` includes the tables
(``--8<--`` snippets), so the site shows what the reports say. ``make docs`` runs this before
``mkdocs build``.
"""

from __future__ import annotations

import importlib
import json
from dataclasses import dataclass
from pathlib import Path

from tunestack.cli import parse_dataclass

RENDERERS = {
    "export": "export.bench:format_table",
    "serving": "serving.bench:format_table",
    "router": "serving.router_bench:table",
    "handler": "serving.handler_bench:table",
    "store": "serving.store_bench:render",
    "servers": "workflows.peer_bench.bench_report:render",
}
"""Bench name (``reports/bench-NAME-TIMESTAMP/``) -> the function that renders its ``bench.json`` as Markdown."""


@dataclass
class DocsTablesArgs:
    """Render the docs' benchmark tables from the newest report JSON of each bench (or the committed example)."""

    reports: str = "reports"
    """Where the benches write (reports/bench-NAME-TIMESTAMP/bench.json)."""
    examples: str = "docs/reports"
    """The committed example reports (bench-NAME.json), used when REPORTS has none for a bench."""
    out: str = "docs/tables"
    """Where the tables go (NAME.md)."""


def newest_report(reports: Path, examples: Path, name: str) -> Path | None:
    """The newest ``bench.json`` of bench ``name`` under ``reports``, else its example, else None."""
    found = sorted(reports.glob(f"bench-{name}-*/bench.json"))
    if found:
        return found[-1]
    example = examples / f"bench-{name}.json"
    return example if example.is_file() else None


def source_line(document: dict, path: Path) -> str:
    """One line under a table: which report it comes from and how busy its machine was."""
    machine = document.get("machine") or {}
    load = machine.get("load_average_at_start")
    busy = f", load average {load[0]:.1f} at the start" if load else ""
    note = f" {document['note']}" if document.get("note") else ""
    return f"*From `{path.as_posix()}`: {machine.get('cpus', '?')} CPUs{busy}.{note}*"


def render(name: str, path: Path) -> str:
    module, function = RENDERERS[name].split(":")
    document = json.loads(path.read_text())
    return f"{getattr(importlib.import_module(module), function)(document).rstrip()}\n\n{source_line(document, path)}\n"


def main(argv: list[str] | None = None) -> int:
    args = parse_dataclass(DocsTablesArgs, argv, "python -m workflows docs-tables", __doc__.split("\n\n")[0])
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    missing = []
    for name in RENDERERS:
        path = newest_report(Path(args.reports), Path(args.examples), name)
        if path is None:
            missing.append(name)
            continue
        (out / f"{name}.md").write_text(render(name, path))
        print(f"{out / name}.md <- {path}")
    if missing:
        print(f"error: no report and no example for {', '.join(missing)} (looked in {args.reports} and {args.examples})")
        return 1
    return 0
