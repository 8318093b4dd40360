"""Start, probe and stop a real Triton Inference Server, the one shipped in the pinned ``nvidia-pytriton`` wheel.

Usage (the router, the load tests and the e2e tests all do this)::

    from serving.triton import TritonServer

    with TritonServer("model_repository", models=["sentiment"]) as server:   # starts, waits until ready
        client = tritonclient.http.InferenceServerClient(server.http_address)
        ...                                                                  # stopped on exit, always

What it takes care of (see shared/ENVIRONMENT.md): the wheel's ``tritonserver`` folder is copied once
into a cache folder with the python backend stub for this Python next to ``libtriton_python.so``;
``LD_LIBRARY_PATH`` gets the wheel's libraries and this Python's ``LIBDIR``; ``PATH`` starts with this
Python's ``bin`` so the stub embeds the same interpreter and venv. The server listens on 127.0.0.1 only,
on free ports unless told otherwise, with explicit model control; its output goes to a log file whose
tail is part of every start-up error. ``stop()`` sends SIGTERM, then kills the whole process group
(the server and its python stubs) if it has not exited in time.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import re
import shutil
import subprocess
import sys
import sysconfig
import tempfile
from collections.abc import Sequence
from pathlib import Path

from serving.errors import TritonNotFound, TritonStartError
from tunestack.names import HOST
from tunestack.procs import ChildProcess, StartError, free_port, http_ok

log = logging.getLogger(__name__)

STUB = "triton_python_backend_stub"
PY_VERSION = f"{sys.version_info.major}.{sys.version_info.minor}"


def pytriton_root() -> Path:
    """``site-packages/pytriton/tritonserver`` of the installed ``nvidia-pytriton`` wheel."""
    spec = importlib.util.find_spec("pytriton")
    if spec is None or spec.origin is None:
        raise TritonNotFound("the nvidia-pytriton package is not installed; `pip install nvidia-pytriton==0.7.0` "
                             "or pass --tritonserver PATH")
    root = Path(spec.origin).parent / "tritonserver"
    if not (root / "bin" / "tritonserver").is_file():
        raise TritonNotFound(f"nvidia-pytriton is installed but {root / 'bin' / 'tritonserver'} is missing")
    return root


def prepared_install(source_root: Path, cache_dir: Path | None = None) -> Path:
    """A tritonserver folder whose python backend has the stub for this Python next to it.

    A folder that already has the stub is used as it is; otherwise (the pytriton wheel) it is copied once
    to ``cache_dir`` (default ``$XDG_CACHE_HOME/tunestack``) with the stub added, built beside and renamed
    into place so concurrent callers never see half a copy.
    """
    source_root = Path(source_root)
    if (source_root / "backends" / "python" / STUB).is_file():
        return source_root
    stub = source_root / "python_backend_stubs" / PY_VERSION / STUB
    if not stub.is_file():
        raise TritonNotFound(f"no python backend stub for Python {PY_VERSION} at {stub}")
    cache_dir = Path(cache_dir or Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "tunestack")
    mtime = int((source_root / "bin" / "tritonserver").stat().st_mtime)
    target = cache_dir / f"tritonserver-py{PY_VERSION}-{mtime}"
    if (target / "backends" / "python" / STUB).is_file():
        return target
    cache_dir.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".tritonserver-", dir=cache_dir))
    try:
        shutil.copytree(source_root, staging / "root", ignore=shutil.ignore_patterns("python_backend_stubs"),
                        symlinks=True)
        shutil.copy2(stub, staging / "root" / "backends" / "python" / STUB)
        try:
            os.rename(staging / "root", target)
        except OSError:  # another process won the race: use its copy
            if not (target / "backends" / "python" / STUB).is_file():
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    log.info("prepared tritonserver in %s", target)
    return target


def server_environment(lib_dirs: Sequence[Path] = ()) -> dict[str, str]:
    """This process's environment plus what the server and the python stub need to find their libraries."""
    env = dict(os.environ)
    libs = [str(p) for p in lib_dirs] + [sysconfig.get_config_var("LIBDIR") or ""]
    env["LD_LIBRARY_PATH"] = os.pathsep.join([p for p in libs if p] + [env.get("LD_LIBRARY_PATH", "")]).rstrip(":")
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    return env


def repository_models(repository: Path) -> list[str]:
    """The model folders of a repository: those with a config.pbtxt, hidden folders left out."""
    return sorted(p.name for p in Path(repository).iterdir()
                  if p.is_dir() and not p.name.startswith(".") and (p / "config.pbtxt").is_file())


class TritonServer:
    """One ``tritonserver`` process on 127.0.0.1: ``start()``, ``wait_ready()``, ``stop()`` or ``with``.

    Args:
        repository: the model repository folder.
        models: models to load at start-up (explicit model control); ``None``: every model folder
            with a config.pbtxt (``repository_models``), ``[]``: none.
        tritonserver: path of a ``tritonserver`` binary; default the one in ``nvidia-pytriton``.
        http_port / grpc_port / metrics_port: 0 (default) picks a free port.
        log_file: where the server's stdout/stderr go; default a temporary file.
        log_verbose: tritonserver ``--log-verbose`` level.
        startup_timeout: seconds ``wait_ready()`` waits for the server and ``models``.
        exit_timeout: tritonserver ``--exit-timeout-secs``: how long SIGTERM waits for open
            connections and in-flight requests before the server exits anyway.
        extra_args: more tritonserver flags, appended last.
    """

    def __init__(self, repository: str | Path, *, models: Sequence[str] | None = None,
                 tritonserver: str | Path | None = None, http_port: int = 0, grpc_port: int = 0,
                 metrics_port: int = 0, log_file: str | Path | None = None, log_verbose: int = 0,
                 startup_timeout: float = 60.0, exit_timeout: int = 5, extra_args: Sequence[str] = ()):
        # a folder, or an s3:// URI that tritonserver reads itself (S3Repository.triton_uri)
        self.repository: Path | str = repository if str(repository).startswith("s3://") else Path(repository).resolve()
        self.models = list(models) if models is not None else None
        self.tritonserver = Path(tritonserver) if tritonserver else None
        self._requested_ports = (http_port, grpc_port, metrics_port)
        given = [port for port in self._requested_ports if port]
        if len(set(given)) < len(given):
            raise TritonStartError(f"http_port={http_port}, grpc_port={grpc_port} and metrics_port={metrics_port} "
                                   "must be distinct (0 picks a free port)")
        self._pick_ports()
        if log_file is None:
            fd, log_file = tempfile.mkstemp(prefix="tritonserver-", suffix=".log")
            os.close(fd)
        self.log_path = Path(log_file)
        self.log_verbose = log_verbose
        self.startup_timeout = startup_timeout
        self.exit_timeout = exit_timeout
        self.extra_args = list(extra_args)
        self.child: ChildProcess | None = None

    def _pick_ports(self) -> None:
        """Requested ports as given (distinct, checked in ``__init__``); a free port for each 0, all three distinct."""
        while True:
            ports = [port or free_port() for port in self._requested_ports]
            if len(set(ports)) == 3:
                self.http_port, self.grpc_port, self.metrics_port = ports
                return

    # -- addresses -------------------------------------------------------------------------------
    @property
    def http_address(self) -> str:
        """``127.0.0.1:PORT``: what ``tritonclient.http.InferenceServerClient(url=...)`` takes (no scheme)."""
        return f"{HOST}:{self.http_port}"

    @property
    def http_url(self) -> str:
        """``http://127.0.0.1:PORT``: the KServe v2 HTTP endpoint, for httpx/requests."""
        return f"http://{self.http_address}"

    @property
    def grpc_url(self) -> str:
        """``127.0.0.1:PORT``: what ``tritonclient.grpc.InferenceServerClient(url=...)`` takes."""
        return f"{HOST}:{self.grpc_port}"

    @property
    def metrics_url(self) -> str:
        """``http://127.0.0.1:PORT/metrics``: Prometheus metrics."""
        return f"http://{HOST}:{self.metrics_port}/metrics"

    def startup_models(self) -> list[str]:
        """The models loaded at start-up: ``models``, or every model folder of the repository."""
        if self.models is not None:
            return list(self.models)
        if isinstance(self.repository, str):
            return ["*"]  # an s3:// repository: every model in it
        return repository_models(self.repository) if self.repository.is_dir() else []

    @property
    def process(self) -> subprocess.Popen | None:
        """The running server's process (None when stopped)."""
        return self.child.process if self.child else None

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process else None

    # -- lifecycle -------------------------------------------------------------------------------
    def command(self) -> tuple[list[str], dict[str, str]]:
        """The tritonserver command line and environment (prepares the install on first use)."""
        if self.tritonserver is None:
            source = pytriton_root()
            lib_dirs = [source.parent.parent / "nvidia_pytriton.libs"]
        else:
            if not self.tritonserver.is_file():
                raise TritonNotFound(f"--tritonserver {self.tritonserver} is not a file")
            source, lib_dirs = self.tritonserver.resolve().parent.parent, []
        root = prepared_install(source)
        binary = root / "bin" / "tritonserver" if self.tritonserver is None else self.tritonserver.resolve()
        if isinstance(self.repository, Path) and not self.repository.is_dir():
            raise TritonStartError(f"model repository {self.repository} does not exist; run `make export` first")
        cmd = [str(binary), f"--model-repository={self.repository}", f"--backend-directory={root / 'backends'}",
               f"--http-address={HOST}", f"--grpc-address={HOST}", f"--metrics-address={HOST}",
               f"--http-port={self.http_port}", f"--grpc-port={self.grpc_port}",
               f"--metrics-port={self.metrics_port}", "--allow-gpu-metrics=false",
               "--disable-auto-complete-config", "--model-control-mode=explicit",
               "--metrics-config=summary_latencies=true", f"--log-verbose={self.log_verbose}",
               f"--exit-timeout-secs={self.exit_timeout}"]
        if (root / "caches").is_dir():
            cmd.append(f"--cache-directory={root / 'caches'}")
        cmd += [f"--load-model={m}" for m in self.startup_models()]
        return cmd + self.extra_args, server_environment(lib_dirs)

    def start(self, wait: bool = True, attempts: int = 3) -> TritonServer:
        """Start the server (in its own process group) and, by default, wait until it is ready.

        A free port can be taken by someone else before the server binds it: if start-up fails with
        "already in use" on ports picked here, it retries on new ones (up to ``attempts`` starts).
        """
        if self.process is not None and self.process.poll() is None:
            raise TritonStartError(f"tritonserver is already running (pid {self.process.pid})")
        for attempt in range(1, attempts + 1):
            cmd, env = self.command()
            log.info("starting tritonserver on %s (http), %s (grpc); log %s", self.http_address, self.grpc_url,
                     self.log_path)
            self.child = ChildProcess("tritonserver", cmd, self.log_path, env=env).start()
            if not wait:
                return self
            try:
                self.wait_ready()
                return self
            except TritonStartError as e:
                self.stop()
                port_taken = "already in use" in str(e) and 0 in self._requested_ports
                if not port_taken or attempt == attempts:
                    raise
                log.warning("a port was taken before tritonserver bound it; retrying on new ports")
                self._pick_ports()
            except BaseException:
                self.stop()
                raise
        raise AssertionError("unreachable")

    def is_ready(self, models: Sequence[str] = ()) -> bool:
        """The server (and each of ``models``) answers ready on HTTP."""
        paths = ["/v2/health/ready"] + [f"/v2/models/{m}/ready" for m in models]
        return all(http_ok(self.http_url + path) for path in paths)

    def wait_ready(self, timeout: float | None = None, models: Sequence[str] | None = None) -> None:
        """Block until ready; raise TritonStartError with the log's tail if it exits or times out."""
        timeout = self.startup_timeout if timeout is None else timeout
        models = [m for m in self.startup_models() if m != "*"] if models is None else list(models)
        if self.child is None:
            raise TritonStartError("tritonserver was never started; call start() first")
        try:
            self.child.wait_until(lambda: self.is_ready(models), timeout, tail=self.log_tail)
        except StartError as e:
            raise TritonStartError(str(e)) from None

    def stop(self, timeout: float | None = None) -> int | None:
        """SIGTERM the server, wait ``timeout`` s (default exit_timeout + 10), then SIGKILL its process group; return its exit code."""
        child, self.child = self.child, None
        if child is None:
            return None
        timeout = self.exit_timeout + 10 if timeout is None else timeout
        return child.stop(timeout)  # the server and any stub it left behind: the whole process group

    def kill(self) -> int | None:
        """SIGKILL the server and its stubs at once, as a crash would; ``start()`` brings it back on the same ports."""
        child, self.child = self.child, None
        return child.kill() if child else None

    def log_tail(self, lines: int = 25) -> str:
        """The log's error lines (``E1123 ...``), then its last ``lines`` lines, without the option tables."""
        try:
            text = self.log_path.read_text(errors="replace").splitlines()
        except OSError:
            return "(no log)"
        errors = [line for line in text if re.match(r"^E\d{4} ", line)]
        tail = [line for line in text if line.strip() and not line.startswith(("|", "+"))][-lines:]
        return "\n".join(([*errors, "..."] if errors else []) + tail)

    def __enter__(self) -> TritonServer:
        return self.start() if self.process is None else self

    def __exit__(self, *exc) -> None:
        self.stop()

    def __repr__(self) -> str:
        return f"TritonServer({str(self.repository)!r}, http={self.http_address}, grpc={self.grpc_url}, pid={self.pid})"
