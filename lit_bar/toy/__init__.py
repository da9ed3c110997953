"""The paper's toy problems NOP (Eq. 11) and OP (Eq. 12), App. A.4: Fig. 1 and 2 in Lightning.

Usage::

    module = NOPModule(alpha=1.0, rho=0.1, optimizer=lambda p: torch.optim.SGD(p, lr=1e-3))
    data = ToyNoiseDataModule(shape=(10, 10), steps=5000)
    trace = BalancednessTrace()
    Trainer(max_epochs=1, callbacks=[trace]).fit(module, data)   # trace.values: B per step

``scripts/reproduce_toy.py`` runs SGD, SAM, nBAR and oBAR at several noise scales α.
"""

from lit_bar.toy.data import NoiseDataset, ToyNoiseDataModule
from lit_bar.toy.modules import NOPModule, OPModule
from lit_bar.toy.problems import imbalanced_factors, nop_loss, op_loss, rank_one_target
from lit_bar.toy.trace import BalancednessTrace

__all__ = [
    "BalancednessTrace",
    "NOPModule",
    "NoiseDataset",
    "OPModule",
    "ToyNoiseDataModule",
    "imbalanced_factors",
    "nop_loss",
    "op_loss",
    "rank_one_target",
]
