"""ONNX export with its parity check, the model card in every best_model/ and export, and the Hub push (offline)."""
import json
import shutil
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from huggingface_hub import HfApi, ModelCard

from emotion import export
from emotion.cli import export_main, push_main
from emotion.config import PRESETS, TrainConfig
from emotion.faces import OnnxRunner
from emotion.labels import CLASS_NAMES
from emotion.model import build_model, load_model

FIXTURE_MODEL = Path(__file__).parent / "fixtures" / "cpu_model"


def test_export_writes_onnx_config_metrics_and_card(tiny_onnx):
    assert sorted(p.name for p in tiny_onnx.iterdir()) == ["README.md", "config.json", "metrics.json", "model.onnx"]
    config = json.loads((tiny_onnx / "config.json").read_text())
    assert config["class_names"] == list(CLASS_NAMES) and len(config["mean"]) == 3 and len(config["std"]) == 3
    graph = onnx.load(str(tiny_onnx / "model.onnx")).graph
    assert [o.name for o in graph.output] == ["logits", "attention"]
    assert graph.input[0].type.tensor_type.shape.dim[0].dim_param  # a named (dynamic) batch axis, not a number


def test_onnxruntime_matches_pytorch_at_a_new_batch_size(tiny_run, tiny_onnx):
    model = load_model(tiny_run / "best_model").eval()
    runner = OnnxRunner(tiny_onnx / "model.onnx")
    gaps = export.parity_gap(model, runner, batches=(5,), seed=7)
    assert max(gaps.values()) <= 1e-4
    probabilities, attention = runner(np.zeros((5, 3, model.image_size, model.image_size), np.float32))
    assert probabilities.shape == (5, 8) and np.allclose(probabilities.sum(axis=1), 1.0, atol=1e-5)
    assert np.allclose(attention.sum(axis=(1, 2)), 1.0, atol=1e-5)


def test_parity_failure_names_the_gap_and_writes_nothing(tiny_onnx, tmp_path, monkeypatch, capsys):
    # Another model's weights behind the tiny run's graph: a real mismatch for the real check to catch.
    other = tmp_path / "other"
    build_model(TrainConfig(**{**PRESETS["tiny"], "seed": 1})).save_pretrained(other)
    monkeypatch.setattr(export, "_export_graph", lambda model, path, opset: shutil.copy(tiny_onnx / "model.onnx", path))
    assert export_main(["--model", str(other)]) == 2
    message = capsys.readouterr().err.strip()
    assert message.startswith("error: ONNX Runtime and PyTorch disagree") and "max |diff|" in message and "> 1e-04" in message
    assert "\n" not in message
    assert not (other / "model.onnx").exists() and not list(other.glob(".tmp-onnx-*"))


def test_export_of_a_folder_that_is_not_a_model_is_one_line(tmp_path, capsys):
    assert export_main(["--model", str(tmp_path)]) == 2
    assert "is not a saved model" in capsys.readouterr().err


def test_best_model_carries_a_hub_model_card(tiny_run):
    best = tiny_run / "best_model"
    metrics = json.loads((best / "metrics.json").read_text())
    card = ModelCard.load(best / "README.md")
    data = card.data.to_dict()
    assert data["license"] == "apache-2.0" and data["library_name"] == "emotion"
    assert "facial-expression-recognition" in data["tags"] and data["datasets"]
    results = {m["type"]: m["value"] for m in data["model-index"][0]["results"][0]["metrics"]}
    assert results["accuracy"] == pytest.approx(metrics["val_accuracy"], abs=1e-4)
    assert "train_accelerate.py --preset tiny --epochs 2" in card.text
    assert f"| accuracy | {100 * metrics['val_accuracy']:.2f}% |" in card.text
    assert f"{100 * metrics['val_accuracy'] - metrics['baseline_accuracy']:+.2f} points" in card.text
    order = [card.text.index(f"{i}. {name}") for i, name in enumerate(CLASS_NAMES)]
    assert order == sorted(order)
    for phrase in ("not of emotions", "hiring", "surveillance", "Intended use"):
        assert phrase in card.text


def test_export_card_keeps_the_training_command_and_adds_the_export(tiny_onnx):
    card = ModelCard.load(tiny_onnx / "README.md")
    assert "train_accelerate.py --preset tiny --epochs 2" in card.text
    assert "emotion-export --model" in card.text and "onnx" in card.data.to_dict()["tags"]
    assert "max |diff|" in card.text


def test_push_uploads_the_model_files_and_nothing_else(tiny_onnx, tmp_path, monkeypatch, capsys):
    folder = shutil.copytree(tiny_onnx, tmp_path / "export")
    (folder / "notes.txt").write_text("scratch")
    calls = {}
    monkeypatch.setattr(HfApi, "create_repo", lambda self, repo_id, **kw: calls.setdefault("create", (repo_id, kw)))
    monkeypatch.setattr(HfApi, "upload_folder", lambda self, **kw: calls.setdefault("upload", kw) and "https://hub/commit/1")
    assert push_main(["--model", str(folder), "--repo-id", "someone/emotion-tiny"]) == 0
    assert calls["create"][0] == "someone/emotion-tiny"
    upload = calls["upload"]
    assert upload["repo_id"] == "someone/emotion-tiny" and upload["folder_path"] == str(folder)
    assert upload["allow_patterns"] == ["README.md", "config.json", "metrics.json", "model.onnx"]
    assert "someone/emotion-tiny" in capsys.readouterr().out


def test_push_after_a_kill_mid_replacement_uploads_the_kept_previous_model(tmp_path, monkeypatch):
    previous = shutil.copytree(FIXTURE_MODEL, tmp_path / "best_model.previous")  # best_model/ itself is gone
    calls = {}
    monkeypatch.setattr(HfApi, "create_repo", lambda self, repo_id, **kw: None)
    monkeypatch.setattr(HfApi, "upload_folder", lambda self, **kw: calls.setdefault("upload", kw) and "https://hub/commit/1")
    assert push_main(["--model", str(tmp_path / "best_model"), "--repo-id", "someone/emotion-cpu"]) == 0
    assert calls["upload"]["folder_path"] == str(previous)
    assert {"config.json", "model.safetensors", "README.md"} <= set(calls["upload"]["allow_patterns"])
