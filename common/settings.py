"""TGATE's settings on a command line: the flags, declared once, read back as the gate's own ``TgateSchedule``.

Every script (``generate.py`` through ``common/cli.py``, and ``eval/``'s macs, latency, fid, observation and
gpu_bench) declares ``--gate --sp-interval --fi-interval --warm-up --deepcache-interval --deepcache-branch``
with :func:`add_schedule_args` and reads them with :func:`schedule_from_args`, which fills what was not given
from a default schedule (the registry model's, :func:`model_schedule`) and says what is wrong in the flags'
words. The schedule then gives the pipeline's keywords (:func:`call_keywords`) and the labels a report or a
run name shows (:func:`intervals_label`, :func:`schedule_label`, :func:`schedule_suffix`), so one setting
travels as one object from the command line to the call.
"""

from __future__ import annotations

import argparse
from typing import Any

from .models import MODELS, ModelSpec
from .schedule import TgateSchedule, check_int

V2_FIELDS = ("sp_interval", "fi_interval", "warm_up")
DEEPCACHE_FIELDS = ("deepcache_interval", "deepcache_branch")
FLAG_FIELDS = ("gate_step", *V2_FIELDS, *DEEPCACHE_FIELDS)  # TgateSchedule's fields, the pipeline's keywords
DESTS = {"gate_step": "gate"}  # the argparse name of a field where it differs (the flag is --gate)
PAPER_SETTING = "the model's paper setting"
MODELS_OWN = "the model's"
MINIMUM = {"sp_interval": 1, "fi_interval": 1, "warm_up": 0, "deepcache_interval": 1, "deepcache_branch": 0}


def flag(field: str) -> str:
    """The command-line flag of a schedule field: ``sp_interval`` -> ``--sp-interval``, ``gate_step`` -> ``--gate``."""
    return "--" + DESTS.get(field, field).replace("_", "-")


def model_schedule(spec: ModelSpec) -> TgateSchedule:
    """The registry model's setting: its paper gate and its TGATE-V2 intervals (v1 for the v1 table's models)."""
    return TgateSchedule(spec.gate_step, sp_interval=spec.sp_interval, fi_interval=spec.fi_interval,
                         warm_up=spec.warm_up)


def add_schedule_args(parser: argparse.ArgumentParser, spec: ModelSpec | None = None, *,
                      defaults: TgateSchedule | None = None, gate: bool = True, v2: bool = True,
                      deepcache: bool = True, gate_help: str = "", v2_help: str = "",
                      deepcache_help: str = "") -> None:
    """Declare the schedule's flags on ``parser`` (every one defaults to None: :func:`schedule_from_args` fills it).

    The help names the default: ``defaults``'s values where the script has fixed ones, else the model's
    (``spec``'s values where the parser serves one model). ``gate``, ``v2`` and ``deepcache`` choose the groups
    a script takes; the ``*_help`` texts add what a script does with them.
    """
    def default(field: str, words: str) -> str:
        if defaults is not None:
            return f"default: {getattr(defaults, field)}"
        return f"default: the model's, {getattr(spec, field)}" if spec is not None else f"default: {words}"

    if gate:
        parser.add_argument("--gate", type=int, metavar="N", help="gate step: guided steps before cross-attention "
                            "is cached and guidance dropped; >= --steps gates no step (stock at --sp-interval 1) "
                            f"({default('gate_step', PAPER_SETTING)}){gate_help}")
    if v2:
        group = parser.add_argument_group("TGATE-V2", "self-attention caching; sp = fi = 1 is v1 (self-attention "
                                          "computed at every step)" + v2_help)
        group.add_argument("--sp-interval", type=int, metavar="N", help="before the gate, self-attention is "
                           "computed and cached every N steps after the warm-up and returns its cache in between; 1 = "
                           "every step, v1. Above 1, even a gate >= --steps is not stock "
                           f"({default('sp_interval', MODELS_OWN + ': 1, or 3 for pixart_sigma')})")
        group.add_argument("--fi-interval", type=int, metavar="N", help="after the gate, self-attention is computed "
                           f"and cached every N steps; 1 = every step ({default('fi_interval', MODELS_OWN + ', 1')})")
        group.add_argument("--warm-up", type=int, metavar="N", help="the first N steps compute self-attention "
                           f"without caching it ({default('warm_up', MODELS_OWN + ': 0, or 2 for pixart_sigma')})")
    if deepcache:
        unets = ", ".join(key for key, model in MODELS.items() if model.denoiser == "unet" and key != "toy")
        group = parser.add_argument_group("DeepCache", f"UNet models only ({unets}): the UNet runs in full every N "
                                          "steps and otherwise only its shallow branch B; with a gate, DeepCache is "
                                          "reset at gate - 1 and gate as in the official TGATE + DeepCache code"
                                          + deepcache_help)
        interval = f"default: {defaults.deepcache_interval}" if defaults else "official default 3; default: none"
        group.add_argument("--deepcache-interval", type=int, metavar="N",
                           help=f"steps between full UNet forwards ({interval})")
        group.add_argument("--deepcache-branch", type=int, metavar="B", help="DeepCache's cache_branch_id, the "
                           "shallow branch of a partial forward (default: "
                           f"{defaults.deepcache_branch if defaults else 0}, the official one; 1 gives the paper's "
                           "MACs; needs --deepcache-interval)")


def given(args: argparse.Namespace, *fields: str) -> dict[str, Any]:
    """The schedule fields among ``fields`` (default: all) given on the command line."""
    names = fields or FLAG_FIELDS
    return {field: getattr(args, DESTS.get(field, field)) for field in names
            if getattr(args, DESTS.get(field, field), None) is not None}


def check_gate_flag(gate: int, stock_hint: str = "--gate >= --steps") -> int:
    """``--gate`` checked in the command line's words: the library's hint, ``gate_step=None``, is no flag."""
    if gate < 1:
        raise ValueError(f"--gate must be >= 1 (the guided steps before the gate), got {gate}; "
                         f"for the stock pipeline use {stock_hint}")
    return gate


def check_deepcache_model(spec: ModelSpec) -> None:
    """A ``ValueError`` for DeepCache on a model without a UNet (the PixArt transformers)."""
    if spec.denoiser != "unet":
        unets = ", ".join(key for key, model in MODELS.items() if model.denoiser == "unet")
        raise ValueError(f"DeepCache caches a UNet's deep blocks and {spec.title} is a transformer ({spec.key} has "
                         f"no UNet): --deepcache-interval works with the UNet models ({unets})")


def schedule_from_args(args: argparse.Namespace, defaults: TgateSchedule, spec: ModelSpec | None = None, *,
                       stock_hint: str = "--gate >= --steps", deepcache_minimum: int = 1) -> TgateSchedule:
    """The schedule the flags ask for, ``defaults``'s values where a flag was not given (or not declared).

    A ``ValueError`` in the flags' words for a bad value, a DeepCache branch without an interval, or
    DeepCache on ``spec`` without a UNet. Without a gate (``defaults.gate_step`` None and no ``--gate``) the
    TGATE-V2 defaults do not apply: only given intervals count (and a gate-less schedule refuses them).
    """
    values = given(args)
    if "gate_step" in values:
        check_gate_flag(values["gate_step"], stock_hint)
    for field in (*V2_FIELDS, "deepcache_branch"):
        if field in values:
            check_int(flag(field), values[field], MINIMUM[field])
    if "deepcache_interval" in values:
        check_int("--deepcache-interval", values["deepcache_interval"], deepcache_minimum)
    elif "deepcache_branch" in values and defaults.deepcache_interval is None:
        raise ValueError("--deepcache-branch needs --deepcache-interval (e.g. --deepcache-interval 3)")
    gate = values.get("gate_step", defaults.gate_step)
    settings = {field: values.get(field, getattr(defaults, field) if gate is not None else MINIMUM[field])
                for field in V2_FIELDS}
    settings.update({field: values.get(field, getattr(defaults, field)) for field in DEEPCACHE_FIELDS})
    try:
        schedule = TgateSchedule(gate, **settings)
    except ValueError as error:  # the library's words name its arguments: say the flags instead
        raise ValueError(str(error).replace("sp_interval, fi_interval and warm_up", "--sp-interval, --fi-interval "
                                            "and --warm-up").replace("a gate_step", "a gate (--gate)")) from None
    if spec is not None and schedule.uses_deepcache:
        check_deepcache_model(spec)
    return schedule


def call_keywords(schedule: TgateSchedule) -> dict[str, Any]:
    """The TGATE pipeline's keywords for ``schedule``: ``gate_step``, the V2 intervals with a gate, DeepCache's
    pair with an interval (a stock call gets ``gate_step=None`` only)."""
    keywords: dict[str, Any] = {"gate_step": schedule.gate_step}
    if schedule.gate_step is not None:
        keywords.update({field: getattr(schedule, field) for field in V2_FIELDS})
    if schedule.deepcache_interval is not None:
        keywords.update({field: getattr(schedule, field) for field in DEEPCACHE_FIELDS})
    return keywords


def schedule_argv(schedule: TgateSchedule) -> list[str]:
    """The flags that give ``schedule`` back through :func:`schedule_from_args` (a script driving another)."""
    return [item for field, value in call_keywords(schedule).items() if value is not None
            for item in (flag(field), str(value))]


def intervals_label(schedule: TgateSchedule) -> str:
    """'sp 5, fi 1, warm-up 2'."""
    return f"sp {schedule.sp_interval}, fi {schedule.fi_interval}, warm-up {schedule.warm_up}"


def deepcache_label(schedule: TgateSchedule) -> str:
    """'DeepCache interval 3, branch 0', or '' without DeepCache."""
    if schedule.deepcache_interval is None:
        return ""
    return f"DeepCache interval {schedule.deepcache_interval}, branch {schedule.deepcache_branch}"


def schedule_label(schedule: TgateSchedule) -> str:
    """'stock', 'gate 10', 'gate 10, sp 5, fi 1, warm-up 2'; DeepCache's ', DeepCache interval 3, branch 0' after
    it ('DeepCache interval 3, branch 0' alone for DeepCache without TGATE)."""
    deep = deepcache_label(schedule)
    if schedule.gate_step is None:
        return deep or "stock"
    text = f"gate {schedule.gate_step}" + ("" if schedule.is_v1 else f", {intervals_label(schedule)}")
    return text + (f", {deep}" if deep else "")


def schedule_suffix(schedule: TgateSchedule) -> str:
    """A file-name form: 'baseline', 'gate10', 'gate10_sp5_fi1_wu2'; '_dc3_br0' after it with DeepCache."""
    name = "baseline" if schedule.gate_step is None else f"gate{schedule.gate_step}"
    if schedule.gate_step is not None and not schedule.is_v1:
        name += f"_sp{schedule.sp_interval}_fi{schedule.fi_interval}_wu{schedule.warm_up}"
    if schedule.deepcache_interval is not None:
        name += f"_dc{schedule.deepcache_interval}_br{schedule.deepcache_branch}"
    return name
