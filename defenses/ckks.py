"""Defense settings built on CKKS homomorphic encryption (``securefed.he``, TenSEAL).

``ckks``: hospitals encrypt their weighted updates under a key the server never holds; the
server adds ciphertexts with a public-only context and the key holders decrypt the sum.  For
centralised algorithms it selects encrypted-centralised training (hospitals encrypt their
rows; the server trains logistic regression on ciphertexts).
"""

from __future__ import annotations

from defenses.base import Defense, PartyView, register_defense
from securefed.he import CKKSChannel

__all__: list[str] = []


def _ckks(*, reveal: str = "rounded") -> Defense:
    return Defense(
        name="ckks",
        summary="CKKS homomorphic aggregation: the server adds ciphertexts it cannot decrypt; "
                "key-holding hospitals decrypt only the sum.",
        channel_factory=lambda strategy: CKKSChannel(reveal=reveal),
        views=(
            PartyView("server", "each hospital's update as a CKKS ciphertext (public context "
                      "only, cannot decrypt) and the decrypted sum", individual_updates=False,
                      aggregate=True),
            PartyView("client", "the decrypted sum and the global model (holds the secret key)",
                      individual_updates=False, aggregate=True),
            PartyView("outsider", "the released final model", individual_updates=False,
                      aggregate=False),
        ),
        params={"reveal": reveal},
        centralized_channel="ckks",
    )


register_defense("ckks", _ckks)
