"""A residual-pca ranking end to end on real features: `baf rank --method residual-pca` from a 12-image cache,
`baf fit-linear --ranking` on it, then an edge that sends virtual channels and a cloud that restores from them."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import torch

from baf import ops
from baf.basis import VIRTUAL
from baf.cli import main
from baf.cloud import CloudPipeline
from baf.edge import EdgeEncoder
from baf.errors import HeaderMismatchError
from baf.images import load_image
from baf.models.split import edge_image
from baf.models.zoo import load_split
from baf.predictor import load_predictor
from baf.ranking import load_ranking, ranking_id, read_ranking, write_ranking
from baf.train import build_cache

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def made(shared_data, tmp_path_factory):
    """(ranking, predictor, cache folder) made by the two commands from a 12-image cache (last 2 held out); the
    files are r.json and lin.json beside the cache."""
    folder = tmp_path_factory.mktemp("virtual")
    paths = sorted((shared_data / "train-images").iterdir())[:12]
    build_cache(load_split("yolov3-tiny"), paths, folder / "cache", progress=False)
    common = ["--images", str(shared_data / "train-images"), "--cache", str(folder / "cache"), "--heldout", "2",
              "--kernel", "3", "--threads", "1"]  # fmt: skip
    assert main(["rank", "--method", "residual-pca", "--widths", "4,8", "--share", "0.5", "-o",
                 str(folder / "r.json"), *common]) == 0  # fmt: skip
    assert main(["fit-linear", "--ranking", str(folder / "r.json"), "--channels", "4,8", "--quantized-fits", "2",
                 "--out", str(folder / "lin"), *common]) == 0  # fmt: skip
    ranking = read_ranking(folder / "r.json")
    return ranking, load_predictor(folder / "lin.json", ranking_id=ranking.id), folder / "cache"


def test_rank_command_writes_a_nested_mixed_sequence(made):
    ranking, _, _ = made
    order = ranking.order
    assert ranking.method == "residual-pca" and ranking.kernel == 3 and ranking.images["count"] == 10
    assert ranking.sequence[:8] == (*order[:2], VIRTUAL, VIRTUAL, *order[2:4], VIRTUAL, VIRTUAL)
    assert ranking.virtual["base_ranking_id"] == load_ranking("yolov3-tiny", 8).id
    assert len(ranking.sequence) == 256 and ranking.id != ranking.virtual["base_ranking_id"]


def test_edge_sends_the_projection_and_the_cloud_restores_from_it(made, shared_data):
    ranking, predictor, _ = made
    split = load_split("yolov3-tiny")
    image = load_image(next((shared_data / "coco-val164" / "images").iterdir()))
    z, _ = edge_image(split.edge, image, 512)
    pipeline = CloudPipeline(split, ranking, restorer=predictor)
    with EdgeEncoder(split, ranking, channels=8, bits=4) as encoder:
        frame = pipeline.stream().decode(encoder.encode(image))
    sent = ranking.basis().send(z[0].float(), 8)
    q, lo, hi = ops.quantize(np.ascontiguousarray(sent.numpy()), 4)
    assert np.array_equal(frame.q, q) and np.array_equal(frame.lo, lo)  # the bitstream carries v . Z
    [dets] = pipeline.detect([frame])
    with torch.no_grad():
        restored = pipeline.restore([frame])[0]
    # The least-squares restoration from 4 ranked and 4 virtual rows is far closer to Z than zeros are.
    err = float((restored - z[0]).square().mean())
    assert err < 0.5 * float(z[0].square().mean())
    assert dets.boxes.shape[1] == 4  # the cloud half ran on it (C=8 from 10 images finds little here)
    # A cloud that loaded the paper's ranking refuses these frames by their ranking id.
    with EdgeEncoder(split, ranking, channels=8, bits=4) as encoder:
        data = encoder.encode(image)
    with pytest.raises(HeaderMismatchError, match="ranking"):
        CloudPipeline(split, load_ranking("yolov3-tiny", 8)).stream().decode(data)


def test_network_kinds_and_oversized_widths_are_refused_in_one_line(made, shared_data, tmp_path, caplog):
    ranking, _, cache = made
    path = tmp_path / "r.json"
    write_ranking(ranking, path)
    common = ["--images", str(shared_data / "train-images"), "--cache", str(cache), "--heldout", "2"]
    argv = ["train", *common, "--ranking", str(path), "--kind", "hybrid", "--channels", "4,8", "--max-steps", "1",
            "--out-dir", str(tmp_path / "h")]
    assert main(argv) == 2
    assert "cannot take virtual channels" in caplog.text
    assert main(["rank", "--method", "residual-pca", *common, "--widths", "8,300", "-o", str(tmp_path / "x.json")]) == 2
    assert "exceeds the 256 channels" in caplog.text


def test_one_pipeline_serves_two_rankings_each_by_its_restorer(made, shared_data):
    ranking, predictor, _ = made
    split = load_split("yolov3-tiny")
    paper = load_ranking("yolov3-tiny", 8)
    pipeline = CloudPipeline(split, paper, also=[(ranking, predictor)])
    image = load_image(next((shared_data / "coco-val164" / "images").iterdir()))
    frames = []
    for r in (ranking, paper):
        with EdgeEncoder(split, r, channels=8, bits=4) as encoder:
            frames.append(pipeline.stream().decode(encoder.encode(image)))
    assert len(pipeline.detect(frames)) == 2  # one batch per ranking
    with pytest.raises(ValueError, match="one ranking"):
        pipeline.restore(frames)
    with torch.no_grad():
        virtual_z, paper_z = pipeline.restore(frames[:1])[0], pipeline.restore(frames[1:])[0]
    # Zeros restoration of the paper's frame leaves 248 channels at zero; the virtual frame's predictor fills them.
    assert int((paper_z.abs().sum((1, 2)) == 0).sum()) >= 248 and int((virtual_z.abs().sum((1, 2)) == 0).sum()) == 0
    # A third ranking's frame is refused, naming the two served.
    order = paper.order[::-1]
    third = dataclasses.replace(paper, order=order, id=ranking_id("yolov3-tiny", 8, order))
    with EdgeEncoder(split, third, channels=8, bits=4) as encoder:
        data = encoder.encode(image)
    with pytest.raises(HeaderMismatchError, match=f"decoder: {paper.id}, {ranking.id}"):
        pipeline.stream().decode(data)


def test_decode_restores_frames_of_a_ranking_file_with_its_checkpoint(made, shared_data, tmp_path, caplog):
    ranking, predictor, cache = made
    image = next((shared_data / "coco-val164" / "images").iterdir())
    ranking_file, checkpoint = cache.parent / "r.json", cache.parent / "lin.json"
    out, dets = tmp_path / "f.baf", tmp_path / "d.json"
    assert main(["encode", str(image), "-o", str(out), "--ranking", str(ranking_file), "--channels", "8"]) == 0
    assert main(["decode", str(out), "--detections", str(dets), "--ranking", str(ranking_file), "--predictor",
                 str(checkpoint)]) == 0  # fmt: skip
    report = json.loads(dets.read_text())
    assert (report["ranking_id"], report["restoration"]) == (ranking.id, "baf-predictor")
    assert report["checkpoint_sha256"] == predictor.source_sha256
    # Without --ranking the header's id must name a packaged ranking; this one is not.
    assert main(["decode", str(out), "--detections", str(dets)]) == 2
    assert f"ranking {ranking.id} of the first frame is not packaged" in caplog.text
