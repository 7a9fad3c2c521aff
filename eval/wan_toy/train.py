"""Train the Wan toy (a WanPipeline of 16x16 handwritten digits) from scratch, on the CPU, with a fixed seed.

    python eval/wan_toy/train.py          # writes eval/wan_toy/checkpoint/ (with training.json)

Three phases, each seeded on its own: (1) a small AutoencoderKLWan on single 16x16 frames (8x8x4 latents), its
per-channel ``latents_mean`` / ``latents_std`` measured on the training digits (WanPipeline un-normalises with
them); (2) a random 2-layer UMT5 encoder, kept frozen: the prompt embeddings are computed once, by WanPipeline's
own ``encode_prompt``; (3) a WanTransformer3DModel trained with flow matching as Wan is (``x_t = (1 - s) x_0 + s e``,
target ``e - x_0``, timestep ``1000 s``, ``s`` logit-normal), 10% empty prompts for classifier-free guidance,
and an EMA of the weights, which is what is saved. The digit classifier is the SD toy's (``eval/toy/``).

Text length: WanPipeline pads the prompt to ``max_sequence_length`` (512 unless a caller says otherwise) with
zero embeddings, and Wan's cross-attention attends to every pad. All pads give the same key and value, so
attending to P of them is exactly attending to one with its logit raised by log(P). Training runs the
16-token text with that bias on the pads (``PaddedTextAttnProcessor``), for a pad count drawn per sample
log-uniformly between the 16-token and the 512-token call: the saved model serves any length in between, at
the cost of 16 tokens.

Smoke run: ``python eval/wan_toy/train.py --transformer-steps 2 --vae-steps 2 --out /tmp/wan_toy``.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the repository root, for `common` and `eval`

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from tqdm.auto import tqdm  # noqa: E402

from eval.toy.digits import CAPTION_STYLES, NUM_CLASSES, caption_for, digit_tensors, load_classifier  # noqa: E402
from eval.toy.train import EMA, cosine_schedule, random_batch, to_vae_range  # noqa: E402
from eval.wan_toy.model import (  # noqa: E402
    CALL_DEFAULTS,
    CHECKPOINT_DIR,
    FLOW_SHIFT,
    LATENT_CHANNELS,
    TEXT_LENGTH,
    WAN_TEXT_LENGTH,
    sampling_scheduler,
    toy_text_encoder,
    toy_tokenizer,
    toy_transformer,
    toy_vae,
)

EMPTY_CAPTION_RATE = 0.1
DEFAULTS = dict(vae_steps=250, vae_batch_size=64, transformer_steps=1200, batch_size=128, seed=0)


def train_vae(steps: int, batch_size: int, seed: int, images: torch.Tensor):
    """The Wan VAE on single frames; a weak KL term, as SD's and Wan's VAEs have."""
    torch.manual_seed(seed)
    generator = torch.Generator().manual_seed(seed)
    vae = toy_vae()
    optimizer = torch.optim.AdamW(vae.parameters(), lr=2e-3)
    schedule = cosine_schedule(optimizer, steps)
    frames = to_vae_range(images)[:, :, None]  # (N, 3, 1, 16, 16): one frame
    progress = tqdm(range(steps), desc="vae", mininterval=2)
    for _ in progress:
        batch = frames[random_batch(len(frames), batch_size, generator)]
        posterior = vae.encode(batch).latent_dist
        reconstruction = vae.decode(posterior.sample(generator)).sample
        loss = F.mse_loss(reconstruction, batch) + 1e-5 * posterior.kl().mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        schedule.step()
    vae.eval()
    with torch.no_grad():
        posterior = vae.encode(frames).latent_dist
        reconstruction_error = (vae.decode(posterior.mean).sample - frames).abs().mean().item() / 2
    mean = posterior.mean.mean(dim=(0, 2, 3, 4))
    std = posterior.mean.std(dim=(0, 2, 3, 4))
    vae.register_to_config(latents_mean=[round(v, 6) for v in mean.tolist()],
                           latents_std=[round(v, 6) for v in std.tolist()])
    return vae, posterior.mean, posterior.std, reconstruction_error


def caption_embeddings(tokenizer, text_encoder) -> tuple[torch.Tensor, torch.Tensor]:
    """The empty prompt, then each digit in each caption style, embedded by WanPipeline's own ``encode_prompt``
    at the toy's text length: (1 + 10 x styles, TEXT_LENGTH, TEXT_DIM), and each prompt's token count."""
    from diffusers import WanPipeline

    pipe = WanPipeline(tokenizer=tokenizer, text_encoder=text_encoder, vae=toy_vae(), scheduler=sampling_scheduler())
    captions = [""] + [caption_for(label, style) for label in range(NUM_CLASSES) for style in CAPTION_STYLES]
    with torch.no_grad():
        embeddings, _ = pipe.encode_prompt(captions, do_classifier_free_guidance=False,
                                           max_sequence_length=TEXT_LENGTH, device=torch.device("cpu"))
    lengths = tokenizer(captions, return_tensors="pt", padding=True).attention_mask.sum(dim=1)
    if lengths.max() >= TEXT_LENGTH:
        raise RuntimeError(f"a caption fills all {TEXT_LENGTH} tokens: no pad left to stand for a longer text")
    return embeddings, lengths


class PaddedTextAttnProcessor:
    """Wan's cross-attention as if the text had ``pads`` zero-embedding pads instead of the ones it has.

    Every pad is the same token (WanPipeline zeroes the embeddings past the prompt), so P pads act as one pad
    whose attention logit is raised by log(P): an additive mask of log(pads / pads present) on the pads is exact.
    """

    def __init__(self, processor) -> None:
        self.processor = processor
        self.bias: torch.Tensor | None = None  # (B, 1, 1, text length), set per batch

    def set_pads(self, lengths: torch.Tensor, pads: torch.Tensor, text_length: int) -> None:
        """``lengths``: the prompts' token counts; ``pads``: how many pads each should act as having."""
        present = text_length - lengths
        if (present < 1).any() or (pads < present).any():
            raise ValueError("every prompt needs at least one pad, and at least the pads it has")
        is_pad = torch.arange(text_length)[None] >= lengths[:, None]
        bias = torch.where(is_pad, torch.log(pads / present).float()[:, None], torch.zeros(()))
        self.bias = bias[:, None, None]

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, rotary_emb=None):
        return self.processor(attn, hidden_states, encoder_hidden_states, self.bias, rotary_emb)


def install_padded_text(transformer) -> PaddedTextAttnProcessor:
    """One shared :class:`PaddedTextAttnProcessor` on every ``attn2`` of the transformer."""
    processor = PaddedTextAttnProcessor(transformer.blocks[0].attn2.processor)
    for block in transformer.blocks:
        block.attn2.set_processor(processor)
    return processor


def flow_matching_inputs(latents: torch.Tensor, generator: torch.Generator):
    """Wan's rectified flow: x_t = (1 - s) x_0 + s e with s logit-normal, timestep 1000 s, target e - x_0."""
    noise = torch.randn(latents.shape, generator=generator)
    sigma = torch.sigmoid(torch.randn(latents.shape[0], generator=generator))
    s = sigma.view(-1, 1, 1, 1, 1)
    return (1 - s) * latents + s * noise, sigma * 1000, noise - latents


def train_transformer(steps: int, batch_size: int, seed: int, latent_mean, latent_std, labels, vae_config,
                      embeddings: torch.Tensor, lengths: torch.Tensor):
    torch.manual_seed(seed)
    generator = torch.Generator().manual_seed(seed)
    transformer = toy_transformer().train()
    processor = install_padded_text(transformer)
    channel_mean = torch.tensor(vae_config.latents_mean).view(1, -1, 1, 1, 1)
    channel_std = torch.tensor(vae_config.latents_std).view(1, -1, 1, 1, 1)
    styles = len(CAPTION_STYLES)
    optimizer = torch.optim.AdamW(transformer.parameters(), lr=2e-3, weight_decay=1e-2)
    schedule = cosine_schedule(optimizer, steps, warmup=100)
    ema = EMA([transformer], decay=0.995)
    losses = []
    progress = tqdm(range(steps), desc="transformer", mininterval=2)
    for _ in progress:
        index = random_batch(len(labels), batch_size, generator)
        sampled = latent_mean[index] + latent_std[index] * torch.randn(latent_mean[index].shape, generator=generator)
        latents = (sampled - channel_mean) / channel_std  # WanPipeline's normalisation
        caption = 1 + labels[index] * styles + torch.randint(0, styles, (batch_size,), generator=generator)
        caption[torch.rand(batch_size, generator=generator) < EMPTY_CAPTION_RATE] = 0
        # the text length this sample stands for: log-uniform between the toy's 16 and Wan's 512 tokens
        length = torch.exp(torch.empty(batch_size).uniform_(math.log(TEXT_LENGTH), math.log(WAN_TEXT_LENGTH),
                                                            generator=generator)).round()
        processor.set_pads(lengths[caption], length - lengths[caption], TEXT_LENGTH)
        noisy, timestep, target = flow_matching_inputs(latents, generator)
        prediction = transformer(noisy, timestep, embeddings[caption], return_dict=False)[0]
        loss = F.mse_loss(prediction, target)
        optimizer.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(transformer.parameters(), 1.0)
        optimizer.step()
        schedule.step()
        ema.update()
        losses.append(loss.item())
        if len(losses) % 50 == 0:
            progress.set_postfix(loss=f"{sum(losses[-50:]) / 50:.4f}")
    ema.copy_to_live()
    for block in transformer.blocks:  # back to stock processors: the saved model is plain Wan
        block.attn2.set_processor(processor.processor)
    return transformer.eval(), losses


def save_pipeline(out: Path, transformer, vae, text_encoder, tokenizer) -> None:
    from diffusers import WanPipeline

    pipe = WanPipeline(tokenizer=tokenizer, text_encoder=text_encoder, vae=vae, scheduler=sampling_scheduler(),
                       transformer=transformer)
    pipe.save_pretrained(out, safe_serialization=True)


def quick_check(out: Path, per_digit: int, steps: int, seed: int, text_length: int) -> dict[str, float]:
    """Sample ``per_digit`` single frames of each digit from the saved folder; the classifier's accuracy and toy-FD."""
    from eval.wan_toy.model import frame_measures, load_pipeline

    pipe = load_pipeline(out)
    labels = [label for label in range(NUM_CLASSES) for _ in range(per_digit)]
    video = pipe([caption_for(label) for label in labels], num_inference_steps=steps, guidance_scale=5.0,
                 generator=torch.Generator().manual_seed(seed), output_type="np",
                 **{**CALL_DEFAULTS, "max_sequence_length": text_length}).frames
    return frame_measures(video, labels)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description="Train the Wan toy (WanPipeline of 16x16 handwritten digits: WanTransformer3DModel, "
        "AutoencoderKLWan, UMT5 encoder) on the CPU with a fixed seed. The defaults reproduce the committed "
        "eval/wan_toy/checkpoint/.")
    parser.add_argument("--out", type=Path, default=CHECKPOINT_DIR,
                        help="WanPipeline folder to write (default: the committed eval/wan_toy/checkpoint/)")
    parser.add_argument("--transformer-steps", type=int, default=DEFAULTS["transformer_steps"],
                        help=f"optimizer steps of the transformer (default {DEFAULTS['transformer_steps']})")
    parser.add_argument("--vae-steps", type=int, default=DEFAULTS["vae_steps"],
                        help=f"optimizer steps of the VAE (default {DEFAULTS['vae_steps']})")
    parser.add_argument("--vae-batch-size", type=int, default=DEFAULTS["vae_batch_size"],
                        help=f"batch size of the VAE (default {DEFAULTS['vae_batch_size']}: per image its 3D "
                        "convolutions cost about 2.5 times a transformer step)")
    parser.add_argument("--batch-size", type=int, default=DEFAULTS["batch_size"],
                        help=f"batch size of the transformer (default {DEFAULTS['batch_size']})")
    parser.add_argument("--seed", type=int, default=DEFAULTS["seed"], help=f"the seed (default {DEFAULTS['seed']})")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch CPU threads (default 1: on a shared machine more threads than free cores "
                        "slow training down; try 2 on an idle 2-core machine)")
    parser.add_argument("--check-per-digit", type=int, default=10,
                        help="after training, sample this many single frames per digit (20 UniPC steps, guidance 5) "
                        "at text lengths 16 and 512, and record accuracy and toy-FD; 0 skips (default 10)")
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    counts = dict(transformer_steps=args.transformer_steps, vae_steps=args.vae_steps,
                  vae_batch_size=args.vae_batch_size, batch_size=args.batch_size)
    if any(value < 1 for value in counts.values()) or args.threads < 1 or args.check_per_digit < 0:
        parser.error("step counts, batch sizes and --threads must be >= 1, --check-per-digit >= 0")
    not_default = {k: v for k, v in {**counts, "seed": args.seed}.items() if v != DEFAULTS[k]}
    if not_default and args.out.resolve() == CHECKPOINT_DIR:
        flags = ", ".join(f"--{key.replace('_', '-')} {value}" for key, value in not_default.items())
        parser.error(f"non-default settings ({flags}) would overwrite the committed checkpoint: pass --out")
    torch.set_num_threads(args.threads)
    started, cpu_started = time.perf_counter(), time.process_time()
    load_before = _load_average()

    images, labels = digit_tensors("train")
    vae, latent_mean, latent_std, reconstruction_error = train_vae(args.vae_steps, args.vae_batch_size,
                                                                   args.seed + 1, images)
    print(f"vae: mean absolute reconstruction error {reconstruction_error:.4f} (pixels in [0, 1]); latents_mean "
          f"{vae.config.latents_mean}, latents_std {vae.config.latents_std}")
    vae_seconds = time.perf_counter() - started
    torch.manual_seed(args.seed + 2)
    tokenizer = toy_tokenizer()
    text_encoder = toy_text_encoder(tokenizer)
    embeddings, lengths = caption_embeddings(tokenizer, text_encoder)
    transformer, losses = train_transformer(args.transformer_steps, args.batch_size, args.seed + 3, latent_mean,
                                            latent_std, labels, vae.config, embeddings, lengths)
    train_seconds = time.perf_counter() - started
    cpu_seconds = time.process_time() - cpu_started

    save_pipeline(args.out, transformer, vae, text_encoder, tokenizer)
    summary = {
        "settings": {**counts, "seed": args.seed, "threads": args.threads, "empty_caption_rate": EMPTY_CAPTION_RATE,
                     "sigma_sampling": "logit-normal(0, 1)", "text_length": TEXT_LENGTH,
                     "trained_text_lengths": [TEXT_LENGTH, WAN_TEXT_LENGTH], "sampling_flow_shift": FLOW_SHIFT,
                     "latent_channels": LATENT_CHANNELS},
        "defaults": not not_default,
        "vae_reconstruction_mae": reconstruction_error,
        "vae_latents_mean": vae.config.latents_mean,
        "vae_latents_std": vae.config.latents_std,
        "transformer_loss_last_100": sum(losses[-100:]) / len(losses[-100:]),
        "vae_seconds": round(vae_seconds, 1),
        "train_seconds": round(train_seconds, 1),
        "train_cpu_seconds": round(cpu_seconds, 1),
        "load_average_before_and_after": [load_before, _load_average()],
        "classifier": "eval/toy/digit_classifier.safetensors (the SD toy's)",
    }
    if args.check_per_digit:
        load_classifier()  # fails early and clearly where the SD toy's classifier is missing
        for length in (TEXT_LENGTH, WAN_TEXT_LENGTH):
            measures = quick_check(args.out, args.check_per_digit, 20, args.seed, length)
            summary[f"check_20_steps_guidance_5_text_{length}"] = measures
            print(f"check (text length {length}): {measures['accuracy']:.1%} of {10 * args.check_per_digit} "
                  f"frames read as the requested digit, toy-FD {measures['toy_fd']:.2f} (20 UniPC steps, guidance 5)")
    (args.out / "training.json").write_text(json.dumps(summary, indent=2) + "\n")
    print(json.dumps(summary, indent=2))
    print(f"trained in {train_seconds / 60:.1f} min ({cpu_seconds / 60:.1f} CPU min) -> {args.out}")
    if not_default:
        print("[not the committed recipe] non-default settings: this checkpoint is not the reproduced Wan toy")
    return 0


def _load_average() -> float | None:
    try:
        import os

        return round(os.getloadavg()[0], 2)
    except (AttributeError, OSError):
        return None


if __name__ == "__main__":
    sys.exit(main())
