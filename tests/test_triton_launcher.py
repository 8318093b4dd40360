"""The Triton launcher's settings, checked before anything starts: its three ports."""

from __future__ import annotations

import pytest

from serving.errors import TritonStartError
from serving.triton import TritonServer


def test_triton_refuses_equal_explicit_ports(tmp_path):
    """Two equal explicit ports are an error that names them; a port left at 0 gets a free, distinct one."""
    with pytest.raises(TritonStartError, match="http_port=8000, grpc_port=8000 and metrics_port=0 must be distinct"):
        TritonServer(tmp_path, http_port=8000, grpc_port=8000)
    server = TritonServer(tmp_path, http_port=8000, grpc_port=8001)  # distinct explicit ports, a free third one
    assert (server.http_port, server.grpc_port) == (8000, 8001) and server.metrics_port not in (0, 8000, 8001)
