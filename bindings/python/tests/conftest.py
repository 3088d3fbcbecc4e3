"""Fixtures: the workspace's zoho-emulator and connector binaries (built by
`cargo build -p zoho-emulator -p connector-cli`, as .ci/run does) and a fresh token store."""

import json
import os
import pathlib
import subprocess
import urllib.parse
import urllib.request

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[3]
CLIENT_ID = "1000.PY"
CLIENT_SECRET = "python-client-secret"


def binary(name):
    target = pathlib.Path(os.environ.get("CARGO_TARGET_DIR", ROOT / "target"))
    path = target / "debug" / name
    if not path.exists():
        raise RuntimeError(f"{path} is missing: run `cargo build -p zoho-emulator -p connector-cli` first")
    return str(path)


class Emulator:
    def __init__(self, *args):
        self.process = subprocess.Popen(
            [binary("zoho-emulator"), "--client-id", CLIENT_ID, "--client-secret", CLIENT_SECRET, *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
        )
        self.url = self.process.stdout.readline().strip()
        self.token_url = f"{self.url}/oauth/v2/token"

    def _post(self, route, body=None, form=None):
        data = json.dumps(body).encode() if body is not None else urllib.parse.urlencode(form or {}).encode()
        headers = {"content-type": "application/json"} if body is not None else {}
        with urllib.request.urlopen(urllib.request.Request(f"{self.url}{route}", data=data, headers=headers)) as r:
            text = r.read().decode()
            return json.loads(text) if text else {}

    def refresh_token(self, scope="ZohoCRM.users.READ"):
        return self._post("/__emulator/refresh_tokens", {"client_id": CLIENT_ID, "scope": scope})["refresh_token"]

    def mint(self, refresh_token):
        form = {"grant_type": "refresh_token", "client_id": CLIENT_ID, "client_secret": CLIENT_SECRET,
                "refresh_token": refresh_token}
        return self._post("/oauth/v2/token", form=form)["access_token"]

    def revoke(self, token):
        self._post("/oauth/v2/token/revoke?" + urllib.parse.urlencode({"token": token}), form={})

    def requests(self):
        with urllib.request.urlopen(f"{self.url}/__emulator/stats") as r:
            return json.load(r)["token_requests"]

    def config(self, refresh_token, name="crm"):
        return {name: {"client_id": CLIENT_ID, "client_secret": CLIENT_SECRET, "auth_url": self.token_url,
                       "refresh_url": self.token_url, "refresh_token": refresh_token}}


@pytest.fixture
def emulator():
    e = Emulator()
    yield e
    e.process.kill()
    e.process.wait()


@pytest.fixture
def slow_emulator():
    e = Emulator("--latency-ms", "200")
    yield e
    e.process.kill()
    e.process.wait()


@pytest.fixture(autouse=True)
def store(tmp_path, monkeypatch):
    """Each test on a token store of its own; nothing from the developer's environment."""
    for var in ("CONNECTOR_AGENT", "CONNECTOR_ENCRYPTION_KEY", "CONNECTOR_ENCRYPTION_KEY_FILE", "CONNECTOR_CONFIG"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("CONNECTOR_STORE", f"sqlite:{tmp_path / 'tokens.db'}")
    return tmp_path


def cli(*args):
    return subprocess.run([binary("connector"), *args], capture_output=True, text=True)
