"""Shared TGATE code: the gate (hooks for one sampling run) and the pipeline mixin every model folder uses."""

from .gate import GateState, check_gate_step, cross_attention_modules, gated_sampling
from .pipeline import TgateMixin

__all__ = ["GateState", "TgateMixin", "check_gate_step", "cross_attention_modules", "gated_sampling"]
