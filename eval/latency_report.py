"""eval/latency.py's report on screen: seconds per image, the loop beside MACs, peak memory, the load."""

from __future__ import annotations

import os
from typing import Any

from common.schedule import TgateSchedule
from common.settings import V2_FIELDS, intervals_label


def report(record: dict[str, Any]) -> str:
    timings = record["timings"]
    schedule = TgateSchedule(record["gate"], **{field: record[field] for field in V2_FIELDS})
    v2 = "" if schedule.is_v1 else f", {intervals_label(schedule)}"
    labels = {name: entry["label"] for name, entry in record["variants"].items()}
    labels["official"] = "official tgate package"
    device = record["device"] + (f", torch threads: {record['torch_threads']}" if record["torch_threads"] else "")
    lines = [
        f"{record['title']} | {record['weights_note']}",
        f"{record['torch_device']}: {device} | {record['dtype']} | {record['resolution']} px, {record['steps']} steps, "
        f"gate {record['gate']}{v2}, guidance {record['guidance_scale']}, seed {record['seed']}",
        *(f"  note: {note}" for note in record["setup_notes"]),
        f"{record['repeats']} timed runs of each after {record['warmup']} warm-up, interleaved; "
        + ("CPU seconds of this process" if record.get("clock") == "cpu" else "seconds") + " per image:",
        f"  {'':<44}{'median':>9}{'min':>9}{'max':>9}",
        *(f"  {labels[name]:<44}{t['median_s']:>9.3f}{t['min_s']:>9.3f}{t['max_s']:>9.3f}" for name, t in timings.items()),
        f"speedup {record['speedup']:.3f}x; MACs predict {record['macs_speedup']:.3f}x for the denoiser alone "
        "(text encoding and VAE decode are not gated)",
    ]
    lines += variant_report(record)
    if record["overhead_pct"] is not None:
        lines.append(f"overhead of the TGATE pipeline with no step gated, over stock: {record['overhead_pct']:+.2f}%")
    if "official_speedup" in record:
        lines.append(f"official tgate package: speedup {record['official_speedup']:.3f}x")
    else:
        lines.append(f"official tgate package: {record['official_tgate']}")
    cpus = f" on {os.cpu_count()} CPUs" if record["torch_device"] == "cpu" else ""
    lines.append(f"load average before / after: {record['load_average_before']} / {record['load_average_after']}{cpus}")
    if record["weights"] != "checkpoint":
        lines.append(record["weights_note"])
    return "\n".join(lines)


def mib(value: int | None) -> str:
    return "-" if value is None else f"{value / 2**20:.0f}"


def variant_report(record: dict[str, Any]) -> list[str]:
    """The per-variant table: seconds per image, the loop alone, its speedup beside MACs', peak memory."""
    variants = record.get("variants") or {}
    if not variants:
        return []
    compiled = record.get("compile")
    lines = ["per variant" + (f" (torch.compile, {compiled['backend']}, mode {compiled['mode']})" if compiled else
                              " (eager)") + ": s/image, loop = the denoising loop alone (no text encoding, no VAE "
             "decode), its speedup over stock, the MACs-predicted speedup, measured/predicted"
             + (", peak MiB allocated (CUDA, batch 1)" if record["torch_device"].startswith("cuda") else ""),
             f"  {'':<44}{'s/img':>8}{'loop s':>9}{'loop x':>8}{'MACs x':>8}{'ratio':>7}"
             + ("  peak MiB" if record["torch_device"].startswith("cuda") else "")]
    for entry in variants.values():
        loop = "-" if entry["loop_median_s"] is None else f"{entry['loop_median_s']:.3f}"
        speed = "-" if entry["loop_speedup"] is None else f"{entry['loop_speedup']:.3f}"
        ratio = "-" if entry["loop_vs_macs"] is None else f"{entry['loop_vs_macs']:.3f}"
        peak = f"{mib(entry['peak_memory_bytes']):>10}" if record["torch_device"].startswith("cuda") else ""
        lines.append(f"  {entry['label']:<44}{entry['median_s']:>8.3f}{loop:>9}{speed:>8}"
                     f"{entry['macs_speedup']:>8.3f}{ratio:>7}{peak}")
    memory = record.get("peak_memory")
    if memory:
        cpu = record["torch_device"] == "cpu"
        kind = ("peak resident memory of a fresh process per variant (VmHWM), MiB; in brackets the peak above the "
                "resident memory once the pipeline was built" if cpu else
                "peak allocated memory (torch.cuda.max_memory_allocated), MiB; in brackets above the weights")
        lines.append(f"peak memory by images per prompt: {kind}")
        batches = [str(batch) for batch in record["batch_sizes"]]
        lines.append(f"  {'':<44}" + "".join(f"{'batch ' + b:>18}" for b in batches))
        for name, per_batch in memory.items():
            cells = []
            for b in batches:
                probe = per_batch[b]
                peak = probe.get("peak_rss_bytes", probe.get("peak_allocated_bytes"))
                cells.append(f"{mib(peak) + ' (' + mib(probe['peak_above_build_bytes']) + ')':>18}")
            lines.append(f"  {variants[name]['label']:<44}" + "".join(cells))
    return lines
