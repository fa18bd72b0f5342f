"""The bundled UCI Heart Disease records and the federation directory derived from them."""

from __future__ import annotations

import hashlib
import re
import shutil
import warnings
from pathlib import Path

import numpy as np
import pytest

from securefed.data import load_federation
from securefed.data.heart import (
    HEART_SITES,
    heart_federation_path,
    heart_hospitals,
    load_heart_raw,
    write_heart_federation,
)
from securefed.errors import InvalidDataError

RESOURCES = Path(heart_federation_path()).parents[1]

# sizes and class counts of the UCI documentation (heart-disease.names, "Class Distribution")
UCI_COUNTS = {"cleveland": (164, 139), "hungary": (188, 106), "switzerland": (8, 115),
              "long-beach-va": (51, 149)}


def test_raw_files_are_the_documented_ones():
    text = (RESOURCES / "ATTRIBUTION.md").read_text()
    listed = dict((name, digest) for digest, name in re.findall(r"([0-9a-f]{64})  (\S+)", text))
    assert set(listed) == set(HEART_SITES.values())
    for name, digest in listed.items():
        assert hashlib.sha256((RESOURCES / "raw" / name).read_bytes()).hexdigest() == digest
    for site, (neg, pos) in UCI_COUNTS.items():
        num = load_heart_raw(site)["num"].to_numpy()
        assert ((num == 0).sum(), (num > 0).sum()) == (neg, pos), site


def test_shipped_federation_is_what_the_writer_writes(tmp_path):
    shipped = heart_federation_path().parent
    written = write_heart_federation(tmp_path / "heart").parent
    names = sorted(p.name for p in shipped.iterdir())
    assert names == sorted(p.name for p in written.iterdir())
    for name in names:
        assert (shipped / name).read_bytes() == (written / name).read_bytes(), name


def test_heart_federation_loads_cleanly_with_each_centre_as_a_hospital():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        ds = heart_hospitals()
    assert ds.name == "uci-heart" and ds.names == tuple(HEART_SITES)
    data = ds.prepare()
    assert len(data.y_test) == 275 and data.num_features == 18
    for client, site in zip(data.clients, HEART_SITES, strict=True):
        neg, pos = UCI_COUNTS[site]
        y = np.concatenate([client.y, client.y_test])
        assert (int((y == 0).sum()), int((y == 1).sum())) == (neg, pos)
        # 30% of each class held out, stratified
        assert len(client.y_test) == round(0.3 * neg) + round(0.3 * pos)
    # Zurich/Basel measured no cholesterol: declared missing, imputed with the federated mean
    swiss = ds.harmonised_tables[2]
    assert swiss["chol"].isna().all()


def test_the_declared_missing_codes_are_needed(tmp_path):
    shutil.copytree(heart_federation_path().parent, tmp_path / "h")
    fed = tmp_path / "h" / "federation.toml"
    fed.write_text("\n".join(line for line in fed.read_text().splitlines()
                             if not line.startswith("missing")) + "\n")
    with pytest.raises(InvalidDataError) as err:
        load_federation(fed)
    zeros = sum(int((load_heart_raw(s)["chol"] == 0).sum()) for s in HEART_SITES)
    zeros += sum(int((load_heart_raw(s)["trestbps"] == 0).sum()) for s in HEART_SITES)
    assert err.value.count == zeros == 173
