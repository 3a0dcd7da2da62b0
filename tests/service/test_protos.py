"""The checked-in generated code matches protos/ (scripts/gen-protos)."""
from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
GENERATED = ROOT / "fedcollab" / "_proto"


def _normalised(text: str) -> str:
    """Drop the version stamps protoc writes, so another grpcio-tools patch release passes."""
    text = re.sub(r"Protobuf Python Version: \S+", "Protobuf Python Version: X", text)
    text = re.sub(r"ValidateProtobufRuntimeVersion\([^)]*\)", "ValidateProtobufRuntimeVersion()",
                  text, flags=re.S)
    return re.sub(r"GRPC_GENERATED_VERSION = '[^']*'", "GRPC_GENERATED_VERSION = ''", text)


def _files(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): _normalised(p.read_text())
            for p in sorted(root.rglob("*")) if p.is_file() and "__pycache__" not in p.parts}


def test_generated_protos_match_protos_dir(tmp_path: Path) -> None:
    pytest.importorskip("grpc_tools", reason="grpcio-tools (a test extra) is not installed")
    out = tmp_path / "_proto"
    subprocess.run([sys.executable, str(ROOT / "scripts" / "gen-protos"), "--out", str(out)],
                   check=True, capture_output=True, text=True)

    fresh, checked_in = _files(out), _files(GENERATED)

    assert sorted(fresh) == sorted(checked_in), "run scripts/gen-protos and commit fedcollab/_proto"
    stale = [name for name in fresh if fresh[name] != checked_in[name]]
    assert not stale, f"fedcollab/_proto is stale ({', '.join(stale)}): run scripts/gen-protos"


def test_generated_protos_import_under_fedcollab_package() -> None:
    from fedcollab._proto.fedcollab.v1 import jobs_pb2, jobs_pb2_grpc

    assert jobs_pb2.DESCRIPTOR.package == "fedcollab.v1"
    assert set(jobs_pb2.DESCRIPTOR.services_by_name["JobService"].methods_by_name) >= {
        "SubmitJob", "GetJob", "ListJobs", "WatchJob", "CancelJob", "FetchArtifact", "GradeJob"}
    assert hasattr(jobs_pb2_grpc, "JobServiceStub")


def test_generated_silo_proto_imports_under_fedcollab_package() -> None:
    from fedcollab._proto.fedcollab.v1 import silo_pb2, silo_pb2_grpc

    service = silo_pb2.DESCRIPTOR.services_by_name["SiloService"]
    connect = service.methods_by_name["Connect"]

    assert connect.client_streaming and connect.server_streaming
    assert connect.input_type.name == "GatewayFrame"
    assert connect.output_type.name == "CoordinatorFrame"
    assert hasattr(silo_pb2_grpc, "SiloServiceStub")


def _reachable(descriptor, seen=None):  # type: ignore[no-untyped-def]
    seen = set() if seen is None else seen
    if descriptor.full_name in seen:
        return seen
    seen.add(descriptor.full_name)
    for field in descriptor.fields:
        if field.message_type is not None:
            _reachable(field.message_type, seen)
    return seen


def test_silo_gateway_frames_reach_no_plaintext_tensor() -> None:
    from fedcollab._proto.fedcollab.v1 import silo_pb2

    outbound = _reachable(silo_pb2.GatewayFrame.DESCRIPTOR)
    inbound = _reachable(silo_pb2.CoordinatorFrame.DESCRIPTOR)

    assert "fedcollab.v1.Tensor" in inbound  # the schema walk does find tensors
    assert "fedcollab.v1.Tensor" not in outbound
    # the only bytes leaving the vendor are the secure-aggregation payload
    pool = silo_pb2.DESCRIPTOR.pool
    fields = [(pool.FindMessageTypeByName(m), f) for m in outbound
              for f in pool.FindMessageTypeByName(m).fields]
    byte_fields = {f"{m.name}.{f.name}" for m, f in fields if f.type == f.TYPE_BYTES}
    assert byte_fields == {"SecAggMessage.payload"}
    # and no numbers in bulk: no repeated float or double field leaves the vendor
    repeated_reals = [f"{m.name}.{f.name}" for m, f in fields
                      if f.is_repeated and f.type in (f.TYPE_FLOAT, f.TYPE_DOUBLE)]
    assert repeated_reals == []
