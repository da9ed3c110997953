"""Lightning callbacks."""

from lit_bar.callbacks.balancedness import BalancednessCallback
from lit_bar.callbacks.bilora import BiLoRACallback
from lit_bar.callbacks.export import AdapterExport
from lit_bar.callbacks.finite import FiniteCheck
from lit_bar.callbacks.flatlora import FlatLoRACallback
from lit_bar.callbacks.learning_rate import LearningRateMonitor
from lit_bar.callbacks.monitor import BalancednessMonitor
from lit_bar.callbacks.predictions import PredictionWriter
from lit_bar.callbacks.progress import StepProgressBar
from lit_bar.callbacks.sharpness import SharpnessMonitor

__all__ = [
    "AdapterExport",
    "BalancednessCallback",
    "BalancednessMonitor",
    "BiLoRACallback",
    "FiniteCheck",
    "FlatLoRACallback",
    "LearningRateMonitor",
    "PredictionWriter",
    "SharpnessMonitor",
    "StepProgressBar",
]
