"""tunestack's core: what every stage shares and none of them owns.

- ``tunestack.names``: shared literal names (ports, the router timeout, file names), each defined once.
- ``tunestack.layout``: ``RunLayout``, every folder and file of a run (``runs/NAME/adapter/``, ``merged/``, ...).
- ``tunestack.configfile``: one YAML/TOML/JSON/conf config-file loader whose errors name the file.
- ``tunestack.cli``: one dataclass -> command-line helper (jsonargparse) with ``--config FILE``, and one
  declaration of a command's subcommands (``Commands``).
- ``tunestack.bench``: the bench harness: alternating phases, exact figures in one schema, one report writer.
- ``tunestack.problems``: ``raise_problems``, the one way a config raises every problem it collected, at once.
- ``tunestack.procs``: child processes in their own process group: start, wait until ready, stop; ``free_port``.
- ``tunestack.files``: content hashes and folders that appear whole or not at all (every stage's outputs).
- ``tunestack.tracking``: MLflow runs for training, export and load tests, linked through provenance.

The stages (training -> export -> serving -> loadtests -> deploy) import from here, never the reverse.
"""
