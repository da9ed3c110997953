"""The benchmark's numbers: per-round ratios of medians with their bootstrap 95 % interval, the
targets' verdicts, and the Markdown tables of ``docs/benchmark.md``.

A ratio A/B is taken per round (A's and B's medians of the same round); reported are the median of
those per-round ratios, their min–max, and a bootstrap 95 % interval of the median (rounds resampled
with replacement). A target ``A/B ≤ t`` is *met* when the whole interval lies at or below t,
*missed* when it lies above, and *inside the noise* otherwise.
"""

from __future__ import annotations

import statistics
from typing import Any

from lit_bar.experiments.stats import bootstrap_median_ci

__all__ = [
    "TARGETS",
    "markdown",
    "markdown_distributed",
    "ratio_entry",
    "ratio_stats",
    "summarise",
    "summarise_distributed",
    "verdict",
]

#: target rows: (numerator, denominator, limit)
TARGETS = [
    ("LoRA-nBAR", "LoRA", 1.02),
    ("SAM", "LoRA", 2.05),
    ("LoRA", "torch loop", 1.05),
    ("HF Trainer+nBAR", "HF Trainer", 1.02),
    ("HF SAMTrainer", "HF Trainer", 2.05),
]


def ratio_stats(a_rounds: list[list[float]], b_rounds: list[list[float]], seed: int = 0) -> dict[str, Any]:
    """Per-round ratios of medians, their median, min–max and bootstrap 95 % interval of the median."""
    ratios = [statistics.median(a) / statistics.median(b) for a, b in zip(a_rounds, b_rounds, strict=True)]
    return {
        "median": statistics.median(ratios),
        "ci95": list(bootstrap_median_ci(ratios, seed)),
        "min": min(ratios),
        "max": max(ratios),
        "per_round": ratios,
    }


def verdict(stats: dict[str, Any], limit: float) -> str:
    """``met``, ``missed`` or ``inside the noise``: where the ratio's interval lies against ``limit``."""
    low, high = stats["ci95"]
    if high <= limit:
        return "met"
    if low > limit:
        return "missed"
    return "inside the noise"


def summarise(times: dict[str, dict[str, list[list[float]]]]) -> dict[str, Any]:
    """Per row: median step time and ratio to LoRA, per clock (wall, CPU); then each target's verdict."""
    rows = list(times["wall"])
    summary: dict[str, Any] = {"rows": {}, "targets": []}
    for clock, by_row in times.items():
        for row in rows:
            entry = summary["rows"].setdefault(row, {})
            entry[f"{clock}_median_s"] = statistics.median(t for run in by_row[row] for t in run)
            entry[f"{clock}_x_lora"] = ratio_stats(by_row[row], by_row["LoRA"]) if "LoRA" in rows else None
    for num, den, limit in TARGETS:
        if num in rows and den in rows:
            summary["targets"].append(ratio_entry(times, num, den, limit))
    return summary


def ratio_entry(
    times: dict[str, dict[str, list[list[float]]]], num: str, den: str, limit: float | None
) -> dict[str, Any]:
    """Row ``num`` over row ``den`` per clock (:func:`ratio_stats`), judged against ``limit`` if any."""
    entry: dict[str, Any] = {"ratio": f"{num} / {den}", "limit": limit}
    for clock in times:
        stats = ratio_stats(times[clock][num], times[clock][den])
        entry[clock] = {**stats, "verdict": verdict(stats, limit) if limit is not None else "–"}
    return entry


def summarise_distributed(times: dict[str, dict[str, list[list[float]]]]) -> dict[str, Any]:
    """The distributed rows (``"<strategy> <method>"``): median step times; each method over LoRA under
    the same strategy (judged against :data:`TARGETS`' limits); each method under FSDP2 over DDP."""
    rows = list(times["wall"])
    by_strategy: dict[str, list[str]] = {}
    for row in rows:
        strategy, method = row.split(" ", 1)
        by_strategy.setdefault(strategy, []).append(method)
    limits = {num: limit for num, den, limit in TARGETS if den == "LoRA"}
    summary: dict[str, Any] = {"rows": {}, "ratios": []}
    for row in rows:
        summary["rows"][row] = {
            f"{c}_median_s": statistics.median(t for r in times[c][row] for t in r) for c in times
        }
    for strategy, methods in by_strategy.items():
        for method in methods:
            if method != "LoRA" and "LoRA" in methods:
                lora = f"{strategy} LoRA"
                summary["ratios"].append(ratio_entry(times, f"{strategy} {method}", lora, limits.get(method)))
    if "FSDP2" in by_strategy and "DDP" in by_strategy:
        for method in (m for m in by_strategy["FSDP2"] if m in by_strategy["DDP"]):
            summary["ratios"].append(ratio_entry(times, f"FSDP2 {method}", f"DDP {method}", None))
    return summary


# ----------------------------------------------------------------------------- output
def fmt_ratio(stats: dict[str, Any] | None) -> str:
    """``median [low, high]`` of a ratio; ``–`` when there is none."""
    if stats is None:
        return "–"
    return f"{stats['median']:.3f} [{stats['ci95'][0]:.3f}, {stats['ci95'][1]:.3f}]"


def markdown(result: dict[str, Any]) -> str:
    """The tables of one benchmark result: step times and ratios, targets, causal-LM peak memory."""
    meta, summary = result["meta"], result["summary"]
    lines = [
        f"Machine: {meta['machine']}; load average (1, 5, 15 min) before / after: "
        f"{meta['load_before']} / {meta['load_after']}.",
        f"Model: {meta['model']}; batch {meta['batch']} × {meta['length']} tokens; device {meta['device']}; "
        f"torch threads {meta['threads']}; {meta['rounds']} rounds × {meta['steps']} steps "
        f"({meta['warmup']} warm-up dropped). Ratios: median of per-round ratios [bootstrap 95 % interval].",
    ]
    if summary["rows"]:
        lines += single_process_tables(result)
    lm_rows = [m for m in result["memory"] if m["row"].startswith("LM ")]
    if lm_rows:
        lines += [
            "",
            f"Causal-LM objective, {lm_rows[0].get('model', '')}, batch {meta['lm_shape'][0]} × "
            f"{meta['lm_shape'][1]}: {lm_rows[0].get('measure', '')}",
            "",
            "| row | peak MiB | increase over model + batches MiB |",
            "|---|---:|---:|",
        ]
        for m in lm_rows:
            lines.append(
                f"| {m['row']} | {m.get('peak_mib', float('nan')):.0f} "
                f"| {m.get('increase_mib', float('nan')):.0f} |"
            )
    if "distributed" in result:
        lines += ["", *markdown_distributed(result["distributed"])]
    if meta["unavailable"]:
        lines += ["", f"Not measured (not in this checkout): {', '.join(meta['unavailable'])}."]
    return "\n".join(lines)


def single_process_tables(result: dict[str, Any]) -> list[str]:
    """The single-process rows' step times, ratios to LoRA and peak memory; then the targets."""
    summary = result["summary"]
    lines = [
        "",
        "| row | wall ms/step | × LoRA (wall) | CPU ms/step | × LoRA (CPU) | peak memory MiB (increase) |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    memory = {m["row"]: m for m in result["memory"] if "peak_mib" in m}
    for row, entry in summary["rows"].items():
        mem = memory.get(row)
        mem_text = f"{mem['peak_mib']:.0f} (+{mem['increase_mib']:.0f})" if mem else "–"
        lines.append(
            f"| {row} | {1000 * entry['wall_median_s']:.1f} | {fmt_ratio(entry['wall_x_lora'])} | "
            f"{1000 * entry['cpu_median_s']:.1f} | {fmt_ratio(entry['cpu_x_lora'])} | {mem_text} |"
        )
    lines += [
        "",
        "| target | wall: ratio [95 %] | verdict | CPU: ratio [95 %] | verdict |",
        "|---|---:|---|---:|---|",
    ]
    for t in summary["targets"]:
        lines.append(
            f"| {t['ratio']} ≤ {t['limit']} | {fmt_ratio(t['wall'])} | {t['wall']['verdict']} | "
            f"{fmt_ratio(t['cpu'])} | {t['cpu']['verdict']} |"
        )
    return lines


def markdown_distributed(dist: dict[str, Any]) -> list[str]:
    """The distributed rows' table (step times, peak memory per process) and their ratios."""
    meta, summary = dist["meta"], dist["summary"]
    lines = [
        f"Distributed rows: {meta['processes']} CPU processes (gloo), {meta['threads_per_process']} torch "
        f"thread(s) each, {meta['batch_per_process']} of each batch's {meta['batch']} rows per process; "
        f"{meta['rounds']} rounds × {meta['steps']} steps ({meta['warmup']} warm-up dropped). Wall: the "
        "longest of the processes' windows; CPU: the sum over the processes. Peak memory per process "
        "(rank 0 / rank 1 / …, MiB): the peak resident set (VmHWM) over the training steps, and from "
        "building the model to the end of fit, which includes the unsharded model every process builds "
        f"({meta['memory_steps']} steps, a fresh run of forked processes per row: compare these rows with "
        "each other, not with the single-process rows).",
        "",
        "| row | wall ms/step | CPU ms/step | peak MiB per process: steps | with building the model |",
        "|---|---:|---:|---:|---:|",
    ]
    memory = {m["row"]: m for m in dist["memory"]}
    for row, entry in summary["rows"].items():
        ranks = memory.get(row, {}).get("per_rank")
        steps = " / ".join(f"{r['train_peak_mib']:.0f}" for r in ranks) if ranks else "–"
        fit = " / ".join(f"{r['fit_peak_mib']:.0f}" for r in ranks) if ranks else "–"
        lines.append(
            f"| {row} | {1000 * entry['wall_median_s']:.1f} | {1000 * entry['cpu_median_s']:.1f} | "
            f"{steps} | {fit} |"
        )
    unsharded = [
        row for row, ok in meta["all_parameters_sharded"].items() if row.startswith("FSDP2") and not ok
    ]
    lines += [
        "",
        f"FSDP2 rows with parameters that are not sharded DTensors: {', '.join(unsharded) or 'none'}.",
        *(f"Peak memory of {m['row']} not measured: {m['error']}" for m in dist["memory"] if "error" in m),
    ]
    lines += [
        "",
        "| ratio | wall: ratio [95 %] | CPU: ratio [95 %] | target | verdict (wall; CPU) |",
        "|---|---:|---:|---|---|",
    ]
    for r in summary["ratios"]:
        target = f"≤ {r['limit']}" if r["limit"] is not None else "–"
        lines.append(
            f"| {r['ratio']} | {fmt_ratio(r['wall'])} | {fmt_ratio(r['cpu'])} | {target} | "
            f"{r['wall']['verdict']}; {r['cpu']['verdict']} |"
        )
    return lines
