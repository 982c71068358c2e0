"""Thresholds for comparing an empirical law with an exact one.

With n i.i.d. samples over k outcomes, E[TV(empirical, p)] <= 0.5 * sqrt(k / n) (Cauchy-Schwarz
on sum_i sqrt(p_i (1 - p_i) / n)), and TV moves by at most 1/n when one sample changes, so by
McDiarmid P(TV >= E + t) <= exp(-2 n t^2). ``tv_threshold`` returns E-bound + t for a chosen
false-failure probability (tests use fixed seeds, so they are deterministic; the bound says the
threshold is not tuned to the seed).
"""

import math


def tv_threshold(k: int, n: int, fail: float = 1e-4) -> float:
    return 0.5 * math.sqrt(k / n) + math.sqrt(math.log(1 / fail) / (2 * n))


def pushforward(dist: dict, f) -> dict:
    out: dict = {}
    for y, p in dist.items():
        out[f(y)] = out.get(f(y), 0.0) + p
    return out
