"""The tests' tiny models, data and reference loops: one home for every tier and every subprocess.

* :mod:`tiny.sam` — small plain-torch nets and data, ``TinySAM`` / ``TinyPlain`` Lightning modules,
  a short ``Trainer`` factory, and the hand-written plain-torch SAM loops the integration tests
  compare against (no transformers import).
* :mod:`tiny.hf` — random RoBERTa / OPT / GPT-2 folders with word-level tokenizers, synthetic rows
  with the hub datasets' columns, and the ``lit-bar`` arguments and CSV metrics of tiny runs.

``tests/`` is on ``sys.path`` under pytest (its ``conftest.py`` puts it there); a script run as a
subprocess (``tests/integration/*_script.py``) inserts it itself before ``import tiny``. This
``__init__`` imports neither module, so ``tiny.sam`` stays free of transformers.
"""
