"""The update rules and their building blocks in plain torch (no Lightning, no transformers).

* :mod:`~lit_bar.algorithms.pairs`: scale-invariant (A, B) pairs of peft LoRA layers and their
  balancedness ½(‖A‖² − ‖B‖²).
* :mod:`~lit_bar.algorithms.bar`: nBAR / oBAR (the paper's Alg. 2, 3) and ``BAR`` for plain loops.
* :mod:`~lit_bar.algorithms.sharded`: FSDP2-sharded tensors read and written the way SAM and BAR need.
* :mod:`~lit_bar.algorithms.batches`, :mod:`~lit_bar.algorithms.nonfinite`: what one micro-batch pass
  needs (size, slicing, RNG fork/replay, BatchNorm freeze); finiteness checks.
* :mod:`~lit_bar.algorithms.syncs`: counting the host syncs a step issues.

SAM and its variants are in :mod:`lit_bar.optim`, Flat-LoRA and Bi-LoRA in :mod:`lit_bar.methods`,
the sharpness measures in :mod:`lit_bar.sharpness`: the same layer, in folders of their own.
"""
