"""Defense settings built on CKKS homomorphic encryption (``securefed.he``, TenSEAL).

``ckks``: hospitals encrypt (and sign) their weighted updates under a key the server never
holds; the server adds ciphertexts with a public-only context and a key authority, separate
from the hospitals and the server, decrypts only signed sums of at least
``min_contributors`` hospitals (default 3), rounded.  For
centralised algorithms it selects encrypted-centralised training (hospitals encrypt their
rows; the server trains logistic regression on ciphertexts).
"""

from __future__ import annotations

from defenses.base import Defense, PartyView, register_defense
from securefed.he import CKKSChannel

__all__: list[str] = []


def _ckks(*, reveal: str = "rounded", min_contributors: int = 3) -> Defense:
    return Defense(
        name="ckks",
        summary="CKKS homomorphic aggregation: the server adds ciphertexts it cannot decrypt; "
                "a key authority decrypts only the sum of enough signed uploads.",
        channel_factory=lambda strategy: CKKSChannel(reveal=reveal,
                                                     min_contributors=min_contributors),
        views=(
            PartyView("server", "each hospital's update as a CKKS ciphertext (public context "
                      "only, cannot decrypt) and the decrypted sum", individual_updates=False,
                      aggregate=True),
            PartyView("client", "the decrypted sum and the global model (public key only)",
                      individual_updates=False, aggregate=True),
            PartyView("outsider", "the released final model", individual_updates=False,
                      aggregate=False),
        ),
        params={"reveal": reveal, "min_contributors": min_contributors},
        centralized_channel="ckks",
    )


register_defense("ckks", _ckks)
