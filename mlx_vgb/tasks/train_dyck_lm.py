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

Bigger LMs (issue #16's stage B: 4 layers x 256 here, 6 x 512 as the precursor) train for hours
on a CPU: ``--checkpoint-every N`` writes ``OUT.ckpt/`` (weights, optimizer state, the data
stream's RNG state) every N steps, a rerun of the same command resumes from it (the result
equals an uninterrupted run), and ``--time-budget S`` stops at the first checkpoint after S
seconds (exit status 3, marked unfinished). ``--eval-samples N`` measures validity after
training: N strings sampled from <bos> alone (in distribution) and N completions of
out-of-distribution prompts, temperature 1, in ``training.json``::

    python -m mlx_vgb.tasks.train_dyck_lm --stage lm --out results/dyck_stageb/lm \
        --layers 4 --hidden-size 256 --heads 4 --intermediate-size 1024 --optimizer adamw \
        --lr 3e-4 --batch-size 64 --steps 4688 --checkpoint-every 200 --eval-samples 2000
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from functools import partial
from pathlib import Path

import mlx.core as mx
import mlx.optimizers as optim
import numpy as np
from mlx import nn
from mlx.utils import tree_flatten, tree_unflatten
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


class Unfinished(Exception):
    """Training stopped at a checkpoint (``time_budget`` or ``stop_after``): rerun to resume."""

    def __init__(self, step: int, steps: int):
        super().__init__(f"stopped at step {step} of {steps}")
        self.step, self.steps = step, steps


def _ckpt_files(ckpt: Path) -> tuple[Path, Path, Path]:
    return ckpt / "weights.safetensors", ckpt / "optimizer.safetensors", ckpt / "state.json"


def save_checkpoint(ckpt: Path, model, opt, rng, step: int, losses: list, config: dict) -> None:
    """Write the checkpoint to a temp folder, then swap it in (never half-written)."""
    tmp = ckpt.with_name(ckpt.name + ".tmp")
    tmp.mkdir(parents=True, exist_ok=True)
    w, o, st = _ckpt_files(tmp)
    mx.save_safetensors(str(w), dict(tree_flatten(model.parameters())))
    mx.save_safetensors(str(o), dict(tree_flatten(opt.state)))
    state = {"step": step, "losses": losses, "rng": rng.bit_generator.state, "config": config}
    st.write_text(json.dumps(state))
    old = ckpt.with_name(ckpt.name + ".old")
    if ckpt.exists():
        os.replace(ckpt, old)
    os.replace(tmp, ckpt)
    if old.exists():
        for f in old.iterdir():
            f.unlink()
        old.rmdir()


def train_lm(
    args: llama.ModelArgs,
    *,
    steps: int = DEFAULT_STEPS,
    batch: int = DEFAULT_LM_BATCH,
    lr: float = DEFAULT_LR,
    warmup: int = DEFAULT_WARMUP,
    seed: int = DEFAULT_SEED,
    optimizer: str = "adam",
    weight_decay: float = 0.01,
    checkpoint: str | Path | None = None,
    checkpoint_every: int = 0,
    time_budget: float | None = None,
    stop_after: int | None = None,
    log_every: int = 50,
    log=print,
) -> tuple[llama.Model, list[float]]:
    """Next-token cross-entropy on fresh Dyck strings; Adam (or AdamW) with warmup + cosine
    decay. With ``checkpoint`` (a folder) and ``checkpoint_every``, resumes from the folder
    when it holds a run of the same configuration, and raises ``Unfinished`` after saving once
    ``time_budget`` seconds have passed (or at step ``stop_after``)."""
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
    if optimizer == "adamw":
        opt = optim.AdamW(learning_rate=schedule, weight_decay=weight_decay)
    elif optimizer == "adam":
        opt = optim.Adam(learning_rate=schedule)
    else:
        raise ValueError(f"unknown optimizer {optimizer!r}: use adam or adamw")
    config = {
        "model": {k: v for k, v in vars(args).items() if isinstance(v, (int, float, str, bool))},
        "steps": steps,
        "batch": batch,
        "lr": lr,
        "warmup": warmup,
        "seed": seed,
        "optimizer": optimizer,
        "weight_decay": weight_decay if optimizer == "adamw" else None,
    }
    ckpt = Path(checkpoint) if checkpoint is not None else None
    start, losses = 0, []
    opt.init(model.trainable_parameters())
    if ckpt is not None and _ckpt_files(ckpt)[2].exists():
        w, o, st = _ckpt_files(ckpt)
        state = json.loads(st.read_text())
        if state["config"] != config:
            raise ValueError(
                f"{ckpt} holds a run of another configuration ({state['config']}); "
                "delete it or pass the same options to resume"
            )
        model.load_weights(list(mx.load(str(w)).items()))
        opt.state = tree_unflatten(list(mx.load(str(o)).items()))
        rng.bit_generator.state = state["rng"]
        start, losses = int(state["step"]), list(state["losses"])
        mx.eval(model.parameters(), opt.state)
        if log:
            log(f"resumed {ckpt} at step {start}/{steps}")

    def loss_fn(m, x):
        logits = m(x[:, :-1])
        return nn.losses.cross_entropy(logits, x[:, 1:]).mean()

    state = [model.state, opt.state]

    @partial(mx.compile, inputs=state, outputs=state)
    def step(x):
        loss, grads = nn.value_and_grad(model, loss_fn)(model, x)
        opt.update(model, grads)
        return loss

    t0 = time.perf_counter()
    for i in range(start, steps):
        loss = step(training_batch(rng, batch))
        mx.eval(state)
        losses.append(loss.item())
        if log and ((i + 1) % log_every == 0 or i + 1 == steps):
            recent = float(np.mean(losses[-log_every:]))
            log(f"step {i + 1}/{steps}  loss {recent:.4f}  {time.perf_counter() - t0:.0f}s")
        if ckpt is not None and checkpoint_every and (i + 1) % checkpoint_every == 0:
            if i + 1 < steps:
                save_checkpoint(ckpt, model, opt, rng, i + 1, losses, config)
                late = time_budget is not None and time.perf_counter() - t0 > time_budget
                if late or (stop_after is not None and i + 1 >= stop_after):
                    raise Unfinished(i + 1, steps)
    return model, losses


def sample_validity(model, n: int, seed: int, prompts: list[dict] | None = None, batch: int = 500):
    """Fraction of ``n`` samples at temperature 1 that are valid Dyck words of LENGTH: strings
    from <bos> alone (``prompts`` None), else completions of ``prompts`` (cycled). Each row
    stops at its first <eos>; the whole forward is recomputed each token (34 positions)."""
    key = mx.random.key(seed)
    ok = total = 0
    todo = (
        [()] * n
        if prompts is None
        else [tuple(dyck.encode(prompts[i % len(prompts)]["prompt"])) for i in range(n)]
    )
    by_len: dict[int, list[tuple]] = {}
    for p in todo:
        by_len.setdefault(len(p), []).append(p)
    for k, group in sorted(by_len.items()):
        for b in range(0, len(group), batch):
            rows = group[b : b + batch]
            x = mx.array([[dyck.BOS, *p] for p in rows], dtype=mx.int32)
            done = np.zeros(len(rows), dtype=bool)
            for _ in range(dyck.LENGTH - k + 1):
                key, sub = mx.random.split(key)
                nxt = mx.random.categorical(model(x)[:, -1, :], key=sub).astype(mx.int32)
                x = mx.concatenate([x, nxt[:, None]], axis=1)
                done |= np.array(nxt) == dyck.EOS
                if done.all():
                    break
            for p, row in zip(rows, np.array(x)[:, 1 + k :].tolist()):
                comp = row[: row.index(dyck.EOS) + 1] if dyck.EOS in row else row
                ok += dyck.is_valid_completion(p, comp)
                total += 1
    return ok / max(total, 1)


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
    p.add_argument("--optimizer", choices=("adam", "adamw"), default="adam")
    p.add_argument("--weight-decay", type=float, default=0.01, help="AdamW's")
    p.add_argument(
        "--checkpoint-every",
        type=int,
        default=0,
        help="steps between checkpoints in OUT.ckpt/ (a rerun resumes; 0: none)",
    )
    p.add_argument(
        "--time-budget",
        type=float,
        default=None,
        help="seconds: stop at the first checkpoint after this (exit 3, unfinished)",
    )
    p.add_argument(
        "--eval-samples",
        type=int,
        default=0,
        help="after training: validity of this many samples, in distribution and OOD",
    )
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
    ckpt = Path(str(Path(a.out)) + ".ckpt") if a.checkpoint_every else None
    try:
        model, losses = train_lm(
            args,
            steps=a.steps,
            batch=a.batch_size,
            lr=a.lr,
            warmup=a.warmup,
            seed=a.seed,
            optimizer=a.optimizer,
            weight_decay=a.weight_decay,
            checkpoint=ckpt,
            checkpoint_every=a.checkpoint_every,
            time_budget=a.time_budget,
        )
    except Unfinished as e:
        print(f"UNFINISHED: {e}; checkpoint in {ckpt}: rerun the same command to resume")
        sys.exit(3)
    except ValueError as e:
        sys.exit(f"error: {e}")
    meta = {
        "command": "python -m mlx_vgb.tasks.train_dyck_lm "
        + " ".join(
            f"--{k.replace('_', '-')} {v}"
            for k, v in vars(a).items()
            if "verifier" not in k
            and k not in ("stage", "work_dir", "time_budget")
            and v is not None
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
    if a.eval_samples:
        prompts = dyck.make_prompts(a.eval_samples, 2, dyck.OOD_TYPE_PROBS, id_prefix="eval")
        meta["validity"] = {
            "samples": a.eval_samples,
            "in_distribution": sample_validity(model, a.eval_samples, seed=1),
            "ood_prompts": sample_validity(model, a.eval_samples, seed=2, prompts=prompts),
            "ood_prompt_seed": 2,
        }
        print(f"validity: {meta['validity']}")
    save_lm(model, a.out, meta)
    if ckpt is not None and ckpt.exists():  # the finished model replaces its checkpoint
        for f in ckpt.iterdir():
            f.unlink()
        ckpt.rmdir()
    print(f"saved {a.out}  (final loss {meta['final_loss']:.4f}, {meta['train_s']:.0f}s)")


if __name__ == "__main__":
    main()
