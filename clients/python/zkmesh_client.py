#!/usr/bin/env python3
"""A zkmesh client in Python, generated from proto/ with grpcio-tools at start-up.

It shows that any language with gRPC can use the mesh: mutual TLS with the certificates from a
client config (as written by `zkmesh dev`), health checks and server reflection on every
service, then upload, submit, watch and fetch a result, and one refusal with its
machine-readable reason (google.rpc.ErrorInfo in the status details).

    python3 clients/python/zkmesh_client.py --config ~/.zkmesh/client.toml \
        --module guest.wasm --input hello --policy receipt

Prints one JSON object; exits 0 when the task settled with a verified, ok result.
"""

import argparse
import atexit
import hashlib
import importlib
import json
import os
import shutil
import sys
import tempfile
import tomllib

import grpc
from google.rpc import error_details_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import (
    ProtoReflectionDescriptorDatabase,
)
from grpc_status import rpc_status

HERE = os.path.dirname(os.path.abspath(__file__))
PROTO_ROOT = os.path.normpath(os.path.join(HERE, "..", "..", "proto"))
PROTOS = ["types", "registry", "scheduler", "ledger", "verifier"]


def generate_stubs():
    """Compiles proto/zkmesh/v1/*.proto into a temporary package and imports it."""
    from grpc_tools import protoc
    import grpc_tools

    out = tempfile.mkdtemp(prefix="zkmesh-py-")
    atexit.register(shutil.rmtree, out, ignore_errors=True)
    include = os.path.join(os.path.dirname(grpc_tools.__file__), "_proto")
    files = [os.path.join(PROTO_ROOT, "zkmesh", "v1", f"{p}.proto") for p in PROTOS]
    code = protoc.main(
        ["protoc", f"-I{PROTO_ROOT}", f"-I{include}", f"--python_out={out}", f"--grpc_python_out={out}"]
        + files
    )
    if code != 0:
        sys.exit(f"protoc failed on {PROTO_ROOT}")
    for pkg in ["zkmesh", os.path.join("zkmesh", "v1")]:
        open(os.path.join(out, pkg, "__init__.py"), "a").close()
    sys.path.insert(0, out)
    return {
        name: (
            importlib.import_module(f"zkmesh.v1.{name}_pb2"),
            importlib.import_module(f"zkmesh.v1.{name}_pb2_grpc"),
        )
        for name in PROTOS
    }


def channel(config, base, endpoint):
    def read(key):
        path = config[key]
        if not os.path.isabs(path):
            path = os.path.join(base, path)
        with open(path, "rb") as f:
            return f.read()

    creds = grpc.ssl_channel_credentials(
        root_certificates=read("ca"), private_key=read("key"), certificate_chain=read("cert")
    )
    target = endpoint.removeprefix("https://")
    options = [
        # Service certificates name localhost and the loopback addresses.
        ("grpc.ssl_target_name_override", "localhost"),
        # GetResult carries a task's output (up to 16 MiB) and input: over grpcio's 4 MiB default.
        ("grpc.max_receive_message_length", 64 << 20),
    ]
    return grpc.secure_channel(target, creds, options=options)


def error_reason(err):
    """The google.rpc.ErrorInfo reason a failed call carries, if any."""
    status = rpc_status.from_call(err)
    for detail in status.details if status else []:
        info = error_details_pb2.ErrorInfo()
        if detail.Unpack(info):
            return info.reason
    return None


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--config", required=True)
    ap.add_argument("--module", required=True)
    ap.add_argument("--input", default="")
    ap.add_argument("--policy", default="receipt")
    args = ap.parse_args()

    with open(args.config, "rb") as f:
        config = tomllib.load(f)
    base = os.path.dirname(os.path.abspath(args.config))
    pb = generate_stubs()
    types_pb2 = pb["types"][0]
    sched_pb2, sched_grpc = pb["scheduler"]

    report = {"health": {}, "reflection": []}
    services = {
        "registry": "zkmesh.v1.RegistryService",
        "scheduler": "zkmesh.v1.SchedulerService",
        "ledger": "zkmesh.v1.LedgerService",
        "verifier": "zkmesh.v1.VerifierService",
    }
    for key, name in services.items():
        ch = channel(config, base, config[key])
        status = health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(service=name), timeout=10)
        report["health"][name] = health_pb2.HealthCheckResponse.ServingStatus.Name(status.status)
        if key == "scheduler":
            # Reflection alone (no .proto files) is enough to discover the API.
            db = ProtoReflectionDescriptorDatabase(ch)
            report["reflection"] = sorted(db.get_services())
            method = db.FindFileContainingSymbol(name).service[0].method
            report["reflected_methods"] = sorted(m.name for m in method)

    scheduler = sched_grpc.SchedulerServiceStub(channel(config, base, config["scheduler"]))
    with open(args.module, "rb") as f:
        wasm = f.read()
    digest = hashlib.sha256(wasm).hexdigest()
    chunks = [wasm[i : i + 65536] for i in range(0, len(wasm), 65536)]
    requests = [sched_pb2.UploadModuleRequest(chunk=c) for c in chunks]
    requests[0].name = os.path.basename(args.module)
    requests[0].expected_sha256 = digest
    module = scheduler.UploadModule(iter(requests), timeout=30).module

    if args.policy == "receipt":
        policy = types_pb2.VerificationPolicy(kind=types_pb2.POLICY_KIND_RECEIPT)
    else:
        k = int(args.policy.split(":")[1])
        policy = types_pb2.VerificationPolicy(kind=types_pb2.POLICY_KIND_REPLICATE, replicas=k)
    task = scheduler.SubmitTask(
        sched_pb2.SubmitTaskRequest(module_hash=module.module_hash, input=args.input.encode(), policy=policy),
        timeout=30,
    ).task
    events = []
    for message in scheduler.WatchTask(sched_pb2.WatchTaskRequest(task_id=task.task_id), timeout=120):
        events.append(types_pb2.TaskState.Name(message.event.state))
    result = scheduler.GetResult(sched_pb2.GetResultRequest(task_id=task.task_id), timeout=30).result
    # A policy the mesh cannot place (more replicas than it has operators) is refused with a
    # reason a program can branch on.
    try:
        scheduler.SubmitTask(
            sched_pb2.SubmitTaskRequest(
                module_hash=module.module_hash,
                policy=types_pb2.VerificationPolicy(kind=types_pb2.POLICY_KIND_REPLICATE, replicas=9),
            ),
            timeout=30,
        )
        report["refusal"] = None
    except grpc.RpcError as err:
        report["refusal"] = {"code": err.code().name, "reason": error_reason(err)}
    report.update(
        task_id=task.task_id,
        module_hash=module.module_hash,
        events=events,
        state=types_pb2.TaskState.Name(result.state),
        exit=types_pb2.ExitKind.Name(result.exit),
        verdict=types_pb2.Verdict.Name(result.verdict),
        output_text=result.output.decode("utf-8", "replace"),
        credits_charged=result.credits_charged,
    )
    print(json.dumps(report))
    ok = (
        result.state == types_pb2.TASK_STATE_SETTLED
        and result.exit == types_pb2.EXIT_KIND_OK
        and result.verdict == types_pb2.VERDICT_VERIFIED
    )
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
