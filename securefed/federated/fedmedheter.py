r"""FedMedHeter: federated averaging made aware of heterogeneous hospitals.

FedMedHeter is FedAvg (McMahan et al., AISTATS 2017) with five components, each of which
can be switched off by a constructor keyword.  With every component off it *is* FedAvg,
bit for bit (the same code path runs; a test checks the final parameters).

Notation: round :math:`t`, global parameters :math:`w_t`, client :math:`k` with
:math:`n_k` examples, local loss :math:`F_k`, local learning rate :math:`\eta`, local steps
:math:`j = 0..J-1` on mini-batch gradients :math:`g_{k,j}`.

1. **Proximal local objective** (``proximal_mu``; off: ``0``).  Each client minimises
   (Li et al., "Federated optimization in heterogeneous networks", MLSys 2020, eq. 2)

   .. math:: h_k(w) = F_k(w) + \tfrac{\mu}{2}\,\lVert w - w_t \rVert^2 ,

   which bounds how far a client with unusual data can drift from the global model.

2. **Adaptive local learning rate** (``adaptive_lr``; off: ``None`` = plain SGD with
   step :math:`\eta`).  The state of every rule is reset at the start of each round, so a
   client that skips rounds carries nothing stale.

   * ``"adagrad_norm"``: AdaGrad-norm step sizes (Ward, Wu, Bottou, "AdaGrad stepsizes",
     ICML 2019 / JMLR 2020, eq. 4):
     :math:`b_{j+1}^2 = b_j^2 + \lVert g_{k,j}\rVert^2`,
     :math:`w \leftarrow w - \eta\, g_{k,j} / b_{j+1}`, with :math:`b_0` =
     ``adagrad_b0``.  One scalar per client: a hospital whose gradients are large (its
     data far from the global model) automatically takes shorter steps.
   * ``"adam"``: local Adam (Kingma & Ba, ICLR 2015) with moments reset every round.
   * ``"loss_scaled"``: SGD whose step follows the client's own progress,
     :math:`\eta_{k,t} = \eta \cdot \mathrm{clip}(F_k(w_t) / F_k(w_{t_k^0}),\ r_{\min}, 1)`,
     where :math:`t_k^0` is the first round the client took part in (kept in its state).

   Which rule is the default was decided by experiment (see ``docs/fedmedheter.md``).

3. **Heterogeneity-aware client weights** (``client_weighting``; off: ``"samples"``,
   :math:`p_k = n_k`, FedAvg's weight).  With ``"heterogeneity"`` each client computes,
   from its own statistics only (so the rule works under secure aggregation and CKKS),

   .. math::
      p_k = \frac{n_k}{n_{\mathrm{ref}}}\;
            \mathrm{clip}\!\Big( \big(F_k(w_t)/\ln 2\big)^{q}\;
            \big(H(\pi_k)/\ln 2\big)^{\gamma},\ \rho_{\min},\ \rho_{\max} \Big),

   where :math:`F_k(w_t)` is the loss of the *incoming* global model on the client's data
   (``LocalResult.initial_loss``), :math:`\pi_k` its fraction of positive labels,
   :math:`H` the binary entropy, :math:`q` = ``loss_power`` and :math:`\gamma` =
   ``balance_power``.  :math:`q > 0` is q-FFL's fairness weighting (Li, Sanjabi, Beirami,
   Smith, "Fair resource allocation in federated learning", ICLR 2020: weight
   :math:`\propto F_k^q`), giving hospitals the global model serves badly a larger say;
   :math:`q < 0` instead discounts hospitals that disagree with the rest (a different
   labelling convention, for instance); :math:`\gamma > 0` discounts hospitals whose labels
   are nearly all one class.  :math:`\ln 2` is the loss and entropy of a coin flip, so both
   factors are 1 for an uninformed model on balanced data.  :math:`n_{\mathrm{ref}}`
   (``reference_examples``) is a public constant that only rescales: the server's
   aggregate :math:`\sum_k p_k u_k / \sum_k p_k` does not depend on it, but it keeps
   :math:`p_k = O(1)`, which a fixed-point secure-aggregation encoding needs.

   *Range.*  Each client uploads :math:`p_k u_k` (pre-scaled) and :math:`p_k`; the
   channel sums both.  With ``"heterogeneity"``,
   :math:`\rho_{\min} n_k/n_{\mathrm{ref}} \le p_k \le \rho_{\max} n_k/n_{\mathrm{ref}}`
   (defaults 0.25 and 4); with ``"samples"`` :math:`p_k = n_k` as in FedAvg.  With
   AdaGrad-norm every local step is shorter than :math:`\eta` (because
   :math:`b_{j+1} \ge \lVert g_j\rVert`), whatever the gradient, proximal term included,
   so :math:`\lVert u_k\rVert_2 \le \eta J`; more tightly, by Cauchy-Schwarz and
   :math:`\sum_j \lVert g_j\rVert^2 / b_{j+1}^2 \le \ln(b_J^2 / b_0^2)`,
   :math:`\lVert u_k\rVert_2 \le \eta \sqrt{J \ln(b_J^2/b_0^2)}`.  Hence every entry of
   an upload lies in :math:`[-\rho_{\max} (n_k/n_{\mathrm{ref}})\, \eta J,\
   +\rho_{\max} (n_k/n_{\mathrm{ref}})\, \eta J]`, a range a fixed-point encoding can
   declare in advance (plain SGD and Adam give no such a-priori bound).

4. **Compressed uploads** (``compression``; off: ``None``, float32).  A codec from
   :mod:`securefed.compression` (unbiased stochastic ``b``-bit quantisation, top-k
   sparsification).  With ``error_feedback=True`` the client keeps the part of its update
   that compression dropped, in its own state, and adds it to the next upload (Stich et al.,
   NeurIPS 2018, Alg. 1).  The residual is stored in *unweighted* units,
   :math:`e_k \leftarrow (p_k u_k + p_k e_k - C(p_k u_k + p_k e_k)) / p_k`, so a change of
   weight between rounds does not rescale the debt.  The encoded fields are what the plain
   channel transmits and counts.

   Under client-level differential privacy the quantised, error-corrected message can leave
   the clipping ball (each entry is rounded to a level between the vector's minimum and
   maximum, and the residual of earlier rounds is added).  The DP wrappers therefore bound
   the encoded message after this step (``securefed.dp.clipping.bound_release``, using the
   codecs' ``scale_fields``); the part the bound removes is dropped, not added to the
   residual, so the residual stays what the codec alone left behind.

5. **Server-side adaptive update** (``server_optimizer``; off: ``None``,
   :math:`w_{t+1} = w_t + \eta_s \Delta_t` with :math:`\Delta_t` the weighted mean update).

   * ``"momentum"``: FedAvgM (Hsu, Qi, Brown, arXiv:1909.06335, 2019),
     :math:`m_t = \beta m_{t-1} + \Delta_t`, :math:`w_{t+1} = w_t + \eta_s m_t`.
   * ``"adam"``: FedAdam (Reddi et al., "Adaptive federated optimization", ICLR 2021,
     Alg. 2): :math:`m_t = \beta_1 m_{t-1} + (1-\beta_1)\Delta_t`,
     :math:`v_t = \beta_2 v_{t-1} + (1-\beta_2)\Delta_t^2`,
     :math:`w_{t+1} = w_t + \eta_s\, m_t / (\sqrt{v_t} + \tau)`.

   The server state is reset when round 0 begins, so a strategy object can be reused.

6. **Personalisation** (``personalisation``; off: ``None``).  Each hospital also derives
   its own model from the global one, kept at the hospital and used for its own patients
   (:mod:`securefed.federated.personal`: ``"finetune"``, ``"ditto"``, ``"fedper"``).  It is
   not one of :data:`COMPONENTS` because, except for ``"fedper"``, it changes nothing that
   is uploaded or learned globally: it decides which model each hospital evaluates on its
   own test patients (``RoundRecord.per_hospital``).  The default method was chosen by the
   ablation of ``benchmarks/personalisation.py`` (``docs/fedmedheter.md``).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
from torch import nn

from securefed.arrays import ClientArrays
from securefed.codec import Codec, Float32Codec
from securefed.compression import StochasticQuantizer, error_feedback_step
from securefed.errors import ConfigurationError
from securefed.federated.personal import PERSONALISATIONS, make_personalisation
from securefed.federated.strategy import Strategy
from securefed.federated.types import LocalConfig, LocalResult

__all__ = [
    "FedMedHeter",
    "AdaGradNorm",
    "heterogeneity_weight",
    "COMPONENTS",
    "ADAPTIVE_LR_RULES",
    "DEFAULT_COMPRESSION",
]

COMPONENTS = ("proximal", "adaptive_lr", "client_weighting", "compression", "server_optimizer")
ADAPTIVE_LR_RULES = ("adagrad_norm", "adam", "loss_scaled")
_SERVER_OPTIMIZERS = ("momentum", "adam")
_WEIGHTINGS = ("samples", "heterogeneity")
_LN2 = math.log(2.0)

#: The codec FedMedHeter uses unless told otherwise (chosen by the documented selection run:
#: the fewest bytes within 2% of float32's validation loss).  Codecs hold no state.
DEFAULT_COMPRESSION: Codec = StochasticQuantizer(bits=2)


def _binary_entropy(p: float) -> float:
    if p <= 0.0 or p >= 1.0:
        return 0.0
    return -(p * math.log(p) + (1.0 - p) * math.log(1.0 - p))


def heterogeneity_weight(
    *,
    num_examples: int,
    initial_loss: float,
    label_balance: float,
    loss_power: float,
    balance_power: float,
    reference_examples: float,
    weight_bounds: tuple[float, float],
) -> float:
    r"""The client weight :math:`p_k` of component 3 (see the module docstring).

    >>> heterogeneity_weight(num_examples=50, initial_loss=math.log(2), label_balance=0.5,
    ...                      loss_power=1.0, balance_power=1.0, reference_examples=100,
    ...                      weight_bounds=(0.25, 4.0))
    0.5
    """
    if not math.isfinite(initial_loss) or initial_loss < 0:
        raise ConfigurationError(f"initial_loss must be finite and >= 0, got {initial_loss!r}")
    if not 0.0 <= label_balance <= 1.0:
        raise ConfigurationError(f"label_balance must be in [0, 1], got {label_balance!r}")
    lo, hi = weight_bounds
    loss_ratio = max(initial_loss / _LN2, 1e-12)
    bal_ratio = max(_binary_entropy(label_balance) / _LN2, 1e-12)
    rho = (loss_ratio**loss_power) * (bal_ratio**balance_power)
    rho = min(max(rho, lo), hi)
    return float(num_examples) / float(reference_examples) * rho


class AdaGradNorm(torch.optim.Optimizer):
    r"""AdaGrad-norm (Ward, Wu, Bottou 2019): one step size for all coordinates,
    :math:`\eta / b_{j+1}` with :math:`b_{j+1}^2 = b_j^2 + \lVert g_j \rVert^2`.

    A fresh optimiser starts from ``b0``; the norm is taken over every parameter of the model.
    """

    def __init__(self, params: Any, *, lr: float, b0: float) -> None:
        if not lr > 0:
            raise ConfigurationError(f"lr must be > 0, got {lr!r}")
        if not b0 > 0:
            raise ConfigurationError(f"b0 must be > 0, got {b0!r}")
        super().__init__(params, {"lr": lr})
        self.b_squared = float(b0) ** 2

    @torch.no_grad()
    def step(self, closure: Any = None) -> None:  # type: ignore[override]
        grads = [p.grad for g in self.param_groups for p in g["params"] if p.grad is not None]
        self.b_squared += float(sum(float((gr.double() ** 2).sum()) for gr in grads))
        b = math.sqrt(self.b_squared)
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is not None:
                    p.add_(p.grad, alpha=-group["lr"] / b)


class FedMedHeter(Strategy):
    """FedAvg plus five switchable components for heterogeneous hospitals (module docstring).

    Parameters (keyword-only; the "off" value of each component is given in brackets)
    ----------
    proximal_mu:
        FedProx coefficient :math:`\\mu` [``0.0``].
    adaptive_lr:
        ``"adagrad_norm"``, ``"adam"``, ``"loss_scaled"`` [``None``: SGD].
    adagrad_b0, loss_ratio_floor:
        :math:`b_0` of AdaGrad-norm; :math:`r_{\\min}` of the loss-scaled rule.
    client_weighting:
        ``"heterogeneity"`` [``"samples"``: :math:`n_k`].
    loss_power, balance_power, reference_examples, weight_bounds:
        :math:`q`, :math:`\\gamma`, :math:`n_{ref}`, :math:`(\\rho_{min}, \\rho_{max})`.
    compression:
        a :class:`~securefed.codec.Codec` [``None``: float32].
    error_feedback:
        keep the compression residual at the client (only used with ``compression``).
    server_optimizer:
        ``"momentum"`` or ``"adam"`` [``None``].
    server_momentum, server_beta2, server_tau:
        :math:`\\beta` (momentum) / :math:`\\beta_1` (adam), :math:`\\beta_2`, :math:`\\tau`.
    personalisation:
        ``"finetune"``, ``"finetune-select"``, ``"ditto"`` or ``"fedper"`` [``None``: every
        hospital uses the global model]; see :mod:`securefed.federated.personal`.
    personal_epochs, personal_learning_rate, personal_lambda:
        epochs and SGD step of the personal training, and its pull :math:`\\lambda` towards
        the global model (Ditto's :math:`\\lambda`; a proximal term for fine-tuning).

    ``learning_rate``, ``local_epochs``, ``batch_size`` and ``server_learning_rate`` are
    those of :class:`~securefed.federated.strategy.Strategy`.  The defaults are the
    configuration that the selection run of ``benchmarks/fedmedheter_experiments.py`` chose
    on validation data (``docs/fedmedheter.md``): loss-scaled SGD with ``eta = 0.3``,
    ``mu = 0.001``, weights with ``q = -1``, 2-bit quantised uploads with error feedback,
    no server optimiser.
    """

    name = "fedmedheter"

    def __init__(
        self,
        *,
        learning_rate: float = 0.3,
        local_epochs: int = 1,
        batch_size: int | None = 16,
        server_learning_rate: float = 1.0,
        proximal_mu: float = 0.001,
        adaptive_lr: str | None = "loss_scaled",
        adagrad_b0: float = 0.1,
        loss_ratio_floor: float = 0.1,
        client_weighting: str = "heterogeneity",
        loss_power: float = -1.0,
        balance_power: float = 0.0,
        reference_examples: float = 100.0,
        weight_bounds: tuple[float, float] = (0.25, 4.0),
        compression: Codec | None = DEFAULT_COMPRESSION,
        error_feedback: bool = True,
        server_optimizer: str | None = None,
        server_momentum: float = 0.5,
        server_beta2: float = 0.99,
        server_tau: float = 1e-3,
        personalisation: str | None = "finetune",
        personal_epochs: int = 1,
        personal_learning_rate: float = 0.1,
        personal_lambda: float = 0.0,
    ) -> None:
        super().__init__(learning_rate=learning_rate, local_epochs=local_epochs,
                         batch_size=batch_size, server_learning_rate=server_learning_rate)
        if not (isinstance(proximal_mu, (int, float)) and proximal_mu >= 0):
            raise ConfigurationError(f"proximal_mu must be >= 0, got {proximal_mu!r}")
        if adaptive_lr is not None and adaptive_lr not in ADAPTIVE_LR_RULES:
            raise ConfigurationError(
                f"adaptive_lr must be None or one of {list(ADAPTIVE_LR_RULES)}, got {adaptive_lr!r}"
            )
        if not adagrad_b0 > 0:
            raise ConfigurationError(f"adagrad_b0 must be > 0, got {adagrad_b0!r}")
        if not 0 < loss_ratio_floor <= 1:
            raise ConfigurationError(f"loss_ratio_floor must be in (0, 1], got {loss_ratio_floor!r}")
        if client_weighting not in _WEIGHTINGS:
            raise ConfigurationError(
                f"client_weighting must be one of {list(_WEIGHTINGS)}, got {client_weighting!r}"
            )
        for pname, val in (("loss_power", loss_power), ("balance_power", balance_power)):
            if not (isinstance(val, (int, float)) and math.isfinite(val)):
                raise ConfigurationError(f"{pname} must be a finite number, got {val!r}")
        if not reference_examples > 0:
            raise ConfigurationError(f"reference_examples must be > 0, got {reference_examples!r}")
        lo, hi = weight_bounds
        if not 0 < lo <= hi < math.inf:
            raise ConfigurationError(
                f"weight_bounds must satisfy 0 < low <= high < inf, got {weight_bounds!r}"
            )
        if compression is not None and not isinstance(compression, Codec):
            raise ConfigurationError(
                f"compression must implement the Codec protocol (encode/decode/name), "
                f"got {type(compression).__name__}"
            )
        if server_optimizer is not None and server_optimizer not in _SERVER_OPTIMIZERS:
            raise ConfigurationError(
                f"server_optimizer must be None or one of {list(_SERVER_OPTIMIZERS)}, "
                f"got {server_optimizer!r}"
            )
        for pname, val in (("server_momentum", server_momentum), ("server_beta2", server_beta2)):
            if not 0 <= val < 1:
                raise ConfigurationError(f"{pname} must be in [0, 1), got {val!r}")
        if not server_tau > 0:
            raise ConfigurationError(f"server_tau must be > 0, got {server_tau!r}")
        if personalisation is not None and personalisation not in PERSONALISATIONS:
            raise ConfigurationError(
                f"personalisation must be None or one of {list(PERSONALISATIONS)}, "
                f"got {personalisation!r}")
        self.personalisation = make_personalisation(
            personalisation, epochs=personal_epochs, learning_rate=personal_learning_rate,
            batch_size=batch_size, lam=personal_lambda)
        self.proximal_mu = float(proximal_mu)
        self.adaptive_lr = adaptive_lr
        self.adagrad_b0 = float(adagrad_b0)
        self.loss_ratio_floor = float(loss_ratio_floor)
        self.client_weighting = client_weighting
        self.loss_power = float(loss_power)
        self.balance_power = float(balance_power)
        self.reference_examples = float(reference_examples)
        self.weight_bounds = (float(lo), float(hi))
        self.compression = compression
        self.error_feedback = bool(error_feedback)
        self.server_optimizer = server_optimizer
        self.server_momentum = float(server_momentum)
        self.server_beta2 = float(server_beta2)
        self.server_tau = float(server_tau)
        self.codec: Codec = compression if compression is not None else Float32Codec()
        self._init_kwargs: dict[str, Any] = {
            "learning_rate": learning_rate, "local_epochs": local_epochs,
            "batch_size": batch_size, "server_learning_rate": server_learning_rate,
            "proximal_mu": proximal_mu, "adaptive_lr": adaptive_lr, "adagrad_b0": adagrad_b0,
            "loss_ratio_floor": loss_ratio_floor, "client_weighting": client_weighting,
            "loss_power": loss_power, "balance_power": balance_power,
            "reference_examples": reference_examples, "weight_bounds": weight_bounds,
            "compression": compression, "error_feedback": error_feedback,
            "server_optimizer": server_optimizer, "server_momentum": server_momentum,
            "server_beta2": server_beta2, "server_tau": server_tau,
            "personalisation": personalisation, "personal_epochs": personal_epochs,
            "personal_learning_rate": personal_learning_rate, "personal_lambda": personal_lambda,
        }
        self._server_m: np.ndarray | None = None
        self._server_v: np.ndarray | None = None

    # ------------------------------------------------------------------ composition
    _OFF: dict[str, dict[str, Any]] = {
        "proximal": {"proximal_mu": 0.0},
        "adaptive_lr": {"adaptive_lr": None},
        "client_weighting": {"client_weighting": "samples"},
        "compression": {"compression": None},
        "server_optimizer": {"server_optimizer": None},
        "personalisation": {"personalisation": None},
    }

    def without(self, *components: str) -> FedMedHeter:
        """A new FedMedHeter with the named components switched off (for ablations).

        ``without(*COMPONENTS)`` trains as FedAvg with the same local hyper-parameters;
        ``"personalisation"`` may be named too.
        """
        overrides: dict[str, Any] = {}
        for c in components:
            if c not in self._OFF:
                raise ConfigurationError(
                    f"unknown component {c!r}; valid: {[*COMPONENTS, 'personalisation']}")
            overrides.update(self._OFF[c])
        return FedMedHeter(**{**self._init_kwargs, **overrides})

    def active_components(self) -> tuple[str, ...]:
        """Names of the components that are switched on."""
        on = []
        if self.proximal_mu > 0:
            on.append("proximal")
        if self.adaptive_lr is not None:
            on.append("adaptive_lr")
        if self.client_weighting != "samples":
            on.append("client_weighting")
        if self.compression is not None:
            on.append("compression")
        if self.server_optimizer is not None:
            on.append("server_optimizer")
        return tuple(on)

    # ------------------------------------------------------------------ client side
    def configure(self, round_index: int) -> LocalConfig:
        return LocalConfig(
            learning_rate=self.learning_rate,
            local_epochs=self.local_epochs,
            batch_size=self.batch_size,
            proximal_mu=self.proximal_mu,
            optimizer=self.adaptive_lr or "sgd",
        )

    def make_optimizer(self, model: nn.Module, config: LocalConfig, *,
                       learning_rate: float | None = None) -> torch.optim.Optimizer:
        lr = config.learning_rate if learning_rate is None else learning_rate
        if config.optimizer == "adagrad_norm":
            return AdaGradNorm(model.parameters(), lr=lr, b0=self.adagrad_b0)
        if config.optimizer == "adam":
            return torch.optim.Adam(model.parameters(), lr=lr)
        return torch.optim.SGD(model.parameters(), lr=lr)

    def local_train(
        self,
        model: nn.Module,
        client: ClientArrays,
        global_params: np.ndarray,
        config: LocalConfig,
        *,
        rng: np.random.Generator,
        client_state: dict[str, Any],
    ) -> LocalResult:
        p = self.personalisation
        if p is None or not p.changes_upload:
            return super().local_train(model, client, global_params, config, rng=rng,
                                       client_state=client_state)
        start = p.training_start(global_params, model=model, client_state=client_state)
        result = super().local_train(model, client, start, config, rng=rng,
                                     client_state=client_state)
        return p.finish_local(result, start=start, global_params=global_params, model=model,
                              client_state=client_state)

    def personal_step(self, model, client, global_params, config, *, rng, client_state):  # type: ignore[override]
        if self.personalisation is not None:
            self.personalisation.step(model, client, global_params, config, rng=rng,
                                      client_state=client_state)

    def personal_params(self, model, client, global_params, *, rng, client_state):  # type: ignore[override]
        if self.personalisation is None:
            return None
        return self.personalisation.params(model, client, global_params, rng=rng,
                                           client_state=client_state)

    def local_rate_scale(self, initial_loss: float, *, client_state: dict[str, Any]) -> float:
        """The loss-scaled rule: ``clip(loss_now / first_loss, loss_ratio_floor, 1)``."""
        if self.adaptive_lr != "loss_scaled":
            return 1.0
        first = client_state.setdefault("first_loss", initial_loss)
        return min(max(initial_loss / first if first > 0 else 1.0, self.loss_ratio_floor), 1.0)

    def client_weight(self, result: LocalResult, *, client_state: dict[str, Any]) -> float:
        if self.client_weighting == "samples":
            return super().client_weight(result, client_state=client_state)
        return heterogeneity_weight(
            num_examples=result.num_examples,
            initial_loss=result.initial_loss,
            label_balance=result.label_balance,
            loss_power=self.loss_power,
            balance_power=self.balance_power,
            reference_examples=self.reference_examples,
            weight_bounds=self.weight_bounds,
        )

    def client_process(
        self,
        update: np.ndarray,
        weight: float,
        *,
        client_state: dict[str, Any],
        rng: np.random.Generator,
    ) -> tuple[np.ndarray, dict[str, Any]]:
        if self.compression is None or not self.error_feedback:
            return super().client_process(update, weight, client_state=client_state, rng=rng)
        vector = weight * np.asarray(update, dtype=np.float64)
        raw_residual = client_state.get("ef_residual")
        if weight <= 0:  # nothing is sent; the debt waits for a round with weight > 0
            payload = self.codec.encode(np.zeros_like(vector), rng=rng)
            return self.codec.decode(payload, dim=vector.shape[0]), payload
        residual = None if raw_residual is None else weight * raw_residual
        decoded, payload, new_residual = error_feedback_step(vector, residual, self.codec, rng=rng)
        client_state["ef_residual"] = new_residual / weight
        return decoded, payload

    # ------------------------------------------------------------------ server side
    def before_round(self, round_index: int) -> None:
        if round_index == 0:
            self._server_m = None
            self._server_v = None

    def server_update(
        self, global_params: np.ndarray, mean_update: np.ndarray, *, round_index: int
    ) -> np.ndarray:
        if self.server_optimizer is None:
            return super().server_update(global_params, mean_update, round_index=round_index)
        w = np.asarray(global_params, dtype=np.float64)
        delta = np.asarray(mean_update, dtype=np.float64)
        if self._server_m is None or self._server_m.shape != delta.shape:
            self._server_m = np.zeros_like(delta)
            self._server_v = np.zeros_like(delta)
        if self.server_optimizer == "momentum":
            self._server_m = self.server_momentum * self._server_m + delta
            return w + self.server_learning_rate * self._server_m
        assert self._server_v is not None
        b1, b2 = self.server_momentum, self.server_beta2
        self._server_m = b1 * self._server_m + (1.0 - b1) * delta
        self._server_v = b2 * self._server_v + (1.0 - b2) * delta**2
        return w + self.server_learning_rate * self._server_m / (np.sqrt(self._server_v) + self.server_tau)

    def describe(self) -> dict[str, Any]:
        return {
            **super().describe(),
            "components": list(self.active_components()),
            "proximal_mu": self.proximal_mu,
            "adaptive_lr": self.adaptive_lr,
            "adagrad_b0": self.adagrad_b0,
            "loss_ratio_floor": self.loss_ratio_floor,
            "client_weighting": self.client_weighting,
            "loss_power": self.loss_power,
            "balance_power": self.balance_power,
            "reference_examples": self.reference_examples,
            "weight_bounds": list(self.weight_bounds),
            "compression": None if self.compression is None else self.codec.name,
            "error_feedback": self.error_feedback,
            "server_optimizer": self.server_optimizer,
            "server_momentum": self.server_momentum,
            "personalisation": (None if self.personalisation is None
                                else self.personalisation.describe()),
        }
