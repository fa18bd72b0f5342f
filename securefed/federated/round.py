"""One round's pieces that every runner shares: the seed layout, client sampling and the
client's step (local training, its weight and the upload it produces).

The in-process engine (:func:`securefed.federated.run_federated`), the Flower ClientApp and
the tests all call these, so a deployment and a simulation with the same seed do the same
work in the same order.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import numpy as np

from securefed.arrays import ClientArrays
from securefed.channel import Upload
from securefed.errors import ConfigurationError
from securefed.federated.strategy import Strategy
from securefed.federated.types import LocalConfig, LocalResult

__all__ = ["SeedStreams", "seed_streams", "sample_clients", "ClientStep", "client_step",
           "CHANNEL_KEY"]

#: The spawn-key element that marks a client's per-round channel stream
#: (:meth:`SeedStreams.channel_rng`).  A client's own ``rng.spawn`` children are numbered
#: 0, 1, 2, ... under the same parent, so they never reach it.
CHANNEL_KEY = 2**32 - 1


@dataclass(frozen=True)
class SeedStreams:
    """The generators of one run, all children of one root seed.

    ``numpy.random.SeedSequence(seed)`` spawns ``2 + num_clients`` children, in this order:
    the model's initialisation, the server (sampling, dropouts, central DP noise), then one
    per client (batch order, local DP noise).  Each client's sequence also gives, per round,
    the stream a channel uses on that client's behalf (:meth:`channel_rng`: secure
    aggregation's stochastic rounding and a distributed-DP noise share), so nothing a client
    draws comes from the server's stream.  Cryptographic secrets never come from these seeds.
    """

    init_seed: int
    server: np.random.SeedSequence
    clients: tuple[np.random.SeedSequence, ...]

    def server_rng(self) -> np.random.Generator:
        return np.random.default_rng(self.server)

    def client_rng(self, client_id: int) -> np.random.Generator:
        if not 0 <= client_id < len(self.clients):
            raise ConfigurationError(
                f"client id must be in [0, {len(self.clients)}), got {client_id}")
        return np.random.default_rng(self.clients[client_id])

    def channel_rng(self, client_id: int, round_index: int) -> np.random.Generator:
        """Client ``client_id``'s stream for the channel's client-side steps in round
        ``round_index``.

        A child of the client's sequence keyed by the round (spawn key ``(2 + k,
        CHANNEL_KEY, round)``, out of reach of the client's own ``spawn`` calls), so it
        leaves the client's training stream untouched and a deployed node recomputes it
        from the seed alone, without state.

        >>> s = seed_streams(0, 2)
        >>> bool(s.channel_rng(1, 3).random() == seed_streams(0, 2).channel_rng(1, 3).random())
        True
        >>> bool(s.channel_rng(1, 3).random() == s.channel_rng(1, 4).random())
        False
        """
        if not 0 <= client_id < len(self.clients):
            raise ConfigurationError(
                f"client id must be in [0, {len(self.clients)}), got {client_id}")
        if isinstance(round_index, bool) or not isinstance(round_index, (int, np.integer)) \
                or round_index < 0:
            raise ConfigurationError(f"round_index must be an integer >= 0, got {round_index!r}")
        seq = self.clients[client_id]
        child = np.random.SeedSequence(entropy=seq.entropy,
                                       spawn_key=(*seq.spawn_key, CHANNEL_KEY, int(round_index)),
                                       pool_size=seq.pool_size)
        return np.random.default_rng(child)


def seed_streams(seed: int, num_clients: int) -> SeedStreams:
    """The :class:`SeedStreams` of a run with root ``seed`` and ``num_clients`` clients.

    >>> s = seed_streams(0, 3)
    >>> len(s.clients), s.init_seed == seed_streams(0, 5).init_seed
    (3, True)
    """
    root = np.random.SeedSequence(seed)
    init_seq, server_seq, *client_seqs = root.spawn(2 + num_clients)
    return SeedStreams(int(init_seq.generate_state(1)[0]), server_seq, tuple(client_seqs))


def sample_clients(
    n_clients: int, clients_per_round: int | None, rng: np.random.Generator
) -> tuple[int, ...]:
    """The sorted ids of the clients that take part in a round (all when ``None``)."""
    if clients_per_round is None or clients_per_round >= n_clients:
        return tuple(range(n_clients))
    return tuple(sorted(int(i) for i in rng.choice(n_clients, size=clients_per_round, replace=False)))


@dataclass(frozen=True)
class ClientStep:
    """What one client's round produced: its upload, its local result and the time spent.

    ``local`` never leaves the client; ``upload`` is what it hands to the channel.
    """

    upload: Upload
    local: LocalResult
    train_seconds: float
    process_seconds: float


def client_step(
    strategy: Strategy,
    net: Any,
    client: ClientArrays,
    params: np.ndarray,
    config: LocalConfig,
    *,
    rng: np.random.Generator,
    client_state: dict,
) -> ClientStep:
    """``local_train -> client_weight -> client_process`` for one client, as every runner does it.

    After local training the strategy's ``personal_step`` updates what the client keeps for
    itself; it draws from a child of ``rng`` (``rng.spawn``), which leaves ``rng``'s own
    stream, and so everything uploaded, as it would be without personalisation.
    """
    t0 = time.perf_counter()
    local = strategy.local_train(net, client, params, config, rng=rng, client_state=client_state)
    strategy.personal_step(net, client, params, config, rng=rng.spawn(1)[0],
                           client_state=client_state)
    t1 = time.perf_counter()
    weight = strategy.client_weight(local, client_state=client_state)
    vector, payload = strategy.client_process(local.update, weight, client_state=client_state,
                                              rng=rng)
    t2 = time.perf_counter()
    upload = Upload(client_id=client.client_id, vector=vector, weight=weight, payload=payload)
    return ClientStep(upload, local, t1 - t0, t2 - t1)
