"""Weights into MLX: GGUF and Hugging Face generators, process verifiers."""

from .gguf import convert_gguf, load_gguf
from .hf import convert_hf
from .output import ConversionError, OutputExistsError
from .verifiers import VERIFIER_KINDS, convert_verifier

__all__ = [
    "VERIFIER_KINDS",
    "ConversionError",
    "OutputExistsError",
    "convert_gguf",
    "convert_hf",
    "convert_verifier",
    "load_gguf",
]
