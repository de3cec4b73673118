"""A client acb did not write: Python grpcio with stubs generated from the proto by grpcio-tools.

Usage: grpc_client.py SOCKET_PATH PROTO_ROOT
Generates the stubs into a temporary folder, then against the running assigner:
AllocRequest as a one-off client, Status, Release, a second Release (refused), and bad input;
each refusal's machine-readable reason (google.rpc.ErrorInfo in grpc-status-details-bin, read
here with a few lines of protobuf decoding, as a client without googleapis stubs would).
Every channel uses grpcio's defaults (its :authority is the percent-encoded socket path); one
more sends the raw path, as grpc-java does. Then health, reflection v1 and v1alpha (through
grpcio-reflection's own client when it is installed) and 60 calls whose deadline passes while
they wait for a GPU: each must end DEADLINE_EXCEEDED, none CANCELLED.
Prints 'N passed, 0 failed' and exits 0 when every check holds.
"""
import importlib
import os
import sys
import tempfile

import grpc
from grpc_tools import protoc


def generate(proto_root: str, out: str) -> None:
    proto = os.path.join(proto_root, "acb", "v1", "assigner.proto")
    args = ["protoc", f"-I{proto_root}", f"--python_out={out}", f"--grpc_python_out={out}", proto]
    if protoc.main(args) != 0:
        raise SystemExit("grpcio-tools could not compile the proto")


def _fields(buf: bytes):
    """The (field number, bytes) pairs of a protobuf message's length-delimited fields."""
    i, out = 0, []
    while i < len(buf):
        key, i = _varint(buf, i)
        field, wire = key >> 3, key & 7
        if wire == 0:
            _, i = _varint(buf, i)
        elif wire == 2:
            n, i = _varint(buf, i)
            out.append((field, buf[i:i + n]))
            i += n
        else:
            raise ValueError(f"unexpected wire type {wire}")
    return out


def _varint(buf: bytes, i: int):
    shift = value = 0
    while True:
        b = buf[i]
        i += 1
        value |= (b & 0x7F) << shift
        shift += 7
        if not b & 0x80:
            return value, i


def error_reason(e: grpc.RpcError):
    """(domain, reason) of the google.rpc.ErrorInfo in the status details, or None."""
    details = dict(e.trailing_metadata() or ()).get("grpc-status-details-bin")
    if details is None:
        return None
    for field, any_msg in _fields(details):  # google.rpc.Status.details = 3, repeated Any
        if field != 3:
            continue
        parts = dict(_fields(any_msg))  # Any: type_url = 1, value = 2
        if parts.get(1, b"").endswith(b"google.rpc.ErrorInfo"):
            info = dict(_fields(parts.get(2, b"")))  # ErrorInfo: reason = 1, domain = 2
            return info.get(2, b"").decode(), info.get(1, b"").decode()
    return None


def _raw(channel, method: str):
    return channel.unary_unary(method, request_serializer=lambda b: b, response_deserializer=lambda b: b)


def _services(response: bytes):
    """Service names in a ServerReflectionResponse (list_services_response = 6)."""
    listing = dict(_fields(response)).get(6, b"")
    return sorted(dict(_fields(s)).get(1, b"").decode() for f, s in _fields(listing) if f == 1)


def check_health_and_reflection(socket_path: str, channel) -> int:
    passed = 0
    serving = b"\x08\x01"  # HealthCheckResponse{status: SERVING}
    assert _raw(channel, "/grpc.health.v1.Health/Check")(b"", timeout=10) == serving
    # grpc-java puts the raw socket path in :authority.
    java_like = grpc.insecure_channel(f"unix:{socket_path}", options=[("grpc.default_authority", socket_path)])
    assert _raw(java_like, "/grpc.health.v1.Health/Check")(b"", timeout=10) == serving
    passed += 1

    list_services = b"\x3a\x00"  # ServerReflectionRequest{list_services: ""}
    for version in ("v1", "v1alpha"):
        call = channel.stream_stream(
            f"/grpc.reflection.{version}.ServerReflection/ServerReflectionInfo",
            request_serializer=lambda b: b,
            response_deserializer=lambda b: b,
        )
        names = _services(next(iter(call(iter([list_services]), timeout=10))))
        want = ["acb.v1.Assigner", "grpc.health.v1.Health", f"grpc.reflection.{version}.ServerReflection"]
        assert names == want, (version, names)
    passed += 1
    try:
        from grpc_reflection.v1alpha.proto_reflection_descriptor_database import ProtoReflectionDescriptorDatabase
    except ImportError:
        if os.environ.get("ACB_REQUIRE_PYTHON_GRPC"):
            raise
        print("skipped: grpcio-reflection is not installed")
        return passed
    db = ProtoReflectionDescriptorDatabase(channel)
    assert "acb.v1.Assigner" in db.get_services(), db.get_services()
    assert db.FindFileContainingSymbol("acb.v1.Assigner").name == "acb/v1/assigner.proto"
    passed += 1
    return passed


def check_deadlines(pb, stub) -> int:
    holder = stub.AllocRequest(pb.AllocateRequest(job="holder", gpus=1), timeout=10)
    codes = {}
    for _ in range(60):
        try:
            stub.AllocRequest(pb.AllocateRequest(job="waiter", gpus=1), timeout=0.05)
            raise AssertionError("the only GPU is held: the call must wait until its deadline")
        except grpc.RpcError as e:
            codes[e.code()] = codes.get(e.code(), 0) + 1
    assert codes == {grpc.StatusCode.DEADLINE_EXCEEDED: 60}, codes
    stub.Release(pb.ReleaseRequest(client_token=holder.client_token, lease_id=holder.lease_id), timeout=10)
    # Every waiter was withdrawn: the GPU is free and nobody queues.
    status = stub.Status(pb.StatusRequest(), timeout=10)
    assert not status.queue and not any(g.holders for g in status.gpus), status
    return 1


def main() -> int:
    socket_path, proto_root = sys.argv[1], sys.argv[2]
    out = tempfile.mkdtemp(prefix="acb-grpc-stubs-")
    generate(proto_root, out)
    sys.path.insert(0, out)
    pb = importlib.import_module("acb.v1.assigner_pb2")
    rpc = importlib.import_module("acb.v1.assigner_pb2_grpc")

    passed = 0
    # grpcio's defaults: its :authority is the socket path, percent-encoded.
    channel = grpc.insecure_channel(f"unix:{socket_path}")
    stub = rpc.AssignerStub(channel)

    grant = stub.AllocRequest(pb.AllocateRequest(job="python-grpcio", gpus=1), timeout=10)
    assert grant.lease_id > 0, grant
    assert len(grant.gpus) == 1 and grant.gpus[0].uuid.startswith("fake-"), grant
    assert grant.client_token, "a one-off client gets a token to release with"
    passed += 1

    status = stub.Status(pb.StatusRequest(), timeout=10)
    holders = [h.job for g in status.gpus for h in g.holders]
    assert holders == ["python-grpcio"], holders
    assert all(g.fake for g in status.gpus)
    passed += 1

    stub.Release(pb.ReleaseRequest(client_token=grant.client_token, lease_id=grant.lease_id), timeout=10)
    status = stub.Status(pb.StatusRequest(), timeout=10)
    assert not any(g.holders for g in status.gpus), status
    passed += 1

    try:
        stub.Release(pb.ReleaseRequest(client_token=grant.client_token, lease_id=grant.lease_id), timeout=10)
        raise AssertionError("a second release must fail")
    except grpc.RpcError as e:
        # The one-off client ended with its lease, so its token is no longer recognised.
        assert e.code() == grpc.StatusCode.PERMISSION_DENIED, e
        # A restarted assigner answers the same: a client matches the reason, not the text.
        assert error_reason(e) == ("acb.v1", "UNKNOWN_TOKEN"), error_reason(e)
        assert pb.ErrorReason.Value("UNKNOWN_TOKEN") == 1
    passed += 1

    try:
        stub.AllocRequest(pb.AllocateRequest(job="bad", gpus=0), timeout=10)
        raise AssertionError("zero GPUs must be refused")
    except grpc.RpcError as e:
        assert e.code() == grpc.StatusCode.INVALID_ARGUMENT, e
        assert "at least one GPU" in e.details(), e.details()
        assert error_reason(e) == ("acb.v1", "INVALID_ARGUMENT"), error_reason(e)
    passed += 1

    passed += check_health_and_reflection(socket_path, channel)
    passed += check_deadlines(pb, stub)

    print(f"{passed} passed, 0 failed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
