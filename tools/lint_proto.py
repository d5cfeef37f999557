"""buf-style lint of the proto package, for machines without `buf` (proto/buf.yaml names the same rules).

    python tools/lint_proto.py   # prints one line per problem, exits 1 if any

Rules (buf STANDARD subset + COMMENTS): the package ends in a version and matches its directory; services
end in `Service`; names are PascalCase, fields lower_snake_case, enum values UPPER_SNAKE_CASE with the
enum's name as prefix and `<PREFIX>_UNSPECIFIED` as zero value; RPCs take `<Rpc>Request` and return
`<Rpc>Response`, each used by one RPC only; field numbers and names are unique and never reuse a reserved
one; every service, rpc, message, field, oneof, enum and enum value has a leading comment.
"""

from __future__ import annotations

import re
import sys
import tempfile
from pathlib import Path

from google.protobuf import descriptor_pb2

sys.path.insert(0, str(Path(__file__).resolve().parent))
import gen_proto  # noqa: E402

# FileDescriptorProto / DescriptorProto / EnumDescriptorProto / ServiceDescriptorProto field numbers,
# the path components of SourceCodeInfo locations.
_FILE_MESSAGE, _FILE_ENUM, _FILE_SERVICE = 4, 5, 6
_MSG_FIELD, _MSG_NESTED, _MSG_ENUM, _MSG_ONEOF = 2, 3, 4, 8
_ENUM_VALUE, _SERVICE_METHOD = 2, 2

_PASCAL = re.compile(r"[A-Z][A-Za-z0-9]*")
_LOWER_SNAKE = re.compile(r"[a-z][a-z0-9]*(_[a-z0-9]+)*")
_UPPER_SNAKE = re.compile(r"[A-Z][A-Z0-9]*(_[A-Z0-9]+)*")
_VERSION = re.compile(r"v\d+((alpha|beta)\d*)?")


def upper_snake(name: str) -> str:
    """PascalCase -> UPPER_SNAKE_CASE, e.g. FrameErrorCode -> FRAME_ERROR_CODE."""
    return re.sub(r"(?<=[a-z0-9])(?=[A-Z])", "_", name).upper()


def lint_file(f: descriptor_pb2.FileDescriptorProto) -> list[str]:
    """Problems in one file (with source info), each as `file: element: what`."""
    problems: list[str] = []
    comments = {tuple(loc.path): loc.leading_comments.strip() for loc in f.source_code_info.location}

    def check(cond: bool, where: str, what: str) -> None:
        if not cond:
            problems.append(f"{f.name}: {where}: {what}")

    def documented(path: tuple[int, ...], where: str) -> None:
        check(bool(comments.get(path)), where, "has no leading comment")

    parts = f.package.split(".")
    check(len(parts) >= 2 and bool(_VERSION.fullmatch(parts[-1])), f"package {f.package}", "must end in a version")
    check(str(Path(f.name).parent) == "/".join(parts), f"package {f.package}", f"must be in directory {'/'.join(parts)}")

    def enum(e: descriptor_pb2.EnumDescriptorProto, path: tuple[int, ...], scope: str) -> None:
        where = f"enum {scope}{e.name}"
        documented(path, where)
        check(bool(_PASCAL.fullmatch(e.name)), where, "name must be PascalCase")
        prefix = upper_snake(e.name) + "_"
        numbers: set[int] = set()
        for i, v in enumerate(e.value):
            vwhere = f"{where}.{v.name}"
            documented((*path, _ENUM_VALUE, i), vwhere)
            check(bool(_UPPER_SNAKE.fullmatch(v.name)), vwhere, "must be UPPER_SNAKE_CASE")
            check(v.name.startswith(prefix), vwhere, f"must start with {prefix}")
            check(v.number not in numbers, vwhere, f"number {v.number} used twice")
            check(not any(r.start <= v.number <= r.end for r in e.reserved_range), vwhere, "reuses a reserved number")
            check(v.name not in e.reserved_name, vwhere, "reuses a reserved name")
            numbers.add(v.number)
            if v.number == 0:
                check(v.name == prefix + "UNSPECIFIED", vwhere, f"zero value must be {prefix}UNSPECIFIED")
        check(0 in numbers, where, "needs a zero value")

    def message(m: descriptor_pb2.DescriptorProto, path: tuple[int, ...], scope: str) -> None:
        where = f"message {scope}{m.name}"
        documented(path, where)
        check(bool(_PASCAL.fullmatch(m.name)), where, "name must be PascalCase")
        numbers: set[int] = set()
        names: set[str] = set()
        for i, fd in enumerate(m.field):
            fwhere = f"{where}.{fd.name}"
            documented((*path, _MSG_FIELD, i), fwhere)
            check(bool(_LOWER_SNAKE.fullmatch(fd.name)), fwhere, "must be lower_snake_case")
            check(fd.number not in numbers, fwhere, f"number {fd.number} used twice")
            check(fd.name not in names, fwhere, "name used twice")
            # DescriptorProto.ReservedRange.end is exclusive (unlike the enum's).
            check(not any(r.start <= fd.number < r.end for r in m.reserved_range), fwhere, "reuses a reserved number")
            check(fd.name not in m.reserved_name, fwhere, "reuses a reserved name")
            numbers.add(fd.number)
            names.add(fd.name)
        for i, o in enumerate(m.oneof_decl):
            if not o.name.startswith("_"):  # proto3 `optional` makes synthetic oneofs named _field
                documented((*path, _MSG_ONEOF, i), f"{where}.{o.name}")
                check(bool(_LOWER_SNAKE.fullmatch(o.name)), f"{where}.{o.name}", "oneof must be lower_snake_case")
        for i, nested in enumerate(m.nested_type):
            if not nested.options.map_entry:
                message(nested, (*path, _MSG_NESTED, i), f"{scope}{m.name}.")
        for i, e in enumerate(m.enum_type):
            enum(e, (*path, _MSG_ENUM, i), f"{scope}{m.name}.")

    for i, m in enumerate(f.message_type):
        message(m, (_FILE_MESSAGE, i), "")
    for i, e in enumerate(f.enum_type):
        enum(e, (_FILE_ENUM, i), "")

    used: dict[str, str] = {}
    for i, s in enumerate(f.service):
        where = f"service {s.name}"
        documented((_FILE_SERVICE, i), where)
        check(bool(_PASCAL.fullmatch(s.name)) and s.name.endswith("Service"), where, "must be PascalCase ending in Service")
        for j, rpc in enumerate(s.method):
            rwhere = f"rpc {s.name}.{rpc.name}"
            documented((_FILE_SERVICE, i, _SERVICE_METHOD, j), rwhere)
            check(bool(_PASCAL.fullmatch(rpc.name)), rwhere, "name must be PascalCase")
            request, response = rpc.input_type.rsplit(".", 1)[-1], rpc.output_type.rsplit(".", 1)[-1]
            check(request in (f"{rpc.name}Request", f"{s.name}{rpc.name}Request"), rwhere,
                  f"request type {request} must be {rpc.name}Request")
            check(response in (f"{rpc.name}Response", f"{s.name}{rpc.name}Response"), rwhere,
                  f"response type {response} must be {rpc.name}Response")
            for type_name in (rpc.input_type, rpc.output_type):
                check(type_name not in used, rwhere, f"{type_name} already used by {used.get(type_name)}")
                used[type_name] = rwhere
    return problems


def lint(descriptors: descriptor_pb2.FileDescriptorSet) -> list[str]:
    """Problems in every file of a descriptor set built with --include_source_info."""
    return [p for f in descriptors.file for p in lint_file(f)]


def lint_package() -> list[str]:
    """Compile proto/baf/v1 with protoc and lint it."""
    with tempfile.TemporaryDirectory() as tmp:
        data = gen_proto.descriptor_set(Path(tmp) / "descriptors.pb").read_bytes()
    return lint(descriptor_pb2.FileDescriptorSet.FromString(data))


def main() -> int:
    """Command-line entry point: print problems, exit 1 if any."""
    problems = lint_package()
    for p in problems:
        print(p)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
