"""Distributed DP: integer noise that each client adds under secure aggregation.

Why integers.  Pairwise-masking secure aggregation (Bonawitz et al., CCS 2017) works in
``Z_M``: each client maps its update to integers by fixed-point encoding
(``round(scale * x)``), adds masks modulo ``M``, and the masks cancel in the sum.  Floating
-point Gaussian noise does not fit this: a real-valued sample has no exact image in
``Z_M``, so it must be rounded, and the sum of rounded continuous Gaussians is neither a
Gaussian nor a distribution whose privacy the accountant can state; and the privacy proof
of the continuous Gaussian does not survive finite-precision sampling (Mironov 2012).
The noise has to be *integer-valued by construction* and *closed under summation* (or
nearly so), so that ``n`` clients' shares add up, inside the modular sum, to a noise of
known distribution.  The distributed discrete Gaussian (Kairouz, Liu and Steinke, ICML
2021) is such a noise: each client adds ``N_Z(0, sigma^2 / n)``, and the sum of the ``n``
shares is provably close to ``N_Z(0, sigma^2)`` (their Proposition 14 bounds the
difference by the term ``tau``, which is below 1e-300 for any per-client sigma >= 2).

What this module provides.

* :class:`DiscreteGaussianNoise`: the ``integer_noise`` object that
  ``securefed.secagg.SecAggChannel`` calls as ``sample(dim, scale=, num_clients=, rng=)``.
  It chooses the per-client variance so that ``n`` clients' noise sums to the target
  variance ``(z * Delta)^2`` where ``Delta = scale * C + sqrt(dim)`` bounds the L2 norm of
  an encoded clipped update (each coordinate's rounding moves it by less than 1).
* Exact samplers of the discrete Gaussian (Canonne, Kamath and Steinke, NeurIPS 2020,
  Algorithms 1-3): in secure mode they use only ``secrets.randbelow`` (the OS CSPRNG)
  and exact rational arithmetic; in simulation mode a vectorised version of the same
  rejection sampler runs on a seeded ``numpy`` generator.
* :class:`DistributedDP`: the strategy wrapper (clipping, uniform weights, accounting).

Accounting: per round, the distributed discrete Gaussian satisfies ``rho``-zCDP with
``rho = eps^2 / 2`` and ``eps = min(sqrt(Delta^2/(n s^2) + tau d / 2), Delta/(sqrt(n) s)
+ tau sqrt(d))`` (Kairouz et al. 2021, Theorem 1 / Proposition 14, with ``s^2`` the
per-client variance and ``n`` the clients whose noise reached the sum); the round enters
the library's RDP accountant as ``ZCDpEvent(rho)``, which composes and converts it.
No amplification by client sampling is claimed: the server runs the protocol with the
sampled hospitals, so it knows the sample.

Collusion.  The guarantee assumes no hospital hands its noise share to the server.  If ``k``
of the ``n`` contributors do, the server subtracts their shares and the sum carries only
``n - k`` shares: the same formula with ``n - k`` clients, ``rho_k = rho * n / (n - k)``
when ``tau`` is negligible.  With three hospitals, the server and one hospital remove a
third of the noise variance.  The ledger records the epsilon for every ``k`` so that the
report can state it beside the collusion-free value.

Floating point.  The noise is an integer drawn by an exact sampler and added to integers,
so it is not exposed to the floating-point attacks of Mironov (2012) that concern real-valued
samplers; the division by the fixed-point scale after aggregation is post-processing.
"""

from __future__ import annotations

import dataclasses
import math
import secrets
from fractions import Fraction
from typing import Any

import dp_accounting
import numpy as np
from dp_accounting.dp_event import DpEvent

from securefed.channel import ChannelResult
from securefed.dp.accounting import calibrate_noise_multiplier
from securefed.dp.clipping import check_clip_norm, check_noise_multiplier
from securefed.dp.ledger import TRACK_HOSPITAL, TRACK_HOSPITAL_REPLACE, collusion_track
from securefed.dp.mechanisms import ClientLevelDP
from securefed.dp.noise import NOT_PRIVATE, resolve_noise_mode
from securefed.errors import ConfigurationError, ProtocolAbort

__all__ = [
    "DiscreteGaussianNoise",
    "DistributedDP",
    "sample_discrete_gaussian",
    "secure_discrete_gaussian",
    "distributed_discrete_gaussian_rho",
]


# --------------------------------------------------------------------------------------
# Exact sampling from random bits (Canonne, Kamath and Steinke 2020)


def _bernoulli(p: Fraction) -> bool:
    """Bernoulli(p) for rational p in [0, 1], from one uniform integer of the OS CSPRNG."""
    return secrets.randbelow(p.denominator) < p.numerator


def _bernoulli_exp_unit(gamma: Fraction) -> bool:
    """Bernoulli(exp(-gamma)) for rational gamma in [0, 1] (CKS 2020, Algorithm 1)."""
    k = 1
    while _bernoulli(gamma / k):
        k += 1
    return k % 2 == 1


def _bernoulli_exp(gamma: Fraction) -> bool:
    """Bernoulli(exp(-gamma)) for rational gamma >= 0 (CKS 2020, Algorithm 1, gamma > 1 case)."""
    one = Fraction(1)
    while gamma > 1:
        if not _bernoulli_exp_unit(one):
            return False
        gamma -= 1
    return _bernoulli_exp_unit(gamma)


def _discrete_laplace(t: int) -> int:
    """P(Y = y) proportional to exp(-|y| / t), for an integer t >= 1 (CKS 2020, Algorithm 2)."""
    one = Fraction(1)
    while True:
        u = secrets.randbelow(t)
        if not _bernoulli_exp(Fraction(u, t)):
            continue
        v = 0
        while _bernoulli_exp(one):
            v += 1
        x = u + t * v
        negative = secrets.randbelow(2) == 1
        if negative and x == 0:
            continue
        return -x if negative else x


def _secure_discrete_gaussian_one(sigma2: Fraction, t: int) -> int:
    """One exact draw of N_Z(0, sigma2) (CKS 2020, Algorithm 3)."""
    two_sigma2 = 2 * sigma2
    shift = sigma2 / t
    while True:
        y = _discrete_laplace(t)
        gamma = (abs(y) - shift) ** 2 / two_sigma2
        if _bernoulli_exp(gamma):
            return y


def secure_discrete_gaussian(variance: float, size: int) -> np.ndarray:
    """``size`` exact draws of the discrete Gaussian ``N_Z(0, variance)`` from the OS CSPRNG.

    The float ``variance`` is taken as the exact rational it represents; every random
    choice is a uniform integer from ``secrets.randbelow``, so no floating-point rounding
    enters the distribution.  Pure Python: about 10^4-10^5 draws per second.
    """
    if not (math.isfinite(variance) and variance > 0):
        raise ConfigurationError(f"variance must be a finite number > 0, got {variance!r}")
    sigma2 = Fraction(variance)
    t = math.isqrt(math.floor(sigma2)) + 1
    return np.array([_secure_discrete_gaussian_one(sigma2, t) for _ in range(int(size))],
                    dtype=np.int64)


def sample_discrete_gaussian(variance: float, size: int, *, rng: np.random.Generator) -> np.ndarray:
    """``size`` draws of ``N_Z(0, variance)`` from a seeded generator (simulation mode).

    The same rejection sampler as :func:`secure_discrete_gaussian` (a discrete Laplace
    proposal with scale ``t = floor(sigma) + 1`` accepted with probability
    ``exp(-(|y| - sigma^2/t)^2 / (2 sigma^2))``), vectorised; the discrete Laplace draw is
    the difference of two geometric variables.  Acceptance probabilities are computed in
    floating point, so this is for reproducible simulation, not for deployment.
    """
    if not (math.isfinite(variance) and variance > 0):
        raise ConfigurationError(f"variance must be a finite number > 0, got {variance!r}")
    size = int(size)
    sigma = math.sqrt(variance)
    t = math.floor(sigma) + 1
    p = -math.expm1(-1.0 / t)  # 1 - exp(-1/t), success probability of each geometric
    out = np.empty(size, dtype=np.int64)
    filled = 0
    while filled < size:
        need = size - filled
        batch = max(need * 2, 16)
        y = rng.geometric(p, size=batch).astype(np.int64) - rng.geometric(p, size=batch).astype(np.int64)
        accept = rng.random(batch) < np.exp(-((np.abs(y) - variance / t) ** 2) / (2.0 * variance))
        got = y[accept][:need]
        out[filled:filled + got.shape[0]] = got
        filled += got.shape[0]
    return out


def distributed_discrete_gaussian_rho(
    *, l2_sensitivity: float, client_variance: float, num_clients: int, dim: int
) -> float:
    """zCDP ``rho`` of adding the sum of ``num_clients`` independent ``N_Z(0, client_variance)``
    vectors of dimension ``dim`` to an integer vector of L2 sensitivity ``l2_sensitivity``.

    Kairouz, Liu and Steinke (ICML 2021), Theorem 1: ``rho = eps^2 / 2`` with
    ``eps = min(sqrt(D^2/(n s^2) + tau d / 2), D/(sqrt(n) s) + tau sqrt(d))`` and
    ``tau = 10 sum_{k=1}^{n-1} exp(-2 pi^2 s^2 k / (k+1))``.

    >>> round(distributed_discrete_gaussian_rho(l2_sensitivity=100.0, client_variance=10000.0 / 3,
    ...                                         num_clients=3, dim=10), 6)
    0.5
    """
    n = int(num_clients)
    if n < 1:
        raise ConfigurationError(f"num_clients must be >= 1, got {num_clients!r}")
    s2 = float(client_variance)
    tau = 10.0 * sum(math.exp(-2.0 * math.pi ** 2 * s2 * k / (k + 1)) for k in range(1, n))
    d = float(dim)
    ratio2 = l2_sensitivity ** 2 / (n * s2)
    eps = min(math.sqrt(ratio2 + 0.5 * tau * d), math.sqrt(ratio2) + tau * math.sqrt(d))
    return 0.5 * eps * eps


# --------------------------------------------------------------------------------------
# The integer_noise object handed to the secure-aggregation channel


@dataclasses.dataclass(frozen=True)
class NoiseCall:
    """What the channel asked for in one call: used afterwards for accounting."""

    dim: int
    scale: float
    num_clients: int
    client_variance: float


class DiscreteGaussianNoise:
    """Per-client share of a distributed discrete Gaussian, in the fixed-point integer domain.

    ``sample(dim, scale=, num_clients=, rng=)`` returns one client's int64 noise vector.
    The variance is chosen so that the shares of ``num_clients * (1 - dropout_tolerance)``
    clients sum to the target ``(noise_multiplier * (scale * clip_norm + sqrt(dim)))^2``:
    with ``dropout_tolerance > 0`` each client adds a little more so that the target still
    holds when that fraction of clients drops out after adding nothing.

    By default the noise comes from the OS CSPRNG via an exact sampler and the ``rng``
    argument is ignored; a ``seed`` is refused.  With ``reproducible_noise=True`` (not
    private) it comes from ``seed`` (if given) or from the ``rng`` the channel passes, which
    is the client's own per-round stream derived from the run's seed (in the simulation and,
    in this mode, at a deployed node): anyone holding the seed could recompute every share.

    In a deployment the shares are drawn at the hospitals, each by its own copy of this
    object; the server's copy draws nothing and is told what the nodes were asked to add
    (:meth:`record_shares`), which is what the accounting reads.

    A channel that accepts ``integer_noise`` should add this vector to the client's encoded
    integers *before* masking; only the sum (all masks cancelled) then carries the noise.
    """

    def __init__(
        self,
        *,
        noise_multiplier: float,
        clip_norm: float,
        dropout_tolerance: float = 0.0,
        reproducible_noise: bool = False,
        seed: int | None = None,
        secure: bool | None = None,
    ) -> None:
        self.noise_multiplier = check_noise_multiplier(noise_multiplier)
        self.clip_norm = check_clip_norm(clip_norm)
        if not 0.0 <= dropout_tolerance < 1.0:
            raise ConfigurationError(f"dropout_tolerance must be in [0, 1), got {dropout_tolerance!r}")
        self.reproducible = resolve_noise_mode(reproducible_noise=reproducible_noise, seed=seed,
                                               secure=secure)
        self.dropout_tolerance = float(dropout_tolerance)
        self.seed = seed
        self._rng = np.random.default_rng(seed) if (self.reproducible and seed is not None) else None
        self.calls: list[NoiseCall] = []

    @property
    def secure(self) -> bool:
        """True when the shares come from the OS CSPRNG (the default)."""
        return not self.reproducible

    def l2_sensitivity(self, dim: int, *, scale: float) -> float:
        """Bound on the L2 norm of an encoded clipped update: ``scale * C + sqrt(dim)``."""
        return float(scale) * self.clip_norm + math.sqrt(dim)

    def target_variance(self, dim: int, *, scale: float) -> float:
        """Per-coordinate variance the aggregate should carry (integer units)."""
        return (self.noise_multiplier * self.l2_sensitivity(dim, scale=scale)) ** 2

    def client_variance(self, dim: int, *, scale: float, num_clients: int) -> float:
        """Per-coordinate variance of one client's share."""
        if not (isinstance(num_clients, (int, np.integer)) and num_clients >= 1):
            raise ConfigurationError(f"num_clients must be an integer >= 1, got {num_clients!r}")
        survivors = num_clients * (1.0 - self.dropout_tolerance)
        return self.target_variance(dim, scale=scale) / survivors

    def sample(
        self, dim: int, *, scale: float, num_clients: int, rng: np.random.Generator | None = None
    ) -> np.ndarray:
        """One client's noise share: ``dim`` int64 values."""
        if not (isinstance(dim, (int, np.integer)) and dim >= 1):
            raise ConfigurationError(f"dim must be an integer >= 1, got {dim!r}")
        if not (math.isfinite(scale) and scale > 0):
            raise ConfigurationError(f"scale must be a finite number > 0, got {scale!r}")
        var = self.client_variance(int(dim), scale=scale, num_clients=int(num_clients))
        self.calls.append(NoiseCall(int(dim), float(scale), int(num_clients), var))
        if self.secure:
            return secure_discrete_gaussian(var, int(dim))
        gen = self._rng if self._rng is not None else rng
        if gen is None:
            raise ConfigurationError("reproducible noise needs a seed or an rng; got neither")
        return sample_discrete_gaussian(var, int(dim), rng=gen)

    def record_shares(self, dim: int, *, scale: float, num_clients: int, shares: int) -> None:
        """Record ``shares`` noise shares drawn elsewhere (by deployed nodes, each calling
        :meth:`sample` with these arguments), for the accounting, without drawing any."""
        if not (isinstance(shares, (int, np.integer)) and shares >= 1):
            raise ConfigurationError(f"shares must be an integer >= 1, got {shares!r}")
        if not (math.isfinite(scale) and scale > 0):
            raise ConfigurationError(f"scale must be a finite number > 0, got {scale!r}")
        var = self.client_variance(int(dim), scale=scale, num_clients=int(num_clients))
        self.calls.extend([NoiseCall(int(dim), float(scale), int(num_clients), var)] * int(shares))

    def describe(self) -> dict[str, Any]:
        out: dict[str, Any] = {"integer_noise": "discrete_gaussian", "secure": self.secure,
                               "seed": self.seed, "dropout_tolerance": self.dropout_tolerance}
        if self.reproducible:
            out["warning"] = NOT_PRIVATE
        return out


# --------------------------------------------------------------------------------------
# The strategy wrapper


class DistributedDP(ClientLevelDP):
    """Client-level DP whose noise is added by the clients, inside secure aggregation.

    Use it with a channel that accepts ``integer_noise``::

        dp = DistributedDP(FedAvg(), clip_norm=1.0, noise_multiplier=1.0)
        channel = secagg_channel_for(dp)            # securefed.secagg
        run_federated(data, strategy=dp, channel=channel, ...)

    Clients clip, bound what they send (as in :class:`~securefed.dp.CentralDP`) and add
    their noise share to their fixed-point integers; the server divides the noisy sum by the
    expected number of clients.  Epsilon is accounted from what the channel actually did:
    how many clients' noise reached the sum, at which dimension and scale.  If the channel
    drew no noise in a round (for example a plain channel was used by mistake), the round
    is refused with :class:`~securefed.errors.ProtocolAbort` rather than reported as private.

    Threat model: the server follows the secure-aggregation protocol and sees only masked
    vectors and the noisy sum; no hospital shares its noise with the server.  The epsilon
    that holds if ``k`` hospitals do is recorded too (``report().collusion``).
    """

    mechanism = "distributed"
    releases_before_aggregation = True  # the noisy sum, once unmasked
    bounds_release = True

    def __init__(self, inner, *, dropout_tolerance: float = 0.0, **kwargs: Any) -> None:  # type: ignore[no-untyped-def]
        if kwargs.get("accountant", "rdp") != "rdp":
            raise ConfigurationError(
                f"DistributedDP accounts with zCDP events, which only the 'rdp' accountant "
                f"composes; got accountant={kwargs['accountant']!r}")
        self._last_charges: dict[str, DpEvent] | None = None
        super().__init__(inner, **kwargs)
        self.integer_noise = DiscreteGaussianNoise(
            noise_multiplier=self.noise_multiplier, clip_norm=self.clip_norm,
            dropout_tolerance=dropout_tolerance, reproducible_noise=self.noise.reproducible,
            seed=self.noise.seed)
        self._calls_seen = 0

    def round_charges(self) -> dict[str, DpEvent]:
        """The next round's charges: the last round's, or before any round the Gaussian values
        (``rho = 1 / (2 z^2)``, four times that for replace-one, ``n / (n - k)`` times that
        with ``k`` colluders)."""
        if self._last_charges is not None:
            return dict(self._last_charges)
        rho = 0.5 / self.noise_multiplier ** 2
        out: dict[str, DpEvent] = {TRACK_HOSPITAL: dp_accounting.ZCDpEvent(rho),
                                   TRACK_HOSPITAL_REPLACE: dp_accounting.ZCDpEvent(4.0 * rho)}
        n = self.num_clients or 0
        for k in range(1, n):
            out[collusion_track(k)] = dp_accounting.ZCDpEvent(rho * n / (n - k))
        return out

    def _calibrate(self, rounds: int) -> float:
        return calibrate_noise_multiplier(
            target_epsilon=self.target_epsilon, delta=self.delta, rounds=rounds,
            sampling_rate=1.0, accountant="rdp")

    def start_run(self, facts) -> None:  # type: ignore[no-untyped-def]
        self._last_charges = None
        super().start_run(facts)

    def before_round(self, round_index: int) -> None:
        super().before_round(round_index)
        self._calls_seen = len(self.integer_noise.calls)

    def server_aggregate(self, result: ChannelResult, *, rng: np.random.Generator) -> np.ndarray:
        calls = self.integer_noise.calls[self._calls_seen:]
        self._calls_seen = len(self.integer_noise.calls)
        if not calls:
            raise ProtocolAbort(
                "DistributedDP: the channel added no integer noise this round; expected a "
                "channel built with integer_noise=<this wrapper>.integer_noise (for example "
                "securefed.secagg.SecAggChannel)")
        call = calls[0]
        survivors = max(1, len(result.contributors))
        variance = min(c.client_variance for c in calls)
        sens = self.integer_noise.l2_sensitivity(call.dim, scale=call.scale)

        def rho(sensitivity: float, shares: int) -> float:
            return distributed_discrete_gaussian_rho(
                l2_sensitivity=sensitivity, client_variance=variance, num_clients=shares,
                dim=call.dim)

        charges: dict[str, DpEvent] = {
            TRACK_HOSPITAL: dp_accounting.ZCDpEvent(rho(sens, survivors)),
            TRACK_HOSPITAL_REPLACE: dp_accounting.ZCDpEvent(rho(2.0 * sens, survivors)),
        }
        for k in range(1, max(self.num_clients or 0, survivors)):
            charges[collusion_track(k)] = dp_accounting.ZCDpEvent(rho(sens, max(1, survivors - k)))
        self._last_charges = charges
        self._charge_round(charges)
        fixed = dataclasses.replace(result, weight_sum=float(self.clients_per_round or 1))
        return self.inner.server_aggregate(fixed, rng=rng)

    def describe(self) -> dict[str, Any]:
        d = super().describe()
        d["dp"].update(self.integer_noise.describe())
        return d

    def secagg_clip_range(self, *, tail: float = 8.0) -> float:
        """The overflow range a secure-aggregation channel needs for these updates plus noise.

        The channel's overflow check covers ``clip_range`` only, so the range is widened to
        ``C * (1 + 2 * tail * z' / m)`` (``z'`` the noise multiplier after the dropout
        allowance, ``m`` the clients per round, 1 while the federation is not known yet):
        the sum of the noise shares, of standard deviation ``z' (C + sqrt(d) / scale) <= 2 z' C``
        in float units, then stays inside the group except with probability about
        ``exp(-tail^2 / 2)`` per coordinate.  :func:`securefed.secagg.secagg_channel_for`
        builds the channel with it.
        """
        if not tail > 0:
            raise ConfigurationError(f"tail must be > 0, got {tail!r}")
        z_eff = self.noise_multiplier / math.sqrt(1.0 - self.integer_noise.dropout_tolerance)
        return self.clip_norm * (1.0 + 2.0 * tail * z_eff / (self.clients_per_round or 1))
