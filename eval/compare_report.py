"""eval/compare.py's outputs: the Pareto front of speedup against fidelity, a markdown table and a PNG plot."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np


def ran(rows: list[dict]) -> list[dict]:
    return [row for row in rows if row["status"] == "ran"]


def pareto_front(rows: list[dict], fidelity: str = "psnr") -> list[str]:
    """Names of the variants that no other beats on both loop speedup and ``fidelity`` (higher is better in both)."""
    points = [(row["name"], row["speedup"], row[fidelity]) for row in ran(rows)]
    front = []
    for name, speed, quality in points:
        dominated = any(s >= speed and q >= quality and (s > speed or q > quality) for _, s, q in points)
        if not dominated:
            front.append(name)
    return front


def _number(value, digits: int = 2, suffix: str = "") -> str:
    if value is None:
        return "-"
    if isinstance(value, float) and math.isinf(value):
        return "inf"
    return f"{value:.{digits}f}{suffix}"


def markdown_table(results: dict) -> str:
    """The rows that ran, then one line per variant that did not (why) and per caveat. The toy's accuracy and
    toy-FD columns only where the rows have them (a real model has no such measure); a run not on a real
    checkpoint (random weights, tiny components) says so above the table."""
    rows = results["rows"]
    front = set(results.get("pareto_front_psnr", []))
    clock = results.get("settings", {}).get("clock", "wall")
    toy = any("accuracy" in row for row in ran(rows))
    unit = "image" if toy or "images" in results.get("conventions", {}).get("fidelity", "images") else "video"
    lines = []
    if results.get("weights") in ("random", "tiny"):
        lines += [f"**{results['weights_note']}**", ""]
    lines += [
        f"| variant | setting | denoiser MACs / {unit} | MACs vs stock | loop s ({clock}) | speedup | peak MB | "
        "PSNR dB | SSIM |" + (" accuracy | toy-FD |" if toy else ""),
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |" + (" ---: | ---: |" if toy else ""),
    ]
    for row in ran(rows):
        name = f"**{row['name']}**" if row["name"] in front else row["name"]
        macs = row["macs_per_image"]
        macs = f"{macs / 1e12:.3f}T" if macs >= 1e12 else f"{macs / 1e9:.2f}G" if macs >= 1e9 else f"{macs / 1e6:.2f}M"
        lines.append(
            f"| {name} | {row['setting']} | {macs} | {_number(row['macs_fraction'], 3)} | "
            f"{_number(row['loop_seconds'], 3)} | {_number(row['speedup'], 2, 'x')} | "
            f"{_number(row['peak_mb'], 1)} | {_number(row['psnr'], 1)} | {_number(row['ssim'], 3)} |" + (
                f" {_number(row['accuracy'] * 100, 1, '%')} | {_number(row['toy_fd'], 1)} |" if toy else ""))
    reference = results.get("real_digits")
    if reference:
        lines.append(f"| {reference['setting']} | - | - | - | - | - | - | - | - | "
                     f"{reference['accuracy'] * 100:.1f}% | {reference['toy_fd']:.1f} |")
    others = [row for row in rows if row["status"] != "ran"]
    caveats = {row["caveat"]: [r["name"] for r in ran(rows) if r.get("caveat") == row["caveat"]]
               for row in ran(rows) if row.get("caveat")}
    if others or caveats:
        lines.append("")
        lines += [f"- {', '.join(names)}: ran, but: {caveat}" for caveat, names in caveats.items()]
        lines += [f"- {row['name']}: {row['status']}: {row['reason']}" for row in others]
    lines.append("")
    lines.append(f"Bold: on the Pareto front of loop speedup against PSNR. PSNR and SSIM against stock on the same "
                 f"seeds. Loop time: {results['conventions']['loop_seconds']}.")
    return "\n".join(lines) + "\n"


def plot(results: dict, path: Path) -> None:
    """Loop speedup against PSNR to stock, one point per variant; the Pareto front joined and ringed."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    points = ran(results["rows"])
    finite = [row["psnr"] for row in points if not math.isinf(row["psnr"])]
    identical_at = (max(finite) if finite else 40.0) + 6  # where "identical to stock" (PSNR inf) is drawn
    psnr_of = {row["name"]: identical_at if math.isinf(row["psnr"]) else row["psnr"] for row in points}
    front = [row for row in points if row["name"] in set(results.get("pareto_front_psnr", []))]
    figure, axes = plt.subplots(figsize=(7.5, 5))
    # identical variants share one x at the right edge: labels to the left, stacked from the fastest down
    identical = sorted((row for row in points if math.isinf(row["psnr"])), key=lambda row: -row["speedup"])
    for row in points:
        axes.scatter(psnr_of[row["name"]], row["speedup"], s=36, zorder=3)
        offset, align = (5, 4), "left"
        if math.isinf(row["psnr"]):
            offset, align = (-8, 4 - 11 * identical.index(row)), "right"
        axes.annotate(row["name"], (psnr_of[row["name"]], row["speedup"]), textcoords="offset points",
                      xytext=offset, fontsize=8, ha=align)
    front.sort(key=lambda row: psnr_of[row["name"]])
    axes.plot([psnr_of[row["name"]] for row in front], [row["speedup"] for row in front], "--", color="gray",
              zorder=2, label="Pareto front")
    axes.scatter([psnr_of[row["name"]] for row in front], [row["speedup"] for row in front], s=140,
                 facecolors="none", edgecolors="black", zorder=4)
    axes.axvline(identical_at, color="lightgray", linewidth=0.8)
    axes.text(identical_at, axes.get_ylim()[1], "identical to stock ", fontsize=7, va="top", ha="right")
    axes.set_xlabel("PSNR to stock, same seeds (dB; higher is closer)")
    axes.set_ylabel("denoising-loop speedup over stock")
    axes.set_title(results["title"], fontsize=10)
    axes.legend(loc="lower left", fontsize=8)
    axes.grid(alpha=0.3)
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=120)
    plt.close(figure)


def write_outputs(args, results: dict) -> None:
    table = markdown_table(results)
    print("\n" + table)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(jsonable(results), indent=2) + "\n")
        print(f"-> {args.json}")
    if args.markdown:
        args.markdown.parent.mkdir(parents=True, exist_ok=True)
        args.markdown.write_text(f"# {results['title']}\n\n{table}")
        print(f"-> {args.markdown}")
    if args.plot:
        plot(results, args.plot)
        print(f"-> {args.plot}")


def jsonable(value):
    """Plain JSON: infinite PSNR (identical to stock) as the string "inf", numpy scalars as numbers, no arrays."""
    if isinstance(value, dict):
        return {key: jsonable(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(item) for item in value]
    if isinstance(value, (np.floating, np.integer)):
        value = value.item()
    if isinstance(value, float) and math.isinf(value):
        return "inf" if value > 0 else "-inf"
    return value
