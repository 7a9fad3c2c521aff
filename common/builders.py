"""Models built in code, without a checkpoint: a denoiser's weightless copy, a registry model's random-weight pipeline.

- :func:`meta_copy`: the same architecture on the ``meta`` device (no weights, no memory), which is all
  counting MACs needs (``common/step_macs.py``);
- :func:`random_weights_pipeline`: the TGATE pipeline of a registry model with every component built from
  ``model_configs/`` with random weights (``build_denoiser`` for the denoiser), for timing the real
  architectures without a download (latency does not depend on weight values; the images are noise).
"""

from __future__ import annotations

import inspect
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import diffusers
import torch
import transformers

from .architectures import T5_TOKENS, build_denoiser, denoiser_config
from .dit_architectures import (
    DIT_CLASSES, HUNYUANDIT_TEXT_TOKENS, LTX_TEXT_TOKENS, SANA_TEXT_TOKENS, WAN_TEXT_TOKENS,
)
from .models import MODELS, ModelSpec
from .tiny import tiny_clip_tokenizer

# Text encoders above this size are not built with random weights: PixArt's T5-XXL encoder (4.76B parameters,
# 19 GB in float32) does not fit this project's CPUs, and no T5 tokenizer is available offline. Random prompt
# embeddings of the encoder's output shape (PixArt's 120 tokens) are passed instead.
TEXT_ENCODER_PARAMETER_LIMIT = 1_000_000_000
# Random-weight pipelines have no safety checker (SD's default asks for one, with a warning) and no invisible
# watermark (SDXL's default adds one when its package is installed).
RANDOM_PIPELINE_OPTIONS = {"requires_safety_checker": False, "add_watermarker": False}


def meta_copy(denoiser: torch.nn.Module) -> torch.nn.Module:
    """The same architecture as ``denoiser`` (its class and config) on the meta device, in eval mode: no weights."""
    with torch.device("meta"):
        return type(denoiser).from_config(denoiser.config).eval()


@dataclass
class BuiltPipeline:
    """A TGATE pipeline built in code and what each of its calls gets for the prompt."""

    pipe: Any
    prompt_inputs: dict[str, Any]  # {"prompt": text}, or random prompt embeddings where the encoder is not built
    notes: list[str]  # what differs from the real pipeline, for the report


def config_folder(spec: ModelSpec, component: str) -> Path | None:
    """The architecture config of ``component``: the model's own, else that of a registry model with the same
    pipeline class (LCM-SDXL ships only its UNet: its VAE, text encoders and scheduler are SDXL base's)."""
    if (shared := spec.component_config_dir(component)).is_dir():  # its own, or where configs_from points
        return shared
    # registry models only (not a trained toy's checkpoint folder: its components are toys)
    same_pipeline = [other for other in MODELS.values()
                     if other.pipeline == spec.pipeline and other is not spec and not other.configs]
    for candidate in same_pipeline:
        folder = candidate.config_dir / component
        if folder.is_dir():
            return folder
    return None


def read_config(folder: Path) -> dict[str, Any]:
    for name in ("config.json", "scheduler_config.json"):
        if (folder / name).is_file():
            return json.loads((folder / name).read_text())
    raise ValueError(f"no config.json or scheduler_config.json in {folder}")


def read_model_index(spec: ModelSpec) -> dict[str, Any]:
    """``spec``'s ``model_index.json`` (its pipeline settings, e.g. Wan 2.2's ``boundary_ratio``), or {}."""
    index = spec.config_dir / "model_index.json"
    return json.loads(index.read_text()) if index.is_file() else {}


def random_component(folder: Path, device: torch.device, dtype: torch.dtype) -> Any:
    """A diffusers model or scheduler (config with ``_class_name``) or a transformers model (``architectures``)
    built from ``folder``'s config, with random weights."""
    config = read_config(folder)
    if "_class_name" in config:
        component_class = getattr(diffusers, config["_class_name"])
        if issubclass(component_class, diffusers.SchedulerMixin):
            return component_class.from_config(config)
        with torch.device(device):
            model = component_class.from_config(config)
    else:
        model_config = transformers.AutoConfig.from_pretrained(folder)
        with torch.device(device):
            model = getattr(transformers, config["architectures"][0])(model_config)
    return cast(model, dtype).eval()


def cast(module: Any, dtype: torch.dtype) -> Any:
    """``module.to(dtype)`` only when needed: diffusers warns at every cast, also a no-op one."""
    return module if module.dtype == dtype else module.to(dtype=dtype)


def parameter_count(folder: Path) -> int:
    """Parameters of the model configured in ``folder``, counted on the meta device (no memory)."""
    model = random_component(folder, torch.device("meta"), torch.float32)
    return sum(parameter.numel() for parameter in model.parameters())


def random_weights_pipeline(spec: ModelSpec, device: torch.device, dtype: torch.dtype, seed: int = 0) -> BuiltPipeline:
    """The TGATE pipeline of ``spec`` with every component built from the project's configs, random weights.

    Tokenizers are built in code (character-level CLIP tokenizers padding to the encoder's 77 positions, so the
    text encoder does the real amount of work); there is no safety checker. A text encoder over
    ``TEXT_ENCODER_PARAMETER_LIMIT`` parameters is replaced by random prompt embeddings of its output shape.
    """
    torch.manual_seed(seed)
    parameters = inspect.signature(spec.pipeline_class.__init__).parameters
    dit = denoiser_config(spec).get("_class_name") in DIT_CLASSES  # no text encoder configs copied
    components: dict[str, Any] = {}
    notes = ["no safety checker"]
    replaced: dict[str, Path] = {}  # text encoders not built -> their config folder
    index = read_model_index(spec)
    for name, parameter in parameters.items():
        if name == "self" or name.startswith("tokenizer"):
            continue
        if name in index and not isinstance(index[name], list):  # a pipeline setting (Wan 2.2's boundary_ratio)
            components[name] = index[name]
        elif name in RANDOM_PIPELINE_OPTIONS:
            components[name] = RANDOM_PIPELINE_OPTIONS[name]
        elif name == spec.denoiser:
            components[name] = build_denoiser(spec, device=device, dtype=dtype)
        elif parameter.default is None and not spec.component_config_dir(name).is_dir():
            continue  # an optional component the model does not have (Wan 2.1's transformer_2: Wan 2.2's expert)
        else:
            folder = config_folder(spec, name)
            if folder is None and name.startswith("text_encoder") and dit:
                components[name] = None  # no config copied (module docstring): random prompt embeddings instead
                notes.append(f"{name} not built (no config: only its output shape enters the transformer): random "
                             "prompt embeddings of that shape instead, so prompt encoding is not timed")
            elif folder is None and parameter.default is not inspect.Parameter.empty:
                continue  # a setting with a default (Wan's expand_timesteps), or an optional component left out
            elif folder is None:
                if name in ("vae", "scheduler") or name.startswith("text_encoder"):
                    raise ValueError(f"no config for {spec.key}'s {name} in {spec.config_dir} (nor in a registry "
                                     "model with the same pipeline): --random-weights needs one")
                components[name] = None  # safety checker, feature extractor, image encoder
            elif name.startswith("text_encoder") and (size := parameter_count(folder)) > TEXT_ENCODER_PARAMETER_LIMIT:
                replaced[name] = folder
                components[name] = None
                notes.append(f"{name} ({size / 1e9:.2f}B parameters) not built: random prompt embeddings of its "
                             "output shape instead, so prompt encoding is not timed (the same work in stock and "
                             "TGATE runs, before the denoising loop)")
            else:
                components[name] = random_component(folder, device, dtype)
    for name in parameters:
        if name.startswith("tokenizer"):
            encoder = components.get(name.replace("tokenizer", "text_encoder"))
            if encoder is None:
                components[name] = None
            elif encoder.config.model_type.startswith("clip"):
                components[name] = tiny_clip_tokenizer(max_length=encoder.config.max_position_embeddings)
                notes.append(f"{name}: a character-level CLIP tokenizer built in code; it pads to the encoder's "
                             f"{encoder.config.max_position_embeddings} positions as the real one does, so the text "
                             "encoder does the same work")
            else:
                raise ValueError(f"no offline tokenizer for {spec.key}'s {type(encoder).__name__}")
    pipe = spec.install_scheduler(spec.pipeline_class(**components))
    prompt_inputs: dict[str, Any] = {"prompt": spec.prompt}
    if dit:
        prompt_inputs = dit_prompt_embeddings(pipe.denoiser, device, dtype)
    elif replaced:
        prompt_inputs = random_prompt_embeddings(spec, replaced, device, dtype)
    return BuiltPipeline(pipe, prompt_inputs, notes)


def random_prompt_embeddings(
    spec: ModelSpec, replaced: dict[str, Path], device: torch.device, dtype: torch.dtype
) -> dict[str, Any]:
    """Prompt and negative embeddings with attention masks, for a pipeline with one (T5) text encoder."""
    call_parameters = inspect.signature(diffusers_pipeline_class(spec.pipeline_class).__call__).parameters
    if len(replaced) > 1 or "prompt_attention_mask" not in call_parameters:
        raise ValueError(f"{spec.key}: random prompt embeddings are supported for a single T5 text encoder "
                         f"(PixArt); {', '.join(replaced)} too big to build")
    (folder,) = replaced.values()
    width = read_config(folder)["d_model"]
    generator = torch.Generator().manual_seed(0)

    def embeddings() -> torch.Tensor:
        return torch.randn(1, T5_TOKENS, width, generator=generator).to(device=device, dtype=dtype)

    mask = torch.ones(1, T5_TOKENS, device=device)
    return {"prompt_embeds": embeddings(), "prompt_attention_mask": mask,
            "negative_prompt_embeds": embeddings(), "negative_prompt_attention_mask": mask.clone(),
            "negative_prompt": None}  # PixArt's default negative prompt "" cannot go with negative embeddings



def diffusers_pipeline_class(pipeline_class: type) -> type:
    """The diffusers class a TGATE pipeline class extends (``StableDiffusionPipeline``, ...)."""
    return next(c for c in pipeline_class.__mro__ if c.__module__.startswith("diffusers.pipelines"))


def dit_prompt_embeddings(denoiser: torch.nn.Module, device: torch.device, dtype: torch.dtype) -> dict[str, Any]:
    """Random prompt and negative prompt embeddings (with attention masks where the pipeline takes them) of the
    shapes a DiT's text encoders hand its transformer (``dit_architectures``): Wan's UMT5 (512 tokens of
    ``text_dim``), LTX-Video's T5 (128 x ``caption_channels``), Sana's Gemma-2 (300 x ``caption_channels``),
    HunyuanDiT's BERT (77 x ``cross_attention_dim``) and mT5 (256 x ``cross_attention_dim_t5``)."""
    config = denoiser.config
    generator = torch.Generator().manual_seed(0)

    def embeddings(tokens: int, width: int) -> torch.Tensor:
        return torch.randn(1, tokens, width, generator=generator).to(device=device, dtype=dtype)

    name = type(denoiser).__name__
    if name == "WanTransformer3DModel":  # no masks: Wan zero-pads its embeddings to 512 tokens itself
        return {"prompt_embeds": embeddings(WAN_TEXT_TOKENS, config.text_dim),
                "negative_prompt_embeds": embeddings(WAN_TEXT_TOKENS, config.text_dim)}
    if name == "HunyuanDiT2DModel":
        (bert, t5), inputs = HUNYUANDIT_TEXT_TOKENS, {}
        for suffix, tokens, width in (("", bert, config.cross_attention_dim),
                                      ("_2", t5, config.cross_attention_dim_t5)):
            mask = torch.ones(1, tokens, device=device, dtype=torch.long)
            inputs.update({f"prompt_embeds{suffix}": embeddings(tokens, width), f"prompt_attention_mask{suffix}": mask,
                           f"negative_prompt_embeds{suffix}": embeddings(tokens, width),
                           f"negative_prompt_attention_mask{suffix}": mask.clone()})
        return inputs
    tokens = LTX_TEXT_TOKENS if name == "LTXVideoTransformer3DModel" else SANA_TEXT_TOKENS
    mask = torch.ones(1, tokens, device=device)
    return {"prompt_embeds": embeddings(tokens, config.caption_channels), "prompt_attention_mask": mask,
            "negative_prompt_embeds": embeddings(tokens, config.caption_channels),
            "negative_prompt_attention_mask": mask.clone(),
            "negative_prompt": None}  # Sana's default negative prompt "" cannot go with negative embeddings
