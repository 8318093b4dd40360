"""The rows a router hands to its store: built on the request path (or by the drift worker) in O(1), written
later in batches by ``writer.BatchWriter``.

An answer and a request's final server error carry what the judge's unit table needs (``experiments.judge.units``):
the unit (``unit_id(key, request_id)``: the sticky key's hash, or a pseudo-unit for an unkeyed request),
the period (the store revision in force when the request was assigned) and the arm it was assigned to.
Rows without a period (``period=None``) are kept in the per-arm tables only, never in the unit tables.
"""

from __future__ import annotations

from dataclasses import dataclass

from experiments.generation import GenerationSample
from experiments.judge.units import unit_id

LABEL_SEP = "\x1f"
"""Separator of the predicted labels of one answer in its ``labels`` column (unit separator)."""


@dataclass(frozen=True, slots=True)
class AnswerRow:
    """One answered request."""

    experiment: str
    request_id: str
    arm: str
    """The arm that served it."""
    assigned_arm: str
    """The arm it was assigned to (differs from ``arm`` after a fallback)."""
    version: str
    key: str | None
    """The sticky key; only its hash is stored."""
    latency_s: float
    labels: tuple[str, ...]
    at: float
    confidences: tuple[float, ...] = ()
    """The top-class probability of each prediction (stored: their mean, and their moments per arm and unit)."""
    period: int | None = None
    """The store revision in force when the request was assigned; None: left out of the unit tables."""
    generation: GenerationSample | None = None
    """A generative answer's stream figures (summed into its unit's row)."""
    text: str | None = None
    """A generative answer's text, kept in ``answer_texts`` while feedback may score it."""

    @property
    def unit(self) -> str:
        """The unit it belongs to (``experiments.judge.units.unit_id``)."""
        return unit_id(self.key, self.request_id)


@dataclass(frozen=True, slots=True)
class ErrorRow:
    """One failed attempt, by arm and HTTP status (4xx: the client's, 5xx: the server's or upstream's).

    The final server error of a request (the one its caller got) also names the request: ``request_id``,
    ``key``, ``assigned_arm`` and ``period``; it then counts as a failed request of its unit. An attempt that
    failed before a fallback, and every client error, leave them None: they never count for the judge.
    """

    experiment: str
    arm: str
    code: str
    at: float
    request_id: str | None = None
    key: str | None = None
    assigned_arm: str | None = None
    period: int | None = None

    @property
    def kind(self) -> str:
        return "client" if self.code.isdigit() and int(self.code) < 500 else "server"

    @property
    def unit(self) -> str | None:
        """The unit of a request's final server error; None for any other error."""
        if self.request_id is None or self.period is None or self.assigned_arm is None or self.kind != "server":
            return None
        return unit_id(self.key, self.request_id)


@dataclass(frozen=True, slots=True)
class ShadowRow:
    """One shadow copy: ``outcome`` is ok, error or dropped; ``agree`` None when not compared."""

    experiment: str
    shadow: str
    primary_arm: str
    outcome: str
    latency_s: float | None
    labels: tuple[str, ...]
    agree: bool | None
    at: float


@dataclass(frozen=True, slots=True)
class DriftSample:
    """One monitored text of an arm: the features the drift monitor compares with the training reference."""

    experiment: str
    arm: str
    model: str
    version: str
    """The (model, version) that served it: the reference it is compared with."""
    text_length: float
    unknown_token_rate: float
    confidence: float | None
    """The prediction's top-class probability; None when the answer did not give one per text."""
    label: str | None
    """The predicted label; None when the answer did not give one per text."""
    at: float
    window: int
    """The newest ``window`` samples per arm are kept (``RouterConfig.drift_window``); older ones are deleted."""


@dataclass(frozen=True, slots=True)
class DriftReferenceRow:
    """The training reference of a served (model, version): ``experiments.drift.monitor.Reference`` as JSON."""

    experiment: str
    model: str
    version: str
    reference: str


@dataclass(frozen=True, slots=True)
class InputRow:
    """The input texts of one answered request, kept for retraining (``experiments.retention``): deleted from the
    store once older than the experiment's ``retain_inputs.retention_s``."""

    experiment: str
    request_id: str
    arm: str
    """The arm that served it."""
    texts: tuple[str, ...]
    at: float


Record = AnswerRow | ErrorRow | ShadowRow | DriftSample | DriftReferenceRow | InputRow

