"""Heterogeneity knobs: how simulated hospitals differ from one another.

Medical federations are not IID: hospitals differ in size, in whom they treat, in how they
label a diagnosis and in how they export records (the seed proposal's "data format, labelling
standards, coding systems and data distribution").  :class:`Heterogeneity` holds one strength
in [0, 1] per kind of difference; 0 switches that kind off.  The pure functions below
implement each knob; the Pima splitter (:func:`securefed.data.pima_hospitals`) and the
synthetic generator (:func:`securefed.data.synthetic_federation`) share them.

Randomness: each knob draws from its own child of ``numpy.random.SeedSequence(seed)`` (see
:func:`knob_streams`), so changing one strength never changes what another knob does.
"""

from __future__ import annotations

import math
from dataclasses import KW_ONLY, dataclass, replace

import numpy as np

from securefed.arrays import FederatedArrays
from securefed.errors import ConfigurationError

__all__ = [
    "Heterogeneity",
    "LabelRule",
    "knob_streams",
    "draw_sizes",
    "tilted_partition",
    "relabel",
    "formatted_hospitals",
    "COVARIATE_TILT",
    "hold_out_hospital_rows",
]

#: Tilt strength at covariate_shift = 1: a patient ``z`` standard deviations above the pool
#: mean of the hospital's tilt feature is ``exp(COVARIATE_TILT * z)`` times as likely to be drawn.
COVARIATE_TILT = 1.5


@dataclass(frozen=True)
class LabelRule:
    """A hospital's own diagnostic rule: positive when ``feature >= threshold`` (agreed unit)."""

    feature: str
    threshold: float
    description: str = ""

    def __str__(self) -> str:
        return f"{self.feature} >= {self.threshold:g}" + (f" ({self.description})" if self.description else "")


def _check_strength(name: str, value: float) -> float:
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise ConfigurationError(f"{name} must be a number in [0, 1], got {value!r}") from None
    if not (0.0 <= v <= 1.0) or math.isnan(v):
        raise ConfigurationError(f"{name} must be in [0, 1], got {value!r}")
    return v


@dataclass(frozen=True)
class Heterogeneity:
    """Strengths of the four ways simulated hospitals differ; each in [0, 1], 0 = off.

    ``quantity_skew`` (s): unequal hospital sizes.  Hospital k receives the share
    ``p_k = (1 - s) / K + s * q_k`` of the patients, with ``q ~ Dirichlet(1, ..., 1)`` drawn
    from the seed; every hospital then keeps at least ``min_hospital_size`` patients.  At 0 the
    sizes differ by at most one patient; at 1 they follow a flat Dirichlet (Pima, three
    hospitals, seeds 0-19: largest/smallest size has median 3.9, mean 5.1; at 0.5, mean 1.9).

    ``covariate_shift`` (s): each hospital draws a population shifted along one feature of its
    own (Pima: hospital 0 older, 1 heavier (BMI), 2 more pregnancies, 3 younger, 4 lighter,
    5 fewer pregnancies, then again; synthetic: age, BMI, systolic pressure, in the same
    pattern).  On Pima the hospitals pick patients in turn from the pool, each pick weighted by
    ``exp(s * COVARIATE_TILT * z)`` where ``z`` is the patient's standardised value of that
    hospital's feature (sign flipped for a "lower" hospital); ``COVARIATE_TILT = 1.5``.  The
    synthetic generator shifts that feature's generating mean by ``s`` times 12 years (age),
    5 kg/m^2 (BMI) or 15 mmHg (systolic pressure).  At 0 the split is a uniform random partition.

    ``label_convention`` (s): one hospital (``label_hospital``, default the last) labels a
    random fraction ``s`` of its patients by its own rule instead of the reference diagnosis:
    positive when a feature passes a cut-off (``label_rule``; the default for Pima is
    2-hour glucose ``glu >= 140 mg/dL``, the WHO threshold of impaired glucose tolerance, i.e.
    a clinic that counts IGT as diabetes; for the synthetic data ``hba1c >= 6.5 %``, the ADA
    criterion).  Patients whose rule feature is missing keep their label.  At 0 no label changes.

    ``format_shift`` (s): ``ceil(s * K)`` hospitals (chosen from the seed) export in a local
    format instead of the agreed one, taking the styles ``si-lab``, ``registry``, ``legacy`` in
    turn (:func:`securefed.data.formats.simulated_format`: glucose in mmol/L, other column
    names, target and category codes such as ``1``/``0`` or ``POS``/``NEG``).  Harmonisation
    undoes it exactly.  At 0 every hospital exports in the agreed schema.
    """

    quantity_skew: float = 0.0
    covariate_shift: float = 0.0
    label_convention: float = 0.0
    format_shift: float = 0.0
    _: KW_ONLY
    min_hospital_size: int = 10
    label_hospital: int = -1
    label_rule: LabelRule | None = None

    def __post_init__(self) -> None:
        for name in ("quantity_skew", "covariate_shift", "label_convention", "format_shift"):
            object.__setattr__(self, name, _check_strength(name, getattr(self, name)))
        if not isinstance(self.min_hospital_size, int) or self.min_hospital_size < 1:
            raise ConfigurationError(
                f"min_hospital_size must be an integer >= 1, got {self.min_hospital_size!r}"
            )
        if not isinstance(self.label_hospital, int):
            raise ConfigurationError(f"label_hospital must be an integer index, got {self.label_hospital!r}")

    @classmethod
    def none(cls) -> Heterogeneity:
        """Every knob off: equal sizes, IID split, one labelling rule, one format."""
        return cls()

    @classmethod
    def default(cls) -> Heterogeneity:
        """The documented "heterogeneity on" setting: every knob at 0.5.

        Half-strength skew, shift and relabelling (half of the last hospital's patients
        labelled by its own rule), and ``ceil(0.5 * K)`` hospitals in a local export format.
        """
        return cls(quantity_skew=0.5, covariate_shift=0.5, label_convention=0.5, format_shift=0.5)

    @property
    def is_none(self) -> bool:
        return not (self.quantity_skew or self.covariate_shift or self.label_convention
                    or self.format_shift)

    def describe(self) -> str:
        return (f"quantity_skew={self.quantity_skew:g}, covariate_shift={self.covariate_shift:g}, "
                f"label_convention={self.label_convention:g}, format_shift={self.format_shift:g}")


# -- the knobs as pure functions ------------------------------------------------------------

def knob_streams(seed: int | np.random.SeedSequence) -> dict[str, np.random.Generator]:
    """Independent generators, one per knob (plus ``population`` and ``test``)."""
    ss = seed if isinstance(seed, np.random.SeedSequence) else np.random.SeedSequence(seed)
    names = ("sizes", "population", "labels", "formats", "test")
    return {n: np.random.default_rng(c) for n, c in zip(names, ss.spawn(len(names)), strict=True)}


def draw_sizes(
    n_total: int, n_hospitals: int, strength: float, rng: np.random.Generator, *, min_size: int = 1
) -> np.ndarray:
    """Hospital sizes summing to ``n_total``: shares ``(1 - s)/K + s*q``, ``q ~ Dirichlet(1)``.

    Every hospital gets at least ``min_size``; the rest is shared by largest remainder.  The
    Dirichlet draw is made whatever ``strength`` is, so the same seed gives the same ``q``
    and a larger strength spreads the same sizes further apart.
    """
    if n_hospitals < 1:
        raise ConfigurationError(f"n_hospitals must be >= 1, got {n_hospitals}")
    if n_total < n_hospitals * min_size:
        raise ConfigurationError(
            f"{n_total} patients cannot give {n_hospitals} hospitals at least {min_size} each; "
            f"expected n_total >= {n_hospitals * min_size}"
        )
    q = rng.dirichlet(np.ones(n_hospitals))
    p = (1.0 - strength) / n_hospitals + strength * q
    spare = n_total - n_hospitals * min_size
    raw = p * spare
    base = np.floor(raw).astype(np.int64)
    left = spare - int(base.sum())
    order = np.argsort(-(raw - base), kind="stable")
    base[order[:left]] += 1
    return base + min_size


def tilted_partition(
    scores: np.ndarray, sizes: np.ndarray, strength: float, rng: np.random.Generator
) -> list[np.ndarray]:
    """Split rows between hospitals, hospital k favouring rows with a high ``scores[:, k]``.

    ``scores`` (n, K) holds each row's standardised tilt feature per hospital (sign already
    set, NaN read as 0).  Hospitals pick one row at a time, interleaved so each fills its
    quota at the same pace; a pick takes a remaining row with probability proportional to
    ``exp(strength * COVARIATE_TILT * score)``.  At strength 0 every weight is 1, so the
    result is a uniform random partition whatever the scores.
    """
    n, k = scores.shape
    if int(np.sum(sizes)) != n or len(sizes) != k:
        raise ConfigurationError(f"sizes {list(sizes)} must be one per hospital and sum to {n}")
    z = np.nan_to_num(np.asarray(scores, dtype=np.float64), nan=0.0)
    logw = strength * COVARIATE_TILT * z
    logw -= logw.max(axis=0, keepdims=True)
    weights = np.exp(logw)
    # interleave: the j-th pick of hospital h happens at "time" (j + 0.5) / size_h
    times = np.concatenate([(np.arange(s) + 0.5) / s for s in sizes])
    owner = np.concatenate([np.full(s, h) for h, s in enumerate(sizes)])
    schedule = owner[np.argsort(times, kind="stable")]
    remaining = np.ones(n, dtype=bool)
    picked: list[list[int]] = [[] for _ in range(k)]
    u = rng.random(n)
    for t, h in enumerate(schedule):
        w = np.where(remaining, weights[:, h], 0.0)
        c = np.cumsum(w)
        i = int(np.searchsorted(c, u[t] * c[-1], side="right"))
        i = min(i, n - 1)
        while not remaining[i]:  # guard against float ties at the upper edge
            i -= 1
        remaining[i] = False
        picked[h].append(i)
    return [np.sort(np.asarray(p, dtype=np.int64)) for p in picked]


def relabel(
    y: np.ndarray, rule_values: np.ndarray, threshold: float, strength: float,
    rng: np.random.Generator,
) -> tuple[np.ndarray, np.ndarray]:
    """One hospital's labels after applying its own rule to a fraction ``strength`` of rows.

    ``round(strength * n)`` rows are chosen uniformly; each gets ``rule_values >= threshold``
    (rows whose value is NaN keep their label).  Returns the new labels and the mask of rows
    the rule was applied to.
    """
    y = np.asarray(y).astype(np.int64).copy()
    n = len(y)
    m = int(round(strength * n))
    chosen = np.zeros(n, dtype=bool)
    if m > 0:
        chosen[rng.choice(n, size=m, replace=False)] = True
    vals = np.asarray(rule_values, dtype=np.float64)
    apply = chosen & np.isfinite(vals)
    y[apply] = (vals[apply] >= threshold).astype(np.int64)
    return y, apply


def formatted_hospitals(n_hospitals: int, strength: float, rng: np.random.Generator) -> list[int | None]:
    """For each hospital, the index of its export style (None: agreed format).

    ``ceil(strength * K)`` hospitals, chosen by a seeded permutation, take the styles
    0, 1, 2, 0, ... in the order chosen.
    """
    order = rng.permutation(n_hospitals)
    count = math.ceil(round(strength * n_hospitals, 9))
    styles: list[int | None] = [None] * n_hospitals
    for j, h in enumerate(order[:count]):
        styles[int(h)] = j % 3
    return styles


def resolve_hospital(index: int, n_hospitals: int) -> int:
    """A Python-style hospital index (``-1`` = last) as 0..K-1."""
    if not -n_hospitals <= index < n_hospitals:
        raise ConfigurationError(
            f"label_hospital must index one of {n_hospitals} hospitals, got {index}"
        )
    return index % n_hospitals


def hold_out_hospital_rows(data: FederatedArrays, *, fraction: float, seed: int) -> FederatedArrays:
    """Each hospital keeps ``fraction`` of its own rows aside as its own test patients.

    The held-out rows (stratified by label within each hospital, drawn from ``seed``) become
    the hospital's ``X_test``/``y_test`` (replacing any it had) and leave its training rows;
    they come from its own population and carry its own labelling convention.  The pooled
    ``data.X_test`` is kept.  Features stay standardised with the statistics ``data`` was
    prepared with (those included the held-out rows' features, never their labels).  Used for
    per-hospital validation and for sources without per-hospital test patients.
    """
    if not 0.0 < fraction < 1.0:
        raise ConfigurationError(f"fraction must be in (0, 1), got {fraction!r}")
    rngs = [np.random.default_rng(s) for s in np.random.SeedSequence(seed).spawn(len(data.clients))]
    clients = []
    for client, rng in zip(data.clients, rngs, strict=True):
        held = np.zeros(client.num_examples, dtype=bool)
        for cls in (0.0, 1.0):
            idx = np.flatnonzero(client.y == cls)
            held[rng.choice(idx, size=int(round(fraction * len(idx))), replace=False)] = True
        if held.all() or not held.any():
            raise ConfigurationError(
                f"fraction {fraction} leaves hospital {client.name!r} ({client.num_examples} rows) "
                "with no training rows or no test rows")
        clients.append(replace(client, X=client.X[~held], y=client.y[~held],
                               X_test=client.X[held], y_test=client.y[held]))
    return replace(data, clients=tuple(clients),
                   description=f"{data.description}; {fraction:g} of each hospital's rows held out "
                               "as its own test patients")
