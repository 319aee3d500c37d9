"""Prepare once, train fast: decode, check, crop and resize every source image once into an Arrow cache.

A reader (imagefolder, affectnet, affectnet_plus, ferplus) lists `Record`s per split ('train', 'validation' and,
when the source has one, a 'test' split kept apart from model selection); `prepared_splits` turns them into a
`datasets.DatasetDict` saved under `<cache_dir>/prepared/<dataset>-<key>/`, where the key hashes the source files'
sizes and modification times, the image size and every reader option that changes pixels or rows: the same call
reuses the cache, any change rebuilds it. Bad files are counted per reason (with example paths) in `report.json`
beside the cache and summed up in one line; they never stop the build.
"""
from __future__ import annotations

import hashlib
import io
import json
import math
import os
import shutil
import uuid
import warnings
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
from PIL import Image, UnidentifiedImageError

from emotion.config import DEFAULT_CACHE_DIR
from emotion.errors import EmotionError
from emotion.labels import CLASS_NAMES, NUM_CLASSES

# Bump when decoding, cropping or encoding changes: old caches then stop matching.
PREPARE_VERSION = 1
EXAMPLES_PER_REASON = 5
# JPEG q95 keeps a full AffectNet cache at 224 px about 4x smaller than PNG at no visible cost.
JPEG_QUALITY = 95
SPLITS = ("train", "validation", "test")
REQUIRED_SPLITS = ("train", "validation")  # every reader lists these; "test" only when the source has a test split


@dataclass
class Record:
    """One source image: where it is, its class id, and optionally a face box and a soft label."""

    path: str
    label: int
    id: str
    box: tuple[float, float, float, float] | None = None  # face x, y, width, height in source pixels
    soft_label: list[float] | None = None


@dataclass
class Issues:
    """Counts per reason, each with a few example paths."""

    counts: Counter = field(default_factory=Counter)
    examples: dict[str, list[str]] = field(default_factory=dict)

    def add(self, reason: str, example: str, count: int = 1) -> None:
        self.counts[reason] += count
        kept = self.examples.setdefault(reason, [])
        if len(kept) < EXAMPLES_PER_REASON:
            kept.append(example)

    def to_dict(self) -> dict[str, dict[str, Any]]:
        return {r: {"count": int(n), "examples": self.examples.get(r, [])} for r, n in sorted(self.counts.items())}


@dataclass
class Source:
    """What a reader found: records per split, rows it dropped (skipped) or set aside on purpose (excluded)."""

    dataset: str
    root: Path
    splits: dict[str, list[Record]]  # "train" and "validation", plus "test" when the source has one
    options: dict[str, Any]  # reader options that change the rows or pixels (part of the cache key)
    skipped: dict[str, Issues] = field(default_factory=lambda: {s: Issues() for s in SPLITS})
    excluded: dict[str, Issues] = field(default_factory=lambda: {s: Issues() for s in SPLITS})
    stat_files: list[Path] = field(default_factory=list)  # label files whose changes must rebuild the cache

    def split_names(self) -> tuple[str, ...]:
        """The splits this source provides, in SPLITS order."""
        return tuple(s for s in SPLITS if s in REQUIRED_SPLITS or s in self.splits)


class SkipImage(Exception):
    """An image that cannot be used; the message is the reason counted in the report."""


def decode_rgb(path: str) -> tuple[Image.Image, list[str]]:
    """The image as 8-bit RGB and the conversions that took (grayscale, cmyk, alpha, 16-bit, ...)."""
    try:
        size = os.path.getsize(path)
    except OSError:
        raise SkipImage("missing_file") from None
    if size == 0:
        raise SkipImage("empty_file")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with Image.open(path) as opened:
                opened.load()
                image = opened.copy()
    except UnidentifiedImageError:
        raise SkipImage("undecodable") from None
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as err:
        raise SkipImage("truncated" if "truncated" in str(err) else "undecodable") from None
    if image.mode == "RGB":
        return image, []
    if image.mode in ("I;16", "I;16B", "I;16L", "I"):
        # 16-bit grayscale: PIL's own convert clips at 255, so scale the full range down instead.
        values = np.asarray(image, dtype=np.float64)
        peak = 65535.0 if values.max() > 255 else 255.0
        grey = np.clip(values * (255.0 / peak), 0, 255).round().astype(np.uint8)
        return Image.fromarray(grey).convert("RGB"), ["16bit"]
    note = {"L": "grayscale", "LA": "grayscale", "1": "grayscale", "P": "palette", "PA": "palette",
            "RGBA": "alpha", "CMYK": "cmyk"}.get(image.mode, f"mode_{image.mode}")
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        image = image.convert("RGBA")
        background = Image.new("RGBA", image.size, (255, 255, 255, 255))
        image = Image.alpha_composite(background, image)
    return image.convert("RGB"), [note]


def crop_box(width: int, height: int, box: tuple[float, float, float, float] | None,
             margin: float) -> tuple[tuple[int, int, int, int], list[str]]:
    """Square crop (x0, y0, x1, y1) inside the image: the face box grown by `margin` per side, or the centre square."""
    if box is None:
        side = min(width, height)
        x0, y0 = (width - side) // 2, (height - side) // 2
        return (x0, y0, x0 + side, y0 + side), []
    x, y, w, h = box
    if not all(math.isfinite(v) for v in box) or w <= 0 or h <= 0:
        raise SkipImage("bad_box")
    if x >= width or y >= height or x + w <= 0 or y + h <= 0:
        raise SkipImage("box_outside_image")
    side = max(w, h) * (1 + 2 * margin)
    cx, cy = x + w / 2, y + h / 2
    wanted = (round(cx - side / 2), round(cy - side / 2), round(cx + side / 2), round(cy + side / 2))
    crop = (max(0, wanted[0]), max(0, wanted[1]), min(width, wanted[2]), min(height, wanted[3]))
    if crop[2] - crop[0] < 2 or crop[3] - crop[1] < 2:
        raise SkipImage("box_outside_image")
    # The margin often leaves the photo; only a face box that itself leaves the photo is worth reporting.
    clipped = x < 0 or y < 0 or x + w > width or y + h > height
    return crop, ["box_clipped"] if clipped else []


def prepare_image(record: Record, image_size: int, margin: float) -> tuple[bytes, tuple[int, int, int, int], list[str]]:
    """Decode, crop and resize one record to JPEG bytes; raises SkipImage with the reason."""
    image, notes = decode_rgb(record.path)
    crop, crop_notes = crop_box(image.width, image.height, record.box, margin)
    face = image.crop(crop).resize((image_size, image_size), Image.Resampling.BICUBIC, reducing_gap=3.0)
    buffer = io.BytesIO()
    face.save(buffer, format="JPEG", quality=JPEG_QUALITY)
    return buffer.getvalue(), crop, notes + crop_notes


def _features(with_soft: bool):
    import datasets

    columns = {
        "image": datasets.Image(),
        "label": datasets.ClassLabel(names=list(CLASS_NAMES)),
        "id": datasets.Value("string"),
        "path": datasets.Value("string"),
        "crop": datasets.Sequence(datasets.Value("int32"), length=4),
        "status": datasets.Value("string"),
        "notes": datasets.Value("string"),
    }
    if with_soft:
        columns["soft_label"] = datasets.Sequence(datasets.Value("float32"), length=NUM_CLASSES)
    return datasets.Features(columns)


def _generate(records: list[dict], image_size: int, margin: float, with_soft: bool) -> Iterator[dict]:
    """Every record once; a bad one comes out without an image and with its reason in `status`."""
    for row in records:
        record = Record(**row)
        image, crop, status, notes = None, (0, 0, 0, 0), "", []
        try:
            data, crop, notes = prepare_image(record, image_size, margin)
            image = {"bytes": data, "path": None}
        except SkipImage as reason:
            status = str(reason)
        out = {"image": image, "label": record.label, "id": record.id, "path": record.path, "crop": list(crop),
               "status": status, "notes": ",".join(notes)}
        if with_soft:
            out["soft_label"] = record.soft_label
        yield out


def cache_key(source: Source, image_size: int) -> str:
    """Hash of everything the prepared pixels and rows depend on, source files' sizes and times included."""
    digest = hashlib.sha256()
    header = {"version": PREPARE_VERSION, "dataset": source.dataset, "root": str(source.root.resolve()),
              "image_size": image_size, "options": source.options}
    digest.update(json.dumps(header, sort_keys=True).encode())
    for path in source.stat_files:
        digest.update(f"{path}|{_stat(str(path))}".encode())
    for split in source.split_names():
        for r in source.splits[split]:
            digest.update(f"{split}|{r.path}|{r.label}|{r.box}|{r.soft_label}|{_stat(r.path)}\n".encode())
    return digest.hexdigest()[:16]


def _stat(path: str) -> str:
    try:
        info = os.stat(path)
    except OSError:
        return "missing"
    return f"{info.st_size}:{info.st_mtime_ns}"


def cache_root(cache_dir: str | None) -> Path:
    return Path(cache_dir or DEFAULT_CACHE_DIR).expanduser() / "prepared"


def build_prepared(source: Source, target: Path, image_size: int, num_proc: int | None) -> dict[str, Any]:
    """Build the cache in a temporary folder next to `target`, then rename it into place; return the report."""
    import datasets

    with_soft = any(r.soft_label is not None for split in source.split_names() for r in source.splits[split])
    margin = float(source.options.get("face_margin", 0.0))
    work = target.parent / f".tmp-{target.name}-{uuid.uuid4().hex[:8]}"
    work.mkdir(parents=True)
    try:
        prepared, report = {}, {"dataset": source.dataset, "root": str(source.root), "image_size": image_size,
                                "options": source.options, "splits": {}}
        for split in source.split_names():
            records = [r.__dict__ for r in source.splits[split]]
            converted, skipped = Issues(), source.skipped[split]
            if records:
                nproc = max(1, min(num_proc or os.cpu_count() or 1, len(records)))
                built = datasets.Dataset.from_generator(
                    _generate, features=_features(with_soft), cache_dir=str(work / "build"),
                    gen_kwargs={"records": records, "image_size": image_size, "margin": margin, "with_soft": with_soft},
                    num_proc=nproc if nproc > 1 else None, split=datasets.NamedSplit(split),
                    fingerprint=hashlib.sha256(f"{target.name}|{split}".encode()).hexdigest()[:16],
                )
                statuses, notes, paths = built["status"], built["notes"], built["path"]
                keep = [i for i, s in enumerate(statuses) if not s]
                for i, status in enumerate(statuses):
                    if status:
                        skipped.add(status, paths[i])
                    for note in filter(None, notes[i].split(",")):
                        converted.add(note, paths[i])
                data = built.select(keep).remove_columns(["status", "notes"])
            else:
                data = datasets.Dataset.from_dict({k: [] for k in _features(with_soft)},
                                                  features=_features(with_soft)).remove_columns(["status", "notes"])
            prepared[split] = data
            counts = np.bincount(np.asarray(data["label"], dtype=np.int64), minlength=NUM_CLASSES)
            report["splits"][split] = {
                "kept": len(data), "per_class": {n: int(c) for n, c in zip(CLASS_NAMES, counts)},
                "skipped": skipped.to_dict(), "excluded": source.excluded[split].to_dict(), "converted": converted.to_dict(),
            }
        train_counts = report["splits"]["train"]["per_class"]
        report["absent_classes"] = [n for n in CLASS_NAMES if train_counts[n] == 0]
        report["soft_labels"] = with_soft
        # An empty split (every image skipped) would be saved as 0 shards, which load_from_disk cannot read back.
        datasets.DatasetDict(prepared).save_to_disk(str(work / "data"),
                                                    num_shards={k: 1 if len(v) == 0 else None for k, v in prepared.items()})
        (work / "data" / "report.json").write_text(json.dumps(report, indent=2) + "\n")
        try:
            (work / "data").rename(target)
        except OSError:  # another process finished the same cache first: keep theirs
            if not (target / "report.json").is_file():
                raise
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return report


def summary_line(report: dict[str, Any], path: Path) -> str:
    def total(part: str) -> Counter:
        counts: Counter = Counter()
        for split in report["splits"].values():
            counts.update({r: v["count"] for r, v in split[part].items()})
        return counts

    def listed(counts: Counter) -> str:
        return f"{sum(counts.values())}" + (f" ({', '.join(f'{r} {n}' for r, n in sorted(counts.items()))})" if counts else "")

    kept = ", ".join(f"{s} {v['kept']}" for s, v in report["splits"].items())
    absent = ", ".join(report["absent_classes"]) or "none"
    return (f"{report['dataset']} {report['root']} at {report['image_size']} px: kept {kept}; skipped {listed(total('skipped'))}; "
            f"excluded {listed(total('excluded'))}; converted {listed(total('converted'))}; absent classes: {absent}; "
            f"report {path / 'report.json'}")


def prepared_splits(config, read: Callable[[Any], Source], log: Callable[[str], None] = print):
    """The prepared cache for `config`'s source: reused when its key matches, built (in parallel) otherwise."""
    import datasets

    source = read(config)
    target = cache_root(config.cache_dir) / f"{source.dataset}-{cache_key(source, config.image_size)}"
    if (target / "report.json").is_file():
        report = json.loads((target / "report.json").read_text())
        log(f"prepared cache reused: {summary_line(report, target)}")
    else:
        log(f"preparing {source.dataset} from {source.root} into {target} ...")
        report = build_prepared(source, target, config.image_size, config.num_proc)
        log(f"prepared: {summary_line(report, target)}")
    if report["splits"]["train"]["kept"] == 0:
        raise EmotionError(f"no usable training image in {source.root}: every one was skipped; see {target / 'report.json'}")
    splits = datasets.load_from_disk(str(target))
    if config.trains_on_soft_labels() and "soft_label" not in splits["train"].column_names:
        flag = "--label-mode soft" if config.label_mode == "soft" else "--soft-labels"
        raise EmotionError(f"{flag}: {source.root} has no soft labels; drop {flag} to train on hard labels")
    return splits
