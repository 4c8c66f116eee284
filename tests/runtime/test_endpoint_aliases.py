"""MYELIN_ENDPOINT_ALIASES: in the cloud a TrafficSplitter's ALB rule forwards the splitter's path unchanged to
one of its APIs' pods, which answer it as their own endpoint (real `myelin serve` on 127.0.0.1)."""

import httpx
import pytest

from myelin.server import MyelinApp
from myelin.settings import Settings, SettingsError
from myelin.spec import load_api_spec

APIS = "tests/runtime/apis"


def test_serve_answers_on_the_splitter_path_as_on_its_own(start_server):
    server = start_server("serve", f"{APIS}/echo", env={"MYELIN_ENDPOINT_ALIASES": "split=/predict"})
    own = httpx.post(f"{server.base}/echo", params={"mode": "echo"}, json={"x": 1}, timeout=10)
    aliased = httpx.post(f"{server.base}/predict", params={"mode": "echo"}, json={"x": 1}, timeout=10)
    assert aliased.status_code == own.status_code == 200
    assert aliased.json() == own.json()
    # Only POST, only the alias: other methods and paths stay the control app's.
    assert httpx.get(f"{server.base}/predict", timeout=10).status_code == 404
    assert httpx.post(f"{server.base}/predict/x", json={}, timeout=10).status_code == 404
    text = httpx.get(f"{server.base}/metrics", timeout=10).text
    # The request counts against the API that answered it, and the split against the splitter.
    assert 'myelin_requests_total{api="echo",status="200"} 2.0' in text
    assert 'myelin_split_requests_total{api="echo",splitter="split"} 1.0' in text


def test_without_aliases_the_path_is_a_404(start_server):
    server = start_server("serve", f"{APIS}/echo")
    assert httpx.post(f"{server.base}/predict", json={}, timeout=10).status_code == 404
    assert "myelin_split_requests_total" not in httpx.get(f"{server.base}/metrics", timeout=10).text


@pytest.mark.parametrize("raw", ["/predict", "split=predict", "split=/predict/", "a=/p,b=/p", "=/p"])
def test_a_bad_alias_names_the_variable(raw):
    with pytest.raises(SettingsError, match="MYELIN_ENDPOINT_ALIASES"):
        Settings.from_env({"MYELIN_ENDPOINT_ALIASES": raw})


def test_an_alias_on_the_apis_own_endpoint_or_an_async_api_is_refused():
    from pathlib import Path

    echo = Path(APIS) / "echo"
    with pytest.raises(SettingsError, match="own endpoint"):
        MyelinApp([(echo, load_api_spec(echo))],
                  settings=Settings.from_env({"MYELIN_ENDPOINT_ALIASES": "s=/echo"}))
    queued = Path("apis/hyperparameter-search")  # an AsyncAPI
    with pytest.raises(SettingsError, match="not a RealtimeAPI"):
        MyelinApp([(queued, load_api_spec(queued))],
                  settings=Settings.from_env({"MYELIN_ENDPOINT_ALIASES": "s=/predict"}))
