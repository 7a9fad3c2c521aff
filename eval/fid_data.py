"""Where the captions and the reference images of the FID come from: MS-COCO val2014 (zero-shot).

The caption list is the one thing every FID run must share, so it is sampled deterministically from a
seed and written to a JSON file that anyone can reuse with ``--captions``.

Sampling rule (seed ``s``, ``n`` captions): the val2014 images that have at least one caption, sorted by
image id; ``rng = numpy.random.default_rng(s)``; ``rng.choice(len(images), n, replace=False)`` picks the
images in that order; then, for each picked image in turn, ``rng.integers(k)`` picks one of its ``k``
captions sorted by annotation id. Whitespace in a caption is collapsed to single spaces.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from PIL import Image

ANNOTATIONS = Path("annotations") / "captions_val2014.json"
IMAGES = Path("val2014")
COCO_DOWNLOAD_HINT = (
    "Download '2014 Val images' (val2014.zip) and '2014 Train/Val annotations' "
    "(annotations_trainval2014.zip) from https://cocodataset.org/#download and unpack both into the "
    "folder passed as --coco-root."
)


class CaptionSourceError(RuntimeError):
    """Missing or malformed dataset files or caption lists; the message says what to fix."""


@dataclass(frozen=True)
class CaptionRecord:
    index: int  # position in the caption list: names the generated image and derives its seed
    image_id: int
    file_name: str  # the reference image, relative to the source's image folder
    caption: str


class CocoCaptions:
    """MS-COCO val2014 captions and images under ``root`` (COCO's standard layout)."""

    name = "MS-COCO val2014"

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self.annotations_path = self.root / ANNOTATIONS
        self.images_dir = self.root / IMAGES
        if not self.annotations_path.is_file():
            raise CaptionSourceError(f"COCO captions not found: {self.annotations_path}\n  {COCO_DOWNLOAD_HINT}")
        if not self.images_dir.is_dir():
            raise CaptionSourceError(f"COCO images folder not found: {self.images_dir}\n  {COCO_DOWNLOAD_HINT}")
        self._coco = None

    @property
    def coco(self):
        if self._coco is None:
            from pycocotools.coco import COCO

            with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints its loading steps
                try:
                    self._coco = COCO(str(self.annotations_path))
                except (ValueError, KeyError, TypeError) as error:
                    raise CaptionSourceError(f"not a COCO captions file: {self.annotations_path} ({error})") from None
        return self._coco

    def __getstate__(self) -> dict:  # image-loading workers need the paths, not the parsed annotations
        return {**self.__dict__, "_coco": None}

    def captions_of(self, image_id: int) -> list[str]:
        annotations = sorted(self.coco.imgToAnns.get(image_id, []), key=lambda annotation: annotation["id"])
        return [" ".join(annotation["caption"].split()) for annotation in annotations]

    def sample(self, n: int, seed: int) -> list[CaptionRecord]:
        """``n`` distinct images with one caption each, deterministic in ``seed`` (see the module docstring)."""
        image_ids = sorted(image_id for image_id in self.coco.imgs if self.coco.imgToAnns.get(image_id))
        if not 1 <= n <= len(image_ids):
            raise CaptionSourceError(f"--n {n}: {self.annotations_path} has {len(image_ids)} captioned images")
        rng = np.random.default_rng(seed)
        picked = [image_ids[position] for position in rng.choice(len(image_ids), size=n, replace=False)]
        records = []
        for index, image_id in enumerate(picked):
            captions = self.captions_of(image_id)
            records.append(CaptionRecord(index, image_id, self.coco.imgs[image_id]["file_name"],
                                         captions[int(rng.integers(len(captions)))]))
        return records

    def complete(self, records: list[CaptionRecord]) -> list[CaptionRecord]:
        """Fill in missing file names from the annotations (a ``--captions`` list may give image ids only)."""
        completed = []
        for record in records:
            if not record.file_name:
                if record.image_id not in self.coco.imgs:
                    raise CaptionSourceError(f"image id {record.image_id} is not in {self.annotations_path}")
                record = CaptionRecord(record.index, record.image_id, self.coco.imgs[record.image_id]["file_name"],
                                       record.caption)
            completed.append(record)
        return completed

    def check_images(self, records: list[CaptionRecord]) -> None:
        """Fail before any generation if a reference image is missing."""
        missing = [record.file_name for record in records if not (self.images_dir / record.file_name).is_file()]
        if missing:
            raise CaptionSourceError(
                f"{len(missing)} reference image(s) missing from {self.images_dir}, e.g. {missing[0]}\n"
                f"  {COCO_DOWNLOAD_HINT}"
            )

    def reference_image(self, record: CaptionRecord) -> Image.Image:
        with Image.open(self.images_dir / record.file_name) as image:
            return image.convert("RGB")


def center_crop_resize(image: Image.Image, size: int) -> Image.Image:
    """The largest centred square, resized (bicubic) to ``size`` x ``size``: the evaluation size."""
    side = min(image.size)
    left, top = (image.width - side) // 2, (image.height - side) // 2
    square = image.crop((left, top, left + side, top + side))
    return square if side == size else square.resize((size, size), Image.Resampling.BICUBIC)


def write_json_atomically(path: Path, document) -> None:
    """Write to a temporary file, then rename: readers never see half a file, even after a crash."""
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    temporary.write_text(json.dumps(document, indent=1, ensure_ascii=False) + "\n")
    os.replace(temporary, path)


def write_captions(path: Path, records: list[CaptionRecord], **about) -> None:
    """The caption list as JSON: ``about`` (source, seed, rule) and ``captions`` (index, image id, file, caption)."""
    write_json_atomically(path, {**about, "n": len(records), "captions": [asdict(record) for record in records]})


def read_captions(path: Path) -> list[CaptionRecord]:
    """Read a list written by :func:`write_captions`, or a bare JSON list of ``{image_id, caption}`` objects.

    Each entry needs ``image_id`` and ``caption``; ``file_name`` is optional. Indices are list positions.
    """
    try:
        document = json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise CaptionSourceError(f"caption list not found: {path}") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise CaptionSourceError(f"caption list {path} is not JSON: {error}") from None
    entries = document.get("captions") if isinstance(document, dict) else document
    if not isinstance(entries, list) or not entries:
        raise CaptionSourceError(f"caption list {path}: expected a non-empty list under 'captions'")
    records = []
    for index, entry in enumerate(entries):
        if not (isinstance(entry, dict) and isinstance(entry.get("caption"), str)
                and isinstance(entry.get("image_id"), int)):
            raise CaptionSourceError(f"caption list {path}, entry {index}: needs an integer 'image_id' and a "
                                     f"string 'caption', got {entry!r}")
        records.append(CaptionRecord(index, entry["image_id"], entry.get("file_name") or "", entry["caption"]))
    return records
