"""The official ``openai`` client against the server over real HTTP (uvicorn on a free local port)."""

import contextlib
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import openai
import pytest
import uvicorn
from serve_helpers import data_url, png_bytes

from tinygroundinggpt.serve.server import create_app

MODEL = "tinygroundinggpt"


@contextlib.contextmanager
def serving(app):
    """``app`` under uvicorn on a free local port; yields the port."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        assert time.monotonic() < deadline and thread.is_alive(), "uvicorn did not start"
        time.sleep(0.05)
    yield port
    server.should_exit = True
    thread.join(timeout=10)


@pytest.fixture(scope="module")
def base_url(pipe):
    with serving(create_app(pipe, model_name=MODEL)) as port:
        yield f"http://127.0.0.1:{port}/v1"


def _read_response(conn: socket.socket) -> str:
    """One whole HTTP response: a single recv can return the headers before the body has arrived (seen on a busy
    machine), so read until the body holds the Content-Length it announces."""
    data = b""
    while True:
        head, sep, body = data.partition(b"\r\n\r\n")
        if sep:
            length = next(
                (
                    int(line.split(b":", 1)[1])
                    for line in head.split(b"\r\n")
                    if line.lower().startswith(b"content-length:")
                ),
                0,
            )
            if len(body) >= length:
                return data.decode()
        chunk = conn.recv(65536)
        if not chunk:
            return data.decode()
        data += chunk


def test_a_body_that_does_not_arrive_in_time_gets_408_and_its_slot_back(pipe):
    # A client that sends half its body and stalls would otherwise hold one of max_pending slots for good.
    with serving(create_app(pipe, model_name=MODEL, max_pending=1, body_seconds=0.5)) as port:
        with socket.create_connection(("127.0.0.1", port), timeout=10) as conn:
            conn.sendall(
                b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                b"Content-Length: 1000\r\n\r\n" + b'{"model": "' + MODEL.encode()
            )
            reply = _read_response(conn)
        assert reply.startswith("HTTP/1.1 408") and "request_timeout" in reply
        with httpx.Client(trust_env=False, timeout=60) as http:  # the slot is free again
            body = {"model": MODEL, "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 2}
            assert http.post(f"http://127.0.0.1:{port}/v1/chat/completions", json=body).status_code == 200


@pytest.fixture(scope="module")
def client(base_url):
    # trust_env=False: a proxy configured in the environment must not see requests to localhost.
    with httpx.Client(trust_env=False, timeout=60) as http:
        yield openai.OpenAI(base_url=base_url, api_key="unused", http_client=http, max_retries=0)


def test_openai_client_gets_the_answer_and_its_pixel_boxes(client, pipe, scene):
    image, prompt = scene
    expected = pipe.predict(image, prompt)
    assert [m.id for m in client.models.list()] == [MODEL]
    messages = [
        {
            "role": "user",
            "content": [
                {"type": "image_url", "image_url": {"url": data_url(png_bytes(image))}},
                {"type": "text", "text": prompt},
            ],
        }
    ]
    resp = client.chat.completions.create(model=MODEL, messages=messages, max_tokens=64, temperature=0)
    message = resp.choices[0].message
    assert message.content == expected.text and resp.choices[0].finish_reason == "stop"
    assert message.model_extra["boxes"] == [list(b) for b in expected.boxes]
    assert resp.usage.total_tokens == resp.usage.prompt_tokens + resp.usage.completion_tokens

    stream = client.chat.completions.create(model=MODEL, messages=messages, stream=True)
    assert "".join(c.choices[0].delta.content or "" for c in stream if c.choices) == expected.text

    with pytest.raises(openai.BadRequestError, match="URLs are not fetched"):
        bad = [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "https://example.com/a.png"}},
                                            {"type": "text", "text": prompt}]}]  # fmt: skip
        client.chat.completions.create(model=MODEL, messages=bad)


def test_concurrent_requests_each_get_their_own_answer(client, pipe, scene):
    image, _ = scene
    url = data_url(png_bytes(image))
    prompts = [f"Output the coordinate of the {name}." for name in ("pink star", "yellow circle", "cyan star")] * 2

    def ask(prompt):
        content = [{"type": "image_url", "image_url": {"url": url}}, {"type": "text", "text": prompt}]
        resp = client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": content}])
        return resp.choices[0].message.content

    with ThreadPoolExecutor(max_workers=len(prompts)) as pool:
        answers = list(pool.map(ask, prompts))
    assert answers == [pipe.predict(image, p).text for p in prompts]
    assert len(set(answers)) > 1  # the prompts really ask for different objects


def test_stop_seed_and_logprobs_are_honoured_or_refused(client, pipe, scene):
    image, prompt = scene
    expected = pipe.predict(image, prompt).text  # "[x1, y1, x2, y2]"
    url = data_url(png_bytes(image))
    content = [{"type": "image_url", "image_url": {"url": url}}, {"type": "text", "text": prompt}]
    messages = [{"role": "user", "content": content}]
    resp = client.chat.completions.create(model=MODEL, messages=messages, stop=[", "])
    # OpenAI's stop: the answer ends where the stop string first appears, without it
    assert resp.choices[0].message.content == expected[: expected.index(", ")]
    assert resp.choices[0].finish_reason == "stop"
    stream = client.chat.completions.create(model=MODEL, messages=messages, stop=", ", stream=True)
    assert "".join(c.choices[0].delta.content or "" for c in stream if c.choices) == expected[: expected.index(", ")]
    hot = {"model": MODEL, "messages": messages, "temperature": 2.0, "max_tokens": 20}
    runs = [client.chat.completions.create(**hot, seed=seed).choices[0].message.content for seed in (5, 5, 6, 6)]
    assert runs[0] == runs[1] and runs[2] == runs[3] and runs[0] != runs[2]  # sampling repeats under one seed
    with pytest.raises(openai.BadRequestError, match="logprobs"):
        client.chat.completions.create(model=MODEL, messages=messages, logprobs=True)


class SlowPipeline:
    """The real pipeline, generating one token per 20 ms and never ending its answer before max_tokens."""

    def __init__(self, pipe):
        from transformers import LogitsProcessor, LogitsProcessorList

        self.pipe, self.steps = pipe, 0
        stops = pipe._stops()
        outer = self

        class Slow(LogitsProcessor):
            def __call__(self, input_ids, scores):
                outer.steps += 1
                time.sleep(0.02)
                scores[:, stops] = -float("inf")
                return scores

        self.processors = LogitsProcessorList([Slow()])

    def stream(self, *args, **kwargs):
        return self.pipe.stream(*args, logits_processor=self.processors, **kwargs)


def test_a_client_gone_before_its_answer_stops_the_generation_and_frees_the_slot(pipe):
    slow = SlowPipeline(pipe)
    with serving(create_app(slow, model_name=MODEL, max_pending=1)) as port:
        body = b'{"model": "%s", "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 250}' % MODEL.encode()
        with socket.create_connection(("127.0.0.1", port), timeout=10) as conn:
            conn.sendall(
                b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                b"Content-Length: %d\r\n\r\n%s" % (len(body), body)
            )
            deadline = time.monotonic() + 30
            while slow.steps < 5:
                assert time.monotonic() < deadline, "generation did not start"
                time.sleep(0.01)
        # the client is gone (no stream: it was waiting for the whole answer)
        time.sleep(1.5)
        stopped_at = slow.steps
        time.sleep(0.5)
        assert slow.steps == stopped_at < 150  # 250 steps would take 5 s; it stopped within ~0.3 s of the close
        with httpx.Client(trust_env=False, timeout=60) as http:  # and its slot is free again
            short = {"model": MODEL, "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 2}
            assert http.post(f"http://127.0.0.1:{port}/v1/chat/completions", json=short).status_code == 200
