"""Every CLI error path ends in one line on stderr with exit code 2 (user error), never a traceback."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

pytest.importorskip("transformers")

from sessa import __version__  # noqa: E402
from sessa.cli import main  # noqa: E402
from sessa.cli.app import COMMANDS  # noqa: E402

TASK = [
    "--task",
    "mqar",
    "--task-option",
    "vocab_size=64",
    "--task-option",
    "seq_len=24",
    "--task-option",
    "n_pairs=4",
    "--task-option",
    "n_train=64",
    "--task-option",
    "n_valid=16",
    "--task-option",
    "n_test=16",
]


def cli(capsys, *args: str) -> tuple[int, str, str]:
    try:
        code = main(list(args))
    except SystemExit as exc:  # argparse errors
        code = int(exc.code or 0)
    out, err = capsys.readouterr()
    return code, out, err


def test_version(capsys):
    code, out, _ = cli(capsys, "--version")
    assert code == 0 and out.strip() == f"sessa {__version__}"


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_every_command_prints_its_help(capsys, command):
    """argparse %-formats help texts: a field comment with a bare "%" ("within 2% of") broke --help."""
    code, out, _ = cli(capsys, command, "--help")
    assert code == 0 and out.startswith(f"usage: sessa {command}")
    if command == "train":
        assert "within 2% of" in out and "--gradient-checkpointing" in out


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    """A tiny finished MQAR run (its checkpoint is the model directory for eval/generate)."""
    out = tmp_path_factory.mktemp("run")
    assert (
        main(
            [
                "train",
                *TASK,
                "--model-option",
                "n_layers=1",
                "--steps",
                "2",
                "--batch-size",
                "8",
                "--eval-every",
                "0",
                "--out-dir",
                str(out),
                "--device",
                "cpu",
            ]
        )
        == 0
    )
    return out


def bad_cases(tmp: Path, run: Path) -> list[tuple[list[str], str]]:
    ckpt = next((run / "checkpoints").glob("step_*"))
    corrupt = tmp / "corrupt"
    corrupt.mkdir(exist_ok=True)
    for name in ("config.json", "train_config.json"):
        (corrupt / name).write_text((ckpt / name).read_text())
    (corrupt / "model.safetensors").write_bytes(b"\x00" * 64)
    blocker = tmp / "a_file"
    blocker.write_text("x")
    fresh = ["--out-dir", str(tmp / "fresh"), "--steps", "1", *TASK]
    return [
        (["train", "--lr", "inf", "--device", "cpu", *fresh], "finite number"),
        (["train", "--device", "tpu", *fresh], "device must be auto or one of"),
        (["train", "--distributed", "ddp", "--device", "cpu", *fresh], "needs a torchrun launch"),
        (["train", "--model-option", "chunksize=64", "--device", "cpu", *fresh], "chunk_size"),
        (["train", "--task-option", "n_pairz=3", "--device", "cpu", *fresh], "n_pairs"),
        (["train", "--no-such-option", "1"], "unrecognized arguments"),
        (["train", "--model", "gpt2"], "invalid choice"),
        (["train", "--config", str(tmp / "missing.json")], "cannot read --config"),
        (["train", "--out-dir", str(run), "--steps", "2", "--device", "cpu", *TASK], "--overwrite"),
        (["compare", "--set", "foo=1"], "--set: unknown key 'foo'"),
        (["compare", "--set", "stepz=1"], "did you mean 'steps'"),
        (["compare", "--out-dir", str(blocker), "--steps", "1"], "a_file"),
        (["sweep", "--lrs", "0"], "lr must be a finite number > 0"),
        (["eval", str(run / "checkpoints" / "nope")], "not a model directory"),
        (["eval", str(corrupt)], "cannot load the model"),
        (["eval", str(ckpt), "--limit", "-5"], "limit must be >= 1"),
        (["eval", str(ckpt), "--out", str(tmp / "missing" / "x.json")], "does not exist"),
        (["eval", str(ckpt), "--task", "symbolsoup"], "--other-task"),
        (["generate", str(ckpt), "--prompt", ""], "non-empty"),
        (["generate", str(ckpt), "--prompt", "ab"], "byte-level vocabulary"),
        (["tail", "--gammas", "1.5"], "gammas must be in (0, 1)"),
        (["operators", "--split", "500"], "split must be in (0, T=128)"),
        (["bench", "--device", "cpu", "--T", "0", "--D", "16"], "must be positive"),
    ]


def test_error_paths_are_one_line_with_exit_code_2(tmp_path, trained, capsys):
    for args, expected in bad_cases(tmp_path, trained):
        code, _, err = cli(capsys, *args)
        assert code == 2, (args, code, err)
        assert "Traceback" not in err and err.count("\n") == 1, (args, err)
        assert expected in err, (args, err)


def test_eval_merges_task_options_and_writes_json(tmp_path, trained, capsys):
    ckpt = next((trained / "checkpoints").glob("step_*"))
    # only n_test changes: the training vocabulary and lengths are kept (they used to be replaced)
    code, out, err = cli(
        capsys, "eval", str(ckpt), "--task-option", "n_test=8", "--out", str(tmp_path / "e.json")
    )
    assert code == 0, err
    saved = json.loads((tmp_path / "e.json").read_text())
    assert saved["options"]["vocab_size"] == 64 and saved["options"]["n_test"] == 8
    assert saved["results"]["test"]["n"] == 8 and "mqar / test" in out


def test_generate_refuses_a_cache_that_cannot_fit(tmp_path, capsys):
    from sessa.models import SessaByteTokenizer, SessaConfig, SessaForCausalLM

    model_dir = tmp_path / "lm"
    SessaForCausalLM(SessaConfig.from_preset("tiny")).save_pretrained(model_dir)
    SessaByteTokenizer().save_pretrained(model_dir)
    code, _, err = cli(capsys, "generate", str(model_dir), "--prompt", "hi", "--max-new-tokens", "1000000000")
    assert code == 2 and "GiB cache" in err and "at most about" in err
    code, out, err = cli(capsys, "generate", str(model_dir), "--prompt", "hi", "--max-new-tokens", "3")
    assert code == 0 and out.startswith("hi"), err
