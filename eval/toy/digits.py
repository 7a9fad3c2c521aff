"""The toy's data and judge: scikit-learn's bundled handwritten digits, their captions, and a digit classifier.

Other scripts use this module to score the toy checkpoint (``eval/toy/checkpoint/``):

>>> images, labels = load_reference_digits(500, seed=0)      # real digits, (N, 16, 16, 3) floats in [0, 1]
>>> caption_for(7, "word"), caption_for(7, "numeral")
('a handwritten digit seven', 'the digit 7')
>>> predict(images)                                          # (N,) int64 digits from the classifier
>>> features(images)                                         # (N, 64) float64, for a Frechet distance (toy-FD)

Images are accepted as the toy pipeline returns them (``output_type="np"``: an (N, H, W, 3) float array in
[0, 1]; or a list of PIL images), as (N, H, W) grayscale arrays, or as uint8 arrays; any size is resized to
16x16. Digits are dark ink on white paper, as the toy pipeline draws them.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

TOY_DIR = Path(__file__).resolve().parent
CHECKPOINT_DIR = TOY_DIR / "checkpoint"
CLASSIFIER_PATH = TOY_DIR / "digit_classifier.safetensors"

IMAGE_SIZE = 16  # the 8x8 scikit-learn digits, upsampled 2x; the toy pipeline's output size
NUM_CLASSES = 10
FEATURE_DIM = 64
DIGIT_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
CAPTION_STYLES = ("word", "numeral")
HELD_OUT_FRACTION = 0.2
SPLIT_SEED = 0


def caption_for(label: int, style: str = "word") -> str:
    """The caption of a digit: ``"a handwritten digit seven"`` (word) or ``"the digit 7"`` (numeral)."""
    if not 0 <= int(label) < NUM_CLASSES:
        raise ValueError(f"a digit label is 0-9, got {label!r}")
    if style == "word":
        return f"a handwritten digit {DIGIT_WORDS[int(label)]}"
    if style == "numeral":
        return f"the digit {int(label)}"
    raise ValueError(f"caption style is one of {CAPTION_STYLES}, got {style!r}")


@lru_cache(maxsize=1)
def _all_digits() -> tuple[torch.Tensor, torch.Tensor]:
    """All 1,797 digits as (N, 1, 16, 16) float tensors in [0, 1] (ink dark) and their labels."""
    from sklearn.datasets import load_digits  # bundled with scikit-learn: no download

    digits = load_digits()
    ink = torch.tensor(digits.images, dtype=torch.float32)[:, None] / 16.0  # 8x8, 0..16 ink intensity
    ink = F.interpolate(ink, size=(IMAGE_SIZE, IMAGE_SIZE), mode="bilinear", align_corners=False)
    return 1.0 - ink.clamp(0, 1), torch.tensor(digits.target, dtype=torch.int64)


def split_indices(split: str) -> np.ndarray:
    """Indices of ``"train"`` (80%), ``"held_out"`` (20%) or ``"all"`` digits; the split is fixed."""
    count = len(_all_digits()[1])
    order = np.random.RandomState(SPLIT_SEED).permutation(count)
    held_out = int(round(count * HELD_OUT_FRACTION))
    splits = {"train": order[held_out:], "held_out": order[:held_out], "all": np.arange(count)}
    if split not in splits:
        raise ValueError(f"split is one of {tuple(splits)}, got {split!r}")
    return np.sort(splits[split])


def digit_tensors(split: str = "train") -> tuple[torch.Tensor, torch.Tensor]:
    """A split as (N, 1, 16, 16) float tensors in [0, 1] and (N,) labels: what training uses."""
    images, labels = _all_digits()
    index = torch.from_numpy(split_indices(split))
    return images[index], labels[index]


def load_reference_digits(n: int | None = None, seed: int = 0, split: str = "all") -> tuple[np.ndarray, np.ndarray]:
    """``n`` real digits drawn without replacement (all of them for ``None``), in the pipeline's format.

    Returns images as an (n, 16, 16, 3) float32 array in [0, 1], like ``pipe(..., output_type="np").images``,
    and their (n,) int64 labels. ``split``: ``"all"`` (1,797 digits), ``"train"`` or ``"held_out"``.
    """
    images, labels = digit_tensors(split)
    if n is not None:
        if not 0 < n <= len(labels):
            raise ValueError(f"the {split!r} split holds {len(labels)} digits; asked for {n}")
        pick = torch.from_numpy(np.random.RandomState(seed).choice(len(labels), n, replace=False))
        images, labels = images[pick], labels[pick]
    rgb = images.expand(-1, 3, -1, -1).permute(0, 2, 3, 1)
    return rgb.numpy().astype(np.float32), labels.numpy()


def to_classifier_input(images: Any) -> torch.Tensor:
    """Images in any accepted format -> (N, 1, 16, 16) float tensor in [0, 1] (grayscale)."""
    if isinstance(images, Sequence) and images and hasattr(images[0], "convert"):  # PIL images
        images = np.stack([np.asarray(image.convert("L")) for image in images])
    array = torch.as_tensor(np.asarray(images))
    if array.dtype == torch.uint8:
        array = array.float() / 255.0
    array = array.float()
    if array.ndim == 4 and array.shape[-1] in (1, 3):  # (N, H, W, C) -> grayscale (N, 1, H, W)
        array = array.mean(dim=-1, keepdim=True).permute(0, 3, 1, 2)
    elif array.ndim == 3:
        array = array[:, None]
    else:
        raise ValueError(f"images are (N, H, W) or (N, H, W, 1 or 3) arrays or PIL images; got shape {tuple(array.shape)}")
    if array.shape[-2:] != (IMAGE_SIZE, IMAGE_SIZE):
        array = F.interpolate(array, size=(IMAGE_SIZE, IMAGE_SIZE), mode="bilinear", antialias=True, align_corners=False)
    return array.clamp(0, 1)


class DigitClassifier(nn.Module):
    """A small CNN on 16x16 grayscale digits; its 64-d penultimate layer is the toy-FD feature space."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 16, 3, padding=1)
        self.conv2 = nn.Conv2d(16, 32, 3, padding=1)
        self.embed = nn.Linear(32 * 4 * 4, FEATURE_DIM)
        self.head = nn.Linear(FEATURE_DIM, NUM_CLASSES)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """(N, 1, 16, 16) in [0, 1] -> (N, 64) pre-activation features (smoother than post-ReLU for a Gaussian fit)."""
        x = F.max_pool2d(F.relu(self.conv1(x * 2 - 1)), 2)
        x = F.max_pool2d(F.relu(self.conv2(x)), 2)
        return self.embed(x.flatten(1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(F.relu(self.features(x)))

    @torch.no_grad()
    def predict(self, images: Any) -> np.ndarray:
        return self(to_classifier_input(images)).argmax(dim=1).numpy()

    @torch.no_grad()
    def embed_images(self, images: Any) -> np.ndarray:
        return self.features(to_classifier_input(images)).double().numpy()


def load_classifier(path: str | Path = CLASSIFIER_PATH) -> DigitClassifier:
    """The digit classifier trained by ``eval/toy/train.py`` (committed at ``eval/toy/digit_classifier.safetensors``)."""
    from safetensors.torch import load_file

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no digit classifier at {path}; `python eval/toy/train.py` trains it")
    classifier = DigitClassifier()
    classifier.load_state_dict(load_file(str(path)))
    return classifier.eval()


@lru_cache(maxsize=1)
def _committed_classifier() -> DigitClassifier:
    return load_classifier()


def predict(images: Any, classifier: DigitClassifier | None = None) -> np.ndarray:
    """The digit each image shows, by the committed classifier (or ``classifier``): (N,) int64."""
    return (classifier or _committed_classifier()).predict(images)


def features(images: Any, classifier: DigitClassifier | None = None) -> np.ndarray:
    """The classifier's (N, 64) float64 features of the images: the feature space of toy-FD."""
    return (classifier or _committed_classifier()).embed_images(images)


def accuracy(images: Any, labels: Sequence[int], classifier: DigitClassifier | None = None) -> float:
    """Fraction of images the classifier reads as their requested digit."""
    return float((predict(images, classifier) == np.asarray(labels)).mean())
