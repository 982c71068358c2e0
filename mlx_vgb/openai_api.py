"""The OpenAI wire format of `mlx-vgb server`: requests (the standard fields and the walk's
extra ones) into ``stream_generate`` keywords, walk results into completion objects and
chunks, and what a stream may send (``Committed``: only text no later event can erase). See
docs/server.md.
"""

from __future__ import annotations

import logging
import time
import uuid
from dataclasses import dataclass, field

from .errors import ConfigError

DEFAULT_MAX_TOKENS = 128
DEFAULT_SAMPLER = "vgb"
DEFAULT_VERIFIER = "none"
NEVER_ERASES = ("plain",)  # samplers whose text only grows: their content streams live

log = logging.getLogger("mlx_vgb.server")


class RequestError(ConfigError):
    """A bad request: answered with HTTP 400 and this message."""


# -- requests -----------------------------------------------------------------------------------

_WALK_FIELDS = {  # request field -> (stream_generate keyword, type, check, hint)
    "sampler": ("sampler", str, None, "a sampler name"),
    "verifier": ("verifier", str, None, "a verifier spec"),
    "candidates": ("candidates", int, lambda v: v >= 1, "an integer >= 1"),
    "k": ("candidates", int, lambda v: v >= 1, "an integer >= 1"),
    "drift": ("drift", float, lambda v: 0 < v <= 1, "a number in (0, 1]"),
    "block": ("block", (str, int), None, "'token', 'line' or a number of tokens"),
    "choice": ("choice", str, None, "a child-choice rule"),
    "max_steps": ("max_steps", int, lambda v: v >= 1, "an integer >= 1"),
    "max_forward_tokens": ("max_forward_tokens", int, lambda v: v >= 1, "an integer >= 1"),
    "seed": ("seed", int, None, "an integer"),
    "top_k": ("top_k", int, lambda v: v >= 0, "an integer >= 0"),
    "max_tokens": ("max_tokens", int, lambda v: v >= 1, "an integer >= 1"),
    "max_completion_tokens": ("max_tokens", int, lambda v: v >= 1, "an integer >= 1"),
    "temperature": ("temp", float, lambda v: v >= 0, "a number >= 0"),
    "top_p": ("top_p", float, lambda v: 0 < v <= 1, "a number in (0, 1]"),
}


@dataclass
class WalkRequest:
    """One completion request, checked: what the engine needs to start its walk."""

    chat: bool
    model: str | None  # None: the served model
    prompt: str | None = None  # completions: raw text (no chat template)
    messages: list[dict] | None = None  # chat
    stream: bool = False
    events: bool = True  # stream the walk's events (the ``vgb`` chunks)
    include_usage: bool = False
    kwargs: dict = field(default_factory=dict)  # stream_generate keywords
    id: str = field(default_factory=lambda: uuid.uuid4().hex[:24])
    created: int = field(default_factory=lambda: int(time.time()))


def _typed(name: str, value, kind, check, hint):
    if kind is int and (isinstance(value, bool) or not isinstance(value, int)):
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        else:
            raise RequestError(f"'{name}' must be {hint}, got {value!r}")
    elif kind is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise RequestError(f"'{name}' must be {hint}, got {value!r}")
        value = float(value)
    elif isinstance(kind, tuple) or kind is str:
        if not isinstance(value, kind if isinstance(kind, tuple) else (kind,)) or isinstance(
            value, bool
        ):
            raise RequestError(f"'{name}' must be {hint}, got {value!r}")
    if check is not None and not check(value):
        raise RequestError(f"'{name}' must be {hint}, got {value!r}")
    return value


def parse_request(body, chat: bool, defaults: dict) -> WalkRequest:
    """A checked ``WalkRequest`` from a request's JSON body; ``RequestError`` (400) if bad."""
    if not isinstance(body, dict):
        raise RequestError("the request body must be a JSON object")
    model = body.get("model")
    if model is not None and not isinstance(model, str):
        raise RequestError(f"'model' must be a string, got {model!r}")
    req = WalkRequest(chat=chat, model=model or None)
    if chat:
        msgs = body.get("messages")
        if not isinstance(msgs, list) or not msgs:
            raise RequestError("'messages' must be a non-empty list of {role, content}")
        for m in msgs:
            if (
                not isinstance(m, dict)
                or not isinstance(m.get("role"), str)
                or not isinstance(m.get("content"), (str, list))
            ):
                raise RequestError(f"each message needs a 'role' and a 'content', got {m!r}")
        req.messages = [{"role": m["role"], "content": _content_text(m["content"])} for m in msgs]
    else:
        prompt = body.get("prompt")
        if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], str):
            prompt = prompt[0]
        if not isinstance(prompt, str) or not prompt.strip():
            raise RequestError("'prompt' must be a non-empty string")
        req.prompt = prompt
    n = body.get("n", 1)
    if n not in (1, None):
        raise RequestError(f"'n' must be 1 (one walk per request), got {n!r}")
    if body.get("stop") not in (None, [], ""):
        raise RequestError(
            "'stop' is not supported: a stop string would cut a response after "
            "the verifier scored it; use a regex verifier instead"
        )
    stream = body.get("stream", False)
    if not isinstance(stream, bool):
        raise RequestError(f"'stream' must be true or false, got {stream!r}")
    req.stream = stream
    ev = body.get("vgb_events", True)
    if not isinstance(ev, bool):
        raise RequestError(f"'vgb_events' must be true or false, got {ev!r}")
    req.events = ev
    opts = body.get("stream_options") or {}
    req.include_usage = bool(isinstance(opts, dict) and opts.get("include_usage"))
    kw = dict(defaults)
    for name, (key, kind, check, hint) in _WALK_FIELDS.items():
        if body.get(name) is not None:
            kw[key] = _typed(name, body[name], kind, check, hint)
    req.kwargs = kw
    return req


def _content_text(content) -> str:
    """A message's content: a string, or the text parts of a list of parts."""
    if isinstance(content, str):
        return content
    parts = [p.get("text", "") for p in content if isinstance(p, dict) and p.get("type") == "text"]
    return "".join(parts)


def chat_ids(tokenizer, messages: list[dict]) -> list[int]:
    if getattr(tokenizer, "chat_template", None):
        return list(tokenizer.apply_chat_template(messages, add_generation_prompt=True))
    text = "\n".join(f"{m['role']}: {m['content']}" for m in messages) + "\nassistant:"
    return list(tokenizer.encode(text))


# -- responses ----------------------------------------------------------------------------------


def finish_reason(result) -> str:
    """OpenAI's finish_reason: "stop" (EOS), else "length" (the horizon, or a budget / dead
    end: ``vgb.finish_reason`` says which)."""
    return "stop" if result.finish_reason == "stop" else "length"


def walk_info(req: WalkRequest, resp) -> dict:
    """The ``vgb`` field of a final response: the walk's outcome and stats."""
    r = resp.result
    kw = req.kwargs
    verifier = str(kw.get("verifier", DEFAULT_VERIFIER))
    if not r.reached_leaf:
        verdict = "unfinished"
    elif verifier in ("none", ""):
        verdict = "complete"
    else:
        verdict = "passes" if r.tilt and r.finish_reason != "rejected" else "fails"
    return {
        "sampler": r.sampler,
        "verifier": verifier,
        "finish_reason": r.finish_reason,
        "reached_leaf": bool(r.reached_leaf),
        "tilt": r.tilt,
        "verdict": verdict,
        "seed": r.seed,
        "stats": r.stats.as_dict(),
    }


def usage(job, resp) -> dict:
    n = len(resp.result.tokens) if resp is not None and resp.result is not None else 0
    return {
        "prompt_tokens": job.prompt_tokens,
        "completion_tokens": n,
        "total_tokens": job.prompt_tokens + n,
    }


def choice_obj(req: WalkRequest, text: str | None, reason: str | None, role: bool = False) -> dict:
    if req.chat:
        delta = {}
        if role:
            delta["role"] = "assistant"
        if text:
            delta["content"] = text
        key = "delta" if req.stream else "message"
        if not req.stream:
            delta = {"role": "assistant", "content": text or ""}
        return {"index": 0, key: delta, "finish_reason": reason, "logprobs": None}
    return {"index": 0, "text": text or "", "finish_reason": reason, "logprobs": None}


def envelope(req: WalkRequest, engine, choices: list, **extra) -> dict:
    obj = (
        ("chat.completion.chunk" if req.stream else "chat.completion")
        if req.chat
        else "text_completion"
    )
    return {
        "id": ("chatcmpl-" if req.chat else "cmpl-") + req.id,
        "object": obj,
        "created": req.created,
        "model": req.model or engine.model_id,
        "system_fingerprint": "mlx-vgb",
        "choices": choices,
        **extra,
    }


class Committed:
    """What a stream has committed so far: for a sampler that can erase, nothing until the
    end; for one that cannot, the live text (minus an unfinished UTF-8 character)."""

    def __init__(self, sampler: str):
        self.live = sampler in NEVER_ERASES
        self.text = ""

    def advance(self, text: str, final: bool) -> str:
        """The new committed characters after an event whose clean text is ``text``."""
        upto = text if final else (text.rstrip("\ufffd") if self.live else self.text)
        if not upto.startswith(self.text):  # cannot happen for "plain"; never resend
            log.warning("committed text was changed by a later event")
            return ""
        new, self.text = upto[len(self.text) :], upto
        return new
