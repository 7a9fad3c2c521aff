"""common/settings.py: the schedule flags, declared once, read back as the gate's TgateSchedule."""

import argparse
import re

import pytest

from common.models import MODELS
from common.schedule import TgateSchedule
from common.settings import (
    add_schedule_args, call_keywords, intervals_label, model_schedule, schedule_argv, schedule_from_args,
    schedule_label, schedule_suffix,
)


def parse(argv, defaults=TgateSchedule(10), spec=None, **declared):
    parser = argparse.ArgumentParser()
    add_schedule_args(parser, **declared)
    return schedule_from_args(parser.parse_args(argv), defaults, spec)


def test_flags_not_given_come_from_the_defaults_given_ones_replace_them():
    assert parse([]) == TgateSchedule(10)
    assert parse(["--gate", "4", "--sp-interval", "3", "--warm-up", "2"]) == TgateSchedule(4, 3, 1, 2)
    assert parse(["--fi-interval", "2"], TgateSchedule(15, 3, 1, 2)) == TgateSchedule(15, 3, 2, 2)
    assert parse(["--deepcache-interval", "3"]) == TgateSchedule(10, deepcache_interval=3, deepcache_branch=0)
    # without a gate the model's V2 intervals do not apply: no gate, no self-attention caching
    assert parse([], TgateSchedule(None)) == TgateSchedule(None)
    assert model_schedule(MODELS["pixart_sigma"]) == TgateSchedule(15, sp_interval=3, warm_up=2)
    # a script that does not declare a group keeps the defaults' values
    assert parse([], TgateSchedule(10, 2), gate=False, deepcache=False) == TgateSchedule(10, 2)


@pytest.mark.parametrize("argv, spec, message", [
    (["--gate", "0"], None, "--gate must be >= 1 (the guided steps before the gate), got 0"),
    (["--sp-interval", "0"], None, "--sp-interval must be an int >= 1, got 0"),
    (["--warm-up", "-1"], None, "--warm-up must be an int >= 0, got -1"),
    (["--deepcache-branch", "1"], None, "--deepcache-branch needs --deepcache-interval"),
    (["--deepcache-interval", "0"], None, "--deepcache-interval must be an int >= 1"),
    (["--deepcache-interval", "3"], MODELS["pixart_alpha"], "pixart_alpha has no UNet"),
])
def test_bad_values_are_named_by_their_flag(argv, spec, message):
    with pytest.raises(ValueError, match=re.escape(message)) as error:
        parse(argv, spec=spec)
    assert "gate_step" not in str(error.value)  # the library's argument names never reach the command line


def test_v2_intervals_without_a_gate_are_refused_in_the_flags_words():
    with pytest.raises(ValueError, match="--sp-interval, --fi-interval and --warm-up are TGATE-V2 settings"):
        parse(["--sp-interval", "2"], TgateSchedule(None))


def test_call_keywords_labels_and_argv_of_a_schedule():
    v2 = TgateSchedule(10, 5, 1, 2, deepcache_interval=3)
    assert call_keywords(TgateSchedule(None)) == {"gate_step": None}
    assert call_keywords(TgateSchedule(4)) == {"gate_step": 4, "sp_interval": 1, "fi_interval": 1, "warm_up": 0}
    assert call_keywords(TgateSchedule(None, deepcache_interval=3, deepcache_branch=1)) == {
        "gate_step": None, "deepcache_interval": 3, "deepcache_branch": 1}
    assert intervals_label(v2) == "sp 5, fi 1, warm-up 2"
    assert schedule_label(v2) == "gate 10, sp 5, fi 1, warm-up 2, DeepCache interval 3, branch 0"
    assert schedule_label(TgateSchedule(10)) == "gate 10" and schedule_label(TgateSchedule(None)) == "stock"
    assert schedule_suffix(v2) == "gate10_sp5_fi1_wu2_dc3_br0"
    assert schedule_suffix(TgateSchedule(None, deepcache_interval=3)) == "baseline_dc3_br0"
    assert schedule_argv(v2) == ["--gate", "10", "--sp-interval", "5", "--fi-interval", "1", "--warm-up", "2",
                                 "--deepcache-interval", "3", "--deepcache-branch", "0"]
    assert parse(schedule_argv(v2), TgateSchedule(1)) == v2  # a script driving another gets the same schedule
