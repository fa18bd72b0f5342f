"""Deployment on Flower (``pip install 'securefed[flower]'``).

The in-process simulation (:func:`securefed.federated.run_federated`) is the embedded
default.  When hospitals deploy for real, each runs a Flower SuperNode on its own machine and
the coordinator runs a SuperLink; the Flower app in :data:`APP_DIR` runs securefed's
strategies and aggregation channels over it, with the same phases and seeds as the
simulation.

* :mod:`securefed.flower.serverapp`, :mod:`securefed.flower.clientapp`: the two halves of
  the app (Flower Message API).
* :mod:`securefed.flower.secagg_stages`: the secure-aggregation protocol's stages as
  Flower messages (pipelined two rounds at a time).
* :mod:`securefed.flower.transport`: the byte envelope and the node's saved state.
* :mod:`securefed.flower.settings`: run config -> strategy, wrappers, model, seeds.
* :mod:`securefed.flower.nodedata`: each node's own data from its node config.
* :mod:`securefed.flower.tls`: certificate set-up (``python -m securefed.flower.tls``).
* :mod:`securefed.flower.cluster`: a local SuperLink + SuperNodes for tests and trials.
* :mod:`securefed.flower.testing`: an in-process grid to dry-run the apps.

See ``docs/deployment.md`` for the hospital IT team's guide.  Importing this package does
not import ``flwr``; the ``serverapp`` and ``clientapp`` modules do.
"""

from pathlib import Path

__all__ = ["APP_DIR"]

#: The folder of the Flower app (its hand-written ``pyproject.toml``), for ``flwr run``.
APP_DIR = Path(__file__).resolve().parent / "app"
