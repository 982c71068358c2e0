"""Distances between laws of small integers (lengths) estimated from responses to several
prompts, with bootstrap intervals: the statistics of ``mlx-vgb bench testcase_law``.

A *sample* is ``{prompt id: [values of response 1, values of response 2, ...]}``: each response
gives a list of integers (one value, e.g. its number of asserts; or several, e.g. the list
length of each of its tests). The law of a sample is the mixture with equal weight per prompt
of each prompt's law, the counts of every value over its responses' values (a prompt with no
value is left out). Equal weights make a sampler with the same number of responses on every
prompt comparable with a pi* estimated by rejection, whose accepted rows differ across prompts.

Distances to a target sample (pi*), over the prompts where both have values:
- ``tv``: total variation between the two mixtures (unsmoothed).
- ``kl``: KL(target || sample); the sample's counts per prompt are smoothed by adding
  ``alpha`` (default 1/2, Jeffreys) to every value of the common support (the values either
  sample holds on any prompt), so the KL is finite; the target is not smoothed.
Bootstrap: responses resampled with replacement within each prompt, for the target and every
sample at once (one target resample per replicate, shared, so differences between samples are
paired). The noise floor is the distance an exact sampler would show: both sides drawn from the
target's responses, with the sample's and the target's numbers of responses per prompt.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

DEFAULT_ALPHA = 0.5

Sample = dict[str, list[list[int]]]


def support(*samples: Sample) -> list[int]:
    """Every value any response of the samples holds, sorted."""
    return sorted({v for s in samples for resp in s.values() for vals in resp for v in vals})


def mixture(sample: Sample, values: list[int], prompts, alpha: float = 0.0) -> np.ndarray:
    """The law of ``sample`` on ``values`` over ``prompts`` (see the module docstring)."""
    where = {v: i for i, v in enumerate(values)}
    laws = []
    for pid in prompts:
        c = np.zeros(len(values))
        for vals in sample.get(pid, []):
            for v in vals:
                c[where[v]] += 1
        if c.sum() == 0 and alpha == 0:
            continue
        laws.append((c + alpha) / (c.sum() + alpha * len(values)))
    if not laws:
        return np.zeros(len(values))
    return np.mean(laws, axis=0)


def _has_values(sample: Sample, pid: str) -> bool:
    return any(len(v) for v in sample.get(pid, []))


def common_prompts(target: Sample, sample: Sample) -> list[str]:
    return [p for p in target if _has_values(target, p) and _has_values(sample, p)]


def tv(p: np.ndarray, q: np.ndarray) -> float:
    return float(0.5 * np.abs(np.asarray(p) - np.asarray(q)).sum())


def kl(p: np.ndarray, q: np.ndarray) -> float:
    """KL(p || q); infinite where q = 0 < p."""
    p, q = np.asarray(p, float), np.asarray(q, float)
    m = p > 0
    if np.any(q[m] <= 0):
        return float("inf")
    return float(np.sum(p[m] * np.log(p[m] / q[m])))


def distances(target: Sample, sample: Sample, alpha: float = DEFAULT_ALPHA) -> tuple[float, float]:
    """(TV, smoothed KL(target || sample)) over the common prompts; NaN without any."""
    prompts = common_prompts(target, sample)
    if not prompts:
        return float("nan"), float("nan")
    sub_t = {p: target[p] for p in prompts}
    sub_s = {p: sample[p] for p in prompts}
    values = support(sub_t, sub_s)
    p = mixture(sub_t, values, prompts)
    return tv(p, mixture(sub_s, values, prompts)), kl(p, mixture(sub_s, values, prompts, alpha))


def _resample(sample: Sample, rng: np.random.Generator, sizes: dict | None = None) -> Sample:
    out = {}
    for pid, resp in sample.items():
        n = len(resp) if sizes is None else sizes[pid]
        if resp and n:
            out[pid] = [resp[i] for i in rng.integers(0, len(resp), n)]
    return out


@dataclass
class Distance:
    """A distance with its 95% bootstrap interval and noise floor (mean over draws)."""

    value: float
    lo: float
    hi: float
    floor: float

    def as_dict(self) -> dict:
        return dict(value=self.value, lo=self.lo, hi=self.hi, floor=self.floor)


@dataclass
class Comparison:
    tv: dict[str, Distance]
    kl: dict[str, Distance]
    boot_tv: dict[str, np.ndarray]  # per sample: TV of each bootstrap replicate (paired)
    boot_kl: dict[str, np.ndarray]

    def closer(self, a: str, b: str, metric: str = "tv") -> float:
        """Share of replicates in which sample ``a`` is closer to the target than ``b``."""
        boot = self.boot_tv if metric == "tv" else self.boot_kl
        x, y = boot[a], boot[b]
        ok = np.isfinite(x) & np.isfinite(y)
        return float(np.mean(x[ok] < y[ok])) if ok.any() else float("nan")


def compare(
    target: Sample,
    samples: dict[str, Sample],
    reps: int = 1000,
    seed: int = 0,
    alpha: float = DEFAULT_ALPHA,
) -> Comparison:
    """Distances of every sample to the target, bootstrap intervals and noise floors."""
    rng = np.random.default_rng(seed)
    boot_tv = {n: np.full(reps, np.nan) for n in samples}
    boot_kl = {n: np.full(reps, np.nan) for n in samples}
    floor_tv = {n: np.full(reps, np.nan) for n in samples}
    floor_kl = {n: np.full(reps, np.nan) for n in samples}
    for r in range(reps):
        t = _resample(target, rng)
        for n, s in samples.items():
            boot_tv[n][r], boot_kl[n][r] = distances(t, _resample(s, rng), alpha)
            prompts = common_prompts(target, s)
            sizes = {p: len(s[p]) for p in prompts}
            exact = _resample({p: target[p] for p in prompts}, rng, sizes)
            floor_tv[n][r], floor_kl[n][r] = distances(t, exact, alpha)
    out_tv, out_kl = {}, {}
    for n, s in samples.items():
        v_tv, v_kl = distances(target, s, alpha)
        out_tv[n] = _summary(v_tv, boot_tv[n], floor_tv[n])
        out_kl[n] = _summary(v_kl, boot_kl[n], floor_kl[n])
    return Comparison(out_tv, out_kl, boot_tv, boot_kl)


def _summary(value: float, boot: np.ndarray, floor: np.ndarray) -> Distance:
    b, f = boot[np.isfinite(boot)], floor[np.isfinite(floor)]
    lo, hi = np.quantile(b, [0.025, 0.975]) if len(b) > 1 else (np.nan, np.nan)
    return Distance(value, float(lo), float(hi), float(f.mean()) if len(f) else float("nan"))
