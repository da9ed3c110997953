"""Lightning callbacks."""

from lit_bar.callbacks.balancedness import BalancednessCallback

__all__ = ["BalancednessCallback"]
