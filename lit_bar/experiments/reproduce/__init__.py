"""Accuracy over seeds (``scripts/reproduce.py``): a grid of task config × method config × seed, each
cell one ``lit-bar fit`` + ``test`` in its own child process, aggregated as the paper's tables.

``grids``: the named grids and the search on dev; ``cells``: one cell's ``lit-bar`` arguments and
what its child process does (``--run-cell``); ``runner``: the grid loop (children, ``runs.jsonl``,
resume) and the command line; ``tables``: ``tables.md`` from ``runs.jsonl``;
``balancedness_figure``: the paper's Fig. 3 from a grid's logs.

A new grid is an entry of :data:`grids.GRIDS`; a new method, a method file under
``configs/method/`` plus its row label in :data:`grids.METHOD_NAMES` (and its search space).
"""
