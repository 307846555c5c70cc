"""Training: one generic SVI :class:`TrainingPlan` run by a Lightning :class:`Trainer`."""

from ._callbacks import EarlyStoppingWithWarmup, EpochProgressBar, HistoryLogger
from ._checkpoint import SafeCheckpointIO
from ._elbo import SplitTraceMeanField_ELBO
from ._em import ExpectationMaximization, ExpectationStep
from ._nonfinite import NonFiniteGuard
from ._trainer import Trainer
from ._trainingplan import TrainingPlan

__all__ = [
    "TrainingPlan",
    "NonFiniteGuard",
    "Trainer",
    "HistoryLogger",
    "EpochProgressBar",
    "ExpectationMaximization",
    "ExpectationStep",
    "SafeCheckpointIO",
    "EarlyStoppingWithWarmup",
    "SplitTraceMeanField_ELBO",
]
