"""The training stage's exceptions: catch ``TrainingError`` for any of them."""


class TrainingError(Exception):
    """Base class of every error the training stage raises on purpose."""


class ConfigError(TrainingError):
    """The training configuration (or a CLI flag) is invalid."""


class DataError(TrainingError):
    """The data set is missing, malformed, empty, or its labels do not fit the task."""


class ModelError(TrainingError):
    """The base model folder is missing or cannot be fine-tuned with LoRA."""
