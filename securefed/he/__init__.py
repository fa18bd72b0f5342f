"""Homomorphic encryption (CKKS, through TenSEAL / Microsoft SEAL).

* :mod:`securefed.he.keys` -- parameter sets from the HE security standard, the secret key
  holder (hospitals) and the public-only server context, and their files.
* :mod:`securefed.he.channel` -- :class:`CKKSChannel`, aggregation of encrypted updates.
* :mod:`securefed.he.encrypted_lr` -- logistic regression trained on encrypted rows.
"""

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
    "CKKSChannel", "encrypt_upload", "parse_upload", "add_uploads", "decrypt_sum",
    "EncryptedLRResult", "fit_sigmoid_polynomial", "train_encrypted_logreg",
    "train_plain_logreg", "HE_STANDARD_128", "CKKSKeyHolder", "CKKSParameters",
    "CKKSPublicContext", "load_public_context", "save_public_context",
]
