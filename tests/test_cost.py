"""The cost of TGATE's caches: what a gated call holds after the caching step is what the design says.

DESIGN.md: at step ``g - 1`` every cross-attention module caches its output, the mean of the guidance halves:
one tensor of ``B x tokens x channels`` per module, ``tokens`` the latent positions at the module's level of the
UNet and ``channels`` its output width; v1 caches no self-attention; TGATE-V2 also caches each self-attention
module (``attn1``) output, of the same shape. The reference below is computed from the UNet's config, not typed.
"""

import re

import pytest
import torch

from common.gate import gated_sampling
from common.models import MODELS
from common.schedule import TgateSchedule


def as_tuple(value, blocks):
    return tuple(value) if isinstance(value, (list, tuple)) else (value,) * blocks


def expected_attention(config, latent: int, batch: int) -> dict[str, tuple[int, int, int]]:
    """Every transformer block's attention path (``...transformer_blocks.{t}``) -> the shape of its output
    (cached at the gate for one guidance half), from the UNet config alone: down block ``i`` works at
    ``latent / 2**i``, the mid block at the lowest level, up block ``j`` at the level ``levels - 1 - j``."""
    channels = tuple(config.block_out_channels)
    levels = len(channels)
    layers = as_tuple(config.transformer_layers_per_block, levels)
    shapes = {}

    def add(prefix: str, level: int, width: int, attentions: int, depth: int) -> None:
        side = latent // 2**level
        for a in range(attentions):
            for t in range(depth):
                shapes[f"{prefix}.attentions.{a}.transformer_blocks.{t}"] = (batch, side * side, width)

    for i, kind in enumerate(config.down_block_types):
        if kind.startswith("CrossAttn"):
            add(f"down_blocks.{i}", i, channels[i], as_tuple(config.layers_per_block, levels)[i], layers[i])
    if config.mid_block_type and "CrossAttn" in config.mid_block_type:
        add("mid_block", levels - 1, channels[-1], 1, layers[-1])
    reversed_layers = tuple(reversed(layers))
    for j, kind in enumerate(config.up_block_types):
        if kind.startswith("CrossAttn"):
            width = channels[levels - 1 - j]
            add(f"up_blocks.{j}", levels - 1 - j, width, as_tuple(config.layers_per_block, levels)[j] + 1,
                reversed_layers[j])
    return shapes


def caches_after_the_caching_step(unet, schedule: TgateSchedule, batch: int, latent: int, text_tokens: int = 7):
    """Drive ``gated_sampling`` by hand: steps 0 .. gate - 1 with a guidance batch of ``2 * batch``; the caches
    (module name -> tensor) and every other value the call holds."""
    generator = torch.Generator().manual_seed(0)
    config = unet.config
    inputs = dict(
        sample=torch.randn(2 * batch, config.in_channels, latent, latent, generator=generator),
        timestep=torch.tensor(500),
        encoder_hidden_states=torch.randn(2 * batch, text_tokens, config.cross_attention_dim, generator=generator),
    )
    names = {id(module): name for name, module in unet.named_modules()}
    with torch.no_grad(), gated_sampling(unet, schedule, guided=True) as call:
        call.follows_loop = True
        for step in range(schedule.gate_step):
            call.step = step
            unet(**inputs)
        # one cache per call of the module in an evaluation: each module here runs once per evaluation
        assert all(len(value) == 1 for value in call.caches.values() if value is not None)
        held = {names[key]: value[0] for key, value in call.caches.items() if value is not None}
        keys = set(call.caches)
    return held, keys


@pytest.fixture(scope="module")
def unet():
    return MODELS["sd15"].tiny_components()["unet"].eval()


@pytest.mark.parametrize("batch", [1, 3])
def test_v1_holds_one_cross_attention_cache_per_module_of_batch_tokens_channels(unet, batch):
    latent = unet.config.sample_size
    held, keys = caches_after_the_caching_step(unet, TgateSchedule(gate_step=2), batch, latent)
    reference = {f"{path}.attn2": shape for path, shape in expected_attention(unet.config, latent, batch).items()}
    assert reference  # the tiny UNet has cross-attention at more than one level
    assert len({shape for shape in reference.values()}) > 1
    assert {name: tuple(cache.shape) for name, cache in held.items()} == reference  # nothing else held
    # a slot per cross-attention module and nothing else: a v1 call hooks no self-attention or DeepCache block
    assert keys == {id(m) for name, m in unet.named_modules() if re.search(r"\.attn2$", name)}
    held_bytes = sum(cache.numel() * cache.element_size() for cache in held.values())
    per_image = sum(b * t * c for b, t, c in reference.values()) // batch * torch.float32.itemsize
    assert held_bytes == batch * per_image


def test_v2_also_holds_one_self_attention_cache_per_attn1_of_the_same_shape(unet):
    batch, latent = 2, unet.config.sample_size
    # fi_interval 2: step 3 reuses self-attention, so the caching step 2 keeps it (schedule.py keeps a
    # self-attention cache only when the next step reads it: at fi_interval 1 none is held after the gate)
    v2 = TgateSchedule(gate_step=3, sp_interval=2, fi_interval=2, warm_up=1)
    held, _ = caches_after_the_caching_step(unet, v2, batch, latent)
    expected = expected_attention(unet.config, latent, batch)
    reference = {f"{path}.{kind}": shape for path, shape in expected.items() for kind in ("attn1", "attn2")}
    assert {name: tuple(cache.shape) for name, cache in held.items()} == reference


def test_the_caches_grow_with_the_latent_as_the_reference_says(unet):
    latent = 2 * unet.config.sample_size
    held, _ = caches_after_the_caching_step(unet, TgateSchedule(gate_step=1), 1, latent)
    reference = {f"{path}.attn2": shape for path, shape in expected_attention(unet.config, latent, 1).items()}
    assert {name: tuple(cache.shape) for name, cache in held.items()} == reference
