"""Send requests to a `generate` model over HTTP and gRPC with tritonclient; print one JSON line of results.

Runs in the Triton environment (`.venv-triton`, where tritonclient[all] comes with nvidia-pytriton), started
by tests/engines/test_triton_server.py and bench/triton_generate.py. Standalone: imports nothing of ours.

    python triton_client.py CASE.json      # {"http": "127.0.0.1:P", "grpc": "127.0.0.1:Q", "model": "generate",
                                           #  "requests": [{"text": [...]} | {"input_ids": [[...]],
                                           #  "attention_mask": [[...]]}, each with "max_new_tokens"], "repeat": 1}
Output: {"http": [result per request], "grpc": [...], "seconds": {"http": [...], "grpc": [...]}} where a result
is {"output_ids": [[...]], "output_lengths": [...], "text_output": [...]} or {"error": "..."}.
"""

from __future__ import annotations

import json
import sys
import time
from typing import Any

import numpy as np


def _inputs(module: Any, request: dict[str, Any]) -> list[Any]:
    tensors = []
    if "text" in request:
        text = np.array([t.encode("utf-8") for t in request["text"]], dtype=np.object_)
        tensors.append(("text", text, "BYTES"))
    if "input_ids" in request:
        tensors.append(("input_ids", np.array(request["input_ids"], dtype=np.int64), "INT64"))
    if "attention_mask" in request:
        tensors.append(("attention_mask", np.array(request["attention_mask"], dtype=np.int64), "INT64"))
    if "max_new_tokens" in request:
        tensors.append(("max_new_tokens", np.array([request["max_new_tokens"]], dtype=np.int32), "INT32"))
    out = []
    for name, array, dtype in tensors:
        tensor = module.InferInput(name, list(array.shape), dtype)
        tensor.set_data_from_numpy(array)
        out.append(tensor)
    return out


def _infer(module: Any, client: Any, model: str, request: dict[str, Any]) -> dict[str, Any]:
    outputs = [module.InferRequestedOutput(n) for n in ("output_ids", "output_lengths", "text_output")]
    try:
        result = client.infer(model, _inputs(module, request), outputs=outputs)
    except Exception as err:  # tritonclient's InferenceServerException: the server's message goes back
        return {"error": str(err)}
    texts = [t.decode("utf-8") if isinstance(t, bytes) else str(t) for t in result.as_numpy("text_output")]
    return {
        "output_ids": result.as_numpy("output_ids").tolist(),
        "output_lengths": result.as_numpy("output_lengths").tolist(),
        "text_output": texts,
    }


def main(case_path: str) -> None:
    import tritonclient.grpc as grpcclient
    import tritonclient.http as httpclient

    case = json.loads(open(case_path).read())
    repeat = int(case.get("repeat", 1))
    report: dict[str, Any] = {"seconds": {}}
    clients = {
        "http": (httpclient, httpclient.InferenceServerClient(case["http"], network_timeout=300.0)),
        "grpc": (grpcclient, grpcclient.InferenceServerClient(case["grpc"])),
    }
    for protocol, (module, client) in clients.items():
        results, seconds = [], []
        for request in case["requests"]:
            for _ in range(repeat):
                started = time.perf_counter()
                result = _infer(module, client, case["model"], request)
                seconds.append(time.perf_counter() - started)
            results.append(result)
        report[protocol] = results
        report["seconds"][protocol] = seconds
        client.close()
    print(json.dumps(report))


if __name__ == "__main__":
    main(sys.argv[1])
