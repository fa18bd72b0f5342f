"""Data: bundled Pima records, hospital splits with heterogeneity, harmonisation,
federated standardisation, a synthetic EHR generator and a loader for user CSV files."""

from securefed.data.pima import load_pima, pima_federation

__all__ = ["load_pima", "pima_federation"]
