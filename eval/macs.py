"""MACs and parameters of each model's denoiser over one sampling run, stock and with TGATE, beside the paper's.

Run from the repository root: ``python eval/macs.py`` (``--help`` for the flags). Offline, in about a
minute on a CPU for the table's models: the real denoisers are built from their architecture configs on
the ``meta`` device (no weights, no memory) and calflops counts one forward of each kind of step, run
through the project's own gate (``common.gate``). A kind of step is a :class:`~common.schedule.StepPlan`:
what cross- and self-attention do (compute, cache, reuse) and whether the denoiser runs the guidance batch
or one branch. For v1 (cross-attention only) there are three:

- guided: a step before ``gate - 1``, on ``[uncond, cond]`` (batch 2) under guidance, batch 1 without (LCM);
  the hooks pass it through unchanged, so it is also every step of the stock baseline;
- caching: step ``gate - 1``, where every cross-attention module also caches its output;
- gated: a step from the gate on, where the guidance-cut hook halves the batch and cross-attention returns
  its cache.

A v1 run of ``steps`` steps with gate ``g`` then costs ``(g - 1) x guided + caching + (steps - g) x gated``
(a gate ``g >= steps`` gates no step), the stock run ``steps x guided``. TGATE-V2 (``--sp-interval
--fi-interval --warm-up``) adds the steps where self-attention returns its cache: the run is walked step by
step through its schedule, each distinct plan counted once, and the total is the sum over the steps.
Parameters "w/ TGATE" are the denoiser's minus those of its cross-attention modules, which no longer run
after the gate (the paper's convention).

Without arguments it prints two tables: the v1 release table's models at their example scripts' settings
(plus the gate that matches the paper where that setting does not), and the official TGATE-V2 README's
table at its recommended settings (``common/paper_results.json``, ``v2.table_settings``).
"""

from __future__ import annotations

import argparse
import contextlib
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
from common.gate import (  # noqa: E402
    check_gate_step, cross_attention_modules, deepcache_modules, gated_sampling, self_attention_modules,
)
from common.models import MODELS, PAPER, PAPER_MODELS, ModelSpec, get_model  # noqa: E402
from common.schedule import CACHE, REUSE, StepPlan, TgateSchedule, check_int  # noqa: E402
from common.pipeline import TgateMixin  # noqa: E402

ROW_KEYS = ("model", "steps", "gate", "sp_interval", "fi_interval", "warm_up", "macs_baseline", "macs_tgate",
            "params_baseline", "params_tgate")
DEEPCACHE_ROW_KEYS = (*ROW_KEYS, "deepcache_interval", "deepcache_branch")  # DeepCache rows only
V1_INTERVALS = (1, 1, 0)  # sp_interval, fi_interval, warm_up: self-attention computed at every step
# A figure "matches" the paper's when within this relative distance of the printed value.
TOLERANCE = 1e-3
UNITS = {"T": 1e12, "G": 1e9, "B": 1e9, "M": 1e6, "K": 1e3}
DEEPCACHE_NOTE = (
    "The paper's DeepCache figures (57.888T, 43.868T) are reproduced at cache_branch_id 1 and gate 13; no documented "
    "setting says either: the official defaults are cache_branch_id 0 and gate 10, which give fewer MACs."
)
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


class StepCounter:
    """calflops MACs of one denoiser evaluation of each kind of step (each distinct ``StepPlan``) of TGATE runs.

    Counts go through the project's own hooks: a run's schedule is walked in order inside ``gated_sampling``
    with ``call.step`` set, as a sampling loop would, so every cache a step reuses was made by an earlier
    step. Each plan is counted once and remembered, so several schedules (gates, intervals) on the same
    denoiser and inputs share their counts. ``tokens``: the text length the pipeline hands the denoiser
    (``architectures.text_tokens``).
    """

    def __init__(self, denoiser: torch.nn.Module, resolution: int, guided: bool,
                 vae_factor: int = VAE_SCALE_FACTOR, tokens: int | None = None) -> None:
        self.denoiser, self.guided = denoiser, guided
        self.inputs = denoiser_inputs(denoiser, 2 if guided else 1, resolution, vae_factor=vae_factor, tokens=tokens)
        self.counts: dict[StepPlan, int] = {}

    def step_macs(self, schedule: TgateSchedule, steps: int) -> list[int]:
        """MACs of each step ``0 .. steps - 1`` of a run with ``schedule``."""
        plans = [schedule.plan(step) for step in range(steps)]
        new = [step for step, plan in enumerate(plans) if plan not in self.counts]
        if new:
            with gated_sampling(self.denoiser, schedule, self.guided) as call, _projections(self.denoiser) as ran:
                call.follows_loop = True  # this loop is the sampling loop: it sets the step itself
                for step, plan in enumerate(plans[: new[-1] + 1]):
                    call.step = step
                    if plan not in self.counts:
                        self.counts[plan] = self._count(plan, ran)
                    elif CACHE in (plan.cross_attention, plan.self_attention, plan.deepcache):
                        with torch.no_grad():  # not counted again, but its caches are what later steps reuse
                            self.denoiser(**self.inputs)
        return [self.counts[plan] for plan in plans]

    def stock_step(self) -> int:
        """MACs of one step of the stock pipeline (before any gate, self-attention computed)."""
        return self.step_macs(TgateSchedule(gate_step=2), 1)[0]

    def run_macs(self, steps: int, schedule: TgateSchedule) -> tuple[int, int]:
        """(baseline, TGATE) MACs of a whole sampling run of ``steps`` steps.

        The baseline is the stock run, or DeepCache alone (no gate, the same interval and branch) where
        ``schedule`` uses DeepCache."""
        if schedule.uses_deepcache:
            alone = TgateSchedule(None, deepcache_interval=schedule.deepcache_interval,
                                  deepcache_branch=schedule.deepcache_branch)
            return sum(self.step_macs(alone, steps)), sum(self.step_macs(schedule, steps))
        return steps * self.stock_step(), sum(self.step_macs(schedule, steps))

    def forward_macs(self) -> "ForwardMacs":
        """The three kinds of step of v1: steps 0 (guided), 1 (caching), 2 (gated) of a run with gate 2."""
        return ForwardMacs(*self.step_macs(TgateSchedule(gate_step=2), 3))

    def _count(self, plan: StepPlan, ran: dict[str, int]) -> int:
        ran.update(cross=0, self=0, deep=0)
        macs = count_forward_macs(self.denoiser, self.inputs)
        for kind, action in (("cross", plan.cross_attention), ("self", plan.self_attention),
                             ("deep", plan.deepcache)):
            if action == REUSE and ran[kind]:  # the hook found no cache and computed: the count would be wrong
                what = "the deep blocks" if kind == "deep" else f"{kind}-attention"
                raise RuntimeError(f"{what} computed at a step planned to reuse its cache ({plan})")
        return macs


@contextlib.contextmanager
def _projections(denoiser: torch.nn.Module):
    """Count the query projections run by cross- and self-attention modules (``ran["cross"]``, ``ran["self"]``)."""
    ran = {"cross": 0, "self": 0, "deep": 0}
    handles = []
    for kind, modules in (("cross", cross_attention_modules(denoiser)), ("self", self_attention_modules(denoiser))):
        for module in modules:
            handles.append(module.to_q.register_forward_pre_hook(
                lambda _module, _args, kind=kind: ran.__setitem__(kind, ran[kind] + 1)))
    # DeepCache: every partial forward skips the UNet's mid block (its DeepCache hook returns the cache without
    # running it), so its first resnet runs only in a full forward or when the cache was missing
    mid_block = getattr(getattr(denoiser, "mid_block", None), "resnets", None) if deepcache_modules(denoiser) else None
    if mid_block:
        handles.append(mid_block[0].register_forward_pre_hook(
            lambda _module, _args: ran.__setitem__("deep", ran["deep"] + 1)))
    try:
        yield ran
    finally:
        for handle in handles:
            handle.remove()


def forward_macs(denoiser: torch.nn.Module, resolution: int, guided: bool,
                 vae_factor: int = VAE_SCALE_FACTOR, tokens: int | None = None) -> ForwardMacs:
    """Count one forward of each step kind of a v1 TGATE run with gate 2: steps 0 (guided), 1 (caching), 2 (gated).

    The work of a step depends only on its kind (before, at or after ``gate - 1``), not on the gate's value,
    so these three counts give the MACs of a v1 run of any length with any gate, and of the stock run.
    ``tokens``: the text length the pipeline hands the denoiser (``architectures.text_tokens``).
    """
    return StepCounter(denoiser, resolution, guided, vae_factor, tokens).forward_macs()


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


def schedule_of(gate: int, intervals: tuple[int, int, int] = V1_INTERVALS,
                deepcache: tuple[int, int] | None = None) -> TgateSchedule:
    """The TGATE schedule of a gate, (sp_interval, fi_interval, warm_up) and DeepCache's (interval, branch)."""
    sp_interval, fi_interval, warm_up = intervals
    interval, branch = deepcache or (None, 0)
    return TgateSchedule(gate, sp_interval=sp_interval, fi_interval=fi_interval, warm_up=warm_up,
                         deepcache_interval=interval, deepcache_branch=branch)


def make_row(key: str, steps: int, gate: int, counter: StepCounter, params: tuple[int, int],
             intervals: tuple[int, int, int] = V1_INTERVALS, deepcache: tuple[int, int] | None = None) -> dict[str, Any]:
    """A row with the ``ROW_KEYS``; with ``deepcache`` (interval, branch), the ``DEEPCACHE_ROW_KEYS``, its
    ``macs_baseline`` being DeepCache alone and ``macs_tgate`` DeepCache with TGATE."""
    macs_baseline, macs_tgate = counter.run_macs(steps, schedule_of(gate, intervals, deepcache))
    values = (key, steps, gate, *intervals, macs_baseline, macs_tgate, *params)
    if deepcache is not None:
        return dict(zip(DEEPCACHE_ROW_KEYS, (*values, *deepcache)))
    return dict(zip(ROW_KEYS, values))


def registry_intervals(spec: ModelSpec) -> tuple[int, int, int]:
    return spec.sp_interval, spec.fi_interval, spec.warm_up


def macs_row(
    spec: ModelSpec,
    steps: int | None = None,
    gate: int | None = None,
    resolution: int | None = None,
    source: str | None = None,
    intervals: tuple[int, int, int] | None = None,
) -> dict[str, Any]:
    """One row with the ``ROW_KEYS``: integer MACs and parameter counts, stock and TGATE.

    ``steps``, ``gate``, ``resolution`` and ``intervals`` (sp_interval, fi_interval, warm_up) default to the
    registry's settings of ``spec``; ``source`` (hub id or folder with a config) replaces the architecture
    of the project's copy.
    """
    steps = spec.steps if steps is None else steps
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    gate = check_gate_step(spec.gate_step if gate is None else gate)
    intervals = registry_intervals(spec) if intervals is None else intervals
    denoiser = build_denoiser(spec, source)
    counter = StepCounter(denoiser, resolution or spec.resolution, runs_guidance(spec, denoiser),
                          vae_scale_factor(spec), text_tokens(spec))
    return make_row(spec.key, steps, gate, counter, parameter_counts(denoiser, steps, gate), intervals)


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


V2_TABLE = PAPER["v2"]["table_settings"]  # the official V2 README's settings of each model of its table


@dataclass(frozen=True)
class V2Setting:
    """A model's setting in the official TGATE-V2 table."""

    steps: int
    gate: int
    intervals: tuple[int, int, int]  # sp_interval, fi_interval, warm_up


def v2_table_setting(spec: ModelSpec) -> V2Setting | None:
    settings = V2_TABLE.get(spec.key)
    if settings is None:
        return None
    intervals = (settings["sp_interval"], settings["fi_interval"], settings["warm_up"])
    return V2Setting(settings["steps"], settings["gate_step"], intervals)


def v2_paper_counts(spec: ModelSpec) -> dict[str, float] | None:
    """The V2 table's MACs of ``spec`` (it has no parameter column), None where it has no such model."""
    stock, tgate = spec.paper_v2_row(tgate=False), spec.paper_v2_row(tgate=True)
    if stock is None or tgate is None:
        return None
    return {"macs_baseline": stock["macs_T"] * UNITS["T"], "macs_tgate": tgate["macs_T"] * UNITS["T"]}


DEEPCACHE_PAPER = PAPER["v2"]["deepcache"]  # the official README's DeepCache rows (SDXL) and their settings


def deepcache_setting(settings: dict[str, int]) -> tuple[int, int, tuple[int, int]]:
    """(steps, gate, (deepcache_interval, deepcache_branch)) of a ``DEEPCACHE_PAPER`` settings entry."""
    return settings["steps"], settings["gate_step"], (settings["deepcache_interval"], settings["deepcache_branch"])


def deepcache_paper_counts(spec: ModelSpec) -> dict[str, float] | None:
    """The paper's DeepCache MACs (DeepCache alone, DeepCache w/ TGATE), None for any model but its SDXL."""
    if spec.key != DEEPCACHE_PAPER["model"]:
        return None
    rows = {row["tgate"]: row["macs_T"] * UNITS["T"] for row in DEEPCACHE_PAPER["rows"]}
    return {"macs_baseline": rows[False], "macs_tgate": rows[True]}


def deviation(ours: int, paper: float) -> float:
    return (ours - paper) / paper


def matching_gate(counter: StepCounter, steps: int, paper_macs_tgate: float,
                  intervals: tuple[int, int, int] = V1_INTERVALS, deepcache: tuple[int, int] | None = None) -> int | None:
    """The gate (with these intervals) whose TGATE MACs are nearest the paper's, if within ``TOLERANCE``."""
    off = {gate: abs(deviation(counter.run_macs(steps, schedule_of(gate, intervals, deepcache))[1], paper_macs_tgate))
           for gate in range(1, steps + 1)}
    best = min(off, key=off.get)
    return best if off[best] <= TOLERANCE else None


# --- Command line --------------------------------------------------------------------------------------

METRICS = ("macs_baseline", "macs_tgate", "params_baseline", "params_tgate")
V2_METRICS = ("macs_baseline", "macs_tgate")  # the V2 table has no parameter column
HEADERS = {"macs_baseline": "MACs", "macs_tgate": "MACs w/ TGATE",
           "params_baseline": "Params", "params_tgate": "Params w/ TGATE"}
DEEPCACHE_HEADERS = {"macs_baseline": "MACs DeepCache", "macs_tgate": "DeepCache+TGATE"}
DEEPCACHE_REFERENCE = "the paper's DeepCache rows"
HOW_MANY = {1: "the one figure", 2: "both", 3: "all three", 4: "all four"}


def format_count(value: float, metric: str) -> str:
    """The paper's style: MACs in T (G below 1T), parameters in B (M below 1B), 3 decimals."""
    units = ("T", "G", "M") if metric.startswith("macs") else ("B", "M", "K")
    unit = next((u for u in units if value >= UNITS[u]), units[-1])
    return f"{value / UNITS[unit]:.3f}{unit}"


def format_intervals(intervals: tuple[int, int, int]) -> str:
    sp_interval, fi_interval, warm_up = intervals
    return f"sp {sp_interval}, fi {fi_interval}, warm-up {warm_up}"


@dataclass
class Result:
    row: dict[str, Any]
    paper: dict[str, float] | None  # None where the paper has no comparable figure
    setting: str
    reference: str = "the paper"  # what ``paper`` is: the v1 release table or the V2 table

    @property
    def metrics(self) -> tuple[str, ...]:
        return METRICS if self.reference == "the paper" else V2_METRICS  # DeepCache's rows: MACs only

    def outside_tolerance(self) -> list[str]:
        """The figures further than ``TOLERANCE`` from the paper's."""
        return [m for m in self.paper if abs(deviation(self.row[m], self.paper[m])) > TOLERANCE] if self.paper else []

    @property
    def note(self) -> str:
        if self.row["gate"] >= self.row["steps"] and (self.row["sp_interval"], self.row["fi_interval"]) == (1, 1):
            return f"{self.setting}; gate >= steps: no step is gated"
        if self.paper is None:
            return f"{self.setting}; no paper figure at this setting"
        off = self.outside_tolerance()
        if not off:
            return f"{self.setting}; {HOW_MANY[len(self.paper)]} within {TOLERANCE:.1%} of {self.reference}"
        return f"{self.setting}; off {self.reference} by more than {TOLERANCE:.1%}: " + ", ".join(
            f"{(DEEPCACHE_HEADERS if self.reference == DEEPCACHE_REFERENCE else HEADERS)[m]} "
            f"{deviation(self.row[m], self.paper[m]):+.3%}" for m in off
        )


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
    parser.add_argument("--gate", type=int, metavar="N",
                        help="gate step: steps run stock before cross-attention is cached and guidance dropped "
                        "(default: each model's paper setting, plus a row at the gate that gives the paper's MACs "
                        "w/ TGATE where that setting does not: gate 5 for the SD models)")
    parser.add_argument("--steps", type=int, metavar="N",
                        help="sampling steps (default: each model's paper setting)")
    parser.add_argument("--resolution", type=int, metavar="PIXELS",
                        help="image side in pixels (default: each model's paper setting: 512 for SD-1.5, "
                        "768 for SD-2.1, 1024 for the others)")
    v2 = parser.add_argument_group("TGATE-V2", "self-attention caching. Without these flags the v1 table is counted "
                                   "at v1's settings (self-attention computed at every step) and the V2 table at the "
                                   "official README's (e.g. SDXL gate 10, sp 5, fi 1, warm-up 2). Any of them counts "
                                   "only V2 rows at the given setting (the others from the V2 table where the model is "
                                   "in it, else from the registry)")
    v2.add_argument("--sp-interval", type=int, metavar="N", help="before the gate, self-attention is computed and "
                    "cached every N steps after the warm-up and returns its cache in between (1: every step)")
    v2.add_argument("--fi-interval", type=int, metavar="N", help="after the gate, self-attention is computed and "
                    "cached every N steps (1: every step)")
    v2.add_argument("--warm-up", type=int, metavar="N", help="the first N steps compute self-attention without "
                    "caching it")
    deep = parser.add_argument_group("DeepCache", "the UNet runs in full every N steps and otherwise only its "
                                     "shallow branch B (the official TGATE + DeepCache combination: DeepCache reset "
                                     "at gate - 1 and gate). Counts only DeepCache rows: MACs = DeepCache alone, "
                                     "MACs w/ TGATE = DeepCache with TGATE at --gate (default 10, the official one), "
                                     "plus the gate that gives the paper's figure where that one does not. Without "
                                     "these flags the SDXL DeepCache rows are counted at the paper-matching setting "
                                     "(interval 3, branch 1, gate 13) and the official defaults (3, 0, gate 10)")
    deep.add_argument("--deepcache-interval", type=int, metavar="N", help="steps between full UNet forwards (> 1)")
    deep.add_argument("--deepcache-branch", type=int, metavar="B", help="DeepCache's cache_branch_id: the shallow "
                      "branch of a partial forward (default 0, the official default; 1 gives the paper's MACs)")
    parser.add_argument("--config", metavar="HUB_ID_OR_FOLDER", help="count another checkpoint of the same family "
                        "as --model (which must name one model): a hub id or local folder with the denoiser's "
                        "config, either the pipeline (unet/ or transformer/ inside) or the denoiser folder itself")
    parser.add_argument("--json", type=Path, metavar="PATH", help="also write the rows as a JSON list with the keys "
                        + ", ".join(ROW_KEYS) + " (integers, raw counts; each distinct row once)")
    parser.add_argument("--markdown", action="store_true", help="print Markdown tables (for the README) "
                        "instead of the plain-text ones")
    return parser


def requested_v2(args: argparse.Namespace) -> bool:
    return any(value is not None for value in (args.sp_interval, args.fi_interval, args.warm_up))


def parse_args(argv: Sequence[str] | None) -> tuple[argparse.Namespace, list[ModelSpec]]:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        if args.model == "all":
            keys = [*PAPER_MODELS, *(key for key in V2_TABLE if key not in PAPER_MODELS)]
            specs = [get_model(key) for key in keys]
        else:
            specs = [get_model(args.model)]
        if args.gate is not None:
            check_gate_flag(args.gate)
        if args.steps is not None and args.steps < 1:
            raise ValueError(f"--steps must be >= 1, got {args.steps}")
        if args.resolution is not None and args.resolution < 1:
            raise ValueError(f"--resolution must be a positive number of pixels, got {args.resolution}")
        for flag, value, minimum in (("--sp-interval", args.sp_interval, 1), ("--fi-interval", args.fi_interval, 1),
                                     ("--warm-up", args.warm_up, 0)):
            if value is not None:
                check_int(flag, value, minimum)
        if args.deepcache_branch is not None and args.deepcache_interval is None:
            raise ValueError("--deepcache-branch needs --deepcache-interval (e.g. --deepcache-interval 3)")
        if args.deepcache_interval is not None:
            check_int("--deepcache-interval", args.deepcache_interval, 2)
            check_int("--deepcache-branch", args.deepcache_branch or 0, 0)
            if args.model == "all":
                specs = [get_model(DEEPCACHE_PAPER["model"])]  # the paper's DeepCache rows are SDXL's
            elif specs[0].denoiser != "unet":
                raise ValueError(f"DeepCache caches a UNet's deep blocks: {specs[0].key} has no UNet (UNet models: "
                                 + ", ".join(key for key, spec in MODELS.items() if spec.denoiser == "unet") + ")")
        if args.config and args.model == "all":
            raise ValueError("--config needs --model naming the family of that checkpoint, e.g. --model sdxl")
    except ValueError as error:
        parser.error(str(error))
    return args, specs


@dataclass
class Counted:
    """One model's denoiser and its step counter at the requested resolution."""

    spec: ModelSpec
    denoiser: torch.nn.Module
    counter: StepCounter
    resolution: int


def counted(spec: ModelSpec, args: argparse.Namespace) -> Counted:
    resolution = spec.resolution if args.resolution is None else args.resolution
    denoiser = build_denoiser(spec, args.config)
    counter = StepCounter(denoiser, resolution, runs_guidance(spec, denoiser), vae_scale_factor(spec),
                          text_tokens(spec))
    return Counted(spec, denoiser, counter, resolution)


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
    paper_gate = (matching_gate(counter, steps, paper["macs_tgate"]) or spec.gate_step) if paper else None

    def result(gate: int, setting: str) -> Result:
        row = make_row(spec.key, steps, gate, counter, parameter_counts(model.denoiser, steps, gate))
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


def paper_figures_at(paper: dict[str, float], gate: int, steps: int, paper_gate: int | None) -> dict[str, float]:
    """The paper's figures at a row's setting: the stock ones always, Params w/ TGATE once a step is gated (it
    does not depend on the gate), MACs w/ TGATE at the gate that reproduces it only."""
    gated = gate < steps
    return {m: value for m, value in paper.items()
            if m.endswith("_baseline") or gated and (m == "params_tgate" or gate == paper_gate)}


def v2_results(model: Counted, args: argparse.Namespace) -> list[Result]:
    """V2: the row at the V2 table's (or the requested) setting, plus the V2-matching gate where it differs."""
    spec, counter = model.spec, model.counter
    table = v2_table_setting(spec)
    base = table or V2Setting(spec.steps, spec.gate_step, registry_intervals(spec))
    steps = base.steps if args.steps is None else args.steps
    gate = base.gate if args.gate is None else args.gate
    given = (args.sp_interval, args.fi_interval, args.warm_up)
    intervals = tuple(default if value is None else value for value, default in zip(given, base.intervals))
    comparable = args.config is None and model.resolution == spec.resolution
    paper = v2_paper_counts(spec) if comparable and table is not None and steps == table.steps else None
    defaults = all(value is None for value in (args.gate, args.steps, args.resolution, args.config, *given))
    if defaults and table is not None:
        v1_note = ": v1, self-attention computed at every step" if intervals[:2] == (1, 1) else ""
        setting = f"V2 README's setting (gate {gate}, {format_intervals(intervals)}{v1_note})"
    else:
        setting = f"requested setting ({format_intervals(intervals)})"
    params = parameter_counts(model.denoiser, steps, gate)
    results = [Result(make_row(spec.key, steps, gate, counter, params, intervals), paper, setting, "the V2 table")]
    if paper is None or args.gate is not None or "macs_tgate" not in results[0].outside_tolerance():
        return results
    match = matching_gate(counter, steps, paper["macs_tgate"], intervals)
    if match is not None and match != gate:
        setting = f"gate {match} at the same intervals: the gate that gives the V2 table's MACs w/ TGATE"
        params = parameter_counts(model.denoiser, steps, match)
        results.append(Result(make_row(spec.key, steps, match, counter, params, intervals), paper, setting,
                              "the V2 table"))
    return results


def deepcache_results(model: Counted, args: argparse.Namespace) -> list[Result]:
    """DeepCache rows: at the requested setting, or (no DeepCache flags) at the paper-matching setting and the
    official defaults; plus the gate that gives the paper's DeepCache w/ TGATE where the requested one does not."""
    spec, counter = model.spec, model.counter
    official = deepcache_setting(DEEPCACHE_PAPER["settings"])
    matching = deepcache_setting(DEEPCACHE_PAPER["matching_settings"])
    given = (args.sp_interval, args.fi_interval, args.warm_up)
    intervals = tuple(default if value is None else value for value, default in zip(given, V1_INTERVALS))
    if args.deepcache_interval is None:
        settings = [(*matching, "the setting that gives the paper's DeepCache MACs (branch 1, gate 13: no "
                     "documented setting says either)"),
                    (*official, "the official defaults (cache_interval 3, cache_branch_id 0, gate 10)")]
    else:
        steps = spec.steps if args.steps is None else args.steps
        deepcache = (args.deepcache_interval, args.deepcache_branch or 0)
        gate = official[1] if args.gate is None else args.gate
        official_note = " (the official defaults)" if (steps, gate, deepcache) == official else ""
        settings = [(steps, gate, deepcache, f"requested setting{official_note}")]
    paper = deepcache_paper_counts(spec) if args.config is None and model.resolution == spec.resolution else None
    results = []
    for steps, gate, deepcache, setting in settings:
        compared = paper if paper is not None and steps == official[0] and intervals == V1_INTERVALS else None
        params = parameter_counts(model.denoiser, steps, gate)
        setting = f"DeepCache interval {deepcache[0]}, branch {deepcache[1]}: {setting}"
        results.append(Result(make_row(spec.key, steps, gate, counter, params, intervals, deepcache), compared,
                              setting, DEEPCACHE_REFERENCE))
    if args.deepcache_interval is not None and args.gate is None and compared is not None \
            and "macs_tgate" in results[0].outside_tolerance():
        match = matching_gate(counter, steps, compared["macs_tgate"], intervals, deepcache)
        if match is not None and match != gate:
            params = parameter_counts(model.denoiser, steps, match)
            setting = (f"DeepCache interval {deepcache[0]}, branch {deepcache[1]}: gate {match}, the gate that gives "
                       "the paper's DeepCache w/ TGATE (no documented setting says it)")
            results.append(Result(make_row(spec.key, steps, match, counter, params, intervals, deepcache), compared,
                                  setting, DEEPCACHE_REFERENCE))
    return results


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


def unique_rows(results: list[Result]) -> list[dict[str, Any]]:
    """Each distinct row once (an LCM row of the V2 table is its v1 row: the same setting)."""
    rows: list[dict[str, Any]] = []
    for result in results:
        if result.row not in rows:
            rows.append(result.row)
    return rows


def main(argv: Sequence[str] | None = None) -> int:
    args, specs = parse_args(argv)
    v1: list[Result] = []
    v2: list[Result] = []
    deep: list[Result] = []
    for spec in tqdm(specs, desc="counting", unit="model", file=sys.stderr):
        try:
            model = counted(spec, args)
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
