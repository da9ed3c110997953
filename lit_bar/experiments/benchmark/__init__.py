"""Step time and peak memory of LoRA, BAR, SAM and their variants against a hand-written PyTorch loop
and the transformers ``Trainer`` (``scripts/benchmark_step.py``).

``models``: the peft LoRA model every row trains and its batches; ``runners``: one runner per row
(the timed window of each), the profiler and the peak-memory measurement; ``report``: the ratios,
their bootstrap intervals, the targets' verdicts and the Markdown tables; ``cli``: the command line,
the interleaved rounds and the one-process-per-row memory runs; ``distributed``: the opt-in rows
under DDP and FSDP2 on several CPU processes (``--strategies``).
"""
