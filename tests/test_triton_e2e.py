"""End to end: publish a tiny export, start the real tritonserver, talk to it with tritonclient.

One server per module (python layout, fp32 = version 1, int8 = version 2, max_batch_size 8, a 20 ms
batching window so concurrent requests share a batch); it is always stopped, process group included.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from transformers import AutoTokenizer
from tritonclient.utils import InferenceServerException

from export import triton_config
from export.config import ExportConfig
from export.contract import VARIANT_FILES
from export.publish import publish
from export.triton_model.model import length_buckets, softmax
from serving import client as client_cli
from serving.__main__ import main as serving_main
from serving.client import TritonClassifier, text_input
from serving.errors import InferenceError, TritonStartError
from serving.repository import ModelRepository
from serving.triton import TritonServer
from tests.conftest import export_settings
from tunestack.procs import wait_for

pytestmark = pytest.mark.e2e

MODEL = "sentiment"
MAX_BATCH = 8
TEXTS = ["a fine film", "A DULL, overlong mess that never ends.", "not bad at all", "word " * 4000]
LONG_TEXT = "a " * 10_000  # 20,000 characters: accepted, truncated to the trained max_length tokens


@pytest.fixture(scope="module")
def repository(tiny_onnx_dir, tmp_path_factory) -> Path:
    cfg = ExportConfig(repository=tmp_path_factory.mktemp("serve") / "model_repository", model_name=MODEL,
                       max_batch_size=MAX_BATCH, max_queue_delay_us=20_000)
    assert publish(tiny_onnx_dir, "fp32", cfg).name == "1"
    assert publish(tiny_onnx_dir, "int8", cfg).name == "2"
    return cfg.repository


@pytest.fixture(scope="module")
def server(repository):
    with TritonServer(repository, models=[MODEL], startup_timeout=90) as server:  # stopped on exit
        yield server


@pytest.fixture(scope="module")
def reference(tiny_onnx_dir):
    """In-process: the training tokenizer (transformers) + ONNX Runtime on the export folder's files, run
    in the served model's length buckets (dynamic int8's answers depend on their batch-mates)."""
    labels, max_length = export_settings(tiny_onnx_dir)
    tokenizer = AutoTokenizer.from_pretrained(tiny_onnx_dir)
    sessions = {v: ort.InferenceSession(str(tiny_onnx_dir / f), providers=["CPUExecutionProvider"])
                for v, f in VARIANT_FILES.items()}

    def run(texts: list[str], variant: str) -> tuple[np.ndarray, list[str]]:
        session = sessions[variant]
        lengths = [len(ids) for ids in tokenizer(texts, truncation=True, max_length=max_length)["input_ids"]]
        logits = np.empty((len(texts), len(labels)), dtype=np.float32)
        for bucket in length_buckets(lengths):
            features = tokenizer([texts[i] for i in bucket], truncation=True, max_length=max_length, padding=True,
                                 return_tensors="np")
            logits[bucket] = session.run(None, {i.name: features[i.name].astype(np.int64) for i in session.get_inputs()})[0]
        probabilities = softmax(logits)
        return probabilities, [labels[i] for i in probabilities.argmax(-1)]

    return run


def url(server: TritonServer, protocol: str) -> str:
    return server.http_address if protocol == "http" else server.grpc_url


def model_stats(server: TritonServer) -> dict[str, int]:
    with urllib.request.urlopen(f"{server.http_url}/v2/models/{MODEL}/stats", timeout=10) as response:
        stats = json.load(response)["model_stats"]
    return {"inferences": sum(int(s["inference_count"]) for s in stats),
            "executions": sum(int(s["execution_count"]) for s in stats)}


@pytest.mark.parametrize("protocol", ["http", "grpc"])
@pytest.mark.parametrize(("version", "variant"), [("1", "fp32"), ("2", "int8")])
def test_answers_equal_in_process_onnxruntime(server, reference, protocol, version, variant):
    expected, expected_labels = reference(TEXTS, variant)
    with TritonClassifier(url(server, protocol), protocol, MODEL, version) as classifier:
        probabilities, labels, answered_by = classifier.infer(TEXTS)
    assert answered_by == version
    assert probabilities.shape == expected.shape
    np.testing.assert_allclose(probabilities, expected, atol=1e-5)
    assert labels == expected_labels


def test_a_batch_request_gets_one_prediction_per_text(server, tiny_onnx_dir):
    labels, _ = export_settings(tiny_onnx_dir)
    with TritonClassifier(server.http_address) as classifier:
        predictions = classifier.predict(TEXTS + [LONG_TEXT])
    assert [p.text for p in predictions] == TEXTS + [LONG_TEXT]
    for p in predictions:
        assert p.label in labels and list(p.probabilities) == labels
        assert abs(sum(p.probabilities.values()) - 1.0) < 1e-5
        assert p.label == max(p.probabilities, key=p.probabilities.get)
        assert p.version == "2"  # no version asked: the newest one


def test_dynamic_batching_shows_in_the_stats(server):
    before = model_stats(server)
    clients = [httpclient.InferenceServerClient(server.http_address) for _ in range(16)]
    try:
        with ThreadPoolExecutor(16) as pool:
            list(pool.map(lambda c: c.infer(MODEL, [text_input(httpclient, ["a fine film"])]), clients))
    finally:
        for c in clients:
            c.close()
    # Triton updates its statistics after it has sent the answers: wait until all 16 are counted
    wait_for(lambda: model_stats(server)["inferences"] - before["inferences"] >= 16, 30.0, "16 inferences in the stats")
    after = model_stats(server)
    assert after["inferences"] - before["inferences"] == 16
    assert after["executions"] - before["executions"] < 16, f"no request was batched: {before} -> {after}"


def _input(module, name: str, shape: list[int], datatype: str, data: np.ndarray):
    tensor = module.InferInput(name, shape, datatype)
    tensor.set_data_from_numpy(data)
    return tensor


BAD_INPUTS = {  # name -> (inputs builder, expected error)
    "wrong datatype": (lambda m: [_input(m, "TEXT", [1, 1], "INT32", np.array([[7]], dtype=np.int32))],
                       r"data-type is 'INT32', but model 'sentiment' expects 'BYTES'"),
    "missing input": (lambda m: [], r"missing required input\(s\) \['TEXT'\]"),
    "wrong shape": (lambda m: [_input(m, "TEXT", [1, 2], "BYTES", np.array([[b"a", b"b"]], dtype=object))],
                    r"unexpected shape for input 'TEXT'.*Expected \[-1,1\], got \[1,2\]"),
    "empty string": (lambda m: [text_input(m, [""])], r"TEXT\[0\] is an empty string"),
    "empty string in a batch": (lambda m: [text_input(m, ["fine", "   "])], r"TEXT\[1\] is an empty string"),
    "invalid utf-8": (lambda m: [text_input(m, [b"caf\xe9 \xff"])], r"TEXT\[0\] is not valid UTF-8"),
    "batch over max_batch_size": (lambda m: [text_input(m, ["fine"] * (MAX_BATCH + 1))],
                                  rf"batch-size must be <= {MAX_BATCH}"),
    "no texts": (lambda m: [_input(m, "TEXT", [0, 1], "BYTES", np.zeros((0, 1), dtype=object))],
                 r"expected 1 string elements .* got 0"),
}


@pytest.mark.parametrize("protocol", ["http", "grpc"])
@pytest.mark.parametrize("case", list(BAD_INPUTS))
def test_bad_input_fails_that_request_only(server, reference, case, protocol):
    module = httpclient if protocol == "http" else grpcclient
    build, expected_error = BAD_INPUTS[case]
    good_texts = ["a fine film", "not bad at all"]
    expected, _ = reference(good_texts, "int8")
    bad_client = module.InferenceServerClient(url(server, protocol))
    good = TritonClassifier(url(server, protocol), protocol, MODEL)
    try:
        with ThreadPoolExecutor(2) as pool:  # sent together, so they share a dynamic batch
            bad = pool.submit(bad_client.infer, MODEL, build(module))
            good_answer = pool.submit(good.infer, good_texts)
            with pytest.raises(InferenceServerException, match=expected_error):
                bad.result()
            probabilities, _, _ = good_answer.result()
    finally:
        bad_client.close()
        good.close()
    np.testing.assert_allclose(probabilities, expected, atol=1e-4)
    assert server.is_ready([MODEL])


def test_a_20000_character_text_is_truncated_and_answered(server, reference):
    expected, labels = reference([LONG_TEXT], "int8")
    with TritonClassifier(server.grpc_url, "grpc", MODEL) as classifier:
        probabilities, answered, _ = classifier.infer([LONG_TEXT])
    np.testing.assert_allclose(probabilities, expected, atol=1e-5)
    assert answered == labels


def test_no_python_backend_instance_crashed(server):
    log = server.log_path.read_text(errors="replace")
    assert "Traceback" not in log and "Stub process" not in log and "unhealthy" not in log
    assert server.is_ready([MODEL])


def test_client_cli_prints_label_and_probabilities(server, tmp_path, capsys):
    batch = tmp_path / "texts.txt"
    batch.write_text("a fine film\n\nnot bad at all\n")
    assert client_cli.main(["--url", server.http_address, "--version", "1", "a dull mess"]) == 0
    assert client_cli.main(["--protocol", "grpc", "--url", server.grpc_url, "--file", str(batch), "--json"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert re.match(r"^(\w+)\s+\w+=0\.\d{4}\s+\w+=0\.\d{4}\s+v1\s+'a dull mess'$", out[0]), out[0]
    rows = [json.loads(line) for line in out[1:]]
    assert [r["text"] for r in rows] == ["a fine film", "not bad at all"] and rows[0]["version"] == "2"
    assert client_cli.main(["--url", server.http_address, ""]) == 1
    assert "is an empty string" in capsys.readouterr().err


ORT_STAND_IN = """
import json
from pathlib import Path

import numpy as np
import onnxruntime as ort
import triton_python_backend_utils as pb_utils


class TritonPythonModel:  # test-only: what the onnxruntime backend would do with model.onnx
    def initialize(self, args):
        config = json.loads(args["model_config"])
        folder = Path(args["model_repository"]) / args["model_version"]
        self.session = ort.InferenceSession(str(folder / "model.onnx"), providers=["CPUExecutionProvider"])
        self.inputs, self.output = [i["name"] for i in config["input"]], config["output"][0]["name"]

    def execute(self, requests):
        responses = []
        for request in requests:
            feeds = {n: pb_utils.get_input_tensor_by_name(request, n).as_numpy() for n in self.inputs}
            logits = self.session.run([self.output], feeds)[0].astype(np.float32)
            responses.append(pb_utils.InferenceResponse([pb_utils.Tensor(self.output, logits)]))
        return responses
"""


def test_onnxruntime_layout_runs_with_a_python_stand_in_for_the_onnx_step(server, repository, tiny_onnx_dir, reference):
    """The ensemble, tokenize and postprocess configs and code on the real server; only the
    onnxruntime_onnx step (no such backend here) is replaced by a python model running the same file."""
    cfg = ExportConfig(repository=repository, model_name="ens", layout="onnxruntime", max_batch_size=MAX_BATCH)
    publish(tiny_onnx_dir, "fp32", cfg)
    onnx_model = repository / triton_config.step_names("ens")["onnx"]
    config = triton_config.parse_pbtxt((onnx_model / "config.pbtxt").read_text())
    config.ClearField("platform")
    config.backend = "python"
    (onnx_model / "config.pbtxt").write_text(triton_config.to_pbtxt(config))
    (onnx_model / "1" / "model.py").write_text(ORT_STAND_IN)
    expected, labels = reference(TEXTS, "fp32")
    with ModelRepository(server.http_address, repository) as repo:
        repo.load("ens")  # an ensemble load loads its steps too
        try:
            with TritonClassifier(server.grpc_url, "grpc", "ens") as classifier:
                probabilities, answered, _ = classifier.infer(TEXTS)
                with pytest.raises(InferenceError, match=r"TEXT\[0\] is an empty string"):
                    classifier.infer([""])
        finally:
            repo.unload("ens")
    np.testing.assert_allclose(probabilities, expected, atol=1e-5)
    assert answered == labels


def test_load_unload_and_rollback(server, repository, capsys):
    def served_by() -> str:
        with TritonClassifier(server.http_address) as classifier:
            return classifier.infer(["a fine film"])[2]

    with ModelRepository(server.http_address, repository) as repo:
        assert repo.ready_versions(MODEL) == [1, 2]
        repo.rollback(MODEL, 1)
        assert repo.ready_versions(MODEL) == [1] and served_by() == "1"
        repo.load(MODEL)  # back to config.pbtxt: the newest two
        assert repo.ready_versions(MODEL) == [1, 2] and served_by() == "2"
        repo.unload(MODEL)
        assert repo.ready_versions(MODEL) == []
        with pytest.raises(Exception, match="no available versions|unavailable|not ready"):
            served_by()
        with pytest.raises(Exception, match=r"no version\(s\) \[7\].*published versions: \[1, 2\]"):
            repo.rollback(MODEL, 7)

    cli = ["models", "--url", server.http_address, "--repository", str(repository)]
    assert serving_main(cli + ["load", MODEL]) == 0
    assert serving_main(cli + ["list"]) == 0
    listing = capsys.readouterr().out
    assert re.search(rf"{MODEL}\s+1\s+READY", listing) and re.search(rf"{MODEL}\s+2\s+READY", listing)
    assert served_by() == "2"


def test_start_failure_reports_the_log(tmp_path):
    broken = tmp_path / "repo" / MODEL
    (broken / "1").mkdir(parents=True)
    (broken / "config.pbtxt").write_text('name: "sentiment"\nbackend: "python"\nmax_batch_sise: 4\n')
    server = TritonServer(tmp_path / "repo", models=[MODEL], startup_timeout=60)
    with pytest.raises(TritonStartError, match="exited with code .* before it was ready(.|\n)*max_batch_sise"):
        server.start()
    assert server.process is None


def test_launcher_serves_until_sigterm(repository):
    cmd = [sys.executable, "-m", "serving", "triton", "--repository", str(repository), "--model", MODEL,
           "--http-port", "0", "--grpc-port", "0", "--metrics-port", "0"]
    launcher = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                start_new_session=True)
    try:
        lines = []
        for line in launcher.stdout:
            lines.append(line)
            if line.startswith("Triton ready"):
                break
        http = re.search(r"http http://(\S+)", "".join(lines))
        assert http, "".join(lines)
        with TritonClassifier(http.group(1)) as classifier:
            assert classifier.infer(["a fine film"])[2] == "2"
        launcher.send_signal(signal.SIGTERM)
        assert launcher.wait(timeout=60) == 0  # a clean exit on SIGTERM (the deadline only catches a hang)
    finally:
        try:
            os.killpg(launcher.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        launcher.wait()


def test_bench_writes_figures_for_every_path(repository, tmp_path, capsys):
    from serving import bench

    out = tmp_path / "reports" / "bench-serving"
    assert bench.main(["--repository", str(repository), "--model", MODEL, "--version", "1", "--requests", "30",
                       "--duration", "1", "--concurrency", "4", "--out", str(out)]) == 0
    report = json.loads((out / "bench.json").read_text())
    assert set(report["batch1"]) == {"in-process ORT", "Triton HTTP", "Triton gRPC"}
    assert all(s["n"] == 30 and 0 < s["p50_ms"] <= s["p99_ms"] for s in report["batch1"].values())
    assert report["batch1"]["Triton HTTP"]["diff_p50_ms"]["vs"] == "in-process ORT"
    throughput = report["throughput"]
    assert throughput["no dynamic batching"]["mean_batch_size"] == 1.0
    assert all(s["requests_per_s"] > 0 for s in throughput.values()) and len(throughput) == 3
    assert (out / "bench.md").is_file() and (out / "latency_cdf.png").is_file()
    assert "| Triton gRPC | 30 |" in capsys.readouterr().out
