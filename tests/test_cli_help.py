"""Every subcommand's --help shows what each option does when it is not given (its default)."""

from __future__ import annotations

import argparse

import pytest

from aa_deploy.cli import build_parser, main


def _subcommands() -> dict[str, argparse.ArgumentParser]:
    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return dict(sub.choices)


SUBCOMMANDS = sorted(_subcommands())


def test_every_expected_subcommand_is_registered() -> None:
    assert {"train", "export", "serve", "kserve", "ray-config", "push", "demo", "convert"} <= set(SUBCOMMANDS)


@pytest.mark.parametrize("name", SUBCOMMANDS)
def test_every_option_that_takes_a_value_states_its_default(name: str) -> None:
    """An optional flag with a value must say what happens without it: '(default: ...)' or 'default ...'."""
    missing = [
        "/".join(action.option_strings)
        for action in _subcommands()[name]._actions
        if action.option_strings and action.nargs != 0 and not action.required and "default" not in (action.help or "")
    ]
    assert not missing, f"`aa-deploy {name} --help` does not show the default of {missing}"


@pytest.mark.parametrize("name", SUBCOMMANDS)
def test_help_renders_without_placeholder_defaults(name: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main([name, "--help"])
    assert exit_info.value.code == 0
    text = capsys.readouterr().out
    assert "(default: None)" not in text and "default: []" not in text
