"""``python -m workflows tune``: search serving configs on the real tritonserver, publish the winner as a new version.

- ``workflows.tune.search``: candidates, the objective, hill-climb and brute force (no server);
- ``workflows.tune.trial``: one trial (config override on load, Locust ramp, exact latencies);
- ``workflows.tune.run``: the whole tuning run; ``workflows.tune.tune_report``: JSON, Markdown, PNG;
- ``workflows.tune.config`` / ``workflows.tune.cli``: the settings and the command line.
"""
