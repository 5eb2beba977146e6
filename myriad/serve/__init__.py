"""``myriad serve``: a REST API and a web page for interactive inspection.

Modules, one job each:

- :mod:`myriad.serve.limits`: upload, image, pixel-budget, question and answer limits, per-request temporary files;
- :mod:`myriad.serve.security`: Host, Origin and token checks, who owns a request;
- :mod:`myriad.serve.bodies`: each route's streamed body limit and the body timeouts;
- :mod:`myriad.serve.connections`: the connection cap and the request-header deadline (uvicorn's h11 protocol);
- :mod:`myriad.serve.memory`: the bytes a profile or a session holds;
- :mod:`myriad.serve.experts`: which expert and which (bounded) expert settings a client may choose;
- :mod:`myriad.serve.bounds`: the shared LMM with every answer capped in tokens and seconds;
- :mod:`myriad.serve.errors`: errors that carry their HTTP status;
- :mod:`myriad.serve.profiles`: the thread-safe store of fitted profiles and chat sessions, per client, with
  quotas per token in count and bytes;
- :mod:`myriad.serve.service`: the shared models, the inference lock and the calls into
  :class:`myriad.inspection.Inspector` (used by the API and the page alike);
- :mod:`myriad.serve.render`: the overlay PNG of a result;
- :mod:`myriad.serve.schemas`: the JSON shapes of the API (its OpenAPI schema);
- :mod:`myriad.serve.app`: the FastAPI application factory :func:`create_app`;
- :mod:`myriad.serve.page`: the static web page (``static/``) served at ``/ui/``, a client of the API.

Nothing heavy is imported here: ``from myriad.serve import create_app`` loads FastAPI on first use.
"""

from __future__ import annotations

from typing import Any

__all__ = ["create_app"]


def __getattr__(name: str) -> Any:
    if name == "create_app":
        from myriad.serve.app import create_app

        return create_app
    raise AttributeError(f"module 'myriad.serve' has no attribute {name!r}")
