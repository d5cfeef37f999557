"""`baf encode`, `baf info`, `baf decode` end to end, and their one-line errors on damaged input."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from baf.cli import main
from client.demo import DEMO_CLIP as VTEST  # Debian opencv-doc's clip, installed by `make sysdeps`
from tests.conftest import REPO, SHIPPED_CHECKPOINT

pytestmark = pytest.mark.slow



@pytest.fixture(scope="module")
def encoded(shared_data, tmp_path_factory) -> dict[str, Path]:
    out = tmp_path_factory.mktemp("codec_cli")
    image = sorted((shared_data / "coco-val164" / "images").glob("*.jpg"))[0]
    files = {"image": out / "one.baf"}
    argv = ["encode", str(image), "-o", str(files["image"]), "--channels", "32", "--bits", "6", "--effort", "2"]
    assert main(argv) == 0
    files["video"] = out / "v.bafs"
    argv = ["encode", str(VTEST), "-o", str(files["video"]), "--frames", "3", "--channels", "16", "--codec", "hevc"]
    assert main([*argv, "--qp", "30"]) == 0
    files["folder"] = out / "frames"
    assert main(["encode", str(VTEST), "-o", f"{files['folder']}/", "--frames", "2", "--channels", "16"]) == 0
    return files


def test_encode_prints_bytes_per_frame_and_a_summary(shared_data, tmp_path, capsys):
    image = sorted((shared_data / "coco-val164" / "images").glob("*.jpg"))[0]
    assert main(["encode", str(image), "-o", str(tmp_path / "x.baf"), "--codec", "png", "--bits", "4"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith(f"{image.stem}: ") and "(header 71 + side info 256 + payload" in out[0]
    assert "1 frame(s) of yolov3-tiny layer 8, C=64 of 256, n=4, png lossless intra" in out[1]
    assert out[2].startswith("source JPEG ") and "saved)" in out[2]


def test_info_on_one_frame(encoded, capsys):
    assert main(["info", str(encoded["image"])]) == 0
    fields = dict(line.split(None, 1) for line in capsys.readouterr().out.splitlines())
    assert fields["model"] == "yolov3-tiny, split layer 8"
    assert fields["channels"] == "C=32 of P=256, n=6 bits"
    assert fields["features"] == "32x32 per channel, tiled 128x256"
    assert fields["codec"] == "jxl, lossless, intra"
    total = encoded["image"].stat().st_size
    assert fields["bytes"].startswith(f"{total:,} total = header 71 + side info 128 + payload {total - 199:,}")
    assert fields["rate"].startswith(f"{8 * total / (32 * 32 * 32):.4f} bits/element")


def test_info_on_a_stream_and_a_folder(encoded, capsys):
    assert main(["info", str(encoded["video"])]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split()[:3] == ["frame", "seq", "codec"]
    assert [line.split()[0] for line in lines[1:4]] == ["v.bafs#0", "v.bafs#1", "v.bafs#2"]
    assert [line.split()[5] for line in lines[1:4]] == ["I", "P", "P"]
    assert "3 frames (1 intra)" in lines[4] and "source 768x576" in lines[4]
    assert main(["info", str(encoded["folder"])]) == 0
    assert [line.split()[0] for line in capsys.readouterr().out.splitlines()[1:3]] == [
        "frame_000000.baf", "frame_000001.baf"]


def test_decode_writes_tensor_and_detections(encoded, tmp_path, capsys):
    tensor, dets = tmp_path / "z.npy", tmp_path / "d.json"
    assert main(["decode", str(encoded["image"]), "--tensor", str(tensor), "--detections", str(dets),
                 "--conf-thres", "0.01"]) == 0  # fmt: skip
    z = np.load(tensor)
    assert z.shape == (32, 32, 32) and z.dtype == np.float32
    report = json.loads(dets.read_text())
    assert (report["restoration"], report["model"], len(report["frames"])) == ("baf-predictor", "yolov3-tiny", 1)
    shipped = json.loads((REPO / SHIPPED_CHECKPOINT).with_suffix(".json").read_text())
    assert report["checkpoint_sha256"] == shipped["sha256"]  # the packaged checkpoint of the header's ranking
    for d in report["frames"][0]["detections"]:
        x1, y1, x2, y2 = d["box"]
        assert 0 <= x1 <= x2 <= 640 and 0 <= y1 <= y2 <= 640 and d["score"] >= 0.01
    restored = len(report["frames"][0]["detections"])
    assert main(["decode", str(encoded["image"]), "--detections", str(dets), "--conf-thres", "0.01",
                 "--restoration", "zeros"]) == 0  # fmt: skip
    zeros = json.loads(dets.read_text())
    assert (zeros["restoration"], zeros["checkpoint_sha256"]) == ("zeros", None)
    assert restored > len(zeros["frames"][0]["detections"])  # 224 channels restored, not left at zero
    assert main(["decode", str(encoded["video"]), "--tensor", str(tensor), "--detections", str(dets)]) == 0
    assert np.load(tensor).shape == (3, 16, 32, 32)
    assert [f["sequence"] for f in json.loads(dets.read_text())["frames"]] == [0, 1, 2]


def _damaged(encoded: dict[str, Path], tmp_path: Path, kind: str) -> Path:
    data = encoded["image"].read_bytes()
    path = tmp_path / f"{kind}.baf"
    if kind == "missing":
        return path
    if kind == "truncated":
        path.write_bytes(data[: len(data) // 2])
    elif kind == "bad_magic":
        path.write_bytes(b"XXXX" + data[4:])
    elif kind == "bad_payload":
        broken = bytearray(data)
        broken[300:340] = bytes(40)
        path.write_bytes(bytes(broken))
    elif kind == "empty":
        path.write_bytes(b"")
    elif kind == "truncated_stream":
        path = tmp_path / "t.bafs"
        path.write_bytes(encoded["video"].read_bytes()[:-100])
    return path


HEADER_DAMAGE = ["missing", "truncated", "bad_magic", "empty", "truncated_stream"]
DECODE = [["decode"], ["decode", "--detections", "{tmp}/d.json"]]
# `info` reads headers only, so a damaged payload is a case for `decode` alone.
CASES = [(kind, ["info"]) for kind in HEADER_DAMAGE] + [
    (kind, command) for kind in [*HEADER_DAMAGE, "bad_payload"] for command in DECODE
]


@pytest.mark.parametrize("kind, command", CASES)
def test_damaged_input_is_one_line_and_exit_2(encoded, tmp_path, caplog, kind, command):
    path = _damaged(encoded, tmp_path, kind)
    argv = [command[0], str(path), *(a.format(tmp=tmp_path) for a in command[1:])]
    assert main(argv) == 2
    errors = [r.getMessage() for r in caplog.records if r.levelname == "ERROR"]
    assert len(errors) == 1 and "\n" not in errors[0] and errors[0].startswith("error: ")


def test_errors_reach_stderr_without_a_traceback(encoded, tmp_path):
    path = _damaged(encoded, tmp_path, "truncated")
    done = subprocess.run([sys.executable, "-m", "baf.cli", "decode", str(path)], capture_output=True, text=True)
    assert done.returncode == 2 and done.stdout == ""
    assert done.stderr.count("\n") == 1 and "truncated" in done.stderr and "Traceback" not in done.stderr


@pytest.mark.parametrize(
    "argv, message",
    [
        (["encode", "{tmp}/nothing.jpg", "-o", "{tmp}/x.baf"], "no such file"),
        (["encode", "{tmp}", "-o", "{tmp}/x.bafs"], "no image files"),
        (["encode", "{img}", "-o", "{tmp}/x.baf", "--codec", "jxl", "--qp", "30"], "lossless only"),
        (["encode", "{img}", "-o", "{tmp}/x.baf", "--codec", "flif"], "unknown codec"),
        (["encode", "{img}", "-o", "{tmp}/x.baf", "--channels", "300"], "C=300"),
        (["encode", "{img}", "-o", "{tmp}/no/x.baf"], "does not exist"),
    ],
)
def test_bad_encode_arguments(shared_data, tmp_path, caplog, argv, message):
    image = sorted((shared_data / "coco-val164" / "images").glob("*.jpg"))[0]
    assert main([a.format(tmp=tmp_path, img=image) for a in argv]) == 2
    errors = [r.getMessage() for r in caplog.records if r.levelname == "ERROR"]
    assert len(errors) == 1 and message in errors[0]
