"""Lightning callbacks."""

from lit_bar.callbacks.balancedness import BalancednessCallback
from lit_bar.callbacks.learning_rate import LearningRateMonitor
from lit_bar.callbacks.monitor import BalancednessMonitor

__all__ = ["BalancednessCallback", "BalancednessMonitor", "LearningRateMonitor"]
