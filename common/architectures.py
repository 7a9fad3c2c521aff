"""The real denoiser of a registry model, built from its architecture config without any weights.

``build_denoiser`` makes the UNet or PixArt transformer of a checkpoint from ``model_configs/<key>/`` (or
from a hub id / local folder holding a config): on the ``meta`` device to count operations and parameters
with no memory, or with random weights on a real device to time it. ``denoiser_inputs`` makes the inputs a
pipeline's sampling loop hands that denoiser at a given image resolution, for each family:

- SD-1.5 / SD-2.1: latents and 77 CLIP token embeddings of ``cross_attention_dim``;
- SDXL: also the pooled text embedding and the 6 size/crop ``time_ids`` (``added_cond_kwargs``);
- LCM-SDXL: also the guidance-scale embedding ``timestep_cond`` (``time_cond_proj_dim``);
- PixArt-alpha / PixArt-LCM: 120 T5 token embeddings with their attention mask, and the resolution and
  aspect-ratio conditions where the config uses them;
- PixArt-Sigma: 300 T5 token embeddings with their mask (its pipeline's ``max_sequence_length``), no
  resolution or aspect-ratio conditions (its config turns them off).

``text_tokens(spec)`` says how many text tokens the pipeline of ``spec`` hands its denoiser, ``vae_scale_factor``
and ``vae_factors`` how many pixels (and frames) make one latent; ``counts_attention(spec)`` whether its MACs are
counted with attention (the cross-attention DiTs: ``common/flop_count.py``).
"""

from __future__ import annotations

import inspect
import json
from pathlib import Path
from typing import Any

import torch
from diffusers import PixArtTransformer2DModel, UNet2DConditionModel

from .dit_architectures import DIT_CLASSES, dit_denoiser_inputs, is_dit, size_multiple
from .models import ModelSpec

# Every VAE of the table downsamples images 8x (four levels: 2 ** 3) into latents.
VAE_SCALE_FACTOR = 8
# Text tokens the pipelines hand the denoiser: CLIP pads to 77, PixArt-Alpha's T5 to 120 (PixArt-Sigma's to 300:
# ``text_tokens`` reads a pipeline's own ``max_sequence_length``).
CLIP_TOKENS = 77
T5_TOKENS = 120
# SDXL's time_ids: original size (2), crop top-left (2), target size (2).
SDXL_TIME_IDS = 6
# The class a config's ``_class_name`` stands for; PixArt checkpoints still name the legacy Transformer2DModel.
DENOISER_CLASSES = {
    "UNet2DConditionModel": UNet2DConditionModel,
    "Transformer2DModel": PixArtTransformer2DModel,
    "PixArtTransformer2DModel": PixArtTransformer2DModel,
    **DIT_CLASSES,  # Wan, LTX-Video, Sana, HunyuanDiT: see dit_architectures
}


class ConfigNotFoundError(RuntimeError):
    """No denoiser config could be read from the given hub id or folder."""


def denoiser_config(spec: ModelSpec, source: str | Path | None = None) -> dict[str, Any]:
    """The denoiser's config: the project's copy for ``spec``, or the one of ``source`` (hub id or folder).

    ``source`` may be a pipeline (the config in its ``unet/`` or ``transformer/`` subfolder) or the denoiser
    itself (``config.json`` at its root, as in ``latent-consistency/lcm-sdxl``).
    """
    # load_config only reads config.json (any ConfigMixin class does); the class is chosen from its content.
    if source is None:
        return UNet2DConditionModel.load_config(spec.config_dir / spec.denoiser)
    errors = []
    # The Hugging Face cache first: a hub id already there needs no network (whose retries take a minute offline).
    for local_files_only in (True, False):
        for subfolder in (spec.denoiser, None):
            try:
                return UNet2DConditionModel.load_config(
                    str(source), subfolder=subfolder, local_files_only=local_files_only
                )
            except (OSError, ValueError) as error:  # diffusers raises EnvironmentError (OSError) when not found
                errors.append(str(error).strip().splitlines()[0].rstrip(".") if str(error).strip() else repr(error))
    raise ConfigNotFoundError(
        f"no {spec.denoiser} config in '{source}' (looked for '{spec.denoiser}/config.json' and 'config.json'): "
        f"{errors[-1]}. A hub id works offline once its config is in the Hugging Face cache (set "
        "HF_HUB_OFFLINE=1 to skip the network); otherwise pass a local folder."
    )


def denoiser_class(config: dict[str, Any]) -> type[torch.nn.Module]:
    name = config.get("_class_name")
    if name not in DENOISER_CLASSES:
        raise ValueError(f"unsupported denoiser class {name!r}; supported: {', '.join(DENOISER_CLASSES)}")
    return DENOISER_CLASSES[name]


def build_denoiser(
    spec: ModelSpec,
    source: str | Path | None = None,
    device: str | torch.device = "meta",
    dtype: torch.dtype = torch.float32,
) -> torch.nn.Module:
    """The real denoiser of ``spec`` (architecture from ``source`` if given) with random weights, in eval mode.

    On the ``meta`` device (the default) no memory is allocated: shapes, parameter counts and operation
    counts are exact, values do not exist.
    """
    config = denoiser_config(spec, source)
    with torch.device(device):
        denoiser = denoiser_class(config).from_config(config)
    if next(denoiser.parameters()).dtype != dtype:  # cast only when asked: diffusers warns on every cast
        denoiser = denoiser.to(dtype=dtype)
    return denoiser.eval()


def vae_config(spec: ModelSpec) -> dict[str, Any] | None:
    """``spec``'s VAE config, None where its config folder has none (the LCM folders hold their denoiser only)."""
    config = spec.component_config_dir("vae") / "config.json"
    return json.loads(config.read_text()) if config.is_file() else None


def vae_scale_factor(spec: ModelSpec) -> int:
    """Pixels per latent of ``spec``'s VAE, as diffusers' pipelines compute it: 2 ** (VAE levels - 1), or
    ``scale_factor_spatial`` where the config says it (``AutoencoderKLWan``: WanPipeline reads it).

    The LCM config folders hold their denoiser only; their VAEs (SDXL's, PixArt's) are the table's 8x.
    """
    config = vae_config(spec)
    if config is None:
        return VAE_SCALE_FACTOR
    if "scale_factor_spatial" in config:
        return config["scale_factor_spatial"]
    return 2 ** (len(config["block_out_channels"]) - 1)


def vae_factors(spec: ModelSpec) -> tuple[int, int] | None:
    """(space, time): pixels and frames per latent where ``spec``'s VAE config says both (``AutoencoderKLWan``'s
    ``scale_factor_spatial`` / ``scale_factor_temporal``: Wan 2.1 8x / 4x, the Wan toy 2x / 2x); None where it does
    not (``dit_architectures`` then takes the family's released VAE)."""
    config = vae_config(spec) or {}
    if "scale_factor_spatial" in config and "scale_factor_temporal" in config:
        return config["scale_factor_spatial"], config["scale_factor_temporal"]
    return None


def counts_attention(spec: ModelSpec) -> bool:
    """Whether ``spec``'s MACs are counted with attention (torch's FlopCounterMode): its denoiser is a
    cross-attention DiT (``dit_architectures.DIT_CLASSES``: Wan, the Wan toy, LTX-Video, Sana, HunyuanDiT)."""
    return denoiser_config(spec).get("_class_name") in DIT_CLASSES


def text_tokens(spec: ModelSpec) -> int | None:
    """Text tokens ``spec``'s pipeline hands its denoiser, where its ``__call__`` pads prompts to a
    ``max_sequence_length``: the registry's call default (``spec.call_kwargs``: the Wan toy's 16) or the
    pipeline's (PixArt-Alpha 120, PixArt-Sigma 300, Wan 512); None for the CLIP pipelines (77 positions)."""
    given = dict(spec.call_kwargs).get("max_sequence_length")
    if given is not None:
        return given
    for cls in spec.pipeline_class.__mro__:
        if "__call__" in vars(cls):
            parameter = inspect.signature(cls.__call__).parameters.get("max_sequence_length")
            if parameter is not None and isinstance(parameter.default, int):
                return parameter.default
    return None


def latent_multiple(denoiser: torch.nn.Module, vae_factor: int = VAE_SCALE_FACTOR) -> int:
    """Image sizes must be multiples of this: the VAE factor, times the patch size of a transformer."""
    if is_dit(denoiser):  # these families' VAE factors are their own (dit_architectures)
        return size_multiple(denoiser)
    patch = denoiser.config.patch_size if isinstance(denoiser, PixArtTransformer2DModel) else 1
    return vae_factor * patch


def denoiser_inputs(
    denoiser: torch.nn.Module,
    batch: int,
    resolution: int,
    device: str | torch.device | None = None,
    dtype: torch.dtype | None = None,
    generator: torch.Generator | None = None,
    vae_factor: int = VAE_SCALE_FACTOR,
    tokens: int | None = None,
) -> dict[str, Any]:
    """Keyword arguments of one denoiser call at ``resolution`` x ``resolution`` pixels for ``batch`` samples.

    The shapes are those the diffusers pipelines use (see the module docstring); values are random (none on
    the ``meta`` device). Device and dtype default to the denoiser's; ``vae_factor`` is pixels per latent;
    ``tokens`` is the text length (default: 120 T5 tokens for a PixArt transformer, 77 CLIP tokens for a UNet;
    ``text_tokens(spec)`` gives a pipeline's own).
    """
    if is_dit(denoiser):  # square images; videos of the spec's frames: dit_architectures.dit_denoiser_inputs
        return dit_denoiser_inputs(denoiser, batch, resolution, resolution, device=device, dtype=dtype,
                                   generator=generator)
    parameter = next(denoiser.parameters())
    device = parameter.device if device is None else torch.device(device)
    dtype = parameter.dtype if dtype is None else dtype
    multiple = latent_multiple(denoiser, vae_factor)
    if resolution < multiple or resolution % multiple:
        raise ValueError(f"the resolution must be a positive multiple of {multiple} pixels, got {resolution}")
    config = denoiser.config
    latent = resolution // vae_factor

    def random(*shape: int) -> torch.Tensor:
        if device.type == "meta":
            return torch.empty(shape, device=device, dtype=dtype)
        return torch.randn(shape, generator=generator, dtype=dtype).to(device)

    # The latents first, as the pipelines pass them (TGATE's guidance cut reads the batch size off the first tensor).
    latents = random(batch, config.in_channels, latent, latent)
    timestep = torch.full((batch,), 999, device=device)
    if isinstance(denoiser, PixArtTransformer2DModel):
        sizes = {"resolution": None, "aspect_ratio": None}
        if denoiser.use_additional_conditions:
            sizes = {
                "resolution": torch.full((batch, 2), float(resolution), device=device, dtype=dtype),
                "aspect_ratio": torch.ones(batch, 1, device=device, dtype=dtype),
            }
        return {
            "hidden_states": latents,
            "timestep": timestep,
            "encoder_hidden_states": random(batch, tokens or T5_TOKENS, config.caption_channels),
            "encoder_attention_mask": torch.ones(batch, tokens or T5_TOKENS, device=device, dtype=dtype),
            "added_cond_kwargs": sizes,
            "return_dict": False,
        }

    inputs = {
        "sample": latents,
        "timestep": timestep,
        "encoder_hidden_states": random(batch, tokens or CLIP_TOKENS, config.cross_attention_dim),
        "return_dict": False,
    }
    if config.addition_embed_type == "text_time":  # SDXL: pooled text embedding + size/crop conditions
        pooled = config.projection_class_embeddings_input_dim - SDXL_TIME_IDS * config.addition_time_embed_dim
        time_ids = torch.tensor([resolution, resolution, 0, 0, resolution, resolution], dtype=dtype)
        inputs["added_cond_kwargs"] = {
            "text_embeds": random(batch, pooled),
            "time_ids": time_ids.to(device).repeat(batch, 1),
        }
    elif config.addition_embed_type is not None:
        raise ValueError(f"unsupported UNet addition_embed_type {config.addition_embed_type!r}")
    if config.time_cond_proj_dim is not None:  # LCM: the guidance scale enters as an embedding
        inputs["timestep_cond"] = random(batch, config.time_cond_proj_dim)
    return inputs
