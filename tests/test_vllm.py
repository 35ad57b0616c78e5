"""`pantheon serve --backend vllm`: the flags vLLM gets, and requests in vLLM's own form.

No GPU here: a stand-in `vllm` on PATH records its command line and answers like vLLM's
OpenAI-compatible server, so the whole path (start, health, requests, stop) runs for real."""

from __future__ import annotations

import json
import os
import stat
import sys
import textwrap

import pytest
from helpers import pantheon
from pydantic import BaseModel

from pantheon.core import ModelServerError
from pantheon.core.model.client import LLMClient
from pantheon.core.model.safecall import call_model
from pantheon.core.model.server import ModelServer, ServerConfig, free_port

FAKE_VLLM = textwrap.dedent(
    """\
    #!PYTHON
    import json, os, sys
    from http.server import BaseHTTPRequestHandler, HTTPServer
    args = sys.argv[1:]
    log = os.environ["FAKE_VLLM_LOG"]
    with open(log, "a") as f:
        f.write(json.dumps({"argv": args}) + "\\n")
    port = int(args[args.index("--port") + 1])
    class H(BaseHTTPRequestHandler):
        def log_message(self, *a):
            pass
        def _send(self, code, body):
            data = json.dumps(body).encode()
            self.send_response(code)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)
        def do_GET(self):
            self._send(200, {} if self.path == "/health" else {"data": []})
        def do_POST(self):
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            with open(log, "a") as f:
                f.write(json.dumps({"request": body}) + "\\n")
            content = json.dumps({"verdict": "pass"})
            self._send(200, {"model": body["model"], "choices": [
                {"message": {"content": content}, "finish_reason": "stop"}],
                "usage": {"prompt_tokens": 3, "completion_tokens": 4}})
    HTTPServer(("127.0.0.1", port), H).serve_forever()
    """
)


class Verdict(BaseModel):
    verdict: str


@pytest.fixture
def fake_vllm(tmp_path, monkeypatch):
    bindir = tmp_path / "bin"
    bindir.mkdir()
    exe = bindir / "vllm"
    exe.write_text(FAKE_VLLM.replace("PYTHON", sys.executable))
    exe.chmod(exe.stat().st_mode | stat.S_IEXEC)
    log = tmp_path / "vllm.log"
    monkeypatch.setenv("PATH", f"{bindir}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("FAKE_VLLM_LOG", str(log))
    return log


async def test_vllm_gets_the_right_flags_and_requests_in_its_form(tmp_path, fake_vllm):
    model_dir = tmp_path / "Qwen2.5-Coder-0.5B-Instruct"
    model_dir.mkdir()
    adapter = tmp_path / "adapters" / "review-v1"
    adapter.mkdir(parents=True)
    port = free_port()
    config = ServerConfig(
        backend="vllm", model=str(model_dir), port=port, parallel=32, adapters=[str(adapter)]
    )
    server = ModelServer(tmp_path / "a", config)
    state = server.start(timeout_s=30)
    try:
        argv = json.loads(fake_vllm.read_text().splitlines()[0])["argv"]
        assert argv[:2] == ["serve", str(model_dir)]
        flags = dict(zip(argv[2::2], argv[3::2], strict=False))
        assert flags["--host"] == "127.0.0.1" and flags["--port"] == str(port)
        assert flags["--max-num-seqs"] == "32"
        assert flags["--served-model-name"] == "Qwen2.5-Coder-0.5B-Instruct"
        assert "--enable-lora" in argv
        assert argv[argv.index("--lora-modules") + 1] == f"review-v1={adapter}"
        async with LLMClient(state.endpoint, backend="vllm", model=state.alias) as client:
            msgs = [{"role": "user", "content": "review"}]
            value, reply = await call_model(client, msgs, Verdict, adapter="review-v1")
        assert value.verdict == "pass" and reply.model == "review-v1"
        request = json.loads(fake_vllm.read_text().splitlines()[-1])["request"]
        assert request["model"] == "review-v1"
        assert request["structured_outputs"]["json"]["title"] == "Verdict"
    finally:
        assert server.stop()


def test_vllm_missing_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))
    server = ModelServer(tmp_path, ServerConfig(backend="vllm", model=str(tmp_path)))
    with pytest.raises(ModelServerError, match="vLLM is not installed on this host"):
        server.start()


def test_serve_backend_vllm_from_the_command_line(tmp_path, fake_vllm):
    a = str(tmp_path / "a")
    port = str(free_port())
    model = str(tmp_path)
    up = pantheon(
        "serve", "--detach", "--backend", "vllm", "--model", model, "--port", port, "--artifacts", a
    )
    try:
        assert up.returncode == 0, up.stderr
        assert f"ready at http://127.0.0.1:{port}" in up.stdout
        assert "vllm server" in pantheon("serve", "--status", "--artifacts", a).stdout
    finally:
        assert pantheon("serve", "--stop", "--artifacts", a).returncode == 0
