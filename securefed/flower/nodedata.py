"""Each hospital node loads only its own data, named by the SuperNode's ``--node-config``.

Two sources:

* **A partition of the bundled Pima records** (demonstrations and tests)::

      --node-config 'partition-id=0 num-partitions=3 data-seed=0'

  The node builds :func:`securefed.data.pima_federation` and keeps only its partition.
  (The bundled file is public; a real hospital uses its own file.)

* **The hospital's own CSV file and an agreed schema**::

      --node-config 'client-id=0 data-path="/data/records.csv" schema-path="/data/schema.json"'

  The schema is a JSON file agreed by all hospitals (it holds no patient data)::

      {"features": ["npreg", "glu", "bp", "skin", "bmi", "ped", "age"],
       "label": "type", "positive": "Yes",
       "mean": [3.57, 123.97, 71.26, 29.21, 32.31, 0.46, 32.11],
       "std":  [3.36, 31.59, 11.45, 11.70, 6.12, 0.31, 10.95]}

  ``mean``/``std`` are the agreed standardisation (optional: without them the features are
  used as they are).  Rows with a missing feature or label are refused with the row named,
  never silently dropped.

The node's ``client-id`` (or ``partition-id``) is its index in the federation: it selects
the node's random stream (see :mod:`securefed.flower.settings`) and must be unique.

Building the bundled federation (reading, harmonising and standardising the public Pima
files) costs about 0.4 s of CPU, and a node needs its data in several messages of a run.  It
is computed once per process and kept (:func:`bundled_federation`); the warm executor of
:mod:`securefed.flower.warm` computes it before it forks any ClientApp
(:func:`preload_node_data`), so each message finds it ready.  Only the public bundled file
is kept this way: a hospital's own CSV file is read again for every message that needs it
(it is fast), so no patient row of a hospital stays in a process between messages.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from securefed.arrays import ClientArrays
from securefed.data import pima_federation
from securefed.errors import ConfigurationError, InvalidDataError

__all__ = ["load_node_data", "node_client_id", "load_csv_with_schema", "bundled_federation",
           "preload_node_data"]


def node_client_id(node_config: Mapping[str, Any]) -> int:
    """The node's index in the federation (``client-id``, else ``partition-id``)."""
    for key in ("client-id", "partition-id"):
        if key in node_config:
            value = node_config[key]
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ConfigurationError(f"{key} must be an integer >= 0, got {value!r}")
            return int(value)
    raise ConfigurationError(
        f"node config names no client: expected 'client-id' or 'partition-id', got keys {sorted(node_config)}"
    )


def load_csv_with_schema(data_path: str | Path, schema_path: str | Path, *, client_id: int,
                         name: str | None = None) -> ClientArrays:
    """Read one hospital's CSV with the agreed schema (see the module docstring)."""
    schema_file = Path(schema_path)
    try:
        schema = json.loads(schema_file.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise InvalidDataError(f"cannot read schema {schema_file}: {exc}") from exc
    for key in ("features", "label", "positive"):
        if key not in schema:
            raise InvalidDataError(f"schema {schema_file} lacks {key!r}; it has {sorted(schema)}")
    features = [str(f) for f in schema["features"]]
    try:
        frame = pd.read_csv(data_path)
    except (OSError, pd.errors.ParserError) as exc:
        raise InvalidDataError(f"cannot read data file {data_path}: {exc}") from exc
    missing = [c for c in [*features, schema["label"]] if c not in frame.columns]
    if missing:
        raise InvalidDataError(f"{data_path} lacks columns {missing}; it has {list(frame.columns)}")
    X = frame[features].apply(pd.to_numeric, errors="coerce")
    bad = X.isna().any(axis=1) | frame[schema["label"]].isna()
    if bad.any():
        first = int(np.flatnonzero(bad.to_numpy())[0])
        cols = [c for c in features if pd.isna(X.iloc[first][c])] or [schema["label"]]
        raise InvalidDataError(
            f"{data_path}: {int(bad.sum())} rows have a missing or non-numeric value "
            f"(first: row {first + 2} of the file, column(s) {cols}); clean them before training"
        )
    Xa = X.to_numpy(np.float64)
    if "mean" in schema or "std" in schema:
        mean = np.asarray(schema.get("mean"), dtype=np.float64)
        std = np.asarray(schema.get("std"), dtype=np.float64)
        if mean.shape != (len(features),) or std.shape != (len(features),) or np.any(std <= 0):
            raise InvalidDataError(
                f"schema {schema_file}: mean and std must each list {len(features)} values "
                f"(std > 0), got shapes {mean.shape} and {std.shape}"
            )
        Xa = (Xa - mean) / std
    y = (frame[schema["label"]].astype(str) == str(schema["positive"])).to_numpy(np.float32)
    return ClientArrays(client_id=client_id, name=name or Path(data_path).stem,
                        X=Xa.astype(np.float32), y=y)


def load_node_data(node_config: Mapping[str, Any]) -> ClientArrays:
    """This node's training data, from its node config (see the module docstring)."""
    client_id = node_client_id(node_config)
    if "data-path" in node_config:
        if "schema-path" not in node_config:
            raise ConfigurationError("node config has 'data-path' but no 'schema-path'")
        return load_csv_with_schema(node_config["data-path"], node_config["schema-path"],
                                    client_id=client_id, name=node_config.get("name"))
    if "partition-id" not in node_config:
        raise ConfigurationError(
            "node config must name its data: 'data-path' and 'schema-path', or 'partition-id' "
            f"of the bundled data; got keys {sorted(node_config)}"
        )
    num = node_config.get("num-partitions", 3)
    seed = node_config.get("data-seed", 0)
    if not isinstance(num, int) or num < 1 or client_id >= num:
        raise ConfigurationError(f"partition-id must be in [0, num-partitions={num}), got {client_id}")
    part = bundled_federation(int(seed), int(num)).clients[client_id]
    # a copy: the cached arrays stay as they were, whatever the caller does with these
    return ClientArrays(client_id=part.client_id, name=part.name, X=part.X.copy(),
                        y=part.y.copy(),
                        X_test=None if part.X_test is None else part.X_test.copy(),
                        y_test=None if part.y_test is None else part.y_test.copy())


@functools.lru_cache(maxsize=4)
def bundled_federation(seed: int, num_partitions: int) -> Any:
    """:func:`securefed.data.pima_federation` of the bundled (public) Pima files, computed
    once per process for each ``(seed, num_partitions)`` (see the module docstring)."""
    return pima_federation(seed=seed, n_hospitals=num_partitions)


def preload_node_data(node_config: Mapping[str, Any]) -> bool:
    """Build the bundled federation a node config names, so that processes forked afterwards
    find it ready; returns whether there was one to build (a node with its own CSV file has
    none: its rows are read per message).  A config that :func:`load_node_data` would
    refuse is left for it to refuse, with its message, when a message comes."""
    if "data-path" in node_config or "partition-id" not in node_config:
        return False
    try:
        load_node_data(node_config)
    except ConfigurationError:
        return False
    return True
