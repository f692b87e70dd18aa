"""Settings declared once: TrainConfig's fields build the `archrelax train` options, the spec's train.* keys,
the planned runs' configs and run ids, and the table of docs/config.md; numbers in every ordinary notation;
the bad inputs of the settings path, each a one-line error."""
from __future__ import annotations

import argparse
import dataclasses
import json
import math
import typing
from pathlib import Path

import pytest

from archrelax.cli import build_parser
from archrelax.cli import main as cli_main
from archrelax.protocol import load_spec, make_plan, spec_from_dict
from archrelax.protocol.settings_doc import settings_rows
from archrelax.protocol.spec import (
    EXPERIMENT_DEFAULTS, ExperimentSpec, RelaxedOptions, SpecError, StopRule, TrainOptions,
)
from archrelax.train import TrainConfig
from archrelax.train._cli import config_from_args
from archrelax.train.config import NOT_IDENTITY, RUNTIME_FIELDS, option_name

DOCS = Path(__file__).resolve().parents[1] / "docs" / "config.md"
FIELDS = {f.name: f for f in dataclasses.fields(TrainConfig)}
HINTS = typing.get_type_hints(TrainConfig)
TINY = {"model_kwargs": {"width": 2}, "data": "synthetic:1x28x28:2:40:20",
        "cnn": {"epochs": 2, "until_zero_loss": False}, "relaxed": {"epochs": 1, "until_zero_loss": False},
        "switch_times": [0, 1], "targets": ["fc"], "baselines": ["fcn"]}


def default(name: str):
    f = FIELDS[name]
    return f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default


def train_parser() -> argparse.ArgumentParser:
    return build_parser()._subparsers._group_actions[0].choices["train"]


# ---- one declaration -----------------------------------------------------------------------------------


def test_docs_table_is_the_code():
    """docs/config.md's table, parsed, equals settings_rows() (built from the fields) row by row and cell by cell."""
    lines = DOCS.read_text(encoding="utf-8").splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("| field |"))
    split = lambda line: [c.strip().replace("\\|", "|") for c in line.strip().strip("|").split(" | ")]  # noqa: E731
    head = split(lines[start])
    table = []
    for line in lines[start + 2:]:
        if not line.startswith("|"):
            break
        table.append(dict(zip(head, split(line))))
    rows = settings_rows()
    assert head == list(rows[0])
    assert [r["field"] for r in table] == [f"`{n}`" for n in FIELDS], "every TrainConfig field, in order"
    for doc, code in zip(table, rows):
        assert doc == code, f"docs/config.md row {doc['field']} differs from the code:\n{doc}\n{code}"
    # the cells say what the code does
    lr = next(r for r in table if r["field"] == "`lr`")
    assert (lr["default"], lr["archrelax train"], lr["spec key"]) == ("`0.1`", "`--lr`", "`train.lr`, `relaxed.lr`")
    assert "`train.lr`: `0.05`" in lr["spec default"]
    force = next(r for r in table if r["field"] == "`force_memory`")
    assert (force["archrelax train"], force["in run id"]) == ("`--force`", "no (runtime)")


def test_cli_options_are_the_fields_with_their_defaults():
    p = train_parser()
    actions = {a.dest: a for a in p._actions if a.dest not in ("help", "out")}
    assert set(actions) == set(FIELDS)
    for name, action in actions.items():
        flag = option_name(FIELDS[name])
        assert (action.option_strings[0] if action.option_strings else "") == flag
        assert action.help and FIELDS[name].metadata["help"].split(" (")[0].replace("%", "%%") in action.help
        if action.option_strings:
            assert action.default == default(name), name
    # Literal types are the choices, for argparse and for TrainConfig alike
    assert actions["optimizer"].choices == ["sgd", "adam", "adamw"] and actions["soft_toward"].choices == [
        "cnn", "local", "shared"]
    # a bare command is TrainConfig's defaults (epochs: 100, lr 0.1, batch 250 ...)
    assert config_from_args(p.parse_args(["vanilla_cnn", "--out", "x"])) == TrainConfig()


def test_cli_parses_every_kind_of_field():
    p = train_parser()
    args = p.parse_args([
        "alexnet", "--out", "x", "--model-kwargs", '{"width": 8}', "--augment", "crop,flip", "--relax", "fc",
        "--relax-layers", "features.0,features.3", "--from", "s.pt", "--optimizer-state", "carry", "--opt", "adam",
        "--lr", "1e-3", "--batch-size", "1e3", "--train-size", "1_000", "--until-zero-loss", "--max-epochs", "5e+1",
        "--eval-times", "0,.5,1e1", "--snapshots", "log:4", "--no-progress", "--force", "--amp", "bf16"])
    c = config_from_args(args)
    assert (c.model, c.model_kwargs, c.augment, c.relax, c.relax_layers, c.init_from) == (
        "alexnet", {"width": 8}, ["crop", "flip"], "fc", ["features.0", "features.3"], "s.pt")
    assert (c.optimizer_state, c.optimizer, c.lr, c.batch_size, c.train_size) == ("carry", "adam", 1e-3, 1000, 1000)
    assert (c.until_zero_loss, c.epochs, c.max_epochs, c.eval_times, c.snapshots) == (True, None, 50.0, [0, 0.5, 10], "log:4")
    assert (c.progress, c.force_memory, c.amp) == (False, True, "bf16")
    assert config_from_args(p.parse_args(["m", "--out", "x", "--progress", "--relax-layers", ""])).progress is True
    assert config_from_args(p.parse_args(["m", "--out", "x", "--augment", ""])).augment == []


def test_spec_train_section_is_derived_from_train_config():
    spec_fields = {f.name: f for f in dataclasses.fields(TrainOptions)}
    assert list(spec_fields) == [n for n, f in FIELDS.items() if f.metadata["spec"] == "train"]
    hints = typing.get_type_hints(TrainOptions)
    for name, f in spec_fields.items():
        expected = EXPERIMENT_DEFAULTS.get(f"train.{name}", default(name))
        got = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
        assert got == expected and hints[name] == HINTS[name], name
        assert f.metadata["check"] is FIELDS[name].metadata["check"]


def test_train_options_must_name_every_train_field():
    """TrainOptions is written out field by field; importing the spec refuses a list that misses a spec='train'
    field of TrainConfig or types it differently (the check run at import, on a short copy)."""
    from archrelax.protocol.spec import _check_train_options

    _check_train_options()  # the real one passes
    short = dataclasses.make_dataclass("Short", [(f.name, typing.get_type_hints(TrainOptions)[f.name], f)
                                                 for f in dataclasses.fields(TrainOptions) if f.name != "lr"])
    with pytest.raises(TypeError, match=r"must declare the TrainConfig fields marked spec='train'.*'lr'"):
        _check_train_options(short)
    retyped = dataclasses.make_dataclass("Retyped", [(f.name, int if f.name == "lr" else typing.get_type_hints(
        TrainOptions)[f.name], f) for f in dataclasses.fields(TrainOptions)])
    with pytest.raises(TypeError, match="TrainOptions must declare"):
        _check_train_options(retyped)


def test_every_spec_key_of_a_setting_has_its_type_and_check():
    """Top-level, cnn.* and relaxed.* keys that set a TrainConfig field: same type (or its Optional, where the
    spec's default is null), same check, and TrainConfig's default unless EXPERIMENT_DEFAULTS lists the key."""
    seen = set()
    for prefix, cls, obj in (("", ExperimentSpec, ExperimentSpec()), ("cnn.", StopRule, ExperimentSpec().cnn),
                             ("relaxed.", RelaxedOptions, ExperimentSpec().relaxed), ("train.", TrainOptions, None)):
        hints = typing.get_type_hints(cls)
        for f in dataclasses.fields(cls):
            name = f.metadata.get("config")
            if name is None:
                assert f.name not in FIELDS or prefix == "", f"{prefix}{f.name} is a setting but not linked to it"
                continue
            key = prefix + f.name
            seen.add(key)
            assert hints[f.name] in (HINTS[name], typing.Optional[HINTS[name]]), key
            assert f.metadata["check"] is FIELDS[name].metadata["check"], key
            if obj is not None:
                assert getattr(obj, f.name) == EXPERIMENT_DEFAULTS.get(key, default(name)), key
    assert set(EXPERIMENT_DEFAULTS) <= seen
    for key, value in EXPERIMENT_DEFAULTS.items():  # the table lists differences only
        assert value != default(key.rsplit(".", 1)[1]), key


def test_runtime_and_identity_are_one_declaration():
    assert RUNTIME_FIELDS == ("progress", "tensorboard", "checkpoint_every_steps", "checkpoint_every_s", "force_memory",
                              "restart")
    assert set(NOT_IDENTITY) == set(RUNTIME_FIELDS) | {"snapshots", "snapshot_every_eval", "sharpness_products",
                                                       "sharpness_samples"}
    # the trainer's resume check and the plan's ids use these: see the tests below and test_train.py


# ---- plans: generated from the fields, ids unchanged ------------------------------------------------------

# `make_plan(load_spec(preset="demo"))` ids, recorded from main before settings were declared once
DEMO_IDS = ["cnn-s0-57cf6c98", "efcn-tw0-s0-a451e995", "efcn-tw0.5-s0-6c738f18", "efcn-tw1-s0-ee4bb409",
            "efcn-tw2-s0-35998ffd", "efcn-tw4-s0-a5dd867b", "elcn-tw0-s0-89eb4546", "elcn-tw0.5-s0-9f92dfb9",
            "elcn-tw1-s0-4667aa9d", "elcn-tw2-s0-e4714868", "elcn-tw4-s0-8b596baa", "fcn-s0-ddac57d0"]


def test_demo_plan_ids_are_unchanged_and_runtime_keys_change_no_id():
    plan = make_plan(load_spec(preset="demo"))
    assert list(plan) == DEMO_IDS
    for run in plan.values():  # every planned config is a whole TrainConfig, built from the fields
        assert set(run.config) == set(FIELDS) - {"progress", "restart"}  # the command line's (and a rerun's) only
        TrainConfig.from_dict({**run.config, "init_from": "x.pt" if run.depends_on else None})
    runtime = ["train.tensorboard=true", "train.force_memory=true", "train.checkpoint_every_s=5",
               "train.checkpoint_every_steps=3"]
    again = make_plan(load_spec(preset="demo", overrides=runtime))
    assert list(again) == DEMO_IDS and [r.identity for r in again.values()] == [r.identity for r in plan.values()]
    assert all(r.config["force_memory"] for r in again.values())
    assert not set(make_plan(load_spec(preset="demo", overrides=["train.momentum=0.8"]))) & set(DEMO_IDS)


def test_sharpness_along_training_is_a_measurement_of_the_cnn_only():
    """cnn.sharpness_products makes the CNN another run (it must record the rows) whose children are the same
    runs (its weights are not changed by measuring them); off, no id changes (the demo's ids above)."""
    plan = make_plan(load_spec(preset="demo"))
    on = make_plan(load_spec(preset="demo", overrides=["cnn.sharpness_products=4", "cnn.sharpness_samples=32"]))
    assert list(on)[1:] == DEMO_IDS[1:] and list(on)[0] != DEMO_IDS[0]
    cnn = next(r for r in on.values() if r.kind == "cnn")
    assert (cnn.config["sharpness_products"], cnn.config["sharpness_samples"]) == (4, 32)
    assert cnn.identity == plan[DEMO_IDS[0]].identity
    assert all(r.config["sharpness_products"] == 0 for r in on.values() if r.kind != "cnn")
    relaxed = make_plan(load_spec(preset="demo", overrides=["relaxed.sharpness_products=2"]))
    assert list(relaxed)[0] == DEMO_IDS[0] and not set(list(relaxed)[1:]) & set(DEMO_IDS)
    with pytest.raises(SpecError, match="sharpness_products"):
        load_spec(preset="demo", overrides=["cnn.sharpness_products=-1"])
    with pytest.raises(ValueError, match=r"sharpness_samples=0 is not valid; allowed: an integer >= 1"):
        TrainConfig(sharpness_samples=0)
    with pytest.raises(ValueError, match=r"sharpness_products=-2 is not valid; allowed: an integer >= 0"):
        TrainConfig(sharpness_products=-2)


def test_spec_defaults_that_differ_from_train_are_the_table():
    spec = spec_from_dict({})
    assert (spec.train.lr, spec.train.batch_size, spec.train.step_size) == (0.05, 128, None)
    assert (spec.cnn.until_zero_loss, spec.cnn.max_epochs, spec.relaxed.max_epochs) == (True, 100.0, 50.0)
    assert (spec.train.momentum, spec.train.eval_times, spec.train.checkpoint_every_s) == (0.9, "log:20", 60.0)


# ---- numbers in every ordinary notation -------------------------------------------------------------------


@pytest.mark.parametrize("text, key, value", [  # ("1e-3", "train.lr"): a row of tests/test_faults.py
    ("1E-3", "train.lr", 0.001), ("5e+2", "train.lr", 500.0), (".5", "train.lr", 0.5),
    ("2", "train.lr", 2.0), ("1.5e1", "train.lr", 15.0), ("1e3", "train.batch_size", 1000), ("1_000", "train_size", 1000),
    ("-2", "data_seed", -2), ("[0, 5e-1, 1e0]", "switch_times", [0.0, 0.5, 1.0]), ("1e-2", "relaxed.lr", 0.01),
])
def test_numbers_in_any_notation_in_set_and_in_files(tmp_path, text, key, value):
    check_notation(tmp_path, text, key, value)


def check_notation(tmp_path, text: str, key: str, value) -> None:
    """``key`` written ``text`` in a spec file and in ``--set`` both read as ``value`` (of its type)."""
    spec = load_spec(overrides=[f"{key}={text}"])
    node = spec
    for part in key.split("."):
        node = getattr(node, part)
    assert node == value and type(node) is type(value)
    section, _, leaf = key.rpartition(".")
    body = f"{section}:\n  {leaf}: {text}\n" if section else f"{leaf}: {text}\n"
    (tmp_path / "s.yaml").write_text(body)
    assert load_spec(tmp_path / "s.yaml") == spec


@pytest.mark.parametrize("text, key, expected", [
    ("2.5", "train.batch_size", "'train.batch_size' = 2.5 has the wrong type; allowed: an integer"),
    (".inf", "train.lr", "'train.lr' = inf has the wrong type; allowed: a finite number"),
    ("inf", "train.lr", "'train.lr' = 'inf' has the wrong type; allowed: a finite number"),
    (".nan", "train.momentum", "'train.momentum' = nan has the wrong type"),
    ("-1e-3", "train.lr", "'train.lr' = -0.001 is out of range; allowed: a number > 0"),
    ("flop", "train.augment", "'train.augment' = ['flop'] is out of range; allowed: 'flip', 'crop'"),
])
def test_bad_numbers_and_values_are_named(text, key, expected):
    with pytest.raises(SpecError) as e:
        load_spec(overrides=[f"{key}={text}"])
    assert expected in str(e.value)


def test_train_config_types_its_fields():
    with pytest.raises(ValueError, match=r"TrainConfig.lr='1e-3' is not valid; allowed: a finite number"):
        TrainConfig(lr="1e-3")
    with pytest.raises(ValueError, match=r"TrainConfig.batch_size=250.0 is not valid; allowed: an integer"):
        TrainConfig(batch_size=250.0)
    with pytest.raises(ValueError, match=r"TrainConfig.optimizer='rmsprop' is not valid; allowed: one of 'sgd'"):
        TrainConfig(optimizer="rmsprop")
    with pytest.raises(ValueError, match=r"schedule='step' needs step_size"):
        TrainConfig(schedule="step", step_size=None)
    assert TrainConfig(lr=1, eval_times=[0, 1]).lr == 1  # an int is a number


# ---- the bad inputs of this area: one line each, nothing left behind ------------------------------------

SPEC = "name: t\nmodel_kwargs: {width: 2}\ndata: synthetic:1x28x28:2:40:20\n" \
       "train: {batch_size: 20, lr: 0.05, eval_times: every}\ncnn: {epochs: 1, until_zero_loss: false}\n" \
       "relaxed: {epochs: 1, until_zero_loss: false}\nswitch_times: [0, 1]\ntargets: [fc]\nbaselines: [fcn]\n"
D = ["--data", "synthetic:1x28x28:2:40:20", "--epochs", "0", "--device", "cpu"]

# (case, argv (OUT/SPEC replaced), exit code, text on stderr). Before: the output of the same command on
# the code this change started from, kept in the report.
# (`train --model-kwargs` and `run` with a typo in model_kwargs: rows of tests/test_faults.py, through check_bad_input)
BAD = [
    ("train fcn --model-kwargs typo", ["train", "fcn", "--model-kwargs", '{"widht": 32}', *D, "--out", "OUT"], 2,
     "model 'fcn' has no option 'widht'; did you mean 'width'? (fcn takes: base, layers; its base 'vanilla_cnn' "
     "takes: width, num_classes, in_channels, input_size)"),
    ("train --batch-size 2.5", ["train", "vanilla_cnn", *D, "--batch-size", "2.5", "--out", "OUT"], 2,
     "argument --batch-size: '2.5' is not an integer (e.g. 250, 1e3)"),
    ("train --lr inf", ["train", "vanilla_cnn", *D, "--lr", "inf", "--out", "OUT"], 2,
     "argument --lr: 'inf' is not a finite number"),
    ("train --momentum 1.5", ["train", "vanilla_cnn", *D, "--momentum", "1.5", "--out", "OUT"], 2,
     "archrelax train: error: --momentum 1.5 is not valid; allowed: 0 <= momentum < 1"),
    ("run schedule step, no step_size", ["run", "SPEC", "--set", "train.schedule=step", "--out", "OUT"], 2,
     "'train.schedule' = 'step' needs 'train.step_size'"),
    ("run unimportable user factory", ["run", "SPEC", "--set", "model=no_such_pkg.mod:f", "--out", "OUT"], 2,
     "'model' = 'no_such_pkg.mod:f': model 'no_such_pkg.mod:f': cannot import module 'no_such_pkg.mod'"),
]


@pytest.mark.parametrize("case, argv, rc, text", BAD, ids=[b[0] for b in BAD])
def test_bad_input_is_one_line_and_leaves_nothing(tmp_path, capsys, case, argv, rc, text):
    check_bad_input(tmp_path, capsys, argv, rc, text)


def check_bad_input(tmp_path, capsys, argv: list[str], rc: int, text: str) -> None:
    """``archrelax ARGV`` (OUT and SPEC replaced) exits ``rc`` with ``text`` on stderr, no traceback, and
    creates no output folder."""
    (tmp_path / "spec.yaml").write_text(SPEC)
    out = tmp_path / "out"
    argv = [str(out) if a == "OUT" else str(tmp_path / "spec.yaml") if a == "SPEC" else a for a in argv]
    assert _rc(argv) == rc
    err = capsys.readouterr().err
    assert text in err and "Traceback" not in err, err
    assert not out.exists()  # nothing created: the check comes before the run folder


def _rc(argv: list[str]) -> int:
    try:
        return cli_main(argv)
    except SystemExit as e:  # argparse's own errors (a value that does not parse)
        return e.code


def test_number_notations_on_the_command_line_train(tmp_path, capsys):
    rc = cli_main(["train", "vanilla_cnn", "--model-kwargs", '{"width": 2}', *D, "--lr", "1e-3", "--batch-size", "2e1",
                   "--out", str(tmp_path / "r")])
    assert rc == 0, capsys.readouterr().err
    saved = json.loads((tmp_path / "r" / "config.json").read_text())
    assert (saved["lr"], saved["batch_size"]) == (0.001, 20) and math.isclose(saved["momentum"], 0.9)
