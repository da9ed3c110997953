"""The experiments behind ``scripts/``: grids, tables, figures, benchmark rows and studies.

Each ``scripts/*.py`` is a thin entry point (its usage, then a call to a ``main(argv)`` here), so a
new grid, benchmark row or figure extends one module instead of a new script. This package is the
top layer (``tests/unit/test_layering.py``): it may import any ``lit_bar`` module, and no ``lit_bar``
module imports it. Importing it loads nothing; each module imports what it needs.

================================  ============================================================
``reproduce``                     accuracy grids over seeds (``scripts/reproduce.py``): the named
                                  grids, the child process of one cell, ``tables.md``, Fig. 3
``benchmark``                     step time and peak memory per method (``scripts/benchmark_step.py``)
``gpu_check``                     host syncs by owner and the fp16 skip step (``scripts/gpu_check.py``)
``overparam``                     SAM / nBAR against overparameterisation (``scripts/overparam_study.py``)
``toy_figures``                   the paper's Fig. 1 and 2 on the toy problems (``scripts/reproduce_toy.py``)
``demo``                          LoRA vs LoRA-nBAR on MiniLM and SST-2 (``scripts/demo.py``)
``methods``                       the rows the benchmark and the GPU check train (``SAMModule`` arguments)
``stats``                         t and bootstrap intervals shared by the tables and the studies
``environment``                   the checkout, optional packages, the MiniLM weights, a bare ``Trainer``
================================  ============================================================

These modules need a checkout of the repository (``configs/``, ``scripts/``) and, for some, the
optional packages of the ``plot`` and ``demo`` extras; :func:`environment.require` names the extra
when one is missing.
"""
