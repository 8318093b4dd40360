"""The checks an ``Experiment`` must pass, each part (arms, shares, shadow, addresses) in its own function.

``validate`` runs them all, collects every problem and raises one ``ExperimentError``; the spec's dataclasses
and the file reader live in ``experiments.spec``.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

from experiments.errors import ExperimentError
from tunestack import names
from tunestack.problems import is_number

if TYPE_CHECKING:
    from experiments.spec import Experiment

NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
STICKY_SOURCES = ("header", "parameter")
GENERATION_TIMEOUT_MAX_S = 3600
"""The longest any of an experiment's ``generation_timeouts`` may be, in seconds."""
DEFAULT_UPSTREAM = names.TRITON_URL
TRITON_GRPC_PORT = names.TRITON_GRPC_PORT
"""Triton's default gRPC port: an upstream's gRPC address, unless given, is its HTTP host at this port."""
STORE_SCHEMES = ("sqlite:///", "postgresql://", "postgres://")
"""The experiment store URLs the router accepts (see ``experiments.store``)."""
GRPC_ADDRESS_RE = re.compile(r"^[A-Za-z0-9_.\-\[\]:]+:[0-9]{1,5}$")


def store_url_problem(url: object) -> str | None:
    """What is wrong with an experiment store URL, or None."""
    if not isinstance(url, str) or not url.startswith(STORE_SCHEMES) or url in STORE_SCHEMES:
        return f"store must be a URL like sqlite:///reports/ab.sqlite or postgresql://user@host/db, got {url!r}"
    return None


def _version_problem(where: str, version: object) -> list[str]:
    if not isinstance(version, str) or not (version == "" or version.isdigit()):
        return [f"{where}: version must be a string of digits or \"\", got {version!r}"]
    return []


def _model_problem(where: str, model: object) -> list[str]:
    if not isinstance(model, str) or not model:
        return [f"{where}: model must be a non-empty Triton model name, got {model!r}"]
    return []


def _arm_problems(exp: Experiment, dupes: list[str]) -> list[str]:
    """Each arm's own fields, then the weights as a whole (a positive sum; every treatment inside its lane)."""
    problems: list[str] = []
    for i, a in enumerate(exp.arms):
        where = f"arms[{i}] ({a.name!r})"
        if not isinstance(a.name, str) or not NAME_RE.match(a.name):
            problems.append(f"{where}: name must match {NAME_RE.pattern}")
        problems += _model_problem(where, a.model) + _version_problem(where, a.version)
        if not is_number(a.weight) or a.weight < 0 or a.weight != a.weight:
            problems.append(f"{where}: weight must be a number >= 0, got {a.weight!r}")
    weights_ok = all(is_number(a.weight) and a.weight >= 0 for a in exp.arms)
    if weights_ok and exp.arms and sum(a.weight for a in exp.arms) <= 0:
        problems.append("the weights sum to 0; at least one arm needs a positive weight")
    elif weights_ok and len(exp.arms) > 2 and not dupes:
        # Each treatment grows inside its own lane of width 1/(number of treatments); see assignment.py.
        lane = 1.0 / (len(exp.arms) - 1)
        for name, share in list(exp.shares.items())[1:]:
            if share > lane + 1e-12:
                problems.append(
                    f"treatment {name!r} has share {share:.3f}, over its lane of {lane:.3f} "
                    f"(1 / number of treatments); with {len(exp.arms)} arms no treatment may exceed {lane:.3f}"
                )
    return problems


def _shadow_problems(exp: Experiment, arm_names: list[str]) -> list[str]:
    s = exp.shadow
    if s is None:
        return []
    problems = _model_problem("shadow", s.model) + _version_problem("shadow", s.version)
    if not is_number(s.fraction) or not 0 < s.fraction <= 1:
        problems.append(f"shadow: fraction must be in (0, 1], got {s.fraction!r}")
    if s.name in arm_names:
        problems.append(f"shadow: name {s.name!r} clashes with an arm name")
    return problems


def _address_problems(exp: Experiment) -> list[str]:
    """The HTTP upstream URLs and the gRPC ``host:port`` addresses of the experiment, its arms and shadow."""
    problems = []
    for label, url in [("upstream", exp.upstream)] + [(f"arm {a.name!r} upstream", a.upstream) for a in exp.arms]:
        if url is not None and not (isinstance(url, str) and re.match(r"^https?://[^/]+", url)):
            problems.append(f"{label} must be an http(s) URL like {DEFAULT_UPSTREAM}, got {url!r}")
    grpc = [("grpc_upstream", exp.grpc_upstream)] + [(f"arm {a.name!r} grpc_upstream", a.grpc_upstream) for a in exp.arms]
    if exp.shadow is not None:
        grpc.append(("shadow grpc_upstream", exp.shadow.grpc_upstream))
    for label, address in grpc:
        if address is not None and not (isinstance(address, str) and GRPC_ADDRESS_RE.match(address)):
            problems.append(f"{label} must be a gRPC address host:port like 127.0.0.1:{TRITON_GRPC_PORT}, got {address!r}")
    return problems


def validate(exp: Experiment, source: str = "experiment") -> Experiment:
    """Check an ``Experiment``; return it unchanged or raise one ``ExperimentError`` with every problem."""
    problems: list[str] = []
    if exp.store is not None and store_url_problem(exp.store):
        problems.append(str(store_url_problem(exp.store)))
    if not isinstance(exp.name, str) or not NAME_RE.match(exp.name):
        problems.append(f"name {exp.name!r} must match {NAME_RE.pattern} (it is used in URLs)")
    if len(exp.arms) < 2:
        problems.append(f"an experiment needs at least 2 arms, got {len(exp.arms)}")
    arm_names = [a.name for a in exp.arms]
    dupes = sorted({n for n in arm_names if arm_names.count(n) > 1})
    if dupes:
        problems.append(f"arm names must be unique; duplicated: {dupes}")
    problems += _arm_problems(exp, dupes)
    if exp.sticky.source not in (None, *STICKY_SOURCES):
        problems.append(f"sticky source {exp.sticky.source!r} is unknown; expected one of {STICKY_SOURCES} or random")
    elif exp.sticky.source and not (isinstance(exp.sticky.key, str) and exp.sticky.key):
        problems.append(f"sticky {exp.sticky.source} needs a non-empty name, e.g. X-User-Id")
    if exp.fallback is not None and exp.fallback not in arm_names:
        problems.append(f"fallback {exp.fallback!r} is not an arm; expected one of {arm_names}")
    problems += _shadow_problems(exp, arm_names)
    if not is_number(exp.timeout_s) or not 0 < exp.timeout_s <= 300:
        problems.append(f"timeout_s must be a number in (0, 300] seconds, got {exp.timeout_s!r}")
    for key, value in exp.generation_timeouts.to_dict().items():
        if not is_number(value) or not 0 < value <= GENERATION_TIMEOUT_MAX_S:
            problems.append(f"generation_timeouts.{key} must be a number in (0, {GENERATION_TIMEOUT_MAX_S}] seconds, "
                            f"got {value!r}")
    problems += _address_problems(exp)
    if problems:
        raise ExperimentError(problems, source)
    return exp
