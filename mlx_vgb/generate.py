"""Generate with a verifier: ``load``, ``stream_generate``, ``generate`` and the
``mlx-vgb generate`` command (flags follow ``mlx_lm.generate`` where they apply)."""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Iterator, Sequence

from .dist import add_row_memory_arg, apply_row_memory
from .errors import ConfigError, VGBError
from .models import MODEL_HELP
from .prefixes import common_prefix_len
from .registry import (
    DEFAULT_CANDIDATES,
    DEFAULT_SAMPLER,
    DEFAULT_VERIFIER,
    SAMPLERS,
    VERIFIER_HELP,
    choice_names,
    make_choice,
    make_language_model,
    make_sampler,
    make_verifier,
    parse_block,
    parse_verifier,
)
from .results import Append, Backtrack, Done, Event, SampleResult, SampleStats
from .vocab import newline_tokens

DEFAULT_PROMPT = "Write a one-sentence story about a cat."
DEFAULT_MAX_TOKENS = 64
DEFAULT_TEMP = 1.0
DEFAULT_TOP_P = 1.0
DEFAULT_SEED = 0


def load(path_or_hf_repo: str | None = None):
    """(model, tokenizer): the registry's default model when None, else a registry name (see
    `mlx-vgb models`; fetched and converted once), a local MLX folder, a GGUF file (converted
    once into the cache) or a Hugging Face repo id (needs the hub; the others work offline)."""
    from mlx_lm import load as mlx_load

    from .models import resolve

    path_or_hf_repo = resolve(path_or_hf_repo)
    p = Path(path_or_hf_repo).expanduser()
    if p.exists():
        if not (p / "config.json").exists():
            raise ConfigError(
                f"{p} is not an MLX model folder (no config.json); convert it "
                "with `mlx-vgb convert`"
            )
        try:
            json.loads((p / "config.json").read_text())
        except (OSError, UnicodeDecodeError, ValueError) as e:
            raise ConfigError(
                f"{p / 'config.json'} is unreadable or not JSON ({e}); convert the "
                "model again with `mlx-vgb convert` (or `mlx-vgb models pull`)"
            ) from None
        try:
            return mlx_load(str(p))
        except Exception as e:  # corrupt or truncated weights
            raise ConfigError(f"cannot load the model in {p}: {e}") from None
    if path_or_hf_repo.startswith((".", "/", "~")) or path_or_hf_repo.count("/") != 1:
        from .models import REGISTRY

        raise ConfigError(
            f"model {path_or_hf_repo!r} not found: give a registry name "
            f"({', '.join(REGISTRY)}; see `mlx-vgb models`), an existing MLX "
            "folder or GGUF file, or a Hugging Face repo id like "
            "'mlx-community/SmolLM2-135M-Instruct'"
        )
    try:
        return mlx_load(path_or_hf_repo)
    except Exception as e:
        raise ConfigError(
            f"cannot fetch {path_or_hf_repo!r} from the Hugging Face hub ({e}); "
            "offline, download it elsewhere and pass the local folder"
        ) from None


def encode_prompt(
    tokenizer,
    prompt: str,
    system_prompt: str | None = None,
    chat_template: bool = True,
    prefill_response: str | None = None,
) -> list[int]:
    """The prompt's token ids: through the chat template when the tokenizer has one; with
    ``prefill_response`` the answer starts with that text (the model continues it; as
    mlx-lm's ``--prefill-response``), encoded with the template's text in one piece so the
    tokens at the seam are the ones the model would see in a whole conversation."""
    if not prompt or not prompt.strip():
        raise ConfigError("the prompt is empty: give the text to complete")
    _quiet_transformers()  # its "sequence length is longer than" warning precedes our message
    if chat_template and getattr(tokenizer, "chat_template", None):
        msgs = [{"role": "system", "content": system_prompt}] if system_prompt else []
        msgs.append({"role": "user", "content": prompt})
        if not prefill_response:
            return list(tokenizer.apply_chat_template(msgs, add_generation_prompt=True))
        text = tokenizer.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True)
        return list(tokenizer.encode(text + prefill_response, add_special_tokens=False))
    text = (system_prompt + "\n" if system_prompt else "") + prompt + (prefill_response or "")
    return list(tokenizer.encode(text))


def _quiet_transformers() -> None:
    try:
        from transformers.utils import logging as hf_logging
    except ImportError:  # pragma: no cover - mlx-lm depends on transformers
        return
    hf_logging.set_verbosity_error()


@dataclass
class GenerationResponse:
    """One streamed event: the clean text after it and stats. To replay the text, drop the
    last ``len(erased)`` characters, then add ``appended``."""

    text: str
    event: Event
    appended: str
    erased: str
    depth: int
    step: int
    stats: SampleStats
    tokens_per_s: float
    finish_reason: str | None = None
    result: SampleResult | None = None
    choice: str | None = None  # the walks' child-choice rule, by name


def stream_generate(
    model,
    tokenizer,
    prompt,
    *,
    verifier=DEFAULT_VERIFIER,
    sampler=DEFAULT_SAMPLER,
    max_tokens: int = DEFAULT_MAX_TOKENS,
    temp: float = DEFAULT_TEMP,
    top_p: float = DEFAULT_TOP_P,
    top_k: int = 0,
    seed: int = DEFAULT_SEED,
    block=None,
    candidates: int = DEFAULT_CANDIDATES,
    max_steps: int | None = None,
    max_forward_tokens: int | None = None,
    drift: float | None = None,
    choice=None,
    system_prompt: str | None = None,
    chat_template: bool = True,
    prefill_response: str | None = None,
    trace=None,
) -> Iterator[GenerationResponse]:
    """Run one sampler on ``prompt`` (text or token ids); yield a response per walk event.
    ``trace``: optional fn(mlx_vgb.trace.StepTrace), called at each walk step."""
    if not isinstance(max_tokens, int) or max_tokens < 1:
        raise ConfigError(f"max_tokens must be an integer >= 1, got {max_tokens!r}")
    spec = parse_verifier(verifier)
    lm = make_language_model(model, tokenizer, spec)
    if isinstance(prompt, str):
        ids = encode_prompt(tokenizer, prompt, system_prompt, chat_template, prefill_response)
        prompt_text = prompt
    else:
        ids, prompt_text = [int(t) for t in prompt], None
    if not ids:
        raise ConfigError("the prompt is empty: give the text to complete")
    if lm.context_length and len(ids) + max_tokens > lm.context_length:
        raise ConfigError(
            f"prompt ({len(ids)} tokens) + max tokens ({max_tokens}) exceed the "
            f"model's context of {lm.context_length}: shorten one of them"
        )
    block = parse_block(block)
    line_tokens = newline_tokens(tokenizer, lm.vocab_size).line if block == "line" else frozenset()
    if choice is None:  # the rule the verifier asks for (letter avoidance: the fast one)
        choice = getattr(spec, "default_choice", None)
    smp = (
        sampler
        if not isinstance(sampler, str)
        else make_sampler(
            sampler,
            max_tokens=max_tokens,
            block=block,
            candidates=candidates,
            temp=temp,
            top_p=top_p,
            top_k=top_k,
            max_steps=max_steps,
            max_forward_tokens=max_forward_tokens,
            drift=drift,
            choice=choice,
            line_tokens=line_tokens,
        )
    )
    ver = make_verifier(spec, lm, max_tokens=max_tokens, prompt_text=prompt_text)
    eos = lm.eos_token_ids
    tokens: list[int] = []

    def text_of(toks):
        return lm.decode([t for t in toks if t not in eos])

    text, t0 = "", time.perf_counter()
    stream = smp.start(lm, ver, ids, seed=seed, trace=trace)  # a Run: its own events, stats
    try:
        for ev in stream:
            before = text
            if isinstance(ev, Append):
                tokens.extend(ev.tokens)
            elif isinstance(ev, Backtrack):
                del tokens[len(tokens) - ev.n_tokens :]
            text = text_of(tokens)
            # erase, then append (a multi-byte character may change when its last byte arrives)
            c = common_prefix_len(before, text)
            erased, appended = before[c:], text[c:]
            stats = stream.stats
            el = max(time.perf_counter() - t0, 1e-9)
            if isinstance(ev, Done):
                r = ev.result
                text = r.text if r.text is not None else text_of(r.tokens)
                yield GenerationResponse(
                    text,
                    ev,
                    "",
                    "",
                    r.stats.max_depth,
                    r.stats.steps,
                    r.stats,
                    lm.positions_computed / el,
                    r.finish_reason,
                    r,
                    _choice_name(smp),
                )
                return
            yield GenerationResponse(
                text,
                ev,
                appended,
                erased,
                ev.depth,
                ev.step,
                replace(stats),
                lm.positions_computed / el,
            )
    finally:
        stream.release()  # the tree's rows and the KV caches, now (not at the next gc)


def _choice_name(sampler) -> str | None:
    from .children import CHOICES

    rule = getattr(sampler, "choice", None)
    return next((n for n, cls in CHOICES.items() if type(rule) is cls), None)


def batch_generate(
    model, tokenizer, prompts, *, n: int = 1, seed: int = DEFAULT_SEED, engine=None, **kw
) -> list[GenerationResponse]:
    """``n`` responses to each prompt (text or token ids; one prompt or a list), advanced
    together by ``mlx_vgb.engine.Engine`` (one batched forward per engine step). Response j of
    a prompt uses seed ``seed + j``: it is the response ``stream_generate(..., seed=seed + j)``
    gives alone. Returns the final ``GenerationResponse`` of each, prompt by prompt."""
    from .engine import Engine

    if not isinstance(n, int) or isinstance(n, bool) or n < 1:
        raise ConfigError(f"n (responses per prompt) must be an integer >= 1, got {n!r}")
    one = isinstance(prompts, str) or (len(prompts) > 0 and isinstance(prompts[0], int))
    prompts = [prompts] if one else list(prompts)

    def job(p, s):
        last = None
        for last in stream_generate(model, tokenizer, p, seed=s, **kw):
            pass
        return last

    jobs = [lambda p=p, j=j: job(p, seed + j) for p in prompts for j in range(n)]
    return (engine or Engine()).run(jobs)


def generate(model, tokenizer, prompt, *, verbose: bool = False, n: int | None = None, **kw):
    """The final text (clean). With ``verbose``, stream to stdout with erased spans struck.
    With ``n``: the list of n texts of ``batch_generate`` (batched; not streamed)."""
    if n is not None:
        return [r.text for r in batch_generate(model, tokenizer, prompt, n=n, **kw)]
    last = None
    for resp in stream_generate(model, tokenizer, prompt, **kw):
        if verbose:
            _print_event(resp, sys.stdout)
        last = resp
    if verbose:
        _print_stats(last, sys.stdout)
    return last.text


def _strike(s: str, tty: bool) -> str:
    if tty:
        return f"\x1b[9;31m{s}\x1b[0m"
    return "~~" + s + "~~"


def _print_event(resp: GenerationResponse, out) -> None:
    tty = out.isatty()
    if resp.erased:
        out.write(_strike(resp.erased, tty))
    if resp.appended:
        out.write(resp.appended)
    out.flush()


def _print_stats(resp: GenerationResponse, out) -> None:
    s, r = resp.stats, resp.result
    print("\n" + "=" * 10, file=out)
    print(resp.text, file=out)
    print("=" * 10, file=out)
    rule = f", choice: {resp.choice}" if resp.choice else ""
    print(
        f"sampler: {r.sampler}{rule}, finish: {r.finish_reason}, reached leaf: "
        f"{r.reached_leaf}, tilt: {r.tilt}",
        file=out,
    )
    if getattr(s, "inexact_steps", 0):
        print(
            f"note: {s.inexact_steps} step(s) fell back to the self-normalized rule (rejection "
            "accepted nothing)",
            file=out,
        )
    print(
        f"steps: {s.steps}, backtracks: {s.backtracks}, restarts: {s.restarts}, "
        f"forward tokens: {s.forward_tokens}, verifier evals: {s.verifier_evals}, "
        f"wall: {s.wall_s:.2f} s",
        file=out,
    )


def setup_arg_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="mlx-vgb generate",
        description="Generate with verifier-guided backtracking.",
        epilog=VERIFIER_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--model", default=None, help=MODEL_HELP)
    p.add_argument("--prompt", "-p", default=DEFAULT_PROMPT, help="prompt text, '-' for stdin")
    p.add_argument("--system-prompt", default=None)
    p.add_argument(
        "--prefill-response",
        default=None,
        help="text the answer starts with (the model continues it; not printed)",
    )
    p.add_argument("--ignore-chat-template", action="store_true")
    p.add_argument(
        "--max-tokens",
        "-m",
        type=int,
        default=DEFAULT_MAX_TOKENS,
        help="horizon H: most tokens in a response",
    )
    p.add_argument("--temp", type=float, default=DEFAULT_TEMP)
    p.add_argument("--top-p", type=float, default=DEFAULT_TOP_P)
    add_row_memory_arg(p)
    p.add_argument("--top-k", type=int, default=0)
    p.add_argument("--seed", type=int, default=DEFAULT_SEED)
    p.add_argument("--verifier", default=DEFAULT_VERIFIER, help="see below")
    p.add_argument(
        "--sampler",
        default=DEFAULT_SAMPLER,
        choices=list(SAMPLERS),
        help="; ".join(f"{e.name}: {e.help}" for e in SAMPLERS.values()),
    )
    p.add_argument(
        "--block",
        default=None,
        help="action: 'token' (default), an integer L (blocks of L tokens) or 'line'",
    )
    p.add_argument(
        "--candidates",
        "-k",
        type=int,
        default=DEFAULT_CANDIDATES,
        help="K candidate children per step (VGB, ActionLevelRS); n for BoN / RS",
    )
    p.add_argument(
        "--drift",
        type=float,
        default=None,
        help="lambda in (0, 1]: parent weight (default 1, the paper's walk; 0.5 with "
        "--block line, where short responses are padded to the token horizon)",
    )
    p.add_argument(
        "--choice",
        default=None,
        help="child-choice rule of the walks (VGB, "
        "ActionLevelRS): " + ", ".join(choice_names()) + " (default: exact)",
    )
    p.add_argument("--max-steps", type=int, default=None)
    p.add_argument("--max-forward-tokens", type=int, default=None)
    p.add_argument(
        "--verbose",
        action="store_true",
        help="stream with erased text struck through, then print stats",
    )
    p.add_argument(
        "-n",
        type=int,
        default=1,
        help="responses, advanced together in one batched engine (seeds seed .. "
        "seed + n - 1; not streamed when n > 1)",
    )
    return p


def main(argv: Sequence[str] | None = None) -> None:
    args = setup_arg_parser().parse_args(argv)
    prompt = sys.stdin.read() if args.prompt == "-" else args.prompt
    last = None
    try:
        # settings first: a bad flag is reported before the model loads
        block = parse_block(args.block)
        verifier = parse_verifier(args.verifier)
        apply_row_memory(args)
        make_choice(args.choice, args.candidates)
        if args.n < 1:
            raise ConfigError(f"-n (responses) must be >= 1, got {args.n}")
        kw = _generation_kwargs(args, block, verifier)
        model, tokenizer = load(args.model)
        if args.n != 1:
            return _main_batch(args, model, tokenizer, prompt, kw)
        for resp in stream_generate(model, tokenizer, prompt, **kw):
            if args.verbose:
                _print_event(resp, sys.stdout)
            last = resp
    except VGBError as e:
        print(f"mlx-vgb generate: error: {e}", file=sys.stderr)
        sys.exit(1)
    except KeyboardInterrupt:
        # the text so far is the best effort: print it, then exit as interrupted shells do
        if last is not None:
            print(("\n" if args.verbose else "") + last.text)
        print("[interrupted: the text above is unfinished]", file=sys.stderr)
        sys.exit(130)
    if args.verbose:
        _print_stats(last, sys.stdout)
    else:
        print(last.text)
        r = last.result
        if not r.reached_leaf:
            print(f"[unfinished: {r.finish_reason}]", file=sys.stderr)


def _generation_kwargs(args, block, verifier) -> dict:
    """The keywords of ``stream_generate`` / ``batch_generate`` that the flags set."""
    return dict(
        verifier=verifier,
        sampler=args.sampler,
        max_tokens=args.max_tokens,
        temp=args.temp,
        top_p=args.top_p,
        top_k=args.top_k,
        seed=args.seed,
        block=block,
        candidates=args.candidates,
        drift=args.drift,
        choice=args.choice,
        max_steps=args.max_steps,
        max_forward_tokens=args.max_forward_tokens,
        system_prompt=args.system_prompt,
        chat_template=not args.ignore_chat_template,
        prefill_response=args.prefill_response,
    )


def _main_batch(args, model, tokenizer, prompt, kw: dict) -> None:
    resps = batch_generate(model, tokenizer, prompt, n=args.n, **kw)
    for j, resp in enumerate(resps):
        print(f"=== response {j + 1} of {len(resps)} (seed {args.seed + j}) ===")
        if args.verbose:
            _print_stats(resp, sys.stdout)
        else:
            print(resp.text)
            if not resp.result.reached_leaf:
                print(f"[unfinished: {resp.result.finish_reason}]", file=sys.stderr)


if __name__ == "__main__":
    main()
