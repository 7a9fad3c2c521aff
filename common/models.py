"""The models of the paper's table: checkpoints, the paper's sampling settings, pipeline classes, loading.

Settings come from ``paper_results.json`` (the paper's table and the v1 example scripts' settings; its ``v2``
part: the official TGATE-V2 README's, for PixArt-Sigma, which only that table has); the architecture configs
of each checkpoint are in ``model_configs/<key>/`` (a component shared with another checkpoint: ``configs_from``).
"""

from __future__ import annotations

import importlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch

COMMON_DIR = Path(__file__).resolve().parent
CONFIG_ROOT = COMMON_DIR / "model_configs"
TOY_MODEL = "toy"  # the registry key of the toy digits model (not in the paper)
TOY_CHECKPOINT = COMMON_DIR.parent / "eval" / "toy" / "checkpoint"  # trained here by eval/toy/train.py
WAN_TOY_CHECKPOINT = COMMON_DIR.parent / "eval" / "wan_toy" / "checkpoint"  # trained by eval/wan_toy/train.py
PAPER = json.loads((COMMON_DIR / "paper_results.json").read_text())


class CheckpointNotFoundError(RuntimeError):
    """The weights of a checkpoint are neither in the Hugging Face cache nor in the given folder."""


def import_object(path: str) -> Any:
    """``"package.module:name"`` -> the object."""
    module, _, name = path.partition(":")
    return getattr(importlib.import_module(module), name)


@dataclass(frozen=True)
class ModelSpec:
    key: str  # the name used on every command line: sd15, sd21, sdxl, pixart_alpha, pixart_sigma, lcm_sdxl, ...
    title: str
    pipeline: str  # "module:Class" of the TGATE pipeline
    checkpoint: str  # what `from_pretrained` loads by default (hub id)
    steps: int
    gate_step: int
    guidance_scale: float
    resolution: int
    prompt: str
    seed: int
    scheduler: str | None  # the diffusers scheduler the paper's script installs; None keeps the checkpoint's
    tiny: str  # "module:function" building tiny random components of this family
    denoiser: str = "unet"  # the denoiser's component name (and config subfolder): unet or transformer
    loader: str | None = None  # "module:function(spec, source, torch_dtype)" where from_pretrained is not enough
    note: str = ""
    configs: str | None = None  # folder of the component configs, where it is not model_configs/<key>
    # Components whose architecture config is another registry model's: (component, that model's key).
    configs_from: tuple[tuple[str, str], ...] = ()
    # TGATE-V2's self-attention settings (the official README's): the defaults of generate.py and the eval scripts.
    # The defaults are v1: self-attention computed at every step.
    sp_interval: int = 1
    fi_interval: int = 1
    warm_up: int = 0
    # Video and non-square models (dit_models.py): pixel size, frames, and what else the model card sets.
    height: int | None = None  # None: resolution x resolution
    width: int | None = None
    frames: int | None = None  # None: an image model
    scheduler_kwargs: tuple[tuple[str, Any], ...] = ()  # overrides of the installed scheduler's config (flow_shift)
    call_kwargs: tuple[tuple[str, Any], ...] = ()  # further __call__ defaults (negative_prompt, guidance_scale_2)
    tiny_call: tuple[tuple[str, Any], ...] = ()  # __call__ arguments of a --tiny run (sizes its components take)

    @property
    def size(self) -> tuple[int, int]:
        """(height, width) in pixels."""
        return (self.height or self.resolution, self.width or self.resolution)

    @property
    def config_dir(self) -> Path:
        return Path(self.configs) if self.configs else CONFIG_ROOT / self.key

    def component_config_dir(self, component: str) -> Path:
        """The folder of ``component``'s config: this model's own, or that of the model it is shared with."""
        owner = dict(self.configs_from).get(component)
        return get_model(owner).component_config_dir(component) if owner else self.config_dir / component

    @property
    def pipeline_class(self) -> type:
        return import_object(self.pipeline)

    def tiny_components(self, seed: int = 0) -> dict:
        return import_object(self.tiny)(seed=seed)

    def tiny_pipeline(self, seed: int = 0):
        """The TGATE pipeline on tiny random components (the images are noise)."""
        return self.install_scheduler(self.pipeline_class(**self.tiny_components(seed=seed)))

    def load(self, source: str | None = None, torch_dtype: torch.dtype | None = None):
        """The TGATE pipeline with real weights from ``source`` (hub id or local folder; default: the checkpoint)."""
        source = source or self.checkpoint
        if looks_like_local_path(source):
            folder = Path(source).expanduser()
            if not folder.is_dir():  # else the hub client's complaint: "Repo id must use alphanumeric chars"
                reason = FileNotFoundError(f"the folder {source} does not exist" if not folder.exists()
                                           else f"{source} is a file, not a diffusers folder")
                raise CheckpointNotFoundError(missing_weights_message(self, source, reason))
            source = str(folder)
        load: Callable = import_object(self.loader) if self.loader else load_with_from_pretrained
        try:
            pipe = load(self, source, torch_dtype)
        except (OSError, ValueError) as error:
            raise CheckpointNotFoundError(missing_weights_message(self, source, error)) from error
        return self.install_scheduler(pipe)

    def install_scheduler(self, pipe):
        if self.scheduler:
            scheduler_class = import_object(f"diffusers:{self.scheduler}")
            pipe.scheduler = scheduler_class.from_config(pipe.scheduler.config, **dict(self.scheduler_kwargs))
        return pipe

    def paper_row(self, tgate: bool) -> dict | None:
        """The paper's table row of this model (None for a model outside the paper, such as the toy)."""
        return next((row for row in PAPER["rows"] if row["model"] == self.key and row["tgate"] == tgate), None)

    def paper_v2_row(self, tgate: bool) -> dict | None:
        """The row of the official TGATE-V2 table (``PAPER["v2"]``), None where that table has no such model."""
        rows = PAPER["v2"]["rows"]
        return next((row for row in rows if row["model"] == self.key and row["tgate"] == tgate), None)


def looks_like_local_path(source: str) -> bool:
    """Whether ``source`` is meant as a folder: a hub id is ``name`` or ``owner/name``, never more."""
    if source.startswith(("/", "~", "./", "../")) or source in (".", ".."):
        return True
    return source.count("/") > 1 or (os.sep != "/" and os.sep in source)


def load_with_from_pretrained(spec: ModelSpec, source: str, torch_dtype: torch.dtype | None):
    return spec.pipeline_class.from_pretrained(source, dtype=torch_dtype)


def missing_weights_message(spec: ModelSpec, source: str, error: Exception) -> str:
    reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
    return (
        f"Could not load the {spec.title} weights from '{source}'.\n"
        f"  reason: {reason}\n"
        f"  To provide them: download once with network access (`hf download {spec.checkpoint}`, huggingface_hub's CLI, "
        "fills the Hugging Face cache, $HF_HOME, which is then used offline), or pass a local diffusers folder "
        "(generate.py: --model PATH; the eval scripts: --checkpoint PATH).\n"
        "  For an offline smoke run without weights, use --tiny (tiny random components; the image is noise)."
    )


def _paper_settings(key: str) -> dict:
    defaults = PAPER["defaults"][key]
    return dict(steps=defaults["steps"], gate_step=defaults["gate_step"], resolution=defaults["resolution"],
                prompt=defaults["prompt"], seed=defaults["seed"])


def _paper_v2_settings(key: str) -> dict:
    """The settings of a model that is only in the TGATE-V2 table, with its self-attention intervals."""
    defaults = PAPER["v2"]["defaults"][key]
    return dict(steps=defaults["steps"], gate_step=defaults["gate_step"], sp_interval=defaults["sp_interval"],
                fi_interval=defaults["fi_interval"], warm_up=defaults["warm_up"], resolution=defaults["resolution"],
                prompt=defaults["prompt"], seed=defaults["seed"])


MODELS: dict[str, ModelSpec] = {
    "sd15": ModelSpec(
        key="sd15",
        title="SD-1.5",
        pipeline="SD_1_5.pipeline:TgateStableDiffusionPipeline",
        # runwayml/stable-diffusion-v1-5 (the paper's) left the Hub in 2024; this is its maintained mirror.
        checkpoint="stable-diffusion-v1-5/stable-diffusion-v1-5",
        guidance_scale=7.5,
        scheduler="DPMSolverMultistepScheduler",
        tiny="common.tiny:tiny_sd_components",
        note="the paper used runwayml/stable-diffusion-v1-5, now mirrored as stable-diffusion-v1-5/stable-diffusion-v1-5",
        **_paper_settings("sd15"),
    ),
    "sd21": ModelSpec(
        key="sd21",
        title="SD-2.1",
        pipeline="SD_2_1.pipeline:TgateStableDiffusionPipeline",
        checkpoint="stabilityai/stable-diffusion-2-1",
        guidance_scale=7.5,
        scheduler="DPMSolverMultistepScheduler",
        tiny="common.tiny:tiny_sd_components",
        **_paper_settings("sd21"),
    ),
    "sdxl": ModelSpec(
        key="sdxl",
        title="SDXL",
        pipeline="SDXL.pipeline:TgateStableDiffusionXLPipeline",
        checkpoint="stabilityai/stable-diffusion-xl-base-1.0",
        guidance_scale=5.0,
        scheduler="DPMSolverMultistepScheduler",
        tiny="common.tiny:tiny_sdxl_components",
        **_paper_settings("sdxl"),
    ),
    "pixart_alpha": ModelSpec(
        key="pixart_alpha",
        title="PixArt-Alpha",
        pipeline="PixArt_alpha.pipeline:TgatePixArtAlphaPipeline",
        checkpoint="PixArt-alpha/PixArt-XL-2-1024-MS",
        guidance_scale=4.5,
        scheduler=None,  # the checkpoint's DPMSolverMultistepScheduler
        tiny="common.tiny:tiny_pixart_components",
        denoiser="transformer",
        **_paper_settings("pixart_alpha"),
    ),
    # Not in the v1 table (so not in PAPER_MODELS): the TGATE-V2 table and README add PixArt-Sigma.
    "pixart_sigma": ModelSpec(
        key="pixart_sigma",
        title="PixArt-Sigma",
        pipeline="PixArt_sigma.pipeline:TgatePixArtSigmaPipeline",
        checkpoint="PixArt-alpha/PixArt-Sigma-XL-2-1024-MS",
        guidance_scale=4.5,  # the README example sets none: PixArtSigmaPipeline's default
        scheduler=None,  # the checkpoint's DPMSolverMultistepScheduler (tiny runs: PixArt-Alpha's settings)
        tiny="common.tiny:tiny_pixart_sigma_components",
        denoiser="transformer",
        # SDXL's VAE; PixArt-Alpha's T5-XXL encoder (prompts padded to 300 tokens) and DPM-Solver settings
        configs_from=(("vae", "sdxl"), ("text_encoder", "pixart_alpha"), ("scheduler", "pixart_alpha")),
        **_paper_v2_settings("pixart_sigma"),
    ),
    "lcm_sdxl": ModelSpec(
        key="lcm_sdxl",
        title="LCM (SDXL)",
        pipeline="SDXL.pipeline:TgateStableDiffusionXLPipeline",
        checkpoint="latent-consistency/lcm-sdxl",  # the UNet; the rest comes from SDXL base
        guidance_scale=5.0,  # the SDXL pipeline's default; LCM takes it as an embedding, no second branch
        scheduler="LCMScheduler",
        tiny="common.tiny:tiny_lcm_sdxl_components",
        loader="LCM.pipeline:load_lcm_sdxl",
        **_paper_settings("lcm_sdxl"),
    ),
    "lcm_pixart": ModelSpec(
        key="lcm_pixart",
        title="LCM (PixArt-Alpha)",
        pipeline="PixArt_alpha.pipeline:TgatePixArtAlphaPipeline",
        checkpoint="PixArt-alpha/PixArt-LCM-XL-2-1024-MS",
        guidance_scale=0.0,  # PixArt-LCM samples without classifier-free guidance
        scheduler=None,  # the checkpoint's LCMScheduler
        tiny="common.tiny:tiny_lcm_pixart_components",
        denoiser="transformer",
        **_paper_settings("lcm_pixart"),
    ),
    # Not in the paper: a small text-to-image model trained here on scikit-learn's digits, committed so that
    # every script runs end to end offline on a denoiser that really maps text to images.
    "toy": ModelSpec(
        key="toy",
        title="toy digits (trained here, not a paper model)",
        pipeline="SD_1_5.pipeline:TgateStableDiffusionPipeline",
        checkpoint=str(TOY_CHECKPOINT),
        steps=25,
        gate_step=10,
        guidance_scale=5.0,
        resolution=16,
        prompt="a handwritten digit seven",
        seed=0,
        scheduler="DPMSolverMultistepScheduler",  # the checkpoint's own; SD's scaled_linear betas
        tiny="common.tiny:tiny_sd_components",
        note="a 16x16 text-to-image model of handwritten digits trained by eval/toy/train.py; "
        'prompts "a handwritten digit <word>" and "the digit <numeral>"',
        configs=str(TOY_CHECKPOINT),
    ),
    # Not in the paper: the same digits on Wan 2.1's architecture (two-call guidance), trained by
    # eval/wan_toy/train.py.
    "wan_toy": ModelSpec(
        key="wan_toy",
        title="Wan toy digits (trained here, not a paper model)",
        pipeline="Wan.pipeline:TgateWanPipeline",
        checkpoint=str(WAN_TOY_CHECKPOINT),
        steps=20,
        gate_step=8,  # 40% of the steps, as the Wan estimate in DESIGN.md (gate 20 of 50)
        guidance_scale=5.0,
        resolution=16,
        prompt="a handwritten digit seven",
        seed=0,
        scheduler=None,  # the checkpoint's UniPCMultistepScheduler (flow prediction)
        tiny="eval.wan_toy.model:tiny_components",
        denoiser="transformer",
        loader="eval.wan_toy.model:load_for_registry",
        note="one 16x16 frame of a handwritten digit; call with height=16, width=16, num_frames=1 "
        "(eval.wan_toy.model.CALL_DEFAULTS)",
        configs=str(WAN_TOY_CHECKPOINT),
        # the toy's text length (eval.wan_toy.model.TEXT_LENGTH; WanPipeline's default is 512): what its calls pass
        # and what its MACs are counted at (architectures.text_tokens)
        call_kwargs=(("max_sequence_length", 16),),
    ),
}


# Not in the paper: today's cross-attention DiTs (Wan 2.1 / 2.2, LTX-Video, Sana, HunyuanDiT), defined in code.
from .dit_models import DIT_MODELS  # noqa: E402  (dit_models imports ModelSpec from here)

MODELS.update(DIT_MODELS)

# The six models of the paper's table: what "all" means in the evaluation scripts (MODELS adds the toy).
PAPER_MODELS: dict[str, ModelSpec] = {key: spec for key, spec in MODELS.items() if key in PAPER["defaults"]}


def get_model(key: str) -> ModelSpec:
    if key not in MODELS:
        raise ValueError(f"unknown model {key!r}; choose one of: {', '.join(MODELS)}")
    return MODELS[key]
