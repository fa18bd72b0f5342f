"""Identity keys and the pinned roster (securefed.identity) and `securefed keys identity`."""

from __future__ import annotations

import json
import stat

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PublicKey

from securefed.cli import main as cli_main
from securefed.errors import ConfigurationError, KeyMaterialError, MessageRejected
from securefed.identity import IdentityKey, Roster, generate_identities, write_identity_files


def test_cli_writes_private_keys_0600_and_a_roster_that_verifies(tmp_path, capsys):
    assert cli_main(["keys", "identity", "--hospitals", "north,south,east", "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    roster = Roster.load(tmp_path / "roster.json")
    assert roster.fingerprint() in out
    assert [roster.name_of(i) for i in roster.client_ids] == ["north", "south", "east"]
    for i, name in enumerate(["north", "south", "east"]):
        path = tmp_path / f"{name}.identity"
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
        key = IdentityKey.load(path)
        assert key.client_id == i
        key.check_in(roster)
        # the signature verifies with the library's own Ed25519, independently of Roster
        sig = key.sign(b"hello")
        Ed25519PublicKey.from_public_bytes(roster.entry(i).signing_key).verify(sig, b"hello")
    # refuses to overwrite (a replaced key would lock the hospital out of pinned rosters)
    assert cli_main(["keys", "identity", "--hospitals", "north", "--out", str(tmp_path)]) == 2
    assert "refusing to overwrite" in capsys.readouterr().err


def test_pairwise_secret_is_the_x25519_agreement_of_both_ends():
    keys, roster = generate_identities(["a", "b"])
    k_ab = keys["a"].pairwise_secret(1, roster)
    assert k_ab == keys["b"].pairwise_secret(0, roster) and len(k_ab) == 32
    # independently: X25519 of a's private key with b's public key from the roster
    priv = keys["a"]._agreement
    assert priv.exchange(X25519PublicKey.from_public_bytes(roster.entry(1).agreement_key)) == k_ab


def test_bad_signatures_and_unknown_clients_are_refused():
    keys, roster = generate_identities(["a", "b", "c"])
    sig = keys["a"].sign(b"m")
    with pytest.raises(MessageRejected, match="signature of client 1 does not verify"):
        roster.verify(1, b"m", sig, what="test")
    with pytest.raises(MessageRejected, match="client 7 is not in the pinned roster"):
        roster.verify(7, b"m", sig, what="test")
    with pytest.raises(MessageRejected, match="63 bytes, expected 64"):
        roster.verify(0, b"m", sig[:63], what="test")
    other, other_roster = generate_identities(["a", "b", "c"])
    with pytest.raises(KeyMaterialError, match="does not list hospital 'a'"):
        keys["a"].check_in(other_roster)


def test_damaged_files_are_refused(tmp_path):
    roster_path, paths = write_identity_files(["a", "b"], tmp_path)
    data = json.loads(roster_path.read_text())
    data["hospitals"][1]["signing_key"] = data["hospitals"][0]["signing_key"]
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps(data))
    with pytest.raises(KeyMaterialError, match="reuses a public key"):
        Roster.load(bad)
    data["hospitals"][1]["signing_key"] = "zz"
    bad.write_text(json.dumps(data))
    with pytest.raises(KeyMaterialError, match="not a hex string"):
        Roster.load(bad)
    (tmp_path / "x.identity").write_text('{"kind": "other"}')
    with pytest.raises(KeyMaterialError, match="not a securefed identity file"):
        IdentityKey.load(tmp_path / "x.identity")
    with pytest.raises(ConfigurationError, match="hospital name must be"):
        write_identity_files(["ok", "../evil"], tmp_path / "more")
    with pytest.raises(ConfigurationError, match="distinct"):
        write_identity_files(["a", "a"], tmp_path / "dup")


def test_roster_accepts_exactly_what_openssl_accepts_on_honest_and_tampered_signatures():
    """Roster.verify checks with libsodium; OpenSSL's Ed25519 is the independent reference."""
    from cryptography.exceptions import InvalidSignature

    keys, roster = generate_identities(["a", "b"])
    pub = Ed25519PublicKey.from_public_bytes(roster.entry(0).signing_key)
    order = 2**252 + 27742317777372353535851937790883648493  # the group order L (RFC 8032)
    sig = keys["a"].sign(b"survivor set")
    s = int.from_bytes(sig[32:], "little")
    cases = {
        "honest": (b"survivor set", sig),
        "other message": (b"survivor sex", sig),
        "flipped R bit": (b"survivor set", bytes([sig[0] ^ 1]) + sig[1:]),
        "flipped S bit": (b"survivor set", sig[:40] + bytes([sig[40] ^ 4]) + sig[41:]),
        # S + L: the same group element, a non-canonical encoding RFC 8032 requires refusing
        "S + L": (b"survivor set", sig[:32] + (s + order).to_bytes(32, "little")),
    }
    for name, (message, signature) in cases.items():
        try:
            pub.verify(signature, message)
            expected = True
        except InvalidSignature:
            expected = False
        try:
            roster.verify(0, message, signature, what=name)
            got = True
        except MessageRejected as exc:
            assert "does not verify under its pinned key" in str(exc)
            got = False
        assert got == expected, name
        assert got == (name == "honest"), name


def test_private_key_files_are_never_written_through_an_existing_file_or_link(tmp_path):
    """``write_private_file`` creates a fresh 0600 file and renames it into place: a wider
    file already there is replaced (its mode never applies to the key), and a symbolic link
    at the path is replaced, not followed."""
    import os

    from securefed.identity import write_private_file

    wide = tmp_path / "wide.key"
    wide.write_bytes(b"old")
    os.chmod(wide, 0o644)
    write_private_file(wide, b"secret")
    assert wide.read_bytes() == b"secret" and oct(wide.stat().st_mode & 0o777) == "0o600"
    target = tmp_path / "elsewhere.txt"
    target.write_bytes(b"not a key")
    link = tmp_path / "link.key"
    link.symlink_to(target)
    write_private_file(link, b"secret")
    assert not link.is_symlink() and link.read_bytes() == b"secret"
    assert target.read_bytes() == b"not a key"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["elsewhere.txt", "link.key", "wide.key"]
