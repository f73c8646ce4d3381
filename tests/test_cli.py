"""The command line as a new user meets it: help for every flag, ``--version``, the built-in models in
``nxm search``, and bad arguments refused in one line before any model loads."""

import argparse
import json
from pathlib import Path

import pytest

import nxm_kernels
from nxm_kernels.cli import build_parser, main

pytestmark = pytest.mark.usefixtures("one_thread")

GLUE = Path(__file__).resolve().parent / "fixtures" / "glue"


def _subparsers(parser):
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return action.choices
    raise AssertionError("nxm has no subcommands")


def test_every_flag_has_help_text():
    parser = build_parser()
    missing = [f"nxm {a.dest}" for a in parser._actions if not a.help]
    for name, sub in _subparsers(parser).items():
        missing += [f"nxm {name} {a.option_strings[-1] if a.option_strings else a.dest}" for a in sub._actions
                    if not a.help and not isinstance(a, argparse._HelpAction)]
    assert missing == []


def test_version(capsys):
    with pytest.raises(SystemExit) as info:
        main(["--version"])
    assert info.value.code == 0 and capsys.readouterr().out.strip() == f"nxm (nxm-kernels) {nxm_kernels.__version__}"


def test_search_runs_on_the_builtin_tiny_model(tmp_path, capsys):
    out = tmp_path / "plan.json"
    assert main(["search", "--model", "tiny", "--task", "sst2", "--data-dir", str(GLUE), "--target", "0.8",
                 "--out", str(out), "--samples", "16", "--batch-size", "16", "--candidates", "2:4-w8a8", "dense-w4a8",
                 "--cache-dir", str(tmp_path / "cache"), "--plot", "none", "--no-progress"]) == 0
    assert "best plan, by component" in capsys.readouterr().out
    assert set(json.loads(out.read_text()).values()) <= {"2:4-w8a8", "dense-w4a8", "fp"}


@pytest.fixture
def no_model_loads(monkeypatch):
    """Fails the test if a command gets as far as loading a model."""
    import nxm_kernels.models.zoo as zoo

    def forbidden(*args, **kwargs):
        raise AssertionError("the model was loaded before the arguments were checked")

    monkeypatch.setattr(zoo, "load_task_model", forbidden)


@pytest.mark.parametrize("extra, message", [
    (["--candidates", "2:4-w9a8"], "--candidates: "),
    (["--candidates", "fp"], "--candidates must name at least one spec other than 'fp'"),
    (["--data-dir", "{tmp}/no-glue"], "data_dir must be an existing directory"),
])
def test_search_checks_arguments_before_loading_the_model(tmp_path, capsys, no_model_loads, extra, message):
    args = ["search", "--model", "minilm", "--task", "sst2", "--data-dir", str(GLUE), "--target", "0.8",
            "--out", str(tmp_path / "p.json")] + [e.format(tmp=tmp_path) for e in extra]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1


def test_search_missing_model_folder_is_one_line(tmp_path, capsys):
    assert main(["search", "--model", str(tmp_path / "runs" / "sst2"), "--task", "sst2", "--data-dir", str(GLUE),
                 "--target", "0.8", "--out", str(tmp_path / "p.json")]) == 2
    err = capsys.readouterr().err
    assert ("does not exist (built-in models: minilm, tiny, tiny-distilbert, tiny-mpnet, tiny-deberta-v2, "
            "tiny-modernbert)") in err and len(err.strip().splitlines()) == 1


def test_an_unreachable_hub_id_is_one_line(monkeypatch):
    """Offline (HF_HUB_OFFLINE here, so the test does not wait for network retries), a Hub id that is not
    in the local cache is a one-line FileNotFoundError, not transformers' multi-line OSError."""
    import huggingface_hub.constants

    from nxm_kernels.models.zoo import load_task_model

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(FileNotFoundError, match="cannot load model 'nobody/no-such-model'") as info:
        load_task_model("nobody/no-such-model", 2)
    assert "\n" not in str(info.value)
