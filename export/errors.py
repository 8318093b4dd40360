"""The export stage's exceptions: one small hierarchy, so callers catch ``ExportError``."""


class ExportError(Exception):
    """Base class of every error the export stage raises on purpose."""


class ConfigError(ExportError):
    """The export configuration (or a CLI flag) is invalid."""


class InputError(ExportError):
    """An input folder or file is missing or malformed."""


class GateError(ExportError):
    """A requested variant failed the parity gate and was not published."""


class PublishError(ExportError):
    """Publishing to the model repository failed; the repository was left as it was."""


class GenerationError(ExportError, ValueError):
    """A generation request is invalid (a sampling parameter out of range, an empty or too long prompt): the
    sender's mistake, which a server answers with a 400 naming the field and the value."""
