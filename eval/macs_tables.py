"""eval/macs.py's tables: plain text for the terminal, Markdown for the README (``--markdown``)."""

from __future__ import annotations

from typing import Any, Sequence

from common.models import MODELS
from eval.macs_paper import DEEPCACHE_HEADERS, DEEPCACHE_REFERENCE, HEADERS, UNITS, Result, deviation

DEEPCACHE_NOTE = (
    "The paper's DeepCache figures (57.888T, 43.868T) are reproduced at cache_branch_id 1 and gate 13; no documented "
    "setting says either: the official defaults are cache_branch_id 0 and gate 10, which give fewer MACs."
)
ARCHITECTURE_NOTE = (
    "Counted on the real architectures built from their configs on the meta device: no weights are loaded, "
    "and MACs and parameter counts do not depend on weight values."
)


def format_count(value: float, metric: str) -> str:
    """The paper's style: MACs in T (G below 1T), parameters in B (M below 1B), 3 decimals."""
    units = ("T", "G", "M") if metric.startswith("macs") else ("B", "M", "K")
    unit = next((u for u in units if value >= UNITS[u]), units[-1])
    return f"{value / UNITS[unit]:.3f}{unit}"



def text_table(results: list[Result]) -> str:
    metrics = results[0].metrics
    v2 = results[0].reference != "the paper"
    deep = results[0].reference == DEEPCACHE_REFERENCE
    reference = "paper" if not v2 or deep else "V2 table"

    def line(label: str, cells: list[str], note: str = "") -> str:
        return f"{label:<{width}}" + "".join(f"{cell:>16}" for cell in cells) + (f"  {note}" if note else "")

    def setting(row: dict[str, Any]) -> str:
        text = f"{row['model']:<13}{row['steps']:>5}{row['gate']:>5}"
        text += f"{row['sp_interval']:>4}{row['fi_interval']:>4}{row['warm_up']:>4}" if v2 else ""
        return text + (f"{row['deepcache_interval']:>4}{row['deepcache_branch']:>4}" if deep else "")

    width = (43 if deep else 35) if v2 else 23
    header = f"{'model':<13}{'steps':>5}{'gate':>5}" + (f"{'sp':>4}{'fi':>4}{'wu':>4}" if v2 else "")
    header += f"{'dc':>4}{'br':>4}" if deep else ""
    headers = DEEPCACHE_HEADERS if deep else HEADERS
    lines = [line(header, [headers[m] for m in metrics], "note")]
    for result in results:
        row, paper = result.row, result.paper
        lines.append(line(setting(row), [format_count(row[m], m) for m in metrics], result.note))
        if paper:
            lines.append(line("  " + reference, [format_count(paper[m], m) if m in paper else "-" for m in metrics]))
            lines.append(line("  difference", [f"{deviation(row[m], paper[m]):+.3%}" if m in paper else "-"
                                               for m in metrics]))
    return "\n".join(lines)


def markdown_table(results: list[Result]) -> str:
    metrics = results[0].metrics
    v2 = results[0].reference != "the paper"
    deep = results[0].reference == DEEPCACHE_REFERENCE
    reference = "paper" if not v2 or deep else "V2 table"
    settings = ["model", "steps", "gate", *(("sp", "fi", "warm-up") if v2 else ()),
                *(("DeepCache interval", "branch") if deep else ())]
    headers = DEEPCACHE_HEADERS if deep else HEADERS
    lines = ["| " + " | ".join(settings + [headers[m] for m in metrics]) + " | note |",
             "| --- | " + " | ".join("---:" for _ in settings[1:] + list(metrics)) + " | --- |"]
    for result in results:
        row, paper = result.row, result.paper
        cells = [
            format_count(row[m], m)
            + (f" ({reference} {format_count(paper[m], m)}, {deviation(row[m], paper[m]):+.3%})"
               if paper and m in paper else "")
            for m in metrics
        ]
        values = [row["steps"], row["gate"], *((row["sp_interval"], row["fi_interval"], row["warm_up"]) if v2 else ()),
                  *((row["deepcache_interval"], row["deepcache_branch"]) if deep else ())]
        lines.append(f"| {MODELS[row['model']].title} | " + " | ".join(map(str, values)) + " | " + " | ".join(cells)
                     + f" | {result.note} |")
    return "\n".join(lines)


def print_tables(v1: list[Result], v2: list[Result], markdown: bool, deep: Sequence[Result] = ()) -> None:
    render = markdown_table if markdown else text_table
    if v1:
        if v2:
            print("TGATE (v1 release table: cross-attention only)")
        print(render(v1))
        if any(result.setting.startswith("gate ") for result in v1):
            print("Where the example scripts' gate does not give the paper's MACs w/ TGATE, the next row shows the "
                  "gate that does.")
    if v2:
        if v1:
            print()
        print("TGATE-V2 (official V2 README table: self-attention cached every sp steps before the gate after "
              "warm-up steps, every fi steps after it)")
        print(render(v2))
        if any(result.setting.startswith("gate ") for result in v2):
            print("Where the V2 README's gate does not give the V2 table's MACs w/ TGATE, the next row shows the "
                  "gate that does at the same intervals.")
    if deep:
        if v1 or v2:
            print()
        print("DeepCache (official README's DeepCache rows, SDXL: MACs DeepCache = DeepCache alone, DeepCache+TGATE "
              "= MACs of the official TGATE + DeepCache combination; dc = DeepCache interval, br = branch)")
        print(render(list(deep)))
        print(DEEPCACHE_NOTE)
    print(ARCHITECTURE_NOTE)
