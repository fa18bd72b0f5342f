"""The privacy ledger of a model, and what each epsilon it reports protects.

Why a ledger that travels with the model.  Epsilon is a property of a *model*: every round
that touched the hospitals' data on the way to it costs privacy, whichever run performed the
round.  So the ledger is saved beside the parameters (``RunResult.privacy_ledger`` and the
``"privacy_ledger"`` key of the result JSON), and a run that continues training from saved
parameters must be handed the saved ledger too (``run_federated(initial_params=...,
privacy_ledger=...)``); nothing resets it.

What it records.  Each round is a set of *charges*: ``dp_accounting`` events, one per
*track*.  A track is one neighbouring relation and one unit of privacy:

``hospital:add/remove``
    adding or removing one hospital's whole contribution (central and distributed DP);
``hospital:replace-one``
    replacing one hospital's update by any other (local DP's natural relation; for central
    and distributed DP the sensitivity doubles, ``2 C``).  A patient's membership is a change
    of one hospital's data, so this track also bounds every patient-level attack;
``hospital:add/remove:collude-k``
    distributed DP if ``k`` hospitals hand their noise shares to the server;
``patient:dp-sgd:<hospital>``
    DP-SGD's example-level cost inside one hospital (add/remove one patient's record).

A round that has no charge on a track cost infinite privacy on it (the library's
``NonPrivateDpEvent``): a round trained without DP voids every guarantee, and the ledger says
so instead of skipping it.  Every event is stated under the library's add-or-remove
relation with the sensitivity written into the noise multiplier (``GaussianDpEvent(z / 2)``
for a ``2 C`` change), so the RDP and PLD accountants of ``dp-accounting`` read it the same
way (the PLD accountant doubles the sensitivity of a Gaussian under its ``REPLACE_ONE``
relation and the RDP accountant does not; writing the sensitivity out avoids both readings).

Every number here is composed and converted by ``dp-accounting``; nothing re-derives a bound.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from importlib import metadata
from typing import Any

import dp_accounting
from dp_accounting import NeighboringRelation, dp_event
from dp_accounting.dp_event import DpEvent

from securefed.dp.clipping import check_delta
from securefed.dp.noise import NOT_PRIVATE
from securefed.errors import ConfigurationError

__all__ = [
    "TRACK_HOSPITAL",
    "TRACK_HOSPITAL_REPLACE",
    "DPSGD_ACTIVE",
    "collusion_track",
    "dpsgd_track",
    "event_to_dict",
    "event_from_dict",
    "EpsilonStatement",
    "PrivacyReport",
    "PrivacyLedger",
    "privacy_report",
    "TRUST",
]

TRACK_HOSPITAL = "hospital:add/remove"
TRACK_HOSPITAL_REPLACE = "hospital:replace-one"
DPSGD_ACTIVE = "patient:dp-sgd"
FORMAT = "securefed-privacy-ledger/1"
ACCOUNTANTS = ("rdp", "pld")

#: Who must be trusted, per mechanism (the threat model each epsilon assumes).
TRUST: dict[str, str] = {
    "central": ("the server: it sees every hospital's clipped update and the exact sum before "
                "it adds the noise; epsilon holds against everyone who sees only the released "
                "models"),
    "local": "nobody: each hospital adds its noise before its update leaves",
    "distributed": ("the secure-aggregation protocol and no collusion: the server sees only the "
                    "noisy sum as long as no hospital hands it its noise share (see the "
                    "collusion epsilons)"),
    "dp-sgd": ("nobody beyond the hospital itself: the noise is added inside its own local "
               "training"),
}


def collusion_track(k: int) -> str:
    """The track of distributed DP when ``k`` hospitals give the server their noise shares."""
    return f"{TRACK_HOSPITAL}:collude-{int(k)}"


def dpsgd_track(client_id: int) -> str:
    """DP-SGD's example-level track inside hospital ``client_id``."""
    return f"{DPSGD_ACTIVE}:{int(client_id)}"


# ----------------------------------------------------------------------------- events <-> JSON
def event_to_dict(event: DpEvent) -> dict[str, Any]:
    """A JSON-ready form of a ``dp_accounting`` event (its class name and attributes).

    >>> event_to_dict(dp_accounting.PoissonSampledDpEvent(0.5, dp_accounting.GaussianDpEvent(2.0)))
    {'event': 'PoissonSampledDpEvent', 'sampling_probability': 0.5, 'event_': {'event': 'GaussianDpEvent', 'noise_multiplier': 2.0}}
    """
    out: dict[str, Any] = {"event": type(event).__name__}
    for f in type(event).__attrs_attrs__:  # type: ignore[attr-defined]
        value = getattr(event, f.name)
        key = f"{f.name}_" if f.name == "event" else f.name
        if isinstance(value, DpEvent):
            value = event_to_dict(value)
        elif isinstance(value, (list, tuple)):
            value = [event_to_dict(v) if isinstance(v, DpEvent) else v for v in value]
        out[key] = value
    return out


def event_from_dict(data: Mapping[str, Any]) -> DpEvent:
    """Inverse of :func:`event_to_dict`; an unknown class name is an error."""
    name = data.get("event") if isinstance(data, Mapping) else None
    cls = getattr(dp_event, str(name), None)
    if not (isinstance(cls, type) and issubclass(cls, DpEvent)):
        raise ConfigurationError(
            f"the saved ledger names an unknown dp_accounting event {name!r}; expected one of "
            "GaussianDpEvent, PoissonSampledDpEvent, ZCDpEvent, SelfComposedDpEvent, ...")
    kwargs: dict[str, Any] = {}
    for f in cls.__attrs_attrs__:  # type: ignore[attr-defined]
        key = f"{f.name}_" if f.name == "event" else f.name
        if key not in data:
            continue
        value = data[key]
        if isinstance(value, Mapping) and "event" in value:
            value = event_from_dict(value)
        elif isinstance(value, list):
            value = [event_from_dict(v) if isinstance(v, Mapping) and "event" in v else v
                     for v in value]
        kwargs[f.name] = value
    return cls(**kwargs)


# ----------------------------------------------------------------------------- statements
def _library_version() -> str:
    try:
        return metadata.version("dp-accounting")
    except metadata.PackageNotFoundError:  # pragma: no cover
        return "unknown"


@dataclass(frozen=True)
class EpsilonStatement:
    """One epsilon and everything needed to read it.

    ``unit`` is what is protected (``"hospital"``: one hospital's whole contribution;
    ``"patient"``: one patient's record); ``neighbouring`` the relation the bound is stated
    under (``"add/remove"`` or ``"replace-one"``); ``trust`` who must be trusted for it to
    hold; ``colluding_hospitals`` how many hospitals are assumed to hand the server their
    noise (0: none).  ``private`` is False when the noise was reproducible from the seed, and
    ``warning`` then says so.
    """

    epsilon: float
    delta: float
    unit: str
    neighbouring: str
    accountant: str
    mechanism: str
    trust: str
    rounds: int
    private: bool = True
    warning: str | None = None
    colluding_hospitals: int = 0
    basis: str = ""

    def label(self) -> str:
        """A one-line rendering for reports and the command line."""
        eps = "inf" if math.isinf(self.epsilon) else f"{self.epsilon:.3g}"
        who = f"one {self.unit}" if self.unit == "hospital" else "one patient's record"
        text = (f"epsilon {eps} at delta {self.delta:g} ({who}, {self.neighbouring}; "
                f"{self.accountant}; {self.mechanism} DP, {self.rounds} rounds")
        if self.colluding_hospitals:
            text += f"; {self.colluding_hospitals} hospital(s) colluding with the server"
        text += ")"
        if self.warning:
            text += f" [{self.warning}]"
        return text

    def to_dict(self) -> dict[str, Any]:
        return {"epsilon": self.epsilon, "delta": self.delta, "unit": self.unit,
                "neighbouring": self.neighbouring, "accountant": self.accountant,
                "mechanism": self.mechanism, "trust": self.trust, "rounds": self.rounds,
                "private": self.private, "warning": self.warning,
                "colluding_hospitals": self.colluding_hospitals, "basis": self.basis,
                "label": self.label()}


@dataclass(frozen=True)
class PrivacyReport:
    """Every epsilon of a model: per hospital, per patient, and under collusion.

    ``collusion`` holds, for distributed DP, the hospital-level statement if ``k`` hospitals
    collude with the server, for ``k = 1 .. K-1``; ``collusion_note`` says in words what
    collusion does to the mechanisms used.
    """

    client: EpsilonStatement
    record: EpsilonStatement
    collusion: tuple[EpsilonStatement, ...] = ()
    collusion_note: str = ""

    @property
    def private(self) -> bool:
        return self.client.private

    def to_dict(self) -> dict[str, Any]:
        return {"client": self.client.to_dict(), "record": self.record.to_dict(),
                "collusion": [s.to_dict() for s in self.collusion],
                "collusion_note": self.collusion_note, "private": self.private}


# ----------------------------------------------------------------------------- the ledger
@dataclass
class _Round:
    charges: dict[str, DpEvent] = field(default_factory=dict)
    mechanisms: set[str] = field(default_factory=set)
    reproducible: bool = False
    num_clients: int | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"mechanisms": sorted(self.mechanisms), "reproducible": self.reproducible,
                "num_clients": self.num_clients,
                "charges": {k: event_to_dict(v) for k, v in sorted(self.charges.items())}}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> _Round:
        return cls(charges={str(k): event_from_dict(v) for k, v in dict(data["charges"]).items()},
                   mechanisms=set(data.get("mechanisms", ())),
                   reproducible=bool(data.get("reproducible", False)),
                   num_clients=data.get("num_clients"))


def _compose(accountant: str, events: Iterable[DpEvent]) -> dp_accounting.PrivacyAccountant:
    """A fresh library accountant with ``events`` composed (runs of equal events in one call)."""
    acc: dp_accounting.PrivacyAccountant
    if accountant == "rdp":
        acc = dp_accounting.rdp.RdpAccountant(neighboring_relation=NeighboringRelation.ADD_OR_REMOVE_ONE)
    else:
        acc = dp_accounting.pld.PLDAccountant(neighboring_relation=NeighboringRelation.ADD_OR_REMOVE_ONE)
    run: DpEvent | None = None
    count = 0
    for ev in events:
        if run is not None and ev == run:
            count += 1
            continue
        if run is not None:
            _compose_one(acc, run, count, accountant)
        run, count = ev, 1
    if run is not None:
        _compose_one(acc, run, count, accountant)
    return acc


def _compose_one(acc: dp_accounting.PrivacyAccountant, event: DpEvent, count: int,
                 accountant: str) -> None:
    if not acc.supports(event):
        raise ConfigurationError(
            f"the {accountant!r} accountant of dp-accounting cannot compose {event}; "
            "distributed DP (zCDP events) needs accountant='rdp'")
    acc.compose(event, count)


class PrivacyLedger:
    """Every round's charges since the model's initialisation, and the epsilons they add up to.

    Mechanisms write to it (:meth:`charge`) during a round; :meth:`begin_round` and
    :meth:`end_round` frame a round (a round ended with ``completed=False``, because a budget
    stopped it half way, is dropped: nothing of it was released).  :meth:`report` answers
    with :class:`PrivacyReport`; :meth:`to_dict` / :meth:`from_dict` save and restore it.
    """

    def __init__(self, *, accountant: str = "rdp", delta: float | None = None) -> None:
        if accountant not in ACCOUNTANTS:
            raise ConfigurationError(f"unknown accountant {accountant!r}; valid: {list(ACCOUNTANTS)}")
        self.accountant = accountant
        self.delta = None if delta is None else check_delta(delta)
        self.rounds: list[_Round] = []
        self._open: _Round | None = None

    # ------------------------------------------------------------------ writing
    def begin_round(self, *, num_clients: int | None = None) -> None:
        """Open a round.  Calling it again before anything was charged keeps the same round
        (nested DP wrappers each call it); a charged round left open by a runner that never
        ended it is kept as completed."""
        if self._open is not None and not self._open.charges:
            if num_clients is not None:
                self._open.num_clients = num_clients
            return
        if self._open is not None:
            self.rounds.append(self._open)
        self._open = _Round(num_clients=num_clients)

    def end_round(self, *, completed: bool = True) -> None:
        """Close the open round: keep it, or drop it when it did not complete (nothing of it
        was released).  A round in which nothing was charged leaves no entry."""
        if self._open is not None and completed and self._open.charges:
            self.rounds.append(self._open)
        self._open = None

    def has_charge(self, track: str) -> bool:
        """Whether the open round already has a charge on ``track``."""
        return self._open is not None and track in self._open.charges

    def charge(self, track: str, event: DpEvent, *, mechanism: str, reproducible: bool,
               num_clients: int | None = None) -> None:
        """Add ``event`` to the open round's ``track`` (opening a round if none is)."""
        if self._open is None:
            self.begin_round(num_clients=num_clients)
        assert self._open is not None
        rnd = self._open
        if track in rnd.charges:
            rnd.charges[track] = dp_accounting.ComposedDpEvent([rnd.charges[track], event])
        else:
            rnd.charges[track] = event
        rnd.mechanisms.add(mechanism)
        rnd.reproducible = rnd.reproducible or bool(reproducible)
        if num_clients is not None:
            rnd.num_clients = max(num_clients, rnd.num_clients or 0)

    def set_delta(self, delta: float) -> None:
        self.delta = check_delta(delta)

    # ------------------------------------------------------------------ reading
    def entries(self, extra: _Round | None = None) -> list[_Round]:
        """The recorded rounds (the open one if anything was charged in it) and ``extra``."""
        out = list(self.rounds)
        if self._open is not None and self._open.charges:
            out.append(self._open)
        if extra is not None:
            out.append(extra)
        return out

    @property
    def num_rounds(self) -> int:
        """Rounds recorded, the open one included."""
        return len(self.entries())

    @property
    def mechanisms(self) -> tuple[str, ...]:
        return tuple(sorted(set().union(*(r.mechanisms for r in self.entries()))))

    @property
    def reproducible(self) -> bool:
        return any(r.reproducible for r in self.entries())

    def _events(self, track: str, entries: list[_Round]) -> list[DpEvent]:
        events = []
        for r in entries:
            ev = r.charges.get(track)
            if ev is None and track.startswith(DPSGD_ACTIVE + ":") and DPSGD_ACTIVE in r.charges:
                ev = dp_accounting.NoOpDpEvent()  # DP-SGD ran; this hospital did not train
            events.append(ev if ev is not None else dp_accounting.NonPrivateDpEvent())
        return events

    def epsilon(self, track: str, *, delta: float | None = None, extra: _Round | None = None) -> float:
        """Epsilon on ``track`` at ``delta`` over every recorded round (and ``extra``)."""
        d = self._delta(delta)
        entries = self.entries(extra)
        if not entries:
            return 0.0
        return float(_compose(self.accountant, self._events(track, entries)).get_epsilon(d))

    def _delta(self, delta: float | None) -> float:
        if delta is not None:
            return check_delta(delta)
        if self.delta is None:
            raise ConfigurationError("the ledger has no delta yet; pass delta=")
        return self.delta

    def client_track(self, entries: list[_Round]) -> str:
        """The hospital-level track of the report: add/remove when every round has it."""
        if entries and all(TRACK_HOSPITAL in r.charges for r in entries):
            return TRACK_HOSPITAL
        return TRACK_HOSPITAL_REPLACE

    def client_epsilon(self, *, delta: float | None = None, extra: _Round | None = None) -> float:
        """Hospital-level epsilon (the figure a target epsilon is checked against)."""
        entries = self.entries(extra)
        return self.epsilon(self.client_track(entries), delta=delta, extra=extra)

    def hypothetical(self, charges: Mapping[str, DpEvent], *, mechanism: str,
                     reproducible: bool = False, num_clients: int | None = None) -> _Round:
        """A round that has not run, for "what would epsilon be after it" questions (its
        ``to_dict()`` is the saved form of a round, as :meth:`to_dict` writes each)."""
        return _Round(charges=dict(charges), mechanisms={mechanism}, reproducible=reproducible,
                      num_clients=num_clients)

    @staticmethod
    def append_rounds(data: Mapping[str, Any], rounds: Iterable[Mapping[str, Any]]) -> dict[str, Any]:
        """The saved ledger ``data`` (:meth:`to_dict`) with the saved ``rounds`` added."""
        return {**data, "rounds": [*data.get("rounds", []), *rounds]}

    def report(self, *, delta: float | None = None) -> PrivacyReport:
        """Every epsilon of the model, fully described (see :class:`PrivacyReport`)."""
        d = self._delta(delta)
        entries = self.entries()
        n = len(entries)
        mechs = self.mechanisms
        mech_text = "+".join(mechs) if mechs else "no"
        private = not self.reproducible
        warning = None if private else NOT_PRIVATE
        acct = f"{self.accountant.upper()} accountant (dp-accounting {_library_version()})"
        client_mechs = [m for m in ("central", "distributed", "local") if m in mechs]
        trust_client = TRUST[client_mechs[0]] if client_mechs else "no hospital-level DP"
        track = self.client_track(entries)
        client = EpsilonStatement(
            epsilon=self.epsilon(track, delta=d), delta=d, unit="hospital",
            neighbouring="add/remove" if track == TRACK_HOSPITAL else "replace-one",
            accountant=acct, mechanism=mech_text, trust=trust_client, rounds=n, private=private,
            warning=warning, basis=track)
        # patient level: a patient's record changes one hospital's data (replace-one hospital);
        # DP-SGD bounds it directly.  Both are valid bounds; the smaller is reported.
        candidates = [(self.epsilon(TRACK_HOSPITAL_REPLACE, delta=d), TRACK_HOSPITAL_REPLACE)]
        if any(DPSGD_ACTIVE in r.charges for r in entries):
            hospitals = sorted({int(k.rsplit(":", 1)[1]) for r in entries for k in r.charges
                                if k.startswith(DPSGD_ACTIVE + ":")})
            worst = max((self.epsilon(dpsgd_track(h), delta=d) for h in hospitals), default=0.0)
            candidates.append((worst, "patient:dp-sgd (largest over hospitals)"))
        eps_rec, basis = min(candidates, key=lambda c: c[0])
        trust_rec = TRUST["dp-sgd"] if basis.startswith(DPSGD_ACTIVE) else trust_client
        record = EpsilonStatement(
            epsilon=eps_rec, delta=d, unit="patient", neighbouring="add/remove",
            accountant=acct, mechanism=mech_text, trust=trust_rec, rounds=n, private=private,
            warning=warning, basis=basis)
        collusion, note = self._collusion(entries, client, d)
        return PrivacyReport(client=client, record=record, collusion=collusion,
                             collusion_note=note)

    def _collusion(self, entries: list[_Round], client: EpsilonStatement,
                   d: float) -> tuple[tuple[EpsilonStatement, ...], str]:
        mechs = set(self.mechanisms)
        k_max = max((r.num_clients or 0 for r in entries), default=0) - 1
        if not entries or k_max < 1:
            return (), ""
        if mechs & {"distributed"} and not mechs & {"central"}:
            out = []
            for k in range(1, k_max + 1):
                track = collusion_track(k)
                eps = self.epsilon(track, delta=d)
                out.append(EpsilonStatement(
                    epsilon=eps, delta=d, unit="hospital", neighbouring=client.neighbouring,
                    accountant=client.accountant, mechanism=client.mechanism,
                    trust=(f"the secure-aggregation protocol, with {k} hospital(s) handing their "
                           "noise shares to the server"),
                    rounds=client.rounds, private=client.private, warning=client.warning,
                    colluding_hospitals=k, basis=track))
            note = ("distributed DP: each hospital adds only a share of the noise, so the server "
                    "plus k colluding hospitals, who know k shares, face the noise of the others "
                    "only; the epsilons above hold under that collusion")
            return tuple(out), note
        if mechs & {"central"}:
            return (), ("central DP: the server sees every clipped update and the exact sum; "
                        "against the server (alone or with any hospitals) there is no guarantee")
        if mechs & {"local"}:
            return (), ("local DP: each hospital's own noise protects it; collusion of other "
                        "hospitals with the server does not change its epsilon")
        return (), ""

    # ------------------------------------------------------------------ saving
    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: every round's charges (the open round included) and the report."""
        out: dict[str, Any] = {
            "format": FORMAT, "accountant": self.accountant, "delta": self.delta,
            "rounds": [r.to_dict() for r in self.entries()],
        }
        if self.delta is not None:
            out["report"] = self.report().to_dict()
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any] | PrivacyLedger) -> PrivacyLedger:
        """Restore a ledger saved by :meth:`to_dict` (its ``report`` is recomputed, not read)."""
        if isinstance(data, PrivacyLedger):
            return data.copy()
        if not isinstance(data, Mapping) or data.get("format") != FORMAT:
            got = data.get("format") if isinstance(data, Mapping) else type(data).__name__
            raise ConfigurationError(
                f"not a saved privacy ledger: format {got!r}, expected {FORMAT!r} (the "
                "'privacy_ledger' of a result JSON or RunResult.privacy_ledger)")
        led = cls(accountant=str(data.get("accountant", "rdp")), delta=data.get("delta"))
        led.rounds = [_Round.from_dict(r) for r in data.get("rounds", ())]
        return led

    def copy(self) -> PrivacyLedger:
        return PrivacyLedger.from_dict(self.to_dict())


def privacy_report(source: Any, *, delta: float | None = None) -> PrivacyReport | None:
    """The :class:`PrivacyReport` of a run: from a ``RunResult``, the dict of its JSON
    (``RunResult.to_dict()``), a saved ledger, or a :class:`PrivacyLedger`.  ``None`` when
    the run used no differential privacy.

    This is what a report shows beside a model: the hospital-level epsilon, the
    patient-level epsilon, the collusion epsilons, each with its unit, neighbouring relation,
    delta, accountant and trust assumption.
    """
    if isinstance(source, PrivacyLedger):
        return source.report(delta=delta)
    ledger = getattr(source, "privacy_ledger", None)
    if ledger is None and isinstance(source, Mapping):
        ledger = source.get("privacy_ledger") if "format" not in source else source
    if callable(ledger):  # a strategy
        ledger = ledger()
    if ledger is None:
        return None
    return PrivacyLedger.from_dict(ledger).report(delta=delta)
