"""core.options: one table of training options, from which TrainConfig's metadata, `tuneloom train`'s flags
and the Train page's Advanced form are made (issue 24)."""
import argparse
from dataclasses import fields

import pytest

from app.cli import build_parser
from core.options import ADVANCED, OPTION_RANGES, OPTIONS, option_allows
from core.train import ConfigError, TrainConfig


def _train_parser():
    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    return sub.choices["train"]


def test_every_config_field_has_its_record_and_nothing_else_does():
    names = [f.name for f in fields(TrainConfig)]
    assert set(names) == set(OPTIONS)
    for f in fields(TrainConfig):
        assert f.metadata["option"] is OPTIONS[f.name]
        assert f.metadata["label"] and f.metadata["help"] == OPTIONS[f.name].help


def test_the_flags_are_made_from_the_table():
    actions = {a.dest: a for a in _train_parser()._actions}
    for name, o in OPTIONS.items():
        if not o.flag:
            continue
        a = actions[name]
        assert a.option_strings[0] == "--" + name.replace("_", "-")
        assert a.help.startswith(o.help)
        if o.flag == "switch":
            assert isinstance(a, argparse._StoreTrueAction)
        elif o.flag == "toggle":
            assert isinstance(a, argparse.BooleanOptionalAction)
        else:
            assert a.type is {"int": int, "float": float, "str": str}[o.kind]
            assert list(a.choices or []) == list(o.choices)
    # a value, a switch and a toggle, parsed as the CLI hands them to TrainConfig
    from app.cli import option_flag_values

    a = build_parser().parse_args(["train", "--model", "m", "--data", "d", "--rank", "16", "--dora", "--no-compile",
                                   "--method", "dpo", "--early-stop", "3"])
    given = {k: v for k, v in option_flag_values(a).items() if v is not None}
    assert given == {"rank": 16, "dora": True, "compile": False, "method": "dpo", "early_stop": 3}
    with pytest.raises(SystemExit):  # --iters and --epochs exclude each other
        build_parser().parse_args(["train", "--iters", "5", "--epochs", "2"])
    with pytest.raises(SystemExit):  # choices come from the table
        build_parser().parse_args(["train", "--targets", "mlp"])


def test_the_ranges_are_the_ones_validate_checks():
    for name, rule in OPTION_RANGES.items():
        lo, hi, lo_ok, hi_ok, special, words = rule
        if lo is not None and not special:
            assert option_allows(name, lo) == lo_ok, name
            with pytest.raises(ConfigError, match="--" + name.replace("_", "-")):
                TrainConfig(model="m", **{name: lo - 1})
    # the form's bounds never pass a value validate refuses
    for name in ADVANCED:
        o = OPTIONS[name]
        assert o.kind in ("bool", "int", "float", "str"), name
        if o.form and o.rule and name != "iters":
            lo, hi = o.form
            assert option_allows(name, hi) or o.rule[1] is not None, name
