"""An independent gRPC client of the Hubble Observer API, for hubble/tests/python_grpc.rs.

It shares no code with the Rust side: the stubs are generated at run time by grpcio-tools'
bundled protoc from the checked-in .proto files (so they always match them), the transport is
grpcio's C core. It calls ServerStatus, GetNodes and GetFlows (number, whitelist by verdict) on
the given address and prints one JSON object per line: {"call": NAME, "response": DICT} where
DICT is the protobuf JSON mapping of the decoded response (proto field names, enums by name).
Flow responses also carry the decoded time as {"seconds": S, "nanos": N}.
"""

import argparse
import importlib
import importlib.resources
import json
import pathlib
import sys
import tempfile

import grpc
from google.protobuf import json_format
from grpc_tools import protoc

PROTO_FILES = [
    "flow/flow.proto",
    "relay/relay.proto",
    "peer/peer.proto",
    "observer/observer.proto",
]


def generate_stubs(proto_root: pathlib.Path, out: pathlib.Path) -> None:
    # protoc.main does not add the well-known types' directory by itself (only the
    # `python -m grpc_tools.protoc` entry point does).
    well_known = importlib.resources.files("grpc_tools") / "_proto"
    args = [
        "grpc_tools.protoc",
        f"--proto_path={proto_root}",
        f"--proto_path={well_known}",
        f"--python_out={out}",
        f"--grpc_python_out={out}",
        *PROTO_FILES,
    ]
    status = protoc.main(args)
    if status != 0:
        sys.exit(f"protoc failed with status {status} on {proto_root}")


def emit(call: str, message, **extra) -> None:
    response = json_format.MessageToDict(message, preserving_proto_field_name=True)
    print(json.dumps({"call": call, "response": response, **extra}), flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--address", required=True, help="host:port of the Observer server")
    parser.add_argument("--proto-root", required=True, type=pathlib.Path)
    parser.add_argument("--number", required=True, type=int)
    parser.add_argument(
        "--verdict", required=True, help="whitelist flows with this verdict (enum name)"
    )
    parser.add_argument("--timeout", type=float, default=20.0, help="seconds per call")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="hubble-pystubs-") as out:
        generate_stubs(args.proto_root, pathlib.Path(out))
        # The generated modules import each other as `flow.flow_pb2` etc.
        sys.path.insert(0, out)
        flow_pb2 = importlib.import_module("flow.flow_pb2")
        observer_pb2 = importlib.import_module("observer.observer_pb2")
        observer_pb2_grpc = importlib.import_module("observer.observer_pb2_grpc")

        with grpc.insecure_channel(args.address) as channel:
            grpc.channel_ready_future(channel).result(timeout=args.timeout)
            stub = observer_pb2_grpc.ObserverStub(channel)

            status = stub.ServerStatus(observer_pb2.ServerStatusRequest(), timeout=args.timeout)
            emit("ServerStatus", status)

            nodes = stub.GetNodes(observer_pb2.GetNodesRequest(), timeout=args.timeout)
            emit("GetNodes", nodes)

            request = observer_pb2.GetFlowsRequest(
                number=args.number,
                whitelist=[
                    flow_pb2.FlowFilter(verdict=[flow_pb2.Verdict.Value(args.verdict)])
                ],
            )
            for response in stub.GetFlows(request, timeout=args.timeout):
                extra = {}
                if response.HasField("flow"):
                    time = response.flow.time
                    extra["time"] = {"seconds": time.seconds, "nanos": time.nanos}
                emit("GetFlows", response, **extra)


if __name__ == "__main__":
    try:
        main()
    except grpc.RpcError as error:
        sys.exit(f"gRPC call failed: {error.code().name}: {error.details()}")
    except grpc.FutureTimeoutError:
        sys.exit("the channel did not become ready in time")
