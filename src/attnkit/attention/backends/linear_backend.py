"""``linear``: kernelized linear attention (work in progress)."""

NAME = "linear"
EXACT = False


def supports(req) -> str | None:
    return "not available yet"


def forward(q, k, v, **kw):  # pragma: no cover
    raise NotImplementedError
