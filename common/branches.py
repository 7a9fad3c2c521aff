"""Which inputs of a denoiser are per sample, and which branch of each TGATE keeps after the gate.

Under classifier-free guidance a pipeline hands its denoiser the batch ``[negative x B, positive x B]``; after
the gate TGATE runs one branch. What is cut is *known*, never guessed from sizes: a tensor is cut only when it
sits in one of the denoiser's per-sample inputs, named per architecture in :data:`PER_SAMPLE_INPUTS`.
Rotary tables, position ids and sizes pass whole, whatever their length.

The branch kept is one rule (:meth:`BranchCut.keep_one_branch`): the negative one, as the official TGATE keeps
for SD, SDXL and PixArt, except for the inputs that carry conditioning only the positive branch has
(:data:`POSITIVE_ONLY_INPUTS`): their positive half is kept, so no conditioning is dropped at the gate. For
SVD that is every input, as the official ``TgateSVDLoader`` runs the UNet after the gate on the real image
latents and image embedding (SVD's negative branch holds zeros).

Every tensor a denoiser returns is per sample (a prediction, or ControlNet residuals), so after the one-branch
evaluation each is handed back for both halves, and the pipeline's guidance formula returns it unchanged.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from typing import Any, Callable

import torch

__all__ = ["BranchCut", "PER_SAMPLE_INPUTS", "POSITIVE_ONLY_INPUTS", "UnknownDenoiserError", "branch_cut"]

# Per denoiser class (matched on the class or a base): the ``forward`` parameters holding one entry per sample of
# the guidance batch. A name ``a.b`` is key ``b`` of the dict parameter ``a``; a dict, list or tuple named whole
# is per sample in every tensor it holds. Scalar tensors (a shared timestep) pass whole.
_UNET_TEXT = ("sample", "timestep", "encoder_hidden_states", "timestep_cond", "attention_mask")
_UNET_RESIDUALS = ("down_block_additional_residuals", "mid_block_additional_residual")
_CONTROLNET = (*_UNET_TEXT, "controlnet_cond", "class_labels", "added_cond_kwargs")
PER_SAMPLE_INPUTS: dict[str, tuple[str, ...]] = {
    "UNet2DConditionModel": (
        *_UNET_TEXT, *_UNET_RESIDUALS, "class_labels", "added_cond_kwargs", "encoder_attention_mask",
        "down_intrablock_additional_residuals", "cross_attention_kwargs.gligen",
    ),
    "UNetMotionModel": (*_UNET_TEXT, *_UNET_RESIDUALS, "added_cond_kwargs"),
    "UNet3DConditionModel": (*_UNET_TEXT, *_UNET_RESIDUALS, "class_labels"),
    "UNetSpatioTemporalConditionModel": ("sample", "timestep", "encoder_hidden_states", "added_time_ids"),
    "ControlNetModel": _CONTROLNET,
    "MultiControlNetModel": _CONTROLNET,
    "ControlNetUnionModel": (*_CONTROLNET, "control_type"),
    "SparseControlNetModel": (*_UNET_TEXT, "controlnet_cond", "conditioning_mask"),
    "Transformer2DModel": (
        "hidden_states", "encoder_hidden_states", "timestep", "added_cond_kwargs", "class_labels", "attention_mask",
        "encoder_attention_mask",
    ),
    "PixArtTransformer2DModel": (
        "hidden_states", "encoder_hidden_states", "timestep", "added_cond_kwargs", "attention_mask",
        "encoder_attention_mask",
    ),
    # Not image_rotary_emb: one row per image token, shared by every sample.
    "HunyuanDiT2DModel": (
        "hidden_states", "timestep", "encoder_hidden_states", "text_embedding_mask", "encoder_hidden_states_t5",
        "text_embedding_mask_t5", "image_meta_size", "style", "controlnet_block_samples",
    ),
    # Not num_frames, height, width, rope_interpolation_scale: sizes of the whole batch.
    "LTXVideoTransformer3DModel": (
        "hidden_states", "encoder_hidden_states", "timestep", "encoder_attention_mask", "video_coords",
    ),
    "SanaTransformer2DModel": (
        "hidden_states", "encoder_hidden_states", "timestep", "guidance", "encoder_attention_mask", "attention_mask",
        "controlnet_block_samples",
    ),
    "LatteTransformer3DModel": ("hidden_states", "timestep", "encoder_hidden_states", "encoder_attention_mask"),
    "AllegroTransformer3DModel": (
        "hidden_states", "encoder_hidden_states", "timestep", "attention_mask", "encoder_attention_mask",
    ),
    # Two-call guidance (one branch per call): never cut, listed so the gate knows the architecture.
    "WanTransformer3DModel": ("hidden_states", "timestep", "encoder_hidden_states", "encoder_hidden_states_image"),
    "SkyReelsV2Transformer3DModel": (
        "hidden_states", "timestep", "encoder_hidden_states", "encoder_hidden_states_image",
    ),
}

# Per pipeline class (matched on the class or a base): per-sample inputs whose conditioning only the positive
# branch carries; after the gate their positive half is kept. Every pipeline: IP-Adapter's image embeddings
# (the negative ones are zeros, or a zero image's).
POSITIVE_ONLY_INPUTS: dict[str, tuple[str, ...]] = {
    "DiffusionPipeline": ("added_cond_kwargs.image_embeds",),
    # The official TgateSVDLoader: real image latents (in the sample's channels) and image embedding.
    "StableVideoDiffusionPipeline": ("sample", "encoder_hidden_states"),
    # The negative half's grounding masks are zeros.
    "StableDiffusionGLIGENPipeline": ("cross_attention_kwargs.gligen",),
    "StableDiffusionGLIGENTextImagePipeline": ("cross_attention_kwargs.gligen",),
}

class UnknownDenoiserError(ValueError):
    """TGATE does not know which inputs of this denoiser are per sample."""


def _table_entry(cls: type, table: dict[str, tuple[str, ...]], every_base: bool) -> tuple[str, ...] | None:
    names: list[str] = []
    for base in cls.__mro__:
        entry = table.get(base.__name__)
        if entry is not None:
            if not every_base:
                return entry
            names += entry
    return tuple(names) if every_base else None


def _unwrapped(denoiser: torch.nn.Module) -> torch.nn.Module:
    return getattr(denoiser, "_orig_mod", denoiser)  # a torch.compile'd denoiser: its module


def per_sample_inputs(denoiser: torch.nn.Module) -> tuple[str, ...]:
    """The per-sample inputs of ``denoiser``'s forward; an :class:`UnknownDenoiserError` if TGATE does not know it."""
    cls = type(_unwrapped(denoiser))
    entry = _table_entry(cls, PER_SAMPLE_INPUTS, every_base=False)
    if entry is None:
        raise UnknownDenoiserError(
            f"TGATE does not know which inputs of {cls.__name__} carry one entry per sample of the guidance batch, "
            f"so it cannot run one branch after the gate. Known denoisers: {', '.join(PER_SAMPLE_INPUTS)}. "
            "To add one, name its per-sample forward parameters in common/branches.py's PER_SAMPLE_INPUTS."
        )
    return entry


def positive_only_inputs(pipeline_class: type) -> frozenset[str]:
    """The inputs whose positive half ``pipeline_class`` keeps after the gate (see :data:`POSITIVE_ONLY_INPUTS`)."""
    return frozenset(_table_entry(pipeline_class, POSITIVE_ONLY_INPUTS, every_base=True))


def _map_tensors(tree: Any, fn: Callable[[torch.Tensor], torch.Tensor]) -> Any:
    if torch.is_tensor(tree):
        return fn(tree)
    if isinstance(tree, dict):  # also diffusers' BaseOutput, an OrderedDict
        return type(tree)(**{key: _map_tensors(value, fn) for key, value in tree.items()})
    if isinstance(tree, (list, tuple)):
        return type(tree)(_map_tensors(value, fn) for value in tree)
    return tree


@dataclass(frozen=True)
class BranchCut:
    """How one denoiser's guidance batch is cut to one branch, and its output handed back for both."""

    denoiser_name: str
    signature: inspect.Signature
    per_sample: tuple[str, ...]
    positive_only: frozenset[str]

    def keep_one_branch(self, args: tuple, kwargs: dict) -> dict[str, Any]:
        """The forward's arguments, by name, with every per-sample input cut to the branch it keeps."""
        arguments = self.signature.bind_partial(*args, **kwargs).arguments
        batch = self._batch(arguments)
        for top, value in arguments.items():
            if value is None:
                continue
            if top in self.per_sample:
                if isinstance(value, dict):
                    arguments[top] = {key: self._cut(value[key], batch, top, key) for key in value}
                else:
                    arguments[top] = self._cut(value, batch, top)
            elif isinstance(value, dict) and any(f"{top}.{key}" in self.per_sample for key in value):
                arguments[top] = {
                    key: self._cut(entry, batch, top, key) if f"{top}.{key}" in self.per_sample else entry
                    for key, entry in value.items()
                }
        return arguments

    def _batch(self, arguments: dict[str, Any]) -> int:
        sample = arguments.get(self.per_sample[0])
        if not torch.is_tensor(sample):
            raise TypeError(f"{self.denoiser_name}'s input {self.per_sample[0]} is not a tensor: TGATE cannot cut it.")
        batch = sample.shape[0]
        if batch % 2:
            raise RuntimeError(
                f"the pipeline says guidance is on, so its denoiser batch [negative, positive] must have an even "
                f"size, but {self.denoiser_name} got {batch} samples: TGATE cannot tell the two branches apart."
            )
        return batch

    def _cut(self, value: Any, batch: int, top: str, key: str | None = None) -> Any:
        name = top if key is None else f"{top}.{key}"
        keep_positive = top in self.positive_only or name in self.positive_only

        def half(tensor: torch.Tensor) -> torch.Tensor:
            if tensor.ndim == 0 or tensor.shape[0] == 1:  # shared by every sample (a timestep, a broadcast row)
                return tensor
            size = tensor.shape[0]
            if size % batch:
                raise RuntimeError(
                    f"{self.denoiser_name}'s per-sample input {name} has {size} entries, not a multiple of the "
                    f"guidance batch ({batch}): TGATE cannot tell its two branches apart."
                )
            # [negative x B, positive x B], or repeated per sample after it (AnimateDiff's text per frame): the
            # same order, so each branch is one half.
            return tensor[size // 2 :] if keep_positive else tensor[: size // 2]

        return _map_tensors(value, half)

    def for_both_branches(self, output: Any, samples: int) -> Any:
        """The one-branch output as the guidance batch's: every tensor twice, ``[t, t]``. ``samples``: the batch
        the kept branch gave the denoiser, which its output must have."""

        def doubled(tensor: torch.Tensor) -> torch.Tensor:
            if not tensor.ndim:
                return tensor
            if tensor.shape[0] != samples:
                # A cache on the denoiser added a residual or output kept from a guided step: it broadcasts to
                # the guided batch, and doubled here it would be wrong (or fail a step later).
                raise RuntimeError(
                    f"{self.denoiser_name} returned {tensor.shape[0]} samples for the {samples} of the one branch "
                    "TGATE kept after the gate: something else on the denoiser (a cache such as diffusers' "
                    "FirstBlockCache, MagCache or TaylorSeer, set by enable_cache) reused an output of the guided "
                    "batch [negative, positive]. On a pipeline that guides in one batch TGATE does not stack with "
                    "it: disable that cache, or TGATE (gate_step=None)."
                )
            return torch.cat([tensor, tensor])

        return _map_tensors(output, doubled)


def branch_cut(denoiser: torch.nn.Module, pipeline_class: type | None) -> BranchCut:
    """The :class:`BranchCut` of ``denoiser`` in ``pipeline_class``.

    Inputs are named by the architecture's own ``forward`` (its class's): a wrapper set on the instance (a timer,
    a profiler) takes ``*args, **kwargs`` and hands them on, so it is called with the same names."""
    cls = type(_unwrapped(denoiser))
    signature = inspect.signature(cls.forward)
    signature = signature.replace(parameters=list(signature.parameters.values())[1:])  # without self
    positive = positive_only_inputs(pipeline_class) if pipeline_class is not None else frozenset()
    return BranchCut(cls.__name__, signature, per_sample_inputs(denoiser), positive)


BATCHED, TWO_CALLS = "batched", "two_calls"


def guidance_layout(cut: BranchCut, args: tuple, kwargs: dict, text_states: list[tuple]) -> str:
    """At the first guided evaluation, how the pipeline runs its two branches, checked on the tensors.

    ``text_states``: what the pipeline's ``encode_prompt`` returned in this call (diffusers' convention: the
    positive states before the negative ones of the same shape). A denoiser batch of twice the positive states'
    samples is one call on ``[negative, positive]`` (:data:`BATCHED`; positive first is refused); as many samples
    as the positive states is one call per branch (:data:`TWO_CALLS`, as Wan); anything else (a third branch) is
    refused. Where the tensors cannot tell (no ``encode_prompt``, the prompt equal to the negative prompt, states
    transformed before the denoiser), diffusers' batched ``[negative, positive]`` order stands.
    """
    arguments = cut.signature.bind_partial(*args, **kwargs).arguments
    text, sample = arguments.get("encoder_hidden_states"), arguments.get(cut.per_sample[0])
    if not (torch.is_tensor(text) and torch.is_tensor(sample)) or text.ndim < 2:
        return BATCHED
    for states in text_states:
        same_shape = [t for t in states if torch.is_tensor(t) and t.ndim == text.ndim and t.shape[1:] == text.shape[1:]]
        if len(same_shape) < 2:
            continue
        positive, negative = same_shape[:2]
        images = positive.shape[0]
        if sample.shape[0] == images:
            return TWO_CALLS
        if sample.shape[0] != 2 * images:
            raise ValueError(
                f"TGATE cannot gate this pipeline: it hands {cut.denoiser_name} {sample.shape[0]} samples for "
                f"{images} images, neither one batch [negative, positive] nor one call per branch (a third branch, "
                "as InstructPix2Pix's image guidance?), so TGATE cannot tell which samples form a branch."
            )
        first, second = text[0], text[text.shape[0] // 2]
        positive, negative = positive[0].to(first), negative[0].to(first)
        if not torch.equal(positive, negative) and torch.equal(first, positive) and torch.equal(second, negative):
            raise ValueError(
                f"TGATE cannot gate this pipeline: it hands {cut.denoiser_name} the guidance batch "
                "[positive, negative] (positive first), while TGATE's cut keeps diffusers' [negative, positive] "
                "order's negative half. Checked on the tensors: the first half of encoder_hidden_states is the "
                "positive prompt's."
            )
        return BATCHED
    return BATCHED
