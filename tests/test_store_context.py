"""``async with open_store(url) as store``: opened (schema migrated) inside, closed after, also on an error."""

from __future__ import annotations

import asyncio

import pytest

from experiments.store import StoreUnavailable, open_store


def test_async_with_opens_and_closes_even_on_an_error(tmp_path):
    url = f"sqlite:///{tmp_path / 'ctx.sqlite'}"

    async def work():
        async with open_store(url) as store:
            await store.add_revision("exp", {"name": "exp"}, "file", "test", "first")
            inside = [r.revision for r in await store.revisions("exp")]
        with pytest.raises(StoreUnavailable, match="not open"):
            await store.revisions("exp")  # closed on the way out
        with pytest.raises(ValueError, match="boom"):
            async with open_store(url) as failing:
                raise ValueError("boom")
        with pytest.raises(StoreUnavailable, match="not open"):
            await failing.revisions("exp")
        async with open_store(url) as again:  # the same file, reopened: the revision is there
            return inside, [r.revision for r in await again.revisions("exp")]

    assert asyncio.run(work()) == ([1], [1])
