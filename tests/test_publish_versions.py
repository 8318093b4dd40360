"""Version listing and the version policy, each written once (export.publish / export.triton_config)."""

from __future__ import annotations

from tritonclient.grpc import model_config_pb2 as mc

from export.publish import existing_versions
from export.triton_config import policy_versions, version_policy


def test_existing_versions_are_numbered_folders_in_order(tmp_path):
    assert existing_versions(tmp_path / "missing") == []
    for name in ("10", "2", "1", ".staging-3", "notes"):
        (tmp_path / name).mkdir()
    (tmp_path / "7").write_text("a file, not a version")
    assert existing_versions(tmp_path) == [1, 2, 10]


def test_policy_versions_follow_triton():
    on_disk = [3, 1, 2, 5]
    assert policy_versions(version_policy(2), on_disk) == [3, 5]
    assert policy_versions(version_policy(0), on_disk) == [1, 2, 3, 5]
    assert policy_versions(mc.ModelVersionPolicy(specific=mc.ModelVersionPolicy.Specific(versions=[2, 9])),
                           on_disk) == [2]
    assert policy_versions(mc.ModelVersionPolicy(), on_disk) == [5]  # unset: the newest one
    assert policy_versions(version_policy(3), []) == []
