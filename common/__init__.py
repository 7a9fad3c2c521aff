"""The shared TGATE gate and pipeline mixin every model folder builds on."""

from .gate import TgateCall, check_gate_step, cross_attention_modules, gated_sampling, self_attention_modules
from .pipeline import TgateMixin
from .schedule import TgateSchedule

__all__ = [
    "TgateCall",
    "TgateMixin",
    "TgateSchedule",
    "check_gate_step",
    "cross_attention_modules",
    "gated_sampling",
    "self_attention_modules",
]
