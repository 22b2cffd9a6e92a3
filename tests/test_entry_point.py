"""The ``tgg`` entry point: a user's mistake is one line naming the command and the problem, not a traceback."""

import re
from pathlib import Path

import pytest

from tinygroundinggpt.cli import main


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
