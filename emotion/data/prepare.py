"""Prepare once, train fast: decode, check, crop and resize every source image once into an Arrow cache.

A reader (imagefolder, affectnet, affectnet_plus, ferplus, rafdb, fer2013) lists `Record`s per split ('train', 'validation' and,
when the source has one, a 'test' split kept apart from model selection); `prepared_splits` turns them into a
`datasets.DatasetDict` saved under `<cache_dir>/prepared/<dataset>-<key>/`, where the key hashes the source files'
sizes and modification times, the image size, the class list (`--classes 7` drops contempt here, counted as
excluded) and every reader option that changes pixels or rows: the same call reuses the cache, any change rebuilds it.
Valence and arousal, where a reader has them, are kept as columns (NaN where a row has none). Bad files are counted per reason (with example paths) in `report.json`
beside the cache and summed up in one line; they never stop the build.
"""
from __future__ import annotations

import csv
import functools
import hashlib
import io
import math
import json
import os
import shutil
import uuid
import warnings
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

import datasets
import numpy as np
from PIL import Image, UnidentifiedImageError

from emotion.config import DEFAULT_CACHE_DIR
from emotion.errors import EmotionError
from emotion.faces.detect import NoCrop, build_detector, crop_face, crop_region
from emotion.faces.images import max_pixels
from emotion.labels import CLASS_LISTS, NUM_CLASSES

# Bump when decoding, cropping, encoding or the columns change: old caches then stop matching.
PREPARE_VERSION = 2
EXAMPLES_PER_REASON = 5
# JPEG q95 keeps a full AffectNet cache at 224 px about 4x smaller than PNG at no visible cost.
JPEG_QUALITY = 95
SPLITS = ("train", "validation", "test")
REQUIRED_SPLITS = ("train", "validation")  # every reader lists these; "test" only when the source has a test split


@dataclass
class Record:
    """One source image: where it is (or its encoded bytes), its class id, and optionally a face box, a soft label,
    valence and arousal."""

    path: str
    label: int
    id: str
    box: tuple[float, float, float, float] | None = None  # face x, y, width, height in source pixels
    soft_label: list[float] | None = None
    valence: float | None = None
    arousal: float | None = None
    image_bytes: bytes | None = None  # the encoded image when the source holds pixels, not files (FER2013's CSV)


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


def csv_rows(path: Path) -> Iterator[list[str]]:
    """The rows of a CSV file (undecodable bytes replaced); a row the csv module refuses (a field over its 131,072
    character limit) is a one-line error naming the file and line."""
    with path.open(newline="", encoding="utf-8", errors="replace") as handle:
        reader = csv.reader(handle)
        try:
            yield from reader
        except csv.Error as err:
            raise EmotionError(f"{path}, line {reader.line_num}: {err}: fix or remove that line") from None


def whole_number(value) -> int | None:
    """A label written as a whole number (3, 3.0, '3'); None for anything else (True, 3.9, 'x', inf, a list)."""
    if isinstance(value, (bool, np.bool_)):
        return None
    try:
        number = float(value)
    except (TypeError, ValueError, OverflowError):
        return None
    return int(number) if number.is_integer() else None


def inside_check(*folders: Path) -> Callable[[Path], bool]:
    """A test of whether a path, `..` and symlinks resolved, lies in one of `folders` (resolved too): a list must not
    put files from elsewhere on the machine into the cache. A path that cannot be resolved is not inside."""
    roots = tuple(folder.resolve() for folder in folders)

    def inside(path: Path) -> bool:
        try:
            real = path.resolve()
        except (OSError, RuntimeError, ValueError):  # a symlink loop, a NUL byte
            return False
        return any(real.is_relative_to(root) for root in roots)

    return inside


def decode_rgb(path: str, data: bytes | None = None, limit: int | None = None) -> tuple[Image.Image, list[str]]:
    """The image (a file, or its encoded `data`) as 8-bit RGB and the conversions that took (grayscale, cmyk, alpha, ...);
    SkipImage('too_large') when its header claims more than `limit` pixels (default: emotion.faces.images.max_pixels)."""
    limit = max_pixels() if limit is None else limit
    try:
        size = os.path.getsize(path) if data is None else len(data)
    except OSError:
        raise SkipImage("missing_file") from None
    if size == 0:
        raise SkipImage("empty_file")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with Image.open(path if data is None else io.BytesIO(data)) as opened:
                if opened.size[0] * opened.size[1] > limit:  # from the header: a small file may claim a huge picture
                    raise SkipImage("too_large")
                opened.load()
                image = opened.copy()
    except UnidentifiedImageError:
        raise SkipImage("undecodable") from None
    except Image.DecompressionBombError:  # Pillow's own limit, met while opening, before ours is checked
        raise SkipImage("too_large") from None
    except (OSError, SyntaxError, ValueError) as err:
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
    """The face crop (x0, y0, x1, y1) by the rule the face pipeline also applies (emotion.faces.crop_region), and notes."""
    try:
        region = crop_region(width, height, box, margin)
    except NoCrop as reason:
        raise SkipImage(str(reason)) from None
    # The margin often leaves the photo; only a face box that itself leaves the photo is worth reporting.
    clipped = box is not None and (box[0] < 0 or box[1] < 0 or box[0] + box[2] > width or box[1] + box[3] > height)
    return region, ["box_clipped"] if clipped else []


def face_options(config) -> dict[str, Any]:
    """Reader options of --detect-faces (part of the cache key): the detector's box is cropped with --face-margin."""
    return {"detect_faces": True, "face_margin": config.face_margin} if config.detect_faces else {}


def faces_come_cropped(config) -> bool:
    """Whether the training images are face crops made by the data set's own cropper (FER+, FER2013, RAF-DB aligned,
    AffectNet+, folders of faces), not crops of face boxes by --face-margin (AffectNet's boxes, --detect-faces)."""
    if config.dataset in ("synthetic", "affectnet") or config.detect_faces:
        return False
    return not (config.dataset == "rafdb" and config.rafdb_images == "original")


@functools.lru_cache(maxsize=1)
def _face_detector():
    return build_detector()


def largest_face(image: Image.Image) -> tuple[float, float, float, float]:
    """The biggest box the demo's face detector finds in a photo; SkipImage('no_face') when it finds none."""
    boxes = _face_detector().detect(np.ascontiguousarray(np.asarray(image)[:, :, ::-1]))
    if not boxes:
        raise SkipImage("no_face")
    return tuple(float(v) for v in max(boxes, key=lambda b: b[2] * b[3]))


def prepare_image(record: Record, image_size: int, margin: float, detect_faces: bool = False,
                  limit: int | None = None) -> tuple[bytes, tuple[int, int, int, int], list[str]]:
    """Decode (at most `limit` pixels), crop and resize one record to JPEG bytes; raises SkipImage with the reason."""
    image, notes = decode_rgb(record.path, record.image_bytes, limit)
    box = largest_face(image) if detect_faces and record.box is None else record.box
    crop, crop_notes = crop_box(image.width, image.height, box, margin)
    face = Image.fromarray(crop_face(np.asarray(image), crop, image_size))
    buffer = io.BytesIO()
    face.save(buffer, format="JPEG", quality=JPEG_QUALITY)
    return buffer.getvalue(), crop, notes + crop_notes


def _features(class_names: tuple[str, ...], with_soft: bool, with_affect: bool):
    columns = {
        "image": datasets.Image(),
        "label": datasets.ClassLabel(names=list(class_names)),
        "id": datasets.Value("string"),
        "path": datasets.Value("string"),
        "crop": datasets.Sequence(datasets.Value("int32"), length=4),
        "status": datasets.Value("string"),
        "notes": datasets.Value("string"),
    }
    if with_soft:
        columns["soft_label"] = datasets.Sequence(datasets.Value("float32"), length=len(class_names))
    if with_affect:
        columns["valence"] = datasets.Value("float32")
        columns["arousal"] = datasets.Value("float32")
    return datasets.Features(columns)


def _generate(records: list[dict], image_size: int, margin: float, detect_faces: bool, with_soft: bool,
              with_affect: bool, limit: int) -> Iterator[dict]:
    """Every record once; a bad one comes out without an image and with its reason in `status`."""
    for row in records:
        record = Record(**row)
        image, crop, status, notes = None, (0, 0, 0, 0), "", []
        try:
            data, crop, notes = prepare_image(record, image_size, margin, detect_faces, limit)
            image = {"bytes": data, "path": None}
        except SkipImage as reason:
            status = str(reason)
        out = {"image": image, "label": record.label, "id": record.id, "path": record.path, "crop": list(crop),
               "status": status, "notes": ",".join(notes)}
        if with_soft:
            out["soft_label"] = record.soft_label
        if with_affect:
            out["valence"] = math.nan if record.valence is None else record.valence
            out["arousal"] = math.nan if record.arousal is None else record.arousal
        yield out


def keep_classes(source: Source, count: int) -> None:
    """Drop the rows of classes beyond the first `count` (--classes 7: contempt), counted as excluded; soft labels are
    renormalised over the classes kept (a row with no mass left trains on its hard label)."""
    if count == NUM_CLASSES:
        return
    for split in source.split_names():
        kept = []
        for record in source.splits[split]:
            if record.label >= count:
                source.excluded[split].add(CLASS_LISTS[NUM_CLASSES][record.label], record.path)
                continue
            if record.soft_label is not None:
                total = sum(record.soft_label[:count])
                record.soft_label = [p / total for p in record.soft_label[:count]] if total > 0 else \
                    [float(i == record.label) for i in range(count)]
            kept.append(record)
        source.splits[split] = kept


def cache_key(source: Source, image_size: int, count: int) -> str:
    """Hash of everything the prepared pixels and rows depend on, source files' sizes and times included."""
    digest = hashlib.sha256()
    header = {"version": PREPARE_VERSION, "dataset": source.dataset, "root": str(source.root.resolve()),
              "image_size": image_size, "classes": count, "options": source.options}
    digest.update(json.dumps(header, sort_keys=True).encode())
    for path in source.stat_files:
        digest.update(f"{path}|{_stat(str(path))}".encode())
    for split in source.split_names():
        for r in source.splits[split]:
            where = _stat(r.path) if r.image_bytes is None else hashlib.sha256(r.image_bytes).hexdigest()[:16]
            digest.update(f"{split}|{r.path}|{r.label}|{r.box}|{r.soft_label}|{r.valence}|{r.arousal}|{where}\n".encode())
    return digest.hexdigest()[:16]


def _stat(path: str) -> str:
    try:
        info = os.stat(path)
    except OSError:
        return "missing"
    return f"{info.st_size}:{info.st_mtime_ns}"


def cache_root(cache_dir: str | None) -> Path:
    return Path(cache_dir or DEFAULT_CACHE_DIR).expanduser() / "prepared"


def build_prepared(source: Source, target: Path, image_size: int, num_proc: int | None,
                   count: int = NUM_CLASSES) -> dict[str, Any]:
    """Build the cache in a temporary folder next to `target`, then rename it into place; return the report."""
    records_of = [r for split in source.split_names() for r in source.splits[split]]
    with_soft = any(r.soft_label is not None for r in records_of)
    with_affect = any(r.valence is not None or r.arousal is not None for r in records_of)
    class_names = CLASS_LISTS[count]
    features = _features(class_names, with_soft, with_affect)
    margin = float(source.options.get("face_margin", 0.0))
    limit = max_pixels()  # read here: a bad EMOTION_MAX_PIXELS is one line, not a traceback from inside a worker
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
                    _generate, features=features, cache_dir=str(work / "build"),
                    gen_kwargs={"records": records, "image_size": image_size, "margin": margin, "with_soft": with_soft,
                                "detect_faces": bool(source.options.get("detect_faces")), "with_affect": with_affect,
                                "limit": limit},
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
                data = datasets.Dataset.from_dict({k: [] for k in features}, features=features).remove_columns(["status", "notes"])
            prepared[split] = data
            counts = np.bincount(np.asarray(data["label"], dtype=np.int64), minlength=count)
            report["splits"][split] = {
                "kept": len(data), "per_class": {n: int(c) for n, c in zip(class_names, counts)},
                "skipped": skipped.to_dict(), "excluded": source.excluded[split].to_dict(), "converted": converted.to_dict(),
            }
        train_counts = report["splits"]["train"]["per_class"]
        report["absent_classes"] = [n for n in class_names if train_counts[n] == 0]
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
    source = read(config)
    keep_classes(source, config.classes)
    target = cache_root(config.cache_dir) / f"{source.dataset}-{cache_key(source, config.image_size, config.classes)}"
    if (target / "report.json").is_file():
        report = json.loads((target / "report.json").read_text())
        log(f"prepared cache reused: {summary_line(report, target)}")
    else:
        log(f"preparing {source.dataset} from {source.root} into {target} ...")
        report = build_prepared(source, target, config.image_size, config.num_proc, config.classes)
        log(f"prepared: {summary_line(report, target)}")
    if report["splits"]["train"]["kept"] == 0:
        raise EmotionError(f"no usable training image in {source.root}: every one was skipped; see {target / 'report.json'}")
    splits = datasets.load_from_disk(str(target))
    if config.trains_on_soft_labels() and "soft_label" not in splits["train"].column_names:
        flag = "--label-mode soft" if config.label_mode == "soft" else "--soft-labels"
        raise EmotionError(f"{flag}: {source.root} has no soft labels; drop {flag} to train on hard labels")
    return splits
