"""Exceptions raised by mlx_vgb. Each message says what is wrong and what to do."""


class VGBError(Exception):
    """Base class of every mlx_vgb error."""


class ConfigError(VGBError, ValueError):
    """A sampler or model setting is out of range (horizon < 1, K < 1, lambda outside (0, 1], ...)."""


class EmptyPromptError(ConfigError):
    """The prompt has no tokens."""


class VerifierError(VGBError, ValueError):
    """A verifier returned something that is not a value: NaN, inf, negative, wrong shape, above its bound."""


class LanguageModelError(VGBError, ValueError):
    """A language model returned log-probabilities of the wrong shape or with NaN."""


class DeadEndError(VGBError):
    """Every move from the root has zero weight: no response can have a positive tilt."""
