"""Named defense settings composed from securefed's privacy mechanisms (see ``README.md``)."""

from defenses.base import (
    PARTIES,
    Defense,
    PartyView,
    RunContext,
    defense_names,
    get_defense,
    register_defense,
)

__all__ = ["PARTIES", "Defense", "PartyView", "RunContext", "defense_names", "get_defense", "register_defense"]
