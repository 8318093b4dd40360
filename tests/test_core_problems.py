"""tunestack.problems: every problem named, one a line, in the stage's own exception; nothing when none."""

from __future__ import annotations

import pytest

from tunestack.problems import raise_problems


class StageError(Exception):
    """A stage's own error."""


def test_every_problem_is_named_once_in_the_stage_error():
    with pytest.raises(StageError) as e:
        raise_problems(["port must be > 0, got -1", "name '' must not be empty"], StageError, "demo config")
    assert str(e.value) == "invalid demo config:\n  - port must be > 0, got -1\n  - name '' must not be empty"


def test_no_problem_raises_nothing():
    assert raise_problems([], StageError, "demo config") is None
