"""The Wan toy: a WanPipeline of handwritten digits (scikit-learn's digits, one 16x16 frame), trained here.

>>> from eval.wan_toy.model import load_pipeline, sample_digits, frame_measures
>>> pipe = load_pipeline()                                   # WanPipeline.from_pretrained(CHECKPOINT_DIR), offline
>>> video = pipe("a handwritten digit seven", **CALL_DEFAULTS).frames   # (1, 1, 16, 16, 3) floats in [0, 1]
>>> frame_measures(video, labels=[7])                        # {"accuracy": ..., "toy_fd": ...} of frame 0

Its architecture is Wan 2.1's (``WanTransformer3DModel``, ``AutoencoderKLWan``, a ``UMT5EncoderModel``, a T5
tokenizer), shrunk: a 4-layer transformer of width 64 on 8x8x4 latents (16 tokens per frame with Wan's 1x2x2
patches), a 2-level Wan VAE (2x spatial and 2x temporal compression), a random, frozen 2-layer UMT5 encoder of
width 32 whose tokenizer makes each caption word one token. Sampling is Wan's: flow matching with UniPC
(``flow_prediction``), guidance as two transformer calls per step. The digits are judged by the SD toy's
classifier (``eval/toy/digits.py``) on a frame.

Text length: WanPipeline pads every prompt to ``max_sequence_length`` (512 by default) with zero embeddings that
the transformer attends to. The toy was trained for any length from 16 to 512 (see ``train.py``), so both the
default call and the cheap ``max_sequence_length=16`` of ``CALL_DEFAULTS`` draw digits.
"""

from __future__ import annotations

import string
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from eval.toy import digits
from eval.toy.evaluate import toy_fd

WAN_TOY_DIR = Path(__file__).resolve().parent
CHECKPOINT_DIR = WAN_TOY_DIR / "checkpoint"

IMAGE_SIZE = digits.IMAGE_SIZE  # 16: the digits, upsampled 2x, as in the SD toy
LATENT_CHANNELS = 4
TEXT_LENGTH = 16  # the toy's text length (captions are at most 5 tokens with </s>); Wan's default is 512
WAN_TEXT_LENGTH = 512  # WanPipeline's default max_sequence_length
TEXT_DIM = 32
# What every toy call passes: one 16x16 frame, the toy's short text length.
CALL_DEFAULTS = dict(height=IMAGE_SIZE, width=IMAGE_SIZE, num_frames=1, max_sequence_length=TEXT_LENGTH)
FLOW_SHIFT = 1.0  # UniPC's flow shift for sampling (Wan uses 3.0 at 480p; tiny images need little shift)


def toy_tokenizer():
    """A T5 (Unigram) tokenizer built in code: each caption word is one piece, other text falls back to characters."""
    from transformers import T5Tokenizer

    words = ["a", "handwritten", "digit", "the", *digits.DIGIT_WORDS, *string.digits]
    pieces = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("\u2581", -2.0)]
    pieces += [("\u2581" + word, -1.0) for word in words]
    pieces += [(character, -5.0) for character in string.ascii_lowercase + string.digits + ".,!?'-:;()"]
    return T5Tokenizer(vocab=pieces, extra_ids=0, model_max_length=WAN_TEXT_LENGTH)


def toy_text_encoder(tokenizer):
    """A 2-layer UMT5 encoder (Wan's text encoder family) of width 32; it stays at its seeded random weights."""
    from transformers import UMT5Config, UMT5EncoderModel

    config = UMT5Config(vocab_size=len(tokenizer), d_model=TEXT_DIM, d_kv=8, d_ff=64, num_layers=2, num_heads=4,
                        feed_forward_proj="gated-gelu", dropout_rate=0.0, pad_token_id=tokenizer.pad_token_id,
                        eos_token_id=tokenizer.eos_token_id)
    return UMT5EncoderModel(config).eval()


def toy_vae():
    """A 2-level AutoencoderKLWan: 16x16 frames <-> 8x8x4 latents; frames 1 + 2k <-> latent frames 1 + k."""
    from diffusers import AutoencoderKLWan

    return AutoencoderKLWan(
        base_dim=16, z_dim=LATENT_CHANNELS, dim_mult=[1, 2], num_res_blocks=1, attn_scales=[],
        temperal_downsample=[True], latents_mean=[0.0] * LATENT_CHANNELS, latents_std=[1.0] * LATENT_CHANNELS,
        scale_factor_temporal=2, scale_factor_spatial=2,
    )


def toy_transformer():
    """Wan 2.1's transformer at width 64 (4 heads x 16), 4 layers, 1x2x2 patches: 16 tokens per 8x8 latent frame."""
    from diffusers import WanTransformer3DModel

    return WanTransformer3DModel(
        patch_size=(1, 2, 2), num_attention_heads=4, attention_head_dim=16, in_channels=LATENT_CHANNELS,
        out_channels=LATENT_CHANNELS, text_dim=TEXT_DIM, freq_dim=64, ffn_dim=256, num_layers=4, rope_max_seq_len=64,
    )


def sampling_scheduler(flow_shift: float = FLOW_SHIFT):
    """Wan's sampler: UniPC on flow-matching sigmas."""
    from diffusers import UniPCMultistepScheduler

    return UniPCMultistepScheduler(prediction_type="flow_prediction", use_flow_sigmas=True, flow_shift=flow_shift,
                                   num_train_timesteps=1000)


def load_pipeline(checkpoint: str | Path = CHECKPOINT_DIR, torch_dtype: torch.dtype | None = None):
    """The committed toy as TGATE's ``WanPipeline`` (offline; without ``gate_step`` it is the stock pipeline);
    a missing folder says how to make it."""
    from Wan.pipeline import TgateWanPipeline as WanPipeline

    checkpoint = Path(checkpoint)
    if not (checkpoint / "model_index.json").is_file():
        raise FileNotFoundError(f"no WanPipeline folder at {checkpoint}; `python eval/wan_toy/train.py` trains it")
    pipe = WanPipeline.from_pretrained(checkpoint, dtype=torch_dtype or torch.float32, local_files_only=True)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def frames_as_images(video: Any, frame: int = 0) -> np.ndarray:
    """One frame of every video of a ``WanPipeline(..., output_type="np")`` output, (B, F, H, W, 3) in [0, 1],
    as the (B, H, W, 3) images the digit classifier reads."""
    array = np.asarray(video)
    if array.ndim != 5:
        raise ValueError(f"expected videos as a (batch, frames, height, width, channels) array, "
                         f"got shape {array.shape}")
    if not -array.shape[1] <= frame < array.shape[1]:
        raise ValueError(f"frame {frame} is outside the videos' {array.shape[1]} frames")
    return array[:, frame]


def frame_measures(video: Any, labels: Sequence[int], frame: int = 0,
                   reference_features: np.ndarray | None = None) -> dict[str, float]:
    """The SD toy's measures on one frame: the classifier's accuracy on the requested digits, and toy-FD against
    all 1,797 real digits (or ``reference_features``). toy-FD needs many samples (>= 128) to be meaningful."""
    images = frames_as_images(video, frame)
    if len(images) != len(labels):
        raise ValueError(f"{len(images)} videos but {len(labels)} labels")
    if reference_features is None:
        reference_features = digits.features(digits.load_reference_digits()[0])
    return {"accuracy": digits.accuracy(images, labels),
            "toy_fd": toy_fd(digits.features(images), reference_features) if len(images) > 1 else float("nan")}


def tiny_components(seed: int = 0) -> dict:
    """The toy's architecture with seeded random weights (the frames are noise): for fast tests of the code path."""
    torch.manual_seed(seed)
    tokenizer = toy_tokenizer()
    return dict(tokenizer=tokenizer, text_encoder=toy_text_encoder(tokenizer), vae=toy_vae().eval(),
                scheduler=sampling_scheduler(), transformer=toy_transformer().eval())


def load_for_registry(spec, source: str, torch_dtype: torch.dtype | None):
    """``common.models``' loader of the ``wan_toy`` entry: the folder ``source`` as a stock WanPipeline."""
    return load_pipeline(source, torch_dtype)
