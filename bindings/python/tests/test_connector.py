import asyncio
import json
import os
import pathlib
import re
import subprocess
import sys
import threading
import traceback

import pytest

import catalyst_connectors
from catalyst_connectors import ConnectorError, MissingRefreshToken, ReauthorizationRequired

from conftest import CLIENT_ID, CLIENT_SECRET, cli


def test_the_readmes_first_example_the_seeds_snippet_prints_a_token(emulator, store):
    readme = (pathlib.Path(__file__).parents[1] / "README.md").read_text()
    snippet = re.search(r"```python\n(.*?)```", readme, re.S).group(1)
    for placeholder, value in {
        "{add_client_id}": CLIENT_ID,
        "{add_client_secret}": CLIENT_SECRET,
        "{add_auth_url}": emulator.token_url,
        "{add_refresh_url}": emulator.token_url,
        "{add_refresh_token}": emulator.refresh_token(),
    }.items():
        snippet = snippet.replace(placeholder, value)
    out = subprocess.run([sys.executable, "-c", snippet], capture_output=True, text=True, cwd=store)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().startswith("1000.")
    assert emulator.requests() == 1


def test_64_threads_on_a_cold_connector_cause_1_token_request(slow_emulator):
    crm = catalyst_connectors.initialize().connection(slow_emulator.config(slow_emulator.refresh_token())).get_connector("crm")
    tokens, barrier = [], threading.Barrier(64)

    def call():
        barrier.wait()
        tokens.append(crm.get_access_token())

    threads = [threading.Thread(target=call) for _ in range(64)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(tokens) == 64 and len(set(tokens)) == 1
    assert slow_emulator.requests() == 1


def test_asyncio_callers_share_one_mint(slow_emulator):
    crm = catalyst_connectors.initialize().connection(slow_emulator.config(slow_emulator.refresh_token())).get_connector("crm")

    async def main():
        return await asyncio.gather(*(crm.get_access_token_async() for _ in range(200)))

    tokens = asyncio.run(main())
    assert len(set(tokens)) == 1
    assert slow_emulator.requests() == 1
    assert asyncio.run(crm.get_access_token_async()) == tokens[0], "cached: resolved at once"


def test_the_cli_and_python_share_one_token_both_ways(emulator, store, monkeypatch):
    file = store / "connectors.json"
    file.write_text(json.dumps(emulator.config(emulator.refresh_token())))
    by_cli = cli("token", "crm", "--config", str(file))
    assert by_cli.returncode == 0, by_cli.stderr
    by_python = catalyst_connectors.initialize().connection(str(file)).get_connector("crm").get_access_token()
    assert by_python == by_cli.stdout.strip()
    assert emulator.requests() == 1

    other = store / "other"
    other.mkdir()
    monkeypatch.setenv("CONNECTOR_STORE", f"sqlite:{other / 'tokens.db'}")
    file2 = other / "connectors.json"
    file2.write_text(json.dumps(emulator.config(emulator.refresh_token())))
    minted = catalyst_connectors.initialize().connection(str(file2)).get_connector("crm").get_access_token()
    back = cli("token", "crm", "--config", str(file2))
    assert back.stdout.strip() == minted
    assert emulator.requests() == 2


def test_a_revoked_refresh_token_raises_reauthorization_required_without_secrets(emulator):
    rt = emulator.refresh_token()
    emulator.revoke(rt)
    crm = catalyst_connectors.initialize().connection(emulator.config(rt)).get_connector("crm")
    with pytest.raises(ReauthorizationRequired) as caught:
        crm.get_access_token()
    err = caught.value
    assert isinstance(err, ConnectorError)
    assert err.code == "reauthorization_required"
    assert "re-authorize" in str(err)
    shown = "\n".join([str(err), repr(err), "".join(traceback.format_exception(err)), repr(crm)])
    for secret in (rt, CLIENT_SECRET):
        assert secret not in shown


def test_access_token_invalidate_status_and_for_user(emulator):
    crm = catalyst_connectors.initialize().connection(emulator.config(emulator.refresh_token())).get_connector("crm")
    info = crm.access_token()
    assert info.expires_at > info.refresh_at > 0
    assert info.api_domain
    assert info.token not in repr(info)
    reports = []
    threads = [threading.Thread(target=lambda: reports.append(crm.invalidate(info.token))) for _ in range(20)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert reports.count(True) == 1, "replaced once however many report it"
    assert crm.get_access_token() != info.token
    assert crm.invalidate(info.token) is False
    assert emulator.requests() == 2
    status = crm.status()
    assert status["name"] == "crm" and status["state"] == "fresh" and status["mints_in_window"] == 2
    alice = crm.for_user("alice")
    assert alice.name == "crm.alice"
    with pytest.raises(MissingRefreshToken) as caught:
        alice.get_access_token()
    assert caught.value.code == "missing_refresh_token"
    with pytest.raises(ConnectorError) as caught:
        catalyst_connectors.initialize().connection(emulator.config("x")).get_connector("nope")
    assert caught.value.code == "unknown_connector"


@pytest.mark.skipif(not hasattr(os, "fork"), reason="no fork on this platform")
def test_a_forked_child_gets_the_token_from_the_store_without_a_request(emulator):
    crm = catalyst_connectors.initialize().connection(emulator.config(emulator.refresh_token())).get_connector("crm")
    parent = crm.get_access_token()
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: the parent's runtime threads are gone; ours starts on first use
        os.close(read)
        try:
            token = crm.get_access_token()
            os.write(write, token.encode())
        finally:
            os._exit(0)
    os.close(write)
    with os.fdopen(read) as pipe:
        child = pipe.read()
    os.waitpid(pid, 0)
    assert child == parent
    assert emulator.requests() == 1, "the child read the shared store"


def test_initialize_with_a_catalyst_request_keeps_tokens_in_its_project(emulator, monkeypatch):
    admin = emulator.mint(emulator.refresh_token("ZohoCatalyst.cache.READ,ZohoCatalyst.cache.CREATE,ZohoCatalyst.cache.DELETE"))
    monkeypatch.setenv("X_ZOHO_CATALYST_CONSOLE_URL", emulator.url)

    class Request:  # e.g. Flask's request
        headers = {"X-Zc-ProjectId": "4000000001234", "X-Zc-Environment": "Development",
                   "X-Zc-Admin-Cred-Type": "token", "X-Zc-Admin-Cred-Token": admin, "Accept": "*/*"}

    app = catalyst_connectors.initialize(Request())
    assert app.is_catalyst
    config = emulator.config(emulator.refresh_token())
    token = app.connection(config).get_connector("crm").get_access_token()
    again = catalyst_connectors.initialize(Request()).connection(config).get_connector("crm").get_access_token()
    assert again == token
    assert emulator.requests() == 2, "one for the admin token, one for crm"
    with pytest.raises(catalyst_connectors.ConfigError):
        catalyst_connectors.initialize({"x-zc-projectid": "1"})
