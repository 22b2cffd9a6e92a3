"""The ``tgg`` entry point: a user's mistake is one line naming the command and the problem, not a traceback."""

import argparse
import importlib
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tinygroundinggpt.cli import COMMANDS, main


def test_a_bad_argument_is_reported_as_one_line_and_the_traceback_kept_on_request(tmp_path, monkeypatch):
    monkeypatch.delenv("TGG_TRACEBACK", raising=False)
    argv = ["attend", "Where is the red square?", "--image", str(tmp_path / "missing.png")]
    monkeypatch.setenv("TGG_TRACEBACK", "0")
    with pytest.raises(SystemExit) as info:
        main(argv)
    message = str(info.value)
    assert message.startswith("tgg attend: ") and "missing.png" in message
    # the same exception types also come from real faults: the traceback is kept, in a file the message names
    kept = Path(re.search(r"traceback: (\S+);", message).group(1))
    assert "Traceback (most recent call last)" in kept.read_text() and "missing.png" in kept.read_text()
    kept.unlink()
    monkeypatch.setenv("TGG_TRACEBACK", "1")
    with pytest.raises(ValueError, match="missing.png"):
        main(argv)


def test_each_module_adds_exactly_the_commands_listed_for_it_with_their_help():
    for module in {module for module, _ in COMMANDS.values()}:
        parser = argparse.ArgumentParser()
        sub = parser.add_subparsers()
        importlib.import_module(module).add_commands(sub)
        listed = {name for name, (owner, _) in COMMANDS.items() if owner == module}
        assert set(sub.choices) == listed, module
        helps = {action.dest: action.help for action in sub._choices_actions}
        assert helps == {name: COMMANDS[name][1] for name in listed}, module


def test_help_imports_no_command_module_and_a_command_only_its_own():
    probe = (
        "import sys\n"
        "from tinygroundinggpt.cli import main\n"
        "try:\n"
        "    main(sys.argv[1:])\n"
        "except SystemExit:\n"
        "    pass\n"
        "print(sorted(m for m in ('torch', 'transformers', 'tinygroundinggpt.world.cli', 'tinygroundinggpt.model')"
        " if m in sys.modules))\n"
    )

    def loaded(*argv: str) -> str:
        run = subprocess.run([sys.executable, "-c", probe, *argv], capture_output=True, text=True, check=True)
        return run.stdout.strip().splitlines()[-1]

    assert loaded("--help") == "[]"
    assert loaded("world", "--help") == "['tinygroundinggpt.world.cli']"
