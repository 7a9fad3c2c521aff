"""MACs and parameters of each model's denoiser over one sampling run, stock and with TGATE, beside the paper's.

Run from the repository root: ``python eval/macs.py`` (``--help`` for the flags). Offline, in about a
minute on a CPU for the table's six models: the real denoisers are built from their architecture configs on
the ``meta`` device (no weights, no memory) and calflops counts one forward of each kind of step, run
through the project's own gate (``common.gate``):

- guided: a step before ``gate - 1``, on ``[uncond, cond]`` (batch 2) under guidance, batch 1 without (LCM);
  the hooks pass it through unchanged, so it is also every step of the stock baseline;
- caching: step ``gate - 1``, where every cross-attention module also caches its output;
- gated: a step from the gate on, where the guidance-cut hook halves the batch and cross-attention returns
  its cache.

A sampling run of ``steps`` steps with gate ``g`` then costs ``(g - 1) x guided + caching + (steps - g) x
gated`` (a gate ``g >= steps`` gates no step), the stock run ``steps x guided``. Parameters "w/ TGATE" are the
denoiser's minus those of its cross-attention modules, which no longer run after the gate (the paper's
convention).
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Sequence

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # the repository root, for `common`

import torch  # noqa: E402
from calflops.calculate_pipline import CalFlopsPipline  # noqa: E402
from tqdm import tqdm  # noqa: E402

from common.architectures import (  # noqa: E402
    VAE_SCALE_FACTOR, ConfigNotFoundError, build_denoiser, denoiser_inputs, text_tokens, vae_scale_factor,
)
from common.cli import check_gate_flag  # noqa: E402
from common.gate import check_gate_step, cross_attention_modules, gated_sampling  # noqa: E402
from common.schedule import TgateSchedule  # noqa: E402
from common.models import MODELS, PAPER_MODELS, ModelSpec, get_model  # noqa: E402
from common.pipeline import TgateMixin  # noqa: E402

ROW_KEYS = ("model", "steps", "gate", "macs_baseline", "macs_tgate", "params_baseline", "params_tgate")
# A figure "matches" the paper's when within this relative distance of the printed value.
TOLERANCE = 1e-3
UNITS = {"T": 1e12, "G": 1e9, "B": 1e9, "M": 1e6, "K": 1e3}
ARCHITECTURE_NOTE = (
    "Counted on the real architectures built from their configs on the meta device: no weights are loaded, "
    "and MACs and parameter counts do not depend on weight values."
)


@dataclass(frozen=True)
class ForwardMacs:
    """calflops MACs of one denoiser forward of each kind of step of a TGATE run (one image)."""

    guided: int  # a step before gate - 1: the stock forward (batch 2 under guidance, 1 without)
    caching: int  # step gate - 1: cross-attention runs and is cached
    gated: int  # a step >= gate: cached cross-attention, the unconditional branch only


def count_forward_macs(denoiser: torch.nn.Module, inputs: dict[str, Any]) -> int:
    """calflops' MACs of ``denoiser(**inputs)``, with whatever hooks are installed on it.

    The same count as ``calflops.calculate_flops``, whose pipeline this drives directly: it takes nested
    inputs (SDXL's ``added_cond_kwargs``) as they are, and always removes calflops' patches of torch
    functions, which ``calculate_flops`` leaves in place (counting twice from then on) when a forward raises.
    """
    counter = CalFlopsPipline(denoiser, include_backPropagation=False, compute_bp_factor=2.0)
    counter.start_flops_calculate(ignore_list=None)
    try:
        with torch.no_grad():
            denoiser(**inputs)
        return int(counter.get_total_macs())
    finally:
        counter.end_flops_calculate()


def forward_macs(denoiser: torch.nn.Module, resolution: int, guided: bool,
                 vae_factor: int = VAE_SCALE_FACTOR, tokens: int | None = None) -> ForwardMacs:
    """Count one forward of each step kind of a TGATE run with gate 2: steps 0 (guided), 1 (caching), 2 (gated).

    The work of a step depends only on its kind (before, at or after ``gate - 1``), not on the gate's value,
    so these three counts give the MACs of a run of any length with any gate, and of the stock run.
    ``tokens``: the text length the pipeline hands the denoiser (``architectures.text_tokens``).
    """
    inputs = denoiser_inputs(denoiser, 2 if guided else 1, resolution, vae_factor=vae_factor, tokens=tokens)
    counts = []
    with gated_sampling(denoiser, TgateSchedule(gate_step=2), guided) as call:
        call.follows_loop = True  # this loop is the sampling loop: it sets the step itself
        for step in range(3):
            call.step = step
            counts.append(count_forward_macs(denoiser, inputs))
    return ForwardMacs(*counts)


def steps_of_each_kind(steps: int, gate: int) -> tuple[int, int, int]:
    """How many guided, caching and gated steps a run of ``steps`` steps with gate ``gate`` has."""
    caching = 1 if gate <= steps else 0
    return min(gate - 1, steps), caching, max(steps - gate, 0)


def run_macs(forward: ForwardMacs, steps: int, gate: int) -> tuple[int, int]:
    """(stock, TGATE) MACs of a whole sampling run."""
    guided, caching, gated = steps_of_each_kind(steps, gate)
    return steps * forward.guided, guided * forward.guided + caching * forward.caching + gated * forward.gated


def parameter_counts(denoiser: torch.nn.Module, steps: int, gate: int) -> tuple[int, int]:
    """(stock, TGATE) parameters: TGATE leaves out the cross-attention modules once a step is gated."""
    total = sum(parameter.numel() for parameter in denoiser.parameters())
    if gate >= steps:  # no step is gated: every module still runs
        return total, total
    cross = sum(p.numel() for module in cross_attention_modules(denoiser) for p in module.parameters())
    return total, total - cross


def runs_guidance(spec: ModelSpec, denoiser: torch.nn.Module) -> bool:
    """Whether the pipeline samples with classifier-free guidance: the TGATE pipelines' own rule."""
    return TgateMixin.uses_guidance(SimpleNamespace(denoiser=denoiser), spec.guidance_scale)


def make_row(key: str, steps: int, gate: int, forward: ForwardMacs, params: tuple[int, int]) -> dict[str, Any]:
    macs_baseline, macs_tgate = run_macs(forward, steps, gate)
    return dict(zip(ROW_KEYS, (key, steps, gate, macs_baseline, macs_tgate, *params)))


def macs_row(
    spec: ModelSpec,
    steps: int | None = None,
    gate: int | None = None,
    resolution: int | None = None,
    source: str | None = None,
) -> dict[str, Any]:
    """One row with the ``ROW_KEYS``: integer MACs and parameter counts, stock and TGATE.

    ``steps``, ``gate`` and ``resolution`` default to the paper's settings of ``spec``; ``source`` (hub id
    or folder with a config) replaces the architecture of the project's copy.
    """
    steps = spec.steps if steps is None else steps
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    gate = check_gate_step(spec.gate_step if gate is None else gate)
    denoiser = build_denoiser(spec, source)
    forward = forward_macs(denoiser, resolution or spec.resolution, runs_guidance(spec, denoiser),
                           vae_scale_factor(spec), text_tokens(spec))
    return make_row(spec.key, steps, gate, forward, parameter_counts(denoiser, steps, gate))


# --- The paper's figures -------------------------------------------------------------------------------


def parse_count(text: str) -> float:
    """'16.938T' -> 1.6938e13; '859.520M' -> 8.5952e8."""
    return float(text[:-1]) * UNITS[text[-1]]


def paper_counts(spec: ModelSpec) -> dict[str, float]:
    """The paper's MACs and parameters of ``spec`` under the ``ROW_KEYS`` names."""
    stock, tgate = spec.paper_row(tgate=False), spec.paper_row(tgate=True)
    return {
        "macs_baseline": parse_count(stock["macs"]),
        "macs_tgate": parse_count(tgate["macs"]),
        "params_baseline": parse_count(stock["params"]),
        "params_tgate": parse_count(tgate["params"]),
    }


def deviation(ours: int, paper: float) -> float:
    return (ours - paper) / paper


def matching_gate(forward: ForwardMacs, steps: int, paper_macs_tgate: float) -> int | None:
    """The gate whose TGATE MACs are nearest the paper's, if within ``TOLERANCE``; else None."""
    best = min(range(1, steps + 1), key=lambda g: abs(deviation(run_macs(forward, steps, g)[1], paper_macs_tgate)))
    return best if abs(deviation(run_macs(forward, steps, best)[1], paper_macs_tgate)) <= TOLERANCE else None


# --- Command line --------------------------------------------------------------------------------------

METRICS = ("macs_baseline", "macs_tgate", "params_baseline", "params_tgate")
HEADERS = {"macs_baseline": "MACs", "macs_tgate": "MACs w/ TGATE",
           "params_baseline": "Params", "params_tgate": "Params w/ TGATE"}


def format_count(value: float, metric: str) -> str:
    """The paper's style: MACs in T (G below 1T), parameters in B (M below 1B), 3 decimals."""
    units = ("T", "G", "M") if metric.startswith("macs") else ("B", "M", "K")
    unit = next((u for u in units if value >= UNITS[u]), units[-1])
    return f"{value / UNITS[unit]:.3f}{unit}"


@dataclass
class Result:
    row: dict[str, Any]
    paper: dict[str, float] | None  # None where the paper has no comparable figure
    setting: str
    paper_gate: int | None = None  # the gate of the paper's MACs w/ TGATE: the one that reproduces it

    def compared(self) -> list[str]:
        """The figures the paper has at this row's setting: the stock ones always, Params w/ TGATE once a step
        is gated (it does not depend on the gate), MACs w/ TGATE at the paper's gate only."""
        if not self.paper:
            return []
        gated = self.row["gate"] < self.row["steps"]
        return [m for m in METRICS if m.endswith("_baseline") or gated and (
            m == "params_tgate" or self.row["gate"] == self.paper_gate)]

    def outside_tolerance(self) -> list[str]:
        """The compared figures further than ``TOLERANCE`` from the paper's."""
        return [m for m in self.compared() if abs(deviation(self.row[m], self.paper[m])) > TOLERANCE]

    @property
    def note(self) -> str:
        parts = [self.setting]
        if self.row["gate"] >= self.row["steps"]:
            parts.append("gate >= steps: no step is gated")
        elif self.paper and "macs_tgate" not in self.compared():
            parts.append(f"MACs w/ TGATE not compared: the paper's is at gate {self.paper_gate}")
        if self.paper is None:
            return "; ".join([*parts, "no paper figure at this setting"])
        off, compared = self.outside_tolerance(), self.compared()
        if not off:
            which = "all four" if len(compared) == len(METRICS) else ", ".join(HEADERS[m] for m in compared)
            return "; ".join([*parts, f"{which} within {TOLERANCE:.1%} of the paper"])
        return "; ".join(parts) + f"; off the paper by more than {TOLERANCE:.1%}: " + ", ".join(
            f"{HEADERS[m]} {deviation(self.row[m], self.paper[m]):+.3%}" for m in off
        )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description="MACs and parameters of each model's denoiser over one sampling run, stock and with TGATE, "
        "next to the paper's figures. Offline and weight-free: the real architectures are built from their "
        "configs on the meta device and calflops counts them through the project's TGATE hooks.",
    )
    parser.add_argument("--model", default="all", metavar="NAME",
                        help=f"which model: {', '.join(MODELS)}, or all (default)")
    parser.add_argument("--gate", type=int, metavar="N",
                        help="gate step: steps run stock before cross-attention is cached and guidance dropped "
                        "(default: each model's paper setting, plus a row at the gate that gives the paper's MACs "
                        "w/ TGATE where that setting does not: gate 5 for the SD models)")
    parser.add_argument("--steps", type=int, metavar="N",
                        help="sampling steps (default: each model's paper setting)")
    parser.add_argument("--resolution", type=int, metavar="PIXELS",
                        help="image side in pixels (default: each model's paper setting: 512 for SD-1.5, "
                        "768 for SD-2.1, 1024 for the others)")
    parser.add_argument("--config", metavar="HUB_ID_OR_FOLDER", help="count another checkpoint of the same family "
                        "as --model (which must name one model): a hub id or local folder with the denoiser's "
                        "config, either the pipeline (unet/ or transformer/ inside) or the denoiser folder itself")
    parser.add_argument("--json", type=Path, metavar="PATH", help="also write the rows as a JSON list with the keys "
                        + ", ".join(ROW_KEYS) + " (integers, raw counts)")
    parser.add_argument("--markdown", action="store_true", help="print a Markdown table (for the README) "
                        "instead of the plain-text one")
    return parser


def parse_args(argv: Sequence[str] | None) -> tuple[argparse.Namespace, list[ModelSpec]]:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        specs = list(PAPER_MODELS.values()) if args.model == "all" else [get_model(args.model)]
        if args.gate is not None:
            check_gate_flag(args.gate)
        if args.steps is not None and args.steps < 1:
            raise ValueError(f"--steps must be >= 1, got {args.steps}")
        if args.resolution is not None and args.resolution < 1:
            raise ValueError(f"--resolution must be a positive number of pixels, got {args.resolution}")
        if args.config and args.model == "all":
            raise ValueError("--config needs --model naming the family of that checkpoint, e.g. --model sdxl")
    except ValueError as error:
        parser.error(str(error))
    return args, specs


def model_results(spec: ModelSpec, args: argparse.Namespace) -> list[Result]:
    """The row at the requested (or paper's) setting, plus the paper-matching gate where it differs."""
    steps = spec.steps if args.steps is None else args.steps
    gate = spec.gate_step if args.gate is None else args.gate
    resolution = spec.resolution if args.resolution is None else args.resolution
    denoiser = build_denoiser(spec, args.config)
    forward = forward_macs(denoiser, resolution, runs_guidance(spec, denoiser), vae_scale_factor(spec),
                           text_tokens(spec))
    comparable = args.config is None and steps == spec.steps and resolution == spec.resolution
    paper = paper_counts(spec) if comparable and spec.paper_row(tgate=False) else None  # the toy has no paper row
    defaults = all(value is None for value in (args.gate, args.steps, args.resolution, args.config))
    setting = ("example scripts' setting" if spec.paper_row(tgate=False) else "default setting") if defaults else "requested setting"
    # the paper's table names no gate: its MACs w/ TGATE belong to the gate that reproduces them
    paper_gate = (matching_gate(forward, steps, paper["macs_tgate"]) or spec.gate_step) if paper else None

    def result(gate: int, setting: str) -> Result:
        row = make_row(spec.key, steps, gate, forward, parameter_counts(denoiser, steps, gate))
        return Result(row, paper, setting, paper_gate)

    results = [result(gate, setting)]
    if paper is not None and args.gate is None and paper_gate != gate:
        results.append(result(paper_gate, f"gate {paper_gate}: {paper_gate} guided steps (the last caching) + "
                              f"{steps - paper_gate} gated steps"))
    return results


def text_table(results: list[Result]) -> str:
    def line(label: str, cells: list[str], note: str = "") -> str:
        return f"{label:<23}" + "".join(f"{cell:>16}" for cell in cells) + (f"  {note}" if note else "")

    lines = [line(f"{'model':<13}{'steps':>5}{'gate':>5}", [HEADERS[m] for m in METRICS], "note")]
    for result in results:
        row, paper = result.row, result.paper
        setting = f"{row['model']:<13}{row['steps']:>5}{row['gate']:>5}"
        lines.append(line(setting, [format_count(row[m], m) for m in METRICS], result.note))
        if paper:
            compared = result.compared()
            lines.append(line("  paper", [format_count(paper[m], m) if m in compared else "-" for m in METRICS]))
            lines.append(line("  difference", [f"{deviation(row[m], paper[m]):+.3%}" if m in compared else "-"
                                               for m in METRICS]))
    return "\n".join(lines)


def markdown_table(results: list[Result]) -> str:
    lines = ["| model | steps | gate | " + " | ".join(HEADERS[m] for m in METRICS) + " | note |",
             "| --- | ---: | ---: | " + " | ".join("---:" for _ in METRICS) + " | --- |"]
    for result in results:
        row, paper = result.row, result.paper
        cells = [
            format_count(row[m], m)
            + (f" (paper {format_count(paper[m], m)}, {deviation(row[m], paper[m]):+.3%})" if m in result.compared() else "")
            for m in METRICS
        ]
        lines.append(f"| {MODELS[row['model']].title} | {row['steps']} | {row['gate']} | " + " | ".join(cells)
                     + f" | {result.note} |")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    args, specs = parse_args(argv)
    results: list[Result] = []
    for spec in tqdm(specs, desc="counting", unit="model", file=sys.stderr):
        try:
            results += model_results(spec, args)
        except ConfigNotFoundError as error:
            print(f"error: {error}", file=sys.stderr)
            return 2
        except ValueError as error:  # what the architecture cannot take: a resolution, an unsupported config
            print(f"error: {spec.key}: {error}", file=sys.stderr)
            return 2
    print(markdown_table(results) if args.markdown else text_table(results))
    if any(result.setting.startswith("gate ") for result in results):
        print("Where the example scripts' gate does not give the paper's MACs w/ TGATE, the next row shows the "
              "gate that does.")
    print(ARCHITECTURE_NOTE)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps([result.row for result in results], indent=2) + "\n")
        print(f"rows -> {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
