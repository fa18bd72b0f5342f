"""Encrypted-centralised logistic regression: golden sigmoid fit, agreement with the same
algorithm in the clear, bytes and times accounted, bad input."""

import numpy as np
import pytest

from securefed.data import pima_federation
from securefed.errors import (
    ConfigurationError,
    InvalidDataError,
    KeyMaterialError,
    MessageRejected,
    ProtocolAbort,
)
from securefed.he import (
    CKKSKeyHolder,
    CKKSParameters,
    fit_sigmoid_polynomial,
    train_encrypted_logreg,
    train_plain_logreg,
)
from securefed.he.encrypted_lr import _Blobs, accuracy


@pytest.fixture(scope="module")
def training_keys():
    return CKKSKeyHolder.generate(CKKSParameters.training(), galois_keys=True)


@pytest.fixture(scope="module")
def server_keys(training_keys):
    return training_keys.public_context()


def test_sigmoid_fit_matches_kim_et_al_2018():
    # Kim et al., JMIR Med. Inform. 2018: least squares on [-8, 8],
    # sigma(t) ~ 0.5 + 0.15012 t - 0.0015930 t^3.
    c = fit_sigmoid_polynomial(interval=(-8.0, 8.0), degree=3)
    assert c[0] == 0.5 and c[2] == 0.0
    assert c[1] == pytest.approx(0.15012, rel=2e-3)
    assert c[3] == pytest.approx(-0.0015930, rel=2e-3)
    # The cubic's worst error on the interval is at its ends (0.114 at |t| = 8).
    t = np.linspace(-8, 8, 401)
    err = np.abs(c[0] + c[1] * t + c[3] * t**3 - 1 / (1 + np.exp(-t)))
    assert 0.10 < err.max() < 0.12
    with pytest.raises(ConfigurationError):
        fit_sigmoid_polynomial(interval=(-3.0, 8.0))


def test_encrypted_training_equals_the_same_algorithm_in_the_clear(training_keys, server_keys):
    """Two epochs on Pima (200 patients in 3 hospitals), against plaintext gradient descent
    with the same polynomial sigmoid.

    Tolerance: each epoch passes through 4 rescalings, after each of which the scale is
    reset to 2^30 while the prime differs from 2^30 by a relative < 3e-4: at most ~1.2e-3
    relative error per gradient, plus CKKS noise ~1e-5 at scale 2^30.  We allow
    2e-3 * max|w| + 1e-4.
    """
    data = pima_federation(seed=0)
    X, y = data.pooled()
    epochs, lr = 2, 2.0
    res = train_encrypted_logreg(data, epochs=epochs, learning_rate=lr, key_holder=training_keys,
                                 server_context=server_keys, record_history=True)
    c = res.sigmoid_coefficients
    w, b, _ = train_plain_logreg(X, y, epochs=epochs, learning_rate=lr,
                                 sigmoid=lambda t: c[0] + c[1] * t + c[3] * t**3)
    got = np.append(res.weights, res.bias)
    want = np.append(w, b)
    tol = 2e-3 * np.max(np.abs(want)) + 1e-4
    np.testing.assert_allclose(got, want, rtol=0, atol=tol)
    assert np.max(np.abs(want)) > 0.1  # the comparison is not between two zero vectors
    assert len(res.weight_history) == epochs
    acc_enc = accuracy(res.weights, res.bias, data.X_test, data.y_test)
    assert acc_enc == pytest.approx(accuracy(w, b, data.X_test, data.y_test), abs=1 / 332 + 1e-9)
    # Costs are accounted: data upload, public context, refresh each epoch.
    assert res.n_patients == 200 and res.n_features == 7
    assert res.ciphertexts_per_hospital == (8, 8, 8)
    assert res.bytes_data_upload > 24 * 100_000
    assert res.bytes_refresh_per_epoch > 0 and res.bytes_public_context > 1_000_000
    assert len(res.epoch_server_times) == len(res.epoch_refresh_times) == epochs
    assert min(res.epoch_server_times) > 0 and min(res.epoch_refresh_times) > 0
    assert res.seconds_per_epoch == pytest.approx(
        (sum(res.epoch_server_times) + sum(res.epoch_refresh_times)) / epochs, rel=1e-12)


def test_more_patients_than_slots_continue_in_the_next_chunk(training_keys, server_keys):
    """4100 patients (> 4096 slots): the third hospital's rows span two chunks; one epoch
    still equals plaintext gradient descent (same tolerance as above)."""
    from securefed.federated import ClientArrays, FederatedArrays
    from securefed.he.encrypted_lr import _layout

    assert _layout([3000, 3000, 2500], 4096) == [
        [(0, 0, 0)], [(0, 3000, 0), (1, 0, 1096)], [(1, 1904, 0), (2, 0, 2192)]]
    rng = np.random.default_rng(5)
    X = rng.normal(size=(4100, 2)).astype(np.float32)
    y = (X @ np.array([1.5, -1.0]) + rng.normal(size=4100) > 0).astype(np.float32)
    data = FederatedArrays(
        clients=(ClientArrays(0, "a", X[:2100], y[:2100]), ClientArrays(1, "b", X[2100:3100], y[2100:3100]),
                 ClientArrays(2, "c", X[3100:], y[3100:])),
        X_test=X[:10], y_test=y[:10], feature_names=("u", "v"))
    res = train_encrypted_logreg(data, epochs=1, learning_rate=2.0, key_holder=training_keys,
                                 server_context=server_keys)
    assert res.ciphertexts_per_hospital == (3, 3, 6)
    c = res.sigmoid_coefficients
    w, b, _ = train_plain_logreg(X, y, epochs=1, learning_rate=2.0,
                                 sigmoid=lambda t: c[0] + c[1] * t + c[3] * t**3)
    want = np.append(w, b)
    np.testing.assert_allclose(np.append(res.weights, res.bias), want, rtol=0,
                               atol=2e-3 * np.max(np.abs(want)) + 1e-4)


def test_bad_keys_are_refused(training_keys):
    data = pima_federation(seed=0)
    shallow = CKKSKeyHolder.generate(CKKSParameters.aggregation())
    with pytest.raises(ConfigurationError, match="depth 4"):
        train_encrypted_logreg(data, epochs=1, key_holder=shallow)
    no_rot = CKKSKeyHolder.generate(CKKSParameters.training(), galois_keys=False)
    with pytest.raises(KeyMaterialError, match="rotation"):
        train_encrypted_logreg(data, epochs=1, key_holder=no_rot)
    with pytest.raises(KeyMaterialError, match="server context is for key"):
        train_encrypted_logreg(data, epochs=1, key_holder=training_keys,
                               server_context=no_rot.public_context())
    with pytest.raises(ConfigurationError, match="epochs"):
        train_encrypted_logreg(data, epochs=0, key_holder=training_keys)
    with pytest.raises(KeyMaterialError, match="public keys only"):
        train_encrypted_logreg(data, epochs=1, key_holder=training_keys,
                               server_context=training_keys)


def test_training_needs_the_authoritys_minimum_of_hospitals_and_its_budget(training_keys):
    """Two hospitals' rows are refused (the key authority's minimum is 3, as for an
    aggregate), and a given authority must grant the declared epochs."""
    from securefed.federated import FederatedArrays
    from securefed.he import CKKSKeyAuthority

    data = pima_federation(seed=0)
    two = FederatedArrays(clients=data.clients[:2], X_test=data.X_test, y_test=data.y_test,
                          feature_names=data.feature_names)
    with pytest.raises(ProtocolAbort, match="rows of 2 hospital\\(s\\), below the key authority's "
                                            "minimum of 3 contributors"):
        train_encrypted_logreg(two, epochs=1, key_holder=training_keys)
    ka = CKKSKeyAuthority(training_keys, require_signatures=False, max_training_epochs=1)
    with pytest.raises(MessageRejected, match="of 2 epochs declared, but this key authority grants 1"):
        train_encrypted_logreg(data, epochs=2, key_authority=ka)


def test_bad_rows_are_refused(training_keys, server_keys):
    from securefed.federated import ClientArrays, FederatedArrays

    X = np.zeros((4, 2), dtype=np.float32)
    bad_y = FederatedArrays(clients=(ClientArrays(0, "a", X, np.array([0, 1, 2, 0], np.float32)),),
                            X_test=X, y_test=np.zeros(4, np.float32), feature_names=("u", "v"))
    with pytest.raises(InvalidDataError, match="labels must be 0 or 1"):
        train_encrypted_logreg(bad_y, epochs=1, key_holder=training_keys, server_context=server_keys)
    X_nan = X.copy()
    X_nan[1, 1] = np.nan
    bad_x = FederatedArrays(clients=(ClientArrays(0, "a", X_nan, np.zeros(4, np.float32)),),
                            X_test=X, y_test=np.zeros(4, np.float32), feature_names=("u", "v"))
    with pytest.raises(InvalidDataError, match="NaN"):
        train_encrypted_logreg(bad_x, epochs=1, key_holder=training_keys, server_context=server_keys)


def test_truncated_ciphertext_blob_is_refused(training_keys):
    from securefed.he.encrypted_lr import _Party

    party = _Party(training_keys.context, training_keys.parameters, secret=True)
    blobs = _Blobs()
    try:
        raw = blobs.dump(party.encrypt(np.ones(4)))
        with pytest.raises(InvalidDataError, match="not a valid ciphertext"):
            blobs.load(party.ctx, raw[: len(raw) // 3], what="column upload")
    finally:
        blobs.close()


def test_rotation_keys_travel_with_the_public_context(training_keys, server_keys):
    from securefed.he import CKKSPublicContext
    from securefed.wire import pack, unpack

    assert server_keys.has_rotation_keys and training_keys.has_rotation_keys
    assert not server_keys.context.has_secret_key()
    blob = server_keys.to_bytes()
    assert CKKSPublicContext.from_bytes(blob).has_rotation_keys
    rec = unpack(blob)
    rec["rotation"] = rec["rotation"][: len(rec["rotation"]) // 2]
    with pytest.raises(KeyMaterialError, match="rotation keys cannot be read"):
        CKKSPublicContext.from_bytes(pack(rec))
