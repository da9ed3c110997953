"""SAM and nBAR under overparameterisation (docs/overparam.md): the test-accuracy gap to the base optimizer
against trainable parameters / training examples (``scripts/overparam_study.py``; reading in
``docs/overparam.md``).

``sweeps``: the two sweeps (LoRA rank on MiniLM and SST-2, MLP width on a noisy teacher task), each
run through the Lightning ``Trainer``; ``results``: ``results.csv``, the paired gaps with their 95 %
t-intervals, the trend and the figure; ``cli``: the command line and the resumable loop over runs.
"""
