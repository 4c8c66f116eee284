"""What a new user meets first, found by following the README on a fresh clone: `myelin validate` refuses what
`myelin local` refuses (a misnamed spec file, a missing package, a missing local model folder), every install hint
names the Python that runs the API (a bare `pip` in a new shell is another Python's), fatal start-up errors are
errors in the JSON log, and the local page shows an API's README as text and its counts in plain English."""

from __future__ import annotations

import asyncio
import io
import shlex
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import httpx
import orjson

from myelin.loader import LoadError, import_predictor_class
from myelin.spec import load_api_spec

PREDICTOR = "class Predictor:\n    def __init__(self, config):\n        pass\n\n    def predict(self, payload):\n" \
            "        return payload\n"
PIP = f"{shlex.quote(sys.executable)} -m pip install -r"


def make_api(root: Path, name: str, spec: str = "", predictor: str = PREDICTOR, spec_file: str = "api.yaml") -> Path:
    folder = root / name
    folder.mkdir(parents=True)
    (folder / spec_file).write_text(f"name: {name}\n{spec}")
    (folder / "predictor.py").write_text(predictor)
    return folder


def validate(*paths: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "myelin.cli", "validate", *map(str, paths)], capture_output=True,
                          text=True, timeout=120)


def test_validate_names_a_misnamed_spec_inside_a_folder_of_apis(tmp_path):
    """`myelin local apis` refuses a sub-folder whose spec is `api.yml`; `myelin validate apis` said nothing."""
    make_api(tmp_path, "good")
    make_api(tmp_path, "typo", spec_file="api.yml")
    res = validate(tmp_path)
    assert res.returncode == 1, res.stdout
    assert f"✗ {tmp_path / 'typo' / 'api.yml'}: the spec file must be named api.yaml (did you mean " \
           f"{tmp_path / 'typo' / 'api.yaml'}?)" in res.stdout
    assert "✓ good" in res.stdout
    # Only misnamed folders: that, not "no API folders found".
    shutil.rmtree(tmp_path / "good")
    res = validate(tmp_path)
    assert res.returncode == 1 and "must be named api.yaml" in res.stdout and "no API folders" not in res.stdout


def test_validate_reports_unmet_requirements_as_myelin_local_does(tmp_path):
    """A package imported inside __init__ (as torch often is) passes the import check; myelin local refuses the
    API for its requirements.txt, and so does validate now: the package and the one command, this Python's pip."""
    folder = make_api(tmp_path, "needs-dep", predictor=PREDICTOR.replace("pass", "import not_installed_package_xyz"))
    (folder / "requirements.txt").write_text("not-installed-package-xyz==1.0\n")
    res = validate(folder)
    assert res.returncode == 1, res.stdout
    line = next(l for l in res.stdout.splitlines() if l.startswith("✗ needs-dep"))
    assert f"{folder / 'requirements.txt'}: needs packages this Python does not have: not-installed-package-xyz==1.0" \
        in line
    assert f"`{PIP} {folder / 'requirements.txt'}`" in line and "make local" not in line


def test_validate_reports_a_missing_local_model_folder(tmp_path):
    folder = make_api(tmp_path, "model-api", "predictor:\n  model_uri: model\n",
                      PREDICTOR.replace("(self, config)", "(self, config, model_dir)"))
    res = validate(folder)
    assert res.returncode == 1, res.stdout
    assert f"✗ model-api: {folder / 'api.yaml'}: predictor.model_uri: no file or folder at {folder / 'model'}" \
        in res.stdout
    (folder / "model").mkdir()
    assert validate(folder).returncode == 0


def test_an_import_error_names_this_pythons_pip(tmp_path):
    folder = make_api(tmp_path, "missing", predictor="import not_installed_package_xyz\n" + PREDICTOR)
    (folder / "requirements.txt").write_text("not-installed-package-xyz==1.0\n")
    try:
        import_predictor_class(folder, load_api_spec(folder))
    except LoadError as err:
        message = str(err)
    else:
        raise AssertionError("the import should fail")
    assert f"(install the API's dependencies: {PIP} {folder / 'requirements.txt'})" in message, message


def test_the_missing_packages_message_gives_the_command_alone(tmp_path):
    """Said while myelin local runs (maybe under `make local`): the install command, not `make local` again."""
    from myelin.local import requirements

    folder = make_api(tmp_path, "x")
    (folder / "requirements.txt").write_text("not-installed-package-xyz==1.0\n")
    message = requirements.message(folder, requirements.unmet(folder))
    assert message == ("needs packages this Python does not have: not-installed-package-xyz==1.0; install them with "
                       f"`{PIP} {folder / 'requirements.txt'}`")


def _json_lines(text: str) -> list[dict]:
    return [orjson.loads(line) for line in text.splitlines() if line.startswith("{")]


def test_fatal_start_up_errors_are_logged_as_errors(tmp_path):
    """Not on a terminal every console line is JSON: a busy port and a missing folder stop myelin local, and
    say so at level error (a log reader filtering on errors saw nothing)."""
    res = subprocess.run([sys.executable, "-m", "myelin.cli", "local", str(tmp_path / "nowhere"), "--port", "1"],
                         capture_output=True, text=True, timeout=60)
    assert res.returncode == 2
    (line,) = _json_lines(res.stdout)
    assert line["level"] == "error" and "no such folder" in line["message"]
    make_api(tmp_path / "apis", "one")
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        res = subprocess.run([sys.executable, "-m", "myelin.cli", "local", str(tmp_path / "apis"), "--port", str(port)],
                             capture_output=True, text=True, timeout=60)
    assert res.returncode == 2
    (line,) = _json_lines(res.stdout)
    assert line["level"] == "error" and f"port {port} is already in use" in line["message"]


def test_removing_a_refused_folder_is_said(tmp_path):
    """The console and the page listed the folder as failed (its api.yaml refused); its removal is said too."""
    from myelin.local.console import Console
    from myelin.local.manager import LocalServer

    root = tmp_path / "apis"
    folder = make_api(root, "broken", "nmae: typo\n")
    out = io.StringIO()
    server = LocalServer(root, Console(tty=False, out=out, err=io.StringIO()), "http://127.0.0.1:1")

    async def sync_twice() -> None:
        server.schedule(folder)
        await server.apis[folder].task
        assert server.apis[folder].state == "failed"
        shutil.rmtree(folder)
        server.schedule(folder)
        await server.apis[folder].task

    asyncio.run(sync_twice())
    events = _json_lines(out.getvalue())
    assert [e["message"] for e in events] == ["failed", "removed"], events
    assert events[1]["api"] == "broken" and events[1]["level"] == "info"
    assert folder not in server.apis


def test_readme_summary_is_plain_text(tmp_path):
    """The page showed `**AsyncAPI**` with its asterisks; code spans keep theirs, words with `_` stay whole."""
    from myelin.local.page import readme_summary

    (tmp_path / "README.md").write_text(
        "# title\n\nAn **AsyncAPI** that lives __outside__ the *image*: class_0 and class_1, 2 * 3 * 4,\n"
        "`**kwargs` stays, a [link](https://example.com).\n\nSecond paragraph.\n")
    assert readme_summary(tmp_path) == ("An AsyncAPI that lives outside the image: class_0 and class_1, 2 * 3 * 4, "
                                        "**kwargs stays, a link.")


def test_cost_line_counts_in_plain_english():
    from myelin.local.cost_view import cost_html

    one = cost_html({"measured": True, "cpu_seconds_per_prediction": 0.002, "predictions": 1})
    assert "over 1 prediction ·" in one
    many = cost_html({"measured": True, "cpu_seconds_per_prediction": 0.002, "predictions": 3})
    assert "over 3 predictions ·" in many


def test_openapi_documents_an_asyncapi_as_submit_and_poll(tmp_path):
    """/docs showed an AsyncAPI as a 200 prediction and left out `GET <endpoint>/{id}` (issue 24, gap 5)."""
    from myelin.openapi_doc import paths

    async_api = make_api(tmp_path, "jobs", "kind: AsyncAPI\n")
    documented = paths(load_api_spec(async_api), async_api, "/jobs")
    assert set(documented) == {"/jobs", "/jobs/{id}"}
    submit = documented["/jobs"]["post"]
    assert "202" in submit["responses"] and "200" not in submit["responses"]
    assert submit["responses"]["202"]["content"]["application/json"]["schema"]["required"] == ["id"]
    assert "Location" in submit["responses"]["202"]["headers"]
    poll = documented["/jobs/{id}"]["get"]
    assert {"200", "404"} <= set(poll["responses"]) and poll["parameters"][0]["name"] == "id"
    assert poll["responses"]["200"]["content"]["application/json"]["schema"]["properties"]["status"]["enum"] == [
        "in_queue", "in_progress", "completed", "failed"]
    realtime = make_api(tmp_path, "plain")
    assert set(paths(load_api_spec(realtime), realtime, "/plain")) == {"/plain"}
    assert "200" in paths(load_api_spec(realtime), realtime, "/plain")["/plain"]["post"]["responses"]


def test_myelin_local_openapi_lists_the_job_route(tmp_path, start_server):
    make_api(tmp_path / "apis", "jobs", "kind: AsyncAPI\n")
    server = start_server("local", str(tmp_path / "apis"), env={"MYELIN_STATE_DIR": str(tmp_path / "state")})
    doc = httpx.get(f"{server.base}/openapi.json").json()
    assert "202" in doc["paths"]["/jobs"]["post"]["responses"]
    assert "get" in doc["paths"]["/jobs/{id}"]
