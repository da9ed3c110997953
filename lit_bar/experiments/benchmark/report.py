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

__all__ = ["TARGETS", "markdown", "ratio_stats", "summarise", "verdict"]

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
            target = {"ratio": f"{num} / {den}", "limit": limit}
            for clock in times:
                stats = ratio_stats(times[clock][num], times[clock][den])
                target[clock] = {**stats, "verdict": verdict(stats, limit)}
            summary["targets"].append(target)
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
    if meta["unavailable"]:
        lines += ["", f"Not measured (not in this checkout): {', '.join(meta['unavailable'])}."]
    return "\n".join(lines)
