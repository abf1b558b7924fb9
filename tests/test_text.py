"""Text through the run layer: the tokenizers, the pydoc corpus and its split, masked
diffusion and the autoregressive baseline trained, sampled and scored from the command line,
and bad input refused."""

from __future__ import annotations

import collections
import json
import math

import pytest
import torch

from rediff import cli
from rediff.data import Tokenizer, pydoc_corpus
from rediff.data.text import sequences, split_text
from rediff.evaluation import run_nll
from rediff.runs.config import load_config
from rediff.training import train

BRIEF = [
    "data.length=32",
    "model.width=64",
    "model.depth=2",
    "train.sample_every=0",
    "train.checkpoint_every=1000",
    "train.ema_half_life=2000.0",
    "train.lr=3e-3",
    "train.warmup=20",
    "train.threads=2",
]


def test_tokenizers_round_trip_and_refuse_unknown_characters():
    text = "def f(x):\n    return x ** 2  # ß, “quotes”"
    char = Tokenizer.fit(text)
    assert char.size == len(set(text)) and char.decode(char.encode(text)) == text
    byte = Tokenizer.fit(text, "byte")
    assert byte.size == 256 and byte.decode(byte.encode(text)) == text
    assert byte.encode("é").tolist() == [0xC3, 0xA9]  # UTF-8 bytes, nothing unknown
    with pytest.raises(ValueError, match=r"2 character\(s\) outside .*'Q', 'Z'"):
        char.encode("QZ f")
    assert Tokenizer.from_json(json.loads(json.dumps(char.to_json()))) == char


def test_the_pydoc_corpus_splits_deterministically_into_sequences():
    text = pydoc_corpus()
    assert len(text) > 300_000 and text == pydoc_corpus()
    train_text, held_out = split_text(text)
    assert train_text + held_out == text and len(held_out) == pytest.approx(0.1 * len(text), 1)
    ids = Tokenizer.fit(text).encode(held_out)
    x = sequences(ids, 100)
    assert x.shape == (len(held_out) // 100, 100) and torch.equal(x[1], ids[100:200])
    with pytest.raises(ValueError, match="fewer than one sequence"):
        sequences(ids[:5], 100)


def unigram_entropy(text: str) -> float:
    counts, n = collections.Counter(text), len(text)
    return -sum(c / n * math.log2(c / n) for c in counts.values())


@pytest.mark.parametrize("config", ["text_mdlm", "text_ar"])
def test_a_brief_run_beats_the_unigram_entropy_on_held_out_text(config, tmp_path):
    """300 steps of a small transformer (2 blocks of width 64, sequences of 32 characters):
    held-out bits per character (the masked ELBO from 8 stratified times, or the exact
    autoregressive likelihood) below the corpus's unigram entropy by more than 4 standard
    errors."""
    settings = load_config(f"configs/{config}.toml", [*BRIEF, "train.steps=300"])
    train(settings, tmp_path / "run", progress=False)
    row = run_nll(tmp_path / "run", n=256, vlb_steps=8).row
    entropy = unigram_entropy(pydoc_corpus())
    assert row.unit == "bits/char" and row.method == ("elbo" if "mdlm" in config else "exact")
    assert row.mean + 4 * row.se < entropy, (row, entropy)


def run_cli(*args: str) -> int:
    return cli.main(list(args))


@pytest.mark.parametrize("config", ["text_mdlm", "text_ar"])
def test_text_runs_through_the_command_line(config, tmp_path, capsys):
    run = tmp_path / "run"
    sets = [
        item
        for s in [*BRIEF, "train.steps=4", "train.sample_every=4", "sample.n=2"]
        for item in ("--set", s)
    ]
    assert run_cli("train", f"configs/{config}.toml", "--run-dir", str(run), *sets) == 0
    assert (run / "samples" / "step_0000004.txt").is_file() and (run / "loss.png").is_file()
    vocabulary = json.loads((run / "run.json").read_text(encoding="utf-8"))["data"]["tokenizer"]
    assert vocabulary["kind"] == "char" and "d" in vocabulary["characters"]
    out = tmp_path / "samples.txt"
    args = ["sample", str(run), "--n", "3", "--steps", "8", "--prefix", "def ", "--out", str(out)]
    assert run_cli(*args) == 0
    printed = capsys.readouterr().out
    blocks = out.read_text(encoding="utf-8").split("=== sample ")[1:]
    assert len(blocks) == 3 and all(b.split("\n", 1)[1].startswith("def ") for b in blocks)
    assert "def " in printed and f"to {out}" in printed
    assert run_cli("nll", str(run), "--n", "8", "--vlb-steps", "2") == 0
    assert "bits/char" in capsys.readouterr().out


def test_masked_diffusion_fills_in_a_suffix_from_the_command_line(tmp_path, capsys):
    run = tmp_path / "run"
    sets = [item for s in [*BRIEF, "train.steps=2"] for item in ("--set", s)]
    assert run_cli("train", "configs/text_mdlm.toml", "--run-dir", str(run), *sets) == 0
    out = tmp_path / "filled.txt"
    args = ["sample", str(run), "--n", "2", "--steps", "4", "--suffix", "end", "--out", str(out)]
    assert run_cli(*args, "--prefix", "if ", "--top-p", "0.9") == 0
    for block in out.read_text(encoding="utf-8").split("=== sample ")[1:]:
        body = block.split("\n", 1)[1].rstrip("\n")
        assert body.startswith("if ") and body.endswith("end"), body


BAD_SAMPLES = [
    (["--prefix", "\u2603"], "outside the run's vocabulary"),
    (["--prefix", "x" * 40], "more than the run's sequences of 32"),
    (["--top-p", "1.5"], "top_p must be"),
    (["--out", "samples.png"], "text samples are written to .txt"),
    (["--guidance-scale", "2"], "classifier-free guidance"),
]


def test_bad_text_input_is_one_line_and_exit_2(tmp_path, capsys):
    run = tmp_path / "run"
    sets = [item for s in [*BRIEF, "train.steps=1"] for item in ("--set", s)]
    assert run_cli("train", "configs/text_ar.toml", "--run-dir", str(run), *sets) == 0
    capsys.readouterr()
    cases = [
        *[(["sample", str(run), *args], message) for args, message in BAD_SAMPLES],
        (["sample", str(run), "--suffix", "x"], "only continue a prefix"),
        (["nll", str(run), "--method", "vlb"], "use --method exact"),
        (["train", "configs/text_ar.toml", "--set", "data.length=1"], "data.length must be"),
        (
            ["train", "configs/text_ar.toml", "--set", "data.path=/nonexistent.txt"],
            "does not exist",
        ),
        (
            ["train", "configs/text_ar.toml", "--set", "data.tokenizer=words"],
            "unknown data.tokenizer",
        ),
        (
            ["train", "configs/text_ar.toml", "--set", 'schedule.kind="masked"'],
            "loss.kind = 'autoregressive' does not train",
        ),
        (
            ["train", "configs/text_mdlm.toml", "--set", 'schedule.masking="square"'],
            "unknown schedule.masking",
        ),
        (["train", "configs/text_mdlm.toml", "--set", "schedule.T=10"], "not a parameter"),
        (["train", "configs/text_ar.toml", "--set", 'model.net="mlp"'], "no causal form"),
    ]
    for args, message in cases:
        before = sorted(p.name for p in run.iterdir())
        assert (
            run_cli(*args, *(["--run-dir", str(tmp_path / "new")] if args[0] == "train" else []))
            == 2
        ), args
        err = capsys.readouterr().err
        assert message in err and len(err.strip().splitlines()) == 1, (args, err)
        assert sorted(p.name for p in run.iterdir()) == before
        assert not (tmp_path / "new").exists(), args


def test_a_changed_text_is_refused_when_scoring(tmp_path):
    """The run's vocabulary is saved with it: text tokenised differently is an error, not
    silently different token ids."""
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("abcd " * 400, encoding="utf-8")
    config = load_config("configs/text_ar.toml", [*BRIEF, "train.steps=1", f"data.path={corpus}"])
    train(config, tmp_path / "run", progress=False)
    corpus.write_text("abcde " * 400, encoding="utf-8")
    with pytest.raises(ValueError, match="the text changed since training"):
        run_nll(tmp_path / "run", n=4)


def test_class_conditional_masked_diffusion_samples_with_guidance(tmp_path):
    """Token sequences with labels (data.kind = "categories"), masked diffusion with label
    dropout, then rediff sample --class --guidance-scale: classifier-free guidance of a
    discrete model end to end (its formula is tested against the oracle in test_masked)."""
    import numpy as np

    g = np.random.default_rng(0)
    labels = g.integers(0, 2, 200)
    x = (g.integers(0, 3, (200, 8)) + 3 * labels[:, None]).astype(np.int64)
    np.savez(tmp_path / "tokens.npz", x=x, labels=labels)
    run = tmp_path / "run"
    sets = [
        f"data.path={tmp_path / 'tokens.npz'}",
        'data.kind="categories"',
        "model.num_classes=2",
        "train.label_dropout=0.2",
        "train.steps=2",
        *[s for s in BRIEF if not s.startswith("data.")],
    ]
    args = [item for s in sets for item in ("--set", s)]
    assert run_cli("train", "configs/text_mdlm.toml", "--run-dir", str(run), *args) == 0
    out = tmp_path / "guided.npz"
    options = ["--class", "1", "--guidance-scale", "2", "--steps", "4", "--n", "5"]
    assert run_cli("sample", str(run), *options, "--out", str(out)) == 0
    saved = np.load(out)
    assert saved["samples"].shape == (5, 8) and (saved["labels"] == 1).all()
