"""What ``pip install llmsession`` gives: the core and the client, each extra its own part.

The wheel is built once and installed without extras in a fresh venv (a
module-scoped fixture: building and installing take seconds). There,
tests/plain_install_probe.py uses the core, the SQLite store and the client,
the client against a real server run from this venv over loopback. The other
tests hide an extra's modules in this process, where every extra is installed.
"""

from __future__ import annotations

import json
import os
import re
import runpy
import subprocess
import sys
import zipfile
from collections.abc import Callable
from pathlib import Path

import pytest

import llmsession.console
from llmsession.errors import StoreError
from llmsession.store import open_store
from tests.server.conftest import (
    ADMIN_KEY,
    ServerFactory,
    start_server,  # noqa: F401  (the real-server fixture: pytest finds it here by name)
)

ROOT = Path(__file__).resolve().parent.parent
PROBE = Path(__file__).with_name("plain_install_probe.py")

#: What each extra installs, as top-level modules; the plain install has none of them.
EXTRA_MODULES = {
    "server": ("click", "fastapi", "uvicorn", "prometheus_client"),
    "postgres": ("psycopg", "psycopg_pool"),
    "redis": ("redis", "msgpack"),
}

MISSING_SERVER = (
    "Error: the llmsession command needs the server extra (click is not installed): "
    "pip install 'llmsession[server]'\n"
)


def _run(*args: str | Path, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    # Without PYTHONPATH, so that nothing but the venv's own packages can be imported.
    env = {name: value for name, value in os.environ.items() if name != "PYTHONPATH"}
    return subprocess.run(
        [str(arg) for arg in args],
        capture_output=True,
        text=True,
        env=env,
        cwd=cwd,
        timeout=600,
        check=False,
    )


def _check(result: subprocess.CompletedProcess[str]) -> subprocess.CompletedProcess[str]:
    assert result.returncode == 0, f"{result.args} exited {result.returncode}:\n{result.stderr}"
    return result


@pytest.fixture(scope="module")
def plain_venv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh venv holding the wheel built from this checkout, installed without extras."""
    work = tmp_path_factory.mktemp("plain-install")
    # pip wheel needs nothing beyond pip; --no-deps builds only llmsession's own wheel.
    _check(
        _run(sys.executable, "-m", "pip", "wheel", "--no-deps", "-w", work / "dist", ROOT, cwd=work)
    )
    [wheel] = (work / "dist").glob("llmsession-*.whl")
    venv = work / "venv"
    # This venv's pip installs into the new one, which then holds only the wheel and what
    # it requires, resolved from pip's configured indexes as a user's install would be.
    _check(_run(sys.executable, "-m", "venv", "--without-pip", venv))
    _check(_run(sys.executable, "-m", "pip", "--python", venv / "bin" / "python", "install", wheel))
    return venv


def test_the_plain_install_is_the_core_and_the_client(
    plain_venv: Path,
    start_server: ServerFactory,  # noqa: F811  (the fixture imported above)
    sqlite_url: str,
    tmp_path: Path,
) -> None:
    server = start_server(sqlite_url)
    probe = _check(
        _run(
            plain_venv / "bin" / "python",
            "-I",  # no script directory on sys.path: only the venv's packages
            PROBE,
            server.base_url,
            ADMIN_KEY,
            tmp_path,
            cwd=tmp_path,
        )
    )
    report = json.loads(probe.stdout)

    requires = {re.split(r"[\[<>=!~; ]", requirement)[0] for requirement in report["requires"]}
    assert requires == {"httpx", "typing-extensions"}
    assert report["core_tokens_saved"] == 1120
    assert report["client_tokens_saved"] == 1120
    assert report["sqlite_round_count"] == 1
    assert report["postgresql"] == (
        "StoreError: postgresql:// store URLs need the 'postgres' extra "
        "(psycopg is not installed): pip install 'llmsession[postgres]'"
    )
    assert report["redis"] == (
        "StoreError: redis:// store URLs need the 'redis' extra "
        "(redis is not installed): pip install 'llmsession[redis]'"
    )
    assert report["loaded"] == []
    assert report["installed"] == []


def test_the_wheel_holds_the_dashboard_s_templates_and_static_files(plain_venv: Path) -> None:
    [wheel] = (plain_venv.parent / "dist").glob("llmsession-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
    ui = "llmsession/server/ui"
    source = ROOT / "src" / ui
    expected = {
        f"{ui}/{path.relative_to(source).as_posix()}"
        for folder in ("templates", "static")
        for path in (source / folder).rglob("*")
        if path.is_file()
    }
    assert f"{ui}/templates/base.html" in expected
    assert f"{ui}/static/vendor/uplot/uPlot.iife.min.js" in expected
    assert f"{ui}/static/vendor/swagger-ui/LICENSE" in expected
    assert expected <= names, sorted(expected - names)


def test_the_plain_install_s_command_names_the_server_extra(
    plain_venv: Path, sqlite_url: str, tmp_path: Path
) -> None:
    command = _run(
        plain_venv / "bin" / "llmsession",
        "tenants",
        "list",
        "--store-url",
        sqlite_url,
        cwd=tmp_path,
    )

    assert (command.returncode, command.stdout, command.stderr) == (1, "", MISSING_SERVER)


@pytest.mark.parametrize("module_name", ["llmsession.server", "llmsession.fake_provider"])
def test_the_plain_install_s_modules_name_the_server_extra(
    plain_venv: Path, sqlite_url: str, tmp_path: Path, module_name: str
) -> None:
    module = _run(plain_venv / "bin" / "python", "-m", module_name, cwd=tmp_path)

    assert (module.returncode, module.stdout) == (1, "")
    assert module.stderr.startswith(f"Error: python -m {module_name} needs the server extra (")
    assert module.stderr.endswith(" is not installed): pip install 'llmsession[server]'\n")
    assert "Traceback" not in module.stderr


# -- in this process, with an extra's modules hidden ------------------------------------

#: llmsession's modules that import an extra's modules; hiding those makes these import again.
_IMPORTERS = (
    "llmsession.cli",
    "llmsession.server.runner",
    "llmsession.server.__main__",
    "llmsession.store.postgres",
    "llmsession.store.redis",
)

Hide = Callable[..., None]


@pytest.fixture
def hide(monkeypatch: pytest.MonkeyPatch) -> Hide:
    """Make the named modules fail to import, as if not installed, until the test ends."""

    def hide_modules(*names: str) -> None:
        for name in names:
            monkeypatch.setitem(sys.modules, name, None)
        for name in [name for name in sys.modules if name.startswith(_IMPORTERS)]:
            monkeypatch.delitem(sys.modules, name)

    return hide_modules


@pytest.mark.parametrize(
    ("url", "hidden", "extra"),
    [
        ("postgresql://nobody@127.0.0.1:1/none", "psycopg", "postgres"),
        ("postgres://nobody@127.0.0.1:1/none", "psycopg_pool", "postgres"),
        ("redis://127.0.0.1:1/0", "redis", "redis"),
        ("rediss://127.0.0.1:1/0", "msgpack", "redis"),
    ],
)
async def test_a_store_whose_extra_is_missing_names_the_extra(
    hide: Hide, url: str, hidden: str, extra: str
) -> None:
    hide(hidden)
    scheme = url.partition(":")[0]

    with pytest.raises(StoreError) as raised:
        await open_store(url)

    assert str(raised.value) == (
        f"{scheme}:// store URLs need the {extra!r} extra ({hidden} is not installed): "
        f"pip install 'llmsession[{extra}]'"
    )


async def test_a_missing_module_of_llmsession_itself_is_not_blamed_on_an_extra(
    hide: Hide,
) -> None:
    hide("llmsession.store.sql_rows")

    with pytest.raises(ModuleNotFoundError, match=r"llmsession\.store\.sql_rows"):
        await open_store("postgresql://nobody@127.0.0.1:1/none")


def test_the_command_without_the_server_extra_says_one_line(
    hide: Hide, capsys: pytest.CaptureFixture[str]
) -> None:
    hide("click")

    with pytest.raises(SystemExit) as exited:
        llmsession.console.main(["tenants", "list"])

    assert exited.value.code == 1
    assert capsys.readouterr() == ("", MISSING_SERVER)


def test_python_m_llmsession_cli_without_the_server_extra_says_one_line(
    hide: Hide, capsys: pytest.CaptureFixture[str]
) -> None:
    # docs/cli.md: `python -m llmsession.cli ...` is the same command, so it says the
    # same line, not a traceback of the failed `import click`.
    hide("click")

    with pytest.raises(SystemExit) as exited:
        runpy.run_module("llmsession.cli", run_name="__main__")

    assert exited.value.code == 1
    assert capsys.readouterr() == (
        "",
        "Error: python -m llmsession.cli needs the server extra (click is not installed): "
        "pip install 'llmsession[server]'\n",
    )


def test_the_server_module_without_the_server_extra_says_one_line(
    hide: Hide, capsys: pytest.CaptureFixture[str]
) -> None:
    hide("uvicorn")
    from llmsession.server.__main__ import main

    with pytest.raises(SystemExit) as exited:
        main()

    assert exited.value.code == 1
    assert capsys.readouterr() == (
        "",
        "Error: python -m llmsession.server needs the server extra (uvicorn is not "
        "installed): pip install 'llmsession[server]'\n",
    )


def test_the_command_with_the_server_extra_runs_the_cli(
    capsys: pytest.CaptureFixture[str],
) -> None:
    with pytest.raises(SystemExit) as exited:
        llmsession.console.main(["--help"])

    assert exited.value.code == 0
    assert capsys.readouterr().out.startswith("Usage: llmsession ")
