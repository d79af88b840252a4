"""The benchmark suite: plans, the summary table, the detection benchmark's pieces (fast), and
`vilocal bench --quick --json` end to end in a subprocess (slow)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from vilocal_dist.bench import detect, suite


def test_every_benchmark_has_a_runner_and_both_plans():
    assert set(suite.PLANS) == set(suite.RUNNERS) == set(suite.BENCHMARKS + suite.EXTRA)
    assert "scale" in suite.EXTRA and "scale" not in suite.BENCHMARKS  # an hour or more: only when named
    assert suite.PLANS["detect"].full["lengths"] == [30, 300]  # the length comparison asked for
    with pytest.raises(ValueError, match="unknown benchmark"):
        suite.run_suite(["modle"])


def test_peak_rss_is_this_processes_high_water_mark():
    before = detect.peak_rss_mib()
    block = bytearray(64 * 2**20)  # touch 64 MiB: the high-water mark must rise by about that much
    block[:: 4096] = b"x" * len(block[:: 4096])
    assert detect.peak_rss_mib() >= min(before, detect.current_rss_mib() - 64) + 60
    del block


def test_untrained_checkpoint_is_a_stage2_model_at_the_given_size(tmp_path):
    from vilocal_dist.engines.checkpoint import build_model, load_checkpoint

    ckpt = load_checkpoint(detect.make_checkpoint(tmp_path, "vilocal_tiny", (32, 48)))
    assert (ckpt["stage"], ckpt["model_name"]) == (2, "vilocal_tiny")
    assert (ckpt["train_config"]["size_h"], ckpt["train_config"]["size_w"]) == (32, 48)
    build_model(ckpt)  # the weights load into the described network


def test_summary_lines_from_a_hand_made_result():
    result = {
        "suite": {"device": "cpu", "cpu_count": 2, "load_avg_1m": 1.5, "quick": True},
        "model": {"runs": [{"preset": "vilocal_tiny", "batch": 2, "step_s": 0.1234, "vmhwm_mib": 512.4}]},
        "detect": {"runs": [{"frames": 30, "fps": 12.34, "peak_rss_mib": 600.0}]},
        "inpaint": {"runs": [{"method": "telea", "frames_per_s": 50.0, "seconds": 0.5, "peak_rss_mib": 300.0},
                             {"method": "iivi", "frames_per_s": 1.0, "iterations_per_s": 2.5, "seconds": 2.0,
                              "peak_rss_mib": 700.0}],
                    "iivi_steps": [{"preset": "tiny", "size": [64, 96], "regularizers": True, "iters_per_s": 3.21,
                                    "peak_mem_mb": 812.3}]},
        "errors": {"fanout": "RuntimeError: no Ray\ndetails"},
    }
    lines = suite.summary_lines(result)
    assert lines[0] == "device cpu, 2 CPUs, load 1.5, quick"
    assert "model    vilocal_tiny   batch 2  0.123 s/step  peak 512 MiB" in lines
    assert "detect     30 frames  12.3 frames/s  peak 600 MiB" in lines
    assert "inpaint  telea      50.0 frames/s  (0.5 s)  peak 300 MiB" in lines
    assert "inpaint  iivi       2.50 it/s  (2.0 s)  peak 700 MiB" in lines
    assert "inpaint  iivi tiny 64x96 with regularisers  3.21 it/s  peak 812 MiB" in lines
    assert lines[-1] == "ERROR    fanout: RuntimeError: no Ray"


def test_matmul_peak_and_model_flops_in_process():
    import torch

    from vilocal_dist.bench.model import matmul_peak_gflops, model_gflop

    peak = matmul_peak_gflops(torch.float32, max_size=256)
    assert peak["gflops"] > 0 and peak["size"] <= 256
    infer = model_gflop("vilocal_tiny", 1, 5, (32, 48), train=False)
    train = model_gflop("vilocal_tiny", 1, 5, (32, 48), train=True)
    assert 0 < infer and 2 * infer < train  # backward costs about twice the forward
    assert model_gflop("vilocal_tiny", 2, 5, (32, 48), train=False) == pytest.approx(2 * infer, rel=0.01)


def test_cli_rejects_unknown_benchmarks(capsys):
    from vilocal_dist.cli.main import main

    assert main(["bench", "--only", "model,gpu"]) == 2
    assert "unknown benchmark(s) ['gpu']" in capsys.readouterr().err


@pytest.mark.slow
def test_quick_suite_json(tmp_path):
    env = {**os.environ, "VILOCAL_HOME": str(tmp_path / "home")}
    env.pop("MLFLOW_TRACKING_URI", None)
    out = tmp_path / "bench.json"
    proc = subprocess.run(
        [sys.executable, "-m", "vilocal_dist.cli.main", "bench", "--quick", "--json", "--device", "cpu", "--out", str(out)],
        capture_output=True, text=True, env=env, timeout=1500,
    )
    result = json.loads(proc.stdout)
    assert result["errors"] == {}, result["errors"]
    assert proc.returncode == 0
    assert json.loads(out.read_text()) == result
    assert set(result) == {"suite", "model", "detect", "inpaint", "fanout", "decode", "errors"}
    assert result["suite"]["quick"] is True and result["suite"]["device"] == "cpu"
    assert [(r["preset"], r["batch"]) for r in result["model"]["runs"]] == [("vilocal_tiny", 1), ("vilocal_tiny", 2)]
    assert all(r["step_s"] > 0 and r["vmhwm_mib"] > 0 for r in result["model"]["runs"])
    detector = result["model"]["detector"]
    assert detector["matmul_peak_gflops"]["fp32"] > 0 and detector["matmul_peak_gflops"]["bf16"] > 0
    for kind in ("infer", "train"):
        d = detector[kind]
        assert d["size"] == [32, 48] and d["seconds"] > 0 and d["authors_seconds"] > 0
        assert d["peak_mib"] > 0 and d["authors_peak_mib"] > 0
        assert d["speedup_vs_authors"] == pytest.approx(d["authors_seconds"] / d["seconds"], rel=0.02)
        assert d["gflop"] > 0 and 0 < d["share_of_peak"] < 2
    assert detector["train"]["recompute"] == "none"  # a tiny step fits the default budget
    assert [r["frames"] for r in result["detect"]["runs"]] == [6, 18]
    assert all(r["fps"] > 0 and r["peak_rss_mib"] > r["baseline_rss_mib"] > 0 for r in result["detect"]["runs"])
    runs = {r["method"]: r for r in result["inpaint"]["runs"]}
    assert set(runs) == {"telea", "ns", "flowprop", "intervi", "iivi"}
    assert runs["iivi"]["iterations"] == 5 and runs["intervi"]["iterations"] == 6
    steps = result["inpaint"]["iivi_steps"]
    assert [(r["preset"], r["regularizers"]) for r in steps] == [("tiny", False), ("tiny", True)]
    assert all(r["iters_per_s"] > 0 for r in steps)
    assert {"ray_init_s", "trial_overhead_s", "speedup"} <= set(result["fanout"])
    assert result["decode"]["frames"] == 30 and result["decode"]["decode_fps"] > 0
