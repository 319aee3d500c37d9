"""FER+ (Barsoum et al. 2016): FER2013Train/, FER2013Valid/, FER2013Test/, each 48 x 48 grey PNGs and a label.csv.

label.csv has no header; each line is `fer0000000.png,"(x, y, w, h)",<10 vote counts>` with the votes in FER+
order: neutral, happiness, surprise, sadness, anger, disgust, fear, contempt, unknown, NF (not a face). The eight
emotion columns are mapped to the canonical classes by name; the face box always covers the whole 48 x 48 image
and is not used.

Label modes (`--label-mode`):
- majority (the usual "FER+ accuracy"): the label is the column with the most votes among all ten; a face whose
  top vote is unknown or NF is excluded (`unknown`, `not_a_face`), and so is a tie for the top vote
  (`no_majority`). No soft_label column: majority caches stay lean.
- soft: the train split keeps every face whose top vote (all ten columns, first on ties, so an emotion tied with
  unknown / NF wins) is an emotion; soft_label = the eight emotion votes over their sum in canonical order and the
  label is its argmax (first canonical class on ties). Validation and test keep the majority protocol, so their
  accuracy is the usual one, and carry the soft_label column too.
"""
from __future__ import annotations

from pathlib import Path

from emotion.data.prepare import Issues, Record, Source, csv_rows, inside_check
from emotion.errors import EmotionError
from emotion.labels import NUM_CLASSES, canonical_label

SPLIT_FOLDERS = {"train": "FER2013Train", "validation": "FER2013Valid", "test": "FER2013Test"}
LABEL_FILE = "label.csv"
# The ten vote columns of label.csv, in the file's order; the first eight are emotions (names, not indices, map them).
VOTE_COLUMNS = ("neutral", "happiness", "surprise", "sadness", "anger", "disgust", "fear", "contempt", "unknown", "NF")
NON_EMOTION = {"unknown": "unknown", "NF": "not_a_face"}  # column -> exclusion reason
EMOTION_COLUMNS = VOTE_COLUMNS[: len(VOTE_COLUMNS) - len(NON_EMOTION)]
# Position in the canonical order of each emotion column, found by name.
CANONICAL = tuple(canonical_label(name) for name in EMOTION_COLUMNS)
assert sorted(CANONICAL) == list(range(NUM_CLASSES)), "every canonical class must have exactly one FER+ column"
LAYOUT = ("DIR/{FER2013Train,FER2013Valid,FER2013Test}/ each with fer<7 digits>.png and a header-less label.csv "
          "(filename,\"(x, y, w, h)\",neutral,happiness,surprise,sadness,anger,disgust,fear,contempt,unknown,NF)")


def canonical_votes(votes: list[int]) -> list[int]:
    """The eight emotion votes of a FER+ row (file order) rearranged into the canonical class order."""
    out = [0] * NUM_CLASSES
    for column, label in enumerate(CANONICAL):
        out[label] = votes[column]
    return out


def majority(votes: list[int]) -> tuple[int | None, str | None]:
    """(canonical label, None) for a face with a single top vote on an emotion, else (None, exclusion reason)."""
    if sum(votes) == 0:
        return None, "no_votes"
    top = max(votes)
    winners = [i for i, v in enumerate(votes) if v == top]
    if len(winners) > 1:
        return None, "no_majority"
    column = VOTE_COLUMNS[winners[0]]
    if column in NON_EMOTION:
        return None, NON_EMOTION[column]
    return CANONICAL[winners[0]], None


def soft_target(votes: list[int]) -> list[float] | None:
    """The eight emotion votes over their sum, in canonical order; None when no annotator chose an emotion."""
    emotion = canonical_votes(votes)
    total = sum(emotion)
    return [v / total for v in emotion] if total > 0 else None


def soft_train(votes: list[int]) -> tuple[int | None, list[float] | None, str | None]:
    """Soft protocol for training: (label, soft_label, None) or (None, None, exclusion reason)."""
    soft = soft_target(votes)
    if soft is None:
        return None, None, "no_votes" if sum(votes) == 0 else NON_EMOTION[VOTE_COLUMNS[_argmax(votes)]]
    top = _argmax(votes)  # over all ten in file order, first on ties: an emotion tied with unknown / NF wins
    if VOTE_COLUMNS[top] in NON_EMOTION:
        return None, None, NON_EMOTION[VOTE_COLUMNS[top]]
    return _argmax(soft), soft, None


def _argmax(values) -> int:
    return max(range(len(values)), key=lambda i: (values[i], -i))


def read_split(folder: Path, split: str, label_mode: str, skipped: Issues, excluded: Issues) -> list[Record]:
    label_file = folder / LABEL_FILE
    if not label_file.is_file():
        raise EmotionError(f"no {LABEL_FILE} in {folder}: expected the FER+ layout {LAYOUT}")
    rows = list(csv_rows(label_file))
    inside = inside_check(folder.parent, folder)  # the data root, and the split folder even when it is a symlink
    records = []
    for line, row in enumerate(rows, start=1):
        example = f"{label_file}:{line}"
        if not row or (len(row) == 1 and not row[0].strip()):
            continue  # blank line
        if len(row) != 2 + len(VOTE_COLUMNS) or not row[0].strip():
            skipped.add("bad_row", example)
            continue
        try:
            votes = [int(v.strip()) for v in row[2:]]
        except ValueError:
            skipped.add("bad_row", example)
            continue
        if any(v < 0 for v in votes):
            skipped.add("bad_row", example)
            continue
        name = row[0].strip()
        path = folder / name
        if not inside(path):
            skipped.add("outside_data_dir", example)
            continue
        if label_mode == "soft" and split == "train":
            label, soft, reason = soft_train(votes)
        else:
            label, reason = majority(votes)
            soft = soft_target(votes) if label_mode == "soft" and reason is None else None
        if reason is not None:
            excluded.add(reason, str(path))
            continue
        records.append(Record(path=str(path), label=label, id=f"{folder.name}/{name}", soft_label=soft))
    return records


def read_ferplus(config) -> Source:
    root = Path(config.data_dir).expanduser()
    if not root.is_dir():
        raise EmotionError(f"--data-dir {root} is not a folder: expected the FER+ layout {LAYOUT}")
    label_mode = config.label_mode  # checked by emotion.config.validate
    source = Source(dataset="ferplus", root=root, splits={}, options={"label_mode": label_mode})
    for split, name in SPLIT_FOLDERS.items():
        folder = root / name
        if not folder.is_dir():
            raise EmotionError(f"no {name}/ folder in {root}: expected the FER+ layout {LAYOUT}")
        source.stat_files.append(folder / LABEL_FILE)
        source.splits[split] = read_split(folder, split, label_mode, source.skipped[split], source.excluded[split])
    if not source.splits["train"]:
        raise EmotionError(f"no usable row in {root / SPLIT_FOLDERS['train'] / LABEL_FILE}: expected the FER+ layout {LAYOUT}")
    return source
