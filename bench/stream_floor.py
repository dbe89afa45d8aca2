"""The floor under figure 9: N streams straight from the stub model through the openai client.

`python -m bench.stream_floor [N]` starts the stub model and streams N answers of 100 tokens
paced 50 ms (5 s each) at once from one process: no api, worker or database. Its ratio to the
ideal 5 s is the most figure 9 (the same streams through the whole pipeline) could reach here.
"""

from __future__ import annotations

import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor

import openai

from devstack.supervisor import free_port, wait_for_port

IDEAL_SECONDS = 5.0
PROMPT = "stub:tokens=100 stub:pace=50 floor {index}"


def stream_once(client: openai.OpenAI, index: int) -> int:
    """One streamed answer; how many pieces of text it had."""
    stream = client.chat.completions.create(
        model="gpt-4o-mini",
        messages=[{"role": "user", "content": PROMPT.format(index=index)}],
        stream=True,
        stream_options={"include_usage": True},
    )
    return sum(1 for chunk in stream if chunk.choices and chunk.choices[0].delta.content)


def main(argv: list[str]) -> int:
    """Print N streams' elapsed time and their ratio to the ideal."""
    count = int(argv[0]) if argv else 100
    port = free_port()
    stub = subprocess.Popen(
        [sys.executable, "-m", "devstack.stub_model", "--port", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        if not wait_for_port(port, 30):
            raise RuntimeError("the stub model did not listen")
        client = openai.OpenAI(api_key="bench", base_url=f"http://127.0.0.1:{port}/v1")
        started = time.monotonic()
        with ThreadPoolExecutor(count) as pool:
            pieces = list(pool.map(lambda i: stream_once(client, i), range(count)))
        elapsed = time.monotonic() - started
    finally:
        stub.terminate()
        stub.wait(timeout=10)
    assert min(pieces) == 100, pieces
    print(f"{count} streams of 5 s: {elapsed:.2f} s, {IDEAL_SECONDS / elapsed:.2f} of ideal")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
