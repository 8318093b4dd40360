"""The load test's settings: one dataclass, read from ``[tool.locust]`` / a conf file, overridden by the CLI.

Every field whose name has a Locust option (``users`` -> ``--users``, ``arrival_rate`` ->
``--arrival-rate``) is passed to Locust by ``loadtests.run``; the locustfile registers the custom ones
(``add_locust_arguments``), so the same keys work in ``[tool.locust]``, ``locust.conf`` and on a plain
``locust -f loadtests/locustfile.py`` command line. The fields after ``workers`` are the runner's own.
"""

from __future__ import annotations

import json
import re
from dataclasses import MISSING, asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from export.contract import CONTRACT
from tunestack import names
from tunestack.configfile import ConfigFileError, load_config_file
from tunestack.layout import RunLayout
from tunestack.problems import raise_problems

TARGETS = ("router", "triton", "openai")
"""router: the A/B router; triton: Triton's model route; openai: any OpenAI-compatible server (workload chat)."""
WORKLOADS = ("reviews", "chat")
"""reviews: the classifier's KServe v2 infer calls; chat: streamed chat completions of the causal LM."""
PROTOCOLS = ("http", "grpc")
SHAPES = ("none", "steps", "spike")
STICKY_CHECKS = ("count", "fail")
USER_TEXTS = ("shared", "window")
DEFAULT_HOSTS = {"router": names.ROUTER_URL, "triton": names.TRITON_URL, "openai": f"http://{names.HOST}:8090"}
DEFAULT_GRPC_HOSTS = {"router": f"{names.HOST}:{names.ROUTER_GRPC_PORT}", "triton": names.TRITON_GRPC_ADDRESS,
                      "openai": ""}
REVIEWS_TEXTS = str(RunLayout.of("runs", "demo").heldout)
"""The reviews workload's default texts: the classifier's held-out reviews."""
CHAT_TEXTS = str(RunLayout.of("runs", "llm").heldout)
"""The chat workload's default prompts: the causal task's held-out prompts."""


class LoadTestError(Exception):
    """A load test could not be configured, started or reported; the message says what and why."""


def _f(default: Any, help: str, *, locust: bool = True, custom: bool = True) -> Any:
    """A field with its help text; ``locust``: Locust knows it; ``custom``: the locustfile registers it."""
    kwargs = {"default_factory": default} if callable(default) else {"default": default}
    return field(metadata={"help": help, "locust": locust, "custom": custom and locust}, **kwargs)


@dataclass
class LoadTestConfig:
    """One load test: who sends what, how fast, for how long, and where the report goes."""

    # -- Locust's own options --------------------------------------------------------------------
    host: str = _f("", "base URL of the target; default http://127.0.0.1:8080 (router) or :8000 (triton)",
                   custom=False)
    users: int = _f(10, "closed loop: concurrent users; open loop: arrival generators the rate is split over",
                    custom=False)
    spawn_rate: float = _f(0.0, "users started per second (0: all at once)", custom=False)
    run_time: str = _f("30s", "how long to run: 30s, 2m, 1h30m (Locust's --run-time)", custom=False)
    # -- the locustfile's options (also valid in [tool.locust]) -----------------------------------
    workload: str = _f("reviews", "reviews: the classifier's KServe v2 infer calls; chat: streamed OpenAI chat "
                       "completions of the causal LM (ChatUser, ChatOpenLoopUser), timed with vLLM's definitions")
    target: str = _f("router", "router: the A/B router's experiment route; triton: Triton's model route; openai: "
                     "any OpenAI-compatible server (workload chat), e.g. a peer of serving.llm_peers")
    experiment: str = _f("sentiment-ab", "experiment name (target router): POST /v2/models/EXPERIMENT/infer, or "
                         "the chat request's model")
    model: str = _f(CONTRACT.default_model_name, "Triton model name (target triton), or the chat request's model "
                    "(target openai)")
    protocol: str = _f("http", "http: KServe v2 over HTTP to --host; grpc: over gRPC to --grpc-host (GrpcUser, "
                       "closed loop; feedback still goes to the router's HTTP --host)")
    grpc_host: str = _f("", "protocol grpc: HOST:PORT of the target's gRPC endpoint; default 127.0.0.1:8081 "
                        "(router) or :8001 (triton)")
    versions: str = _f("", "target triton: comma-separated versions users are spread over (sticky by user id); "
                       "empty: Triton's default version")
    texts: str = _f(REVIEWS_TEXTS, "held-out reviews, JSONL {\"text\", \"label\"}; workload chat: the causal task's "
                    f"held-out prompts, JSONL {{\"system\", \"user\"}} (default {CHAT_TEXTS})")
    max_tokens: int = _f(32, "workload chat: max_tokens of each completion")
    temperature: float = _f(0.0, "workload chat: sampling temperature (0: greedy)")
    ignore_eos: bool = _f(False, "workload chat: generate exactly max_tokens, past the EOS token (servers that "
                          "take vLLM's ignore_eos: the router on Triton, the peers)")
    batch_size: int = _f(1, "texts per request")
    arrival_rate: float = _f(0.0, "open loop: requests per second in total, Poisson arrivals; 0: closed loop")
    think_time: float = _f(0.0, "closed loop: seconds a user waits after each answer")
    user_population: int = _f(1000, "open loop: distinct user ids the arrivals are drawn from (sticky keys)")
    user_activity: float = _f(0.0, "open loop: 0: each arrival is any of the user ids alike; s > 0: the k-th id is "
                              "drawn with weight k^-s (Zipf), so a few heavy users send much of the traffic (s 1: "
                              "the busiest of 300 ids sends ~16 %%)")
    user_texts: str = _f("shared", "shared: every request draws from all the texts; window: each user id draws only "
                         "from its own window of the texts sorted by label, then length (user_text_window of them, "
                         "placed by a hash of the id), so users differ in label mix and text length, as real users do")
    user_text_window: float = _f(0.05, "user_texts window: the share of the texts in each user's window, in (0, 1]")
    max_in_flight: int = _f(256, "open loop: requests in flight per Locust process; arrivals beyond are dropped "
                            "and counted as failures")
    feedback_fraction: float = _f(0.2, "target router: fraction of answers followed by feedback (the true label)")
    sticky_check: str = _f("count", "a user served by another variant than before: count it (a 'variant switch' "
                           "row; expected after a weight change) or fail the request (fixed weights)")
    request_timeout: float = _f(10.0, "seconds before a request counts as failed")
    shape: str = _f("none", "load shape: none (constant), steps (users rise in equal steps), spike")
    steps: int = _f(4, "shape steps: number of equal steps up to --users over the run time")
    spike_multiplier: float = _f(4.0, "shape spike: users during the spike, as a multiple of --users")
    spike_start: float = _f(0.4, "shape spike: when the spike starts, as a fraction of the run time")
    spike_length: float = _f(0.2, "shape spike: how long the spike lasts, as a fraction of the run time")
    # -- the runner's own settings ---------------------------------------------------------------
    workers: int = _f(1, "1: one Locust process; N > 1: a master and N worker processes", locust=False)
    out_dir: str = _f("reports", "reports go to OUT_DIR/loadtest-TIMESTAMP/", locust=False)
    triton_metrics_url: str = _f("", "Triton's Prometheus endpoint; default http://127.0.0.1:8002/metrics, "
                                 "'none' to skip", locust=False)
    saturation_cpu: float = _f(90.0, "warn when a Locust process used at least this %% of a core ...",
                               locust=False)
    saturation_fraction: float = _f(0.25, "... for at least this fraction of the run", locust=False)
    slo_ttft_ms: float = _f(2000.0, "workload chat: goodput counts completions whose time to first token is at "
                            "most this (ms)", locust=False)
    slo_tpot_ms: float = _f(250.0, "workload chat: ... and whose time per output token is at most this (ms)",
                            locust=False)

    def __post_init__(self) -> None:
        problems = []
        if self.workload not in WORKLOADS:
            problems.append(f"unknown workload {self.workload!r}; expected one of: {', '.join(WORKLOADS)}")
        elif self.workload == "chat":
            if self.texts == REVIEWS_TEXTS:
                self.texts = CHAT_TEXTS
            if self.target == "triton" or self.protocol != "http":
                problems.append(f"workload chat streams OpenAI chat completions over HTTP to target router or openai; "
                                f"got target {self.target!r}, protocol {self.protocol!r}")
        elif self.target == "openai":
            problems.append("target openai serves workload chat only; set workload chat or target router/triton")
        if self.target not in TARGETS:
            problems.append(f"unknown target {self.target!r}; expected one of: {', '.join(TARGETS)}")
        if self.protocol not in PROTOCOLS:
            problems.append(f"unknown protocol {self.protocol!r}; expected one of: {', '.join(PROTOCOLS)}")
        elif self.protocol == "grpc" and self.arrival_rate > 0:
            problems.append(f"protocol grpc runs closed loop (GrpcUser); set arrival_rate 0, got {self.arrival_rate}")
        if self.grpc_host and not re.fullmatch(r"[^/:\s]+:\d+", self.grpc_host):
            problems.append(f"grpc_host must be HOST:PORT like {DEFAULT_GRPC_HOSTS[TARGETS[0]]}, got {self.grpc_host!r}")
        if self.user_texts not in USER_TEXTS:
            problems.append(f"unknown user_texts {self.user_texts!r}; expected one of: {', '.join(USER_TEXTS)}")
        if not 0 < self.user_text_window <= 1:
            problems.append(f"user_text_window must lie in (0, 1], got {self.user_text_window}")
        if self.sticky_check not in STICKY_CHECKS:
            problems.append(f"unknown sticky_check {self.sticky_check!r}; expected one of: {', '.join(STICKY_CHECKS)}")
        if self.shape not in SHAPES:
            problems.append(f"unknown shape {self.shape!r}; expected one of: {', '.join(SHAPES)}")
        for name in ("users", "batch_size", "user_population", "max_in_flight", "steps", "workers", "max_tokens"):
            if int(getattr(self, name)) < 1:
                problems.append(f"{name} must be >= 1, got {getattr(self, name)}")
        for name in ("spawn_rate", "arrival_rate", "think_time", "user_activity", "temperature"):
            if float(getattr(self, name)) < 0:
                problems.append(f"{name} must be >= 0, got {getattr(self, name)}")
        if self.slo_ttft_ms <= 0 or self.slo_tpot_ms <= 0:
            problems.append(f"slo_ttft_ms and slo_tpot_ms must be > 0, got {self.slo_ttft_ms} and {self.slo_tpot_ms}")
        if self.request_timeout <= 0:
            problems.append(f"request_timeout must be > 0 seconds, got {self.request_timeout}")
        if not 0 <= self.feedback_fraction <= 1:
            problems.append(f"feedback_fraction must lie in [0, 1], got {self.feedback_fraction}")
        if self.spike_multiplier < 1:
            problems.append(f"spike_multiplier must be >= 1, got {self.spike_multiplier}")
        if not (0 <= self.spike_start < 1 and 0 < self.spike_length <= 1 - self.spike_start):
            problems.append(f"spike_start {self.spike_start} and spike_length {self.spike_length} must fit in the run "
                            "(0 <= start < 1, 0 < length <= 1 - start)")
        if self.host and not re.match(r"^https?://[^/]+", self.host):
            problems.append(f"host must be a URL like {DEFAULT_HOSTS[TARGETS[0]]}, got {self.host!r}")
        try:
            seconds = parse_timespan(self.run_time)
            if seconds <= 0:
                problems.append(f"run_time must be > 0, got {self.run_time!r}")
        except ValueError as e:
            problems.append(str(e))
        if self.versions and not all(v.strip().isdigit() for v in self.versions.split(",")):
            problems.append(f"versions must be comma-separated version numbers like 1,2, got {self.versions!r}")
        if not 0 < self.saturation_fraction <= 1 or not 0 < self.saturation_cpu <= 100:
            problems.append("saturation_cpu must lie in (0, 100] and saturation_fraction in (0, 1]")
        raise_problems(problems, LoadTestError, "load test config")

    # -- derived values --------------------------------------------------------------------------
    @property
    def base_url(self) -> str:
        return (self.host or DEFAULT_HOSTS[self.target]).rstrip("/")

    @property
    def grpc_address(self) -> str:
        """``HOST:PORT`` of the target's gRPC endpoint (protocol grpc)."""
        return self.grpc_host or DEFAULT_GRPC_HOSTS[self.target]

    @property
    def run_time_s(self) -> float:
        return parse_timespan(self.run_time)

    @property
    def open_loop(self) -> bool:
        return self.arrival_rate > 0

    @property
    def metrics_url(self) -> str | None:
        """Triton's metrics URL, or None when scraping is switched off."""
        if self.triton_metrics_url == "none":
            return None
        return self.triton_metrics_url or names.TRITON_METRICS_URL

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def save(self, path: Path) -> None:
        path.write_text(json.dumps(self.to_dict(), indent=2) + "\n")

    # -- Locust ----------------------------------------------------------------------------------
    def locust_args(self) -> list[str]:
        """Every Locust option of this config, spelled out, so nothing depends on Locust's defaults."""
        args = []
        for f in fields(self):
            if not f.metadata["locust"]:
                continue
            value = getattr(self, f.name)
            if f.name == "host":
                value = self.base_url
            elif f.name == "grpc_host":
                value = self.grpc_address
            elif f.name == "spawn_rate" and not value:
                value = max(self.users, 1)
            args += [f"--{f.name.replace('_', '-')}", str(value)]
        return args

    @classmethod
    def from_settings(cls, *sources: dict[str, Any]) -> LoadTestConfig:
        """Merge settings dicts (later ones win; keys as in [tool.locust], dashes or underscores)."""
        return cls(**cls.settings_values(*sources))

    @classmethod
    def settings_values(cls, *sources: dict[str, Any]) -> dict[str, Any]:
        """The merged settings as typed field values (None values skipped); unknown keys are an error."""
        known = {f.name: f for f in fields(cls)}
        values: dict[str, Any] = {}
        problems = []
        for source in sources:
            for key, value in source.items():
                name = key.replace("-", "_")
                if name == "spawn_rate" and value is None:
                    continue
                if name not in known:
                    problems.append(f"unknown setting {key!r}; expected one of: {', '.join(sorted(known))}")
                    continue
                if value is not None:
                    values[name] = _coerce(known[name], value)
        raise_problems(problems, LoadTestError, "load test settings")
        return values


def _coerce(f, value: Any) -> Any:
    kind = type(f.default) if f.default is not MISSING else str
    if kind is bool:
        return parse_bool(value, f.name)
    try:
        return kind(value)
    except (TypeError, ValueError):
        raise LoadTestError(f"setting {f.name!r} must be a {kind.__name__}, got {value!r}") from None


def parse_bool(value: Any, name: str = "value") -> bool:
    """``true``/``false`` (also ``1``/``0``, ``yes``/``no``) or a bool -> a bool."""
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in ("true", "1", "yes"):
        return True
    if text in ("false", "0", "no"):
        return False
    raise LoadTestError(f"setting {name!r} must be true or false, got {value!r}")


def parse_timespan(value: str | int | float) -> float:
    """``"90"``, ``"30s"``, ``"2m"``, ``"1h30m"`` -> seconds (Locust's --run-time syntax).

    Not ``locust.util.timespan.parse_timespan``: importing anything from ``locust`` runs gevent's
    ``monkey.patch_all()`` in this process (the demo, the drills, the router's tools), not only in Locust's.
    """
    if isinstance(value, int | float):
        return float(value)
    text = str(value).strip().lower()
    if re.fullmatch(r"\d+(\.\d+)?", text):
        return float(text)
    match = re.fullmatch(r"(?:(\d+)h)?\s*(?:(\d+)m)?\s*(?:(\d+)s)?", text)
    if not text or not match:
        raise ValueError(f"run_time {value!r} is not a time span; expected e.g. 30s, 2m, 1h30m or seconds")
    h, m, s = (int(g or 0) for g in match.groups())
    return float(h * 3600 + m * 60 + s)


def read_settings_file(path: Path) -> dict[str, Any]:
    """``[tool.locust]`` of a pyproject.toml, or a locust.conf read by the parser Locust itself uses
    (``tunestack.configfile``'s ``.conf`` format)."""
    path = Path(path)
    if not path.is_file():
        raise LoadTestError(f"settings file {path} does not exist")
    toml = path.suffix == ".toml"
    try:
        return load_config_file(path, section="tool.locust" if toml else None, fmt=None if toml else "CONF")
    except ConfigFileError as e:
        raise LoadTestError(f"settings file {path}: {e}") from None


def add_locust_arguments(parser) -> None:
    """Register the locustfile's custom options on Locust's parser (``events.init_command_line_parser``)."""
    defaults = LoadTestConfig.__dataclass_fields__
    for name, f in defaults.items():
        if not f.metadata.get("custom"):
            continue
        kind = parse_bool if isinstance(f.default, bool) else type(f.default)
        choices = {"target": TARGETS, "protocol": PROTOCOLS, "shape": SHAPES, "sticky_check": STICKY_CHECKS,
                   "user_texts": USER_TEXTS, "workload": WORKLOADS}.get(name)
        parser.add_argument(f"--{name.replace('_', '-')}", type=kind, default=f.default, choices=choices,
                            help=f.metadata["help"].replace("%%", "%"), include_in_web_ui=False)
