"""Which features make the statistics, and the distance between them: pytorch-fid's Inception (FID).

A feature extractor is any object with ``metric`` (the name of the distance it yields), ``identity`` (a
JSON-able description that keys cached statistics) and ``__call__(batches, total) -> (N, dims) array``,
where ``batches`` yields float tensors ``(B, 3, H, W)`` in ``[0, 1]``.
"""

from __future__ import annotations

import hashlib
import socket
from pathlib import Path
from typing import Iterable
from unittest import mock

import numpy as np
import torch
from torch.nn.functional import adaptive_avg_pool2d
from tqdm import tqdm

INCEPTION_URL = "https://github.com/mseitzer/pytorch-fid/releases/download/fid_weights/pt_inception-2015-12-05-6726825d.pth"
INCEPTION_FILE = INCEPTION_URL.rsplit("/", 1)[1]
# torch.hub's convention: the digits after the last '-' of the file name start the file's sha256
OFFICIAL_SHA256_PREFIX = INCEPTION_FILE.rsplit("-", 1)[1].split(".")[0]
DOWNLOAD_TIMEOUT_S = 60


class FeatureWeightsError(RuntimeError):
    """The feature extractor's weights are missing or unreadable; the message says where to put them."""


def default_inception_weights_path() -> Path:
    """Where pytorch-fid looks for its weights: ``$TORCH_HOME/hub/checkpoints/`` (torch.hub's cache)."""
    return Path(torch.hub.get_dir()) / "checkpoints" / INCEPTION_FILE


def download(url: str, destination: Path) -> None:
    previous = socket.getdefaulttimeout()
    socket.setdefaulttimeout(DOWNLOAD_TIMEOUT_S)  # an unreachable host fails instead of hanging
    try:
        destination.parent.mkdir(parents=True, exist_ok=True)
        torch.hub.download_url_to_file(url, str(destination), progress=True)
    finally:
        socket.setdefaulttimeout(previous)


def resolve_inception_weights(path: Path | None = None) -> Path:
    """The Inception weights file: ``path`` if given, else the cache (downloaded once if network allows)."""
    if path is not None:
        if not Path(path).is_file():
            raise FeatureWeightsError(f"--inception-weights {path}: no such file")
        return Path(path)
    cached = default_inception_weights_path()
    if not cached.is_file():
        try:
            download(INCEPTION_URL, cached)
        except Exception as error:  # offline, proxy, disk: all end in the same instruction
            raise FeatureWeightsError(
                f"the FID Inception weights are not at {cached} and could not be downloaded ({error}).\n"
                f"  Download {INCEPTION_URL}\n  and put it at {cached} (the cache pytorch-fid reads; "
                "$TORCH_HOME moves it), or pass --inception-weights PATH."
            ) from None
    return cached


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        for block in iter(lambda: file.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


class InceptionFeatures:
    """pytorch-fid's InceptionV3 (the TensorFlow FID weights): pool3 features, 2048-d by default.

    Inputs are resized to 299 x 299 (bilinear) and scaled to [-1, 1] inside the network, exactly as
    pytorch-fid's own ``fid_score`` does. ``dims`` below 2048 reads an earlier block (not comparable to
    published FIDs; it exists for quick checks).
    """

    metric = "FID"

    def __init__(self, weights: Path, dims: int = 2048, device: str | torch.device = "cpu", batch_size: int = 50):
        from pytorch_fid import inception

        if dims not in inception.InceptionV3.BLOCK_INDEX_BY_DIM:
            raise ValueError(f"dims must be one of {sorted(inception.InceptionV3.BLOCK_INDEX_BY_DIM)}, got {dims}")
        self.weights, self.dims, self.device, self.batch_size = Path(weights), dims, torch.device(device), batch_size
        self.sha256 = sha256_of(self.weights)
        self.official = self.sha256.startswith(OFFICIAL_SHA256_PREFIX)

        def load_local_weights(*_args, **_kwargs):
            try:
                return torch.load(self.weights, map_location="cpu", weights_only=True)
            except Exception as error:
                raise FeatureWeightsError(f"cannot read the Inception weights {self.weights}: {error}") from None

        # pytorch-fid only loads its weights from a URL (through torch.hub's cache); hand it the local file.
        with mock.patch.object(inception, "load_state_dict_from_url", load_local_weights):
            try:
                network = inception.InceptionV3([inception.InceptionV3.BLOCK_INDEX_BY_DIM[dims]])
            except FeatureWeightsError:
                raise
            except RuntimeError as error:  # a state dict of another network
                raise FeatureWeightsError(f"{self.weights} are not pytorch-fid's Inception weights: "
                                          f"{str(error).splitlines()[0]}") from None
        self.network = network.eval().to(self.device)

    @property
    def identity(self) -> dict:
        return {"network": "pytorch-fid InceptionV3", "dims": self.dims, "weights_sha256": self.sha256,
                "official_weights": self.official}

    @torch.no_grad()
    def __call__(self, batches: Iterable[torch.Tensor], total: int, description: str = "features") -> np.ndarray:
        features = []
        with tqdm(total=total, desc=description, unit="img") as progress:
            for batch in batches:
                output = self.network(batch.to(self.device, torch.float32))[0]
                if output.shape[2:] != (1, 1):  # earlier blocks are feature maps: average them, as pytorch-fid
                    output = adaptive_avg_pool2d(output, (1, 1))
                features.append(output.flatten(1).cpu().numpy().astype(np.float64))
                progress.update(len(batch))
        return np.concatenate(features)


def statistics(features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean and covariance (rows are samples): the Gaussian the Fréchet distance compares."""
    if len(features) < 2:
        raise ValueError("statistics need at least 2 images")
    return features.mean(axis=0), np.cov(features, rowvar=False)


def frechet_distance(first: tuple[np.ndarray, np.ndarray], second: tuple[np.ndarray, np.ndarray]) -> float:
    """pytorch-fid's Fréchet distance between two (mean, covariance) pairs."""
    from pytorch_fid.fid_score import calculate_frechet_distance

    return float(calculate_frechet_distance(first[0], first[1], second[0], second[1]))


def save_statistics(path: Path, mu: np.ndarray, sigma: np.ndarray, **about: str) -> None:
    """Write ``mu``/``sigma`` as pytorch-fid's ``.npz`` (readable by its own CLI), atomically."""
    temporary = path.with_name(f".{path.name}.tmp")
    with open(temporary, "wb") as file:
        np.savez(file, mu=mu, sigma=sigma, **{key: np.array(value) for key, value in about.items()})
    temporary.replace(path)


def load_statistics(path: Path) -> tuple[np.ndarray, np.ndarray]:
    with np.load(path) as stored:
        return stored["mu"], stored["sigma"]
