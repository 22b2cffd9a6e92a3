"""Kill the pipeline (SIGKILL, a real separate process) midway, twice, and resume: same dataset, no call repeated."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from fake_openai import FakeOpenAI
from helpers import write_corpus


def synth(root: Path, url: str, out: str, procs: list[subprocess.Popen]) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "tinygroundinggpt.synthesis.cli", str(root / "manifest.jsonl"), "--out",
           str(root / out), "--model", "fake", "--base-url", url, "--timeout", "5", "--backoff", "0.01",
           "--concurrency", "1", "--no-progress"]  # fmt: skip
    # One worker: the server kills on receiving a request, so the kill lands between calls, after the
    # previous reply was cached.
    procs.append(subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env={**os.environ}))
    return procs[-1]


def test_killed_runs_resume_to_the_uninterrupted_result(tmp_path: Path) -> None:
    write_corpus(tmp_path)
    procs: list[subprocess.Popen] = []
    try:
        with FakeOpenAI() as srv:
            ref = synth(tmp_path, srv.url, "ref", procs)
            assert ref.wait(timeout=60) == 0, ref.stderr.read().decode()
            total = len(srv.requests)
            srv.requests.clear()
            srv.answered.clear()
            # Kill once while generating and once while judging, then let the third run finish.
            for kill_at in (8, 30):
                proc = synth(tmp_path, srv.url, "out", procs)
                srv.kill = (kill_at, proc.pid)
                assert proc.wait(timeout=60) == -9
            srv.kill = None
            proc = synth(tmp_path, srv.url, "out", procs)
            assert proc.wait(timeout=60) == 0, proc.stderr.read().decode()
            # Each killed request went unanswered; every answered request was answered exactly once.
            assert len(srv.answered) == len(set(srv.answered)) == total
            assert len(srv.requests) == total + 2
    finally:
        for p in procs:  # never leave a child behind when an assertion fails
            if p.poll() is None:
                p.kill()
                p.wait()
    names = ["stage2_tc", "stage2_ic", "stage2_ti", "stage3_conv", "stage3_desc", "removed", "failures"]
    for name in (f"{n}.jsonl" for n in names):
        assert (tmp_path / "out" / name).read_bytes() == (tmp_path / "ref" / name).read_bytes(), name


def test_a_damaged_state_line_is_an_error_naming_the_file_and_line(tmp_path: Path) -> None:
    from tinygroundinggpt.synthesis.pipeline import StateFile

    path = tmp_path / "relate.jsonl"
    path.write_text('{"id": "img0"}\n{"id": "img1", "objects": [}\n{"id": "img2"}\n')
    with pytest.raises(ValueError, match=r"relate\.jsonl:2: not a saved state .JSONDecodeError"):
        StateFile(path).load()
    path.write_text('{"id": "img0"}\n{"id": "img1"')  # a writer killed mid-line: that line is cut, the rest kept
    assert list(StateFile(path).load()) == ["img0"] and path.read_text() == '{"id": "img0"}\n'
