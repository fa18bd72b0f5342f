"""Privacy accounting on top of Google's ``dp-accounting`` library.

Nothing here re-derives a privacy bound.  Each round of training is described as a
``dp_accounting.DpEvent`` (what noise was added, to what, after what sampling); the library's
RDP accountant (Mironov, CSF 2017; subsampled Gaussian of Mironov, Talwar and Zhang 2019)
or PLD accountant (Koskela et al. 2020; Doroshenko et al. 2022) composes the events and
converts the result to ``(epsilon, delta)``.  This module only builds events, keeps the
ledger of rounds and wraps the library's calibration search.

Client sampling.  The engine samples ``m`` of ``K`` clients per round, so the sampling rate
is ``q = m / K``.  Two ways to account for it are offered:

``sampling="poisson"`` (default)
    The round is a Poisson-subsampled Gaussian (each client in with probability ``q``)
    under the add-or-remove-one-client relation; the noise multiplier is ``sigma / C``.
    This is the analysis of DP-FedAvg (McMahan et al., ICLR 2018, Section 3) and of
    DP-SGD (Abadi et al., CCS 2016).  The engine draws a *fixed-size* sample, which this
    analysis only approximates when ``q < 1``; with ``q = 1`` it is exact.
``sampling="without_replacement"``
    Exactly the engine's fixed-size sampling (Wang, Balle and Kasiviswanathan, AISTATS
    2019, Theorem 27), which requires the replace-one relation; replacing one clipped
    update moves the sum by up to ``2 C``, so the library sees noise multiplier
    ``sigma / (2 C)``.  RDP accountant only.

Worked number (Abadi et al. 2016, Section 5: q = 0.01, sigma = 4, 10,000 steps):

>>> round(compute_epsilon(noise_multiplier=4.0, sampling_rate=0.01, rounds=10_000,
...                       delta=1e-5), 2)
1.04
"""

from __future__ import annotations

import copy
import logging
import math

import dp_accounting
from dp_accounting import NeighboringRelation
from dp_accounting.dp_event import DpEvent

from securefed.dp.clipping import check_delta, check_noise_multiplier
from securefed.errors import ConfigurationError

__all__ = [
    "ACCOUNTANTS",
    "SAMPLINGS",
    "RoundAccountant",
    "sampled_gaussian_event",
    "compute_epsilon",
    "calibrate_noise_multiplier",
    "max_rounds_within",
]

ACCOUNTANTS = ("rdp", "pld")


class _QuietFractionalOrders(logging.Filter):
    """The RDP accountant logs a warning each time it drops a fractional order whose series
    does not converge (it then uses the remaining orders, as documented).  The message is
    repeated for every query and says nothing a user can act on, so it is filtered."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "_compute_log_a_frac failed to converge" not in record.getMessage()


logging.getLogger("absl").addFilter(_QuietFractionalOrders())
SAMPLINGS = ("poisson", "without_replacement")


def _check_choice(name: str, value: str, valid: tuple[str, ...]) -> str:
    if value not in valid:
        raise ConfigurationError(f"unknown {name} {value!r}; valid: {list(valid)}")
    return value


def _check_rate(sampling_rate: float) -> float:
    q = float(sampling_rate)
    if not 0.0 < q <= 1.0:
        raise ConfigurationError(f"sampling_rate must be in (0, 1], got {sampling_rate!r}")
    return q


def _check_rounds(rounds: int, name: str = "rounds") -> int:
    if isinstance(rounds, bool) or not isinstance(rounds, int) or rounds < 1:
        raise ConfigurationError(f"{name} must be an integer >= 1, got {rounds!r}")
    return rounds


def make_library_accountant(
    accountant: str, neighboring_relation: NeighboringRelation
) -> dp_accounting.PrivacyAccountant:
    """A fresh accountant from the library: ``"rdp"`` or ``"pld"``."""
    _check_choice("accountant", accountant, ACCOUNTANTS)
    if accountant == "rdp":
        return dp_accounting.rdp.RdpAccountant(neighboring_relation=neighboring_relation)
    return dp_accounting.pld.PLDAccountant(neighboring_relation=neighboring_relation)


def sampled_gaussian_event(
    *,
    noise_multiplier: float,
    sampling_rate: float = 1.0,
    sampling: str = "poisson",
    population: int | None = None,
) -> tuple[DpEvent, NeighboringRelation]:
    """The library event of one round, and the neighbouring relation it is stated under.

    ``noise_multiplier`` is ``sigma / C`` (noise std over the clipping norm).  For
    ``sampling="without_replacement"`` the ``population`` (number of clients ``K``) is
    needed, and the sample size is ``round(q * K)``.
    """
    z = check_noise_multiplier(noise_multiplier)
    q = _check_rate(sampling_rate)
    _check_choice("sampling", sampling, SAMPLINGS)
    if sampling == "poisson":
        gauss = dp_accounting.GaussianDpEvent(z)
        event: DpEvent = gauss if q == 1.0 else dp_accounting.PoissonSampledDpEvent(q, gauss)
        return event, NeighboringRelation.ADD_OR_REMOVE_ONE
    gauss = dp_accounting.GaussianDpEvent(z / 2.0)  # replace-one: sensitivity 2C
    if q == 1.0:
        return gauss, NeighboringRelation.REPLACE_ONE
    if population is None or population < 1:
        raise ConfigurationError(
            f"sampling='without_replacement' needs the number of clients (population >= 1), "
            f"got {population!r}")
    size = int(round(q * population))
    if not 1 <= size <= population:
        raise ConfigurationError(
            f"sample size round(q * population) = {size} is outside [1, {population}]")
    return (dp_accounting.SampledWithoutReplacementDpEvent(population, size, gauss),
            NeighboringRelation.REPLACE_ONE)


class RoundAccountant:
    """The ledger of one run: every round's event, composed by the library's accountant.

    A small stateful object in the manner of Opacus's accountants: it remembers what was
    spent and answers ``epsilon(delta)``; :meth:`epsilon_if` answers "what would epsilon be
    after one more such round" without spending it (used for budget enforcement).
    """

    def __init__(
        self,
        *,
        accountant: str = "rdp",
        neighboring_relation: NeighboringRelation = NeighboringRelation.ADD_OR_REMOVE_ONE,
    ) -> None:
        self.accountant = _check_choice("accountant", accountant, ACCOUNTANTS)
        self.neighboring_relation = neighboring_relation
        self.reset()

    def reset(self) -> None:
        """Forget every round (a fresh run starts from zero privacy loss)."""
        self._acc = make_library_accountant(self.accountant, self.neighboring_relation)
        self.events: list[DpEvent] = []

    @property
    def rounds(self) -> int:
        return len(self.events)

    def _check_supported(self, event: DpEvent) -> None:
        if not self._acc.supports(event):
            raise ConfigurationError(
                f"the {self.accountant!r} accountant of dp-accounting cannot compose {event} "
                f"under {self.neighboring_relation.name}; try accountant='rdp' or "
                f"sampling='poisson'")

    def compose(self, event: DpEvent) -> None:
        """Record one round."""
        self._check_supported(event)
        self._acc.compose(event)
        self.events.append(event)

    def epsilon(self, *, delta: float) -> float:
        """Epsilon spent so far at ``delta`` (0.0 before any round)."""
        delta = check_delta(delta)
        if not self.events:
            return 0.0
        return float(self._acc.get_epsilon(delta))

    def epsilon_if(self, event: DpEvent, *, delta: float, count: int = 1) -> float:
        """Epsilon after ``count`` more rounds of ``event``, leaving this ledger untouched."""
        delta = check_delta(delta)
        self._check_supported(event)
        trial = copy.deepcopy(self._acc)
        trial.compose(event, count)
        return float(trial.get_epsilon(delta))


def compute_epsilon(
    *,
    noise_multiplier: float,
    rounds: int,
    delta: float,
    sampling_rate: float = 1.0,
    sampling: str = "poisson",
    population: int | None = None,
    accountant: str = "rdp",
) -> float:
    """Epsilon at ``delta`` after ``rounds`` rounds of the sampled Gaussian mechanism."""
    rounds = _check_rounds(rounds)
    delta = check_delta(delta)
    event, relation = sampled_gaussian_event(noise_multiplier=noise_multiplier,
                                             sampling_rate=sampling_rate, sampling=sampling,
                                             population=population)
    acc = make_library_accountant(accountant, relation)
    acc.compose(event, rounds)
    return float(acc.get_epsilon(delta))


def calibrate_noise_multiplier(
    *,
    target_epsilon: float,
    delta: float,
    rounds: int,
    sampling_rate: float = 1.0,
    sampling: str = "poisson",
    population: int | None = None,
    accountant: str = "rdp",
    max_noise_multiplier: float = 1000.0,
    tol: float = 1e-4,
) -> float:
    """The smallest noise multiplier (within ``tol``) whose epsilon after ``rounds`` rounds
    is at most ``target_epsilon`` at ``delta``.

    The search is the library's ``calibrate_dp_mechanism`` (Brent's method with a bisection
    fallback that guarantees the returned value meets the target) over the same accountant
    used during training.  A target that even ``max_noise_multiplier`` cannot reach raises
    :class:`~securefed.errors.ConfigurationError`.
    """
    rounds = _check_rounds(rounds)
    delta = check_delta(delta)
    if not (isinstance(target_epsilon, (int, float)) and math.isfinite(target_epsilon)
            and target_epsilon > 0):
        raise ConfigurationError(f"target_epsilon must be a finite number > 0, got {target_epsilon!r}")
    max_noise_multiplier = check_noise_multiplier(max_noise_multiplier)

    def event_for(z: float) -> DpEvent:
        event, _ = sampled_gaussian_event(noise_multiplier=z, sampling_rate=sampling_rate,
                                          sampling=sampling, population=population)
        return dp_accounting.SelfComposedDpEvent(event, rounds)

    _, relation = sampled_gaussian_event(noise_multiplier=1.0, sampling_rate=sampling_rate,
                                         sampling=sampling, population=population)

    def fresh() -> dp_accounting.PrivacyAccountant:
        return make_library_accountant(accountant, relation)

    best = fresh().compose(event_for(max_noise_multiplier)).get_epsilon(delta)
    if best > target_epsilon:
        raise ConfigurationError(
            f"target (epsilon={target_epsilon}, delta={delta}) over {rounds} rounds at sampling "
            f"rate {sampling_rate} cannot be reached: even noise_multiplier="
            f"{max_noise_multiplier} gives epsilon={best:.4g}; expected a larger target_epsilon, "
            f"a larger delta, fewer rounds or a smaller sampling rate")
    # Lower end of the bracket: halve until the target is exceeded (epsilon grows as the
    # noise shrinks), so that the library's root search has a sign change to work with.
    low = max_noise_multiplier
    while fresh().compose(event_for(low)).get_epsilon(delta) <= target_epsilon:
        low /= 2.0
        if low < 1e-6:  # practically no noise is needed for this target
            return 2.0 * low
    z = dp_accounting.calibrate_dp_mechanism(
        fresh, event_for, target_epsilon, delta,
        bracket_interval=dp_accounting.ExplicitBracketInterval(low, 2.0 * low), tol=tol)
    return float(z)


def max_rounds_within(
    *,
    target_epsilon: float,
    delta: float,
    noise_multiplier: float,
    sampling_rate: float = 1.0,
    sampling: str = "poisson",
    population: int | None = None,
    accountant: str = "rdp",
    limit: int = 100_000,
) -> int:
    """The largest number of rounds whose epsilon stays within ``target_epsilon`` (0 if
    even one round exceeds it), found by doubling and bisection over the library's epsilon."""
    delta = check_delta(delta)

    def fits(t: int) -> bool:
        return compute_epsilon(noise_multiplier=noise_multiplier, rounds=t, delta=delta,
                               sampling_rate=sampling_rate, sampling=sampling,
                               population=population, accountant=accountant) <= target_epsilon

    if not fits(1):
        return 0
    lo, hi = 1, 2
    while hi <= limit and fits(hi):
        lo, hi = hi, hi * 2
    if hi > limit:
        return limit if fits(limit) else _bisect_rounds(fits, lo, limit)
    return _bisect_rounds(fits, lo, hi)


def _bisect_rounds(fits, lo: int, hi: int) -> int:  # fits(lo) is True, fits(hi) is False
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if fits(mid):
            lo = mid
        else:
            hi = mid
    return lo
