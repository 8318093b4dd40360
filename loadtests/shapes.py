"""Load shapes (``LoadTestShape``): users rising in steps, or a spike, over ``--run-time``.

Add this file to Locust's ``-f`` to use it (``loadtests.run`` does when ``--shape`` is not ``none``)::

    locust -f loadtests/locustfile.py,loadtests/shapes.py --shape spike -u 10 -t 60s ...

``--users`` is the base: ``steps`` climbs to it in ``--steps`` equal steps, ``spike`` holds it and
multiplies it by ``--spike-multiplier`` between ``--spike-start`` and ``--spike-start + --spike-length``
(fractions of the run time). In open-loop runs the users are arrival generators, so the arrival rate
follows the same shape. The profiles are plain functions of time (``loadtests.profiles``), tested without Locust.
"""

from __future__ import annotations

from locust import LoadTestShape

from loadtests.profiles import spike_profile, steps_profile


class ConfiguredShape(LoadTestShape):
    """The shape named by ``--shape`` (steps or spike), scaled by ``--users`` and ``--run-time``."""

    use_common_options = True

    def tick(self) -> tuple[int, float] | None:
        opts = self.runner.environment.parsed_options
        t, users, run_time = self.get_run_time(), opts.num_users or 1, float(opts.run_time or 60)
        if opts.shape == "steps":
            count = steps_profile(t, users, run_time, opts.steps)
        elif opts.shape == "spike":
            count = spike_profile(t, users, run_time, opts.spike_multiplier, opts.spike_start, opts.spike_length)
        else:
            count = users if t < run_time else None
        if count is None:
            return None
        # Spawn fast enough that a step or spike is reached within about a second.
        return count, float(max(opts.spawn_rate or 0, count))
