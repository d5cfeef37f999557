"""bench/experiments.py: configuration names, tables, savings and the results writer, on made-up reports."""

from __future__ import annotations

import csv
import json

import pytest

from bench.experiments import (
    ALL_CHANNELS_CURVE,
    FEATURES_CURVE,
    RANKED_CURVE,
    RECODE_CURVES,
    VIRTUAL,
    Config,
    build_tables,
    pareto,
    plan,
    write_results,
)

JPEG = 150_000.0
SHA = "ab" * 32


def report(config: Config, ap50: float, mean_bytes: float | None) -> dict:
    r = {"mode": config.name, "images": 164, "AP": ap50 / 2, "AP50": ap50}
    if mean_bytes is not None:
        r |= {"channels": config.channels or 256, "bits": config.bits, "codec": config.codec, "qp": config.qp,
              "mean_bytes": mean_bytes, "jpeg_mean_bytes": JPEG, "saved_vs_jpeg": 1 - mean_bytes / JPEG,
              "restoration": "baf" if config.kind == "baf" else "zeros"}
        if config.kind in ("baf", VIRTUAL):
            r |= {"predictor": "p.json", "predictor_sha256": SHA, "predictor_steps": 3000,
                  "predictor_serves": {"channels": [64], "bits": [8]}}
    return r


@pytest.fixture
def reports() -> dict[str, dict]:
    out = {"baseline": report(Config("baseline"), 0.440, None)}
    for c, ap50 in zip((8, 16, 32, 64, 128), (0.20, 0.28, 0.33, 0.39, 0.425), strict=True):
        out[Config("baf", c, 8, "jxl").name] = report(Config("baf", c, 8, "jxl"), ap50, 700.0 * c)
    for n in (2, 4, 6):  # n=3, 5, 7 and every HEVC point of BaF are "not run yet"
        out[Config("baf", 64, n, "jxl").name] = report(Config("baf", 64, n, "jxl"), 0.37 + n / 500, 6000.0 * n)
    for qp, ap50 in zip((27, 37, 47), (0.440, 0.436, 0.40), strict=True):
        out[Config("all", None, 8, "hevc", qp).name] = report(Config("all", None, 8, "hevc", qp), ap50, 4e6 / qp)
    return out


def test_names_are_unique_and_cover_every_figure():
    names = [c.name for c in plan()]
    assert len(names) == len(set(names)) and names[0] == "baseline"
    assert {"baf_c64_n8_jxl", "baf_c64_n6_hevc_qp27", "all_n8_hevc_qp51", "baf_c8_n8_jxl"} <= set(names)


def test_savings_take_the_fewest_bytes_within_the_loss_or_say_not_reached(reports):
    savings = {(r["method"], r["max_loss_points"]): r for r in build_tables(reports)["savings"]}
    one = savings["BaF (any C, n, codec)", 1.0]
    assert not one["reached"] and one["smallest_loss_points"] == pytest.approx(1.5)
    two = savings["BaF (any C, n, codec)", 2.0]
    assert two["reached"] and two["config"] == "baf_c128_n8_jxl" and two["mean_bytes"] == 700.0 * 128
    hevc = savings["all channels, HEVC [4]", 1.0]
    assert hevc["config"] == "all_n8_hevc_qp37" and hevc["loss_points"] == pytest.approx(0.4)


def test_writer_writes_tables_that_agree_with_the_reports(reports, tmp_path):
    tables = build_tables(reports)
    assert "baf_c64_n3_jxl" in tables["missing"] and "baf_c64_n8_jxl" not in tables["missing"]
    write_results(tmp_path, tables, plots=False)
    fig3 = json.loads((tmp_path / "fig3.json").read_text())
    assert [p["channels"] for p in fig3["points"]] == [8, 16, 32, 64, 128]
    assert fig3["predictor"] == {"predictor": "p.json", "predictor_sha256": SHA, "predictor_steps": 3000}
    assert fig3["unsplit"] == {"AP": 0.22, "AP50": 0.44}
    fig4 = json.loads((tmp_path / "fig4.json").read_text())["curves"]
    assert [p["bits"] for p in fig4["BaF C=64, n=2..8, lossless JPEG XL"]] == [2, 4, 6, 8]
    assert len(fig4[ALL_CHANNELS_CURVE]) == 3
    with (tmp_path / "fig4.csv").open() as f:
        assert sum(1 for _ in csv.DictReader(f)) == sum(len(v) for v in fig4.values())
    bd = json.loads((tmp_path / "bd_rate.json").read_text())["bd_rate"]
    assert bd["BaF C=64, n=6, HEVC"]["note"] == "fewer than 2 points"
    summary = (tmp_path / "summary.md").read_text()
    assert "not reached" in summary and "Not run yet:" in summary
    comparison = json.loads((tmp_path / "one_for_all_vs_dedicated.json").read_text())["rows"]
    assert comparison[0]["sha256"] == SHA and comparison[0]["steps"] == 3000


def test_plots_are_written(reports, tmp_path):
    written = write_results(tmp_path, build_tables(reports))
    for name in ("fig3.png", "fig4.png", "frontier.png"):
        assert tmp_path / name in written and (tmp_path / name).read_bytes()[:4] == b"\x89PNG"


def test_pareto_keeps_only_points_no_cheaper_point_beats():
    pts = [{"config": k, "mean_bytes": b, "AP50": a} for k, b, a in
           (("a", 10, 0.30), ("b", 20, 0.25), ("c", 30, 0.40), ("d", 30, 0.35), ("e", 40, 0.40))]
    assert [p["config"] for p in pareto(pts)] == ["a", "c"]


def add_jpeg_recodes(reports: dict[str, dict]) -> None:
    """Three made-up reports of the image recoded as JPEG (q 20, 50, 90)."""
    for q, ap50, size in ((20, 0.41, 12_000.0), (50, 0.425, 22_000.0), (90, 0.437, 60_000.0)):
        config = Config("recode", codec="jpeg", quality=q)
        reports[config.name] = {"mode": f"recode jpeg q={q}", "images": 164, "AP": ap50 / 2, "AP50": ap50,
                                "recode": "jpeg", "quality": q, "qp": None, "mean_bytes": size,
                                "jpeg_mean_bytes": JPEG, "saved_vs_jpeg": 1 - size / JPEG}


def test_frontier_compares_features_with_recoded_images(reports, tmp_path):
    add_jpeg_recodes(reports)
    front = build_tables(reports)["frontier"]
    within = {(r["method"], r["max_loss_points"]): r for r in front["within"]}
    jpeg = RECODE_CURVES["jpeg"]
    assert within[jpeg, 1.0]["config"] == "recode jpeg q=90"  # q=50 loses 1.5 points
    assert within[jpeg, 2.0]["config"] == "recode jpeg q=50"
    assert within[FEATURES_CURVE, 2.0]["config"] == "baf_c128_n8_jxl"
    assert within[FEATURES_CURVE, 1.0]["config"] == "all_n8_hevc_qp37"
    assert [p["config"] for p in front["front"]][:2] == ["baf_c8_n8_jxl", "baf_c16_n8_jxl"]
    assert front["bd_rate"][jpeg]["bd_rate"] > 0  # these made-up features need more bytes than JPEG
    assert front["bd_rate"][RECODE_CURVES["hevc"]]["bd_rate"] is None  # no HEVC points
    write_results(tmp_path, build_tables(reports), plots=False)
    with (tmp_path / "frontier.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == len(front["features"]) + 3 and {r["method"] for r in rows} == {"features", jpeg}
    assert "image recoded as JPEG" in (tmp_path / "summary.md").read_text()


def test_virtual_configurations_join_the_front_and_the_ranked_front_is_kept_apart(reports, tmp_path):
    add_jpeg_recodes(reports)
    for c, ap50 in ((16, 0.30), (32, 0.38), (64, 0.425)):  # cheaper than the ranked channels at each AP50
        config = Config(VIRTUAL, c, 3, "jxl")
        reports[config.name] = report(config, ap50, 300.0 * c)
    assert "virtual_c32_n3_jxl" in [c.name for c in plan()]
    tables = build_tables(reports)
    front = tables["frontier"]
    on_front = [p["config"] for p in front["front"]]
    assert {"virtual_c16_n3_jxl", "virtual_c64_n3_jxl"} <= set(on_front)
    assert not any(p["config"].startswith("virtual_") for p in front["ranked_only_front"])
    jpeg = RECODE_CURVES["jpeg"]
    assert front["bd_rate_ranked_only"][jpeg]["curve"] == RANKED_CURVE
    assert front["bd_rate"][jpeg]["bd_rate"] < front["bd_rate_ranked_only"][jpeg]["bd_rate"]
    savings = {(r["method"], r["max_loss_points"]): r for r in tables["savings"]}
    assert savings["virtual channels (residual-pca, lossless)", 2.0]["config"] == "virtual_c64_n3_jxl"
    write_results(tmp_path, tables)
    assert RANKED_CURVE in (tmp_path / "summary.md").read_text()
