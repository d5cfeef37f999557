"""The paper's experiments (section 4) on yolov3-tiny layer 8 over val164, written to results/.

Every configuration is one evaluation through the real bitstream path (`baf.roundtrip`: edge encoder ->
`.baf` bytes -> cloud decoder -> restoration -> cloud half), cached as results/evals/NAME.json; a rerun
skips the configurations already there for the same predictor weights (sha256) and images (--force redoes
them). After each configuration the tables and plots are rebuilt from the cache:

- fig3.{json,csv,png}: AP and AP50 vs C in {8,...,128} at n=8 (lossless jxl), with the unsplit model.
- fig4.{json,csv,png}: AP50 vs mean bytes per image at C=64: n=2..8 lossless jxl, HEVC on the 6- and
  8-bit tensors at QP 22..37, all P channels at 8 bits with HEVC (the paper's comparison [4]), the JPEG input.
- bd_rate.json: Bjøntegaard delta rate (log rate against AP50, piecewise cubic Hermite over each curve's
  front) of each curve against all-channels HEVC.
- savings.json: the fewest bytes within 1 and 2 AP50 points of the unsplit model, vs the source JPEGs.
- one_for_all_vs_dedicated.json: the predictor and each --compare checkpoint at C=64 n=8.
- frontier.{json,csv,png} (issue 9): AP50 vs mean bytes of every feature configuration (C 32-128, n 2-8,
  lossless JPEG XL or HEVC; and C 8-128 of the packaged residual-pca ranking, whose sent channels are virtual:
  fixed directions over all P, restored by its own linear checkpoint) and of what a user would send instead,
  evaluated with the unsplit model: the image scaled to 512 and recoded as JPEG (quality sweep) or HEVC intra
  (QP sweep). For AP50 losses of at most 1, 2 and 3 points, the fewest bytes and the configuration; BD-rate
  of the feature Pareto front against each, and of the front of the paper's ranked channels alone.
- summary.md: the same as markdown tables.

The predictor checkpoint is copied to runs/experiments/predictor/ first, so a training run republishing it
cannot change the weights halfway; every result records the sha256 and training steps it used.
Run: `make experiments` or `python bench/experiments.py --data DIR [--compare CKPT ...] [--force] [--only TEXT]`.
The main predictor is the shipped linear one-for-all checkpoint; pass others with --compare. The virtual
configurations use the packaged residual-pca ranking and the packaged checkpoint made for it (--virtual-ranking,
--virtual-predictor).
"""

from __future__ import annotations

import argparse
import csv
import json
import logging
import shutil
import sys
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from baf.digest import sha256_file
from baf.errors import CheckpointError
from baf.predictor import read_sidecar, trained_steps
from baf.rate import bd_rate, pareto_front

log = logging.getLogger("experiments")

REPO = Path(__file__).resolve().parents[1]
MODEL = "yolov3-tiny"
FIG3_CHANNELS = (8, 16, 32, 64, 128)
FIG4_CHANNELS = 64
BAF_QPS = (22, 27, 32, 37)
ALL_CHANNELS_QPS = (22, 27, 32, 37, 42, 47, 51)
LOSS_POINTS = (1.0, 2.0)
PREDICTOR_KEYS = ("predictor", "predictor_sha256", "predictor_steps")
ALL_CHANNELS_CURVE = "all channels, n=8, HEVC [4]"
FRONTIER_LOSS_POINTS = (1.0, 2.0, 3.0)
JPEG_QUALITIES = (10, 20, 35, 50, 75, 90)
RECODE_HEVC_QPS = (27, 32, 37, 42, 47)
FEATURES_CURVE = "features (Pareto front of every C, n, codec)"
RANKED_CURVE = "ranked channels only (the paper's sequence)"
VIRTUAL = "virtual"  # the `kind`, and the predictor key, of the residual-pca configurations
VIRTUAL_RANKING = "residual-pca"  # the packaged ranking's name (baf/rankings/MODEL_lLAYER_residual-pca.json)
RECODE_CURVES = {"jpeg": "image recoded as JPEG", "hevc": "image recoded as HEVC intra"}


@dataclass(frozen=True)
class Config:
    """One evaluation: `kind` is baseline (unsplit), baf (C channels restored by a predictor), virtual (the first C
    rows of the residual-pca sequence, restored by its checkpoint), all (P channels) or recode (the image itself,
    scaled to the model size and coded with `codec` jpeg at `quality` or hevc at `qp`).

    `predictor` names a --compare checkpoint; None means the main predictor.
    """

    kind: str
    channels: int | None = None
    bits: int | None = None
    codec: str | None = None
    qp: int | None = None
    predictor: Path | None = None
    quality: int | None = None

    @property
    def name(self) -> str:
        """The cache file's stem, e.g. baf_c64_n6_hevc_qp27 or recode_jpeg_q50."""
        if self.kind == "baseline":
            return "baseline"
        if self.kind == "recode":
            return f"recode_{self.codec}_" + (f"q{self.quality}" if self.codec == "jpeg" else f"qp{self.qp}")
        parts = [self.kind] + ([] if self.kind == "all" else [f"c{self.channels}"])
        parts += [f"n{self.bits}", str(self.codec)] + ([] if self.qp is None else [f"qp{self.qp}"])
        if self.predictor is not None:
            parts = ["compare", self.predictor.with_suffix("").name, *parts[1:]]
        return "_".join(parts)


def plan(compare: Sequence[Path] = ()) -> list[Config]:
    """Every configuration, most informative first, so that a run cut short still covers each figure coarsely."""
    c64 = FIG4_CHANNELS
    configs = [Config("baseline"), Config("baf", c64, 8, "jxl")]
    configs += [Config("baf", c, 8, "jxl") for c in (128, 32)]
    configs += [Config("baf", c64, n, "jxl") for n in (4, 2)]
    configs += [Config("all", None, 8, "hevc", qp) for qp in (37, 47, 51)]
    configs += [Config("baf", c64, 8, "jxl", predictor=p) for p in compare]
    configs += [Config("baf", c64, 6, "hevc", qp) for qp in (27, 37)]
    configs += [Config("baf", c, 8, "jxl") for c in (16, 8)]
    configs += [Config("baf", c64, 8, "hevc", qp) for qp in (27, 37)]
    configs += [Config("baf", c64, 6, "jxl")] + [Config("all", None, 8, "hevc", qp) for qp in (27, 42)]
    configs += [Config("baf", c64, n, "jxl") for n in (3, 5, 7)]
    configs += [Config("all", None, 8, "hevc", qp) for qp in (22, 32)]
    configs += [Config("baf", c64, n, "hevc", qp) for n in (6, 8) for qp in (22, 32)]
    return configs + frontier_plan() + virtual_plan()


def frontier_plan() -> list[Config]:
    """The image-recoding baselines and the feature configurations the frontier adds to the paper's set."""
    configs = [Config("recode", codec="jpeg", quality=q) for q in JPEG_QUALITIES]
    configs += [Config("recode", codec="hevc", qp=qp) for qp in RECODE_HEVC_QPS]
    configs += [Config("baf", 128, n, "jxl") for n in (4, 2, 6, 3)]
    configs += [Config("baf", 128, 8, "hevc", qp) for qp in (32, 37, 42, 47)]
    configs += [Config("baf", 128, 6, "hevc", qp) for qp in (37, 39, 40, 42)]
    configs += [Config("baf", 64, 8, "hevc", qp) for qp in (42, 47)]
    configs += [Config("baf", 32, n, "jxl") for n in (4, 2)] + [Config("baf", 32, 8, "hevc", 37)]
    return configs


def virtual_plan() -> list[Config]:
    """The residual-pca ranking's configurations, lossless JPEG XL (under HEVC they gained nothing in
    bench/virtual_channels.py); n <= 3 use the checkpoint's n-bit fits."""
    configs = [Config(VIRTUAL, c, n, "jxl") for c, n in ((32, 3), (64, 3), (16, 3), (64, 8), (32, 4), (64, 4))]
    configs += [Config(VIRTUAL, c, n, "jxl") for c, n in ((16, 4), (8, 4), (32, 2), (64, 2), (128, 3), (8, 3))]
    configs += [Config(VIRTUAL, 128, 2, "jxl")]
    return configs


def snapshot_checkpoint(path: Path, folder: Path, tries: int = 3) -> Path:
    """Copy a checkpoint (sidecar, then weights) into `folder` and check the copy's sha256 against the sidecar.

    A training run may replace the files between the two copies; then it copies again.
    """
    folder.mkdir(parents=True, exist_ok=True)
    side, weights = path.with_suffix(".json"), read_sidecar(path)[1]
    if side.resolve().parent == folder.resolve():  # already a snapshot (e.g. --no-run on an earlier run's copy)
        return side
    for _ in range(tries):
        shutil.copyfile(side, folder / side.name)
        shutil.copyfile(weights, folder / weights.name)
        if sha256_file(folder / weights.name) == read_sidecar(folder / side.name)[0].get("sha256"):
            return folder / side.name
        time.sleep(1)
    raise CheckpointError(f"{path}: weights kept changing while being copied")


def load_cached(folder: Path, config: Config, images: int,
                sha256: dict[Path | str | None, str]) -> dict[str, Any] | None:
    """The cached report of `config` if it was made on `images` images with the same predictor weights."""
    path = folder / f"{config.name}.json"
    if not path.is_file():
        return None
    report = json.loads(path.read_text())
    if report.get("images") != images:
        return None
    key = VIRTUAL if config.kind == VIRTUAL else config.predictor
    if config.kind in ("baf", VIRTUAL) and report.get("predictor_sha256") != sha256[key]:
        return None
    return report


def run_config(config: Config, context: dict[str, Any]) -> dict[str, Any]:
    """Evaluate one configuration and return its JSON report."""
    from baf.evaluate import evaluate
    from baf.roundtrip import evaluate_bitstream

    split, dataset, spec = context["split"], context["dataset"], context["spec"]
    if config.kind == "baseline":
        return evaluate(split.model, dataset, spec.category_ids, progress=False).to_json()
    if config.kind == "recode":
        from baf.recode import Recoder, evaluate_recoded

        recoder = Recoder(str(config.codec), quality=config.quality, qp=config.qp)
        return evaluate_recoded(split.model, dataset, spec.category_ids, recoder, progress=False).to_json()
    key = VIRTUAL if config.kind == VIRTUAL else config.predictor
    predictor = context["predictors"][key] if config.kind in ("baf", VIRTUAL) else None
    channels = split.channels if config.kind == "all" else config.channels
    result = evaluate_bitstream(
        split, context["rankings"][config.kind == VIRTUAL], dataset, spec.category_ids, channels=channels,
        bits=config.bits, codec=config.codec, qp=config.qp, predictor=predictor,
        predictor_path=context["predictor_paths"][key] if predictor is not None else None,
        mode=config.name, progress=False,
    )  # fmt: skip
    return result.to_json()


def _point(report: dict[str, Any]) -> dict[str, Any]:
    """The fields a table row needs from one report."""
    keys = ("channels", "bits", "codec", "qp", "mean_bytes", "saved_vs_jpeg", "AP", "AP50")
    return {"config": report["mode"], **{k: report.get(k) for k in keys}}


def build_tables(reports: dict[str, dict[str, Any]], compare: Sequence[Path] = ()) -> dict[str, Any]:
    """Fig. 3 and Fig. 4 data, BD-rates, savings and the checkpoint comparison from the reports at hand (by name).

    Missing configurations are listed under "missing"; the tables hold what is there.
    """
    base = reports.get("baseline")
    main = next((r for r in reports.values() if r.get("predictor") and r["mode"].startswith("baf_")), None)
    jpeg = next((r["jpeg_mean_bytes"] for r in reports.values() if "jpeg_mean_bytes" in r), None)
    tables: dict[str, Any] = {
        "model": MODEL,
        "split_layer": 8,
        "images": None if base is None else base["images"],
        "unsplit": None if base is None else {"AP": base["AP"], "AP50": base["AP50"]},
        "jpeg_mean_bytes": jpeg,
        "predictor": None if main is None else {k: main[k] for k in PREDICTOR_KEYS},
        "missing": [c.name for c in plan(compare) if c.name not in reports],
    }
    tables["fig3"] = [_point(reports[c.name]) for c in (Config("baf", ch, 8, "jxl") for ch in FIG3_CHANNELS)
                      if c.name in reports]
    curves: dict[str, list[Config]] = {
        f"BaF C={FIG4_CHANNELS}, n=2..8, lossless JPEG XL": [
            Config("baf", FIG4_CHANNELS, n, "jxl") for n in range(2, 9)
        ],
        **{f"BaF C={FIG4_CHANNELS}, n={n}, HEVC": [Config("baf", FIG4_CHANNELS, n, "hevc", qp) for qp in BAF_QPS]
           for n in (6, 8)},
        ALL_CHANNELS_CURVE: [Config("all", None, 8, "hevc", qp) for qp in ALL_CHANNELS_QPS],
    }
    tables["fig4"] = {label: [_point(reports[c.name]) for c in configs if c.name in reports]
                      for label, configs in curves.items()}
    reference = [(p["mean_bytes"], p["AP50"]) for p in tables["fig4"][ALL_CHANNELS_CURVE]]
    tables["bd_rate"] = {}
    for label, points in tables["fig4"].items():
        if label == ALL_CHANNELS_CURVE:
            continue
        usable = len(points) >= 2 and len(reference) >= 2
        value = bd_rate(reference, [(p["mean_bytes"], p["AP50"]) for p in points]) if usable else None
        why = None if value is not None else "fewer than 2 points" if not usable else "no common AP50 range"
        kept = len(pareto(points))
        if value is not None and kept < len(points):
            why = f"{len(points) - kept} of {len(points)} points add bytes but no AP50 and are left out of the fit"
        tables["bd_rate"][label] = {"vs": ALL_CHANNELS_CURVE, "bd_rate": value, "note": why,
                                    "points": len(points), "reference_points": len(reference)}
    tables["savings"] = savings(reports, base)
    tables["comparison"] = comparison(reports, compare)
    tables["frontier"] = frontier(reports, base)
    return tables


def pareto(points: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """The points no other point beats with fewer (or equal) bytes and a higher AP50, by bytes."""
    return pareto_front(points, rate=lambda p: p["mean_bytes"], quality=lambda p: p["AP50"])


def frontier(reports: dict[str, dict[str, Any]], base: dict[str, Any] | None) -> dict[str, Any]:
    """Every feature and recoding point, the fewest bytes within 1/2/3 AP50 points, BD-rates of the feature front."""
    feature = [_point(r) for r in reports.values() if r.get("mean_bytes") is not None
               and r["mode"].startswith(("baf_", "all_", VIRTUAL + "_"))]
    recoded = {coder: sorted((_recode_point(r) for r in reports.values() if r.get("recode") == coder),
                             key=lambda p: p["mean_bytes"]) for coder in RECODE_CURVES}
    front = pareto(feature)
    methods = {FEATURES_CURVE: feature, **{RECODE_CURVES[c]: pts for c, pts in recoded.items()}}
    within: list[dict[str, Any]] = []
    for method, points in methods.items():
        for loss in FRONTIER_LOSS_POINTS:
            row: dict[str, Any] = {"method": method, "max_loss_points": loss}
            ok = [p for p in points if base is not None and 100 * (base["AP50"] - p["AP50"]) <= loss]
            if ok:
                best = min(ok, key=lambda p: p["mean_bytes"])
                row.update(reached=True, **best, loss_points=100 * (base["AP50"] - best["AP50"]))
            else:
                row.update(reached=False)
            within.append(row)
    ranked_front = pareto([p for p in feature if not p["config"].startswith(VIRTUAL + "_")])
    bd = {curve: bd_rates(points, curve, recoded) for curve, points in ((FEATURES_CURVE, front),
                                                                       (RANKED_CURVE, ranked_front))}
    return {"unsplit_AP50": None if base is None else base["AP50"], "features": feature, "front": front,
            "recoded": recoded, "within": within, "bd_rate": bd[FEATURES_CURVE],
            "ranked_only_front": ranked_front, "bd_rate_ranked_only": bd[RANKED_CURVE]}


def bd_rates(front: list[dict[str, Any]], curve: str, recoded: dict[str, list[dict[str, Any]]]) -> dict[str, Any]:
    """BD-rate of a feature front against each recoded-image curve's own front, by the curve's label."""
    bd: dict[str, Any] = {}
    for coder, points in recoded.items():
        usable = len(points) >= 2 and len(front) >= 2
        ref = [(p["mean_bytes"], p["AP50"]) for p in pareto(points)]
        value = bd_rate(ref, [(p["mean_bytes"], p["AP50"]) for p in front]) if usable and len(ref) >= 2 else None
        bd[RECODE_CURVES[coder]] = {"curve": curve, "bd_rate": value, "points": len(front),
                                    "reference_points": len(ref),
                                    "note": None if value is not None else "no common AP50 range or too few points"}
    return bd


def _recode_point(report: dict[str, Any]) -> dict[str, Any]:
    """The fields a frontier row needs from a recoding report."""
    keys = ("recode", "quality", "qp", "mean_bytes", "saved_vs_jpeg", "AP", "AP50")
    return {"config": report["mode"], **{k: report.get(k) for k in keys}}


def savings(reports: dict[str, dict[str, Any]], base: dict[str, Any] | None) -> list[dict[str, Any]]:
    """Per method (BaF; all channels) and allowed AP50 loss: the configuration with the fewest mean bytes."""
    rows: list[dict[str, Any]] = []
    if base is None:
        return rows
    for method, kind in (("BaF (any C, n, codec)", "baf"), ("virtual channels (residual-pca, lossless)", VIRTUAL),
                         ("all channels, HEVC [4]", "all")):
        candidates = [r for r in reports.values() if r.get("mean_bytes") is not None
                      and r["mode"].startswith(kind + "_")]
        for points in LOSS_POINTS:
            within = [r for r in candidates if 100 * (base["AP50"] - r["AP50"]) <= points]
            row: dict[str, Any] = {"method": method, "max_loss_points": points, "configs_tried": len(candidates)}
            if within:
                best = min(within, key=lambda r: r["mean_bytes"])
                row.update(reached=True, **_point(best), loss_points=100 * (base["AP50"] - best["AP50"]))
            else:
                least = min((100 * (base["AP50"] - r["AP50"]) for r in candidates), default=None)
                row.update(reached=False, smallest_loss_points=least)
            rows.append(row)
    return rows


def comparison(reports: dict[str, dict[str, Any]], compare: Sequence[Path]) -> list[dict[str, Any]]:
    """The main predictor and each --compare checkpoint at C=64, n=8 (lossless jxl)."""
    rows = []
    for config in [Config("baf", FIG4_CHANNELS, 8, "jxl")] + [
        Config("baf", FIG4_CHANNELS, 8, "jxl", predictor=p) for p in compare
    ]:
        report = reports.get(config.name)
        if report is None:
            continue
        rows.append({
            "checkpoint": report["predictor"], "sha256": report["predictor_sha256"],
            "steps": report["predictor_steps"], "served": report.get("predictor_serves"),
            "channels": report["channels"], "bits": report["bits"], "mean_bytes": report["mean_bytes"],
            "AP": report["AP"], "AP50": report["AP50"],
        })  # fmt: skip
    return rows


def _served(served: dict[str, list[int]] | None) -> str:
    """'C 8-128, n 2-8' from a predictor's served channel and bit lists."""
    if not served:
        return "-"
    span = {k: str(v[0]) if len(v) == 1 else f"{v[0]}-{v[-1]}" for k, v in served.items()}
    return f"C {span['channels']}, n {span['bits']}"


def _fmt(value: Any, digits: int = 4) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:,.0f}" if abs(value) >= 100 else f"{value:.{digits}f}"
    return str(value)


def summary_markdown(tables: dict[str, Any]) -> str:
    """The tables as markdown (for the README)."""
    unsplit, lines = tables["unsplit"] or {}, []
    p = tables["predictor"] or {}
    lines += [
        f"yolov3-tiny split at layer 8, {tables['images']} val images; unsplit AP {_fmt(unsplit.get('AP'))}, "
        f"AP50 {_fmt(unsplit.get('AP50'))}; mean source JPEG {_fmt(tables['jpeg_mean_bytes'])} bytes. "
        f"Predictor {p.get('predictor')} (sha256 {str(p.get('predictor_sha256'))[:16]}, "
        f"{p.get('predictor_steps')} steps). "
        "Bytes are whole `.baf` bitstreams (header and side info included).",
        "",
        "Fig. 3 (n=8, lossless JPEG XL):",
        "",
        "| C | AP | AP50 | mean bytes | saved vs JPEG |",
        "|---|---|---|---|---|",
    ]
    lines += [f"| {r['channels']} | {_fmt(r['AP'])} | {_fmt(r['AP50'])} | {_fmt(r['mean_bytes'])} | "
              f"{100 * r['saved_vs_jpeg']:.1f}% |" for r in tables["fig3"]]
    lines += ["", "Fig. 4:", "", "| curve | n | QP | mean bytes | saved vs JPEG | AP | AP50 |",
              "|---|---|---|---|---|---|---|"]
    for label, points in tables["fig4"].items():
        lines += [f"| {label} | {r['bits']} | {_fmt(r['qp'])} | {_fmt(r['mean_bytes'])} | "
                  f"{100 * r['saved_vs_jpeg']:.1f}% | {_fmt(r['AP'])} | {_fmt(r['AP50'])} |" for r in points]
    lines += ["", "BD-rate against all channels with HEVC (negative: fewer bytes at equal AP50):", "",
              "| curve | BD-rate | note |", "|---|---|---|"]
    for label, r in tables["bd_rate"].items():
        value = "-" if r["bd_rate"] is None else f"{100 * r['bd_rate']:+.1f}%"
        lines.append(f"| {label} | {value} | {r['note'] or ''} |")
    lines += ["", "Savings vs the source JPEG within an AP50 loss:", "",
              "| method | max loss | config | mean bytes | saved vs JPEG | loss (points) |",
              "|---|---|---|---|---|---|"]
    for r in tables["savings"]:
        if r["reached"]:
            lines.append(f"| {r['method']} | {r['max_loss_points']:g} | {r['config']} | {_fmt(r['mean_bytes'])} | "
                         f"{100 * r['saved_vs_jpeg']:.1f}% | {r['loss_points']:.2f} |")
        else:
            least = r["smallest_loss_points"]
            lines.append(f"| {r['method']} | {r['max_loss_points']:g} | not reached (smallest loss "
                         f"{'-' if least is None else f'{least:.2f}'} points) | - | - | - |")
    if tables["comparison"]:
        lines += ["", "One-for-all vs dedicated at C=64, n=8 (lossless JPEG XL):", "",
                  "| checkpoint | serves | steps | sha256 | AP | AP50 |", "|---|---|---|---|---|---|"]
        lines += [f"| {r['checkpoint']} | {_served(r['served'])} | {r['steps']} | {r['sha256'][:16]} | "
                  f"{_fmt(r['AP'])} | {_fmt(r['AP50'])} |" for r in tables["comparison"]]
    lines += frontier_markdown(tables["frontier"])
    if tables["missing"]:
        lines += ["", f"Not run yet: {', '.join(tables['missing'])}."]
    return "\n".join(lines) + "\n"


def frontier_markdown(front: dict[str, Any]) -> list[str]:
    """The frontier's tables: fewest bytes within 1/2/3 AP50 points per method, BD-rates, the feature front."""
    lines = ["", "Rate-accuracy frontier: features vs the image itself recoded (unsplit model on the decoded image):",
             "", "| method | max loss | config | mean bytes | saved vs JPEG | loss (points) |", "|---|---|---|---|---|---|"]
    for r in front["within"]:
        if r["reached"]:
            lines.append(f"| {r['method']} | {r['max_loss_points']:g} | {r['config']} | {_fmt(r['mean_bytes'])} | "
                         f"{100 * r['saved_vs_jpeg']:.1f}% | {r['loss_points']:.2f} |")
        else:
            lines.append(f"| {r['method']} | {r['max_loss_points']:g} | not reached | - | - | - |")
    lines += ["", "BD-rate of a feature Pareto front against the recoded image (negative: fewer bytes at equal AP50):",
              "", "| front | reference | BD-rate | points (front / reference) | note |", "|---|---|---|---|---|"]
    for table in (front["bd_rate"], front["bd_rate_ranked_only"]):
        for label, r in table.items():
            value = "-" if r["bd_rate"] is None else f"{100 * r['bd_rate']:+.1f}%"
            lines.append(f"| {r['curve']} | {label} | {value} | {r['points']} / {r['reference_points']} | "
                         f"{r['note'] or ''} |")
    lines += ["", "Every point (AP50 and mean bytes per image):", "", "| config | mean bytes | AP50 | on the front |",
              "|---|---|---|---|"]
    on_front = {p["config"] for p in front["front"]}
    rows = front["features"] + [p for pts in front["recoded"].values() for p in pts]
    lines += [f"| {p['config']} | {_fmt(p['mean_bytes'])} | {_fmt(p['AP50'])} | "
              f"{'yes' if p['config'] in on_front else ''} |" for p in sorted(rows, key=lambda p: p["mean_bytes"])]
    return lines


def _write_csv(path: Path, rows: Iterable[dict[str, Any]]) -> None:
    rows = list(rows)
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]) if rows else ["config"])
        writer.writeheader()
        writer.writerows(rows)


def write_results(folder: Path, tables: dict[str, Any], plots: bool = True) -> list[Path]:
    """Write the tables (JSON, CSV, markdown) and, with `plots`, the PNG figures; returns the paths written."""
    folder.mkdir(parents=True, exist_ok=True)
    common = {k: tables[k] for k in ("model", "split_layer", "images", "unsplit", "jpeg_mean_bytes", "predictor")}
    written = []
    for name, data in (
        ("fig3", {**common, "points": tables["fig3"]}),
        ("fig4", {**common, "curves": tables["fig4"]}),
        ("bd_rate", {**common, "bd_rate": tables["bd_rate"]}),
        ("savings", {**common, "savings": tables["savings"]}),
        ("one_for_all_vs_dedicated", {**common, "rows": tables["comparison"]}),
        ("frontier", {**common, **tables["frontier"]}),
    ):
        path = folder / f"{name}.json"
        path.write_text(json.dumps({**data, "missing": tables["missing"]}, indent=2) + "\n")
        written.append(path)
    _write_csv(folder / "fig3.csv", tables["fig3"])
    _write_csv(folder / "fig4.csv", ({"curve": label, **p} for label, pts in tables["fig4"].items() for p in pts))
    front = tables["frontier"]
    on_front = {p["config"] for p in front["front"]}
    keys = ("config", "mean_bytes", "saved_vs_jpeg", "AP", "AP50")
    rows = [{"method": "features", **{k: p[k] for k in keys}, "on_front": p["config"] in on_front}
            for p in front["features"]]
    rows += [{"method": RECODE_CURVES[coder], **{k: p[k] for k in keys}, "on_front": False}
             for coder, points in front["recoded"].items() for p in points]
    _write_csv(folder / "frontier.csv", rows)
    (folder / "summary.md").write_text(summary_markdown(tables))
    written += [folder / "fig3.csv", folder / "fig4.csv", folder / "frontier.csv", folder / "summary.md"]
    if plots:
        written += plot(folder, tables)
    return written


def plot(folder: Path, tables: dict[str, Any]) -> list[Path]:
    """fig3.png (AP, AP50 vs C) and fig4.png (AP50 vs mean bytes per image, log scale)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    unsplit = tables["unsplit"]
    fig, ax = plt.subplots(figsize=(6, 4))
    pts = tables["fig3"]
    for key, color in (("AP50", "tab:blue"), ("AP", "tab:green")):
        ax.plot([p["channels"] for p in pts], [p[key] for p in pts], "o-", color=color, label=f"BaF {key}, n=8")
        if unsplit:
            ax.axhline(unsplit[key], color=color, ls="--", lw=1, label=f"unsplit {key}")
    if pts:  # a log axis needs data
        ax.set_xscale("log", base=2)
        ax.set_xticks(FIG3_CHANNELS, [str(c) for c in FIG3_CHANNELS])
    ax.set(xlabel="channels sent C", ylabel="COCO AP", title="yolov3-tiny layer 8: AP vs C (val164)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(folder / "fig3.png", dpi=120)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(7, 4.5))
    plotted = False
    for label, points in tables["fig4"].items():
        points = sorted(points, key=lambda p: p["mean_bytes"])
        if points:
            ax.plot([p["mean_bytes"] / 1000 for p in points], [p["AP50"] for p in points], "o-", label=label)
            plotted = True
    if unsplit and tables["jpeg_mean_bytes"]:
        ax.plot([tables["jpeg_mean_bytes"] / 1000], [unsplit["AP50"]], "r*", ms=12, label="JPEG input (cloud-only)")
        for loss in LOSS_POINTS:
            ax.axhline(unsplit["AP50"] - loss / 100, color="gray", ls=":", lw=1)
        ax.axhline(unsplit["AP50"], color="red", ls="--", lw=1, label="unsplit AP50")
    if plotted:
        ax.set_xscale("log")
    ax.set(xlabel="mean bytes per image (kB, whole bitstream)", ylabel="AP50",
           title="yolov3-tiny layer 8: AP50 vs rate (val164; dotted: -1 and -2 points)")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(folder / "fig4.png", dpi=120)
    plt.close(fig)
    plot_frontier(folder / "frontier.png", tables)
    return [folder / "fig3.png", folder / "fig4.png", folder / "frontier.png"]


def plot_frontier(path: Path, tables: dict[str, Any]) -> None:
    """frontier.png: every feature configuration (by C), its Pareto front, and the recoded-image curves."""
    import matplotlib.pyplot as plt

    front, unsplit = tables["frontier"], tables["unsplit"]
    fig, ax = plt.subplots(figsize=(8, 5))
    groups: dict[str, list[dict[str, Any]]] = {}
    for p in front["features"]:
        kind = "all channels" if p["config"].startswith("all_") else f"C={p['channels']}"
        groups.setdefault(f"virtual {kind}" if p["config"].startswith(VIRTUAL + "_") else kind, []).append(p)
    for label, points in sorted(groups.items()):
        ax.scatter([p["mean_bytes"] / 1000 for p in points], [p["AP50"] for p in points], s=18, label=label,
                   marker="^" if label.startswith(VIRTUAL) else "o")
    ranked = front["ranked_only_front"]
    if ranked:
        ax.plot([p["mean_bytes"] / 1000 for p in ranked], [p["AP50"] for p in ranked], "k:", lw=1.2,
                label=RANKED_CURVE)
    if front["front"]:
        ax.plot([p["mean_bytes"] / 1000 for p in front["front"]], [p["AP50"] for p in front["front"]], "k-", lw=1.5,
                label=FEATURES_CURVE)
    for coder, points in front["recoded"].items():
        if points:
            ax.plot([p["mean_bytes"] / 1000 for p in points], [p["AP50"] for p in points], "s--", ms=4,
                    label=RECODE_CURVES[coder])
    if unsplit:
        ax.axhline(unsplit["AP50"], color="red", ls="--", lw=1, label="unsplit AP50")
        for loss in FRONTIER_LOSS_POINTS:
            ax.axhline(unsplit["AP50"] - loss / 100, color="gray", ls=":", lw=1)
    if front["features"] or any(front["recoded"].values()):
        ax.set_xscale("log")
    ax.set(xlabel="mean bytes per image (kB)", ylabel="AP50",
           title="yolov3-tiny, val164: features vs recoded images (dotted: -1, -2, -3 points)")
    ax.set_ylim(bottom=max(0.0, (unsplit or {"AP50": 0.45})["AP50"] - 0.2))
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the missing configurations (all of them with --force), then write the tables and plots."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", type=Path, required=True, help="COCO-style folder (images/ + instances_*.json)")
    p.add_argument("--out", type=Path, default=REPO / "results", help="results folder (default: results/)")
    p.add_argument("--predictor", type=Path, help="one-for-all checkpoint (default: the packaged one the server uses)")
    p.add_argument("--compare", type=Path, nargs="*", default=[], help="checkpoints to compare at C=64 n=8")
    p.add_argument("--virtual-ranking", type=Path,
                   help="residual-pca ranking of the virtual configurations (default: the packaged one)")
    p.add_argument("--virtual-predictor", type=Path,
                   help="its linear checkpoint (default: the packaged one made for that ranking)")
    p.add_argument("--snapshot", type=Path, default=REPO / "runs/experiments/predictor",
                   help="where the checkpoints are copied before use (default: runs/experiments/predictor)")
    p.add_argument("--limit", type=int, help="first N images only (smoke runs)")
    p.add_argument("--force", action="store_true", help="rerun configurations that are cached")
    p.add_argument("--no-run", action="store_true", help="only rebuild tables and plots from the cache")
    p.add_argument("--only", nargs="+", metavar="TEXT",
                   help="run only configurations whose name contains one of these (others: cache only)")
    p.add_argument("--threads", type=int, default=2, help="torch CPU threads (default: %(default)s)")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")

    import torch

    from baf.evaluate import CocoDataset
    from baf.models.zoo import get_spec, load_split
    from baf.predictor import load_predictor, packaged_checkpoint
    from baf.ranking import find_ranking

    torch.set_num_threads(args.threads)
    spec = get_spec(MODEL)
    split = load_split(MODEL, spec.split_layer)
    ranking = find_ranking(MODEL, split.layer)
    args.predictor = args.predictor or packaged_checkpoint(MODEL, split.layer, ranking.id)
    virtual = find_ranking(MODEL, split.layer, args.virtual_ranking or VIRTUAL_RANKING)
    args.virtual_predictor = args.virtual_predictor or packaged_checkpoint(MODEL, split.layer, virtual.id)
    dataset = CocoDataset.open(args.data, args.limit)
    paths: dict[Path | str | None, Path] = {}
    for key, path in [(None, args.predictor), (VIRTUAL, args.virtual_predictor), *((c, c) for c in args.compare)]:
        paths[key] = snapshot_checkpoint(path, args.snapshot / (path.with_suffix("").name if key else "main"))
    ids = {VIRTUAL: virtual.id}
    predictors = {k: load_predictor(v, model=MODEL, layer=split.layer, ranking_id=ids.get(k, ranking.id))
                  for k, v in paths.items()}  # fmt: skip
    sha256 = {k: str(v.source_sha256) for k, v in predictors.items()}
    serves = {k: {"channels": list(v.config.channels), "bits": list(v.config.bits)} for k, v in predictors.items()}
    log.info("predictor %s: sha256 %s, %s steps", args.predictor.name, sha256[None][:16],
             trained_steps(read_sidecar(paths[None])[0]))
    context = {"split": split, "rankings": {False: ranking, True: virtual}, "dataset": dataset, "spec": spec,
               "predictors": predictors, "predictor_paths": paths}
    cache = args.out / "evals"
    cache.mkdir(parents=True, exist_ok=True)
    configs = plan(args.compare)
    reports: dict[str, dict[str, Any]] = {}
    failed = []
    for i, config in enumerate(configs):
        report = None if args.force else load_cached(cache, config, len(dataset.images), sha256)
        wanted = not args.no_run and (args.only is None or any(text in config.name for text in args.only))
        if report is None and wanted:
            start = time.perf_counter()
            try:
                report = run_config(config, context)
            except Exception:  # one broken configuration must not lose the hours spent on the others
                log.exception("[%d/%d] %s failed", i + 1, len(configs), config.name)
                failed.append(config.name)
                continue
            if config.kind in ("baf", VIRTUAL):
                report["predictor_serves"] = serves[VIRTUAL if config.kind == VIRTUAL else config.predictor]
            (cache / f"{config.name}.json").write_text(json.dumps(report, indent=2) + "\n")
            log.info("[%d/%d] %s: AP50 %.4f, %s bytes (%.0f s)", i + 1, len(configs), config.name, report["AP50"],
                     _fmt(report.get("mean_bytes")), time.perf_counter() - start)
            try:
                write_results(args.out, build_tables({**reports, config.name: report}, args.compare))
            except Exception:  # the tables are rebuilt at the end; a plotting hiccup must not stop the runs
                log.exception("tables after %s", config.name)
        if report is not None:
            reports[config.name] = report
    tables = build_tables(reports, args.compare)
    write_results(args.out, tables)
    sys.stdout.write(summary_markdown(tables))
    if failed:
        log.error("failed: %s", ", ".join(failed))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
