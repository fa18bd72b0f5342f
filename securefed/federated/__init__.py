"""The federated core: strategies and the round engine.

Public names are imported on first use (see :func:`securefed._compat.lazy`), so importing a
submodule such as :mod:`securefed.federated.types` does not load the engine or torch.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from securefed._compat import lazy

_EXPORTS = {
    "AggregationChannel": "securefed.channel",
    "PlainChannel": "securefed.channel",
    "check_uploads": "securefed.channel",
    "ChannelResult": "securefed.channel",
    "DropoutPlan": "securefed.channel",
    "ReceivedMessage": "securefed.channel",
    "Upload": "securefed.channel",
    "Codec": "securefed.codec",
    "Float32Codec": "securefed.codec",
    "ClientArrays": "securefed.arrays",
    "FederatedArrays": "securefed.arrays",
    "evaluate": "securefed.federated.engine",
    "run_federated": "securefed.federated.engine",
    "run_centralized": "securefed.federated.centralized",
    "run_algorithm": "securefed.federated.train",
    "algorithm_names": "securefed.federated.train",
    "check_weight_bound": "securefed.federated.weight_bound",
    "FedMedHeter": "securefed.federated.fedmedheter",
    "FedAvg": "securefed.federated.strategy",
    "FedProx": "securefed.federated.strategy",
    "Strategy": "securefed.federated.strategy",
    "StrategyWrapper": "securefed.federated.strategy",
    "local_loss": "securefed.federated.strategy",
    "proximal_term": "securefed.federated.strategy",
    "train_local": "securefed.federated.strategy",
    "weighted_mean": "securefed.federated.strategy",
    "FederationFacts": "securefed.federated.types",
    "LocalConfig": "securefed.federated.types",
    "LocalResult": "securefed.federated.types",
    "RoundRecord": "securefed.federated.types",
    "RoundTranscript": "securefed.federated.types",
    "RunResult": "securefed.federated.types",
    "STRATEGIES": "securefed.federated.registry",
    "get_strategy": "securefed.federated.registry",
    "register_strategy": "securefed.federated.registry",
    "strategy_names": "securefed.federated.registry",
}

__all__ = list(_EXPORTS)
__getattr__, __dir__ = lazy(__name__, _EXPORTS)

if TYPE_CHECKING:  # what a type checker and an IDE see; nothing is imported at run time
    from securefed.arrays import ClientArrays, FederatedArrays
    from securefed.channel import (
        AggregationChannel,
        ChannelResult,
        DropoutPlan,
        PlainChannel,
        ReceivedMessage,
        Upload,
        check_uploads,
    )
    from securefed.codec import Codec, Float32Codec
    from securefed.federated.centralized import run_centralized
    from securefed.federated.engine import evaluate, run_federated
    from securefed.federated.fedmedheter import FedMedHeter
    from securefed.federated.registry import (
        STRATEGIES,
        get_strategy,
        register_strategy,
        strategy_names,
    )
    from securefed.federated.strategy import (
        FedAvg,
        FedProx,
        Strategy,
        StrategyWrapper,
        local_loss,
        proximal_term,
        train_local,
        weighted_mean,
    )
    from securefed.federated.train import algorithm_names, run_algorithm
    from securefed.federated.types import (
        FederationFacts,
        LocalConfig,
        LocalResult,
        RoundRecord,
        RoundTranscript,
        RunResult,
    )
    from securefed.federated.weight_bound import check_weight_bound
