"""MACs that count attention: one forward counted by ``torch.utils.flop_counter.FlopCounterMode``, per module.

Convention (say it beside every figure): multiply-accumulates of the matrix products that actually run (linear
layers, convolutions, and attention's ``Q K^T`` and ``A V``, ``2 N M d`` FLOPs each, inside
``scaled_dot_product_attention`` or written out), FLOPs / 2; elementwise operations, norms and softmax are not
counted. calflops (eval/macs.py, the paper-table reproduction's convention) counts the same linear layers but
skips ``scaled_dot_product_attention``: at 32,760 tokens (Wan2.1-1.3B, 832x480, 81 frames) that is 99T of a
141.5T forward. Counting runs on the ``meta`` device (no weights, no memory) in about a second.
:func:`attention_flop_counter` is the counter every count here uses: torch's, plus the formula torch 2.14 lacks for
the CPU's fused attention kernel (``_scaled_dot_product_flash_attention_for_cpu``), so that a run on real CPU
tensors (``eval/run_meter.py``) counts attention as the meta device's decomposed ``bmm``s do.

For TGATE: a forward after the gate skips every cross-attention module (it returns its cache), so it costs
:attr:`ForwardMacs.without_cross_attention`. :func:`model_sampling_macs` counts a run the one way every MACs
figure here is counted, step by step through the gate's hooks (``common.step_macs.StepCounter``), on the guidance
batch of two: one batched call (LTX-Video, Sana, HunyuanDiT), or Wan's two calls of one, the same MACs.

>>> from common.flop_count import model_sampling_macs
>>> model_sampling_macs("wan")  # Wan2.1-T2V-1.3B, 832x480, 81 frames, 50 steps, gate 20  # doctest: +SKIP
{'stock': 14150..., 'tgate': 9716..., ...}
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

import torch
from diffusers import HunyuanDiT2DModel, LTXVideoTransformer3DModel, SanaTransformer2DModel, WanTransformer3DModel
from torch.utils.flop_counter import FlopCounterMode, sdpa_flop_count

CONVENTION = ("torch FlopCounterMode MACs (FLOPs / 2): linear layers, convolutions and attention's QK^T and AV "
              "matmuls; not elementwise ops, norms, softmax")
# The cross-attention modules TGATE caches, per architecture (module names inside the transformer).
CROSS_ATTENTION = {
    WanTransformer3DModel: r"blocks\.\d+\.attn2",
    LTXVideoTransformer3DModel: r"transformer_blocks\.\d+\.attn2",
    SanaTransformer2DModel: r"transformer_blocks\.\d+\.attn2",
    HunyuanDiT2DModel: r"blocks\.\d+\.attn2",
}


# Fused attention kernels FlopCounterMode has no formula for (it counts them as 0 FLOPs): the CPU's flash kernel,
# what scaled_dot_product_attention runs on CPU tensors. CUDA's kernels and the math fallback (bmm)
# are counted by torch itself.
def _sdpa_flops(query_shape, key_shape, value_shape, *args: Any, out_shape: Any = None, **kwargs: Any) -> int:
    return sdpa_flop_count(query_shape, key_shape, value_shape)  # torch's formula for its CUDA kernels


UNCOUNTED_ATTENTION = {torch.ops.aten._scaled_dot_product_flash_attention_for_cpu: _sdpa_flops}


def attention_flop_counter(**kwargs: Any) -> FlopCounterMode:
    """``FlopCounterMode(**kwargs)`` that also counts :data:`UNCOUNTED_ATTENTION` (``Q K^T`` and ``A V``)."""
    return FlopCounterMode(**{"display": False, **kwargs}, custom_mapping=UNCOUNTED_ATTENTION)


@dataclass(frozen=True)
class MacCount:
    total: int  # MACs of the whole forward
    per_module: dict[str, int]  # MACs inside each module (its submodules included), by name within the root

    def inside(self, pattern: str) -> int:
        """MACs inside the modules whose whole name matches ``pattern`` (a regular expression), counted once."""
        matched = [name for name in self.per_module if re.fullmatch(pattern, name)]
        outermost = [name for name in matched if not any(name.startswith(other + ".") for other in matched)]
        return sum(self.per_module[name] for name in outermost)


@dataclass(frozen=True)
class ForwardMacs:
    total: int
    cross_attention: int  # inside the cross-attention modules (projections and attention)

    @property
    def without_cross_attention(self) -> int:
        return self.total - self.cross_attention


def count_macs(module: torch.nn.Module, inputs: dict[str, Any]) -> MacCount:
    """MACs of ``module(**inputs)`` (one forward, no gradient), in total and per submodule."""
    with attention_flop_counter(depth=None) as counter, torch.no_grad():
        module(**inputs)
    root = type(module).__name__
    per_module = {}
    for name, by_op in counter.get_flop_counts().items():
        if name == "Global" or not name.startswith(root + "."):
            continue
        per_module[name.removeprefix(root + ".")] = sum(by_op.values()) // 2
    return MacCount(total=counter.get_total_flops() // 2, per_module=per_module)


def cross_attention_pattern(denoiser: torch.nn.Module) -> str:
    for cls, pattern in CROSS_ATTENTION.items():
        if isinstance(denoiser, cls):
            return pattern
    raise TypeError(f"no cross-attention pattern for {type(denoiser).__name__}; known: "
                    + ", ".join(cls.__name__ for cls in CROSS_ATTENTION))


def forward_macs(denoiser: torch.nn.Module, inputs: dict[str, Any]) -> ForwardMacs:
    """One forward's MACs, and those of its cross-attention modules (what a gated forward skips)."""
    count = count_macs(denoiser, inputs)
    return ForwardMacs(total=count.total, cross_attention=count.inside(cross_attention_pattern(denoiser)))


def expert_switch_step(spec, steps: int) -> int | None:
    """The first step of Wan 2.2's low-noise expert (``transformer_2``: timesteps below ``boundary_ratio * 1000``)
    with ``spec``'s scheduler config; None for a model with one transformer."""
    import json

    from diffusers import UniPCMultistepScheduler

    index = spec.config_dir / "model_index.json"
    ratio = json.loads(index.read_text()).get("boundary_ratio") if index.is_file() else None
    if ratio is None:
        return None
    scheduler = UniPCMultistepScheduler.from_config(
        UniPCMultistepScheduler.load_config(spec.component_config_dir("scheduler")), **dict(spec.scheduler_kwargs))
    scheduler.set_timesteps(steps)
    boundary = ratio * scheduler.config.num_train_timesteps
    return next((i for i, t in enumerate(scheduler.timesteps) if t < boundary), None)


def model_sampling_macs(key: str, steps: int | None = None, gate_step: int | None = None,
                        height: int | None = None, width: int | None = None, frames: int | None = None) -> dict:
    """Stock and TGATE MACs of one guided run of the registry model ``key`` at its defaults (or those given),
    counted with attention (:data:`CONVENTION`), for one prompt; with the per-forward figures."""
    from .architectures import build_denoiser, text_tokens, vae_factors
    from .dit_architectures import dit_denoiser_inputs, family_vae, is_dit
    from .models import get_model
    from .schedule import TgateSchedule
    from .step_macs import StepCounter, flop_counter_macs

    spec = get_model(key)
    denoiser = build_denoiser(spec)
    if not is_dit(denoiser):
        raise ValueError(f"{key}: attention-counting MACs are for the DiT models; eval/macs.py counts the others")
    default_height, default_width = spec.size
    height, width = height or default_height, width or default_width
    frames = frames or spec.frames or 1
    steps = steps or spec.steps
    gate_step = spec.gate_step if gate_step is None else gate_step
    two_calls = isinstance(denoiser, WanTransformer3DModel)  # Wan guides with two batch-1 calls
    # the spec's own VAE factors and text length where its configs say them (the Wan toy), else the family's
    shapes = dict(height=height, width=width, frames=frames, vae=vae_factors(spec), text_tokens=text_tokens(spec))
    single = forward_macs(denoiser, dit_denoiser_inputs(denoiser, 1, **shapes))
    counter = StepCounter(denoiser, None, True, count=flop_counter_macs,
                          inputs=dit_denoiser_inputs(denoiser, 2, **shapes))
    schedule = TgateSchedule(gate_step if gate_step is not None and gate_step < steps else None)
    stock, tgate = counter.run_macs(steps, schedule)
    switch = expert_switch_step(spec, steps)
    if schedule.gate_step is not None and switch is not None and schedule.gate_step <= switch:
        # Wan 2.2's second expert first runs after the gate: that step runs guided, to fill its caches
        tgate += counter.stock_step() - counter.step_macs(schedule, switch + 1)[switch]
    return {
        "model": key, "height": height, "width": width, "frames": frames, "steps": steps, "gate_step": gate_step,
        # None: the family's own (HunyuanDiT's two text lengths)
        "text_tokens": shapes["text_tokens"], "vae_factors": list(family_vae(denoiser, shapes["vae"])),
        "guidance": "two calls of batch 1" if two_calls else "one call of batch 2",
        "forward": single.total, "forward_without_cross_attention": single.without_cross_attention,
        "guided_step": counter.stock_step(), "expert_switch_step": switch, "stock": stock, "tgate": tgate,
        "speedup": stock / tgate, "convention": CONVENTION,
    }
