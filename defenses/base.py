"""Named defense settings: which privacy mechanisms a run uses, and who then sees what.

A :class:`Defense` is a composition, not a new algorithm: an aggregation channel (plain,
pairwise-masking secure aggregation, CKKS) plus an ordered tuple of strategy wrappers
(clipping and noise, compression), plus the threat model written down as
:class:`PartyView` values.  The mechanisms themselves live in :mod:`securefed`; this package
only names and combines them, so that a user of ``securefed`` alone gets every mechanism
and an audit can refer to a setting by a short name such as ``"secagg+dp"``.

The parties follow the honest-but-curious model of Bonawitz et al. (CCS 2017, Sec. 2):
the *server* follows the protocol but reads every message it receives; a *client* (one
hospital) reads what the protocol sends it; an *outsider* holds only the released model.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from securefed.errors import ConfigurationError
from securefed.federated import AggregationChannel, PlainChannel, Strategy
from securefed.registry import Registry

__all__ = [
    "PARTIES",
    "RunContext",
    "PartyView",
    "Defense",
    "register_defense",
    "DEFENSES",
    "get_defense",
    "defense_names",
]

#: The adversaries every defense describes, in the order reports list them.
PARTIES = ("server", "client", "outsider")



@dataclass(frozen=True)
class RunContext:
    """The facts about a run that a wrapper may need (a DP accountant needs all three)."""

    num_clients: int
    rounds: int
    clients_per_round: int | None = None


StrategyWrap = Callable[[Strategy, RunContext], Strategy]


@dataclass(frozen=True)
class PartyView:
    """What one party can observe under a defense, in words and as a machine-readable flag.

    ``individual_updates`` is true when the party sees each hospital's update on its own
    (the signal gradient-leakage attacks need); ``aggregate`` when it sees the combined
    update of a round; ``final_model`` when it holds the released model.
    """

    party: str
    observes: str
    individual_updates: bool
    aggregate: bool
    final_model: bool = True

    def __post_init__(self) -> None:
        if self.party not in PARTIES:
            raise ConfigurationError(f"party must be one of {list(PARTIES)}, got {self.party!r}")


@dataclass(frozen=True)
class Defense:
    """One named defense setting.

    Parameters
    ----------
    name:
        The registry name (``"none"``, ``"secagg"``, ...).
    summary:
        One sentence for reports.
    channel_factory:
        Builds a fresh aggregation channel for one run from the already wrapped strategy
        (channels may hold per-run state such as keys, so each run gets its own; a
        distributed-DP channel takes its noise source from the DP wrapper).
    wrappers:
        Strategy wrappers applied in order (innermost first), e.g. DP clipping and noise.
    views:
        The threat model: what each party observes.
    params:
        The settings this defense was built with (recorded in audit results).
    centralized_channel:
        For centralised algorithms: ``None`` when the defense does not apply to pooled
        training; otherwise the name of the centralised variant it selects (``"plain"`` for
        no protection, ``"ckks"`` for encrypted-centralised training).
    """

    name: str
    summary: str
    channel_factory: Callable[[Strategy], AggregationChannel]
    views: tuple[PartyView, ...]
    wrappers: tuple[StrategyWrap, ...] = ()
    params: Mapping[str, Any] = field(default_factory=dict)
    centralized_channel: str | None = None

    def wrap(self, strategy: Strategy, context: RunContext) -> Strategy:
        """The strategy with every wrapper of this defense applied (innermost first)."""
        for wrap in self.wrappers:
            strategy = wrap(strategy, context)
        return strategy

    def make_channel(self, strategy: Strategy) -> AggregationChannel:
        """A fresh channel for a run of ``strategy`` (the wrapped one, see :meth:`build`)."""
        return self.channel_factory(strategy)

    def build(self, strategy: Strategy, context: RunContext) -> tuple[Strategy, AggregationChannel]:
        """The wrapped strategy and its channel, ready for ``run_federated``."""
        wrapped = self.wrap(strategy, context)
        return wrapped, self.make_channel(wrapped)

    def view(self, party: str) -> PartyView:
        for v in self.views:
            if v.party == party:
                return v
        raise ConfigurationError(
            f"defense {self.name!r} does not describe party {party!r}; "
            f"described: {[v.party for v in self.views]}"
        )

    def describe(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "summary": self.summary,
            "params": dict(self.params),
            "views": {
                v.party: {
                    "observes": v.observes,
                    "individual_updates": v.individual_updates,
                    "aggregate": v.aggregate,
                    "final_model": v.final_model,
                }
                for v in self.views
            },
        }


DefenseBuilder = Callable[..., Defense]
DEFENSES: Registry[DefenseBuilder] = Registry("defense")


def register_defense(name: str, builder: DefenseBuilder | None = None, *,
                     replace: bool = False) -> Any:
    """Make ``builder(**params) -> Defense`` available under ``name`` (a decorator without it)."""
    return DEFENSES.register(name, builder, replace=replace)


#: The order reports list the built-in settings in; others follow in registration order.
_ORDER = ("none", "secagg", "ckks", "dp-central", "dp-local", "secagg+dp", "compression")


def defense_names() -> tuple[str, ...]:
    """The registered defense names: the built-ins in their usual order, then the others."""
    known = [n for n in _ORDER if n in DEFENSES]
    return (*known, *(n for n in DEFENSES.names() if n not in _ORDER))


def get_defense(name: str, **params: Any) -> Defense:
    """Build the defense registered as ``name``; unknown names and parameters list the valid ones."""
    return DEFENSES.build(name, **params)


# --------------------------------------------------------------------------- built-ins
def _none() -> Defense:
    return Defense(
        name="none",
        summary="No protection: every hospital's update travels in the clear.",
        channel_factory=lambda strategy: PlainChannel(),
        views=(
            PartyView("server", "each hospital's weighted update and weight, every round",
                      individual_updates=True, aggregate=True),
            PartyView("client", "the global model of each round",
                      individual_updates=False, aggregate=True),
            PartyView("outsider", "the released final model",
                      individual_updates=False, aggregate=False),
        ),
        centralized_channel="plain",
    )


register_defense("none", _none)
