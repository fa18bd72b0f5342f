"""Data: bundled Pima records, hospital splits with heterogeneity, harmonisation,
federated standardisation, a synthetic EHR generator and a loader for user CSV files.

A consortium's own hospitals are read from a federation file with :func:`load_federation`.
The sources return a :class:`FederatedDataset` (each hospital's raw table in its own export
format); :meth:`FederatedDataset.prepare` harmonises each hospital into the agreed
:class:`Schema` and standardises from shared sums into
:class:`~securefed.arrays.FederatedArrays`.  See ``docs/data.md``.
"""

from securefed.data.csvio import load_csv_federation
from securefed.data.dataset import (
    DataWarning,
    FederatedDataset,
    Hospital,
    PreparedFederation,
    SingleClassWarning,
)
from securefed.data.federation import FederationFile, HospitalFiles, load_federation
from securefed.data.formats import export_table, harmonise_table, simulated_format
from securefed.data.heterogeneity import Heterogeneity, LabelRule
from securefed.data.pima import PIMA_SCHEMA, load_pima, pima_federation, pima_hospitals
from securefed.data.schema import ExportFormat, Feature, Schema
from securefed.data.standardise import FederatedStandardiser, SharedStatistics, encode
from securefed.data.synthetic import (
    RISK_MODEL,
    SYNTHETIC_SCHEMA,
    synthetic_federation,
    synthetic_hospitals,
)

__all__ = [
    "load_pima",
    "pima_hospitals",
    "pima_federation",
    "synthetic_federation",
    "synthetic_hospitals",
    "load_csv_federation",
    "load_federation",
    "FederationFile",
    "HospitalFiles",
    "PreparedFederation",
    "Heterogeneity",
    "LabelRule",
    "Schema",
    "Feature",
    "ExportFormat",
    "FederatedDataset",
    "Hospital",
    "FederatedStandardiser",
    "SharedStatistics",
    "DataWarning",
    "SingleClassWarning",
    "encode",
    "export_table",
    "harmonise_table",
    "simulated_format",
    "PIMA_SCHEMA",
    "SYNTHETIC_SCHEMA",
    "RISK_MODEL",
]
