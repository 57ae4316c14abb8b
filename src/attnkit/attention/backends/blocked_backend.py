"""``blocked``: exact block-sparse attention (work in progress)."""

NAME = "blocked"
EXACT = True


def supports(req) -> str | None:
    return "not available yet"


def forward(q, k, v, **kw):  # pragma: no cover
    raise NotImplementedError
