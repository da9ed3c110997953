"""The Lightning front end: :class:`~lit_bar.lightning.module.SAMModule` (the SAM step under manual
optimization), its :class:`~lit_bar.lightning.front.LightningFrontEnd` and checkpoint hooks
(:mod:`~lit_bar.lightning.checkpoint_hooks`), the strategies it runs under
(:mod:`~lit_bar.lightning.strategies`, ``fsdp2``), and what any Lightning code of lit_bar shares: the
run's length and logging clock (:mod:`~lit_bar.lightning.steps`), learning-rate schedules
(:mod:`~lit_bar.lightning.schedules`), resume state and preemption (:mod:`~lit_bar.lightning.resume`),
and every use of Lightning's private attributes (:mod:`~lit_bar.lightning.compat`).

The callbacks are in :mod:`lit_bar.callbacks`. Importing this package imports nothing.
"""
