"""Tests for the procedural synthetic-faces data set (tiny counts, 64 px, caches under tmp_path)."""
from __future__ import annotations

from collections import Counter

import cv2
import datasets
import numpy as np
import pytest

from emotion import synthetic
from emotion.labels import CLASS_NAMES, FACE_REGIONS, NUM_CLASSES
from emotion.synthetic import SPLIT_IDS, expression_regions, load_synthetic, render_face, save_preview_grid

SIZE = 64
N = 16  # two samples per class


def _pixels(ds: datasets.Dataset) -> np.ndarray:
    return np.stack([np.asarray(im.convert("RGB")) for im in ds["image"]])


@pytest.fixture(scope="module")
def dd(tmp_path_factory) -> datasets.DatasetDict:
    return load_synthetic(N, N, image_size=SIZE, seed=0, cache_dir=tmp_path_factory.mktemp("synth"))


# --- render_face / expression_regions --------------------------------------------------------
def test_render_face_shape_dtype_regions_intensity():
    for label in range(NUM_CLASSES):
        img, regions, intensity = render_face(label, np.random.default_rng([7, label]), image_size=SIZE)
        assert img.shape == (SIZE, SIZE, 3) and img.dtype == np.uint8
        assert img.std() > 10  # not a blank canvas
        assert regions == expression_regions(label)
        if CLASS_NAMES[label] == "neutral":
            assert regions == [] and intensity == 0.0
        else:
            assert 0.5 <= intensity <= 1.0


def test_expression_regions_ground_truth():
    for label, name in enumerate(CLASS_NAMES):
        regions = expression_regions(label)
        assert set(regions) <= set(FACE_REGIONS)
        assert regions == [r for r in FACE_REGIONS if r in regions]  # canonical order, no duplicates
        assert (regions == []) == (name == "neutral")
    for bad in (-1, NUM_CLASSES):
        with pytest.raises(ValueError):
            expression_regions(bad)


def test_render_face_is_deterministic_per_rng():
    a, _, ka = render_face(3, np.random.default_rng([1, 0, 5]), SIZE)
    b, _, kb = render_face(3, np.random.default_rng([1, 0, 5]), SIZE)
    c, _, _ = render_face(3, np.random.default_rng([2, 0, 5]), SIZE)
    assert np.array_equal(a, b) and ka == kb
    assert not np.array_equal(a, c)


def test_expressions_change_the_face():
    # Same identity stream, different class: the faces differ (the expression is drawn).
    imgs = [render_face(label, np.random.default_rng(11), SIZE)[0].astype(int) for label in range(NUM_CLASSES)]
    for label in range(1, NUM_CLASSES):
        assert np.abs(imgs[label] - imgs[0]).mean() > 0.5


# --- load_synthetic ----------------------------------------------------------------------------
def test_splits_features_and_ids(dd):
    assert set(dd) == {"train", "validation"}
    for split, ds in dd.items():
        assert len(ds) == N
        f = ds.features
        assert isinstance(f["image"], datasets.Image)
        assert isinstance(f["label"], datasets.ClassLabel) and f["label"].names == list(CLASS_NAMES)
        assert f["intensity"] == datasets.Value("float32")
        assert f["id"] == datasets.Value("string")
        assert ds["id"] == [f"synthetic/{split}/{i:06d}" for i in range(N)]
        img = ds[0]["image"]
        assert img.mode == "RGB" and img.size == (SIZE, SIZE)
        assert _pixels(ds).shape == (N, SIZE, SIZE, 3) and _pixels(ds).dtype == np.uint8


def test_labels_balanced_in_canonical_order(dd):
    for ds in dd.values():
        labels = ds["label"]
        assert labels == [i % NUM_CLASSES for i in range(N)]
        assert set(Counter(labels).values()) == {N // NUM_CLASSES}
        assert [ds.features["label"].int2str(i) for i in range(NUM_CLASSES)] == list(CLASS_NAMES)


def test_regions_and_intensity_per_sample(dd):
    for ds in dd.values():
        for row in ds.select_columns(["label", "regions", "intensity"]):
            assert row["regions"] == expression_regions(row["label"])
            if CLASS_NAMES[row["label"]] == "neutral":
                assert row["regions"] == [] and row["intensity"] == 0.0
            else:
                assert row["regions"] and 0.5 <= row["intensity"] <= 1.0


def test_samples_come_from_seed_split_index(dd):
    for split, ds in dd.items():
        for i in (0, 5, N - 1):
            expected, _, _ = render_face(i % NUM_CLASSES, np.random.default_rng([0, SPLIT_IDS[split], i]), SIZE)
            assert np.array_equal(np.asarray(ds[i]["image"]), expected)  # PNG is lossless


def test_train_and_validation_differ(dd):
    train, val = _pixels(dd["train"]), _pixels(dd["validation"])
    assert not any(np.array_equal(t, v) for t in train for v in val)


def test_same_seed_same_pixels_different_seed_different(dd, tmp_path):
    again = load_synthetic(N, N, image_size=SIZE, seed=0, cache_dir=tmp_path / "fresh")  # rebuilt from scratch
    other = load_synthetic(N, N, image_size=SIZE, seed=1, cache_dir=tmp_path / "fresh")
    for split in ("train", "validation"):
        assert np.array_equal(_pixels(again[split]), _pixels(dd[split]))
        assert again[split]["intensity"] == dd[split]["intensity"]
        diff = _pixels(other[split]) != _pixels(dd[split])
        assert all(diff[i].any() for i in range(N))


def test_cache_is_reused_and_keyed_by_arguments(tmp_path, monkeypatch):
    first = load_synthetic(N, 8, image_size=SIZE, seed=3, cache_dir=tmp_path)
    assert [p.name for p in tmp_path.iterdir()] == ["synthetic"]  # the same tree under --cache-dir as under the default
    keys = {p.name for p in tmp_path.iterdir()}
    assert len(keys) == 1
    assert list(tmp_path.rglob("*.arrow"))  # a real Arrow cache on disk

    def boom(*args, **kwargs):
        raise AssertionError("render_face called: the cache was not reused")

    monkeypatch.setattr(synthetic, "render_face", boom)
    second = load_synthetic(N, 8, image_size=SIZE, seed=3, cache_dir=tmp_path)
    for split in ("train", "validation"):
        assert np.array_equal(_pixels(second[split]), _pixels(first[split]))
    assert {p.name for p in tmp_path.iterdir()} == keys
    # Any other argument means other data: it must be generated (and here the generator raises).
    for kwargs in (dict(seed=4), dict(image_size=SIZE + 8), dict(num_train=N + 8)):
        args = dict(num_train=N, num_val=8, image_size=SIZE, seed=3, cache_dir=tmp_path) | kwargs
        with pytest.raises(Exception):
            load_synthetic(**args)
    monkeypatch.undo()
    calls = []
    real = synthetic.render_face

    def counting(*args, **kwargs):
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(synthetic, "render_face", counting)
    load_synthetic(N, 8, image_size=SIZE, seed=4, cache_dir=tmp_path)
    assert len(calls) == N + 8  # a different seed built a new cache, every sample generated
    load_synthetic(N, 8, image_size=SIZE, seed=4, cache_dir=tmp_path)
    assert len(calls) == N + 8  # ... which is reused in turn


def test_num_proc_does_not_change_the_data(dd, tmp_path):
    par = load_synthetic(N, N, image_size=SIZE, seed=0, cache_dir=tmp_path, num_proc=2)
    for split in ("train", "validation"):
        assert np.array_equal(_pixels(par[split]), _pixels(dd[split]))
        assert par[split]["id"] == dd[split]["id"]


def test_preview_grid(tmp_path):
    path = save_preview_grid(tmp_path / "grid.png", image_size=32, per_class=2, seed=0)
    grid = cv2.imread(str(path))
    assert grid is not None and grid.shape[0] == NUM_CLASSES * (32 + 8)
