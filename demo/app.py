"""A page to see TGATE: stock and TGATE on the same seed, side by side, with seconds, MACs and the difference.

    pip install -r requirements.txt -r demo/requirements.txt
    python demo/app.py                       # http://127.0.0.1:7860, the toy digits model, offline

``--help`` for the flags. Serves on 127.0.0.1 only, with no share link and no analytics, and never downloads:
a registry model runs when its weights are already on this machine (the Hugging Face cache), else the page
says how to get them. A second tab sweeps the gate (the paper's gate figure, interactively).
"""

from __future__ import annotations

import argparse
import functools
import html
import logging
import os
import sys
from pathlib import Path
from typing import Callable, Sequence

# Before gradio and huggingface_hub are imported: they read these once.
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
if __name__ == "__main__":
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # the demo never downloads: missing weights get a message
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # the repository root, for `common`, `demo`

import gradio as gr  # noqa: E402

from common.models import MODELS, TOY_MODEL, get_model  # noqa: E402
from demo.runner import (  # noqa: E402
    MAX_STEPS, DemoInputError, ModelStore, Run, Settings, abs_difference, enlarge, format_macs, model_choices,
    parse_gates, weights_problem,
)

LOG = logging.getLogger("tgate.demo")
INTRO = """# TGATE: stock vs. gated, same seed
After the **gate** step every cross-attention module returns the output it cached at the gate and classifier-free
guidance is dropped (one branch instead of two). Move the gate, press **Run**: both images, their seconds and the
denoiser's MACs (counted on the real architecture), the speedup and the pixel difference. Small images are shown
enlarged, pixel for pixel."""


def page_errors(handler: Callable) -> Callable:
    """Bad input becomes a message on the page; anything unexpected too (its traceback goes to the server log)."""

    @functools.wraps(handler)
    def wrapped(*args, **kwargs):
        try:
            return handler(*args, **kwargs)
        except DemoInputError as error:
            raise gr.Error(str(error), print_exception=False) from None
        except Exception as error:  # noqa: BLE001 - a page shows a message, never a traceback
            LOG.exception("the run failed")
            raise gr.Error(f"The run failed: {type(error).__name__}: {error}", print_exception=False) from None

    return wrapped


def settings_of(prompt, negative_prompt, steps, seed, guidance, sp_interval, fi_interval, warm_up,
                deepcache_interval, deepcache_branch) -> Settings:
    try:
        return Settings(prompt=str(prompt or ""), negative_prompt=str(negative_prompt or ""), steps=int(steps),
                        seed=int(seed), guidance=float(guidance), sp_interval=int(sp_interval),
                        fi_interval=int(fi_interval), warm_up=int(warm_up),
                        deepcache_interval=int(deepcache_interval), deepcache_branch=int(deepcache_branch))
    except (TypeError, ValueError) as error:
        raise DemoInputError(f"Every setting needs a number: {error}") from None


def caption(run: Run) -> str:
    return f"{run.label}: {run.seconds:.2f} s, {format_macs(run.macs)} MACs"


def comparison_text(stock: Run, tgate: Run, gate: int, steps: int) -> str:
    _, mean, peak = abs_difference(stock.image, tgate.image)
    lines = [f"**TGATE speedup: {stock.seconds / tgate.seconds:.2f}x** (stock {stock.seconds:.2f} s, TGATE "
             f"{tgate.seconds:.2f} s); MACs {format_macs(stock.macs)} -> {format_macs(tgate.macs)} "
             f"({stock.macs / tgate.macs:.2f}x fewer).",
             f"|stock - TGATE|: mean {mean:.2f}, max {peak} (of 255 levels per channel)."]
    if gate >= steps:
        lines.append(f"Gate {gate} >= {steps} steps gates nothing: the stock pipeline"
                     + (", bit for bit." if peak == 0 else "."))
    return "\n\n".join(lines)


def model_note(key: str) -> str:
    spec = get_model(key)
    problem = weights_problem(spec)
    if problem:
        return f"**{spec.title}**: {html.escape(problem)}"
    deepcache = "" if spec.denoiser == "unet" else " DeepCache does not apply (a transformer, not a UNet)."
    return (f"**{spec.title}**: {spec.resolution}x{spec.resolution}, defaults {spec.steps} steps, gate "
            f"{spec.gate_step}, guidance {spec.guidance_scale}.{deepcache}" + (f" {html.escape(spec.note)}." if spec.note else ""))


def build_app(store: ModelStore, default_model: str = TOY_MODEL) -> gr.Blocks:
    """The page: model and settings on top, a tab comparing stock with TGATE, a tab sweeping the gate."""
    spec = get_model(default_model)

    def compare(model, gate, *values, progress=gr.Progress()):
        settings = settings_of(*values)
        stock, tgate = store.get(model).compare(settings, int(gate), lambda done, what: progress(done, desc=what))
        diff, _, _ = abs_difference(stock.image, tgate.image)
        return (gr.Image(enlarge(stock.image), label=caption(stock)), gr.Image(enlarge(tgate.image), label=caption(tgate)),
                gr.Image(enlarge(diff), label="|stock - TGATE|"), comparison_text(stock, tgate, int(gate), settings.steps))

    def sweep(model, gates_text, *values, progress=gr.Progress()):
        settings = settings_of(*values)
        runs = store.get(model).sweep(settings, parse_gates(gates_text), lambda done, what: progress(done, desc=what))
        stock = runs[0]
        rows = ["| run | seconds | speedup | MACs |", "| --- | ---: | ---: | ---: |"]
        rows += [f"| {run.label} | {run.seconds:.2f} | {stock.seconds / run.seconds:.2f}x | {format_macs(run.macs)} |"
                 for run in runs]
        return [(enlarge(run.image), caption(run)) for run in runs], "\n".join(rows)

    def model_changed(model):
        chosen = get_model(model)
        unet = chosen.denoiser == "unet"
        return (model_note(model), gr.update(value=chosen.prompt), gr.update(value=chosen.steps),
                gr.update(value=min(chosen.gate_step, chosen.steps), maximum=chosen.steps), gr.update(value=chosen.seed),
                gr.update(value=chosen.guidance_scale), gr.update(value=chosen.sp_interval),
                gr.update(value=chosen.fi_interval), gr.update(value=chosen.warm_up),
                gr.update(value=1, interactive=unet), gr.update(value=0, interactive=unet))

    with gr.Blocks(title="TGATE demo", analytics_enabled=False) as app:
        gr.Markdown(INTRO)
        with gr.Row():
            model = gr.Dropdown(model_choices(), value=default_model, label="model", scale=1)
            note = gr.Markdown(model_note(default_model))
        with gr.Row():
            prompt = gr.Textbox(spec.prompt, label="prompt", elem_id="prompt", scale=2)
            negative_prompt = gr.Textbox("", label="negative prompt", scale=1)
        with gr.Row():
            steps = gr.Slider(1, MAX_STEPS, spec.steps, step=1, label="steps")
            seed = gr.Number(spec.seed, precision=0, label="seed")
            guidance = gr.Number(spec.guidance_scale, label="guidance (<= 1: no guidance)")
        with gr.Accordion("TGATE-V2: self-attention caching (1, 1, 0 = v1)", open=False):
            with gr.Row():
                sp_interval = gr.Number(spec.sp_interval, precision=0, minimum=1, label="sp_interval (before the gate)")
                fi_interval = gr.Number(spec.fi_interval, precision=0, minimum=1, label="fi_interval (after the gate)")
                warm_up = gr.Number(spec.warm_up, precision=0, minimum=0, label="warm_up")
        with gr.Accordion("DeepCache (UNet models): full UNet every N steps, else its shallow branch", open=False):
            with gr.Row():
                deepcache_interval = gr.Number(1, precision=0, minimum=1, label="interval (1 = off; official: 3)",
                                               interactive=spec.denoiser == "unet")
                deepcache_branch = gr.Number(0, precision=0, minimum=0, label="branch (cache_branch_id)",
                                             interactive=spec.denoiser == "unet")
        values = [prompt, negative_prompt, steps, seed, guidance, sp_interval, fi_interval, warm_up,
                  deepcache_interval, deepcache_branch]

        with gr.Tab("Stock vs TGATE"):
            with gr.Row():
                # the page narrows the range to the steps; the server accepts up to MAX_STEPS (API calls set no
                # range) and says itself when a gate is after the steps
                gate = gr.Slider(1, MAX_STEPS, min(spec.gate_step, spec.steps), step=1, elem_id="gate",
                                 label="gate step (= steps: nothing gated, the stock image)", scale=3)
                run = gr.Button("Run stock and TGATE", variant="primary", elem_id="run", scale=1)
            with gr.Row():
                image_box = functools.partial(gr.Image, format="png", type="pil", interactive=False, height=280)
                stock_image = image_box(label="stock", elem_id="stock-image")
                tgate_image = image_box(label="TGATE", elem_id="tgate-image")
                diff_image = image_box(label="|stock - TGATE|", elem_id="diff-image")
            summary = gr.Markdown(elem_id="summary")
        with gr.Tab("Gate sweep"):
            with gr.Row():
                gates = gr.Textbox("1, 3, 5, 10, 15", label="gates to sweep (stock runs first)", scale=3)
                run_sweep = gr.Button("Sweep the gate", variant="primary", elem_id="sweep", scale=1)
            strip = gr.Gallery(label="stock, then TGATE at each gate", columns=6, format="png",
                               height=250, elem_id="strip")
            table = gr.Markdown()

        run.click(page_errors(compare), [model, gate, *values], [stock_image, tgate_image, diff_image, summary],
                  api_name="compare")
        run_sweep.click(page_errors(sweep), [model, gates, *values], [strip, table], api_name="sweep")
        narrow_gate = dict(fn=lambda s, g: gr.update(maximum=int(s), value=min(int(g), int(s))), inputs=[steps, gate],
                           outputs=gate, api_visibility="private", queue=False)
        steps.change(**narrow_gate)
        app.load(**narrow_gate)
        model.change(model_changed, model, [note, prompt, steps, gate, seed, guidance, sp_interval, fi_interval,
                                            warm_up, deepcache_interval, deepcache_branch], api_visibility="private",
                     queue=False)
    return app


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description="Serve a page comparing the stock pipeline with TGATE on the same "
                                     "seed (side by side, seconds, MACs, difference) and sweeping the gate. Offline: "
                                     "it never downloads weights.")
    parser.add_argument("--model", choices=list(MODELS), default=TOY_MODEL,
                        help=f"the model loaded at start and selected on the page (default: {TOY_MODEL}, the toy "
                        "digits model committed in eval/toy/checkpoint); another registry model needs its weights in "
                        "the Hugging Face cache")
    parser.add_argument("--host", default="127.0.0.1", help="address to serve on (default: 127.0.0.1, this machine "
                        "only; 0.0.0.0 opens it to the network)")
    parser.add_argument("--port", type=int, default=7860, help="port to serve on (default: 7860)")
    parser.add_argument("--device", default="auto", help="torch device: cuda, cpu, ...; auto (default) = cuda if "
                        "available (float16 there, float32 on the CPU)")
    parser.add_argument("--queue-size", type=int, default=16, help="requests waiting at most; more are turned away "
                        "with a message (default: 16)")
    parser.add_argument("--concurrency", type=int, default=2, help="requests running at once on the one shared "
                        "pipeline (default: 2)")
    return parser


def launch(app: gr.Blocks, host: str = "127.0.0.1", port: int = 7860, queue_size: int = 16, concurrency: int = 2,
           block: bool = True):
    """Serve ``app`` with a bounded queue; ``block=False`` returns at once (tests)."""
    app.queue(max_size=queue_size, default_concurrency_limit=concurrency)
    return app.launch(server_name=host, server_port=port, share=False, show_error=True, quiet=not block,
                      prevent_thread_lock=not block, ssr_mode=False, mcp_server=False, footer_links=["api"])


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    for name in ("port", "queue_size", "concurrency"):
        if getattr(args, name) < 1 and not (name == "port" and args.port == 0):
            parser.error(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    try:
        store = ModelStore(args.device)
        print(f"loading {args.model} on {store.device} ...", flush=True)
        store.get(args.model)
    except ValueError as error:  # DemoInputError (weights not here), a bad --device
        print(f"error: {error}", file=sys.stderr)
        return 2
    launch(build_app(store, args.model), args.host, args.port, args.queue_size, args.concurrency)
    return 0


if __name__ == "__main__":
    sys.exit(main())
