"""The JSON path of a request, stdlib against orjson and msgspec: ``python -m bench.jsonpath``.

Times, per call, parsing figure 1's /exchange body as echoes does (the stdlib with its
hooks that refuse NaN, Infinity and numbers past a double), the schema check
(fastjsonschema) and the whole of ``validation.message``, beside orjson's and msgspec's
parsing and rendering where they are installed (``pip install orjson msgspec``). Compare
with echoes' CPU per /exchange in figure 1 (about 350 us on the machine of BENCHMARKS.md).
"""

import argparse
import importlib
import json
import timeit
from collections.abc import Callable
from typing import Any

from tornado.escape import json_encode

from echoes.config import Settings
from echoes.http import schemas, validation

BODY = (
    b'{"idempotencyKey":"k123456-0000000042","destination":["user17","user83"],'
    b'"body":{"n":42,"text":"hello there"},"expectsAck":true}'
)
CALLS = 100_000


def per_call_us(work: Callable[[], Any], calls: int) -> float:
    """The best of three runs of ``calls`` calls, in microseconds per call."""
    return min(timeit.repeat(work, number=calls, repeat=3)) / calls * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.jsonpath", description=__doc__)
    parser.add_argument("--calls", type=int, default=CALLS, help="calls per timing")
    calls = parser.parse_args().calls
    settings, document = Settings(), json.loads(BODY)
    cases: dict[str, Callable[[], Any]] = {
        "parse: echoes (stdlib json with its hooks)": lambda: validation.parse_json(BODY),
        "parse: stdlib json, no hooks": lambda: json.loads(BODY),
        "check: the send schema (fastjsonschema)": lambda: schemas.send_errors(document),
        "parse + check + names: validation.message": lambda: validation.message(BODY, settings),
        'render {"sent": 2}: Tornado (stdlib json)': lambda: json_encode({"sent": 2}),
    }
    for name in ("orjson", "msgspec"):
        try:
            module: Any = importlib.import_module(name)
        except ImportError:
            continue
        loads = module.loads if name == "orjson" else module.json.Decoder().decode
        dumps = module.dumps if name == "orjson" else module.json.encode
        cases[f"parse: {name}"] = lambda loads=loads: loads(BODY)
        cases[f'render {{"sent": 2}}: {name}'] = lambda dumps=dumps: dumps({"sent": 2})
    suffix = "" if calls == CALLS else f" --calls={calls}"
    print(f"command: python -m bench.jsonpath{suffix}\n")
    print("| step | us per call |\n| --- | --- |")
    for name, work in cases.items():
        print(f"| {name} | {per_call_us(work, calls):.2f} |")


if __name__ == "__main__":
    main()
