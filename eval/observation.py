"""TGATE's key observation, reproduced: text matters in the first denoising steps and hardly afterwards.

Run from the repository root: ``python eval/observation.py --model sd21 --out DIR`` (``--help`` for the
flags; ``--tiny`` for an offline smoke run on tiny random components). It writes into DIR:

1. ``observation.png``: the paper's observation figure. Three sampling runs from the same noise, one row
   each, showing the clean image x0 predicted at several steps, then the final image: text in every step;
   text only in steps 1..N; text only in steps N+1..end (N = ``--split``; null text in the other steps).
2. ``convergence.csv`` / ``convergence.png``: per step and resolution level of the denoiser, the relative
   change ``||A_t - A_t-1|| / ||A_t-1||`` of the cross-attention outputs A, averaged over the level's modules
   (measured in the text-in-every-step run, i.e. the stock pipeline).
3. ``gate_sweep.csv`` / ``gate_sweep.png``: the final image of TGATE at several gate steps, side by side,
   each with its denoiser MACs (counted as eval/macs.py counts them) and its wall time; with TGATE-V2's
   ``--sp-interval --fi-interval --warm-up`` (default: the registry model's, v1 but for PixArt-Sigma).
4. ``run.json``: the settings, whether the weights were random, and the numbers of the plots.

"Null text" is the pipeline's own unconditional input: under classifier-free guidance both branches get the
unconditional (negative) text, which is the empty prompt's (SDXL: zeros), so the prediction is the
unconditional one; this is the denoiser input TGATE itself keeps after its gate, and it needs no
family-specific encoding. Pipelines without a guidance branch (LCM) get the empty prompt's text instead.
Text is switched at the denoiser's inputs and x0 is read at ``scheduler.step``: no pipeline code is copied,
so every family (SD, SDXL, PixArt, LCM) and any registry model with a TGATE pipeline works.

Files: this command (settings, the three runs, the outputs) is over 400 lines because its three parts share
one loaded pipeline and one run record; the probes of the runs are in ``eval/observation_probes.py``, the
figures in ``eval/observation_plots.py``.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import json
import sys
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Callable, Sequence

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # the repository root, for `common` and `eval`

import torch  # noqa: E402
from PIL import Image  # noqa: E402
from tqdm import tqdm  # noqa: E402

from common.architectures import VAE_SCALE_FACTOR  # noqa: E402
from common.cli import DTYPES, resolve_device_and_dtype, timed_generation  # noqa: E402
from common.models import MODELS, CheckpointNotFoundError, ModelSpec, get_model  # noqa: E402
from common.schedule import TgateSchedule  # noqa: E402
from common.settings import (  # noqa: E402
    V2_FIELDS, add_schedule_args, call_keywords, intervals_label, model_schedule, schedule_from_args,
)
from common.step_macs import pipeline_counter  # noqa: E402
from eval.macs_tables import format_count  # noqa: E402
from eval.observation_plots import convergence_figure, gate_sweep_figure, observation_figure  # noqa: E402
from eval.observation_probes import (  # noqa: E402
    ChangeRecord,
    StepRecord,
    constant_text,
    empty_prompt_text,
    level_means,
    predicted_clean_latents,
    recording_cross_attention_change,
    text_only_in_steps,
    unconditional_in_both_halves,
    watch_scheduler_steps,
)

PARTS = ("figure", "convergence", "sweep")
DEFAULT_GATES = (1, 3, 5, 10, 15, 25)
PREVIEW_COLUMNS = 6  # evenly spaced steps shown by default, besides the split
RANDOM_WEIGHTS_WARNING = ("TINY RANDOM WEIGHTS, not the real model: the images are noise and the convergence "
                          "curves mean nothing; only the code path runs")
FILES = {
    "figure": ("observation.png",),
    "convergence": ("convergence.csv", "convergence.png"),
    "sweep": ("gate_sweep.csv", "gate_sweep.png"),
}


# --- Command line ----------------------------------------------------------------------------------------------


def step_list(text: str) -> list[int]:
    """argparse type: '1,5,10' -> [1, 5, 10] (sorted, without repeats); every value >= 1."""
    try:
        values = [int(value) for value in text.split(",") if value.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected whole numbers separated by commas, e.g. 1,5,10; got {text!r}")
    if not values:
        raise argparse.ArgumentTypeError("expected at least one step")
    if min(values) < 1:
        raise argparse.ArgumentTypeError(f"steps are counted from 1, got {min(values)}")
    return sorted(set(values))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description="Reproduce TGATE's observation (cross-attention converges in the first denoising steps): "
        "the text-switching figure, the cross-attention convergence plot and CSV, and a gate sweep with MACs "
        "and times. Defaults are each model's paper settings.",
        epilog="Writes into --out: observation.png, convergence.csv, convergence.png, gate_sweep.csv, gate_sweep.png "
        "and run.json. Null text: under classifier-free guidance both branches get the pipeline's unconditional "
        "text (the empty prompt's; zeros for SDXL), so a step predicts the unconditional noise; without a guidance "
        "branch (LCM) the denoiser gets the empty prompt's text. Random weights (--tiny) are labelled in every output.",
    )
    parser.add_argument("--model", default="sd21", choices=list(MODELS), metavar="NAME",
                        help=f"registry model: {', '.join(MODELS)} (default: sd21)")
    parser.add_argument("--checkpoint", metavar="HUB_ID_OR_FOLDER",
                        help="where to load the weights from (default: the model's checkpoint)")
    parser.add_argument("--tiny", action="store_true", help="tiny random components built offline, for smoke "
                        "runs without weights: images are noise and the convergence means nothing")
    parser.add_argument("--prompt", help="the caption (default: the model's paper example)")
    parser.add_argument("--steps", type=int, help="denoising steps (default: the model's paper setting, e.g. 25)")
    parser.add_argument("--guidance", type=float,
                        help="classifier-free guidance scale; <= 1 turns guidance off (default: the paper's)")
    parser.add_argument("--seed", type=int, help="seed of the initial noise, shared by every run "
                        "(default: the paper's)")
    parser.add_argument("--split", type=int, metavar="N", help="figure rows 2 and 3: text only in steps 1..N, "
                        "then only in steps N+1..end (default: the model's paper gate step, 10 for the SD models; "
                        "half the steps when that is not below --steps)")
    parser.add_argument("--show-steps", type=step_list, metavar="LIST",
                        help="figure columns: the steps (from 1) whose predicted clean image is shown, e.g. "
                        f"1,5,10,15,20,25 (default: {PREVIEW_COLUMNS} evenly spaced steps plus N and N+1); the "
                        "final image is always the last column")
    parser.add_argument("--gates", type=step_list, metavar="LIST", help="gate steps of the sweep, e.g. 1,3,5,10 "
                        f"(default: those of {','.join(map(str, DEFAULT_GATES))} below --steps, plus --steps, "
                        "which is the stock pipeline)")
    add_schedule_args(parser, gate=False, deepcache=False, v2_help=", in the gate sweep")
    parser.add_argument("--parts", nargs="+", choices=PARTS, default=list(PARTS), metavar="PART",
                        help="what to make: figure (observation.png), convergence (convergence.csv/.png), sweep "
                        "(gate_sweep.csv/.png) (default: all three)")
    parser.add_argument("--resolution", type=int, metavar="PIXELS",
                        help="image side in pixels (default: the pipeline's, the paper's resolution)")
    parser.add_argument("--dtype", choices=["auto", *DTYPES], default="auto",
                        help="weights dtype; auto (default) = float16 on CUDA, float32 on CPU")
    parser.add_argument("--device", default="auto",
                        help="torch device: cuda, cuda:1, cpu, mps; auto (default) = cuda if available")
    parser.add_argument("--out", type=Path, metavar="DIR", help="output folder (default: observation_<model>)")
    return parser


@dataclass
class Settings:
    spec: ModelSpec
    weights: str  # what the weights are: the checkpoint loaded, or "tiny random components"
    random_weights: bool
    prompt: str
    steps: int
    guidance: float
    seed: int
    split: int
    show_steps: list[int]
    gates: list[int]
    schedule: TgateSchedule  # the gate sweep's TGATE-V2 intervals (its gate: the model's; the sweep sets its own)
    parts: list[str]
    resolution: int | None
    device: torch.device
    dtype: torch.dtype
    out: Path

    @property
    def v1(self) -> bool:
        return self.schedule.is_v1

    def at_gate(self, gate: int) -> TgateSchedule:
        return replace(self.schedule, gate_step=gate)

    def tgate(self, gate: int) -> dict[str, Any]:
        """TGATE's keyword arguments at ``gate``."""
        return call_keywords(self.at_gate(gate))

    def call(self) -> dict[str, Any]:
        """Keyword arguments of one pipeline call (without the generator)."""
        call = dict(prompt=self.prompt, num_inference_steps=self.steps, guidance_scale=self.guidance)
        if self.resolution:
            call.update(height=self.resolution, width=self.resolution)
        return call


def default_split(spec: ModelSpec, steps: int) -> int:
    return spec.gate_step if spec.gate_step < steps else max(1, steps // 2)


def default_show_steps(steps: int, split: int) -> list[int]:
    spread = {round(1 + k * (steps - 1) / (PREVIEW_COLUMNS - 1)) for k in range(PREVIEW_COLUMNS)}
    return sorted(spread | {min(split, steps), min(split + 1, steps)})


def parse_args(argv: Sequence[str] | None) -> Settings:
    parser = build_parser()
    args = parser.parse_args(argv)
    spec = get_model(args.model)
    steps = spec.steps if args.steps is None else args.steps
    guidance = spec.guidance_scale if args.guidance is None else args.guidance
    try:
        if steps < 1:
            raise ValueError(f"--steps must be >= 1, got {steps}")
        if "convergence" in args.parts and steps < 2:
            raise ValueError("the convergence part compares consecutive steps: it needs --steps >= 2")
        if guidance < 0:
            raise ValueError(f"--guidance must be >= 0, got {guidance}")
        if args.split is not None and args.split < 1:
            raise ValueError(f"--split must be >= 1 (text only in steps 1..N), got {args.split}")
        if args.show_steps and max(args.show_steps) > steps:
            raise ValueError(f"--show-steps: step {max(args.show_steps)} is beyond --steps {steps}")
        if args.resolution is not None and (args.resolution < 1 or args.resolution % VAE_SCALE_FACTOR):
            raise ValueError(f"--resolution must be a positive multiple of {VAE_SCALE_FACTOR}, got {args.resolution}")
        if args.tiny and args.checkpoint:
            raise ValueError("--tiny builds random components and ignores weights: drop --checkpoint or --tiny")
        schedule = schedule_from_args(args, model_schedule(spec))
        device, dtype = resolve_device_and_dtype(args.device, args.dtype)
    except ValueError as error:
        parser.error(str(error))
    split = default_split(spec, steps) if args.split is None else args.split
    return Settings(
        spec=spec,
        weights="tiny random components" if args.tiny else args.checkpoint or spec.checkpoint,
        random_weights=args.tiny,
        prompt=args.prompt or spec.prompt,
        steps=steps,
        guidance=guidance,
        seed=spec.seed if args.seed is None else args.seed,
        split=split,
        show_steps=args.show_steps or default_show_steps(steps, split),
        gates=args.gates or [gate for gate in DEFAULT_GATES if gate < steps] + [steps],
        schedule=schedule,
        parts=[part for part in PARTS if part in args.parts],
        resolution=args.resolution,
        device=device,
        dtype=dtype,
        out=args.out or Path(f"observation_{spec.key}"),
    )


# --- Sampling runs ---------------------------------------------------------------------------------------------


def generator(seed: int) -> torch.Generator:
    return torch.Generator("cpu").manual_seed(seed)


def decode_latents(pipe, latents: torch.Tensor) -> Image.Image:
    """Latents -> image, as the pipelines decode their final latents (VAE scaling, fp16 upcast)."""
    vae = pipe.vae
    upcast = vae.dtype == torch.float16 and vae.config.get("force_upcast", False)
    dtype = torch.float32 if upcast else vae.dtype
    config = vae.config
    if config.get("latents_mean") is not None and config.get("latents_std") is not None:
        mean = torch.tensor(config.latents_mean).view(1, -1, 1, 1).to(latents.device, dtype)
        std = torch.tensor(config.latents_std).view(1, -1, 1, 1).to(latents.device, dtype)
        latents = latents.to(dtype) * std / config.scaling_factor + mean
    else:
        latents = latents.to(dtype) / config.scaling_factor
    with torch.no_grad():
        try:
            if upcast:
                vae.to(torch.float32)
            image = vae.decode(latents, return_dict=False)[0]
        finally:
            if upcast:
                vae.to(torch.float16)
    return pipe.image_processor.postprocess(image.detach(), output_type="pil")[0]


@dataclass
class TextSchedule:
    label: str
    has_text: Callable[[int], bool]  # by 0-based step index
    switches: bool  # whether some step gets null text


def step_range(first: int, last: int) -> str:
    return f"step {first}" if first == last else f"steps {first}-{last}"


def text_schedules(split: int, steps: int) -> list[TextSchedule]:
    """The three rows of the figure: text in every step, only in steps 1..split, only in steps split+1..end."""
    if split < steps:
        early = f"text only in {step_range(1, split)}\n(null text after)"
        late = f"text only in {step_range(split + 1, steps)}\n(null text before)"
    else:  # the early row has text everywhere, the late row nowhere
        early = f"text only in steps 1-{split}:\nevery step (--split >= --steps)"
        late = "no text in any step\n(--split >= --steps)"
    return [
        TextSchedule("text in every step", lambda index: True, switches=False),
        TextSchedule(early, lambda index: index < split, switches=split < steps),
        TextSchedule(late, lambda index: index >= split, switches=True),
    ]


def null_text_for(pipe, settings: Settings):
    """The replacement of a step's text inputs (see the module docstring)."""
    if pipe.uses_guidance(settings.guidance):
        return unconditional_in_both_halves
    return constant_text(empty_prompt_text(pipe, settings.call()))


@dataclass
class ObservedRun:
    image: Image.Image  # the pipeline's output
    previews: dict[int, Image.Image]  # 1-based step -> decoded x0 predicted at that step
    timesteps: list[float]
    changes: list[ChangeRecord]  # when recorded


def observe(pipe, settings: Settings, schedule: TextSchedule, null_text=None, previews: Sequence[int] = (),
            record_change: bool = False, progress: tqdm | None = None) -> ObservedRun:
    """One sampling run with text only where ``schedule`` says (``null_text`` elsewhere, see
    :func:`null_text_for`), keeping x0 at the ``previews`` steps and, if asked, the cross-attention changes."""
    clean: dict[int, torch.Tensor] = {}

    def keep_clean(record: StepRecord) -> None:
        if record.index + 1 in previews:
            clean[record.index + 1] = predicted_clean_latents(pipe.scheduler, record).detach()
        if progress is not None:
            progress.update()

    with contextlib.ExitStack() as stack:
        clock = stack.enter_context(watch_scheduler_steps(pipe.scheduler, keep_clean))
        if schedule.switches:
            stack.enter_context(text_only_in_steps(pipe.denoiser, clock, schedule.has_text, null_text))
        guided = pipe.uses_guidance(settings.guidance)
        changes = stack.enter_context(recording_cross_attention_change(pipe.denoiser, clock, guided)) \
            if record_change else []
        image = pipe(generator=generator(settings.seed), **settings.call()).images[0]
    decoded = {step: decode_latents(pipe, latents) for step, latents in clean.items()}
    return ObservedRun(image, decoded, clock.timesteps, changes)


@dataclass
class SweepPoint:
    gate: int
    image: Image.Image
    seconds: float
    macs: int  # denoiser MACs of the whole run with this gate
    stock_macs: int


def gate_sweep(pipe, settings: Settings, progress: tqdm | None = None) -> list[SweepPoint]:
    """TGATE at each gate of ``settings.gates``: the image, its wall time and its MACs (eval/macs.py)."""
    latent_sides: list[tuple[int, ...]] = []
    with watch_scheduler_steps(pipe.scheduler, lambda record: latent_sides.append(tuple(record.sample.shape[-2:]))):
        # warm-up, untimed: the first call pays for kernel choices and allocations
        pipe(generator=generator(settings.seed), **{**settings.call(), "num_inference_steps": 2}, output_type="latent")
    height, width = latent_sides[0]
    if height != width:
        raise ValueError(f"MACs are counted for square images; the latents are {height}x{width}")
    guided = pipe.uses_guidance(settings.guidance)
    counter = pipeline_counter(pipe, height * pipe.vae_scale_factor, guided)

    def advance(record: StepRecord) -> None:
        if progress is not None:
            progress.update()

    points = []
    with watch_scheduler_steps(pipe.scheduler, advance):
        for gate in settings.gates:
            image, seconds = timed_generation(pipe, settings.device, settings.seed, **settings.tgate(gate),
                                              **settings.call())
            stock_macs, gate_macs = counter.run_macs(settings.steps, settings.at_gate(gate))
            points.append(SweepPoint(gate, image, seconds, gate_macs, stock_macs))
    return points


# --- Outputs ---------------------------------------------------------------------------------------------------


def write_csv(path: Path, rows: list[dict[str, Any]]) -> None:
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)


def headline(settings: Settings) -> str:
    return (f"{settings.spec.title} | {settings.weights} | {settings.steps} steps, guidance {settings.guidance:g}, "
            f"seed {settings.seed}\n\"{settings.prompt}\"")


def warning(settings: Settings) -> str | None:
    return RANDOM_WEIGHTS_WARNING if settings.random_weights else None


def gate_caption(point: SweepPoint, steps: int, v1: bool = True) -> str:
    # with V2 intervals even a gate >= steps caches and reuses self-attention: not stock
    name = f"gate {point.gate}" + (" = stock" if point.gate >= steps and v1 else "")
    share = point.macs / point.stock_macs
    return f"{name}\n{format_count(point.macs, 'macs')} MACs ({share:.0%})\n{point.seconds:.2f} s"


def convergence_rows(settings: Settings, run: ObservedRun) -> list[dict[str, Any]]:
    rows = level_means(run.changes)
    return [{"weights": settings.weights, "step": row["step"], "timestep": run.timesteps[row["step"] - 1], **{
        key: row[key] for key in ("level", "tokens", "modules", "relative_change")}} for row in rows]


def convergence_marks(settings: Settings) -> dict[str, int]:
    """Vertical lines of the convergence plot: the split and the paper's gate step (one line where equal)."""
    split, gate = settings.split, settings.spec.gate_step
    marks = {f"--split {split} = paper gate": split} if split == gate else {
        f"--split {split}": split, f"paper gate {gate}": gate}
    return {label: step for label, step in marks.items() if 2 <= step <= settings.steps}


def print_convergence(rows: list[dict[str, Any]], steps: Sequence[int]) -> None:
    shown = [step for step in steps if step >= 2]
    levels = list(dict.fromkeys(row["level"] for row in rows))
    value = {(row["level"], row["step"]): row["relative_change"] for row in rows}
    print("relative change of cross-attention outputs from the step before, mean per level:")
    print(f"  {'level':<14}" + "".join(f"{'step ' + str(step):>10}" for step in shown))
    for level in levels:
        print(f"  {level:<14}" + "".join(f"{value.get((level, step), float('nan')):>10.4f}" for step in shown))


def load_pipeline(settings: Settings):
    """The model's TGATE pipeline on the chosen device, or None (after a message) when weights are missing."""
    if settings.random_weights:
        pipe = settings.spec.tiny_pipeline()
        if settings.dtype != torch.float32:  # tiny components are built in float32
            pipe = pipe.to(dtype=settings.dtype)
    else:
        try:
            pipe = settings.spec.load(settings.weights, torch_dtype=settings.dtype)
        except CheckpointNotFoundError as error:
            print(f"error: {error}", file=sys.stderr)
            return None
    pipe = pipe.to(settings.device)
    pipe.set_progress_bar_config(disable=True)  # one bar over all runs instead
    return pipe


def observation_runs(pipe, settings: Settings) -> list[tuple[TextSchedule, ObservedRun]]:
    """The figure's three runs, or only the text-in-every-step one when the convergence alone is asked for."""
    schedules = text_schedules(settings.split, settings.steps)
    if "figure" not in settings.parts:
        schedules = schedules[:1]
    null_text = null_text_for(pipe, settings) if any(schedule.switches for schedule in schedules) else None
    previews = settings.show_steps if "figure" in settings.parts else []
    runs = []
    with tqdm(total=len(schedules) * settings.steps, desc="observation runs", unit="step", file=sys.stderr) as bar:
        for index, schedule in enumerate(schedules):
            record_change = index == 0 and "convergence" in settings.parts
            runs.append((schedule, observe(pipe, settings, schedule, null_text, previews, record_change, bar)))
    return runs


def null_text_meaning(guided: bool) -> str:
    return ("the unconditional (negative, empty-prompt) text in both guidance branches" if guided
            else "the empty prompt's text (no guidance branch)")


def write_observation_figure(settings: Settings, runs: list[tuple[TextSchedule, ObservedRun]], guided: bool) -> dict:
    timesteps = runs[0][1].timesteps
    titles = [f"step {step}\nt = {timesteps[step - 1]:g}" for step in settings.show_steps] + ["final image"]
    rows = [(schedule.label, [run.previews[step] for step in settings.show_steps] + [run.image])
            for schedule, run in runs]
    title = headline(settings) + f"\npredicted clean image x0 at each step; null text = {null_text_meaning(guided)}"
    observation_figure(rows, titles, title, warning(settings)).savefig(settings.out / "observation.png", dpi=100)
    return {"split": settings.split, "null_text": null_text_meaning(guided), "show_steps": settings.show_steps,
            "figure_rows": [schedule.label.replace("\n", " ") for schedule, _ in runs]}


def write_convergence(settings: Settings, run: ObservedRun) -> dict:
    rows = convergence_rows(settings, run)
    write_csv(settings.out / "convergence.csv", rows)
    title = headline(settings) + "\ncross-attention convergence (text in every step)"
    figure = convergence_figure(rows, convergence_marks(settings), title, warning(settings))
    figure.savefig(settings.out / "convergence.png", dpi=100)
    print_convergence(rows, settings.show_steps)
    return {"convergence": [{key: value for key, value in row.items() if key != "weights"} for row in rows]}


def write_gate_sweep(pipe, settings: Settings) -> dict:
    with tqdm(total=len(settings.gates) * settings.steps, desc="gate sweep", unit="step", file=sys.stderr) as bar:
        points = gate_sweep(pipe, settings, bar)
    numbers = [{"gate": p.gate, "macs": p.macs, "stock_macs": p.stock_macs, "seconds": round(p.seconds, 4)}
               for p in points]
    write_csv(settings.out / "gate_sweep.csv",
              [{"weights": settings.weights, **row, "device": str(settings.device)} for row in numbers])
    panels = [(gate_caption(point, settings.steps, settings.v1), point.image) for point in points]
    v2 = "" if settings.v1 else f" (TGATE-V2: {intervals_label(settings.schedule)})"
    title = (headline(settings) + f"\nTGATE gate sweep{v2}: denoiser MACs (eval/macs.py), wall time of the whole "
             f"pipeline call on {settings.device}")
    gate_sweep_figure(panels, title, warning(settings)).savefig(settings.out / "gate_sweep.png", dpi=100)
    for point in points:
        print("  " + gate_caption(point, settings.steps, settings.v1).replace("\n", " | "))
    return {"gate_sweep": numbers, **{field: getattr(settings.schedule, field) for field in V2_FIELDS}}


def main(argv: Sequence[str] | None = None) -> int:
    settings = parse_args(argv)
    if settings.random_weights:
        print(f"[--tiny] {RANDOM_WEIGHTS_WARNING}")
    pipe = load_pipeline(settings)
    if pipe is None:
        return 2
    guided = pipe.uses_guidance(settings.guidance)
    dtype = str(settings.dtype).removeprefix("torch.")
    print(headline(settings).replace("\n", " | ") + f" | {settings.device} {dtype}")
    settings.out.mkdir(parents=True, exist_ok=True)
    report: dict[str, Any] = {
        "model": settings.spec.key, "title": settings.spec.title, "weights": settings.weights,
        "random_weights": settings.random_weights, "warning": warning(settings), "prompt": settings.prompt,
        "steps": settings.steps, "guidance_scale": settings.guidance, "guided": guided, "seed": settings.seed,
        "resolution": settings.resolution, "device": str(settings.device), "dtype": dtype,
    }
    if "figure" in settings.parts or "convergence" in settings.parts:
        runs = observation_runs(pipe, settings)
        if "figure" in settings.parts:
            report.update(write_observation_figure(settings, runs, guided))
        if "convergence" in settings.parts:
            report.update(write_convergence(settings, runs[0][1]))
    if "sweep" in settings.parts:
        report.update(write_gate_sweep(pipe, settings))
    report["files"] = [name for part in settings.parts for name in FILES[part]] + ["run.json"]
    (settings.out / "run.json").write_text(json.dumps(report, indent=2) + "\n")
    print("wrote " + ", ".join(str(settings.out / name) for name in report["files"]))
    if settings.random_weights:
        print(f"[--tiny] {RANDOM_WEIGHTS_WARNING}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
