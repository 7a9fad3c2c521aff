"""Train the toy text-to-image checkpoint and its digit classifier from scratch, on the CPU, with a fixed seed.

    python eval/toy/train.py            # writes eval/toy/checkpoint/ and eval/toy/digit_classifier.safetensors

Three phases, each seeded on its own: (1) a small CNN classifying the real digits (the judge of the toy's
samples and the feature space of toy-FD); (2) a small AutoencoderKL (16x16 RGB <-> 8x8x4 latents, SD's 4
latent channels), with the SD recipe's latent scaling factor (1 / std of the latents); (3) a UNet2DConditionModel
and a 2-layer CLIP text encoder trained jointly on the latents, epsilon prediction with SD's noise schedule
(scaled_linear betas 0.00085..0.012, 1000 steps), min-SNR loss weighting, 10% empty captions for
classifier-free guidance, and an EMA of both, which is what is saved. The result is a complete
StableDiffusionPipeline folder (fp32, about 5 MB) plus training.json, the run's settings and measures.

Smoke run: ``python eval/toy/train.py --unet-steps 2 --vae-steps 2 --classifier-steps 2 --out /tmp/toy
--classifier-out /tmp/toy.safetensors`` (other settings never overwrite the committed files).
"""

from __future__ import annotations

import argparse
import json
import math
import string
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the repository root, for `common` and `eval`

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from tqdm.auto import tqdm  # noqa: E402

from eval.toy.digits import (  # noqa: E402
    CAPTION_STYLES,
    CHECKPOINT_DIR,
    CLASSIFIER_PATH,
    DIGIT_WORDS,
    IMAGE_SIZE,
    NUM_CLASSES,
    DigitClassifier,
    caption_for,
    digit_tensors,
)

LATENT_SIZE = IMAGE_SIZE // 2
TEXT_MAX_LENGTH = 16  # captions are at most 6 tokens with start and end; SD uses 77
NOISE_SCHEDULE = dict(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012, num_train_timesteps=1000)
EMPTY_CAPTION_RATE = 0.1
MIN_SNR_GAMMA = 5.0  # min-SNR loss weighting (Hang et al., 2023): faster convergence for the same compute
DEFAULTS = dict(classifier_steps=400, vae_steps=250, unet_steps=800, batch_size=128, seed=0)


def toy_tokenizer():
    """A CLIP BPE tokenizer whose merges make each caption word one token; other text falls back to characters."""
    from transformers import CLIPTokenizer

    words = ["a", "handwritten", "digit", "the", *DIGIT_WORDS, *string.digits]
    characters = list(string.ascii_lowercase + string.digits + ".,!?'-:;()")
    vocab: dict[str, int] = {}
    for token in characters + [c + "</w>" for c in characters]:
        vocab.setdefault(token, len(vocab))
    merges: list[tuple[str, str]] = []
    for word in words:  # CLIP's BPE ends a word's last symbol with </w>; merge left to right into the word
        pieces = [*word[:-1], word[-1] + "</w>"]
        merged = pieces[0]
        for piece in pieces[1:]:
            if (merged, piece) not in merges:
                merges.append((merged, piece))
            merged += piece
            vocab.setdefault(merged, len(vocab))
    vocab["<|startoftext|>"] = len(vocab)
    vocab["<|endoftext|>"] = len(vocab)
    tokenizer = CLIPTokenizer(vocab=vocab, merges=merges, model_max_length=TEXT_MAX_LENGTH)
    for word in words:
        if len(tokenizer.tokenize(word)) != 1:
            raise RuntimeError(f"the toy tokenizer splits {word!r}: {tokenizer.tokenize(word)}")
    return tokenizer


def toy_unet():
    """SD's UNet, shrunk to 8x8 latents: cross-attention at 4x4, 2x2 and the middle block, none at 8x8
    (there it would cost most of a training step on the CPU)."""
    from diffusers import UNet2DConditionModel

    return UNet2DConditionModel(
        sample_size=LATENT_SIZE,
        in_channels=4,
        out_channels=4,
        block_out_channels=(32, 48, 48),
        layers_per_block=1,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=32,
        attention_head_dim=4,  # diffusers' name for the number of heads in UNet2DConditionModel
        norm_num_groups=16,
    )


def toy_vae():
    from diffusers import AutoencoderKL

    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        block_out_channels=(16, 32),  # two levels: 16x16 images, 8x8 latents (SD's VAE has four, 8x)
        layers_per_block=1,
        down_block_types=("DownEncoderBlock2D",) * 2,
        up_block_types=("UpDecoderBlock2D",) * 2,
        latent_channels=4,
        norm_num_groups=8,
        sample_size=IMAGE_SIZE,
    )


def cosine_schedule(optimizer, steps: int, warmup: int = 50):
    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        return 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, steps - warmup)))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def random_batch(count: int, batch_size: int, generator: torch.Generator) -> torch.Tensor:
    return torch.randint(0, count, (batch_size,), generator=generator)


def shift(images: torch.Tensor, generator: torch.Generator, pixels: int = 1) -> torch.Tensor:
    """Random translations by up to ``pixels`` (padding with white paper): the classifier must not rely on position."""
    dx, dy = (int(v) for v in torch.randint(-pixels, pixels + 1, (2,), generator=generator))
    padded = F.pad(images, (pixels,) * 4, value=1.0)
    return padded[..., pixels + dy : pixels + dy + IMAGE_SIZE, pixels + dx : pixels + dx + IMAGE_SIZE]


def train_classifier(steps: int, batch_size: int, seed: int) -> tuple[DigitClassifier, float]:
    """The judge: trained on the train split with small shifts; returns it and its held-out accuracy."""
    torch.manual_seed(seed)
    generator = torch.Generator().manual_seed(seed)
    images, labels = digit_tensors("train")
    classifier = DigitClassifier()
    optimizer = torch.optim.AdamW(classifier.parameters(), lr=3e-3, weight_decay=1e-4)
    schedule = cosine_schedule(optimizer, steps)
    for _ in tqdm(range(steps), desc="classifier", mininterval=2):
        index = random_batch(len(labels), batch_size, generator)
        loss = F.cross_entropy(classifier(shift(images[index], generator)), labels[index])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        schedule.step()
    classifier.eval()
    held_images, held_labels = digit_tensors("held_out")
    with torch.no_grad():
        held_out_accuracy = (classifier(held_images).argmax(1) == held_labels).float().mean().item()
    return classifier, held_out_accuracy


def to_vae_range(images: torch.Tensor) -> torch.Tensor:
    """(N, 1, H, W) in [0, 1] -> (N, 3, H, W) in [-1, 1], the range diffusers' VAEs work in."""
    return (images * 2 - 1).expand(-1, 3, -1, -1)


def train_vae(steps: int, batch_size: int, seed: int, images: torch.Tensor):
    """A small AutoencoderKL; the KL term is weak (as in SD's VAE), the scaling factor normalises the latents."""
    torch.manual_seed(seed)
    generator = torch.Generator().manual_seed(seed)
    vae = toy_vae()
    optimizer = torch.optim.AdamW(vae.parameters(), lr=2e-3)
    schedule = cosine_schedule(optimizer, steps)
    pixels = to_vae_range(images)
    losses = []
    for _ in tqdm(range(steps), desc="vae", mininterval=2):
        batch = pixels[random_batch(len(pixels), batch_size, generator)]
        posterior = vae.encode(batch).latent_dist
        reconstruction = vae.decode(posterior.sample(generator)).sample
        loss = F.mse_loss(reconstruction, batch) + 1e-5 * posterior.kl().mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        schedule.step()
        losses.append(loss.item())
    vae.eval()
    with torch.no_grad():
        posterior = vae.encode(pixels).latent_dist
        reconstruction_error = (vae.decode(posterior.mean).sample - pixels).abs().mean().item() / 2
    scaling_factor = 1.0 / posterior.mean.std().item()
    vae.register_to_config(scaling_factor=scaling_factor)
    return vae, posterior.mean, posterior.std, reconstruction_error


class EMA:
    """Exponential moving average of parameters, with the usual warm-up of the decay."""

    def __init__(self, modules: list[torch.nn.Module], decay: float) -> None:
        self.decay = decay
        self.live = [p for m in modules for p in m.parameters()]
        self.shadow = [p.detach().clone() for p in self.live]
        self.updates = 0

    @torch.no_grad()
    def update(self) -> None:
        self.updates += 1
        decay = min(self.decay, (1 + self.updates) / (10 + self.updates))
        torch._foreach_lerp_(self.shadow, [p.detach() for p in self.live], 1 - decay)

    @torch.no_grad()
    def copy_to_live(self) -> None:
        for live, shadow in zip(self.live, self.shadow):
            live.copy_(shadow)


def caption_table(tokenizer) -> tuple[torch.Tensor, list[tuple[int, str]]]:
    """Token ids of every training caption: the empty one first, then each digit in each style."""
    captions = [(-1, "")] + [(label, caption_for(label, style)) for label in range(NUM_CLASSES) for style in CAPTION_STYLES]
    ids = tokenizer([text for _, text in captions], padding="max_length", max_length=TEXT_MAX_LENGTH,
                    truncation=True, return_tensors="pt").input_ids
    return ids, captions


def train_denoiser(steps: int, batch_size: int, seed: int, latent_mean, latent_std, labels, scaling_factor, tokenizer):
    """UNet and text encoder, jointly: epsilon prediction on VAE latents, SD's noise schedule."""
    from diffusers import DDPMScheduler

    from common.tiny import tiny_clip_text_encoder

    torch.manual_seed(seed)
    generator = torch.Generator().manual_seed(seed)
    unet, text_encoder = toy_unet(), tiny_clip_text_encoder(tokenizer, hidden_size=32)
    unet.train()
    text_encoder.train()
    noise_scheduler = DDPMScheduler(**NOISE_SCHEDULE)
    snr = noise_scheduler.alphas_cumprod / (1 - noise_scheduler.alphas_cumprod)
    min_snr_weight = snr.clamp(max=MIN_SNR_GAMMA) / snr  # epsilon prediction: min(SNR, gamma) / SNR
    caption_ids, _ = caption_table(tokenizer)
    styles = len(CAPTION_STYLES)
    parameters = [*unet.parameters(), *text_encoder.parameters()]
    optimizer = torch.optim.AdamW(parameters, lr=2e-3, weight_decay=1e-2)
    schedule = cosine_schedule(optimizer, steps, warmup=100)
    ema = EMA([unet, text_encoder], decay=0.995)
    losses = []
    progress = tqdm(range(steps), desc="unet + text encoder", mininterval=2)
    for _ in progress:
        index = random_batch(len(labels), batch_size, generator)
        noise_in_latent = torch.randn(latent_mean[index].shape, generator=generator)
        latents = (latent_mean[index] + latent_std[index] * noise_in_latent) * scaling_factor
        style = torch.randint(0, styles, (batch_size,), generator=generator)
        caption = 1 + labels[index] * styles + style
        caption[torch.rand(batch_size, generator=generator) < EMPTY_CAPTION_RATE] = 0
        noise = torch.randn(latents.shape, generator=generator)
        timesteps = torch.randint(0, noise_scheduler.config.num_train_timesteps, (batch_size,), generator=generator)
        noisy = noise_scheduler.add_noise(latents, noise, timesteps)
        context = text_encoder(caption_ids[caption]).last_hidden_state
        error = (unet(noisy, timesteps, encoder_hidden_states=context).sample - noise).pow(2).mean(dim=(1, 2, 3))
        loss = (error * min_snr_weight[timesteps]).mean()
        optimizer.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(parameters, 1.0)
        optimizer.step()
        schedule.step()
        ema.update()
        losses.append(loss.item())
        if len(losses) % 50 == 0:
            progress.set_postfix(loss=f"{sum(losses[-50:]) / 50:.4f}")
    ema.copy_to_live()
    return unet.eval(), text_encoder.eval(), losses


def sampling_scheduler():
    from diffusers import DPMSolverMultistepScheduler

    return DPMSolverMultistepScheduler(**NOISE_SCHEDULE, steps_offset=1)


def save_pipeline(out: Path, unet, vae, text_encoder, tokenizer) -> None:
    from diffusers import StableDiffusionPipeline

    pipe = StableDiffusionPipeline(
        unet=unet, vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, scheduler=sampling_scheduler(),
        safety_checker=None, feature_extractor=None, image_encoder=None, requires_safety_checker=False,
    )
    pipe.save_pretrained(out, safe_serialization=True)


def quick_check(out: Path, classifier: DigitClassifier, per_digit: int, steps: int, seed: int) -> float:
    """Sample ``per_digit`` images of each digit from the saved folder and return the classifier's accuracy."""
    from SD_1_5.pipeline import TgateStableDiffusionPipeline

    pipe = TgateStableDiffusionPipeline.from_pretrained(out)
    pipe.set_progress_bar_config(disable=True)
    labels = [label for label in range(NUM_CLASSES) for _ in range(per_digit)]
    images = pipe([caption_for(label) for label in labels], num_inference_steps=steps, guidance_scale=5.0,
                  generator=torch.Generator().manual_seed(seed), output_type="np").images
    return float((classifier.predict(images) == torch.tensor(labels).numpy()).mean())


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description="Train the toy text-to-image checkpoint (scikit-learn digits, CPU, fixed seed) and its "
        "digit classifier. The defaults reproduce the committed eval/toy/checkpoint/ and "
        "eval/toy/digit_classifier.safetensors.",
    )
    parser.add_argument("--out", type=Path, default=CHECKPOINT_DIR,
                        help="StableDiffusionPipeline folder to write (default: the committed eval/toy/checkpoint/)")
    parser.add_argument("--classifier-out", type=Path, default=CLASSIFIER_PATH,
                        help="digit classifier weights to write (default: eval/toy/digit_classifier.safetensors)")
    parser.add_argument("--unet-steps", type=int, default=DEFAULTS["unet_steps"],
                        help=f"optimizer steps of the UNet and text encoder (default {DEFAULTS['unet_steps']})")
    parser.add_argument("--vae-steps", type=int, default=DEFAULTS["vae_steps"],
                        help=f"optimizer steps of the VAE (default {DEFAULTS['vae_steps']})")
    parser.add_argument("--classifier-steps", type=int, default=DEFAULTS["classifier_steps"],
                        help=f"optimizer steps of the digit classifier (default {DEFAULTS['classifier_steps']})")
    parser.add_argument("--batch-size", type=int, default=DEFAULTS["batch_size"],
                        help=f"batch size of every phase (default {DEFAULTS['batch_size']})")
    parser.add_argument("--seed", type=int, default=DEFAULTS["seed"], help=f"the seed (default {DEFAULTS['seed']})")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch CPU threads (default 1: on a shared machine more threads than free cores "
                        "slow training down several times; try 2 on an idle 2-core machine)")
    parser.add_argument("--check-per-digit", type=int, default=10,
                        help="after training, sample this many images per digit (20 steps, guidance 5) and print "
                        "the classifier's accuracy on them; 0 skips the check (default 10)")
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    counts = dict(unet_steps=args.unet_steps, vae_steps=args.vae_steps, classifier_steps=args.classifier_steps,
                  batch_size=args.batch_size)
    if any(value < 1 for value in counts.values()) or args.threads < 1 or args.check_per_digit < 0:
        parser.error("step counts, --batch-size and --threads must be >= 1, --check-per-digit >= 0")
    not_default = {k: v for k, v in {**counts, "seed": args.seed}.items() if v != DEFAULTS[k]}
    writes_committed = args.out.resolve() == CHECKPOINT_DIR or args.classifier_out.resolve() == CLASSIFIER_PATH
    if not_default and writes_committed:
        flags = ", ".join(f"--{key.replace('_', '-')} {value}" for key, value in not_default.items())
        parser.error(f"non-default settings ({flags}) would overwrite the committed checkpoint or classifier: "
                     "pass --out and --classifier-out")
    torch.set_num_threads(args.threads)
    started = time.perf_counter()

    classifier, held_out_accuracy = train_classifier(args.classifier_steps, args.batch_size, args.seed)
    print(f"classifier: {held_out_accuracy:.1%} accuracy on {len(digit_tensors('held_out')[1])} held-out real digits")
    images, labels = digit_tensors("train")
    vae, latent_mean, latent_std, reconstruction_error = train_vae(args.vae_steps, args.batch_size, args.seed + 1, images)
    print(f"vae: mean absolute reconstruction error {reconstruction_error:.4f} (pixels in [0, 1]), "
          f"scaling factor {vae.config.scaling_factor:.4f}")
    tokenizer = toy_tokenizer()
    unet, text_encoder, losses = train_denoiser(args.unet_steps, args.batch_size, args.seed + 2, latent_mean,
                                                latent_std, labels, vae.config.scaling_factor, tokenizer)
    train_seconds = time.perf_counter() - started

    from safetensors.torch import save_file

    args.classifier_out.parent.mkdir(parents=True, exist_ok=True)
    save_file(classifier.state_dict(), str(args.classifier_out))
    save_pipeline(args.out, unet, vae, text_encoder, tokenizer)
    summary = {
        "settings": {**counts, "seed": args.seed, "threads": args.threads, "noise_schedule": NOISE_SCHEDULE},
        "defaults": not not_default,
        "classifier_held_out_accuracy": held_out_accuracy,
        "vae_reconstruction_mae": reconstruction_error,
        "vae_scaling_factor": vae.config.scaling_factor,
        "denoiser_loss_last_100": sum(losses[-100:]) / len(losses[-100:]),
        "train_seconds": round(train_seconds, 1),
    }
    if args.check_per_digit:
        summary["check_accuracy_20_steps_guidance_5"] = quick_check(args.out, classifier, args.check_per_digit, 20, args.seed)
        print(f"check: {summary['check_accuracy_20_steps_guidance_5']:.1%} of {10 * args.check_per_digit} samples "
              "read as the requested digit (20 DPM-Solver steps, guidance 5)")
    (args.out / "training.json").write_text(json.dumps(summary, indent=2) + "\n")
    print(json.dumps(summary, indent=2))
    print(f"trained in {train_seconds / 60:.1f} min -> {args.out} and {args.classifier_out}")
    if not_default:
        print("[not the committed recipe] non-default settings: this checkpoint is not the reproduced toy model")
    return 0


if __name__ == "__main__":
    sys.exit(main())
