"""mlx-vgb: verifier-guided backtracking (VGB) for language models on MLX.

Samplers (``VGB``, ``ActionLevelRS`` and the forward-only baselines) are written against two
protocols, ``LanguageModel`` and ``Verifier`` (``mlx_vgb.protocols``).
"""

__version__ = "0.1.0"

from ._blas import preload_openblas, tune_malloc  # noqa: E402 - before anything imports mlx

preload_openblas()
tune_malloc()

from .actions import Blocks, Lines, Tokens, make_actions
from .baselines import BestOfN, BlockBestOfN, BlockRS, OutcomeLevelRS, Plain
from .children import CHOICES, Candidates, Enumerate, Rejection, SelfNormalized, make_choice
from .errors import (
    ConfigError,
    DeadEndError,
    EmptyPromptError,
    LanguageModelError,
    VerifierError,
    VGBError,
)
from .generate import GenerationResponse, generate, load, stream_generate
from .protocols import BaseLanguageModel, BaseVerifier, FunctionVerifier, LanguageModel, Verifier
from .registry import SAMPLERS, make_sampler, make_verifier, parse_verifier
from .results import Append, Backtrack, Done, SampleResult, SampleStats, Trace
from .run import Run
from .vgb import VGB, ActionLevelRS, Walk

__all__ = [
    "VGB",
    "ActionLevelRS",
    "Walk",
    "Plain",
    "OutcomeLevelRS",
    "BestOfN",
    "BlockBestOfN",
    "BlockRS",
    "SAMPLERS",
    "Tokens",
    "Blocks",
    "Lines",
    "make_actions",
    "Candidates",
    "Enumerate",
    "Rejection",
    "SelfNormalized",
    "CHOICES",
    "make_choice",
    "Run",
    "LanguageModel",
    "Verifier",
    "BaseLanguageModel",
    "BaseVerifier",
    "FunctionVerifier",
    "Append",
    "Backtrack",
    "Done",
    "SampleResult",
    "SampleStats",
    "Trace",
    "VGBError",
    "ConfigError",
    "EmptyPromptError",
    "VerifierError",
    "LanguageModelError",
    "DeadEndError",
    "make_sampler",
    "make_verifier",
    "parse_verifier",
    "load",
    "generate",
    "stream_generate",
    "GenerationResponse",
]
