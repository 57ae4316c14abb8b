"""End to end: `attnkit train` (few steps) -> `attnkit convert` -> plain `transformers`.

For each objective and tokenizer kind, the converted directory loads with
``AutoModelFor{CausalLM,MaskedLM,Seq2SeqLM}`` and ``AutoTokenizer``; the model's logits equal
attnkit's, and ``pipeline("text-generation")`` / ``pipeline("fill-mask")`` /
``model.generate`` give the same greedy text as ``attnkit generate --temperature 0`` — on the
run itself and on the converted directory."""

import json

import pytest
import torch
from _cli_util import cli, error_line

from attnkit.train import load_model

transformers = pytest.importorskip("transformers")
pytestmark = pytest.mark.slow

SMALL = ["--set", "model.n_layers=1", "--set", "model.d_model=32", "--set", "model.n_heads=2"]
# name -> (train flags, AutoModel class, prompts)
RUNS = {
    "char-gpt2": (["--steps", 60, *SMALL], "AutoModelForCausalLM",
                  ["The with ", "def f(x):\n    "]),
    "bpe-llama": (["--preset", "llama-tiny", "--steps", 40, "--vocab-size", 400,
                   "--set", "model.n_layers=1"], "AutoModelForCausalLM",
                  ["The with ", "class A:"]),
    "wordpiece-mlm": (["--objective", "mlm", "--steps", 30, "--vocab-size", 300, *SMALL,
                       "--set", "model.d_ff=64", "--set", "data.seq_len=32"],
                      "AutoModelForMaskedLM", ["The [MASK] statement", "def f(x): [MASK] x"]),
    "char-mlm": (["--objective", "mlm", "--tokenizer", "char", "--steps", 30, *SMALL,
                  "--set", "model.d_ff=64", "--set", "data.seq_len=32"],
                 "AutoModelForMaskedLM", ["The wi<mask>h statement"]),
    "bpe-t5": (["--objective", "seq2seq", "--steps", 30, "--vocab-size", 100,
                "--set", "model.n_layers=1", "--set", "model.n_decoder_layers=1",
                "--set", "model.d_model=32", "--set", "model.d_ff=64",
                "--set", "model.head_dim=8"], "AutoModelForSeq2SeqLM",
               ["alpha beta gamma", "zeta eta theta"]),
}
WORDS = "alpha beta gamma delta epsilon zeta eta theta iota kappa".split()


@pytest.fixture(scope="module")
def pairs(tmp_path_factory):
    path = tmp_path_factory.mktemp("pairs") / "pairs.jsonl"
    with path.open("w") as f:
        for i in range(60):
            src = " ".join(WORDS[(i * 7 + k * 3) % 10] for k in range(3))
            f.write(json.dumps({"source": src, "target": " ".join(reversed(src.split()))})
                    + "\n")
    return path


@pytest.fixture(scope="module", params=list(RUNS))
def exported(request, tmp_path_factory, corpus_file, pairs):
    """``(name, run dir, converted HF dir)`` of a tiny run trained through the CLI."""
    name = request.param
    flags, _, _ = RUNS[name]
    root = tmp_path_factory.mktemp(name)
    data = pairs if "--objective" in flags and "seq2seq" in flags else corpus_file
    r = cli("train", "--data", data, *flags, "--out", root / "run", "--sample-chars", 0)
    assert r.exit_code == 0, (r.stdout, r.stderr)
    r = cli("convert", root / "run", root / "hf")
    assert r.exit_code == 0, r.stderr
    assert "tokenizer for AutoTokenizer" in r.stdout
    return name, root / "run", root / "hf"


def _attnkit_generate(ckpt, prompt, n, penalty=1.0):
    r = cli("generate", "-k", ckpt, prompt, "-n", n, "--temperature", 0, "--no-stream",
            "--repetition-penalty", penalty)
    assert r.exit_code == 0, r.stderr
    assert r.stdout.endswith("\n")
    return r.stdout[:-1]


def test_transformers_loads_and_generates_the_same(exported):
    name, run, hf_dir = exported
    _, auto_class, prompts = RUNS[name]
    model = getattr(transformers, auto_class).from_pretrained(hf_dir).eval()
    tok = transformers.AutoTokenizer.from_pretrained(hf_dir)
    ours = load_model(run / "best")

    # the same function: logits on a framed prompt
    enc = tok(prompts[0], return_tensors="pt")
    with torch.no_grad():
        if auto_class == "AutoModelForSeq2SeqLM":
            dec = torch.tensor([[model.config.decoder_start_token_id, 5, 6]])
            got = model(**enc, decoder_input_ids=dec).logits
            want = ours(enc["input_ids"], enc["attention_mask"], dec).logits
        else:
            got = model(**enc).logits
            want = ours(enc["input_ids"]).logits
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)

    for prompt in prompts:
        # a repetition penalty (CTRL's, as both implement it) keeps tiny models' greedy text
        # from collapsing into one repeated token
        for penalty in (1.0, 3.0) if auto_class != "AutoModelForMaskedLM" else (1.0,):
            if auto_class == "AutoModelForCausalLM":
                pipe = transformers.pipeline("text-generation", model=model, tokenizer=tok,
                                             device="cpu")
                text = pipe(prompt, max_new_tokens=16, do_sample=False,
                            repetition_penalty=penalty)[0]["generated_text"]
                n = 16
            elif auto_class == "AutoModelForMaskedLM":
                pipe = transformers.pipeline("fill-mask", model=model, tokenizer=tok,
                                             device="cpu")
                text = pipe(prompt, top_k=1)[0]["sequence"]
                n = 1
            else:
                out = model.generate(**tok(prompt, return_tensors="pt"), max_new_tokens=12,
                                     do_sample=False, repetition_penalty=penalty)
                text = tok.decode(out[0], skip_special_tokens=True)
                n = 12
            assert _attnkit_generate(run, prompt, n, penalty) == text, (name, prompt, penalty)
            assert _attnkit_generate(hf_dir, prompt, n, penalty) == text, (name, prompt)


def test_unexportable_model_is_one_error_and_writes_nothing(tmp_path, pairs):
    """transformer-base (sinusoidal, post-norm) has no T5 form: a one-line error naming what
    T5 cannot express; an existing destination survives --overwrite."""
    run = tmp_path / "run"
    r = cli("train", "--objective", "seq2seq", "--preset", "transformer-base", "--data", pairs,
            "--steps", 1, "--vocab-size", 100, "--set", "model.n_layers=1",
            "--set", "model.n_decoder_layers=1", "--set", "model.d_model=32",
            "--set", "model.n_heads=2", "--set", "model.d_ff=64", "--out", run,
            "--sample-chars", 0)
    assert r.exit_code == 0, r.stderr
    line = error_line(cli("convert", run, tmp_path / "hf"))
    assert "cannot be saved as T5" in line and "position='sinusoidal'" in line
    assert not (tmp_path / "hf").exists()
    keep = tmp_path / "keep"
    keep.mkdir()
    (keep / "precious.txt").write_text("x")
    error_line(cli("convert", run, keep, "--overwrite"))
    assert (keep / "precious.txt").read_text() == "x"
