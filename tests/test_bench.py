"""`emotion-bench` smoke run: the table and the JSON a user reads, and one-line errors for bad input."""
import json

from emotion.cli import bench_main

KEYS = ("device", "backbone", "precision", "train_images_per_second", "timm_train_images_per_second", "train_ratio",
        "inference_images_per_second", "latency_ms_batch1", "loader_arrow_images_per_second",
        "loader_folder_images_per_second", "loader_arrow_ratio", "loader_folder_ratio", "peak_rss_mb",
        "cuda_max_allocated_mb", "targets", "cpu_isa", "fp32_bare_images_per_second", "fp32_end_to_end_images_per_second",
        "end_to_end_images_per_second", "end_to_end_ratio", "speedup_over_fp32", "precision_reason")


def test_bench_prints_table_and_writes_json(tmp_path, cache_dir, capsys):
    output = tmp_path / "bench.json"
    assert bench_main(["--preset", "tiny", "--batch-size", "4", "--steps", "1", "--warmup", "1", "--repeats", "1",
                       "--latency-runs", "2", "--loader-samples", "8", "--cache-dir", str(cache_dir),
                       "--output", str(output)]) == 0
    result = json.loads(output.read_text())
    for key in KEYS:
        assert key in result, key
    for key in ("train_images_per_second", "timm_train_images_per_second", "inference_images_per_second",
                "loader_arrow_images_per_second", "loader_folder_images_per_second", "peak_rss_mb"):
        assert result[key] > 0, key
    assert result["train_ratio"] == result["train_images_per_second"] / result["timm_train_images_per_second"]
    assert result["end_to_end_ratio"] == result["end_to_end_images_per_second"] / result["train_images_per_second"]
    assert result["speedup_over_fp32"] == result["end_to_end_images_per_second"] / result["fp32_end_to_end_images_per_second"]
    assert result["cpu_isa"] in ("AMX-BF16", "AVX512-BF16") or result["precision"] == "fp32"  # auto: bf16 only with native support
    assert result["backbone"] == "test_efficientnet" and result["batch_size"] == 4 and result["loader_samples"] == 8
    table = capsys.readouterr().out
    assert "| full / timm training ratio |" in table and "| inference latency ms, batch 1 (median) |" in table
    assert "loader images/s, Arrow" in table and "raw JPEG folder" in table and str(output) in table
    assert "| end-to-end training images/s, fp32 NCHW |" in table and "x the bare step" in table


def test_bench_rejects_fp16_on_cpu_and_a_missing_dataset(tmp_path, capsys):
    assert bench_main(["--precision", "fp16"]) == 2
    assert "fp16 needs a CUDA GPU" in capsys.readouterr().err
    assert bench_main(["--preset", "tiny", "--steps", "1", "--warmup", "0", "--repeats", "1", "--latency-runs", "1",
                       "--data-dir", str(tmp_path / "nothing"), "--output", str(tmp_path / "b.json")]) == 2
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and "nothing" in error and "is not a prepared dataset" in error
