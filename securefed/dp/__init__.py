"""Differential privacy for securefed: clipping, Gaussian noise (central, local and
distributed under secure aggregation), example-level DP-SGD, and accounting with the
``dp-accounting`` library.  See ``docs/dp.md``.

Floors, as elsewhere in securefed: pure functions (:func:`clip_l2`, the samplers,
:func:`compute_epsilon`), small stateful objects (:class:`RoundAccountant`, the noise
sources), and strategy wrappers that wire them into a run (:class:`CentralDP`,
:class:`LocalDP`, :class:`DistributedDP`, :class:`DPSGD`).
"""

from securefed.dp.accounting import (
    RoundAccountant,
    calibrate_noise_multiplier,
    compute_epsilon,
    max_rounds_within,
    sampled_gaussian_event,
)
from securefed.dp.clipping import clip_l2
from securefed.dp.distributed import (
    DiscreteGaussianNoise,
    DistributedDP,
    distributed_discrete_gaussian_rho,
    sample_discrete_gaussian,
    secure_discrete_gaussian,
)
from securefed.dp.dpsgd import DPSGD, per_example_gradients
from securefed.dp.mechanisms import CentralDP, ClientLevelDP, LocalDP, save_partial_result
from securefed.dp.noise import GaussianNoise
from securefed.dp.registry import (
    DP_MECHANISMS,
    dp_mechanism_names,
    get_dp_mechanism,
    make_dp_strategy,
    register_dp_mechanism,
)

__all__ = [
    "DP_MECHANISMS",
    "dp_mechanism_names",
    "get_dp_mechanism",
    "register_dp_mechanism",
    "make_dp_strategy",
    "CentralDP",
    "ClientLevelDP",
    "DPSGD",
    "DiscreteGaussianNoise",
    "DistributedDP",
    "GaussianNoise",
    "LocalDP",
    "RoundAccountant",
    "calibrate_noise_multiplier",
    "clip_l2",
    "compute_epsilon",
    "distributed_discrete_gaussian_rho",
    "max_rounds_within",
    "per_example_gradients",
    "sample_discrete_gaussian",
    "sampled_gaussian_event",
    "save_partial_result",
    "secure_discrete_gaussian",
]


def __getattr__(name: str):  # type: ignore[no-untyped-def]
    from securefed._compat import moved

    # securefed.dp builds no channel: the secure-aggregation channel lives above it.
    return moved(__name__, name, {"secagg_channel_for": "securefed.secagg.channel"})
