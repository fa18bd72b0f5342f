"""The federated core: strategies, aggregation channels and the round engine."""

from securefed.federated.channel import AggregationChannel, PlainChannel, check_uploads
from securefed.federated.codec import Codec, Float32Codec
from securefed.federated.engine import evaluate, run_federated
from securefed.federated.fedmedheter import FedMedHeter
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
from securefed.federated.types import (
    ChannelResult,
    ClientArrays,
    DropoutPlan,
    FederatedArrays,
    LocalConfig,
    LocalResult,
    ReceivedMessage,
    RoundRecord,
    RoundTranscript,
    RunResult,
    Upload,
)

__all__ = [
    "AggregationChannel", "PlainChannel", "check_uploads", "Codec", "Float32Codec",
    "evaluate", "run_federated", "FedAvg", "FedMedHeter", "FedProx", "Strategy", "StrategyWrapper",
    "proximal_term", "local_loss", "train_local", "weighted_mean", "ChannelResult", "ClientArrays",
    "DropoutPlan", "FederatedArrays", "LocalConfig", "LocalResult", "ReceivedMessage",
    "RoundRecord", "RoundTranscript", "RunResult", "Upload",
]
