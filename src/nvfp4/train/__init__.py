"""The pretraining harness: ``train(TrainConfig(...)) -> TrainResult``, also behind ``nvfp4 train``.

>>> from nvfp4.train import TrainConfig, train
>>> result = train(TrainConfig(recipe="nvfp4", model="tiny", max_steps=300, out="runs/quickstart"))
>>> result.final_val_loss
"""

from nvfp4.train.checkpoint import CheckpointError, list_checkpoints, load_checkpoint, load_latest, save_checkpoint
from nvfp4.train.config import TrainConfig
from nvfp4.train.metrics import read_metrics
from nvfp4.train.schedule import LRSchedule
from nvfp4.train.trainer import Trainer, TrainResult, build_model, train

__all__ = [
    "CheckpointError",
    "LRSchedule",
    "TrainConfig",
    "TrainResult",
    "Trainer",
    "build_model",
    "list_checkpoints",
    "load_checkpoint",
    "load_latest",
    "read_metrics",
    "save_checkpoint",
    "train",
]
