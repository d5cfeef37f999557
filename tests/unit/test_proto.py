"""The gRPC contract: buf-style lint of proto/baf/v1 and the checked-in stubs in baf/v1 match the generator."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest
from google.protobuf import descriptor_pb2

ROOT = Path(__file__).resolve().parents[2]


def _tool(name: str):
    spec = importlib.util.spec_from_file_location(name, ROOT / "tools" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


gen_proto = _tool("gen_proto")
lint_proto = _tool("lint_proto")


def test_checked_in_stubs_match_the_proto(tmp_path: Path) -> None:
    fresh = {p.name: p.read_bytes() for p in gen_proto.generate(tmp_path)}
    checked_in = {p.name: p.read_bytes() for p in (ROOT / "baf" / "v1").iterdir() if p.is_file()}
    assert sorted(fresh) == sorted(checked_in), "baf/v1 holds other files than tools/gen_proto.py writes"
    drifted = [name for name in fresh if fresh[name] != checked_in[name]]
    assert not drifted, f"{drifted} drifted from proto/: run `python tools/gen_proto.py` and commit baf/v1"


def test_proto_package_passes_lint() -> None:
    assert lint_proto.lint_package() == []


def test_stubs_import_and_describe_the_service() -> None:
    from baf.v1 import detection_service_pb2 as pb
    from baf.v1 import detection_service_pb2_grpc as pb_grpc

    service = pb.DESCRIPTOR.services_by_name["DetectionService"]
    assert [m.name for m in service.methods] == ["Stream", "DetectFrame", "GetCapabilities"]
    assert service.methods_by_name["GetCapabilities"].GetOptions().idempotency_level == \
        descriptor_pb2.MethodOptions.NO_SIDE_EFFECTS
    assert hasattr(pb_grpc, "DetectionServiceStub")


BAD_PROTO = """
syntax = "proto3";
package wrong;
service Detect {
  rpc Go(Thing) returns (Thing);
}
// Thing is documented.
message Thing {
  int32 CamelField = 1;
  int32 other = 3;
}
// Color is documented.
enum Color {
  RED = 0;
}
"""


def test_lint_finds_each_kind_of_problem(tmp_path: Path) -> None:
    from grpc_tools import protoc

    (tmp_path / "bad.proto").write_text(BAD_PROTO)
    out = tmp_path / "bad.pb"
    assert protoc.main(["protoc", f"-I{tmp_path}", f"--descriptor_set_out={out}", "--include_source_info",
                        str(tmp_path / "bad.proto")]) == 0
    descriptors = descriptor_pb2.FileDescriptorSet.FromString(out.read_bytes())
    thing = descriptors.file[0].message_type[0]  # protoc itself refuses these two: edit the descriptor
    thing.reserved_range.add(start=3, end=4)
    thing.field.add(name="again", number=1)
    text = "\n".join(lint_proto.lint(descriptors))
    for expected in (
        "package wrong: must end in a version",
        "service Detect: has no leading comment",
        "service Detect: must be PascalCase ending in Service",
        "rpc Detect.Go: request type Thing must be GoRequest",
        "rpc Detect.Go: response type Thing must be GoResponse",
        "already used by",
        "message Thing.CamelField: must be lower_snake_case",
        "message Thing.CamelField: has no leading comment",
        "message Thing.other: reuses a reserved number",
        "message Thing.again: number 1 used twice",
        "enum Color.RED: must start with COLOR_",
        "enum Color.RED: zero value must be COLOR_UNSPECIFIED",
    ):
        assert expected in text


@pytest.mark.parametrize("name, expected", [("FrameErrorCode", "FRAME_ERROR_CODE"), ("HTTPCode", "HTTPCODE")])
def test_upper_snake(name: str, expected: str) -> None:
    assert lint_proto.upper_snake(name) == expected
