"""`mlx-vgb convert`: GGUF, Hugging Face or verifier checkpoints -> MLX folders.

mlx-vgb convert --gguf model.gguf --mlx-path out/
mlx-vgb convert --hf-path HuggingFaceTB/SmolLM2-360M-Instruct --mlx-path out/ -q --q-bits 4
mlx-vgb convert --verifier-kind qwen-prm --verifier-path Qwen2.5-Math-PRM-7B/ --mlx-path prm/
mlx-vgb convert --default-model      # fetch and convert the registry's default model (cache)
"""

import argparse
import sys

from ..errors import VGBError
from .gguf import DEFAULT_DTYPE as GGUF_DTYPE
from .gguf import DEFAULT_Q_BITS
from .output import ConversionError
from .verifiers import VERIFIER_KINDS

DEFAULT_MLX_PATH = "mlx_model"


def setup_arg_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mlx-vgb convert",
        description="Convert GGUF / Hugging Face generators and process verifiers to MLX.",
    )
    src = parser.add_mutually_exclusive_group(required=True)
    src.add_argument(
        "--gguf",
        help="GGUF file (llama, qwen2, qwen3, gemma3; Q4_0, Q4_1, Q8_0 kept quantized, the "
        "other types dequantized, then re-quantized to --q-bits on Apple silicon).",
    )
    src.add_argument("--hf-path", "--model", help="Hugging Face repo id or local folder.")
    src.add_argument(
        "--verifier-kind",
        choices=VERIFIER_KINDS,
        help="Convert a verifier checkpoint (given by --verifier-path).",
    )
    src.add_argument(
        "--default-model",
        action="store_true",
        help="Fetch and convert the registry's default model (mlx-vgb models) into the cache and "
        "print its folder.",
    )
    parser.add_argument("--mlx-path", default=DEFAULT_MLX_PATH, help="Output folder.")
    parser.add_argument("--force", action="store_true", help="Replace an existing output folder.")
    parser.add_argument(
        "--dtype",
        choices=("float16", "bfloat16", "float32"),
        default=None,
        help=f"dtype of unquantized weights (GGUF default here: {GGUF_DTYPE}).",
    )

    g = parser.add_argument_group("GGUF")
    g.add_argument("--tokenizer-path", help="Folder with tokenizer.json, if the GGUF lacks one.")

    h = parser.add_argument_group("Hugging Face (mlx_lm.convert flags; also PRM backbones)")
    h.add_argument("-q", "--quantize", action="store_true", help="Quantize the weights.")
    h.add_argument(
        "--q-bits",
        type=int,
        default=None,
        help="Bits per weight (GGUF: re-quantize the tensors MLX cannot keep in their GGML "
        f"format; default here: {DEFAULT_Q_BITS or 'none, cast to --dtype'}).",
    )
    h.add_argument("--q-group-size", type=int, default=None, help="Quantization group size.")
    h.add_argument("--q-mode", default="affine", choices=["affine", "mxfp4", "nvfp4", "mxfp8"])
    h.add_argument(
        "-d",
        "--dequantize",
        action="store_true",
        help="Dequantize a quantized model (GGUF: Q4/Q8 weights to --dtype too).",
    )
    h.add_argument("--revision", default=None, help="Hub revision.")
    h.add_argument("--trust-remote-code", action="store_true")

    v = parser.add_argument_group("verifiers")
    v.add_argument("--verifier-path", help="PRM folder, or value-head safetensors file.")
    v.add_argument(
        "--step-token",
        default=None,
        help="Step separator the score is read at (PRM defaults: '\\n', '<extra_0>').",
    )
    v.add_argument(
        "--backbone-path",
        default=None,
        help="value-head: mlx-lm folder whose hidden states feed the head "
        "(default: the generator's own).",
    )
    v.add_argument("--activation", default="relu", choices=("relu", "gelu", "tanh"))
    v.add_argument("--output", default="sigmoid", help="sigmoid | identity | softmax:K")
    v.add_argument("--pooling", default="last", choices=("last", "mean"))
    return parser


def run(args: argparse.Namespace) -> str:
    if args.default_model:
        from ..models import default_model_path

        return str(default_model_path())
    if args.gguf:
        from .gguf import DEFAULT_DTYPE, convert_gguf

        return str(
            convert_gguf(
                args.gguf,
                args.mlx_path,
                dtype=args.dtype or DEFAULT_DTYPE,
                tokenizer_path=args.tokenizer_path,
                force=args.force,
                dequantize=args.dequantize,
                q_bits=args.q_bits if args.q_bits is not None else DEFAULT_Q_BITS,
            )
        )
    if args.hf_path:
        from .hf import convert_hf

        return str(
            convert_hf(
                args.hf_path,
                args.mlx_path,
                quantize=args.quantize,
                q_bits=args.q_bits,
                q_group_size=args.q_group_size,
                q_mode=args.q_mode,
                dtype=args.dtype,
                dequantize=args.dequantize,
                revision=args.revision,
                trust_remote_code=args.trust_remote_code,
                force=args.force,
            )
        )
    from .verifiers import convert_verifier

    if not args.verifier_path:
        raise ConversionError("--verifier-kind needs --verifier-path (the checkpoint).")
    return str(
        convert_verifier(
            args.verifier_kind,
            args.verifier_path,
            args.mlx_path,
            step_token=args.step_token,
            backbone_path=args.backbone_path,
            activation=args.activation,
            output=args.output,
            pooling=args.pooling,
            quantize=args.quantize,
            q_bits=args.q_bits,
            q_group_size=args.q_group_size,
            dtype=args.dtype,
            force=args.force,
        )
    )


def main(argv: list[str] | None = None) -> None:
    parser = setup_arg_parser()
    args = parser.parse_args(argv)
    try:
        out = run(args)
    except VGBError as e:  # ConversionError, and the registry's DownloadError
        print(f"mlx-vgb convert: error: {e}", file=sys.stderr)
        sys.exit(2)
    print(out)


if __name__ == "__main__":
    main()
