"""``python -m serving tune``: the options mirror ``TuneConfig`` one to one (``tunestack.cli``: flags or --config FILE)."""

from __future__ import annotations

import logging
from collections.abc import Sequence

from serving.tune.config import TuneConfig, TuneError
from tunestack.cli import parse_dataclass

DESCRIPTION = ("Search instance count x ORT threads x dynamic batching x max batch size on the real tritonserver "
               "under Locust load; publish the winner as a new version and write reports/tune-TIMESTAMP/ "
               "(tune.md, tune.json, curves.png).")


def main(argv: Sequence[str]) -> int:
    """``python -m serving tune``'s options; exit 0 when a config met the objective, 1 when none did."""
    cfg = parse_dataclass(TuneConfig, list(argv), prog="python -m serving tune", description=DESCRIPTION,
                          errors=(TuneError,))
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    from serving.tune.run import run_tune

    try:
        result = run_tune(cfg)
    except TuneError as e:
        raise SystemExit(f"error: {e}") from None
    print((result.folder / "tune.md").read_text())
    if result.published:
        print(f"published the winner as {result.published}")
    elif result.data["best"] is None:
        print("no config met the objective; nothing published")
    print(f"report: {result.folder / 'tune.md'} (tune.json, curves.png beside it)")
    return 0 if result.data["best"] is not None else 1
