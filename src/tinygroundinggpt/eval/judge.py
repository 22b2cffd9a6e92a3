"""A judge model behind any OpenAI-compatible endpoint (OpenAI, vLLM, llama.cpp server, ...).

Every answer the judge gives is cached on disk by a hash of the exact request, so an interrupted
judged evaluation resumes without paying for the same review twice and a rerun reproduces its scores.
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
import os
import time
from pathlib import Path
from typing import Any

from PIL import Image

from tinygroundinggpt.eval.task import ScoreUnavailable


class JudgeError(ScoreUnavailable):
    """The judge endpoint failed for a request after all retries."""


class Judge:
    """``ask(prompt, system=..., image=...)`` → the judge's reply text, cached.

    ``base_url`` points the openai client at any compatible server; ``api_key`` defaults to
    ``$OPENAI_API_KEY`` (servers that ignore keys get a placeholder). ``client`` lets a caller pass a
    ready ``openai.OpenAI`` (tests use one with a mock transport).
    """

    def __init__(
        self,
        model: str,
        *,
        base_url: str | None = None,
        api_key: str | None = None,
        cache_path: str | Path | None = None,
        temperature: float = 0.2,
        max_tokens: int = 1024,
        retries: int = 3,
        client: Any = None,
    ) -> None:
        if client is None:
            import openai

            key = api_key or os.environ.get("OPENAI_API_KEY") or ("not-needed" if base_url else None)
            if key is None:
                raise JudgeError(
                    "no API key for the judge: set OPENAI_API_KEY or pass --judge-base-url to a local server"
                )
            client = openai.OpenAI(base_url=base_url, api_key=key, max_retries=0)
        self.client, self.model = client, model
        # which server answered is part of a cached reply's key: two servers may serve the same model name
        self.server = str(getattr(client, "base_url", None) or base_url or "")
        self.temperature, self.max_tokens, self.retries = temperature, max_tokens, retries
        self.cache_path = Path(cache_path) if cache_path else None
        self._cache: dict[str, str] = {}
        if self.cache_path and self.cache_path.exists():
            for line in self.cache_path.read_text(encoding="utf-8").splitlines():
                try:
                    row = json.loads(line)
                except json.JSONDecodeError:
                    continue  # a line cut short by an interrupted run
                self._cache.setdefault(row["key"], row["reply"])

    def ask(self, prompt: str, *, system: str | None = None, image: str | Path | bytes | None = None) -> str:
        messages: list[dict[str, Any]] = []
        if system:
            messages.append({"role": "system", "content": system})
        if image is None:
            messages.append({"role": "user", "content": prompt})
        else:
            url = {"url": _data_url(image)}
            messages.append(
                {"role": "user", "content": [{"type": "image_url", "image_url": url}, {"type": "text", "text": prompt}]}
            )
        request = {
            "model": self.model,
            "messages": messages,
            "temperature": self.temperature,
            "max_tokens": self.max_tokens,
        }
        key = hashlib.sha256(json.dumps({**request, "server": self.server}, sort_keys=True).encode()).hexdigest()
        if key in self._cache:
            return self._cache[key]
        reply = self._call(request)
        self._cache[key] = reply
        if self.cache_path:
            self.cache_path.parent.mkdir(parents=True, exist_ok=True)
            with self.cache_path.open("a", encoding="utf-8") as fh:
                fh.write(json.dumps({"key": key, "reply": reply}, ensure_ascii=False) + "\n")
        return reply

    def _call(self, request: dict[str, Any]) -> str:
        last: Exception | None = None
        for attempt in range(self.retries):
            try:
                response = self.client.chat.completions.create(**request)
                return response.choices[0].message.content or ""
            except Exception as exc:  # the openai client raises many types (network, rate limit, 5xx)
                last = exc
                time.sleep(min(2**attempt, 10) * 0.5)
        raise JudgeError(f"judge {self.model} failed after {self.retries} tries: {type(last).__name__}: {last}")


def _data_url(image: str | Path | bytes) -> str:
    data = Path(image).read_bytes() if isinstance(image, (str, Path)) else bytes(image)
    fmt = (Image.open(io.BytesIO(data)).format or "png").lower()
    return f"data:image/{fmt};base64,{base64.b64encode(data).decode()}"
