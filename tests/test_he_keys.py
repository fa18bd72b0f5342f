"""CKKS key material: parameter validation, public/secret separation, key files, CLI."""

import os
import stat

import pytest

from securefed.cli import main as cli_main
from securefed.errors import ConfigurationError, KeyMaterialError
from securefed.he import (
    HE_STANDARD_128,
    CKKSChannel,
    CKKSKeyHolder,
    CKKSParameters,
    CKKSPublicContext,
    load_public_context,
    save_public_context,
)


@pytest.fixture(scope="module")
def holder():
    return CKKSKeyHolder.generate(CKKSParameters.aggregation())


def test_presets_respect_the_he_standard_table():
    for p in (CKKSParameters.aggregation(), CKKSParameters.training()):
        assert p.total_bits <= HE_STANDARD_128[p.poly_modulus_degree]
    assert CKKSParameters.aggregation().depth == 0
    assert CKKSParameters.training().depth == 4
    # The bound is the table's, exactly: 109 bits pass at N=4096, 110 do not.
    CKKSParameters(poly_modulus_degree=4096, coeff_mod_bit_sizes=(50, 59), scale_bits=30)
    with pytest.raises(ConfigurationError, match="exceeds the 128-bit security bound 109"):
        CKKSParameters(poly_modulus_degree=4096, coeff_mod_bit_sizes=(51, 59), scale_bits=30)


@pytest.mark.parametrize("kwargs, message", [
    (dict(poly_modulus_degree=3000, coeff_mod_bit_sizes=(40, 40), scale_bits=20), "must be one of"),
    (dict(poly_modulus_degree=4096, coeff_mod_bit_sizes=(40,), scale_bits=20), "at least a data prime"),
    (dict(poly_modulus_degree=4096, coeff_mod_bit_sizes=(40, 40), scale_bits=40), "scale_bits"),
    (dict(poly_modulus_degree=8192, coeff_mod_bit_sizes=(60, 20, 60), scale_bits=30), "rescaling primes"),
    (dict(poly_modulus_degree=8192, coeff_mod_bit_sizes=(61, 60), scale_bits=30), "17..60"),
])
def test_bad_parameters_are_refused(kwargs, message):
    with pytest.raises(ConfigurationError, match=message):
        CKKSParameters(**kwargs)


def test_server_side_refuses_a_secret_context(holder):
    with pytest.raises(KeyMaterialError, match="secret key"):
        CKKSPublicContext(holder.context, parameters=holder.parameters, key_id=holder.key_id)
    with pytest.raises(KeyMaterialError, match="SECRET"):
        CKKSPublicContext.from_bytes(holder.to_bytes())
    with pytest.raises(KeyMaterialError):
        CKKSChannel(key_holder=holder, server_context=holder)  # type: ignore[arg-type]
    pub = holder.public_context()
    assert not pub.context.has_secret_key()
    assert pub.key_id == holder.key_id


def test_public_context_cannot_decrypt(holder):
    pub = CKKSPublicContext.from_bytes(holder.public_context().to_bytes())
    import tenseal as ts

    vec = ts.ckks_vector_from(pub.context, holder.encrypt_vector([1.0, 2.0]).serialize())
    with pytest.raises(ValueError):
        vec.decrypt()


def test_key_files_round_trip_and_permissions(holder, tmp_path):
    secret = holder.save(tmp_path / "s.key")
    assert stat.S_IMODE(os.stat(secret).st_mode) == 0o600
    public = save_public_context(holder.public_context(), tmp_path / "p.key")
    again = CKKSKeyHolder.load(secret)
    assert again.key_id == holder.key_id and again.parameters == holder.parameters
    pub = load_public_context(public)
    assert pub.key_id == holder.key_id
    # A value encrypted with the reloaded secret context decrypts with the original.
    vec = again.encrypt_vector([3.0])
    assert abs(holder.decrypt_vector(vec)[0] - 3.0) < 1e-4
    with pytest.raises(KeyMaterialError, match="SECRET"):
        load_public_context(secret)
    with pytest.raises(KeyMaterialError, match="expected 'securefed-ckks-secret'"):
        CKKSKeyHolder.load(public)


def test_damaged_key_files_are_refused(holder, tmp_path):
    blob = holder.public_context().to_bytes()
    bad = tmp_path / "truncated.key"
    bad.write_bytes(blob[: len(blob) // 2])
    with pytest.raises(KeyMaterialError):
        load_public_context(bad)
    other = CKKSKeyHolder.generate(CKKSParameters.aggregation())
    # A record whose key id names another key pair (spliced from two key sets).
    from securefed.wire import pack, unpack

    rec = unpack(blob)
    rec["key_id"] = other.key_id
    spliced = tmp_path / "spliced.key"
    spliced.write_bytes(pack(rec))
    with pytest.raises(KeyMaterialError, match="does not match the recorded key id"):
        load_public_context(spliced)


def test_mismatched_parties_are_refused(holder):
    other = CKKSKeyHolder.generate(CKKSParameters.aggregation())
    with pytest.raises(KeyMaterialError, match="server context is for key"):
        CKKSChannel(key_holder=holder, server_context=other.public_context())
    with pytest.raises(ConfigurationError, match="disagree"):
        CKKSChannel(key_holder=holder, parameters=CKKSParameters.training())


def test_cli_writes_public_and_secret_files(tmp_path, capsys):
    assert cli_main(["keys", "ckks", "--out", str(tmp_path)]) == 0
    pub = load_public_context(tmp_path / "ckks-public.key")
    sec = CKKSKeyHolder.load(tmp_path / "ckks-secret.key")
    assert pub.key_id == sec.key_id
    assert "never to the server" in capsys.readouterr().out
    # The two files work together as a channel.
    CKKSChannel(key_holder=sec, server_context=pub)


def test_docstring_examples():
    import doctest

    from securefed.he import encrypted_lr, keys, uploads

    for module in (keys, uploads, encrypted_lr):
        result = doctest.testmod(module, optionflags=doctest.ELLIPSIS)
        assert result.failed == 0 and result.attempted > 0, module.__name__
