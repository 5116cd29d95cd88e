"""Training: augmentation, the loop with checkpoints and resume, transfer learning."""

from convlens.train.augment import Augment, course_augment, default_augment
from convlens.train.loop import (
    StepInfo,
    TrainConfig,
    TrainingInterrupted,
    TrainResult,
    evaluate,
    train,
)
from convlens.train.transfer import TRANSFER_MODES, freeze_body, head_name, with_classes

__all__ = [
    "TRANSFER_MODES",
    "Augment",
    "StepInfo",
    "TrainConfig",
    "TrainResult",
    "TrainingInterrupted",
    "course_augment",
    "default_augment",
    "evaluate",
    "freeze_body",
    "head_name",
    "train",
    "with_classes",
]
