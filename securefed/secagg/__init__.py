"""Pairwise-masking secure aggregation with dropout recovery.

Bonawitz et al., "Practical Secure Aggregation for Privacy-Preserving Machine Learning",
CCS 2017 (double masking, Shamir-shared seeds and keys), and the sparse-graph variant
SecAgg+ of Bell et al., "Secure Single-Server Aggregation with (Poly)Logarithmic Overhead",
CCS 2020.  See ``docs/secure-aggregation.md`` for the protocol, the threat model and the
measured costs.

Floors: :mod:`~securefed.secagg.encoding`, :mod:`~securefed.secagg.shamir`,
:mod:`~securefed.secagg.crypto` and :mod:`~securefed.secagg.graph` are pure functions;
:mod:`~securefed.secagg.modes` names the two threat models (``"malicious"``, the default,
and ``"honest-but-curious"``); :mod:`~securefed.secagg.protocol` holds the client and server
state machines;
:class:`SecAggChannel` wires them into the round engine.
"""

from securefed.secagg.channel import IntegerNoise, SecAggChannel, secagg_channel_for
from securefed.secagg.encoding import FixedPointEncoder, choose_scale
from securefed.secagg.graph import choose_degree_and_threshold, complete_graph, harary_graph
from securefed.secagg.modes import DEFAULT_MIN_CLIENTS, HONEST_BUT_CURIOUS, MALICIOUS, MODES
from securefed.secagg.protocol import (
    STAGES,
    STAGES_HONEST_BUT_CURIOUS,
    RoundOutcome,
    SecAggClient,
    SecAggServer,
    model_digest,
    run_round,
    stages_for,
)

__all__ = [
    "SecAggChannel", "IntegerNoise", "FixedPointEncoder", "choose_scale",
    "choose_degree_and_threshold", "complete_graph", "harary_graph",
    "MALICIOUS", "HONEST_BUT_CURIOUS", "MODES", "DEFAULT_MIN_CLIENTS",
    "STAGES", "STAGES_HONEST_BUT_CURIOUS", "stages_for", "model_digest",
    "RoundOutcome", "SecAggClient", "SecAggServer", "run_round",
]
