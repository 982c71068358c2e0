"""Plain decoding speed of the registry's models per weight variant (float32, bfloat16, float16,
q4, q8), as ratios to SmolLM2 float32 measured in the same run.

Each variant is pulled (downloaded and converted once) into the cache. Tokens/s is single-stream
greedy decoding with mlx-lm's ``generate_step`` after a chat prompt, EOS ignored, timed from the
first generated token (prompt processing excluded). Repeats are interleaved across variants so a
change in machine load hits every variant alike; the table gives the median and the spread.
"""

from __future__ import annotations

import statistics
import time

from ..models import DEFAULT_MODEL, REGISTRY, VARIANTS, model_dir, pull
from .report import Report, markdown_table

PROMPT = "Write is_prime(n) in Python."
REFERENCE = (DEFAULT_MODEL, "float32")
FULL = dict(models=list(REGISTRY), variants=list(VARIANTS), tokens=32, repeats=3)
QUICK = dict(models=[DEFAULT_MODEL], variants=["float32", "q4"], tokens=8, repeats=1)


def add_args(p) -> None:
    p.add_argument(
        "--models",
        nargs="+",
        default=None,
        choices=list(REGISTRY),
        help=f"registry names (default: all; quick: {DEFAULT_MODEL})",
    )
    p.add_argument(
        "--variants",
        nargs="+",
        default=None,
        choices=list(VARIANTS),
        help="weight variants (default: all)",
    )
    p.add_argument("--tokens", type=int, default=None, help="tokens decoded per measurement")
    p.add_argument("--repeats", type=int, default=None, help="measurements per variant")


def decode_tps(model, prompt: list[int], tokens: int) -> float:
    """Greedy tokens/s after the first token (prompt processing excluded), EOS ignored."""
    import mlx.core as mx
    from mlx_lm.generate import generate_step

    start, n = None, 0
    for _ in generate_step(mx.array(prompt), model, max_tokens=tokens + 1):
        if start is None:
            start = time.perf_counter()
        else:
            n += 1
    return n / (time.perf_counter() - start)


def _weights(config: dict) -> str:
    q = config.get("quantization")
    if not q:
        return config.get("torch_dtype", "?")
    other = sorted({v["bits"] for k, v in q.items() if isinstance(v, dict)} - {q["bits"]})
    extra = f" (+{'/'.join(map(str, other))}-bit layers)" if other else ""
    return f"{q['bits']}-bit, group {q['group_size']}{extra}"


def run(args) -> None:
    import json

    from ..generate import encode_prompt, load

    cfg = dict(QUICK if args.quick else FULL)
    for k in ("models", "variants", "tokens", "repeats"):
        if getattr(args, k) is not None:
            cfg[k] = getattr(args, k)
    pairs = [(m, v) for m in cfg["models"] for v in cfg["variants"]]
    if REFERENCE not in pairs:
        pairs.insert(0, REFERENCE)

    loaded = {}
    for name, variant in pairs:  # one conversion at a time
        folder = pull(name, variant=variant)
        model, tok = load(str(folder))
        prompt = encode_prompt(tok, PROMPT)
        decode_tps(model, prompt, 2)  # warm-up
        loaded[name, variant] = (model, prompt, folder)

    speeds = {p: [] for p in pairs}
    for _ in range(cfg["repeats"]):
        for p in pairs:
            model, prompt, _ = loaded[p]
            speeds[p].append(decode_tps(model, prompt, cfg["tokens"]))

    ref = statistics.median(speeds[REFERENCE])
    rows = []
    for (name, variant), xs in speeds.items():
        folder = loaded[name, variant][2]
        config = json.loads((folder / "config.json").read_text())
        size = sum(f.stat().st_size for f in folder.glob("*.safetensors"))
        med = statistics.median(xs)
        rows.append(
            {
                "model": name,
                "variant": variant,
                "weights": _weights(config),
                "size MiB": round(size / 2**20),
                "tok/s": med,
                "min": min(xs),
                "max": max(xs),
                "ratio": med / ref,
            }
        )
    rep = Report(task=args.task, command=args.command, config=cfg)
    rep.rows = rows
    rep.summary = {f"{r['model']} {r['variant']}": r["ratio"] for r in rows}
    rep.add_section(
        "Plain decoding tokens/s (ratio to SmolLM2 float32 in this run)",
        markdown_table(
            rows,
            ["model", "variant", "weights", "size MiB", "tok/s", "min", "max", "ratio"],
            digits=2,
        )
        + f"\nFolders: {', '.join(str(model_dir(REGISTRY[m], v)) for m, v in pairs)}\n",
    )
    rep.write(args.out)
