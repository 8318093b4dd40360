"""The experiment spec: what to split and how, read from a YAML or TOML file and validated up front.

An experiment file is YAML (``.yaml``/``.yml``) or TOML (``.toml``) with the keys of ``Experiment``::

    name: sentiment-ab            # the model name callers use: POST /v2/models/sentiment-ab/infer
    upstream: http://127.0.0.1:8000
    grpc_upstream: 127.0.0.1:8001 # optional: Triton's gRPC address (default: upstream's host, port 8001)
    timeout_s: 2.0
    sticky: {header: X-User-Id}   # or {parameter: user_id}, or "random"
    arms:                         # the first arm is the control; the order fixes the buckets
      - {name: control,   model: sentiment, version: "1", weight: 50}
      - {name: treatment, model: sentiment, version: "2", weight: 50}
    fallback: control             # optional: where a request goes when its arm's upstream fails
    shadow: {name: shadow, model: sentiment, version: "2", fraction: 1.0}   # optional
    page_token: true              # optional: the live page's data needs the admin bearer token

``load_experiment`` checks every field (``experiments.spec_checks``), collects every problem and raises one
``ExperimentError``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import yaml

from experiments.errors import ExperimentError
from experiments.spec_checks import DEFAULT_UPSTREAM, TRITON_GRPC_PORT, validate
from tunestack import names
from tunestack.configfile import SUFFIXES, ConfigFileError, parse_text

EXPERIMENT_SUFFIXES = (".yaml", ".yml", ".toml")
"""The file types an experiment file may have (``tunestack.configfile`` reads them)."""


@dataclass(frozen=True)
class Arm:
    """One variant of the experiment: a Triton model version and its share of the traffic."""

    name: str
    """Variant name, reported in ``X-Variant``, ``parameters.variant``, metrics and the report."""
    model: str
    """Triton model name."""
    version: str = ""
    """Triton model version ("" = the version Triton's policy serves by default)."""
    weight: float = 1.0
    """Relative share of the traffic (any non-negative scale: 70/30 or 0.7/0.3)."""
    upstream: str | None = None
    """Triton HTTP base URL for this arm; None = the experiment's ``upstream``."""
    grpc_upstream: str | None = None
    """Triton gRPC ``host:port`` for this arm; None = see ``Experiment.grpc_upstream_of``."""


@dataclass(frozen=True)
class Shadow:
    """A model that gets a copy of (a sample of) the traffic; its answers are only recorded."""

    model: str
    """Triton model name."""
    version: str = ""
    """Triton model version ("" = default)."""
    fraction: float = 1.0
    """Fraction of primary requests copied to the shadow, in (0, 1]."""
    name: str = "shadow"
    """Name used in metrics and the report."""
    upstream: str | None = None
    """Triton HTTP base URL; None = the experiment's ``upstream``."""
    grpc_upstream: str | None = None
    """Triton gRPC ``host:port``; None = see ``Experiment.grpc_upstream_of``."""


@dataclass(frozen=True)
class Sticky:
    """Where the assignment key comes from; ``source=None`` assigns every request at random."""

    source: str | None = None
    """"header", "parameter" (a key in the v2 request's ``parameters``), or None for random."""
    key: str = ""
    """The header name (e.g. ``X-User-Id``) or parameter name (e.g. ``user_id``)."""

    def key_of(self, header: Callable[[str], str | None], parameters: Mapping[str, Any]) -> str | None:
        """A request's assignment key: ``header(name)`` reads a header (HTTP) or metadata entry (gRPC) by its
        lower-case name, ``parameters`` are the request's; None (assign at random) when it has none."""
        if self.source == "header":
            return header(self.key.lower()) or None
        if self.source == "parameter":
            value = parameters.get(self.key)
            return None if value is None or value == "" else str(value)
        return None


@dataclass(frozen=True)
class GenerationTimeouts:
    """How long the router waits on a generative arm (the OpenAI door, the gRPC stream relay). A stream is not
    bounded as a whole: its length is the caller's ``max_tokens``; what is bounded is each wait on the arm."""

    first_token_s: float = 30.0
    """From sending the request to the arm's first token (its queue and the prompt's prefill). Past it the arm has
    failed (504 against the arm): the fallback arm serves the request, as nothing was sent to the caller yet."""
    token_s: float = 10.0
    """The longest gap between two tokens once a stream has started; past it the stream ends with an error
    event (504, counted against the arm; never a fallback, tokens were sent)."""
    completion_s: float = 300.0
    """A completion that is not streamed (``stream: false``): the whole generation, from the request to the last
    token; past it a 504 against the arm."""

    KEYS = ("first_token_s", "token_s", "completion_s")

    def to_dict(self) -> dict[str, float]:
        return {k: getattr(self, k) for k in self.KEYS}


@dataclass(frozen=True)
class Experiment:
    """An A/B(/n) experiment: arms with weights, sticky key, optional shadow and fallback."""

    name: str
    """Experiment name: the model name callers send requests to, and part of the assignment hash."""
    arms: tuple[Arm, ...]
    """The variants; the first is the control. Their order fixes the hash buckets: do not reorder."""
    sticky: Sticky = field(default_factory=Sticky)
    """Where the assignment key comes from."""
    shadow: Shadow | None = None
    """Optional shadow model."""
    fallback: str | None = None
    """Optional arm name that serves a request when its own arm's upstream is down or times out."""
    timeout_s: float = names.ROUTER_TIMEOUT_S
    """Per-request timeout to Triton, in seconds (connect + answer), of a classifier's inference request."""
    generation_timeouts: GenerationTimeouts = field(default_factory=GenerationTimeouts)
    """The waits on a generative arm's stream (first token, between tokens, a whole non-streamed completion)."""
    upstream: str = DEFAULT_UPSTREAM
    """Default Triton HTTP base URL for the arms and the shadow."""
    grpc_upstream: str | None = None
    """Default Triton gRPC ``host:port`` (what the router's gRPC endpoint forwards to); None = the host of
    ``upstream`` at Triton's default gRPC port."""
    page_token: bool = False
    """The live page's data (``GET /experiments/NAME/data``) needs the admin bearer token, as the admin API does;
    the page asks for it (``serving.page``). False: the page is open to whoever reaches the router."""
    store: str | None = field(default=None, compare=False)
    """The experiment store's URL (``sqlite:///path``, ``postgresql://...``); the router's ``--store`` wins.
    Not part of the spec: never stored, shown or compared."""

    @property
    def arm_names(self) -> tuple[str, ...]:
        return tuple(a.name for a in self.arms)

    @property
    def shares(self) -> dict[str, float]:
        """Weights normalised to sum to 1."""
        total = sum(a.weight for a in self.arms)
        return {a.name: a.weight / total for a in self.arms}

    def arm(self, name: str) -> Arm:
        for a in self.arms:
            if a.name == name:
                return a
        raise KeyError(name)

    def upstream_of(self, arm: Arm | Shadow) -> str:
        return (arm.upstream or self.upstream).rstrip("/")

    def grpc_upstream_of(self, arm: Arm | Shadow) -> str:
        """The Triton gRPC ``host:port`` of ``arm``: its own ``grpc_upstream``; else, for an arm on the
        experiment's Triton, the experiment's; else the host of the arm's HTTP upstream at port 8001."""
        if arm.grpc_upstream:
            return arm.grpc_upstream
        if arm.upstream is None and self.grpc_upstream:
            return self.grpc_upstream
        host = urlsplit(self.upstream_of(arm)).hostname or "127.0.0.1"
        return f"[{host}]:{TRITON_GRPC_PORT}" if ":" in host else f"{host}:{TRITON_GRPC_PORT}"

    def with_weights(self, weights: dict[str, Any]) -> Experiment:
        """A copy with new weights for every arm; raises ``ExperimentError`` listing every problem."""
        problems = []
        if not isinstance(weights, dict):
            raise ExperimentError([f"weights must be a mapping arm -> weight, got {weights!r}"], "weights")
        unknown = sorted(set(weights) - set(self.arm_names))
        missing = [n for n in self.arm_names if n not in weights]
        if unknown:
            problems.append(f"unknown arm(s) {unknown}; expected: {list(self.arm_names)}")
        if missing:
            problems.append(f"missing weight for arm(s) {missing}; give a weight for every arm")
        if problems:
            raise ExperimentError(problems, "weights")
        arms = tuple(replace(a, weight=weights[a.name]) for a in self.arms)
        return validate(replace(self, arms=arms), "weights")

    def to_dict(self) -> dict[str, Any]:
        sticky = {self.sticky.source: self.sticky.key} if self.sticky.source else "random"
        out: dict[str, Any] = {
            "name": self.name,
            "upstream": self.upstream,
            "grpc_upstream": self.grpc_upstream,
            "timeout_s": self.timeout_s,
            "sticky": sticky,
            "arms": [
                {k: v for k, v in vars(a).items() if v is not None} | {"share": self.shares[a.name]}
                for a in self.arms
            ],
            "fallback": self.fallback,
            "shadow": {k: v for k, v in vars(self.shadow).items() if v is not None} if self.shadow else None,
        }
        if self.page_token:  # only when set: specs stored before the key existed stay equal
            out["page_token"] = True
        if self.generation_timeouts != GenerationTimeouts():  # the same: only when not the defaults
            out["generation_timeouts"] = self.generation_timeouts.to_dict()
        return out


def _version(v: Any) -> Any:
    return str(v) if isinstance(v, int) and not isinstance(v, bool) else ("" if v is None else v)


def _generation_timeouts(raw: Any, problems: list[str]) -> GenerationTimeouts:
    """The ``generation_timeouts`` section (None: the defaults); a wrong shape or key goes to ``problems``."""
    if raw is None:
        return GenerationTimeouts()
    if not isinstance(raw, dict):
        problems.append(f"generation_timeouts must be a mapping of {list(GenerationTimeouts.KEYS)}, got {raw!r}")
        return GenerationTimeouts()
    unknown = sorted(set(raw) - set(GenerationTimeouts.KEYS))
    if unknown:
        problems.append(f"generation_timeouts: unknown key(s) {unknown}; expected some of {list(GenerationTimeouts.KEYS)}")
    return GenerationTimeouts(**{k: v for k, v in raw.items() if k in GenerationTimeouts.KEYS})


def experiment_from_dict(data: Any, source: str = "experiment") -> Experiment:
    """Build and validate an ``Experiment`` from parsed YAML/TOML; every problem is reported at once."""
    if not isinstance(data, dict):
        raise ExperimentError([f"expected a mapping at the top level, got {type(data).__name__}"], source)
    problems: list[str] = []
    # sections read by others: "rollout" (experiments.rollout.config), "retain_inputs" and "look_retention"
    # (experiments.retention, the router's store sweep), "loop" (workflows.loop.config, the retrain loop);
    # "page_token" (the live page)
    known = {"name", "arms", "sticky", "shadow", "fallback", "timeout_s", "upstream", "grpc_upstream", "store", "rollout",
             "page_token", "retain_inputs", "look_retention", "loop", "generation_timeouts"}
    unknown = sorted(set(data) - known)
    if unknown:
        problems.append(f"unknown key(s) {unknown}; expected some of {sorted(known)}")
    if "name" not in data:
        problems.append("missing required key 'name'")
    arms: list[Arm] = []
    raw_arms = data.get("arms")
    if not isinstance(raw_arms, list):
        problems.append(f"'arms' must be a list of {{name, model, version, weight}}, got {raw_arms!r}")
        raw_arms = []
    arm_keys = {"name", "model", "version", "weight", "upstream", "grpc_upstream"}
    for i, a in enumerate(raw_arms):
        if not isinstance(a, dict):
            problems.append(f"arms[{i}] must be a mapping, got {a!r}")
            continue
        if set(a) - arm_keys:
            problems.append(f"arms[{i}]: unknown key(s) {sorted(set(a) - arm_keys)}; expected some of {sorted(arm_keys)}")
        if "name" not in a or "model" not in a:
            problems.append(f"arms[{i}]: 'name' and 'model' are required")
        arms.append(Arm(name=a.get("name", f"arm{i}"), model=a.get("model", ""), version=_version(a.get("version", "")),
                        weight=a.get("weight", 1.0), upstream=a.get("upstream"), grpc_upstream=a.get("grpc_upstream")))
    sticky = Sticky()
    raw_sticky = data.get("sticky", "random")
    if isinstance(raw_sticky, dict) and len(raw_sticky) == 1:
        (src, key), = raw_sticky.items()
        sticky = Sticky(source=src, key=key)
    elif raw_sticky not in (None, "random", "none"):
        problems.append(f"sticky must be {{header: NAME}}, {{parameter: NAME}} or \"random\", got {raw_sticky!r}")
    shadow = None
    raw_shadow = data.get("shadow")
    shadow_keys = {"name", "model", "version", "fraction", "upstream", "grpc_upstream"}
    if isinstance(raw_shadow, dict):
        if set(raw_shadow) - shadow_keys:
            problems.append(f"shadow: unknown key(s) {sorted(set(raw_shadow) - shadow_keys)}; expected some of {sorted(shadow_keys)}")
        shadow = Shadow(model=raw_shadow.get("model", ""), version=_version(raw_shadow.get("version", "")),
                        fraction=raw_shadow.get("fraction", 1.0), name=raw_shadow.get("name", "shadow"),
                        upstream=raw_shadow.get("upstream"), grpc_upstream=raw_shadow.get("grpc_upstream"))
    elif raw_shadow is not None:
        problems.append(f"shadow must be a mapping {{model, version, fraction}}, got {raw_shadow!r}")
    page_token = data.get("page_token", False)
    if not isinstance(page_token, bool):
        problems.append(f"page_token must be true or false, got {page_token!r}")
        page_token = False
    exp = Experiment(name=data.get("name", ""), arms=tuple(arms), sticky=sticky, shadow=shadow, page_token=page_token,
                     generation_timeouts=_generation_timeouts(data.get("generation_timeouts"), problems),
                     fallback=data.get("fallback"), timeout_s=data.get("timeout_s", names.ROUTER_TIMEOUT_S),
                     upstream=data.get("upstream", DEFAULT_UPSTREAM), grpc_upstream=data.get("grpc_upstream"),
                     store=data.get("store"))
    try:
        validate(exp, source)
    except ExperimentError as e:
        problems.extend(e.problems)
    if problems:
        raise ExperimentError(problems, source)
    return exp


def load_experiment(path: str | Path, upstream: str | None = None, grpc_upstream: str | None = None) -> Experiment:
    """Read a YAML or TOML experiment file; ``upstream`` and ``grpc_upstream`` override the file's defaults."""
    path = Path(path)
    if not path.is_file():
        raise ExperimentError([f"file not found: {path}"], str(path))
    if path.suffix not in EXPERIMENT_SUFFIXES:
        raise ExperimentError([f"unknown file type {path.suffix!r}; expected .yaml, .yml or .toml"], str(path))
    try:
        data = parse_text(path.read_text(), SUFFIXES[path.suffix], str(path))
    except ConfigFileError as e:
        raise ExperimentError([f"cannot parse: {e}"], str(path)) from e
    if upstream and isinstance(data, dict):
        data = {**data, "upstream": upstream}
    if grpc_upstream and isinstance(data, dict):
        data = {**data, "grpc_upstream": grpc_upstream}
    return experiment_from_dict(data, str(path))


def write_experiment(path: str | Path, name: str, arms: list[tuple[str, str, float]], model: str,
                     timeout_s: float = names.ROUTER_TIMEOUT_S, fallback: str | None = None, sticky_header: str = "X-User-Id",
                     upstream: str | None = None, shadow_version: str | None = None,
                     generation_timeouts: GenerationTimeouts | None = None) -> Path:
    """Write a YAML experiment file, sticky by ``sticky_header``; ``arms`` are (arm name, model version,
    weight) of ``model``, the first one the control; ``upstream`` is Triton's HTTP URL (None: the default);
    ``shadow_version`` of ``model``, if given, gets a copy of every request; ``generation_timeouts``: a generative
    experiment's waits (None: the defaults). The file is read back, so an invalid spec raises here."""
    spec: dict[str, Any] = {"name": name, "timeout_s": timeout_s, "sticky": {"header": sticky_header},
                            "arms": [{"name": n, "model": model, "version": v, "weight": w} for n, v, w in arms]}
    if upstream:
        spec["upstream"] = upstream
    if fallback:
        spec["fallback"] = fallback
    if generation_timeouts is not None:
        spec["generation_timeouts"] = generation_timeouts.to_dict()
    if shadow_version is not None:
        spec["shadow"] = {"name": "shadow", "model": model, "version": shadow_version, "fraction": 1.0}
    path = Path(path)
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    load_experiment(path)
    return path
