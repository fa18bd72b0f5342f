"""A compression setting: top-k sparsified, quantised uploads with error feedback.

Not a cryptographic defense: it cuts upload bytes and leaves fewer, coarser coordinates for
an attacker to invert (pruning gradients is a defense studied by Zhu et al., NeurIPS 2019,
Sec. 6).  The codec and the error-feedback step are :mod:`securefed.compression`'s; the
wrapper here applies them to any strategy.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from defenses.base import Defense, PartyView, RunContext, register_defense
from securefed.compression import TopKSparsifier, error_feedback_step
from securefed.federated import PlainChannel, Strategy, StrategyWrapper

__all__ = ["CompressedUploads"]


class CompressedUploads(StrategyWrapper):
    """Sends ``codec(weight * update + residual)`` and keeps the residual (Stich et al. 2018)."""

    def __init__(self, inner: Strategy, *, codec: Any) -> None:
        super().__init__(inner)
        self.codec = codec

    def client_process(self, update, weight, *, client_state, rng):  # type: ignore[override]
        vector = weight * np.asarray(update, dtype=np.float64)
        decoded, payload, residual = error_feedback_step(
            vector, client_state.get("compression_residual"), self.codec, rng=rng)
        client_state["compression_residual"] = residual
        return decoded, payload

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "codec": self.codec.name}


def _compression(*, k_fraction: float = 0.25, value_bits: int | None = 8) -> Defense:
    def wrap(s: Strategy, ctx: RunContext) -> Strategy:
        return CompressedUploads(s, codec=TopKSparsifier(k_fraction=k_fraction,
                                                         value_bits=value_bits))

    return Defense(
        name="compression",
        summary="Top-k sparsified, quantised uploads with error feedback (pruning).",
        channel_factory=lambda strategy: PlainChannel(),
        wrappers=(wrap,),
        views=(
            PartyView("server", "each hospital's pruned, quantised update in the clear",
                      individual_updates=True, aggregate=True),
            PartyView("client", "the global model of each round", individual_updates=False,
                      aggregate=True),
            PartyView("outsider", "the released final model", individual_updates=False,
                      aggregate=False),
        ),
        params={"k_fraction": k_fraction, "value_bits": value_bits},
    )


register_defense("compression", _compression)
