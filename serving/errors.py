"""The serving stage's Triton-side exceptions: one small hierarchy, so callers catch ``ServingError``."""


class ServingError(Exception):
    """Base class of every error ``serving.triton`` / ``serving.repository`` / ``serving.client`` raise."""


class TritonNotFound(ServingError):
    """No ``tritonserver`` binary (nor the python backend stub) could be found."""


class TritonStartError(ServingError):
    """tritonserver exited or did not become ready in time; the message ends with its log's tail."""


class ModelControlError(ServingError):
    """A load / unload / rollback request failed, or names a model or version the repository lacks."""


class InferenceError(ServingError):
    """Triton answered an inference request with an error (the caller's input, or the model)."""
