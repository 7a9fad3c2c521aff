"""eval/macs.py's references: the paper's figures (v1 table, official V2 table, DeepCache rows) and how a row
compares with them (:class:`Result`), and the gate that reproduces a printed figure (:func:`matching_gate`)."""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

from common.models import PAPER, ModelSpec
from common.schedule import TgateSchedule
from common.step_macs import StepCounter

# A figure "matches" the paper's when within this relative distance of the printed value.
TOLERANCE = 1e-3
UNITS = {"T": 1e12, "G": 1e9, "B": 1e9, "M": 1e6, "K": 1e3}
METRICS = ("macs_baseline", "macs_tgate", "params_baseline", "params_tgate")
V2_METRICS = ("macs_baseline", "macs_tgate")  # the V2 table has no parameter column
HEADERS = {"macs_baseline": "MACs", "macs_tgate": "MACs w/ TGATE",
           "params_baseline": "Params", "params_tgate": "Params w/ TGATE"}
DEEPCACHE_HEADERS = {"macs_baseline": "MACs DeepCache", "macs_tgate": "DeepCache+TGATE"}
DEEPCACHE_REFERENCE = "the paper's DeepCache rows"
HOW_MANY = {1: "the one figure", 2: "both", 3: "all three", 4: "all four"}
V2_TABLE = PAPER["v2"]["table_settings"]  # the official V2 README's settings of each model of its table
DEEPCACHE_PAPER = PAPER["v2"]["deepcache"]  # the official README's DeepCache rows (SDXL) and their settings


def parse_count(text: str) -> float:
    """'16.938T' -> 1.6938e13; '859.520M' -> 8.5952e8."""
    return float(text[:-1]) * UNITS[text[-1]]


def paper_counts(spec: ModelSpec) -> dict[str, float]:
    """The paper's MACs and parameters of ``spec`` under the row keys' names."""
    stock, tgate = spec.paper_row(tgate=False), spec.paper_row(tgate=True)
    return {
        "macs_baseline": parse_count(stock["macs"]),
        "macs_tgate": parse_count(tgate["macs"]),
        "params_baseline": parse_count(stock["params"]),
        "params_tgate": parse_count(tgate["params"]),
    }


@dataclass(frozen=True)
class TableSetting:
    """A model's setting in one of the official tables: steps and the schedule (gate, intervals, DeepCache)."""

    steps: int
    schedule: TgateSchedule


def v2_table_setting(spec: ModelSpec) -> TableSetting | None:
    settings = V2_TABLE.get(spec.key)
    if settings is None:
        return None
    return TableSetting(settings["steps"], TgateSchedule(settings["gate_step"], sp_interval=settings["sp_interval"],
                                                         fi_interval=settings["fi_interval"],
                                                         warm_up=settings["warm_up"]))


def v2_paper_counts(spec: ModelSpec) -> dict[str, float] | None:
    """The V2 table's MACs of ``spec`` (it has no parameter column), None where it has no such model."""
    stock, tgate = spec.paper_v2_row(tgate=False), spec.paper_v2_row(tgate=True)
    if stock is None or tgate is None:
        return None
    return {"macs_baseline": stock["macs_T"] * UNITS["T"], "macs_tgate": tgate["macs_T"] * UNITS["T"]}


def deepcache_setting(settings: dict[str, int]) -> TableSetting:
    """Steps and schedule (gate, DeepCache interval and branch) of a ``DEEPCACHE_PAPER`` settings entry."""
    return TableSetting(settings["steps"], TgateSchedule(settings["gate_step"],
                                                         deepcache_interval=settings["deepcache_interval"],
                                                         deepcache_branch=settings["deepcache_branch"]))


def deepcache_paper_counts(spec: ModelSpec) -> dict[str, float] | None:
    """The paper's DeepCache MACs (DeepCache alone, DeepCache w/ TGATE), None for any model but its SDXL."""
    if spec.key != DEEPCACHE_PAPER["model"]:
        return None
    rows = {row["tgate"]: row["macs_T"] * UNITS["T"] for row in DEEPCACHE_PAPER["rows"]}
    return {"macs_baseline": rows[False], "macs_tgate": rows[True]}


def deviation(ours: int, paper: float) -> float:
    return (ours - paper) / paper


def matching_gate(counter: StepCounter, steps: int, paper_macs_tgate: float, schedule: TgateSchedule) -> int | None:
    """The gate (with ``schedule``'s intervals and DeepCache) whose TGATE MACs are nearest the paper's, if within
    ``TOLERANCE``."""
    off = {gate: abs(deviation(counter.run_macs(steps, replace(schedule, gate_step=gate))[1], paper_macs_tgate))
           for gate in range(1, steps + 1)}
    best = min(off, key=off.get)
    return best if off[best] <= TOLERANCE else None


def paper_figures_at(paper: dict[str, float], gate: int, steps: int, paper_gate: int | None) -> dict[str, float]:
    """The paper's figures at a row's setting: the stock ones always, Params w/ TGATE once a step is gated (it
    does not depend on the gate), MACs w/ TGATE at the gate that reproduces it only."""
    gated = gate < steps
    return {m: value for m, value in paper.items()
            if m.endswith("_baseline") or gated and (m == "params_tgate" or gate == paper_gate)}


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
