"""Probes on one sampling run of a diffusers pipeline, for the observation behind TGATE (eval/observation.py).

They watch or steer a run from the outside, with no copy of a pipeline's ``__call__``, the same way for the
SD, SDXL, PixArt and LCM families:

- :func:`watch_scheduler_steps`: the sampling loop's step index (every diffusers loop ends each step with
  one ``scheduler.step`` call) and, per step, what the scheduler was given and returned;
- :func:`predicted_clean_latents`: the clean latents x0 the scheduler predicts at a step;
- :func:`text_only_in_steps`: null text in the steps where a schedule says "no text", at the denoiser;
- :func:`recording_cross_attention_change`: per step, the relative change of every cross-attention output.
"""

from __future__ import annotations

import contextlib
import functools
import math
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator

import torch

from common.gate import cross_attention_modules, merge_guidance_halves

# Denoiser inputs that carry the text: token embeddings and their mask (PixArt's T5), and SDXL's pooled
# text embedding inside ``added_cond_kwargs``. Size and guidance-scale conditions are not text.
TEXT_KWARGS = ("encoder_hidden_states", "encoder_attention_mask")
POOLED_TEXT_KEY = "text_embeds"
# Sigma schedules under which a scheduler's noise level at timestep t is not the training one (alphas_cumprod[t]).
RESPACED_SIGMA_FLAGS = ("use_karras_sigmas", "use_exponential_sigmas", "use_beta_sigmas", "use_flow_sigmas")
# PixArt's transformer blocks all work at one resolution: they are shown in this many groups of consecutive blocks.
TRANSFORMER_BLOCK_GROUPS = 4


# --- The step index and what each step did ---------------------------------------------------------------


@dataclass
class StepRecord:
    """One ``scheduler.step`` call: its inputs and its output (always the dataclass, never the tuple)."""

    index: int  # 0-based step of the sampling loop
    timestep: Any
    model_output: torch.Tensor  # the (guided) prediction the pipeline handed the scheduler
    sample: torch.Tensor  # the latents before the step
    output: Any  # SchedulerOutput, LCMSchedulerOutput, ...


@dataclass
class StepClock:
    index: int = 0  # the step in progress
    timesteps: list[float] = field(default_factory=list)  # the timestep of each finished step


@contextlib.contextmanager
def wrapped_scheduler_step(scheduler: Any, wrap: Callable[[Callable], Callable]) -> Iterator[None]:
    """Replace ``scheduler.step`` by ``wrap(step)`` inside the block; restore it on exit.

    With the first-order schedulers the observation uses, each step of the loop ends with one
    ``scheduler.step`` call, so this is where its step index can be read (Heun or PNDM call it more often;
    the gate itself counts the pipeline's progress bar instead). The wrapper keeps ``step``'s signature:
    pipelines inspect it to decide whether to pass ``eta`` and ``generator``.
    """
    step = scheduler.step
    had_step_attribute = "step" in scheduler.__dict__
    scheduler.step = functools.wraps(step)(wrap(step))
    try:
        yield
    finally:
        if had_step_attribute:
            scheduler.step = step
        else:
            del scheduler.step


@contextlib.contextmanager
def watch_scheduler_steps(scheduler: Any, *on_step: Callable[[StepRecord], None]) -> Iterator[StepClock]:
    """Count the steps of the sampling runs made inside the block, calling each ``on_step`` after every step.

    The scheduler always computes its dataclass output (``return_dict=True``); a caller that asked for a
    tuple gets ``output.to_tuple()``, which is the tuple diffusers' schedulers return.
    """
    clock = StepClock()

    def watching(step: Callable) -> Callable:
        def watched_step(model_output, timestep, sample, *args, **kwargs):
            wants_dataclass = kwargs.pop("return_dict", True)
            output = step(model_output, timestep, sample, *args, return_dict=True, **kwargs)
            record = StepRecord(clock.index, timestep, model_output, sample, output)
            for callback in on_step:
                callback(record)
            clock.timesteps.append(float(timestep))
            clock.index += 1
            return output if wants_dataclass else output.to_tuple()

        return watched_step

    with wrapped_scheduler_step(scheduler, watching):
        yield clock


# --- The predicted clean image -------------------------------------------------------------------------------


def predicted_clean_latents(scheduler: Any, record: StepRecord) -> torch.Tensor:
    """The clean latents x0 predicted at the step of ``record``.

    The scheduler's own prediction where its output has one (DDIM, DDPM, Euler: ``pred_original_sample``;
    LCM: ``denoised``); otherwise (DPM-Solver, PNDM) computed from the model output, see
    :func:`clean_latents_from_prediction`.
    """
    for name in ("pred_original_sample", "denoised"):
        value = getattr(record.output, name, None)
        if torch.is_tensor(value):
            return value
    return clean_latents_from_prediction(scheduler, record.model_output, record.timestep, record.sample)


def clean_latents_from_prediction(
    scheduler: Any, model_output: torch.Tensor, timestep: Any, sample: torch.Tensor
) -> torch.Tensor:
    """x0 from ``sample = alpha x0 + sigma noise`` with alpha^2 = alphas_cumprod[t], sigma^2 = 1 - alpha^2.

    ``model_output`` is what the scheduler's ``prediction_type`` says: the noise (``epsilon``), the velocity
    ``alpha noise - sigma x0`` (``v_prediction``), or x0 itself (``sample``). Exact for the schedulers of the
    paper's models (DPM-Solver samples the training noise levels at integer timesteps); not for re-spaced
    sigma schedules (Karras, exponential, beta, flow), which are refused.
    """
    config = scheduler.config
    respaced = [flag for flag in RESPACED_SIGMA_FLAGS if config.get(flag)]
    if respaced or not hasattr(scheduler, "alphas_cumprod"):
        reason = f"it uses {respaced[0]}" if respaced else "it has no alphas_cumprod"
        raise ValueError(
            f"{type(scheduler).__name__} reports no predicted clean image and {reason}: x0 cannot be derived from "
            "its noise prediction here. Use a scheduler whose step output has pred_original_sample (DDIM, Euler)."
        )
    alpha_bar = scheduler.alphas_cumprod[int(timestep)].to(device=sample.device, dtype=torch.float32)
    alpha, sigma = alpha_bar.sqrt(), (1 - alpha_bar).sqrt()
    latents, prediction = sample.float(), model_output.float()
    kind = config.get("prediction_type", "epsilon")
    if kind == "epsilon":
        clean = (latents - sigma * prediction) / alpha
    elif kind == "v_prediction":
        clean = alpha * latents - sigma * prediction
    elif kind == "sample":
        clean = prediction
    else:
        raise ValueError(f"cannot derive x0 for prediction_type {kind!r}")
    return clean.to(sample.dtype)


# --- Text in some steps only ---------------------------------------------------------------------------------

TextInputs = dict[str, torch.Tensor]  # the text-carrying denoiser inputs, by name (TEXT_KWARGS, POOLED_TEXT_KEY)


def text_inputs(kwargs: dict[str, Any]) -> TextInputs:
    """The text-carrying tensors among a denoiser call's keyword arguments."""
    found = {key: kwargs[key] for key in TEXT_KWARGS if torch.is_tensor(kwargs.get(key))}
    added = kwargs.get("added_cond_kwargs") or {}
    if torch.is_tensor(added.get(POOLED_TEXT_KEY)):
        found[POOLED_TEXT_KEY] = added[POOLED_TEXT_KEY]
    return found


def with_text_inputs(kwargs: dict[str, Any], text: TextInputs) -> dict[str, Any]:
    """A copy of a denoiser call's keyword arguments whose text-carrying tensors are replaced by ``text``."""
    replaced = {**kwargs, **{key: value for key, value in text.items() if key in TEXT_KWARGS}}
    if POOLED_TEXT_KEY in text:
        replaced["added_cond_kwargs"] = {**kwargs["added_cond_kwargs"], POOLED_TEXT_KEY: text[POOLED_TEXT_KEY]}
    return replaced


def unconditional_in_both_halves(text: TextInputs) -> TextInputs:
    """Null text under guidance: the unconditional half of the batch ``[uncond x B, cond x B]`` in both halves.

    Both branches then predict the same noise, so the guidance formula returns the unconditional prediction.
    """
    return {key: torch.cat([value.chunk(2)[0]] * 2) for key, value in text.items()}


def constant_text(null: TextInputs) -> Callable[[TextInputs], TextInputs]:
    """Null text without guidance: fixed text inputs (the empty prompt's, see :func:`empty_prompt_text`)."""

    def replace(text: TextInputs) -> TextInputs:
        if set(text) != set(null) or any(text[key].shape != null[key].shape for key in text):
            raise RuntimeError("the denoiser's text inputs changed shape since the empty prompt was encoded")
        return null

    return replace


def empty_prompt_text(pipe: Any, call: dict[str, Any]) -> TextInputs:
    """The text inputs the denoiser gets for the empty prompt: recorded from a one-step call of ``pipe``."""
    recorded: list[TextInputs] = []

    def record(module, args, kwargs):
        if not recorded:
            recorded.append(text_inputs(kwargs))

    handle = pipe.denoiser.register_forward_pre_hook(record, with_kwargs=True)
    try:
        # its own generator: the probe leaves torch's global random state as it was
        pipe(**{**call, "prompt": "", "num_inference_steps": 1, "output_type": "latent"},
             generator=torch.Generator("cpu").manual_seed(0))
    finally:
        handle.remove()
    return recorded[0]


@contextlib.contextmanager
def text_only_in_steps(
    denoiser: torch.nn.Module,
    clock: StepClock,
    has_text: Callable[[int], bool],
    null_text: Callable[[TextInputs], TextInputs],
) -> Iterator[None]:
    """In every step ``i`` (0-based, from ``clock``) where ``has_text(i)`` is false, the denoiser gets
    ``null_text(its text inputs)`` instead of its text inputs; other steps run untouched."""

    def switch(module, args, kwargs):
        if has_text(clock.index):
            return None
        text = text_inputs(kwargs)
        if not text:
            raise RuntimeError(f"no text input among {type(module).__name__}'s keyword arguments {sorted(kwargs)}")
        return args, with_text_inputs(kwargs, null_text(text))

    handle = denoiser.register_forward_pre_hook(switch, with_kwargs=True)
    try:
        yield
    finally:
        handle.remove()


# --- How much each cross-attention output changes from step to step ---------------------------------------------


@dataclass(frozen=True)
class Level:
    """A resolution level of a denoiser (or a group of PixArt blocks), where cross-attention modules sit."""

    rank: tuple[int, int]  # order from input to output: down levels, mid, up levels; groups of blocks
    name: str


def level_of(module_name: str, transformer_blocks: int) -> Level:
    """The level of the module named ``module_name`` (as in ``named_modules()``), e.g. ``up_blocks.1....``."""
    parts = module_name.split(".")
    if parts[0] in ("down_blocks", "up_blocks") and len(parts) > 1:
        side = parts[0].removesuffix("_blocks")
        return Level((0 if side == "down" else 2, int(parts[1])), f"{side} {parts[1]}")
    if parts[0] == "mid_block":
        return Level((1, 0), "mid")
    if parts[0] == "transformer_blocks" and len(parts) > 1:
        groups = min(TRANSFORMER_BLOCK_GROUPS, transformer_blocks)
        group = int(parts[1]) * groups // transformer_blocks
        first = -(-group * transformer_blocks // groups)  # the first block of the group (ceiling division)
        last = -(-(group + 1) * transformer_blocks // groups) - 1
        name = f"block {first + 1}" if first == last else f"blocks {first + 1}-{last + 1}"
        return Level((3, group), name)
    return Level((4, 0), parts[0])


@dataclass(frozen=True)
class ChangeRecord:
    step: int  # 1-based step whose output is compared with the step before
    module: str
    level: Level
    tokens: int  # latent tokens the module's output has (its resolution)
    relative_change: float


@contextlib.contextmanager
def recording_cross_attention_change(
    denoiser: torch.nn.Module, clock: StepClock, guided: bool
) -> Iterator[list[ChangeRecord]]:
    """Per step, ``||A_t - A_{t-1}|| / ||A_{t-1}||`` for the output ``A`` of every cross-attention module.

    Under guidance ``A`` is the mean of the uncond and cond halves: the tensor TGATE caches at its gate.
    Steps are those of ``clock`` (a module called twice in a step is compared with its last call).
    """
    modules = set(cross_attention_modules(denoiser))
    names = {module: name for name, module in denoiser.named_modules() if module in modules}
    blocks = len(getattr(denoiser, "transformer_blocks", ()))
    previous: dict[torch.nn.Module, tuple[int, torch.Tensor]] = {}
    records: list[ChangeRecord] = []

    def compare(module, args, output):
        current = (merge_guidance_halves(output) if guided else output).detach()
        before = previous.get(module)
        if before is not None and before[0] == clock.index - 1:
            # in float64, so half-precision outputs lose nothing; kept in their own dtype between steps
            difference = current.double() - before[1].double()
            change = torch.linalg.vector_norm(difference) / torch.linalg.vector_norm(before[1].double())
            name = names[module]
            records.append(ChangeRecord(clock.index + 1, name, level_of(name, blocks), current.shape[-2],
                                        float(change)))
        previous[module] = (clock.index, current)

    handles = [module.register_forward_hook(compare) for module in modules]
    try:
        yield records
    finally:
        for handle in handles:
            handle.remove()


def level_means(records: list[ChangeRecord]) -> list[dict[str, Any]]:
    """One row per step and level: the mean relative change over the level's cross-attention modules."""
    grouped: dict[tuple[int, Level], list[ChangeRecord]] = {}
    for record in records:
        grouped.setdefault((record.step, record.level), []).append(record)
    rows = []
    for (step, level), members in sorted(grouped.items(), key=lambda item: (item[0][0], item[0][1].rank)):
        rows.append({
            "step": step,
            "level": level.name,
            "tokens": members[0].tokens,
            "modules": len(members),
            "relative_change": math.fsum(m.relative_change for m in members) / len(members),
        })
    return rows
