"""The FID images: one PNG per caption, resumable, shared among processes.

- Image ``i`` starts from its own noise: a CPU ``torch.Generator`` seeded with :func:`image_seed` of the run
  seed and ``i`` (diffusers takes one generator per image). The noise never depends on the batch size or
  on the number of processes.
- The caption list is cut into global batches ``[k*B, (k+1)*B)``; process ``r`` of ``W`` runs the batches
  with ``k % W == r``. So ``W`` processes run exactly the batches one process would, and their images are
  the same on the same kind of device and software. A different ``B`` keeps the noise but may change float
  rounding inside the denoiser, and so may a different CPU thread count (measured: one image of seven
  differed in its last bits between 1 and 2 threads).
- Each PNG is written to a temporary file and renamed, so a file that exists is complete; a rerun skips
  finished images and generates only the missing ones.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from PIL import Image
from tqdm import tqdm

from eval.fid_data import CaptionRecord, write_json_atomically


def image_seed(seed: int, index: int) -> int:
    """The seed of image ``index``: numpy's SeedSequence of ``(seed, index)``, so runs never share noise."""
    return int(np.random.SeedSequence([seed, index]).generate_state(1)[0])


def image_path(images_dir: Path, index: int) -> Path:
    return images_dir / f"{index:05d}.png"


def shard_batches(n: int, batch_size: int, rank: int = 0, world: int = 1) -> list[list[int]]:
    """The global batches ``[k*B, (k+1)*B)`` of ``n`` images that process ``rank`` of ``world`` runs."""
    if not 0 <= rank < world:
        raise ValueError(f"rank {rank} is not in a world of {world} processes")
    starts = range(rank * batch_size, n, world * batch_size)
    return [list(range(start, min(start + batch_size, n))) for start in starts]


def save_atomically(image: Image.Image, path: Path) -> None:
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    image.save(temporary, format="PNG")
    os.replace(temporary, path)


@dataclass
class GenerationReport:
    generated: int  # images made by this call
    skipped: int  # images of this process's share that were already on disk
    seconds: float  # wall time of the pipeline calls and PNG writes
    flagged: int = 0  # images the pipeline's safety checker (if it has one) returned black


def generate_images(
    pipe,
    records: Sequence[CaptionRecord],
    images_dir: Path,
    *,
    seed: int,
    batch_size: int,
    call: dict,
    rank: int = 0,
    world: int = 1,
    timing_path: Path | None = None,
    progress: bool = True,
) -> GenerationReport:
    """Generate the missing images of this process's share; ``call`` holds the pipeline's sampling arguments.

    ``timing_path`` (optional) is rewritten after every batch with the images made, seconds spent and
    safety-checker flags, so the time per image survives an interruption.
    """
    images_dir.mkdir(parents=True, exist_ok=True)
    if timing_path is not None:
        timing_path.parent.mkdir(parents=True, exist_ok=True)
    batches = shard_batches(len(records), batch_size, rank, world)
    share = sum(len(batch) for batch in batches)
    todo = [[i for i in batch if not image_path(images_dir, i).exists()] for batch in batches]
    todo = [batch for batch in todo if batch]
    report = GenerationReport(generated=0, skipped=share - sum(len(batch) for batch in todo), seconds=0.0)
    label = f"images (process {rank}/{world})" if world > 1 else "images"
    with tqdm(total=share, initial=report.skipped, desc=label, unit="img", disable=not progress) as bar:
        for batch in todo:
            start = time.perf_counter()
            generators = [torch.Generator("cpu").manual_seed(image_seed(seed, i)) for i in batch]
            output = pipe(prompt=[records[i].caption for i in batch], generator=generators, **call)
            for i, image in zip(batch, output.images, strict=True):
                save_atomically(image, image_path(images_dir, i))
            report.seconds += time.perf_counter() - start
            report.generated += len(batch)
            report.flagged += sum(bool(flag) for flag in getattr(output, "nsfw_content_detected", None) or [])
            bar.update(len(batch))
            if timing_path is not None:
                write_json_atomically(timing_path, {"images": report.generated, "seconds": report.seconds,
                                                    "flagged": report.flagged})
    return report


def generation_totals(timing_dir: Path) -> dict:
    """Images, seconds and safety-checker flags summed over every process and (resumed) run of a folder."""
    records = [json.loads(path.read_text()) for path in sorted(timing_dir.glob("*.json"))]
    totals = {key: sum(record.get(key, 0) for record in records) for key in ("images", "seconds", "flagged")}
    totals["seconds_per_image"] = totals["seconds"] / totals["images"] if totals["images"] else None
    return totals


def missing_images(images_dir: Path, n: int) -> list[int]:
    return [i for i in range(n) if not image_path(images_dir, i).exists()]
