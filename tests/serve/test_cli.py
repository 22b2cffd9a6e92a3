import pytest
import uvicorn
from fastapi.testclient import TestClient

from tinygroundinggpt.cli import COMMANDS, build_parser, main


def test_commands_are_registered_with_their_defaults():
    assert COMMANDS["serve"][0] == COMMANDS["web"][0] == "tinygroundinggpt.serve.cli"
    args = build_parser().parse_args(["serve"])
    assert (args.host, args.port, args.model, args.image_root, args.max_new_tokens) == (
        "127.0.0.1",
        8000,
        None,
        [],
        256,
    )
    args = build_parser().parse_args(["web", "--share"])
    assert (args.host, args.port, args.share) == ("127.0.0.1", 7860, True)
    assert build_parser().parse_args(["web"]).share is False


def test_serve_runs_uvicorn_on_the_app_with_the_limits(monkeypatch, tmp_path):
    ran = {}
    monkeypatch.setattr(uvicorn, "run", lambda app, host, port: ran.update(app=app, host=host, port=port))
    argv = ["serve", "--image-root", str(tmp_path), "--max-request-mb", "0.001", "--port", "8123"]
    assert main(argv) == 0
    assert (ran["host"], ran["port"]) == ("127.0.0.1", 8123)
    client = TestClient(ran["app"])
    assert client.get("/v1/models").json()["data"][0]["id"] == "tinygroundinggpt"  # the shipped checkpoint's name
    resp = client.post("/v1/chat/completions", content=b"x" * 2000, headers={"content-type": "application/json"})
    assert resp.status_code == 413 and "limit of 1048 bytes" in resp.json()["error"]["message"]


def test_serve_refuses_a_missing_image_root(tmp_path):
    with pytest.raises(SystemExit, match="is not a directory"):
        main(["serve", "--image-root", str(tmp_path / "nope")])


@pytest.mark.parametrize(("value", "message"), [("0", "must be above 0"), ("999999999999", "must be at most")])
def test_serve_refuses_an_image_pixel_limit_outside_the_pipelines(capsys, value, message):
    with pytest.raises(SystemExit):
        build_parser().parse_args(["serve", "--max-image-pixels", value])
    assert message in capsys.readouterr().err
