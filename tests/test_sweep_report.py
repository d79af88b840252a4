"""Sweep summaries from plain rows (no Ray, no MLflow): best pick, tables, plots."""

from __future__ import annotations

import csv
import io
import json
import math

import pytest

from vilocal_dist.tracking.sweep_report import (
    best_per_group,
    best_row,
    columns_for,
    is_log_scale,
    normalise,
    parallel_coordinates_figure,
    sort_rows,
    to_csv,
    to_markdown,
    write_report,
)

ROWS = [
    {"trial_id": "a", "tau": 0.01, "val/f1": 0.30, "video": "v1"},
    {"trial_id": "b", "tau": 0.10, "val/f1": 0.55, "video": "v1"},
    {"trial_id": "c", "tau": 1.00, "val/f1": math.nan, "video": "v2"},
    {"trial_id": "d", "tau": 0.30, "video": "v2"},  # errored: no metric
    {"trial_id": "e", "tau": 0.05, "val/f1": 0.55, "video": "v2"},
]


def test_best_row_by_mode_skips_missing_and_nan_ties_go_first():
    assert best_row(ROWS, "val/f1", "max")["trial_id"] == "b"  # b and e tie: the earlier wins
    assert best_row(ROWS, "val/f1", "min")["trial_id"] == "a"
    assert best_row(ROWS, "loss", "min") is None
    with pytest.raises(ValueError):
        best_row(ROWS, "val/f1", "best")
    per_video = best_per_group(ROWS, "val/f1", "max", "video")
    assert {v: r["trial_id"] for v, r in per_video.items()} == {"v1": "b", "v2": "e"}


def test_sorting_and_columns():
    assert [r["trial_id"] for r in sort_rows(ROWS, "val/f1", "max")] == ["b", "e", "a", "c", "d"]
    assert [r["trial_id"] for r in sort_rows(ROWS, "val/f1", "min")] == ["a", "b", "e", "c", "d"]
    assert columns_for(ROWS, first=("video", "missing", "val/f1")) == ["video", "val/f1", "trial_id", "tau"]


def test_markdown_and_csv():
    rows = [{"trial_id": "a", "tau": 0.123456, "ok": True}, {"trial_id": "b|c", "tau": math.nan}]
    assert to_markdown(rows, ["trial_id", "tau", "ok"], digits=3) == (
        "| trial_id | tau | ok |\n|---|---|---|\n| a | 0.123 | True |\n| b\\|c | nan |  |\n"
    )
    text = to_csv(rows, ["trial_id", "tau"])
    back = list(csv.DictReader(io.StringIO(text)))
    assert back == [{"trial_id": "a", "tau": "0.123456"}, {"trial_id": "b|c", "tau": "nan"}]


def test_normalise_positions_for_parallel_axes():
    pos, labels = normalise([1.0, 10.0, 100.0], log=True)
    assert pos == pytest.approx([0.0, 0.5, 1.0]) and labels == ["1", "100"]
    pos, _ = normalise([2, 4, 3])
    assert pos == pytest.approx([0.0, 1.0, 0.5])
    assert normalise([7, 7])[0] == [0.5, 0.5]
    pos, labels = normalise(["b", "a", "b"])
    assert pos == [1.0, 0.0, 1.0] and labels == ["a", "b"]
    assert is_log_scale([0.01, 0.5]) and not is_log_scale([0.1, 0.5]) and not is_log_scale([-1.0, 100.0])


def test_parallel_coordinates_draws_one_line_per_scored_trial():
    import matplotlib.pyplot as plt

    fig = parallel_coordinates_figure(ROWS, "val/f1", ["tau"])
    ax = fig.axes[0]
    trial_lines = [line for line in ax.get_lines() if list(line.get_xdata()) == [0, 1]]  # axis rules are vertical
    assert len(trial_lines) == 3  # a, b, e (c is NaN, d has no metric)
    plt.close(fig)


def test_write_report_files(tmp_path):
    files = write_report(ROWS, tmp_path, metric="val/f1", mode="max", params=["tau"], group="video", extra_best={"base": {"x": 1}})
    assert set(files) == {"best_config.json", "results.csv", "results.md", "plots/val_f1_vs_tau.png", "plots/parallel_coordinates.png"}
    best = json.loads((tmp_path / "best_config.json").read_text())
    assert best["trial_id"] == "b" and best["config"] == {"tau": 0.1} and best["value"] == 0.55 and best["base"] == {"x": 1}
    assert best["per_video"]["v2"]["config"] == {"tau": 0.05}
    table = list(csv.DictReader(io.StringIO((tmp_path / "results.csv").read_text())))
    assert [r["trial_id"] for r in table] == ["b", "e", "a", "c", "d"]
    assert list(table[0])[:4] == ["trial_id", "video", "tau", "val/f1"]
    for name in files:
        if name.endswith(".png"):
            assert (tmp_path / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
