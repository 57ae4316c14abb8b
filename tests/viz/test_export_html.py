"""The self-contained explorer file: export_html / render_html / html_for_notebook / to_payload."""

from __future__ import annotations

import html
import json
import re
from html.parser import HTMLParser

import pytest
import torch

from attnkit.viz.web import STATIC_DIR, export_html, html_for_notebook, render_html, to_payload

EVIL = "</script><script>alert(1)</script>"


def _payload(n_tokens: int = 4, n_layers: int = 2, n_heads: int = 3) -> dict:
    torch.manual_seed(0)
    w = torch.randn(n_layers, n_heads, n_tokens, n_tokens).softmax(-1)
    tokens = ["[CLS]", "a", EVIL, "b & <c>", "[SEP]", "x", "y", "z"][:n_tokens]
    return {"tokens": tokens, "decoder_tokens": None,
            "kinds": {"self": {"layers": list(range(n_layers)), "heads": list(range(n_heads)),
                               "weights": w.tolist()}},
            "model": {"family": "bert", "n_layers": n_layers, "n_heads": n_heads},
            "text": "a " + EVIL}


class _Tags(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.tags: list[tuple[str, dict[str, str | None]]] = []
        self.data: dict[str, str] = {}
        self._open: str | None = None

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        self.tags.append((tag, a))
        self._open = a.get("id") if tag == "script" else None

    def handle_endtag(self, tag):
        self._open = None

    def handle_data(self, data):
        if self._open:
            self.data[self._open] = self.data.get(self._open, "") + data


def _parse(doc: str) -> _Tags:
    p = _Tags()
    p.feed(doc)
    p.close()
    return p


def test_export_is_self_contained(tmp_path):
    payload = _payload()
    out = export_html(payload, tmp_path / "sub" / "attn.html", title="my <title>")
    assert out.is_file()
    doc = out.read_text(encoding="utf-8")
    tags = _parse(doc)
    # no reference to any other file or to the network
    for tag, attrs in tags.tags:
        assert "src" not in attrs and "href" not in attrs, (tag, attrs)
    assert not any(tag == "link" for tag, _ in tags.tags)
    assert not re.search(r"""(src|href)\s*=\s*["']?\s*(https?:|//)""", doc, re.I)
    assert "@import" not in doc and "url(" not in doc
    # CSS and JS inlined
    assert "#lines line" in doc and "function renderLines" in doc
    assert sum(tag == "style" for tag, _ in tags.tags) == 1
    scripts = [a for tag, a in tags.tags if tag == "script"]
    assert len(scripts) == 2  # the data block and the app; the evil token opened nothing
    assert doc.count("</script>") == 2
    assert "<title>my &lt;title&gt;</title>" in doc


def test_data_embedded_and_round_trips(tmp_path):
    payload = _payload()
    doc = export_html(payload, tmp_path / "a.html").read_text(encoding="utf-8")
    tags = _parse(doc)
    block = [a for t, a in tags.tags if t == "script" and a.get("id") == "attn-data"]
    assert block == [{"type": "application/json", "id": "attn-data"}]
    data = json.loads(tags.data["attn-data"])
    assert data == to_payload(payload)
    assert data["tokens"][2] == EVIL  # escaped in the file, intact once parsed
    w = torch.tensor(data["kinds"]["self"]["weights"])
    ref = torch.tensor(payload["kinds"]["self"]["weights"])
    assert w.shape == (2, 3, 4, 4)
    torch.testing.assert_close(w, ref, atol=1e-4, rtol=0)
    # the data block sits before the app script, which reads it at start-up
    assert doc.index('id="attn-data"') < doc.index("function renderLines")


def test_html_for_notebook_is_an_iframe_of_the_page():
    payload = _payload()
    frag = html_for_notebook(payload)
    m = re.fullmatch(r'<iframe srcdoc="([^"]*)" sandbox="allow-scripts" style="([^"]*)">'
                     r"</iframe>", frag)
    assert m, frag[:200]
    assert "<script" not in m.group(1)  # fully attribute-escaped
    assert html.unescape(m.group(1)) == render_html(payload)
    assert "height:" in m.group(2)


def test_to_payload_accepts_captures_json_and_tensors():
    payload = _payload()

    class FakeCapture:
        def to_json(self):
            return json.dumps(payload)

    assert to_payload(FakeCapture()) == to_payload(payload)
    assert to_payload(json.dumps(payload)) == to_payload(payload)
    tensors = {**payload, "kinds": {"self": {
        "layers": torch.tensor([0, 1]), "heads": [0, 1, 2],
        "weights": torch.tensor(payload["kinds"]["self"]["weights"])}}}
    assert to_payload(tensors) == to_payload(payload)
    flat = {"tokens": payload["tokens"], "layers": [0, 1], "heads": [0, 1, 2],
            "weights": {"self": payload["kinds"]["self"]["weights"]}}
    got = to_payload(flat)
    assert got["kinds"] == to_payload(payload)["kinds"]
    assert got["model"] == {"family": "model", "n_layers": 2, "n_heads": 3}


def test_to_payload_seq2seq_axes():
    enc, dec = 3, 2
    p = {"tokens": ["a", "b", "c"], "decoder_tokens": ["x", "y"],
         "kinds": {"cross": {"layers": [0], "heads": [0], "weights": [[[[1 / enc] * enc] * dec]]},
                   "encoder": {"layers": [0], "heads": [0],
                               "weights": [[[[1 / enc] * enc] * enc]]},
                   "decoder": {"layers": [0], "heads": [0], "weights": [[[[0.5] * dec] * dec]]}},
         "model": {"family": "seq2seq", "n_layers": 1, "n_heads": 1}}
    assert list(to_payload(p)["kinds"]) == ["encoder", "decoder", "cross"]


@pytest.mark.parametrize("change, match", [
    (lambda p: p["kinds"]["self"].update(layers=[0]), "layers"),
    (lambda p: p["kinds"]["self"].update(heads=[0, 1]), "heads"),
    (lambda p: p.update(tokens=p["tokens"][:3]), r"\(3, 3\)"),
    (lambda p: p["kinds"].update(spam=p["kinds"]["self"]), "unknown attention kind"),
    (lambda p: p["kinds"].update(cross=p["kinds"]["self"]), "decoder_tokens"),
    (lambda p: p.update(kinds={}), "no attention weights"),
    (lambda p: p["kinds"]["self"]["weights"][0][0][0].__setitem__(0, float("nan")),
     "not finite"),
])
def test_to_payload_rejects_bad_shapes(change, match):
    p = _payload()
    change(p)
    with pytest.raises(ValueError, match=match):
        to_payload(p)


def test_static_page_has_the_inlining_marks():
    page = (STATIC_DIR / "index.html").read_text(encoding="utf-8")
    for mark in ('<link rel="stylesheet" href="static/style.css">',
                 '<script src="static/app.js"></script>', "<!--ATTN-DATA-->"):
        assert page.count(mark) == 1
    for name in ("app.js", "style.css"):
        text = (STATIC_DIR / name).read_text(encoding="utf-8")
        assert "http://" not in text.replace('"http://www.w3.org/2000/svg"', "")
        assert "https://" not in text
