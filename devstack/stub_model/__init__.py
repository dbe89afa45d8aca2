"""Local OpenAI-compatible stub model: real HTTP, scripted through the prompt text.

Directives may appear anywhere in the concatenated message contents: ``stub:429``,
``stub:500``, ``stub:refuse``, ``stub:hang``, ``stub:sleep=SECONDS``,
``stub:fail=STATUSxN``, ``stub:tokens=N`` (answer length), ``stub:pace=MS`` (time per streamed
token) and ``stub:cut=N[xM]`` (the first M answers to this exact prompt, default 1, lose their
connection after N tokens). Without a failure directive the answer is derived
deterministically from the prompt, with usage figures; ``"stream": true`` answers with
chat.completion.chunk events, one token each, as the API does.

CLI: ``python -m devstack.stub_model [--host H] [--port P]``; in-process:
``StubModelServer(port=0).start()``, then ``.url``, ``.calls()``, ``.stop()``.
"""

from devstack.stub_model.answers import Directives, count_tokens, schema_instance
from devstack.stub_model.server import (
    DEFAULT_HOST,
    DEFAULT_PORT,
    StubCall,
    StubModelServer,
    main,
)

__all__ = [
    "DEFAULT_HOST",
    "DEFAULT_PORT",
    "Directives",
    "StubCall",
    "StubModelServer",
    "count_tokens",
    "main",
    "schema_instance",
]
