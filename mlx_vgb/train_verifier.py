"""`mlx-vgb train-verifier`: train a value head V^ for VGB from a generator and an outcome check.

1. Monte Carlo rollouts from pi_ref on every prompt (batched, a progress bar, appended to
   ``<work>/rollouts.jsonl`` batch by batch; a re-run resumes where an interrupted one stopped).
2. Value targets at every action boundary (``--block``) from the observed outcomes.
3. An MLP value head trained in MLX on the frozen generator's hidden states (or those of
   ``--backbone``), with a held-out split by prompt; MSE, AUC and a calibration table.
4. Saved as an mlx-vgb verifier folder (``mlx_vgb.verifier_format``), for
   ``mlx-vgb generate --verifier OUT``.

Example (the shipped Dyck head)::

    mlx-vgb train-verifier --model mlx_vgb/assets/dyck/lm --prompts prompts.jsonl \\
        --reward dyck --out mlx_vgb/assets/dyck/verifier

``--reward`` is a built-in task (``dyck``) or ``module:function``; the function is called as
``fn(prompt: str, completion: str) -> float`` in [0, 1] (the completion text excludes the final
EOS). Prompts are JSONL: ``{"id": ..., "prompt": ..., "max_tokens": ...}`` (id and max_tokens
optional).
"""

from __future__ import annotations

import argparse
import importlib
import json
import shlex
import sys
import time
from collections.abc import Callable
from pathlib import Path

from .errors import ConfigError
from .rollouts import DEFAULT_ROLLOUT_BATCH, DEFAULT_ROLLOUTS

DEFAULT_MAX_TOKENS = 64

DEFAULT_HIDDEN_DIMS = "128"
DEFAULT_EPOCHS = 30
DEFAULT_LR = 2e-3
DEFAULT_HOLDOUT = 0.2
DEFAULT_SEED = 0


def resolve_reward(spec: str) -> Callable[[str, str], float]:
    """A built-in task name (``mlx_vgb.tasks.REWARDS``) or ``module:function``."""
    from .tasks import REWARDS

    target = REWARDS.get(spec, spec)
    if ":" not in target:
        raise ConfigError(
            f"--reward {spec!r}: give a built-in task ({', '.join(REWARDS)}) or "
            "module:function (a Python function fn(prompt, completion) -> float)"
        )
    mod, fn = target.split(":", 1)
    if "" not in sys.path:
        sys.path.insert(0, "")  # user modules in the working directory
    try:
        f = getattr(importlib.import_module(mod), fn)
    except (ImportError, AttributeError) as e:
        raise ConfigError(f"--reward {spec!r}: cannot import {target} ({e})") from e
    if not callable(f):
        raise ConfigError(f"--reward {spec!r}: {target} is not callable")
    return f


def _block(text: str):
    if text == "lines":
        return text
    try:
        n = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"give a length >= 1 or 'lines', not {text!r}") from None
    if n < 1:
        raise argparse.ArgumentTypeError(f"the block length must be >= 1, got {n}")
    return n


def setup_arg_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="mlx-vgb train-verifier",
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=__doc__.split("\n\n", 1)[1],
    )
    p.add_argument(
        "--model",
        default=None,
        help="generator: an mlx-lm model folder or HF repo (default: the embedded "
        "SmolLM2-135M-Instruct)",
    )
    p.add_argument("--prompts", required=True, help="prompt set, JSONL")
    p.add_argument("--reward", required=True, help="built-in task (dyck) or module:function")
    p.add_argument("--out", required=True, help="verifier folder to write")
    p.add_argument(
        "--work-dir",
        default=None,
        help="rollouts and metrics (default: OUT.work); reuse it to resume",
    )
    p.add_argument(
        "--backbone",
        default=None,
        help="a separate mlx-lm model (same tokenizer) whose hidden states feed the "
        "head; default: the generator's own",
    )
    p.add_argument("--num-rollouts", type=int, default=DEFAULT_ROLLOUTS, help="per prompt")
    p.add_argument(
        "--max-tokens",
        type=int,
        default=DEFAULT_MAX_TOKENS,
        help="rollout length when a prompt gives no max_tokens",
    )
    p.add_argument("--temp", type=float, default=1.0, help="sampling temperature of pi_ref")
    p.add_argument(
        "--batch-size", type=int, default=DEFAULT_ROLLOUT_BATCH, help="rollouts per batched forward"
    )
    p.add_argument(
        "--block",
        type=_block,
        default=1,
        help="actions: a length L (value targets at every L-th token) or 'lines' (targets at "
        "line starts: after every token holding a newline)",
    )
    p.add_argument(
        "--stop-text",
        default=None,
        help="a rollout also ends at a token whose text holds this (default: the task's own, "
        "e.g. the closing code fence for humaneval)",
    )
    p.add_argument(
        "--rollouts-only",
        action="store_true",
        help="collect (or resume) the rollouts and stop: no head is trained",
    )
    p.add_argument("--pooling", choices=("last", "mean"), default="last")
    p.add_argument(
        "--hidden-dims",
        default=DEFAULT_HIDDEN_DIMS,
        help="comma-separated hidden widths of the MLP head ('' for linear)",
    )
    p.add_argument("--epochs", type=int, default=DEFAULT_EPOCHS)
    p.add_argument("--lr", type=float, default=DEFAULT_LR)
    p.add_argument(
        "--holdout",
        type=float,
        default=DEFAULT_HOLDOUT,
        help="fraction of prompts held out for the metrics",
    )
    p.add_argument(
        "--cv",
        type=int,
        default=0,
        metavar="K",
        help="also report K-fold cross-validated metrics by prompt (out-of-fold AUC, "
        "within-prompt AUC, Brier) of these head settings, on the training prompts",
    )
    p.add_argument(
        "--finetune-layers",
        type=int,
        default=0,
        metavar="N",
        help="a verifier of its own: train the top N layers of a copy of the generator (or "
        "of --backbone) with the head; saved as a separate model in OUT/backbone "
        "(use as --verifier model:OUT). Default 0: a head on the frozen states",
    )
    p.add_argument(
        "--finetune-epochs",
        type=int,
        default=2,
        help="epochs of the joint training (after the "
        "head's --epochs on the frozen states, its warm start)",
    )
    p.add_argument("--finetune-lr", type=float, default=1e-5, help="learning rate of the layers")
    p.add_argument("--seed", type=int, default=DEFAULT_SEED)
    p.add_argument("--force", action="store_true", help="replace an existing --out folder")
    p.add_argument("--no-progress", action="store_true")
    return p


def _load(path: str | None):
    from .generate import load  # None: the embedded default; clear errors for bad paths

    model, tokenizer = load(path)
    return model, tokenizer


def train_verifier(
    a: argparse.Namespace, log: Callable[[str], None] = print, command: str | None = None
) -> dict:
    """The whole pipeline; returns the metrics dict (also written to WORK/metrics.json).
    ``command``: the command line to record (default: this process's arguments)."""
    import numpy as np

    from .rollouts import collect_rollouts, load_prompts, read_rollouts
    from .value_training import split_by_prompt, target_features, train_head, value_targets
    from .verifier_format import (
        DEFAULT_BACKBONE_DIR,
        GENERATOR_BACKBONE,
        VerifierConfig,
        save_verifier,
    )

    out = Path(a.out)
    if out.exists() and not a.force:
        raise ConfigError(f"{out} exists; pass --force to replace it")
    work = Path(a.work_dir or f"{out}.work")
    reward = resolve_reward(a.reward)
    if a.finetune_layers:  # before any rollout or forward: refused settings fail fast
        if a.cv:
            raise ConfigError(
                "--cv with --finetune-layers is not supported (each fold would fine-tune a "
                "copy); choose the head settings with --cv on the frozen states, then fine-tune"
            )
        if a.pooling != "last":
            raise ConfigError("--finetune-layers reads the last token's state: use --pooling last")
        _finetune_source(a)
    prompts = load_prompts(a.prompts)
    model, tok = _load(a.model)
    eos = set(getattr(tok, "eos_token_ids", None) or [tok.eos_token_id])
    stop_text = a.stop_text if a.stop_text is not None else getattr(reward, "stop_text", None)
    if stop_text:
        from .vocab import tokens_containing

        stops = tokens_containing(tok, stop_text)
        if not stops and a.stop_text is not None:
            raise ConfigError(f"--stop-text {stop_text!r}: no token of this tokenizer holds it")
        if not stops:  # the task's stop spans several tokens here: rollouts end at EOS only
            log(f"note: no token holds {stop_text!r}; rollouts end at EOS or the length cap")
            stop_text = None
        eos |= stops

    def encode(text):
        return list(tok.encode(text))

    def decode(ids):
        return tok.decode(list(ids), skip_special_tokens=False)

    t0 = time.perf_counter()
    generator = str(a.model or "embedded SmolLM2")
    settings = {"model": generator, "prompts": str(a.prompts), "reward": a.reward}
    if stop_text:
        settings["stop_text"] = stop_text
    from .shards import all_rows_paths, barrier, mine, rows_path, world

    rank, size = world()  # under mlx.launch: this rank's share of the prompts
    path = rows_path(work, "rollouts", rank, size)
    elsewhere = {
        (r.prompt_id, r.index)
        for p in all_rows_paths(work, "rollouts")
        if p != path
        for r in read_rollouts(p)
    }
    run = collect_rollouts(
        model,
        mine(prompts, rank, size),
        path,
        encode=encode,
        decode=decode,
        reward=reward,
        eos_token_ids=eos,
        n=a.num_rollouts,
        seed=a.seed,
        temp=a.temp,
        max_tokens=a.max_tokens,
        batch_size=a.batch_size,
        settings=settings,
        progress=not a.no_progress,
        done_elsewhere=elsewhere,
    )
    log(
        f"rollouts: {run.total} in {run.path} ({run.computed} new, {run.skipped} resumed) "
        f"{time.perf_counter() - t0:.0f}s"
    )
    barrier(size)
    if rank != 0:  # rank 0 trains on every rank's rollouts
        return {"rank": rank, "rollouts": run.total}
    wanted = {p.id for p in prompts}
    order = {p.id: i for i, p in enumerate(prompts)}  # one order whatever the ranks were
    every = sorted(
        (r for p in all_rows_paths(work, "rollouts") for r in read_rollouts(p)),
        key=lambda r: (order.get(r.prompt_id, len(order)), r.prompt_id, r.index),
    )
    if a.rollouts_only:
        rs = [r for r in every if r.prompt_id in wanted]
        rate = float(np.mean([r.reward for r in rs])) if rs else 0.0
        log(f"rollouts only: {len(rs)} rollouts, success rate {rate:.3f}; no head trained")
        return {"rollouts": len(rs), "success_rate": rate}
    rollouts = [r for r in every if r.prompt_id in wanted]
    if a.block == "lines":
        from .vocab import newline_tokens, vocab_size_of

        lines = newline_tokens(tok, vocab_size_of(tok)).line
        targets = value_targets(rollouts, boundaries=lines)
    else:
        targets = value_targets(rollouts, block=a.block)
    backbone = model
    if a.backbone:
        backbone, btok = _load(a.backbone)
        if btok.vocab_size != tok.vocab_size or btok.encode("a b") != tok.encode("a b"):
            raise ConfigError("--backbone must share the generator's tokenizer")
    t1 = time.perf_counter()
    cache = _features_path(work, a, rollouts, targets)
    if cache.is_file():
        feats = np.load(cache)
        log(f"features: {feats.shape[0]} prefixes x {feats.shape[1]} (kept in {cache.name})")
    else:
        feats = _chunked_features(
            cache,
            lambda sub: target_features(
                backbone, rollouts, sub, pooling=a.pooling, pad_id=tok.pad_token_id or 0
            ),
            targets,
            log=log if not a.no_progress else None,
        )
        _save_features(cache, feats)
        _drop_chunks(cache)
        log(
            f"features: {feats.shape[0]} prefixes x {feats.shape[1]} "
            f"({time.perf_counter() - t1:.0f}s; kept in {cache.name})"
        )
    tr, ho = split_by_prompt(targets, a.holdout, a.seed)
    dims = [int(d) for d in a.hidden_dims.split(",") if d.strip()]
    cv = None
    if a.cv:
        from .value_training import cross_validate

        # on the training prompts only: the held-out ones stay unseen by every choice
        cv = cross_validate(
            feats[tr],
            targets.subset(tr),
            folds=a.cv,
            seed=a.seed,
            hidden_dims=dims,
            epochs=a.epochs,
            lr=a.lr,
        )
        log(
            f"{a.cv}-fold cross-validation on the training prompts: AUC {cv.auc:.3f} (within a "
            f"prompt {cv.within_auc:.3f})  Brier {cv.brier:.4f} (base rate {cv.base_rate:.3f})"
        )
    tuned = None
    if a.finetune_layers:
        tuned = _finetune(a, backbone, rollouts, targets, feats, tr, ho, dims, work, tok, log)
        res = tuned.result
    else:
        res = train_head(
            feats,
            targets,
            train_idx=tr,
            held_idx=ho,
            hidden_dims=dims,
            epochs=a.epochs,
            lr=a.lr,
            seed=a.seed,
            log=log,
        )
    metrics = {
        "rollouts": len(rollouts),
        "success_rate": float(np.mean([r.reward for r in rollouts])),
        "prefixes": len(targets),
        "train": res.train.as_dict(),
        "held_out": res.held_out.as_dict() if res.held_out else None,
        "cv": cv.as_dict() | {"folds": a.cv} if cv else None,
        "final_loss": res.losses[-1],
        "finetune": tuned.summary if tuned else None,
        "command": command or "mlx-vgb train-verifier " + shlex.join(sys.argv[1:]),
    }
    cfg = VerifierConfig(
        head=res.head.config,
        backbone=DEFAULT_BACKBONE_DIR if (a.backbone or tuned) else GENERATOR_BACKBONE,
        hidden_layer=-1,
        pooling=a.pooling,
        read_at="every_token",
        metadata={
            "trained_by": "mlx-vgb train-verifier",
            "generator": generator,
            "reward": a.reward,
            "block": a.block,
            "num_rollouts": a.num_rollouts,
            "seed": a.seed,
            "held_out": _summary(res.held_out),
            "train": _summary(res.train),
        },
    )
    if tuned:
        cfg.metadata["finetune"] = {k: tuned.summary[k] for k in ("layers", "epochs", "lr")}
        save_verifier(
            out, cfg, res.head, backbone_src=tuned.folder, move_backbone=True, force=a.force
        )
    else:
        save_verifier(out, cfg, res.head, backbone_src=a.backbone, force=a.force)
    work.mkdir(parents=True, exist_ok=True)
    (work / "metrics.json").write_text(json.dumps(metrics, indent=2))
    m = res.held_out or res.train
    log(
        f"{'held-out' if res.held_out else 'train'}: AUC {m.auc:.3f} (within a prompt "
        f"{m.within_auc:.3f})  Brier {m.brier:.4f}  "
        f"MSE vs MC mean {m.mse_mc:.4f}  ({m.n_prefixes} prefixes, {m.n_outcomes} outcomes)"
    )
    log(m.calibration_table())
    log(f"saved verifier to {out}")
    return metrics


class _Tuned:
    def __init__(self, result, summary, folder):
        self.result, self.summary, self.folder = result, summary, folder


def _finetune_source(a) -> Path:
    """The model folder whose copy is fine-tuned (its config and tokenizer are copied)."""
    from .models import resolve

    spec = a.backbone or a.model
    src = Path(resolve(spec)).expanduser()
    if not (src / "config.json").is_file():
        raise ConfigError(
            f"--finetune-layers needs a local model folder to copy ({spec!r} is not one): "
            "pass --model (or --backbone) as a folder or a registry name"
        )
    return src


def _finetune(a, backbone, rollouts, targets, feats, tr, ho, dims, work, tok, log):
    """``--finetune-layers``: the top layers of a copy (never the generator itself) trained
    with the head; the copy written as an mlx-lm folder in WORK, moved into OUT on save."""
    import shutil

    from .finetune_verifier import cache_dir_for, finetune_verifier, save_backbone

    spec, src = a.backbone or a.model, _finetune_source(a)
    copy = backbone
    if not a.backbone:  # the generator stays as it is: a fresh copy of it
        copy, _ = _load(a.model)
    n = len(copy.model.layers)
    res = finetune_verifier(
        copy,
        rollouts,
        targets,
        feats,
        layers=a.finetune_layers,
        train_idx=tr,
        held_idx=ho,
        hidden_dims=dims,
        head_epochs=a.epochs,
        head_lr=a.lr,
        epochs=a.finetune_epochs,
        lr=a.finetune_lr,
        seed=a.seed,
        cache_dir=cache_dir_for(work, rollouts, str(spec), n - a.finetune_layers),
        pad_id=tok.pad_token_id or 0,
        log=log if not a.no_progress else None,
    )
    m, f = res.held_out or res.train, res.frozen_held_out or res.frozen_train
    log(
        f"fine-tuned top {a.finetune_layers} of {n} layers: {'held-out' if res.held_out else 'train'}"
        f" AUC {m.auc:.3f} (within {m.within_auc:.3f}) Brier {m.brier:.4f}; the frozen head: "
        f"AUC {f.auc:.3f} (within {f.within_auc:.3f}) Brier {f.brier:.4f}"
    )
    folder = work / "finetuned-backbone.tmp"
    shutil.rmtree(folder, ignore_errors=True)
    save_backbone(copy, src, folder)
    summary = {
        "layers": a.finetune_layers,
        "of_layers": n,
        "epochs": a.finetune_epochs,
        "lr": a.finetune_lr,
        "losses": res.losses,
        "wall_s": res.wall_s,
        "frozen_train": res.frozen_train.as_dict(),
        "frozen_held_out": res.frozen_held_out.as_dict() if res.frozen_held_out else None,
    }
    return _Tuned(res, summary, folder)


def _features_path(work: Path, a, rollouts, targets) -> Path:
    """Where the hidden-state features of these targets are kept between runs: a later run on
    the same rollouts with the same backbone and pooling (another head size, epochs, learning
    rate) skips the forwards. The name hashes everything the features depend on."""
    import hashlib

    import numpy as np

    h = hashlib.sha256()
    h.update(json.dumps([a.model, a.backbone or "generator", a.pooling, -1]).encode())
    for r in rollouts:
        ids = [r.prompt_id, r.index, list(r.prompt_ids), list(r.completion_ids)]
        h.update(json.dumps(ids).encode())
    h.update(np.ascontiguousarray(targets.source).tobytes())
    return work / f"features-{h.hexdigest()[:16]}.npy"


def _chunked_features(cache: Path, compute, targets, log=None):
    """The features of ``targets``, one prompt at a time, each prompt's rows kept in
    ``CACHE.parts/`` as it finishes: a killed run resumes at the first prompt it had not
    finished (the forwards of a 0.5B model over a thousand rollouts take hours on a CPU).
    ``compute(sub_targets) -> (len(sub), hidden)``; the assembled array is in target order."""
    import numpy as np

    parts = _chunks_dir(cache)
    groups: dict[str, list[int]] = {}
    for i, pid in enumerate(targets.prompt_ids):
        groups.setdefault(pid, []).append(i)
    out = None
    t0 = time.perf_counter()
    done = 0
    for k, (pid, idx) in enumerate(groups.items()):
        idx = np.asarray(idx)
        part = parts / f"{k:05d}.npy"
        f = None
        if part.is_file():
            f = np.load(part)
            if f.shape[0] != len(idx):
                f = None  # not this run's part: recompute it
        if f is None:
            f = np.asarray(compute(targets.subset(idx)), dtype=np.float32)
            _save_features(part, f)
            done += 1
            if log:
                el = time.perf_counter() - t0
                log(
                    f"features: prompt {k + 1}/{len(groups)} ({pid}, {len(idx)} prefixes) "
                    f"{el:.0f}s for {done} computed"
                )
        if out is None:
            out = np.zeros((len(targets), f.shape[1]), dtype=np.float32)
        out[idx] = f
    if out is None:
        raise ConfigError("no value targets: the rollouts have no responses")
    return out


def _chunks_dir(cache: Path) -> Path:
    return cache.with_name(cache.stem + ".parts")


def _drop_chunks(cache: Path) -> None:
    import shutil

    shutil.rmtree(_chunks_dir(cache), ignore_errors=True)


def _save_features(path: Path, feats) -> None:
    import numpy as np

    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp.npy")
    np.save(tmp, feats)
    tmp.replace(path)  # whole or absent: a killed run leaves no half file


def _summary(m) -> dict | None:
    if m is None:
        return None
    d = m.as_dict()
    return {
        "auc": d["auc"],
        "within_auc": d["within_auc"],
        "brier": m.brier,
        "mse_mc": m.mse_mc,
        "n_prefixes": m.n_prefixes,
    }


def main(argv=None) -> None:
    a = setup_arg_parser().parse_args(argv)
    try:
        train_verifier(a)
    except ConfigError as e:
        print(f"mlx-vgb train-verifier: error: {e}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
