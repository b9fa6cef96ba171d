"""The fake OpenAI-compatible server and the tiny persona corpus the
persona tests share."""

import http.server
import json
import threading

from content.personas import llm as persona_llm


class FakeLLM:
    """An OpenAI-compatible `/v1/chat/completions` on 127.0.0.1 (port 0)
    that answers from a script: each entry is `(status, content)`; the
    last entry repeats. Records every request body."""

    def __init__(self, script):
        self.script = list(script)
        self.requests = []
        fake = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self):
                body = json.loads(
                    self.rfile.read(int(self.headers["Content-Length"]))
                )
                fake.requests.append((self.path, body))
                status, content = (
                    fake.script.pop(0)
                    if len(fake.script) > 1
                    else fake.script[0]
                )
                if callable(content):
                    content = content(body)
                payload = (
                    {
                        "choices": [
                            {
                                "message": {
                                    "role": "assistant",
                                    "content": content,
                                }
                            }
                        ]
                    }
                    if status == 200
                    else {"error": "boom"}
                )
                raw = json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(raw)))
                self.end_headers()
                self.wfile.write(raw)

            def log_message(self, *args):
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(
            target=self.server.serve_forever, daemon=True
        )

    @property
    def endpoint(self):
        return f"http://127.0.0.1:{self.server.server_address[1]}/v1"

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.server.shutdown()
        self.server.server_close()


GOOD = json.dumps(
    {
        "personas": [
            {"name": "Horror buff", "description": "Loves dark, scary films."},
            {
                "name": "Comedy fan",
                "description": "Wants light, funny evenings.",
            },
        ]
    }
)


def client_for(server, tmp_path, **kwargs):
    return persona_llm.LLMClient(
        server.endpoint,
        "fake-model",
        api_key="secret",
        timeout=5,
        retries=2,
        requests_per_minute=60000,
        cache_dir=tmp_path / "cache",
        backoff=0.01,
        **kwargs,
    )
