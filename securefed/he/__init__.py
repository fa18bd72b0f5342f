"""Homomorphic encryption (CKKS, through TenSEAL / Microsoft SEAL).

* :mod:`securefed.he.keys` -- parameter sets from the HE security standard, the secret key
  (held by the key authority) and the public-only context (hospitals, server), and their files.
* :mod:`securefed.he.authority` -- :class:`CKKSKeyAuthority`, the only party with the secret
  key, and what it agrees to decrypt (signed aggregates of enough hospitals, checked refreshes).
* :mod:`securefed.he.uploads` -- the signed upload message and how decryptions are released.
* :mod:`securefed.he.channel` -- :class:`CKKSChannel`, aggregation of encrypted updates.
* :mod:`securefed.he.encrypted_lr` -- logistic regression trained on encrypted rows.
"""

from securefed.he.authority import CKKSKeyAuthority
from securefed.he.channel import CKKSChannel, add_uploads, decrypt_sum, encrypt_upload, parse_upload
from securefed.he.encrypted_lr import (
    EncryptedLRResult,
    fit_sigmoid_polynomial,
    train_encrypted_logreg,
    train_plain_logreg,
)
from securefed.he.keys import (
    HE_STANDARD_128,
    CKKSKeyHolder,
    CKKSParameters,
    CKKSPublicContext,
    load_public_context,
    save_public_context,
)

__all__ = [
    "CKKSChannel", "CKKSKeyAuthority", "encrypt_upload", "parse_upload", "add_uploads", "decrypt_sum",
    "EncryptedLRResult", "fit_sigmoid_polynomial", "train_encrypted_logreg",
    "train_plain_logreg", "HE_STANDARD_128", "CKKSKeyHolder", "CKKSParameters",
    "CKKSPublicContext", "load_public_context", "save_public_context",
]
