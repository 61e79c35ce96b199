"""Flags generated from config dataclasses (commands/flags.py): every field of EvalOptions,
ConfidenceOptions, SynthConfig and QuickConfig that has a flag shows the field's own default in --help, and the parsed flags build
the config the library would build."""

from __future__ import annotations

import argparse
from dataclasses import fields

import pytest

from dualsae.alignment.confidence import ConfidenceOptions
from dualsae.cli import build_parser
from dualsae.commands.align import CONFIDENCE_FLAGS, confidence_options
from dualsae.commands.diagnose import QUICK_FLAGS
from dualsae.commands.evaluate import EVAL_FLAGS
from dualsae.commands.flags import add_flag_groups, given
from dualsae.commands.synth import SYNTH_FLAGS, config_from_args
from dualsae.core.errors import ConfigError
from dualsae.diagnose.pilots import QuickConfig
from dualsae.evaluation.tasks import EvalOptions
from dualsae.store.generator import SynthConfig


@pytest.mark.parametrize("cls, flags", [(EvalOptions, EVAL_FLAGS), (ConfidenceOptions, CONFIDENCE_FLAGS), (SynthConfig, SYNTH_FLAGS),
                                        (QuickConfig, QUICK_FLAGS)])
def test_each_flag_is_a_field_with_its_default_in_the_help(cls, flags):
    by_name = {f.name: f for f in fields(cls)}
    assert [f.dest for f in flags] == [f.name for f in fields(cls) if f.metadata.get("cli") is not False]
    p = argparse.ArgumentParser(prog="x")
    add_flag_groups(p, flags)
    text = " ".join(p.format_help().split())
    for flag in flags:
        field = by_name[flag.dest]
        assert flag.default == field.default
        if not flag.is_switch:
            shown = field.metadata.get("default", field.default)
            assert f"{flag.option} " in text and f"(default: {shown})" in text


def test_eval_and_align_flags_build_the_library_configs():
    parser = build_parser()
    args = parser.parse_args(["eval", "run", "--out", "o", "--alpha", "2.5", "--sources", "7", "--no-progress", "--label-field", "category"])
    kw = given(args, EVAL_FLAGS)
    assert kw == {"steering_alpha": 2.5, "steering_sources": 7, "progress": False, "label_field": "category"}
    assert EvalOptions(**kw) == EvalOptions(steering_alpha=2.5, steering_sources=7, progress=False, label_field="category")
    args = parser.parse_args(["align", "run", "--out", "o", "--min-correlation", "null", "--null-quantile", "0.95"])
    assert confidence_options(args) == ConfidenceOptions(min_correlation="null", quantile=0.95)
    args = parser.parse_args(["align", "run", "--out", "o"])
    assert confidence_options(args) == ConfidenceOptions()
    with pytest.raises(ConfigError, match="--min-correlation must be a number or 'null'"):
        confidence_options(parser.parse_args(["align", "run", "--out", "o", "--min-correlation", "high"]))


def test_synth_and_diagnose_flags_build_the_library_configs():
    parser = build_parser()
    args = parser.parse_args(["synth", "generate", "--distance", "0.3", "--out", "o", "--d", "32", "--n-train", "100"])
    assert config_from_args(args) == SynthConfig(alpha=0.7, d=32, n_train=100)
    args = parser.parse_args(["diagnose", "store", "--k", "8", "--latents", "64"])
    assert QuickConfig(**given(args, QUICK_FLAGS)) == QuickConfig(k=8, latents=64)
