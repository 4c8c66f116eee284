"""The local page says which version serves and which edit was refused (issue 24, gap 6): after a refused reload
it showed "version 1 was refused" beside "version 1 · loaded"."""

from __future__ import annotations

from myelin.local.page import render


def _api(**extra) -> dict:
    return {"name": "iris", "state": "ready", "endpoint": "/iris", "version": 1, "load_seconds": 1.5, **extra}


def test_a_refused_api_yaml_edit_is_not_called_the_serving_version():
    """A bad api.yaml is refused before a process starts: its number is the serving version's."""
    page = render([_api(refused={"version": 1, "error": "apis/iris/api.yaml: serving.timeout: bad", "at": "14:02:07"})],
                  "http://127.0.0.1:8888")
    assert "version 1 serving · loaded in 1.50 s" in page
    assert "the edit saved at 14:02:07 was refused; version 1 keeps serving: apis/iris/api.yaml: serving.timeout" \
           in page
    assert "version 1 was refused" not in page


def test_a_refused_version_that_started_is_named_beside_the_serving_one():
    """A version that started and failed to load has its own number."""
    page = render([_api(refused={"version": 2, "error": "predictor.py, line 3: SyntaxError", "at": "14:03:00"})],
                  "http://127.0.0.1:8888")
    assert "version 2 was refused; version 1 keeps serving: predictor.py, line 3: SyntaxError" in page
