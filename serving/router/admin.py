"""Experiment endpoints: the spec, weight changes and reloads (admin, bearer token), feedback, the
report, and Prometheus ``/metrics``.

    GET  /v2/experiments                      -> {"experiments": [name]}
    GET  /v2/experiments/{name}               -> the running spec, with normalised shares
    PUT  /v2/experiments/{name}/weights       {"weights": {"control": 70, "treatment": 30}, "why": "..."} (admin)
    POST /v2/experiments/{name}/reload        re-read the experiment file, as SIGHUP does        (admin)
    POST /v2/experiments/{name}/feedback      {"id": REQUEST_ID, "label": TRUE_LABEL}  (200, or 202: pending)
    GET  /v2/experiments/{name}/report        ?alpha=0.05&resamples=2000&format=json|markdown
    GET  /v2/experiments/{name}/audit         the spec's revisions: who changed it, when, why (needs a store)
    GET  /metrics

Feedback with an experiment store is accepted by any replica, at any time after its answer was sent, once
per request id (a second copy: 409, whether the first is pending or joined). When the answer is in the store
it joins it at once: 200 ``{"id", "arm", "correct", "status": "recorded"}``. When it is not there yet (another
replica's writer has not flushed it) the feedback is kept: 202 ``{"id", "status": "pending"}``; it joins the
answer, on the answer's arm, unit and period, the moment the answer reaches the store, and expires (counted)
if none does within ``--feedback-pending-s``. Without a store, feedback for an id this router does not
remember is a 404. A list (``{"feedback": [...]}``) answers each item so, with 202 if any is pending.
Quality feedback on a generated answer (``{"id", "rating": 0..1}`` or ``{"id", "reference": TEXT}``, scored by
ROUGE-L against the answer's text) takes the same way: 200 with its arm and score, or 202 pending (a reference
is then scored when the answer's text reaches the store), the same expiry and counters.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from dataclasses import dataclass

import anyio
import numpy as np
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route

from experiments.errors import ExperimentError
from experiments.experiment_report import build_report, render_markdown
from experiments.generation import reference_score
from experiments.judge import JudgeConfig, UnitTable
from experiments.spec import Experiment
from experiments.store import StoreUnavailable
from serving.router.errors import BadRequest, Conflict, NotFound, RouterError
from serving.router.state import RouterState, get_state
from serving.router.store_runtime import StoreDown

log = logging.getLogger(__name__)

MAX_ADMIN_BODY = 64 * 1024
RECORDED, PENDING = "recorded", "pending"
"""Feedback's ``status``: joined to its answer, or kept until the answer reaches the store."""


async def _json_body(request: Request) -> object:
    body = await request.body()
    if len(body) > MAX_ADMIN_BODY:
        raise BadRequest(f"body of {len(body)} bytes is over the admin limit of {MAX_ADMIN_BODY}")
    try:
        return json.loads(body)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise BadRequest(f"malformed JSON in the request body: {e}") from None


async def reload_logged(state: RouterState, why: str) -> None:
    """Reload for SIGHUP: a bad file is logged and the running experiment kept."""
    try:
        await state.reload(why)
    except (ExperimentError, RouterError) as e:
        log.error("reload (%s) refused; keeping the running experiment: %s", why, e)


async def list_experiments(request: Request) -> Response:
    return JSONResponse({"experiments": [get_state(request).experiment.name]})


async def experiment_spec(request: Request) -> Response:
    state = get_state(request)
    return JSONResponse(state.check_experiment(request.path_params["name"]).to_dict())


async def set_weights(request: Request) -> Response:
    state = get_state(request)
    who = state.require_admin(request)
    exp = state.check_experiment(request.path_params["name"])
    payload = await _json_body(request)
    if not isinstance(payload, dict) or "weights" not in payload:
        raise BadRequest(f"expected {{\"weights\": {{arm: weight, ...}}}} with every arm of {list(exp.arm_names)}")
    try:
        new = exp.with_weights(payload["weights"])
    except ExperimentError as e:
        raise BadRequest(str(e)) from None
    why = payload.get("why") or "admin API"
    if not isinstance(why, str) or len(why) > 1000:
        raise BadRequest(f"\"why\" must be a string of at most 1000 characters, got {why!r:.100}")
    if state.store is not None:
        await state.store.change(new, "admin", who, why)
    else:
        state.set_experiment(new, f"admin API ({who}): {why}")
    return JSONResponse(new.to_dict())


async def reload(request: Request) -> Response:
    state = get_state(request)
    who = state.require_admin(request)
    state.check_experiment(request.path_params["name"])
    try:
        exp = await state.reload("admin API", who)
    except ExperimentError as e:
        raise BadRequest(f"reload refused, the running experiment is unchanged: {e}") from None
    return JSONResponse(exp.to_dict())


async def feedback(request: Request) -> Response:
    """Record the true label of a served request: ``{"id": ..., "label": ...}`` (or ``"labels": [...]``)."""
    state = get_state(request)
    state.check_experiment(request.path_params["name"])
    payload = await _json_body(request)
    items = payload.get("feedback") if isinstance(payload, dict) and "feedback" in payload else [payload]
    if not isinstance(items, list) or not items:
        raise BadRequest("expected {\"id\": REQUEST_ID, \"label\": TRUE_LABEL} or {\"feedback\": [...]}")
    parsed = [_feedback_item(i, item) for i, item in enumerate(items)]
    results = [await (_one_quality(state, request_id, what) if isinstance(what, Quality) else
                      _one_feedback(state, request_id, what)) for request_id, what in parsed]
    status = 202 if any(r["status"] == PENDING for r in results) else 200
    return JSONResponse(results[0] if len(results) == 1 and "feedback" not in payload else {"feedback": results},
                        status_code=status)


@dataclass(frozen=True)
class Quality:
    """Quality feedback on a generative answer: a ``rating`` in [0, 1], or a ``reference`` text its answer is
    scored against (ROUGE-L F, stemmed, in [0, 1])."""

    rating: float | None = None
    reference: str | None = None


def _feedback_item(i: int, item: object) -> tuple[str, tuple[str, ...] | Quality]:
    """One item: ``(id, labels)`` for a classifier's answer, ``(id, Quality)`` for a generative answer's."""
    if not isinstance(item, dict) or not isinstance(item.get("id"), str) or not item["id"]:
        raise BadRequest(f"feedback[{i}] needs a string \"id\" (the X-Request-Id of the answer), got {item!r:.100}")
    if "rating" in item or "reference" in item:
        rating, reference = item.get("rating"), item.get("reference")
        if (rating is None) == (reference is None):
            raise BadRequest(f"feedback[{i}] needs one of \"rating\" and \"reference\", got {item!r:.100}")
        if rating is not None and (isinstance(rating, bool) or not isinstance(rating, int | float)
                                   or not 0 <= rating <= 1):
            raise BadRequest(f"feedback[{i}].rating must be a number in [0, 1], got {rating!r:.40}")
        if reference is not None and (not isinstance(reference, str) or not reference.strip()):
            raise BadRequest(f"feedback[{i}].reference must be non-empty text, got {reference!r:.40}")
        return item["id"], Quality(None if rating is None else float(rating), reference)
    labels = item.get("labels", [item["label"]] if "label" in item else None)
    if not isinstance(labels, list) or not labels or not all(isinstance(x, str | int) for x in labels):
        raise BadRequest(f"feedback[{i}] needs \"label\": TRUE_LABEL (or \"labels\": [...]), or \"rating\" / "
                         f"\"reference\" for a generated answer, got {item!r:.100}")
    return item["id"], tuple(str(x) for x in labels)


async def _one_quality(state: RouterState, request_id: str, quality: Quality) -> dict:
    """Quality feedback on one generative answer: recorded with its arm and score, or (with a store) pending until
    its answer reaches the store. A reference is scored against the answer's text where this replica or the
    store has it, else kept with the pending feedback and scored when the answer's text arrives."""
    score = quality.rating
    if quality.reference is not None:
        text = state.recorder.answer_text(request_id)
        if text is None and state.store is not None:
            text = await state.store.answer_text(request_id)
        if text is not None:
            score = await anyio.to_thread.run_sync(reference_score, text, quality.reference)
        elif state.store is None:
            raise NotFound(f"no answer text kept for request {request_id!r}: not a generated answer, or older than "
                           f"--feedback-pending-s ({state.config.feedback_pending_s:g} s)")
    if state.store is not None:
        found = await state.store.quality(request_id, score, None if score is not None else quality.reference)
        if found is None:
            return {"id": request_id, "status": PENDING}
        return {"id": request_id, "arm": found[0], "quality": found[1], "status": RECORDED}
    assert score is not None
    try:
        arm = state.recorder.quality(request_id, score)
    except KeyError:
        raise Conflict(f"request {request_id!r} already has feedback") from None
    if arm is None:
        raise NotFound(f"unknown request id {request_id!r}: never served by this router, or too old (the last "
                       f"{state.config.request_log_size} are kept)")
    return {"id": request_id, "arm": arm, "quality": score, "status": RECORDED}


async def _one_feedback(state: RouterState, request_id: str, labels: tuple[str, ...]) -> dict:
    """One item: recorded (with its arm and whether the prediction was right), or pending (with a store)."""
    if state.store is not None:
        found = await state.store.feedback(request_id, labels)
        if found is None:
            return {"id": request_id, "status": PENDING}
    else:
        try:
            found = state.recorder.feedback(request_id, labels)
        except KeyError:
            raise Conflict(f"request {request_id!r} already has feedback") from None
        if found is None:
            raise NotFound(f"unknown request id {request_id!r}: never served by this router, or too old (the last "
                           f"{state.config.request_log_size} are kept)")
    return {"id": request_id, "arm": found[0], "correct": found[1], "status": RECORDED}


def _query_float(request: Request, name: str, default: float, low: float, high: float) -> float:
    raw = request.query_params.get(name)
    if raw is None:
        return default
    try:
        value = float(raw)
    except ValueError:
        raise BadRequest(f"{name} must be a number, got {raw!r}") from None
    if not low <= value <= high:
        raise BadRequest(f"{name} must be in [{low:g}, {high:g}], got {value:g}")
    return value


async def report(request: Request) -> Response:
    state = get_state(request)
    exp = state.check_experiment(request.path_params["name"])
    alpha = _query_float(request, "alpha", 0.05, 1e-6, 0.5)
    resamples = int(_query_float(request, "resamples", 2000, 100, 100_000))
    fmt = request.query_params.get("format", "json")
    if fmt not in {"json", "markdown"}:
        raise BadRequest(f"format must be json or markdown, got {fmt!r}")
    seed = int(_query_float(request, "seed", 0, 0, 2**32 - 1))
    result = await report_json(state, exp, alpha, resamples, seed)
    if fmt == "markdown":
        return PlainTextResponse(render_markdown(result), media_type="text/markdown")
    return JSONResponse(result)


async def report_json(state: RouterState, exp: Experiment, alpha: float = 0.05, resamples: int = 2000,
                      seed: int = 0) -> dict:
    """The report ``GET .../report`` answers (and the live page shows): built in a worker thread from
    ``report_data``, with where the data came from and the audit log."""
    config = JudgeConfig(alpha=alpha)
    data = await report_data(state, config)

    def work() -> dict:
        return build_report(exp, data.snapshot, data.table, alpha, resamples, np.random.default_rng(seed),
                            data.drift() if data.drift else None, config)

    result = await anyio.to_thread.run_sync(work)
    result["data_source"] = data.source
    if data.audit is not None:
        result["audit"] = data.audit
    return result


@dataclass(frozen=True)
class ReportData:
    """What a report is built from, and where it came from."""

    snapshot: dict
    """The per-arm data (``Recorder.snapshot()`` or ``Store.snapshot()``)."""
    table: UnitTable | None
    """The judge's unit table; None when the store is unavailable (a replica's memory alone is not judged)."""
    drift: Callable[[], dict] | None
    """The drift report (a function, for the worker thread); None: no drift section."""
    source: str
    audit: list[dict] | None


async def report_data(state: RouterState, config: JudgeConfig) -> ReportData:
    """The report's data: from the store (every replica's traffic, unit table and monitored texts) when there is
    one and it answers; from this replica's memory (its in-memory judge) when there is none; from this
    replica's memory without verdicts when the store is down (one replica's share would be judged apart from
    the fleet's, and differently on each replica)."""
    memory_drift = state.drift.report if state.drift is not None else None
    if state.store is None:
        return ReportData(state.recorder.snapshot(), state.recorder.unit_table(), memory_drift,
                          "this replica's memory (no store)", None)
    try:
        return ReportData(await state.store.snapshot(), await state.store.unit_table(config), await state.store.drift(),
                          f"store, latencies: newest {state.config.latency_window} per arm", await state.store.audit())
    except StoreUnavailable as e:
        log.warning("report from this replica's memory, without verdicts: the store is unavailable (%s)", e)
        return ReportData(state.recorder.snapshot(), None, memory_drift,
                          "this replica's memory (store unavailable: no verdicts)", None)


async def audit(request: Request) -> Response:
    state = get_state(request)
    state.check_experiment(request.path_params["name"])
    if state.store is None:
        raise NotFound("no audit log: this router runs without an experiment store (--store)")
    limit = int(_query_float(request, "limit", 50, 1, 10_000))
    try:
        return JSONResponse({"experiment": state.experiment.name, "revisions": await state.store.audit(limit)})
    except StoreUnavailable as e:
        raise StoreDown(f"the experiment store is unavailable: {e}") from None


async def metrics(request: Request) -> Response:
    return Response(generate_latest(get_state(request).recorder.registry), media_type=CONTENT_TYPE_LATEST)


routes = [
    Route("/v2/experiments", list_experiments),
    Route("/v2/experiments/{name}", experiment_spec),
    Route("/v2/experiments/{name}/weights", set_weights, methods=["PUT", "POST"]),
    Route("/v2/experiments/{name}/reload", reload, methods=["POST"]),
    Route("/v2/experiments/{name}/feedback", feedback, methods=["POST"]),
    Route("/v2/experiments/{name}/report", report),
    Route("/v2/experiments/{name}/audit", audit),
    Route("/metrics", metrics),
]
