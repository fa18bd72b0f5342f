"""An empirical lower bound on epsilon from one run, beside the accountant's upper bound.

The accountant's epsilon is an upper bound proved for the *ideal* mechanism; it does not see
a clipping step that was skipped, a noise scale off by a factor, noise recomputable from a
seed, or a codec that enlarges updates.  An audit measures the other side: it runs the
mechanism's own code on inputs whose membership the auditor chose at random, guesses
membership from what the mechanism released, and turns the number of correct guesses into
a lower bound that holds with stated confidence.  A lower bound above the upper bound means
the implementation or its accounting is wrong.

Method: Steinke, Nasr and Jagielski, "Privacy auditing with one (1) training run", NeurIPS
2023.  ``m`` canaries are each included independently with probability 1/2 (``S_i = +1``) or
not (``S_i = -1``); the auditor scores every canary from the output, guesses "in" for the
``k`` highest scores and "out" for the ``k`` lowest and abstains on the rest.  If the
mechanism is (epsilon, delta)-DP with respect to each ``S_i``, the number ``V`` of correct
guesses among ``r = 2k`` satisfies (their Theorem 3.1 with the delta term of their
Appendix D)::

    P[V >= v] <= P[Binomial(r, p) >= v] + 2 m delta max_{1<=i<=v} P[v-i <= Binomial(r, p) < v] / i,
    p = e^epsilon / (1 + e^epsilon),

so every epsilon whose right-hand side is below ``1 - confidence`` is rejected; the largest
rejected epsilon is the lower bound.  Several values of ``k`` are tried with a Bonferroni
correction, so the confidence holds for the best of them.

What is audited (client level, unit: one hospital).  Each canary is a hospital whose update
is ``3 C e_i``: a Dirac vector on its own coordinate, three times the clipping norm so that
clipping must act (Nasr et al. 2023 and Steinke et al. 2023, Section 6, use such "Dirac"
canaries in gradient space).  The canaries go through the wrapper's real code: clipping, the
bound on what leaves the client, the wrapped strategy's encoding, the noise source, the
channel sum and the accounting.  The hospitals of a real federation are left out: their
updates do not touch the canary coordinates, which is the auditor's best case.

* ``central`` (add/remove): included canaries upload, the server adds the noise; the score
  of canary ``i`` is coordinate ``i`` of the sum of the released aggregates.
* ``local`` (replace-one): every canary uploads ``S_i * 3 C e_i``; the server sees each
  noisy upload, and the score is coordinate ``i`` of canary ``i``'s uploads.
* ``distributed`` (add/remove): included canaries add discrete-Gaussian shares to their
  fixed-point integers, which are summed as secure aggregation would (masks cancel exactly
  in the sum, so the unmasked sum is what the server learns).  The shares are drawn by the
  vectorised sampler from a generator seeded with 256 bits from the OS and then forgotten
  (the exact sampler would take minutes for the ``m^2 / 2`` draws a round needs).

The upper bound shown beside the result is the accountant's hospital-level epsilon of the
canary run under the same relation, which is the epsilon the real run reports for the same
noise multiplier, rounds and delta when every hospital takes part in every round.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
from scipy import stats

from securefed.channel import ChannelResult, DropoutPlan, PlainChannel, Upload
from securefed.dp.clipping import check_delta
from securefed.dp.ledger import EpsilonStatement
from securefed.dp.noise import secure_generator
from securefed.dp.registry import DP_MECHANISMS
from securefed.errors import ConfigurationError
from securefed.federated.strategy import FedAvg, Strategy
from securefed.federated.types import FederationFacts, LocalResult

__all__ = [
    "OneRunAudit",
    "one_run_p_value",
    "epsilon_lower_bound",
    "audit_one_run",
    "audit_for_run",
]


def one_run_p_value(*, canaries: int, guesses: int, correct: int, epsilon: float,
                    delta: float) -> float:
    """Probability of at least ``correct`` right guesses out of ``guesses`` among
    ``canaries`` canaries if the mechanism were (epsilon, delta)-DP (Steinke et al. 2023).

    >>> round(one_run_p_value(canaries=100, guesses=10, correct=10, epsilon=0.0, delta=0.0), 6)
    0.000977
    """
    m, r, v = int(canaries), int(guesses), int(correct)
    if not 0 <= v <= r <= m:
        raise ConfigurationError(
            f"need 0 <= correct <= guesses <= canaries, got {v}, {r}, {m}")
    if not (epsilon >= 0 and 0 <= delta <= 1):
        raise ConfigurationError(f"need epsilon >= 0 and delta in [0, 1], got {epsilon}, {delta}")
    p = 1.0 / (1.0 + math.exp(-epsilon)) if epsilon < 700 else 1.0
    tail = float(stats.binom.sf(v - 1, r, p))
    if delta == 0 or v == 0:
        return min(1.0, tail)
    below = stats.binom.pmf(np.arange(v - 1, -1, -1), r, p)  # P[B = v-1], P[B = v-2], ...
    alpha = float(np.max(np.cumsum(below) / np.arange(1, v + 1)))
    return min(1.0, tail + 2.0 * m * delta * alpha)


def epsilon_lower_bound(*, canaries: int, guesses: int, correct: int, delta: float,
                        confidence: float = 0.95, tests: int = 1) -> float:
    """The largest epsilon rejected at ``confidence`` (after a Bonferroni correction for
    ``tests`` tries): 0.0 when even epsilon = 0 is not rejected.

    >>> b = epsilon_lower_bound(canaries=1000, guesses=100, correct=100, delta=0.0)
    >>> round(b, 4) == round(math.log(0.05 ** 0.01 / (1 - 0.05 ** 0.01)), 4)
    True
    """
    if not 0 < confidence < 1:
        raise ConfigurationError(f"confidence must be in (0, 1), got {confidence!r}")
    level = (1.0 - confidence) / max(1, int(tests))

    def rejected(eps: float) -> bool:
        return one_run_p_value(canaries=canaries, guesses=guesses, correct=correct,
                               epsilon=eps, delta=delta) < level

    if not rejected(0.0):
        return 0.0
    lo, hi = 0.0, 1.0
    while rejected(hi):
        lo, hi = hi, hi * 2.0
        if hi > 1e4:
            return math.inf
    for _ in range(60):
        mid = 0.5 * (lo + hi)
        if rejected(mid):
            lo = mid
        else:
            hi = mid
    return lo


@dataclass(frozen=True)
class OneRunAudit:
    """The outcome of :func:`audit_one_run`: the empirical lower bound and, beside it, the
    accountant's upper bound for the same run (``upper``, fully described)."""

    mechanism: str
    epsilon_lower: float
    upper: EpsilonStatement
    confidence: float
    canaries: int
    guesses: int
    correct: int
    rounds: int
    clip_norm: float
    noise_multiplier: float
    delta: float
    method: str = "Steinke, Nasr and Jagielski 2023 (one run, Dirac canary hospitals)"
    noise_source: str = "csprng"

    @property
    def consistent(self) -> bool:
        """False when the measured lower bound exceeds the claimed upper bound."""
        return self.epsilon_lower <= self.upper.epsilon

    def to_dict(self) -> dict[str, Any]:
        return {"mechanism": self.mechanism, "epsilon_lower": self.epsilon_lower,
                "epsilon_upper": self.upper.epsilon, "upper": self.upper.to_dict(),
                "confidence": self.confidence, "canaries": self.canaries,
                "guesses": self.guesses, "correct": self.correct, "rounds": self.rounds,
                "clip_norm": self.clip_norm, "noise_multiplier": self.noise_multiplier,
                "delta": self.delta, "method": self.method, "noise_source": self.noise_source,
                "consistent": self.consistent}


class _IntegerSum:
    """Fixed-point encoding with unbiased stochastic rounding, the wrapper's integer noise
    share per client, and the integer sum: what secure aggregation reveals, without masks."""

    name = "integer-sum"
    stages = ("upload",)

    def __init__(self, integer_noise: Any, *, scale: float) -> None:
        self.integer_noise = integer_noise
        self.scale = float(scale)

    def aggregate(self, uploads: list[Upload], *, dim: int, rng: np.random.Generator) -> ChannelResult:
        total = np.zeros(dim, dtype=np.int64)
        for up in uploads:
            x = np.asarray(up.vector, dtype=np.float64) * self.scale
            low = np.floor(x)
            enc = (low + (rng.random(dim) < (x - low))).astype(np.int64)
            total += enc + np.asarray(self.integer_noise.sample(
                dim, scale=self.scale, num_clients=len(uploads), rng=rng), dtype=np.int64)
        return ChannelResult(weighted_sum=total / self.scale, weight_sum=float(len(uploads)),
                             contributors=tuple(u.client_id for u in uploads), bytes_up={},
                             bytes_down={}, received=(), timings={})


def _guess_sizes(m: int) -> tuple[int, ...]:
    sizes = sorted({max(1, int(round(f * m / 2))) for f in (0.02, 0.05, 0.1, 0.2, 0.5, 1.0)})
    return tuple(s for s in sizes if 2 * s <= m)


def audit_one_run(
    mechanism: str,
    *,
    clip_norm: float,
    noise_multiplier: float,
    rounds: int,
    delta: float = 1e-5,
    accountant: str = "rdp",
    canaries: int = 1000,
    confidence: float = 0.95,
    inner: Strategy | None = None,
    wrapper: Any = None,
    rng: np.random.Generator | None = None,
    scale: float = 2.0 ** 16,
) -> OneRunAudit:
    """Audit a client-level DP mechanism (``"central"``, ``"local"``, ``"distributed"``) in
    one run of ``rounds`` rounds with ``canaries`` canary hospitals (module docstring).

    ``inner`` is the strategy the mechanism wraps (FedAvg by default; its codec and
    client-side processing are exercised).  ``wrapper`` replaces the wrapper built from the
    registry (for auditing a modified mechanism); it must be built for ``canaries``
    clients.  ``rng`` draws the canaries' membership and the channel's rounding (default: a
    generator seeded from the OS CSPRNG).  Returns :class:`OneRunAudit`.
    """
    if mechanism not in DP_MECHANISMS:
        raise ConfigurationError(
            f"unknown DP mechanism {mechanism!r}; valid: {sorted(DP_MECHANISMS)}")
    if not (isinstance(canaries, int) and canaries >= 10):
        raise ConfigurationError(f"canaries must be an integer >= 10, got {canaries!r}")
    if not (isinstance(rounds, int) and rounds >= 1):
        raise ConfigurationError(f"rounds must be an integer >= 1, got {rounds!r}")
    delta = check_delta(delta)
    m = canaries
    gen = rng if rng is not None else secure_generator()
    noise_source = "csprng"
    if wrapper is None:
        kwargs: dict[str, Any] = dict(clip_norm=clip_norm, noise_multiplier=noise_multiplier,
                                      delta=delta, accountant=accountant)
        if mechanism == "distributed":
            # the exact sampler is too slow for m^2 / 2 draws a round: vectorised sampler on a
            # generator seeded from the OS and discarded (nobody can recompute it)
            kwargs.update(reproducible_noise=True, seed=int.from_bytes(os.urandom(16), "big"))
            noise_source = "vectorised discrete Gaussian on an OS-seeded, discarded generator"
        wrapper = DP_MECHANISMS.get(mechanism)(inner if inner is not None else FedAvg(), **kwargs)
    wrapper.start_run(FederationFacts(num_clients=m))
    membership = gen.random(m) < 0.5  # S_i = +1 with probability 1/2
    scores = np.zeros(m)
    states: list[dict] = [{} for _ in range(m)]
    channel = PlainChannel()
    integer = _IntegerSum(getattr(wrapper, "integer_noise", None), scale=scale)
    local = LocalResult(update=np.zeros(m), num_examples=1, train_loss=0.0, initial_loss=0.0,
                        label_balance=0.5, steps=1)
    for r in range(rounds):
        wrapper.before_round(r)
        uploads: list[Upload] = []
        for i in range(m):
            if mechanism == "local":
                sign = 1.0 if membership[i] else -1.0
            elif membership[i]:
                sign = 1.0
            else:
                continue
            update = np.zeros(m)
            update[i] = sign * 3.0 * wrapper.clip_norm
            weight = wrapper.client_weight(local, client_state=states[i])
            vector, payload = wrapper.client_process(update, weight, client_state=states[i], rng=gen)
            uploads.append(Upload(client_id=i, vector=vector, weight=weight, payload=payload))
            if mechanism == "local":  # the server sees each upload
                scores[i] += vector[i]
        if mechanism == "distributed":
            if not uploads:
                wrapper.end_round(r, completed=False)
                continue
            result = integer.aggregate(uploads, dim=m, rng=gen)
        else:
            result = channel.aggregate(uploads, round_index=r, dim=m, codec=wrapper.codec,
                                       dropouts=DropoutPlan(), rng=gen)
        released = wrapper.server_aggregate(result, rng=gen)
        if mechanism != "local":
            scores += np.asarray(released, dtype=np.float64)
        wrapper.end_round(r, completed=True)
    order = np.argsort(scores, kind="stable")
    truth = np.where(membership, 1, -1)
    sizes = _guess_sizes(m)
    best = (0.0, 0, 0)
    for k in sizes:
        correct = int(np.sum(truth[order[-k:]] == 1) + np.sum(truth[order[:k]] == -1))
        bound = epsilon_lower_bound(canaries=m, guesses=2 * k, correct=correct, delta=delta,
                                    confidence=confidence, tests=len(sizes))
        if bound > best[0] or best[1] == 0:
            best = (bound, 2 * k, correct)
    upper = wrapper.report().client
    if noise_source != "csprng":  # the seed was drawn from the OS and never kept
        upper = replace(upper, private=True, warning=None)
    return OneRunAudit(mechanism=mechanism, epsilon_lower=best[0], upper=upper,
                       confidence=confidence, canaries=m, guesses=best[1], correct=best[2],
                       rounds=rounds, clip_norm=float(wrapper.clip_norm),
                       noise_multiplier=float(wrapper.noise_multiplier), delta=delta,
                       noise_source=noise_source)


def _find_dp_settings(described: Any) -> dict[str, Any] | None:
    """The ``"dp"`` table of a strategy's ``describe()``, however deeply it is nested."""
    if isinstance(described, dict):
        if isinstance(described.get("dp"), dict) and "mechanism" in described["dp"]:
            return described["dp"]
        for value in described.values():
            found = _find_dp_settings(value)
            if found is not None:
                return found
    return None


def audit_for_run(run: Any, **kwargs: Any) -> OneRunAudit | None:
    """:func:`audit_one_run` with the mechanism, clip norm, noise multiplier (calibrated or
    given), delta, accountant and number of rounds of a finished run: a ``RunResult`` or the
    dict of its JSON.  ``None`` for a run without client-level DP.  Keyword arguments go to
    :func:`audit_one_run` (``canaries``, ``confidence``, ``rng``...).

    The upper bound it returns is the accountant's epsilon of the canary run, which equals
    the run's own hospital-level epsilon when every hospital took part in every round.
    """
    settings = getattr(run, "settings", None)
    if settings is None and isinstance(run, dict):
        settings = run.get("settings")
    dp = _find_dp_settings(dict(settings or {}).get("strategy"))
    if dp is None or dp.get("mechanism") not in DP_MECHANISMS:
        return None
    history = getattr(run, "history", None)
    if history is None and isinstance(run, dict):
        history = run.get("history")
    ledger = getattr(run, "privacy_ledger", None)
    if ledger is None and isinstance(run, dict):
        ledger = run.get("privacy_ledger")
    rounds = len(ledger["rounds"]) if isinstance(ledger, dict) and ledger.get("rounds") else len(history or ())
    if rounds < 1:
        return None
    return _audit_settings(dp, rounds, **kwargs)


def audit_for_strategy(strategy: Any, *, rounds: int, **kwargs: Any) -> OneRunAudit | None:
    """:func:`audit_one_run` with the mechanism, clip norm, noise multiplier (as calibrated
    when the strategy was built), delta and accountant of a DP-wrapped ``strategy`` that has
    not run yet, for ``rounds`` rounds.  ``None`` for a strategy without client-level DP."""
    dp = _find_dp_settings(strategy.describe())
    if dp is None or dp.get("mechanism") not in DP_MECHANISMS:
        return None
    return _audit_settings(dp, rounds, **kwargs)


def _audit_settings(dp: dict[str, Any], rounds: int, **kwargs: Any) -> OneRunAudit:
    return audit_one_run(str(dp["mechanism"]), clip_norm=float(dp["clip_norm"]),
                         noise_multiplier=float(dp["noise_multiplier"]), rounds=rounds,
                         delta=float(dp["delta"]), accountant=str(dp.get("accountant", "rdp")),
                         **kwargs)
