"""A bounded fuzz run in CI: mutated bitstreams (fuzz.corpus) through a real server's DetectFrame and Stream;
every input is answered with a result or a precise refusal, never INTERNAL, a wrong count or a hang
(fuzz.targets). Longer runs: `python -m fuzz server --seconds N` (docs/reliability.md)."""

from __future__ import annotations

import random

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fuzz import corpus, targets

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def stub():
    with targets.server_stub() as stub:
        yield stub


@settings(deadline=None, max_examples=20, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(rng=st.randoms(use_true_random=False), count=st.integers(1, 3),
       sequences=st.lists(st.integers(0, 2**64 - 1), min_size=3, max_size=3))
def test_mutated_frames_get_precise_answers(stub, rng: random.Random, count: int, sequences: list[int]):
    inputs = [corpus.generate(rng) for _ in range(count)]
    for data in inputs:
        targets.check_detect_frame(stub, data)
    targets.check_stream(stub, inputs, sequences[:count])  # arbitrary sequences: OUT_OF_ORDER in-band
    # the hevc seeds in coding order, a mutated frame between them: the stream's decoder state survives
    intra, inter = corpus.seeds()[3:]
    assert targets.check_stream(stub, [intra, inputs[0], inter])[0] == "result"


def test_bitstream_parser_and_codecs_on_mutated_input():
    rng = random.Random(0)
    for _ in range(150):
        targets.check_bitstream(corpus.generate(rng))
