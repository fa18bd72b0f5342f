"""Differential privacy for securefed (see docs/dp.md)."""
