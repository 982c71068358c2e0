"""Thresholds for comparing an empirical law with an exact one.

With n i.i.d. samples over k outcomes, E[TV(empirical, p)] <= 0.5 * sqrt(k / n) (Cauchy-Schwarz
on sum_i sqrt(p_i (1 - p_i) / n)), and TV moves by at most 1/n when one sample changes, so by
McDiarmid P(TV >= E + t) <= exp(-2 n t^2). ``tv_threshold`` returns E-bound + t for a chosen
false-failure probability (tests use fixed seeds, so they are deterministic; the bound says the
threshold is not tuned to the seed).

``chi_square``: Pearson's statistic of counts against an exact law, outcomes with an expected
count below 5 pooled into one cell (so the chi-square approximation holds), and its p-value
(regularized upper incomplete gamma). Tests reject at p < 1e-4: a correct sampler fails such a
fixed-seed test with probability 1e-4.
"""

import math

CHI2_ALPHA = 1e-4


def tv_threshold(k: int, n: int, fail: float = 1e-4) -> float:
    return 0.5 * math.sqrt(k / n) + math.sqrt(math.log(1 / fail) / (2 * n))


def pushforward(dist: dict, f) -> dict:
    out: dict = {}
    for y, p in dist.items():
        out[f(y)] = out.get(f(y), 0.0) + p
    return out


def _gamma_q(a: float, x: float) -> float:
    """Regularized upper incomplete gamma Q(a, x) (Numerical Recipes: series / continued
    fraction)."""
    if x <= 0:
        return 1.0
    gln = math.lgamma(a)
    if x < a + 1:
        ap, s, d = a, 1.0 / a, 1.0 / a
        for _ in range(10_000):
            ap += 1
            d *= x / ap
            s += d
            if abs(d) < abs(s) * 1e-15:
                break
        return 1.0 - s * math.exp(-x + a * math.log(x) - gln)
    b, c, d = x + 1 - a, 1e300, 1 / (x + 1 - a)
    h = d
    for i in range(1, 10_000):
        an = -i * (i - a)
        b += 2
        d = an * d + b
        d = 1e-300 if abs(d) < 1e-300 else d
        c = b + an / c
        c = 1e-300 if abs(c) < 1e-300 else c
        d = 1 / d
        h *= d * c
        if abs(d * c - 1) < 1e-15:
            break
    return math.exp(-x + a * math.log(x) - gln) * h


def chi_square(samples, law: dict) -> tuple[float, int, float]:
    """(statistic, degrees of freedom, p-value) of ``samples`` (outcomes) against ``law``."""
    n = len(samples)
    counts: dict = {}
    for s in samples:
        counts[s] = counts.get(s, 0) + 1
    cells, pool_e, pool_o = [], 0.0, 0
    for y, p in law.items():
        if n * p >= 5:
            cells.append((counts.get(y, 0), n * p))
        else:
            pool_e += n * p
            pool_o += counts.get(y, 0)
    pool_o += sum(c for y, c in counts.items() if y not in law)  # outside the law's support
    if pool_e > 0 or pool_o > 0:
        cells.append((pool_o, max(pool_e, 1e-12)))
    stat = sum((o - e) ** 2 / e for o, e in cells)
    dof = max(1, len(cells) - 1)
    return stat, dof, _gamma_q(dof / 2, stat / 2)
