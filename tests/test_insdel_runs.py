"""Insertion/deletion through the run layer: configs/seq_insdel.toml trained, sampled, scored
and its bound reported from the command line; the lines of a text as data; bad input
refused with one line and exit status 2, leaving the run directory as it was."""

from __future__ import annotations

import pytest

from rediff import cli
from rediff.data.sequences import is_progression
from rediff.runs.config import load_config
from rediff.runs.kinds.base import DataConfig
from rediff.runs.kinds.sequences import ARITHMETIC, LINES

BRIEF = [
    "model.width=32",
    "model.depth=1",
    "schedule.T=8",
    "data.n=200",
    "train.sample_every=0",
    "train.checkpoint_every=1000",
    "train.warmup=2",
    "train.threads=2",
]


def run_cli(*args: str) -> int:
    return cli.main(list(args))


def _sets(*extra: str) -> list[str]:
    return [item for s in [*BRIEF, *extra] for item in ("--set", s)]


def test_arithmetic_runs_through_the_command_line(tmp_path, capsys):
    run = tmp_path / "run"
    sets = _sets("train.steps=4", "train.sample_every=4", "sample.n=3")
    assert run_cli("train", "configs/seq_insdel.toml", "--run-dir", str(run), *sets) == 0
    assert (run / "samples" / "step_0000004.txt").is_file() and (run / "loss.png").is_file()
    out = tmp_path / "samples.txt"
    assert run_cli("sample", str(run), "--n", "5", "--out", str(out)) == 0
    written = out.read_text(encoding="utf-8").splitlines()
    assert written[0].startswith("# run") and len(written) == 3 + 5  # title, caption, gap
    assert set("".join(written[3:])) <= set(",0123456789")
    assert f"to {out}" in capsys.readouterr().out
    assert run_cli("nll", str(run), "--n", "16") == 0
    printed = capsys.readouterr().out
    assert "| elbo | bits/token |" in printed and "| 8 |" in printed  # T evaluations
    assert run_cli("eval", str(run), "--n", "8") == 0
    assert "valid progressions" in capsys.readouterr().out


def test_the_data_kinds_give_padded_sequences_of_varying_length():
    config = DataConfig(kind="arithmetic", n=300, length=20)
    data = ARITHMETIC.load(config, 0)
    texts = [data.tokenizer.decode(row[row >= 0]) for row in data.x]
    assert data.x.shape == (300, 20) and all(is_progression(t) for t in texts)
    assert len({len(t) for t in texts}) > 5
    held_out = ARITHMETIC.held_out(config, 0)
    assert not bool((held_out.x == data.x).all())  # another draw
    with pytest.warns(UserWarning, match="longer than data.length = 40"):
        lines = LINES.load(DataConfig(kind="lines", length=40), 0)
    lengths = (lines.x >= 0).sum(1)
    assert int(lengths.min()) >= 1 and int(lengths.max()) <= 40 and len(set(lengths.tolist())) > 20


def test_text_lines_train_briefly(tmp_path):
    from rediff.training import train

    config = load_config(
        "configs/seq_insdel.toml",
        [*BRIEF, 'data.kind="lines"', "data.length=24", "train.steps=2"],
    )
    with pytest.warns(UserWarning, match="left out"):
        train(config, tmp_path / "run", progress=False)
    assert (tmp_path / "run" / "model.safetensors").is_file()


def test_bad_insdel_input_is_one_line_and_exit_2(tmp_path, capsys):
    run = tmp_path / "run"
    assert (
        run_cli("train", "configs/seq_insdel.toml", "--run-dir", str(run), *_sets("train.steps=1"))
        == 0
    )
    capsys.readouterr()
    config = "configs/seq_insdel.toml"
    cases = [
        (["sample", str(run), "--prefix", "3,"], "known tokens (--prefix / --suffix) is not built"),
        (["sample", str(run), "--sampler", "cached"], "sampler 'ancestral', not 'cached'"),
        (["sample", str(run), "--top-p", "0.5"], "top_p is not built"),
        (["sample", str(run), "--overflow", "maybe"], "unknown overflow 'maybe'"),
        (["train", config, "--set", "schedule.insert=-1.0"], "schedule.insert = -1.0 must be >= 0"),
        (["train", config, "--set", "schedule.replace=1.5"], "schedule.replace = 1.5"),
        (["train", config, "--set", "schedule.T=2"], "schedule.T must be >= 4"),
        (["train", config, "--set", 'schedule.survival="square"'], "unknown schedule.survival"),
        (["train", "configs/text_mdlm.toml", "--set", 'data.kind="arithmetic"'], "varying length"),
        (
            ["train", config, "--set", 'loss.kind="masked"'],
            "does not train schedule.kind = 'insdel'",
        ),
        (["train", config, "--set", 'model.net="mlp"'], "no insertion/deletion form"),
        (["train", config, "--set", "data.length=3"], "raise data.length"),
    ]
    for args, message in cases:
        before = sorted(p.name for p in run.iterdir())
        extra = ["--run-dir", str(tmp_path / "new")] if args[0] == "train" else []
        assert run_cli(*args, *extra) == 2, args
        err = capsys.readouterr().err
        assert message in err and len(err.strip().splitlines()) == 1, (args, err)
        assert sorted(p.name for p in run.iterdir()) == before
        assert not (tmp_path / "new").exists(), args


def test_samples_that_outgrow_the_maximum_are_dropped_or_refused(tmp_path):
    import torch

    from rediff.discrete.insdel_model import LengthError
    from rediff.runs import draw, load_run

    run_dir = tmp_path / "run"
    assert (
        run_cli(
            "train", "configs/seq_insdel.toml", "--run-dir", str(run_dir), *_sets("train.steps=1")
        )
        == 0
    )
    run = load_run(run_dir)
    with torch.no_grad():  # every deletion count in the tail: each sample overflows at once
        run.model.net.out.bias[-1] = 100.0
    with pytest.raises(LengthError, match="overflow = 'drop'"):
        draw(run, 3, sampler="ancestral", steps=1, generator=None)
    dropped = draw(run, 3, sampler="ancestral", steps=1, generator=None, overflow="drop")
    assert dropped.x.shape[0] == 0
