"""Miniature versions of the real data-set layouts, written on the fly: a few dozen images plus bad files of each kind."""
from __future__ import annotations

import csv
import io
import json
import struct
import zlib
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image

from emotion.config import TrainConfig


def picture(rng: np.random.Generator, width: int = 40, height: int = 40) -> Image.Image:
    return Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8))


def save(image: Image.Image, path: Path, fmt: str | None = None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path, format=fmt)
    return path


def write_bad_files(folder: Path, rng: np.random.Generator) -> dict[str, Path]:
    """One file of each broken kind (skipped) and of each odd-but-usable kind (converted)."""
    folder.mkdir(parents=True, exist_ok=True)
    buffer = io.BytesIO()
    picture(rng).save(buffer, format="JPEG")
    files = {"empty_file": folder / "empty.jpg", "truncated": folder / "truncated.jpg", "undecodable": folder / "garbage.jpg"}
    files["empty_file"].write_bytes(b"")
    files["truncated"].write_bytes(buffer.getvalue()[: len(buffer.getvalue()) // 2])
    files["undecodable"].write_bytes(b"this is not an image" * 10)
    files["grayscale"] = save(picture(rng).convert("L"), folder / "grey.png")
    files["cmyk"] = save(picture(rng).convert("CMYK"), folder / "cmyk.jpg")
    files["alpha"] = save(picture(rng).convert("RGBA"), folder / "rgba.png")
    files["16bit"] = save(Image.fromarray(rng.integers(0, 65535, (40, 40), dtype=np.uint16)), folder / "deep.png")
    return files


def make_imagefolder(root: Path, per_class: int = 4, with_splits: bool = True, seed: int = 0) -> Path:
    """FER-style export: 7 classes under alias names (no contempt), bad files inside the 'happiness' train folder."""
    rng = np.random.default_rng(seed)
    names = ["neutral", "happiness", "Sadness", "surprised", "fearful", "disgust", "angry"]
    for name in names:
        if with_splits:
            for split, n in (("train", per_class), ("test", 2)):
                for i in range(n):
                    save(picture(rng, 48, 48), root / split / name / f"{i}.jpg")
        else:
            for i in range(per_class):
                save(picture(rng, 48, 48), root / name / f"{i}.png")
    write_bad_files(root / "train" / "happiness" if with_splits else root / "happiness", rng)
    return root


AFFECTNET_HEADER = ["subDirectory_filePath", "face_x", "face_y", "face_width", "face_height", "facial_landmarks",
                    "expression", "valence", "arousal"]


def make_affectnet(root: Path, seed: int = 0) -> tuple[Path, dict]:
    """Full photos (80 x 60) with face boxes; rows for every class 0-10 plus bad rows. Returns root and expectations."""
    rng = np.random.default_rng(seed)
    images = root / "Manually_Annotated_Images"
    rows, expected = [], {"train_per_class": [0] * 8, "excluded": {"none": 0, "uncertain": 0, "no_face": 0}}
    for i, label in enumerate([0, 1, 2, 3, 4, 5, 6, 7] * 3 + [8, 9, 10]):
        relative = f"{i % 3}/img{i}.jpg"
        save(picture(rng, 80, 60), images / relative)
        box = (10 + i % 5, 8, 30, 34) if i % 4 else (60, 40, 30, 30)  # every 4th box runs past the photo's edge
        rows.append([relative, *box, "1;2;3", label, "0.1", "0.2"])
        if label < 8:
            expected["train_per_class"][label] += 1
        else:
            expected["excluded"][{8: "none", 9: "uncertain", 10: "no_face"}[label]] += 1
    bad = write_bad_files(images / "bad", rng)
    for kind, path in bad.items():
        rows.append([str(path.relative_to(images)), 2, 2, 30, 30, "", 1, 0, 0])
        if kind in ("grayscale", "cmyk", "alpha", "16bit"):
            expected["train_per_class"][1] += 1
    rows.append(["9/missing.jpg", 5, 5, 20, 20, "", 2, 0, 0])                  # missing file
    rows.append([rows[0][0], 500, 500, 20, 20, "", 3, 0, 0])                    # box outside the photo
    rows.append([rows[0][0], 5, 5, 20, 20, "", 42, 0, 0])                       # label out of range
    rows.append([rows[0][0], "x", 5, 20, 20, "", 3, 0, 0])                      # unparsable box
    rows.append([rows[0][0], 5, 5])                                             # too few columns
    write_csv(root / "training.csv", AFFECTNET_HEADER, rows)
    val_rows = []
    for i, label in enumerate(range(8)):
        relative = f"val/v{i}.jpg"
        save(picture(rng, 80, 60), images / relative)
        val_rows.append([relative, 20, 10, 30, 30, "", label, 0, 0])
    write_csv(root / "validation.csv", None, val_rows)  # the release's validation list has no header row
    return root, expected


def write_csv(path: Path, header: list[str] | None, rows: list[list]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        if header:
            writer.writerow(header)
        writer.writerows(rows)


def make_affectnet_plus(root: Path, hard_key: str = "human-label", soft_key: str = "soft-label",
                        subset_key: str | None = "subset", subset_names: bool = False, seed: int = 0) -> Path:
    """human_annotated/{train_set,validation_set}/{images,annotations}; soft labels peaked on the hard label. As
    released: subset codes 0 easy / 1 challenging / 2 difficult (names with `subset_names`), and `meta-data` with
    valence and arousal (image i: valence i / 100, arousal -i / 100; image 5 has no arousal)."""
    rng = np.random.default_rng(seed)
    subsets = ("easy", "challenging", "difficult")
    for split, n in (("train_set", 24), ("validation_set", 8)):
        folder = root / "human_annotated" / split
        for i in range(n):
            label = i % 8
            save(picture(rng, 32, 32), folder / "images" / f"{i}.jpg")
            soft = rng.random(8) * 0.2
            soft[label] += 1.0
            data = {hard_key: label, soft_key: [float(p) for p in soft * 3],  # unnormalised on purpose
                    "meta-data": {"age": 30, "valence": i / 100, **({"arousal": -i / 100} if i != 5 else {})}}
            if subset_key:
                data[subset_key] = subsets[i % 3] if subset_names else i % 3
            (folder / "annotations").mkdir(parents=True, exist_ok=True)
            (folder / "annotations" / f"{i}.json").write_text(json.dumps(data))
    train = root / "human_annotated" / "train_set"
    (train / "annotations" / "100.json").write_text(json.dumps({hard_key: 9, soft_key: [0.125] * 8}))  # uncertain
    (train / "annotations" / "101.json").write_text("{not json")
    (train / "annotations" / "102.json").write_text(json.dumps({"other": 1}))
    (train / "annotations" / "103.json").write_text(json.dumps({hard_key: 2, soft_key: [1, 2]}))
    (train / "annotations" / "104.json").write_text(json.dumps({hard_key: 3, soft_key: [0.125] * 8}))  # no image
    return root


def config(dataset: str, data_dir: Path, cache_dir: Path, **overrides) -> TrainConfig:
    return TrainConfig(**{"dataset": dataset, "data_dir": str(data_dir), "cache_dir": str(cache_dir), "image_size": 32,
                          "num_proc": 1, **overrides})


FERPLUS_COLUMNS = ("neutral", "happiness", "surprise", "sadness", "anger", "disgust", "fear", "contempt", "unknown", "NF")


def ferplus_votes(**named: int) -> list[int]:
    """Ten vote counts in FER+ file order from column names, e.g. ferplus_votes(sadness=6, anger=2)."""
    return [named.get(column, 0) for column in FERPLUS_COLUMNS]


def make_ferplus(root: Path, seed: int = 0) -> tuple[Path, dict]:
    """FERPlus tools layout: FER2013{Train,Valid,Test}/ with 48 x 48 grey PNGs and a header-less label.csv.

    Train: two clear majorities per emotion column (6 votes on it, 2 on the next column, 1 unknown, 1 NF), a tie
    between two emotions, a tie between an emotion and unknown, an unknown majority, an NF majority, two malformed
    rows (too few columns, a non-integer vote) and a listed file that is missing. Validation: one clear majority per
    emotion column and a tie. Test: five clear majorities (neutral, happiness, sadness, anger, contempt) and an NF
    majority. Returns root and, per split, the votes of every row by file name.
    """
    rng = np.random.default_rng(seed)
    emotions = FERPLUS_COLUMNS[:8]
    plan: dict[str, list[tuple[str, list[int] | list[str]]]] = {"FER2013Train": [], "FER2013Valid": [], "FER2013Test": []}
    for k in range(2):
        for i, column in enumerate(emotions):
            plan["FER2013Train"].append((f"clear_{column}_{k}", ferplus_votes(**{column: 6, emotions[(i + 1) % 8]: 2,
                                                                                 "unknown": 1, "NF": 1})))
    plan["FER2013Train"] += [
        ("tie", ferplus_votes(neutral=4, happiness=4, unknown=2)),
        ("tie_with_unknown", ferplus_votes(sadness=4, unknown=4, happiness=1, NF=1)),
        ("unknown", ferplus_votes(sadness=2, neutral=1, unknown=7)),
        ("not_a_face", ferplus_votes(NF=10)),
        ("missing", ferplus_votes(happiness=9, neutral=1)),
    ]
    plan["FER2013Valid"] = [(f"clear_{c}", ferplus_votes(**{c: 7, "neutral" if c != "neutral" else "fear": 3})) for c in emotions]
    plan["FER2013Valid"].append(("tie", ferplus_votes(anger=5, disgust=5)))
    plan["FER2013Test"] = [(f"clear_{c}", ferplus_votes(**{c: 8, "surprise" if c != "surprise" else "fear": 2}))
                           for c in ("neutral", "happiness", "sadness", "anger", "contempt")]
    plan["FER2013Test"].append(("not_a_face", ferplus_votes(NF=6, unknown=4)))
    expected: dict[str, dict[str, list[int]]] = {}
    number = 0
    for folder, rows in plan.items():
        csv_rows, expected[folder] = [], {}
        for kind, votes in rows:
            name = f"fer{number:07d}.png"
            number += 1
            if kind != "missing":
                save(Image.fromarray(rng.integers(0, 256, (48, 48), dtype=np.uint8)), root / folder / name)  # mode L
            csv_rows.append([name, "(0, 0, 48, 48)", *votes])
            expected[folder][kind] = name
        if folder == "FER2013Train":
            csv_rows.append([f"fer{number:07d}.png", "(0, 0, 48, 48)", 1, 2, 3])                       # too few columns
            csv_rows.append([f"fer{number + 1:07d}.png", "(0, 0, 48, 48)", "x", *ferplus_votes(anger=9)[1:]])  # not a count
            number += 2
        write_csv(root / folder / "label.csv", None, csv_rows)
    return root, expected


def make_numbered_folders(root: Path, names: list[str], per_class: int = 2, seed: int = 0) -> Path:
    """root/train/<name>/*.png for each folder name given (numbered names, bare numbers, ...)."""
    rng = np.random.default_rng(seed)
    for name in names:
        for i in range(per_class):
            save(picture(rng, 40, 40), root / "train" / name / f"{i}.png")
    return root


RAFDB_NAMES = {1: "surprise", 2: "fear", 3: "disgust", 4: "happy", 5: "sad", 6: "anger", 7: "neutral"}


def make_rafdb(root: Path, seed: int = 0) -> Path:
    """RAF-DB basic: EmoLabel/list_patition_label.txt + Image/aligned/*_aligned.jpg and Image/original/*.jpg.

    Train: 4 images of each RAF-DB label 1-7; test: 1 of each. Plus a label 9 line, a line with no label, and a
    listed test image whose files are missing."""
    rng = np.random.default_rng(seed)
    lines = []
    for split, n in (("train", 4), ("test", 1)):
        for k in range(n):
            for number in RAFDB_NAMES:
                name = f"{split}_{len(lines) + 1:05d}.jpg"
                save(picture(rng, 100, 100), root / "Image" / "aligned" / name.replace(".jpg", "_aligned.jpg"))
                save(picture(rng, 120, 90), root / "Image" / "original" / name)
                lines.append(f"{name} {number}")
    lines += ["train_09998.jpg 9", "train_09999.jpg", "test_09999.jpg 4"]
    (root / "EmoLabel").mkdir(parents=True, exist_ok=True)
    (root / "EmoLabel" / "list_patition_label.txt").write_text("\n".join(lines) + "\n")
    return root


FER2013_NAMES = ("anger", "disgust", "fear", "happy", "sad", "surprise", "neutral")


def make_fer2013(root: Path, seed: int = 0) -> Path:
    """fer2013.csv: per FER2013 label 0-6, two Training rows, one PublicTest and one PrivateTest row (face i is
    filled with grey value 10 * label); plus a row of 100 pixels, a label 7 row and an unknown Usage."""
    rows = []
    for usage, n in (("Training", 2), ("PublicTest", 1), ("PrivateTest", 1)):
        for _ in range(n):
            for label in range(7):
                rows.append([label, " ".join([str(10 * label)] * 48 * 48), usage])
    rows += [[3, " ".join(["5"] * 100), "Training"], [7, " ".join(["5"] * 2304), "Training"],
             [3, " ".join(["5"] * 2304), "Elsewhere"]]
    write_csv(root / "fer2013.csv", ["emotion", "pixels", "Usage"], rows)
    return root


def make_affectnet_npy(root: Path, seed: int = 0) -> Path:
    """The per-image .npy release: {train_set,val_set}/images/<id>.jpg + annotations/<id>_{exp,val,aro}.npy, values
    stored as strings as in the release. Train: 2 of each class 0-7 (valence id / 100, arousal 0.5), a code 8 and a
    code 10, an unreadable _exp.npy, and id 3 without an _aro.npy; validation: 1 of each class."""
    rng = np.random.default_rng(seed)
    for folder, labels in (("train_set", list(range(8)) * 2 + [8, 10]), ("val_set", list(range(8)))):
        for image_id, label in enumerate(labels):
            save(picture(rng, 48, 48), root / folder / "images" / f"{image_id}.jpg")
            notes = root / folder / "annotations"
            notes.mkdir(parents=True, exist_ok=True)
            np.save(notes / f"{image_id}_exp.npy", np.array(str(label)))
            np.save(notes / f"{image_id}_val.npy", np.array(str(image_id / 100)))
            if image_id != 3:
                np.save(notes / f"{image_id}_aro.npy", np.array("0.5"))
    (root / "train_set" / "annotations" / "99_exp.npy").write_bytes(b"not numpy")
    return root


# Miniature layouts for the hostile-input tests: a few small images and room for crafted rows.
SMALL_SIDE = 24


def make_small_affectnet(root: Path, extra_rows: Sequence[list] = (), seed: int = 0) -> Path:
    """AffectNet CSV layout: 4 photos (24 x 24) of classes 0-3 with boxes inside them on lines 2-5 of training.csv,
    then `extra_rows` from line 6; the first 2 again in a header-less validation.csv."""
    rng = np.random.default_rng(seed)
    rows = []
    for label in range(4):
        save(picture(rng, SMALL_SIDE, SMALL_SIDE), root / "Manually_Annotated_Images" / f"{label}.jpg")
        rows.append([f"{label}.jpg", 2, 2, 20, 20, "", label, 0.1, 0.2])
    write_csv(root / "training.csv", AFFECTNET_HEADER, rows + list(extra_rows))
    write_csv(root / "validation.csv", None, rows[:2])
    return root


def make_small_ferplus(root: Path, extra_train_rows: Sequence[list] = (), seed: int = 0) -> Path:
    """FER+ layout: per split folder 3 grey 24 x 24 faces with clear neutral, happiness and sadness majorities on lines
    1-3 of label.csv; `extra_train_rows` from line 4 of FER2013Train's."""
    rng = np.random.default_rng(seed)
    for folder in ("FER2013Train", "FER2013Valid", "FER2013Test"):
        rows = []
        for i, column in enumerate(("neutral", "happiness", "sadness")):
            name = f"fer{i:07d}.png"
            save(Image.fromarray(rng.integers(0, 256, (SMALL_SIDE, SMALL_SIDE), dtype=np.uint8)), root / folder / name)
            rows.append([name, "(0, 0, 48, 48)", *ferplus_votes(**{column: 10})])
        write_csv(root / folder / "label.csv", None, rows + (list(extra_train_rows) if folder == "FER2013Train" else []))
    return root


def make_small_fer2013(root: Path, extra_rows: Sequence[list] = ()) -> Path:
    """fer2013.csv: Training rows of FER2013 labels 3 and 6, one PublicTest and one PrivateTest row on lines 2-5,
    then `extra_rows` from line 6."""
    face = " ".join(["7"] * 48 * 48)
    rows = [[3, face, "Training"], [6, face, "Training"], [3, face, "PublicTest"], [6, face, "PrivateTest"]]
    write_csv(root / "fer2013.csv", ["emotion", "pixels", "Usage"], rows + list(extra_rows))
    return root


def make_small_rafdb(root: Path, extra_lines: Sequence[str] = (), seed: int = 0) -> Path:
    """RAF-DB basic: aligned 24 x 24 faces, 2 train images each of RAF-DB labels 4 and 7 and a test image of each,
    then `extra_lines` in the label file."""
    rng = np.random.default_rng(seed)
    lines = [f"{split}_{i:05d}.jpg {number}" for i, (split, number) in
             enumerate([("train", 4), ("train", 4), ("train", 7), ("train", 7), ("test", 4), ("test", 7)], start=1)]
    for line in lines:
        stem = line.split()[0][: -len(".jpg")]
        save(picture(rng, SMALL_SIDE, SMALL_SIDE), root / "Image" / "aligned" / f"{stem}_aligned.jpg")
    (root / "EmoLabel").mkdir(parents=True, exist_ok=True)
    (root / "EmoLabel" / "list_patition_label.txt").write_text("\n".join(lines + list(extra_lines)) + "\n")
    return root


def png_header_only(path: Path, width: int, height: int) -> Path:
    """A PNG of a few dozen bytes whose header claims width x height RGB pixels (no pixel data follows)."""
    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    path.parent.mkdir(parents=True, exist_ok=True)
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IEND", b""))
    return path


def npy_header_only(path: Path, descr: str, shape: tuple[int, ...]) -> Path:
    """An .npy file whose header claims an array of `shape` and `descr` (e.g. 10^11 float64) but holds a few bytes."""
    buffer = io.BytesIO()
    np.lib.format.write_array_header_1_0(buffer, {"descr": descr, "fortran_order": False, "shape": shape})
    path.write_bytes(buffer.getvalue() + b"\0" * 16)
    return path
