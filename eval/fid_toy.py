"""The toy digits benchmark behind ``eval/fid.py --model toy``: captions, reference digits and toy-FD features.

It plugs into fid.py's two seams. Captions and reference images come from scikit-learn's 1,797 real
digits (``eval/toy/digits.py``): each caption asks for the digit of one real image, which is its reference.
Features come from the toy's digit classifier, so the distance is a toy-FD (Frechet distance of 64-d
classifier features), never an Inception FID; the classifier also scores each image against the requested
digit (accuracy).

Sampling rule (seed ``s``, ``n`` captions): ``rng = numpy.random.default_rng(s)``; ``rng.choice(1797, n,
replace=False)`` picks the real digits in that order; then, for each in turn, ``rng.integers(2)`` picks the
caption style ("a handwritten digit seven" or "the digit 7").
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
import torch
from PIL import Image
from tqdm import tqdm

from eval.fid_data import CaptionRecord, CaptionSourceError
from eval.fid_features import FeatureWeightsError, sha256_of
from eval.toy import digits


def _file_name(image_id: int) -> str:
    return f"digits/{image_id:04d}"


class ToyDigitCaptions:
    """Captions asking for the digits of scikit-learn's real digits, which are the reference images."""

    name = "scikit-learn digits (16x16)"

    def __init__(self) -> None:
        self.images, self.labels = digits.digit_tensors("all")

    def sample(self, n: int, seed: int) -> list[CaptionRecord]:
        if not 1 <= n <= len(self.labels):
            raise CaptionSourceError(f"--n {n}: the toy benchmark has {len(self.labels)} real digits")
        rng = np.random.default_rng(seed)
        picked = rng.choice(len(self.labels), size=n, replace=False)
        return [
            CaptionRecord(index, int(image_id), _file_name(int(image_id)),
                          digits.caption_for(int(self.labels[image_id]), digits.CAPTION_STYLES[rng.integers(2)]))
            for index, image_id in enumerate(picked)
        ]

    def complete(self, records: list[CaptionRecord]) -> list[CaptionRecord]:
        self.check_images(records)
        return [CaptionRecord(r.index, r.image_id, r.file_name or _file_name(r.image_id), r.caption) for r in records]

    def check_images(self, records: list[CaptionRecord]) -> None:
        outside = [r.image_id for r in records if not 0 <= r.image_id < len(self.labels)]
        if outside:
            raise CaptionSourceError(f"image id {outside[0]} is not one of the {len(self.labels)} toy digits (0-"
                                     f"{len(self.labels) - 1})")

    def label_of(self, record: CaptionRecord) -> int:
        return int(self.labels[record.image_id])

    def reference_image(self, record: CaptionRecord) -> Image.Image:
        gray = (self.images[record.image_id, 0].numpy() * 255).round().astype(np.uint8)
        return Image.fromarray(gray).convert("RGB")

    def scores(self, records: Sequence[CaptionRecord], image_paths: Sequence[Path]) -> dict:
        """The classifier's accuracy against the requested digits of the generated images."""
        images = [Image.open(path).convert("RGB") for path in image_paths]
        requested = [self.label_of(record) for record in records]
        return {"accuracy": digits.accuracy(images, requested)}


class DigitFeatures:
    """The toy digit classifier's 64-d features: the feature space of toy-FD."""

    metric = "toy-FD"
    official = True  # the committed classifier is the only one the toy benchmark uses

    def __init__(self, weights: Path) -> None:
        self.weights = Path(weights)
        self.sha256 = sha256_of(self.weights)
        self.classifier = digits.load_classifier(self.weights)

    @property
    def identity(self) -> dict:
        return {"network": "toy digit classifier (eval/toy/digits.py)", "dims": digits.FEATURE_DIM,
                "weights_sha256": self.sha256}

    def __call__(self, batches: Iterable[torch.Tensor], total: int, description: str = "features") -> np.ndarray:
        features = []
        with tqdm(total=total, desc=description, unit="img") as progress:
            for batch in batches:  # (B, 3, H, W) in [0, 1]
                features.append(digits.features(batch.permute(0, 2, 3, 1).numpy(), self.classifier))
                progress.update(len(batch))
        return np.concatenate(features)


def classifier_weights() -> Path:
    if not digits.CLASSIFIER_PATH.is_file():
        raise FeatureWeightsError(f"the toy digit classifier is missing at {digits.CLASSIFIER_PATH}; "
                                  "`python eval/toy/train.py` trains it")
    return digits.CLASSIFIER_PATH
