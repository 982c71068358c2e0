"""Train the shipped Dyck LM from scratch in MLX: a tiny llama (mlx-lm's own model class) on
Botta et al.'s Dyck strings (type probabilities 0.2 / 0.8, length 32, depth <= 12).

Regenerate the shipped LM and its value head (about 15 minutes on 2 CPU cores)::

    python -m mlx_vgb.tasks.train_dyck_lm

``--stage lm`` trains the LM only; ``--stage verifier`` trains the value head of an existing
LM: it writes ``--verifier-prompts`` out-of-distribution prompts (seed ``--verifier-seed``,
never the benchmark's) and runs ``mlx-vgb train-verifier`` on them with the built-in ``dyck``
reward (rollouts and metrics in ``--work-dir``; a re-run resumes the rollouts).

The LM folder is a normal mlx-lm model folder: ``mlx_lm.load("mlx_vgb/assets/dyck/lm")`` works.
Data are fresh strings every step (no epochs), drawn from ``numpy.random.default_rng(seed)``;
initialization uses ``mx.random.seed(seed)``: the same seed gives the same weights.
"""

from __future__ import annotations

import argparse
import json
import time
from functools import partial
from pathlib import Path

import mlx.core as mx
import mlx.optimizers as optim
import numpy as np
from mlx import nn
from mlx.utils import tree_flatten
from mlx_lm.models import llama

from . import dyck

DEFAULT_OUT = "mlx_vgb/assets/dyck/lm"
DEFAULT_HIDDEN = 64
DEFAULT_LAYERS = 2
DEFAULT_HEADS = 4
DEFAULT_INTERMEDIATE = 128
DEFAULT_STEPS = 800
DEFAULT_LM_BATCH = 64
DEFAULT_LR = 3e-3
DEFAULT_WARMUP = 50
DEFAULT_SEED = 0
DEFAULT_VERIFIER_OUT = "mlx_vgb/assets/dyck/verifier"
DEFAULT_WORK_DIR = "results/tmp/dyck-verifier-work"
DEFAULT_VERIFIER_PROMPTS = 1200
DEFAULT_VERIFIER_ROLLOUTS = 8
DEFAULT_VERIFIER_SEED = 1


def model_args(
    hidden: int = DEFAULT_HIDDEN,
    layers: int = DEFAULT_LAYERS,
    heads: int = DEFAULT_HEADS,
    intermediate: int = DEFAULT_INTERMEDIATE,
) -> llama.ModelArgs:
    return llama.ModelArgs(
        model_type="llama",
        hidden_size=hidden,
        num_hidden_layers=layers,
        intermediate_size=intermediate,
        num_attention_heads=heads,
        num_key_value_heads=heads,
        rms_norm_eps=1e-5,
        vocab_size=len(dyck.VOCAB),
        rope_theta=10000.0,
        max_position_embeddings=dyck.LENGTH + 2,
        tie_word_embeddings=True,
    )


def training_batch(rng: np.random.Generator, batch: int) -> mx.array:
    """<bos> + 32 brackets + <eos>: int32 array (batch, 34)."""
    s = dyck.sample_strings(batch, rng, dyck.TRAIN_TYPE_PROBS)
    bos = np.full((batch, 1), dyck.BOS)
    eos = np.full((batch, 1), dyck.EOS)
    return mx.array(np.concatenate([bos, s, eos], axis=1).astype(np.int32))


def train_lm(
    args: llama.ModelArgs,
    *,
    steps: int = DEFAULT_STEPS,
    batch: int = DEFAULT_LM_BATCH,
    lr: float = DEFAULT_LR,
    warmup: int = DEFAULT_WARMUP,
    seed: int = DEFAULT_SEED,
    log_every: int = 50,
    log=print,
) -> tuple[llama.Model, list[float]]:
    """Next-token cross-entropy on fresh Dyck strings; Adam with warmup + cosine decay."""
    mx.random.seed(seed)
    rng = np.random.default_rng(seed)
    model = llama.Model(args)
    mx.eval(model.parameters())
    schedule = optim.join_schedules(
        [
            optim.linear_schedule(lr / 100, lr, max(warmup, 1)),
            optim.cosine_decay(lr, max(steps - warmup, 1), lr / 20),
        ],
        [max(warmup, 1)],
    )
    opt = optim.Adam(learning_rate=schedule)

    def loss_fn(m, x):
        logits = m(x[:, :-1])
        return nn.losses.cross_entropy(logits, x[:, 1:]).mean()

    state = [model.state, opt.state]

    @partial(mx.compile, inputs=state, outputs=state)
    def step(x):
        loss, grads = nn.value_and_grad(model, loss_fn)(model, x)
        opt.update(model, grads)
        return loss

    losses, t0 = [], time.perf_counter()
    for i in range(steps):
        loss = step(training_batch(rng, batch))
        mx.eval(state)
        losses.append(loss.item())
        if log and ((i + 1) % log_every == 0 or i + 1 == steps):
            recent = float(np.mean(losses[-log_every:]))
            log(f"step {i + 1}/{steps}  loss {recent:.4f}  {time.perf_counter() - t0:.0f}s")
    return model, losses


def save_lm(model: llama.Model, out: str | Path, metadata: dict | None = None) -> Path:
    """Write an mlx-lm model folder: config.json, model.safetensors, tokenizer files."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    a = model.args
    config = {
        k: getattr(a, k)
        for k in (
            "model_type",
            "hidden_size",
            "num_hidden_layers",
            "intermediate_size",
            "num_attention_heads",
            "num_key_value_heads",
            "rms_norm_eps",
            "vocab_size",
            "rope_theta",
            "max_position_embeddings",
            "tie_word_embeddings",
        )
    }
    config.update(bos_token_id=dyck.BOS, eos_token_id=dyck.EOS, pad_token_id=dyck.PAD)
    with open(out / "config.json", "w") as f:
        json.dump(config, f, indent=2)
    weights = dict(tree_flatten(model.parameters()))
    mx.save_safetensors(str(out / "model.safetensors"), weights, metadata={"format": "mlx"})
    dyck.write_tokenizer(out)
    if metadata is not None:
        with open(out / "training.json", "w") as f:
            json.dump(metadata, f, indent=2)
    return out


def setup_arg_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--out", default=DEFAULT_OUT, help="output mlx-lm model folder")
    p.add_argument("--steps", type=int, default=DEFAULT_STEPS)
    p.add_argument("--batch-size", type=int, default=DEFAULT_LM_BATCH)
    p.add_argument("--lr", type=float, default=DEFAULT_LR)
    p.add_argument("--warmup", type=int, default=DEFAULT_WARMUP)
    p.add_argument("--hidden-size", type=int, default=DEFAULT_HIDDEN)
    p.add_argument("--layers", type=int, default=DEFAULT_LAYERS)
    p.add_argument("--heads", type=int, default=DEFAULT_HEADS)
    p.add_argument("--intermediate-size", type=int, default=DEFAULT_INTERMEDIATE)
    p.add_argument("--seed", type=int, default=DEFAULT_SEED)
    p.add_argument("--stage", choices=("all", "lm", "verifier"), default="all")
    p.add_argument("--verifier-out", default=DEFAULT_VERIFIER_OUT)
    p.add_argument("--work-dir", default=DEFAULT_WORK_DIR, help="rollouts and metrics")
    p.add_argument("--verifier-prompts", type=int, default=DEFAULT_VERIFIER_PROMPTS)
    p.add_argument("--verifier-rollouts", type=int, default=DEFAULT_VERIFIER_ROLLOUTS)
    p.add_argument("--verifier-seed", type=int, default=DEFAULT_VERIFIER_SEED)
    return p


def train_verifier_stage(a: argparse.Namespace) -> dict:
    from ..train_verifier import setup_arg_parser as tv_parser
    from ..train_verifier import train_verifier

    work = Path(a.work_dir)
    prompts = dyck.write_prompts(
        work / "prompts.jsonl",
        dyck.make_prompts(
            a.verifier_prompts, a.verifier_seed, dyck.OOD_TYPE_PROBS, id_prefix="train"
        ),
    )
    argv = [
        "--model",
        a.out,
        "--prompts",
        str(prompts),
        "--reward",
        "dyck",
        "--out",
        a.verifier_out,
        "--work-dir",
        str(work),
        "--num-rollouts",
        str(a.verifier_rollouts),
        "--seed",
        str(a.verifier_seed),
        "--force",
    ]
    return train_verifier(
        tv_parser().parse_args(argv), command="mlx-vgb train-verifier " + " ".join(argv)
    )


def main(argv=None) -> None:
    a = setup_arg_parser().parse_args(argv)
    if a.stage in ("all", "lm"):
        train_lm_stage(a)
    if a.stage in ("all", "verifier"):
        train_verifier_stage(a)


def train_lm_stage(a: argparse.Namespace) -> None:
    args = model_args(a.hidden_size, a.layers, a.heads, a.intermediate_size)
    t0 = time.perf_counter()
    model, losses = train_lm(
        args, steps=a.steps, batch=a.batch_size, lr=a.lr, warmup=a.warmup, seed=a.seed
    )
    meta = {
        "command": "python -m mlx_vgb.tasks.train_dyck_lm "
        + " ".join(
            f"--{k.replace('_', '-')} {v}"
            for k, v in vars(a).items()
            if "verifier" not in k and k not in ("stage", "work_dir")
        )
        + " --stage lm",
        "final_loss": float(np.mean(losses[-50:])),
        "train_s": time.perf_counter() - t0,
        "data": {
            "type_probs": dyck.TRAIN_TYPE_PROBS,
            "length": dyck.LENGTH,
            "max_depth": dyck.MAX_DEPTH,
        },
    }
    save_lm(model, a.out, meta)
    print(f"saved {a.out}  (final loss {meta['final_loss']:.4f}, {meta['train_s']:.0f}s)")


if __name__ == "__main__":
    main()
