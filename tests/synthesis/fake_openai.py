"""A scripted OpenAI-compatible chat server on 127.0.0.1 for the synthesis tests.

Replies come from :func:`default_reply`, a tiny "VLM" that reads the object names and boxes out of the
paper's prompts and answers in the requested format. ``faults`` overrides replies for requests whose
prompt contains a marker: a list of actions consumed one per matching request — ``429``, ``(429, s)``
(with ``Retry-After: s``), ``(status, message[, error code])``, ``"timeout"`` (sleep longer than the client waits),
a reply string (e.g. a malformed one), ``("length", text)`` (a reply cut by the token limit) or ``"no_choices"``
(a 200 reply whose ``choices`` list is empty).
``kill`` = (n, pid): on the n-th request the server SIGKILLs the client process before answering.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import signal
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

_LIST_AFTER = {
    "relation": re.compile(r"Given a list of instances: \[(.*?)\], please"),
    "objects": re.compile(r"present in the image\): \[(.*?)\], and"),
    "grounding": re.compile(r"for objects: \{(.*?)\}"),
}
_GROUND_ITEM = re.compile(r'"([^"]+)": (\[[^\]]+\])')


def default_reply(prompt: str) -> str:
    if prompt.startswith("You are an expert in image recognition"):
        return "[red box, blue box]"
    if prompt.startswith("You are an image relation extraction assistant"):
        names = _LIST_AFTER["relation"].search(prompt).group(1).split(", ")
        return "[" + ", ".join(f"({a}, next to, {b})" for a, b in zip(names, names[1:], strict=False)) + "]"
    if prompt.startswith("You are tasked with evaluating QA pairs"):
        return '"Quality": "4", "Correct": "Yes", "Justification": "Matches the image."'
    if 'highlighted with "<>", and the options should represent' in prompt:
        names = _LIST_AFTER["objects"].search(prompt).group(1).split(", ")
        return json.dumps(
            [{"question": f"What is <{n}> next to? A. a shape B. nothing", "answer": "A. a shape"} for n in names]
        )
    if "options must consist of only two objects" in prompt:
        names = _LIST_AFTER["objects"].search(prompt).group(1).split(", ")
        return json.dumps(
            [
                {"question": f"Which is first? A. <{a}> B. <{b}>", "answer": f"A. <{a}>"}
                for a, b in zip(names, names[1:], strict=False)
            ]
        )
    grounding = _GROUND_ITEM.findall(_LIST_AFTER["grounding"].search(prompt).group(1))
    if prompt.startswith("You are a QA pair generator assistant"):
        return json.dumps(
            [{"question": f"Where is <{n}> {b}?", "answer": f"<{n}> {b} is in the image."} for n, b in grounding]
        )
    return " and ".join(f"a {n} {b}" for n, b in grounding) + " are in the image."


class FakeOpenAI:
    def __init__(self, reply: Callable[[str], str] = default_reply, timeout_sleep: float = 1.0) -> None:
        self.reply = reply
        self.timeout_sleep = timeout_sleep
        self.faults: dict[str, list[Any]] = {}
        self.kill: tuple[int, int] | None = None
        self.requests: list[str] = []  # prompt of every request received, in order
        self.answered: list[str] = []  # sha256 of each request body answered with 200
        self.images: list[int] = []  # number of images in each request
        self._lock = threading.Lock()
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def do_POST(self) -> None:  # noqa: N802
                body = self.rfile.read(int(self.headers["Content-Length"]))
                status, text, headers = server._handle(body)
                finish = headers.pop("x-finish-reason", "stop")
                code = headers.pop("x-error-code", status)
                choices = [] if headers.pop("x-no-choices", None) else [
                    {"index": 0, "finish_reason": finish, "message": {"role": "assistant", "content": text}}
                ]  # fmt: skip
                payload = json.dumps(
                    {
                        "id": "x",
                        "object": "chat.completion",
                        "created": 0,
                        "model": "fake",
                        "choices": choices,
                    }
                    if status == 200
                    else {"error": {"message": text, "type": "fake", "code": code}}
                ).encode()
                try:
                    self.send_response(status)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(payload)))
                    for k, v in headers.items():
                        self.send_header(k, v)
                    self.end_headers()
                    self.wfile.write(payload)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client gave up (timeout) or was killed

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"
        self._thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)

    def _handle(self, body: bytes) -> tuple[int, str, dict[str, str]]:
        req = json.loads(body)
        content = req["messages"][-1]["content"]
        prompt = next(c["text"] for c in content if c["type"] == "text")
        with self._lock:
            self.requests.append(prompt)
            self.images.append(sum(c["type"] == "image_url" for c in content))
            if self.kill is not None and len(self.requests) == self.kill[0]:
                os.kill(self.kill[1], signal.SIGKILL)
                return 500, "client killed", {}
            action = None
            for marker, actions in self.faults.items():
                if marker in prompt and actions:
                    action = actions.pop(0)
                    break
        if action == 429:
            return 429, "rate limited", {}
        if isinstance(action, tuple) and action[0] == "length":  # a reply cut by max_tokens
            with self._lock:
                self.answered.append(hashlib.sha256(body).hexdigest())
            return 200, action[1], {"x-finish-reason": "length"}
        if isinstance(action, tuple) and action[0] == 429:  # (429, seconds): says when to come back
            return 429, "rate limited", {"Retry-After": str(action[1])}
        if isinstance(action, tuple):  # (status, message[, code]): any other HTTP error
            return action[0], action[1], {"x-error-code": action[2]} if len(action) > 2 else {}
        if action == "no_choices":
            return 200, "", {"x-no-choices": "1"}
        if action == "timeout":
            time.sleep(self.timeout_sleep)
            return 500, "too late", {}
        text = action if isinstance(action, str) else self.reply(prompt)
        with self._lock:
            self.answered.append(hashlib.sha256(body).hexdigest())
        return 200, text, {}

    def __enter__(self) -> FakeOpenAI:
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
