from __future__ import annotations

import csv
import math

import pytest
import torch

from refedit.eval.report import (
    SUMMARY_COLUMNS,
    format_cell,
    higher_is_better,
    log_to_wandb,
    markdown_report,
    print_table,
    read_summary_csv,
    save_sample_grid,
    summarize,
    write_report,
)


def _rows():
    rows = []
    for task in ("exemplar_inpaint", "coarse_edit"):
        for method, base in (("paint_by_example", 20.0), ("sd_inpaint", 15.0)):
            for i, d in enumerate((-1.0, 0.0, 1.0)):
                rows.append({"method": method, "task": task, "sample_id": f"{task}-{i}",
                             "psnr_masked": base + d, "identity": torch.tensor(0.5 + 0.1 * d),
                             "seconds": 0.1 if method == "sd_inpaint" else 0.3, "peak_mem_mb": 100.0,
                             "mask_kind": "box"})
    return rows


def test_summarize_mean_ci_and_order():
    summary = summarize(_rows(), set_scores=[{"method": "sd_inpaint", "task": "coarse_edit", "metric": "fid",
                                              "value": 12.5, "n": 3}])
    cell = next(s for s in summary if s["method"] == "paint_by_example" and s["task"] == "exemplar_inpaint"
                and s["metric"] == "psnr_masked")
    # values 19, 20, 21: mean 20, std 1, t_{0.975,2} = 4.302653
    assert cell["mean"] == 20.0 and cell["n"] == 3
    assert cell["ci95"] == pytest.approx(4.302653 / math.sqrt(3), rel=1e-5)
    assert [s["task"] for s in summary][0] == "exemplar_inpaint"
    metrics = {s["metric"] for s in summary}
    assert metrics == {"psnr_masked", "identity", "seconds", "peak_mem_mb", "fid"}  # text columns skipped
    fid = next(s for s in summary if s["metric"] == "fid")
    assert fid["mean"] == 12.5 and math.isnan(fid["ci95"]) and fid["n"] == 3
    with pytest.raises(KeyError, match="method"):
        summarize([{"task": "x", "psnr": 1.0}])


def test_write_report_files_and_columns(tmp_path):
    grid = save_sample_grid([[torch.zeros(3, 16, 16), torch.ones(1, 16, 16), None],
                             [torch.full((3, 16, 16), -1.0), torch.zeros(3, 8, 8), torch.rand(3, 16, 16)]],
                            tmp_path / "out" / "plots" / "exemplar_inpaint_grid.png",
                            col_labels=["source", "mask", "pbe"], row_labels=["s0", "s1"])
    header = {"data": "toyworld benchmark (64 px)", "steps": 20, "seeds": [0, 1, 2],
              "budget": "3 min / method"}
    summary, paths = write_report(_rows(), tmp_path / "out", header=header, quality_metric="psnr_masked",
                                  grids={"exemplar_inpaint_grid": grid},
                                  set_scores=[{"method": "sd_inpaint", "task": "coarse_edit", "metric": "fid",
                                               "value": 12.5}])
    out = tmp_path / "out"
    with open(out / "results.csv") as f:
        reader = csv.DictReader(f)
        res = list(reader)
    assert reader.fieldnames[:3] == ["method", "task", "sample_id"]
    assert {"psnr_masked", "identity", "seconds", "peak_mem_mb", "mask_kind"} <= set(reader.fieldnames)
    assert len(res) == 12 and float(res[0]["identity"]) == pytest.approx(0.4)
    with open(out / "summary.csv") as f:
        reader = csv.DictReader(f)
        rows = list(reader)
    assert tuple(reader.fieldnames) == SUMMARY_COLUMNS and len(rows) == len(summary) == 2 * 2 * 4 + 1
    assert read_summary_csv(out / "summary.csv")[0]["mean"] == summary[0]["mean"]
    for name in ("exemplar_inpaint_bars", "coarse_edit_bars", "quality_vs_time"):
        assert paths[name].is_file() and paths[name].read_bytes()[:4] == b"\x89PNG"
    md = (out / "report.md").read_text()
    assert "## Setup" in md and "**steps**: 20" in md and "`[0, 1, 2]`" in md
    assert "## exemplar_inpaint" in md and "## coarse_edit" in md
    assert "| method | psnr_masked ↑ | identity ↑ | seconds ↓ | peak_mem_mb ↓ |" in md
    assert "| paint_by_example | **20.0 ± 2.5** |" in md  # best PSNR in bold
    assert "**0.100 ± 0.000**" in md  # the faster method is best on seconds
    assert "**0.500" not in md and "**100.0" not in md  # ties: nobody is bold
    assert "![exemplar_inpaint_grid](plots/exemplar_inpaint_grid.png)" in md
    assert md.index("exemplar_inpaint_grid.png") < md.index("## coarse_edit")  # under its task


def test_print_table_and_format():
    txt = print_table(summarize(_rows()))
    lines = txt.splitlines()
    assert lines[0] == "task: exemplar_inpaint" and "psnr_masked ↑" in lines[1]
    assert any(line.startswith("paint_by_example") and "20.0 ± 2.5" in line for line in lines)
    assert format_cell(0.81234, 0.0123) == "0.812 ± 0.012"
    assert format_cell(12.5, float("nan")) == "12.5"
    assert format_cell(float("nan"), float("nan")) == "n/a"
    assert higher_is_better("fid_probe") is False and higher_is_better("ssim_bbox") is True
    assert higher_is_better("frame_consistency") is True and higher_is_better("whatever") is None


def test_markdown_without_header():
    md = markdown_report(summarize(_rows()[:3]))
    assert md.startswith("# refedit comparison") and "## Setup" not in md and "| paint_by_example |" in md


def test_save_sample_grid_validates_labels(tmp_path):
    with pytest.raises(ValueError, match="column labels"):
        save_sample_grid([[torch.zeros(3, 8, 8)]], tmp_path / "g.png", col_labels=["a", "b"])
    with pytest.raises(ValueError, match="no images"):
        save_sample_grid([], tmp_path / "g.png")


def test_log_to_wandb_uses_the_active_run(monkeypatch, tmp_path):
    import wandb

    logged = {}

    class _Run:
        def log(self, payload):
            logged.update(payload)

    monkeypatch.setattr(wandb, "run", None)
    with pytest.raises(RuntimeError, match="active W&B run"):
        log_to_wandb(summarize(_rows()), {}, group="compare")
    monkeypatch.setattr(wandb, "run", _Run())
    png = save_sample_grid([[torch.zeros(3, 8, 8)]], tmp_path / "g.png")
    summary = summarize(_rows())
    log_to_wandb(summary, {"grid": png, "sample": torch.zeros(3, 8, 8)}, group="compare")
    table = logged["compare/summary"]
    assert isinstance(table, wandb.Table) and list(table.columns) == list(SUMMARY_COLUMNS)
    assert len(table.data) == len(summary)
    assert isinstance(logged["compare/grid"], wandb.Image)
    assert isinstance(logged["compare/sample"], wandb.Image)


def test_log_to_wandb_goes_through_a_lightning_logger_when_given(monkeypatch, tmp_path):
    import wandb

    calls = []

    class _Logger:  # WandbLogger's media API
        def log_table(self, key, columns, data):
            calls.append(("table", key, list(columns), len(data)))

        def log_image(self, key, images, caption):
            calls.append(("image", key, len(images), caption))

    monkeypatch.setattr(wandb, "run", None)  # no active run needed: the logger owns it
    png = save_sample_grid([[torch.zeros(3, 8, 8)]], tmp_path / "g.png")
    summary = summarize(_rows())
    log_to_wandb(summary, {"grid": png}, group="eval", logger=_Logger())
    assert calls == [("table", "eval/summary", list(SUMMARY_COLUMNS), len(summary)),
                     ("image", "eval/grid", 1, ["grid"])]


def test_to_uint8_image_ranges():
    from refedit.eval.report import to_uint8_image

    assert to_uint8_image(torch.full((3, 2, 2), -1.0))[0, 0].tolist() == [0, 0, 0]
    assert to_uint8_image(torch.zeros(3, 2, 2))[0, 0].tolist() == [128, 128, 128]  # [-1, 1]: 0 is mid grey
    assert to_uint8_image(torch.zeros(3, 2, 2), (0.0, 1.0))[0, 0].tolist() == [0, 0, 0]
    assert to_uint8_image(torch.ones(1, 2, 2))[0, 0].tolist() == [255, 255, 255]  # a mask
