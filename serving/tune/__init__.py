"""``python -m serving tune``: search serving configs on the real tritonserver, publish the winner as a new version.

- ``serving.tune.search``: candidates, the objective, hill-climb and brute force (no server);
- ``serving.tune.trial``: one trial (config override on load, Locust ramp, exact latencies);
- ``serving.tune.run``: the whole tuning run; ``serving.tune.report``: JSON, Markdown, PNG;
- ``serving.tune.config`` / ``serving.tune.cli``: the settings and the command line.
"""
