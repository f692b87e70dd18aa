"""What a Python user expects of a package: --version, py.typed, help that says what each option means and its
default, and one reading of a time string however it is given."""
from __future__ import annotations

from pathlib import Path

import pytest

import archrelax
from archrelax.cli import build_parser
from archrelax.cli import main as cli_main
from archrelax.train import TrainConfig

ROOT = Path(__file__).resolve().parents[1]


def _pyproject() -> dict:
    tomllib = pytest.importorskip("tomllib")  # Python >= 3.11; the package itself runs on 3.10
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


def test_version(capsys):
    with pytest.raises(SystemExit) as e:
        cli_main(["--version"])
    assert e.value.code == 0
    assert capsys.readouterr().out.strip() == f"archrelax {archrelax.__version__}"
    meta = _pyproject()
    assert meta["project"]["dynamic"] == ["version"]  # written once, in archrelax.__version__
    assert meta["tool"]["setuptools"]["dynamic"]["version"] == {"attr": "archrelax.__version__"}


def test_py_typed_ships():
    assert (Path(archrelax.__file__).parent / "py.typed").is_file()
    meta = _pyproject()
    assert "py.typed" in meta["tool"]["setuptools"]["package-data"]["archrelax"]


def test_every_analysis_option_says_what_it_means_and_its_default():
    from archrelax.analysis._cli import _OPTIONS, HELP
    from archrelax.analysis.settings import AnalysisSettings

    assert set(_OPTIONS) <= set(HELP), f"options without a meaning in analysis/_cli.py HELP: {set(_OPTIONS) - set(HELP)}"
    sub = build_parser()._subparsers._group_actions[0].choices["analyse"]
    text = " ".join(sub.format_help().split())
    defaults = AnalysisSettings()
    for name in _OPTIONS:
        default = getattr(defaults, name)
        shown = "none" if default is None else str(default)
        assert f"--{name.replace('_', '-')}" in text
        assert f"{' '.join(HELP[name].split())} (default: {shown}, or the spec's analysis_settings.{name})" in text, name


def test_one_parser_of_time_strings():
    from archrelax.train._cli import config_from_args

    assert TrainConfig(eval_times="0,1").eval_times == [0.0, 1.0]
    assert TrainConfig(snapshots="0, .5, 2").snapshots == [0.0, 0.5, 2.0]
    assert TrainConfig(eval_times="log:5").eval_times == "log:5" and TrainConfig(eval_times="every").eval_times == "every"
    args = build_parser().parse_args(["train", "vanilla_cnn", "--eval-times", "0,1", "--snapshots", "0,.5,2",
                                      "--out", "x"])
    cfg = config_from_args(args)
    assert cfg == TrainConfig(eval_times="0,1", snapshots="0,.5,2")
    with pytest.raises(ValueError, match=r"eval_times='0,x' is not valid; allowed: 'log:N'"):
        TrainConfig(eval_times="0,x")
    with pytest.raises(SystemExit):
        build_parser().parse_args(["train", "vanilla_cnn", "--eval-times", "0,x", "--out", "x"])
