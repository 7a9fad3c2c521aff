"""The paper's results tables with our measurements beside them: `python eval/table.py --help`.

Reads the JSON of eval/macs.py, eval/latency.py and eval/fid.py, renders two Markdown tables (ours next to
the paper's, common/paper_results.json) and writes them into README.md between their markers: the v1 release
table (TGATE on cross-attention only: rows at v1's settings, sp_interval = fi_interval = 1) and the official
TGATE-V2 README's table (rows at each model's V2 setting, ``v2.table_settings``, or any other V2 setting).
A cell without a measurement shows '-' and a note saying why; measurements on tiny or random components, at
other step counts or on fewer images carry a label in their cell.
"""

from __future__ import annotations

import argparse
import glob
import json
import sys
from pathlib import Path
from typing import Sequence

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # the repository root, for `common`

from common.models import MODELS, PAPER  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
START, END = "<!-- results:start -->", "<!-- results:end -->"
V2_START, V2_END = "<!-- results-v2:start -->", "<!-- results-v2:end -->"
DEFAULT_MACS = Path("results/macs.json")
DEFAULT_LATENCY = Path("results/latency.json")
DEFAULT_FID = "results/fid/*/result.json"
PAPER_N = 10_000
MISSING = "-"


def format_count(value: float, units: Sequence[tuple[float, str]]) -> str:
    """A raw count in the paper's style: 16938000000000 -> '16.938T' (three decimals, decimal units)."""
    for scale, suffix in units:
        if abs(value) >= scale:
            return f"{value / scale:.3f}{suffix}"
    return f"{value:.0f}"


def format_macs(value: float) -> str:
    return format_count(value, [(1e12, "T"), (1e9, "G"), (1e6, "M")])


def format_params(value: float) -> str:
    return format_count(value, [(1e9, "B"), (1e6, "M"), (1e3, "K")])


class Notes:
    """Footnotes of the table: each distinct reason gets a marker, [a], [b], ..."""

    def __init__(self) -> None:
        self.reasons: list[str] = []

    def missing(self, reason: str) -> str:
        if reason not in self.reasons:
            self.reasons.append(reason)
        return f"{MISSING} [{chr(ord('a') + self.reasons.index(reason))}]"

    def render(self) -> list[str]:
        return [f"[{chr(ord('a') + index)}] {reason}" for index, reason in enumerate(self.reasons)]


def load_rows(path: Path, script: str) -> tuple[list[dict], str | None]:
    """Rows of a results file (a list, a ``{"rows": [...]}`` object or one row), or why there are none."""
    if not path.is_file():
        return [], f"{path} not found: run `python eval/{script}`"
    try:
        document = json.loads(path.read_text())
    except json.JSONDecodeError as error:
        return [], f"{path} is not valid JSON ({error})"
    rows = document.get("rows", [document]) if isinstance(document, dict) else document
    if not isinstance(rows, list) or not all(isinstance(row, dict) and "model" in row for row in rows):
        return [], f"{path}: expected rows with a 'model' field"
    return rows, None


def load_fid_results(patterns: Sequence[str]) -> tuple[list[dict], str | None]:
    paths = sorted({path for pattern in patterns for path in glob.glob(pattern)})
    results, problems = [], []
    for path in paths:
        try:
            result = json.loads(Path(path).read_text())
        except json.JSONDecodeError:
            problems.append(path)
            continue
        if isinstance(result, dict) and result.get("metric", "FID") != "FID":
            continue  # other distances (the toy benchmark's toy-FD) are not FIDs
        if isinstance(result, dict) and {"model", "fid", "gate"} <= result.keys():
            results.append(result)
        else:
            problems.append(path)
    if problems:
        print(f"warning: skipped {len(problems)} unreadable FID result(s), e.g. {problems[0]}", file=sys.stderr)
    return results, None if results else f"no eval/fid.py result.json matches {' or '.join(patterns)}"


def intervals_of(row: dict) -> tuple[int, int, int]:
    """A row's TGATE-V2 sp_interval, fi_interval, warm_up; results written before them are v1 (1, 1, 0)."""
    return row.get("sp_interval", 1), row.get("fi_interval", 1), row.get("warm_up", 0)


def is_v1(row: dict) -> bool:
    """Self-attention computed at every step (the warm-up then changes nothing)."""
    return intervals_of(row)[:2] == (1, 1)


def v2_table_intervals(model: str) -> tuple[int, int, int] | None:
    settings = PAPER["v2"].get("table_settings", {}).get(model)
    return None if settings is None else (settings["sp_interval"], settings["fi_interval"], settings["warm_up"])


def deepcache_of(row: dict) -> tuple[int, int] | None:
    """A row's DeepCache (interval, branch), None where it has none (an interval of None or 1 is no DeepCache)."""
    interval = row.get("deepcache_interval")
    return None if interval in (None, 1) else (interval, row.get("deepcache_branch", 0))


def in_table(row: dict, model: str, table: str) -> bool:
    """Whether a TGATE measurement belongs in the v1 table (v1 settings) or the V2 table (the model's V2 setting,
    or any setting that caches self-attention)."""
    if table == "v1":
        return is_v1(row)
    return not is_v1(row) or intervals_of(row) == v2_table_intervals(model)


def setting_label(row: dict) -> str:
    """'gate 10', or 'gate 10, sp 5/fi 1/wu 2' for a TGATE-V2 measurement; DeepCache's 'dc 3/br 1' after it."""
    deepcache = deepcache_of(row)
    label = "gate {}".format(row["gate"]) if row.get("gate") is not None else ""
    if not is_v1(row):
        label += ", sp {}/fi {}/wu {}".format(*intervals_of(row))
    if deepcache is not None:
        label += (", " if label else "") + "dc {}/br {}".format(*deepcache)
    return label


def title_of(model: str) -> str:
    return MODELS[model].title if model in MODELS else model


def labels_of(row: dict, model: str) -> list[str]:
    """Why a measurement is not the paper's setting: tiny/random components, other steps or size, fewer images."""
    spec = MODELS.get(model)
    labels = list(row.get("labels") or [])
    if row.get("tiny") and "tiny" not in labels:
        labels.insert(0, "tiny")
    if row.get("random_weights") and "random weights" not in labels:
        labels.append("random weights")
    if spec and row.get("steps") not in (None, spec.steps):
        labels.append(f"{row['steps']} steps")
    if spec and row.get("resolution") not in (None, spec.resolution):
        labels.append(f"{row['resolution']}px")
    if row.get("n") not in (None, PAPER_N) and f"n={row['n']}" not in labels:
        labels.append(f"n={row['n']}")
    return labels


def closest_to_paper(rows: list[dict], model: str) -> dict:
    """The row with the fewest labels; the newest (``created``) among equals."""
    newest_first = sorted(rows, key=lambda row: str(row.get("created", "")), reverse=True)
    return min(newest_first, key=lambda row: len(labels_of(row, model)))


def one_per_gate(rows: list[dict], model: str) -> list[dict]:
    """One row per setting (gate, and TGATE-V2's intervals where they are not v1's)."""
    def setting(row: dict) -> tuple:
        return (row.get("gate") is None, row.get("gate") or 0, () if is_v1(row) else intervals_of(row),
                deepcache_of(row) or ())

    settings = sorted({setting(row) for row in rows})
    return [closest_to_paper([row for row in rows if setting(row) == each], model) for each in settings]


def cell(values: list[tuple[str, list[str]]]) -> str:
    return "<br>".join(text + (f" ({', '.join(labels)})" if labels else "") for text, labels in values)


class OurColumns:
    """Our value for each (model, baseline|TGATE, column), from the three results sources."""

    def __init__(self, macs: tuple[list[dict], str | None], latency: tuple[list[dict], str | None],
                 fid: tuple[list[dict], str | None], notes: Notes) -> None:
        self.sources = {"macs": macs, "latency": latency, "fid": fid}
        self.notes = notes

    def rows_for(self, source: str, model: str, tgate: bool, table: str = "v1") -> tuple[list[dict], str | None]:
        rows, reason = self.sources[source]
        if reason:
            return [], reason
        rows = [row for row in rows if row.get("model") == model]
        # DeepCache's measurements go in the DeepCache table only, and only there
        rows = [row for row in rows if (deepcache_of(row) is not None) == (table == "deepcache")]
        if tgate and table != "deepcache":
            rows = [row for row in rows if in_table(row, model, table)]
        if source == "fid":  # one result per run: a baseline run has no gate
            rows = [row for row in rows if (row.get("gate") is not None) == tgate]
            return rows, None if rows else "no eval/fid.py result for this model and setting yet"
        if not rows and table == "deepcache":
            return [], f"no eval/{source}.py measurement of this model with DeepCache yet"
        if not rows and tgate and table == "v2":
            return [], f"no eval/{source}.py measurement of this model at a TGATE-V2 setting yet"
        return rows, None if rows else f"no eval/{source}.py measurement of this model yet"

    def value(self, source: str, model: str, tgate: bool, field: str, formatter, table: str = "v1") -> str:
        """The baseline value, or the TGATE value of every setting measured; each with its labels."""
        rows, reason = self.rows_for(source, model, tgate, table)
        if reason:
            return self.notes.missing(reason)
        rows = [row for row in rows if row.get(field) is not None]
        if not rows:
            return self.notes.missing(f"no '{field}' in the {source} results of {model}")
        values = []
        if table == "deepcache" and not tgate:  # DeepCache alone: one value per DeepCache setting
            chosen = [closest_to_paper([r for r in rows if deepcache_of(r) == each], model)
                      for each in sorted({deepcache_of(r) for r in rows})]
        else:
            chosen = one_per_gate(rows, model) if tgate else [closest_to_paper(rows, model)]
        for row in chosen:
            setting = [setting_label(row) if tgate else "dc {}/br {}".format(*deepcache_of(row))] \
                if tgate or table == "deepcache" else []
            values.append((formatter(row[field]), setting + labels_of(row, model)))
        return cell(values)


def render_table(columns: OurColumns, notes: Notes) -> str:
    header = ["Model", "MACs", "MACs (paper)", "Params", "Params (paper)", "Latency s", "Latency s (paper)",
              "10K-FID", "10K-FID (paper)"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for paper in PAPER["rows"]:
        model, tgate = paper["model"], paper["tgate"]
        suffix = "_tgate" if tgate else "_baseline"
        ours = [
            columns.value("macs", model, tgate, "macs" + suffix, format_macs),
            columns.value("macs", model, tgate, "params" + suffix, format_params),
            columns.value("latency", model, tgate, "tgate_s" if tgate else "baseline_s", lambda s: f"{s:.3f}"),
            columns.value("fid", model, tgate, "fid", lambda value: f"{value:.3f}"),
        ]
        theirs = [paper["macs"], paper["params"], f"{paper['latency_s']:.3f}", f"{paper['fid10k']:.3f}"]
        name = MODELS[model].title + (" + TGATE" if tgate else "")
        lines.append("| " + " | ".join([name, *(value for pair in zip(ours, theirs) for value in pair)]) + " |")
    return "\n".join(lines)


def render_v2_table(columns: OurColumns) -> str:
    header = ["Model", "MACs", "MACs (V2 table)", "Latency s", "Latency s (V2 table)", "10K-FID",
              "10K-FID (V2 table)"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for paper in PAPER["v2"]["rows"]:
        model, tgate = paper["model"], paper["tgate"]
        ours = [
            columns.value("macs", model, tgate, "macs_tgate" if tgate else "macs_baseline", format_macs, "v2"),
            columns.value("latency", model, tgate, "tgate_s" if tgate else "baseline_s", lambda s: f"{s:.3f}", "v2"),
            columns.value("fid", model, tgate, "fid", lambda value: f"{value:.3f}", "v2"),
        ]
        theirs = [f"{paper['macs_T']:.3f}T", f"{paper['latency_s']:.3f}", f"{paper['fid']:.3f}"]
        name = title_of(model) + (" + TGATE" if tgate else "")
        lines.append("| " + " | ".join([name, *(value for pair in zip(ours, theirs) for value in pair)]) + " |")
    return "\n".join(lines)


def render_deepcache_table(columns: OurColumns) -> str:
    """The official README's DeepCache rows (SDXL) with ours beside them (cells name gate, DeepCache interval and
    branch)."""
    deep = PAPER["v2"]["deepcache"]
    header = ["Model", "MACs", "MACs (V2 table)", "Latency s", "Latency s (V2 table)", "10K-FID",
              "10K-FID (V2 table)"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for paper in deep["rows"]:
        model, tgate = paper["model"], paper["tgate"]
        ours = [
            columns.value("macs", model, tgate, "macs_tgate" if tgate else "macs_baseline", format_macs, "deepcache"),
            columns.value("latency", model, tgate, "tgate_s" if tgate else "baseline_s", lambda s: f"{s:.3f}",
                          "deepcache"),
            columns.value("fid", model, tgate, "fid", lambda value: f"{value:.3f}", "deepcache"),
        ]
        theirs = [f"{paper['macs_T']:.3f}T", f"{paper['latency_s']:.3f}", f"{paper['fid']:.3f}"]
        name = "DeepCache (" + title_of(model) + ")" + (" + TGATE" if tgate else "")
        lines.append("| " + " | ".join([name, *(value for pair in zip(ours, theirs) for value in pair)]) + " |")
    return "\n".join(lines)


def v2_settings_text() -> str:
    settings = PAPER["v2"].get("table_settings", {})
    return "; ".join(
        f"{title_of(model)} gate {each['gate_step']} of {each['steps']}, sp {each['sp_interval']}/fi "
        f"{each['fi_interval']}/wu {each['warm_up']}" for model, each in settings.items())


def latency_devices(latency: tuple[list[dict], str | None]) -> str:
    devices = sorted({str(row["device"]) for row in latency[0] if row.get("device")})
    return ", ".join(devices) if devices else "not measured yet"


def render(macs, latency, fid) -> str:
    """The whole block that goes between the README markers."""
    notes = Notes()
    table = render_table(OurColumns(macs, latency, fid, notes), notes)
    intro = (
        "Ours beside the paper's (TGATE v1 release table). MACs and params of the denoiser over the whole "
        "sampling run (calflops); latency in seconds per image (paper: GTX 1080 Ti; ours: "
        f"{latency_devices(latency)}); zero-shot FID on MS-COCO val2014 (pytorch-fid). TGATE cells are v1 "
        "measurements (self-attention computed at every step) and name their gate step; labels in parentheses mark measurements that are not the paper's setting (tiny or random "
        "components, other step counts, fewer images). Rendered by `python eval/table.py`."
    )
    return "\n".join([intro, "", table, "", *(f"{note}  " for note in notes.render())]).rstrip() + "\n"


def render_v2(macs, latency, fid) -> str:
    """The block that goes between the V2 README markers: the official TGATE-V2 table with ours beside it."""
    notes = Notes()
    columns = OurColumns(macs, latency, fid, notes)
    table = render_v2_table(columns)
    deepcache_table = render_deepcache_table(columns)
    intro = (
        "Ours beside the official TGATE-V2 README's table (TGATE-V2 also caches self-attention; its MACs rows are "
        f"at these settings: {v2_settings_text()}; the LCM settings are v1's). MACs of the denoiser over the "
        "whole sampling run (calflops); latency in seconds per image (V2 table: GTX 1080 Ti, diffusers 0.28.2; "
        f"ours: {latency_devices(latency)}); zero-shot 10K-FID on MS-COCO (the V2 table's on its released caption "
        "list, ours on eval/fid.py's sample). Baseline rows are the stock pipeline, as in the v1 table. TGATE "
        "cells name their setting (gate, and sp/fi/wu where self-attention is cached). Rendered by "
        "`python eval/table.py`."
    )
    deepcache_intro = (
        "The V2 table's DeepCache rows (SDXL, 25 steps, 1024 px; the official SD_DeepCache/SDXL_DeepCache "
        "combination, v1 self-attention): DeepCache alone, and DeepCache with TGATE. Cells name the gate and "
        "DeepCache's interval (dc) and branch (br). The V2 table's MACs are reproduced at branch 1 and gate 13 "
        "(dc 3/br 1: 57.888T and 43.866T), which no documented setting says; the official defaults (branch 0, "
        "gate 10) give fewer MACs (55.365T and 38.626T)."
    )
    return "\n".join([intro, "", table, "", deepcache_intro, "", deepcache_table, "",
                      *(f"{note}  " for note in notes.render())]).rstrip() + "\n"


def between_markers(text: str, block: str, start_marker: str = START, end_marker: str = END,
                    name: str = "README") -> str:
    """``text`` with what lies between the two markers replaced by ``block``; everything else byte for byte."""
    start, end = text.find(start_marker), text.find(end_marker)
    if start < 0 or end < 0 or end < start:
        raise ValueError(f"{name} needs the lines {start_marker} and {end_marker} (in this order) where the table goes")
    return text[: start + len(start_marker)] + "\n" + block + text[end:]


def write_between_markers(readme: Path, block: str, v2_block: str | None = None) -> None:
    """Put ``block`` between the results markers of ``readme`` and ``v2_block`` between the V2 ones."""
    text = between_markers(readme.read_text(), block, name=str(readme))
    if v2_block is not None:
        text = between_markers(text, v2_block, V2_START, V2_END, str(readme))
    readme.write_text(text)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description="Collect the results of eval/macs.py, eval/latency.py and "
                                     "eval/fid.py into the paper-style tables (ours beside the paper's) and write "
                                     f"them into the README: the v1 table between {START} and {END}, the TGATE-V2 "
                                     f"table between {V2_START} and {V2_END}.")
    parser.add_argument("--macs", type=Path, default=DEFAULT_MACS, help=f"eval/macs.py JSON (default: {DEFAULT_MACS})")
    parser.add_argument("--latency", type=Path, default=DEFAULT_LATENCY,
                        help=f"eval/latency.py JSON (default: {DEFAULT_LATENCY})")
    parser.add_argument("--fid", action="append", help=f"glob of eval/fid.py result.json files; repeatable "
                        f"(default: {DEFAULT_FID})")
    parser.add_argument("--readme", type=Path, default=ROOT / "README.md", help="the README to update "
                        "(default: the repository's)")
    parser.add_argument("--print-only", action="store_true", help="print the tables, leave the README alone")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    sources = (load_rows(args.macs, "macs.py"), load_rows(args.latency, "latency.py"),
               load_fid_results(args.fid or [DEFAULT_FID]))
    block, v2_block = render(*sources), render_v2(*sources)
    print(block)
    print(v2_block)
    if args.print_only:
        return 0
    try:
        write_between_markers(args.readme, block, v2_block)
    except (OSError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(f"written into {args.readme}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
