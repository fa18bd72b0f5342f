"""Named defense settings composed from securefed's privacy mechanisms (see ``README.md``)."""

from defenses.base import (
    DEFENSES,
    PARTIES,
    Defense,
    PartyView,
    RunContext,
    defense_names,
    get_defense,
    register_defense,
)

__all__ = ["DEFENSES", "PARTIES", "Defense", "PartyView", "RunContext", "defense_names", "get_defense", "register_defense"]

# Built-in settings register themselves on import.
from defenses import ckks as _ckks  # noqa: E402,F401
from defenses import compression as _compression  # noqa: E402,F401
from defenses import dp as _dp  # noqa: E402,F401
from defenses import secagg as _secagg  # noqa: E402,F401
