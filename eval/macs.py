"""MACs and parameters of each model's denoiser over one sampling run, stock and with TGATE, beside the paper's.

Run from the repository root: ``python eval/macs.py`` (``--help`` for the flags). Offline, in about a
minute on a CPU for the table's models: the real denoisers are built from their architecture configs on
the ``meta`` device (no weights, no memory) and a run is counted step by step through the project's own
gate (``common/step_macs.py``): one forward of each kind of step, a :class:`~common.schedule.StepPlan`
(what cross- and self-attention and DeepCache's deep blocks do, on the guidance batch or one branch),
the run's MACs being the sum over its steps. For v1 (cross-attention only) there are three kinds:

- guided: a step before ``gate - 1``, on ``[uncond, cond]`` (batch 2) under guidance, batch 1 without (LCM);
  the hooks pass it through unchanged, so it is also every step of the stock baseline;
- caching: step ``gate - 1``, where every cross-attention module also caches its output;
- gated: a step from the gate on, where the guidance-cut hook halves the batch and cross-attention returns
  its cache.

TGATE-V2 (``--sp-interval --fi-interval --warm-up``) adds the steps where self-attention returns its cache,
DeepCache (``--deepcache-interval --deepcache-branch``) the partial forwards. Parameters "w/ TGATE" are the
denoiser's minus those of its cross-attention modules, which no longer run after the gate (the paper's
convention).

Without arguments it prints two tables: the v1 release table's models at their example scripts' settings
(plus the gate that matches the paper where that setting does not), and the official TGATE-V2 README's
table at its recommended settings (``common/paper_results.json``, ``v2.table_settings``), then the
paper's SDXL DeepCache rows. The references live in ``eval/macs_paper.py``, the tables in
``eval/macs_tables.py``.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Sequence

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # the repository root, for `common`

import torch  # noqa: E402
from tqdm import tqdm  # noqa: E402

from common.architectures import (  # noqa: E402
    ConfigNotFoundError, build_denoiser, counts_attention, text_tokens, vae_scale_factor,
)
from common.gate import cross_attention_modules  # noqa: E402
from common.models import MODELS, PAPER_MODELS, ModelSpec, get_model  # noqa: E402
from common.schedule import TgateSchedule  # noqa: E402
from common.settings import (  # noqa: E402
    V2_FIELDS, add_schedule_args, check_deepcache_model, given, intervals_label, model_schedule, schedule_from_args,
)
from common.step_macs import StepCounter, macs_count_for, runs_guidance  # noqa: E402
from eval.macs_paper import (  # noqa: E402
    DEEPCACHE_PAPER, DEEPCACHE_REFERENCE, V2_TABLE, Result, TableSetting, deepcache_paper_counts, deepcache_setting,
    matching_gate, paper_counts, paper_figures_at, v2_paper_counts, v2_table_setting,
)
from eval.macs_tables import print_tables  # noqa: E402

ROW_KEYS = ("model", "steps", "gate", "sp_interval", "fi_interval", "warm_up", "macs_baseline", "macs_tgate",
            "params_baseline", "params_tgate")
DEEPCACHE_ROW_KEYS = (*ROW_KEYS, "deepcache_interval", "deepcache_branch")  # DeepCache rows only


def parameter_counts(denoiser: torch.nn.Module, steps: int, gate: int) -> tuple[int, int]:
    """(stock, TGATE) parameters: TGATE leaves out the cross-attention modules once a step is gated."""
    total = sum(parameter.numel() for parameter in denoiser.parameters())
    if gate >= steps:  # no step is gated: every module still runs
        return total, total
    cross = sum(p.numel() for module in cross_attention_modules(denoiser) for p in module.parameters())
    return total, total - cross


def make_row(key: str, steps: int, schedule: TgateSchedule, counter: StepCounter,
             denoiser: torch.nn.Module) -> dict[str, Any]:
    """A row with the ``ROW_KEYS`` for a run of ``steps`` steps with ``schedule``; with DeepCache, the
    ``DEEPCACHE_ROW_KEYS``, its ``macs_baseline`` being DeepCache alone and ``macs_tgate`` DeepCache with TGATE."""
    macs_baseline, macs_tgate = counter.run_macs(steps, schedule)
    values = (key, steps, schedule.gate_step, schedule.sp_interval, schedule.fi_interval, schedule.warm_up,
              macs_baseline, macs_tgate, *parameter_counts(denoiser, steps, schedule.gate_step))
    if schedule.deepcache_interval is not None:
        return dict(zip(DEEPCACHE_ROW_KEYS, (*values, schedule.deepcache_interval, schedule.deepcache_branch)))
    return dict(zip(ROW_KEYS, values))


@dataclass
class Counted:
    """One model's denoiser and its step counter at the requested resolution."""

    spec: ModelSpec
    denoiser: torch.nn.Module
    counter: StepCounter
    resolution: int

    def row(self, steps: int, schedule: TgateSchedule) -> dict[str, Any]:
        return make_row(self.spec.key, steps, schedule, self.counter, self.denoiser)


def counted(spec: ModelSpec, resolution: int | None = None, source: str | None = None) -> Counted:
    """``spec``'s denoiser built on the meta device (from ``source``'s config if given) with its step counter."""
    resolution = spec.resolution if resolution is None else resolution
    denoiser = build_denoiser(spec, source)
    counter = StepCounter(denoiser, resolution, runs_guidance(spec, denoiser), vae_scale_factor(spec),
                          text_tokens(spec), macs_count_for(spec))
    return Counted(spec, denoiser, counter, resolution)


def macs_row(spec: ModelSpec, steps: int | None = None, gate: int | None = None, resolution: int | None = None,
             source: str | None = None, schedule: TgateSchedule | None = None) -> dict[str, Any]:
    """One row with the ``ROW_KEYS``: integer MACs and parameter counts, stock and TGATE.

    ``steps``, ``resolution`` and ``schedule`` default to the registry's settings of ``spec`` (``gate``
    replaces the schedule's); ``source`` (hub id or folder with a config) replaces the architecture of the
    project's copy.
    """
    steps = spec.steps if steps is None else steps
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    schedule = model_schedule(spec) if schedule is None else schedule
    if gate is not None:
        schedule = replace(schedule, gate_step=gate)
    return counted(spec, resolution, source).row(steps, schedule)


# --- Command line --------------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description="MACs and parameters of each model's denoiser over one sampling run, stock and with TGATE, "
        "next to the paper's figures: the v1 release table, and the official TGATE-V2 table at its recommended "
        "settings. Offline and weight-free: the real architectures are built from their configs on the meta "
        "device and calflops counts them through the project's TGATE hooks.",
    )
    parser.add_argument("--model", default="all", metavar="NAME",
                        help=f"which model: {', '.join(MODELS)}, or all (default: the v1 table's six models and "
                        "the V2 table's five)")
    parser.add_argument("--steps", type=int, metavar="N",
                        help="sampling steps (default: each model's paper setting)")
    parser.add_argument("--resolution", type=int, metavar="PIXELS",
                        help="image side in pixels (default: each model's paper setting: 512 for SD-1.5, "
                        "768 for SD-2.1, 1024 for the others)")
    add_schedule_args(
        parser, gate_help="; by default also a row at the gate that gives the paper's MACs w/ TGATE where that "
        "setting does not: gate 5 for the SD models",
        v2_help=". Without these flags the v1 table is counted at v1's settings and the V2 table at the official "
        "README's (e.g. SDXL gate 10, sp 5, fi 1, warm-up 2). Any of them counts only V2 rows at the given setting "
        "(the others from the V2 table where the model is in it, else from the registry)",
        deepcache_help=". Counts only DeepCache rows: MACs = DeepCache alone, MACs w/ TGATE = DeepCache with TGATE at "
        "--gate (default 10, the official one), plus the gate that gives the paper's figure where that one does not. "
        "Without these flags the SDXL DeepCache rows are counted at the paper-matching setting (interval 3, branch "
        "1, gate 13) and the official defaults (3, 0, gate 10). Here --deepcache-interval must be > 1")
    parser.add_argument("--config", metavar="HUB_ID_OR_FOLDER", help="count another checkpoint of the same family "
                        "as --model (which must name one model): a hub id or local folder with the denoiser's "
                        "config, either the pipeline (unet/ or transformer/ inside) or the denoiser folder itself")
    parser.add_argument("--json", type=Path, metavar="PATH", help="also write the rows as a JSON list with the keys "
                        + ", ".join(ROW_KEYS) + " (integers, raw counts; each distinct row once)")
    parser.add_argument("--markdown", action="store_true", help="print Markdown tables (for the README) "
                        "instead of the plain-text ones")
    return parser


def requested_v2(args: argparse.Namespace) -> bool:
    return bool(given(args, *V2_FIELDS))


def parse_args(argv: Sequence[str] | None) -> tuple[argparse.Namespace, list[ModelSpec]]:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        if args.model == "all":
            keys = [*PAPER_MODELS, *(key for key in V2_TABLE if key not in PAPER_MODELS)]
            specs = [get_model(key) for key in keys]
        else:
            specs = [get_model(args.model)]
        if args.steps is not None and args.steps < 1:
            raise ValueError(f"--steps must be >= 1, got {args.steps}")
        if args.resolution is not None and args.resolution < 1:
            raise ValueError(f"--resolution must be a positive number of pixels, got {args.resolution}")
        # the flags' values checked here; each row fills the rest from its own setting
        schedule_from_args(args, TgateSchedule(1), deepcache_minimum=2)
        if args.deepcache_interval is not None:
            if args.model == "all":
                specs = [get_model(DEEPCACHE_PAPER["model"])]  # the paper's DeepCache rows are SDXL's
            else:
                check_deepcache_model(specs[0])
        if args.config and args.model == "all":
            raise ValueError("--config needs --model naming the family of that checkpoint, e.g. --model sdxl")
    except ValueError as error:
        parser.error(str(error))
    return args, specs


def in_v1_table(spec: ModelSpec) -> bool:
    """Models counted at v1's settings: the v1 table's, and any model the V2 table does not have (the toy)."""
    return spec.paper_row(tgate=False) is not None or v2_table_setting(spec) is None


def model_results(model: Counted, args: argparse.Namespace) -> list[Result]:
    """v1: the row at the requested (or paper's) setting, plus the paper-matching gate where it differs."""
    spec, counter = model.spec, model.counter
    steps = spec.steps if args.steps is None else args.steps
    gate = spec.gate_step if args.gate is None else args.gate
    same_setting = args.config is None and steps == spec.steps and model.resolution == spec.resolution
    paper = paper_counts(spec) if same_setting and spec.paper_row(tgate=False) else None  # the toy has no paper row
    defaults = all(value is None for value in (args.gate, args.steps, args.resolution, args.config))
    setting = ("example scripts' setting" if spec.paper_row(tgate=False) else "default setting") if defaults else "requested setting"
    # the paper's table names no gate: its MACs w/ TGATE belong to the gate that reproduces them
    paper_gate = (matching_gate(counter, steps, paper["macs_tgate"], TgateSchedule(1)) or spec.gate_step) if paper else None

    def result(gate: int, setting: str) -> Result:
        row = model.row(steps, TgateSchedule(gate))
        if paper is None:
            return Result(row, None, setting)
        compared = paper_figures_at(paper, gate, steps, paper_gate)
        if "macs_tgate" not in compared and gate < steps:
            setting += f"; MACs w/ TGATE not compared: the paper's is at gate {paper_gate}"
        return Result(row, compared, setting)

    results = [result(gate, setting)]
    if paper is not None and args.gate is None and paper_gate != gate:
        results.append(result(paper_gate, f"gate {paper_gate}: {paper_gate} guided steps (the last caching) + "
                              f"{steps - paper_gate} gated steps"))
    return results


def v2_results(model: Counted, args: argparse.Namespace) -> list[Result]:
    """V2: the row at the V2 table's (or the requested) setting, plus the V2-matching gate where it differs."""
    spec, counter = model.spec, model.counter
    table = v2_table_setting(spec)
    base = table or TableSetting(spec.steps, model_schedule(spec))
    steps = base.steps if args.steps is None else args.steps
    schedule = schedule_from_args(args, base.schedule)
    comparable = args.config is None and model.resolution == spec.resolution
    paper = v2_paper_counts(spec) if comparable and table is not None and steps == table.steps else None
    defaults = not given(args, "gate_step", *V2_FIELDS) and all(
        value is None for value in (args.steps, args.resolution, args.config))
    if defaults and table is not None:
        v1_note = ": v1, self-attention computed at every step" if schedule.is_v1 else ""
        setting = f"V2 README's setting (gate {schedule.gate_step}, {intervals_label(schedule)}{v1_note})"
    else:
        setting = f"requested setting ({intervals_label(schedule)})"
    results = [Result(model.row(steps, schedule), paper, setting, "the V2 table")]
    if paper is None or args.gate is not None or "macs_tgate" not in results[0].outside_tolerance():
        return results
    match = matching_gate(counter, steps, paper["macs_tgate"], schedule)
    if match is not None and match != schedule.gate_step:
        setting = f"gate {match} at the same intervals: the gate that gives the V2 table's MACs w/ TGATE"
        results.append(Result(model.row(steps, replace(schedule, gate_step=match)), paper, setting, "the V2 table"))
    return results


def deepcache_results(model: Counted, args: argparse.Namespace) -> list[Result]:
    """DeepCache rows: at the requested setting, or (no DeepCache flags) at the paper-matching setting and the
    official defaults; plus the gate that gives the paper's DeepCache w/ TGATE where the requested one does not."""
    spec, counter = model.spec, model.counter
    official = deepcache_setting(DEEPCACHE_PAPER["settings"])
    matching = deepcache_setting(DEEPCACHE_PAPER["matching_settings"])
    intervals = given(args, *V2_FIELDS)  # v1 unless asked
    if args.deepcache_interval is None:
        settings = [(matching.steps, replace(matching.schedule, **intervals), "the setting that gives the paper's "
                     "DeepCache MACs (branch 1, gate 13: no documented setting says either)"),
                    (official.steps, replace(official.schedule, **intervals),
                     "the official defaults (cache_interval 3, cache_branch_id 0, gate 10)")]
    else:
        steps = spec.steps if args.steps is None else args.steps
        schedule = schedule_from_args(args, replace(official.schedule, deepcache_branch=0))
        official_note = " (the official defaults)" if (steps, schedule) == (official.steps, official.schedule) else ""
        settings = [(steps, schedule, f"requested setting{official_note}")]
    paper = deepcache_paper_counts(spec) if args.config is None and model.resolution == spec.resolution else None
    results = []
    for steps, schedule, setting in settings:
        v1 = (schedule.sp_interval, schedule.fi_interval, schedule.warm_up) == (1, 1, 0)
        compared = paper if paper is not None and steps == official.steps and v1 else None
        setting = f"DeepCache interval {schedule.deepcache_interval}, branch {schedule.deepcache_branch}: {setting}"
        results.append(Result(model.row(steps, schedule), compared, setting, DEEPCACHE_REFERENCE))
    if args.deepcache_interval is not None and args.gate is None and compared is not None \
            and "macs_tgate" in results[0].outside_tolerance():
        match = matching_gate(counter, steps, compared["macs_tgate"], schedule)
        if match is not None and match != schedule.gate_step:
            setting = (f"DeepCache interval {schedule.deepcache_interval}, branch {schedule.deepcache_branch}: gate "
                       f"{match}, the gate that gives the paper's DeepCache w/ TGATE (no documented setting says it)")
            results.append(Result(model.row(steps, replace(schedule, gate_step=match)), compared, setting,
                                  DEEPCACHE_REFERENCE))
    return results


def unique_rows(results: list[Result]) -> list[dict[str, Any]]:
    """Each distinct row once (an LCM row of the V2 table is its v1 row: the same setting)."""
    rows: list[dict[str, Any]] = []
    for result in results:
        if result.row not in rows:
            rows.append(result.row)
    return rows


def dit_run(key: str, args: argparse.Namespace) -> int:
    """A DiT model's stock and TGATE MACs, attention counted (FlopCounterMode), on its model card's video or image
    (the Wan toy: one 16x16 frame, its 2x VAE and 16 text tokens, read from its configs).

    The paper-table models are counted with calflops, which skips ``scaled_dot_product_attention``: at Wan's 32,760
    tokens that is most of a forward, so these figures use torch's counter and say so."""
    from common.flop_count import model_sampling_macs

    run = model_sampling_macs(key, steps=args.steps, gate_step=args.gate)
    frames = f", {run['frames']} frames" if run["frames"] > 1 else ""
    tokens = f", {run['text_tokens']} text tokens" if run["text_tokens"] else ""
    print(f"{get_model(key).title}: {run['width']}x{run['height']}{frames}{tokens}, {run['steps']} steps, guidance by "
          f"{run['guidance']}, gate {run['gate_step']}")
    # T for the real models; the toy's run is some hundred million MACs
    scale, unit = next((10 ** power, unit) for power, unit in ((12, "T"), (9, "G"), (6, "M"), (0, ""))
                       if run["stock"] >= 10 ** power or power == 0)
    print(f"  one forward (batch 1)          {run['forward'] / scale:10.2f}{unit}")
    print(f"  ... without cross-attention    {run['forward_without_cross_attention'] / scale:10.2f}{unit}")
    print(f"  stock run                      {run['stock'] / scale:10.1f}{unit}")
    print(f"  TGATE run                      {run['tgate'] / scale:10.1f}{unit}   ({run['speedup']:.3f}x fewer MACs)")
    print(f"  convention: {run['convention']}")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(run, indent=2) + "\n")
        print(f"run -> {args.json}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args, specs = parse_args(argv)
    if len(specs) == 1 and counts_attention(specs[0]):  # the DiTs (and the Wan toy): attention counted
        return dit_run(specs[0].key, args)
    v1: list[Result] = []
    v2: list[Result] = []
    deep: list[Result] = []
    for spec in tqdm(specs, desc="counting", unit="model", file=sys.stderr):
        try:
            model = counted(spec, args.resolution, args.config)
            if args.deepcache_interval is not None:
                deep += deepcache_results(model, args)
                continue
            if (args.model == "all" and not requested_v2(args) and args.config is None
                    and deepcache_paper_counts(spec) is not None):  # the paper's DeepCache rows too
                deep += deepcache_results(model, args)
            if requested_v2(args):
                v2 += v2_results(model, args)
                continue
            if in_v1_table(spec):
                v1 += model_results(model, args)
            if v2_table_setting(spec) is not None:
                v2 += v2_results(model, args)
        except ConfigNotFoundError as error:
            print(f"error: {error}", file=sys.stderr)
            return 2
        except ValueError as error:  # what the architecture cannot take: a resolution, an unsupported config
            print(f"error: {spec.key}: {error}", file=sys.stderr)
            return 2
    order = [*V2_TABLE, *MODELS]  # the V2 table's order
    v2.sort(key=lambda result: order.index(result.row["model"]))
    print_tables(v1, v2, args.markdown, deep)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(unique_rows(v1 + v2 + deep), indent=2) + "\n")
        print(f"rows -> {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
