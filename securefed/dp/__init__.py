"""Differential privacy for securefed: clipping and bounding what leaves a client, Gaussian
noise (central, local and distributed under secure aggregation) from the OS CSPRNG,
example-level DP-SGD, accounting with the ``dp-accounting`` library in a ledger that travels
with the model, fully described epsilons, and a one-run empirical audit.  See ``docs/dp.md``.

Floors, as elsewhere in securefed: pure functions (:func:`clip_l2`, :func:`bound_release`,
the samplers, :func:`compute_epsilon`, :func:`epsilon_lower_bound`), small stateful objects
(:class:`PrivacyLedger`, the noise sources), and strategy wrappers that wire them into a run
(:class:`CentralDP`, :class:`LocalDP`, :class:`DistributedDP`, :class:`DPSGD`).
"""

from securefed.dp.accounting import (
    RoundAccountant,
    calibrate_noise_multiplier,
    compute_epsilon,
    max_rounds_within,
    sampled_gaussian_event,
)
from securefed.dp.audit import (
    OneRunAudit,
    audit_for_run,
    audit_for_strategy,
    audit_one_run,
    epsilon_lower_bound,
    one_run_p_value,
)
from securefed.dp.clipping import bound_release, clip_l2
from securefed.dp.distributed import (
    DiscreteGaussianNoise,
    DistributedDP,
    distributed_discrete_gaussian_rho,
    sample_discrete_gaussian,
    secure_discrete_gaussian,
)
from securefed.dp.dpsgd import DPSGD, per_example_gradients
from securefed.dp.ledger import EpsilonStatement, PrivacyLedger, PrivacyReport, privacy_report
from securefed.dp.mechanisms import CentralDP, ClientLevelDP, LocalDP, save_partial_result
from securefed.dp.noise import NOT_PRIVATE, GaussianNoise
from securefed.dp.registry import (
    DP_MECHANISMS,
    dp_mechanism_names,
    get_dp_mechanism,
    make_dp_strategy,
    register_dp_mechanism,
)

__all__ = [
    "DP_MECHANISMS",
    "NOT_PRIVATE",
    "dp_mechanism_names",
    "get_dp_mechanism",
    "register_dp_mechanism",
    "make_dp_strategy",
    "EpsilonStatement",
    "OneRunAudit",
    "PrivacyLedger",
    "PrivacyReport",
    "audit_for_run",
    "audit_for_strategy",
    "audit_one_run",
    "bound_release",
    "epsilon_lower_bound",
    "one_run_p_value",
    "privacy_report",
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
