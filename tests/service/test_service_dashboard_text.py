"""Every dashboard page, rendered over folders that take each template branch, reads as the same
words whether or not Jinja2's ``trim_blocks`` / ``lstrip_blocks`` are on: no line end that the
template author meant as a space is swallowed, so no two words run together (session 3's
"trim_blocks drops spaces at line ends"). The visible text is compared word for word against a
rendering with both options off, where every newline of the template stays."""

from __future__ import annotations

import re
from collections.abc import Iterator
from html.parser import HTMLParser
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from provguard.service import ServiceSettings, create_app
from provguard.service import dashboard as dashboard_module

from .conftest import (
    KEYS,
    add_campaign,
    add_revocations,
    api_keys,
    build_small_store,
    copy_registry,
    run_small_grants_stage,
)

ROOT = Path(__file__).parents[2]
PAGES = ("/dashboard", "/dashboard/grants", "/dashboard/campaigns")
#: elements whose boundaries do not separate words (everything else -- p, td, div, h2,
#: caption, svg text, ... -- does)
INLINE = {"a", "b", "span", "i", "em", "strong", "code", "small", "abbr", "label"}


class _Text(HTMLParser):
    """Visible text: inline tags join their neighbours, every other tag is a word break;
    ``<style>`` / ``<script>`` bodies are skipped."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.parts: list[str] = []
        self._skip = 0

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag in ("style", "script"):
            self._skip += 1
        if tag not in INLINE:
            self.parts.append(" ")

    def handle_endtag(self, tag: str) -> None:
        if tag in ("style", "script"):
            self._skip -= 1
        if tag not in INLINE:
            self.parts.append(" ")

    def handle_data(self, data: str) -> None:
        if not self._skip:
            self.parts.append(data)


def words(html: str) -> list[str]:
    """The page's visible words, digits normalised (the "page generated" clock moves)."""
    parser = _Text()
    parser.feed(html)
    return re.sub(r"\d+", "0", "".join(parser.parts)).split()


def _folder_with_everything(root: Path) -> None:
    """Small store + revocations + campaign + a signed checkpoint (every 'if' branch)."""
    from provguard.adapters.audit_sqlite import SqliteAuditLog
    from provguard.audit.folder import export_checkpoint, folder_signing_key

    build_small_store(root, ROOT / "policies")
    add_revocations(root)
    add_campaign(root)
    key, _pub = folder_signing_key(root)
    log = SqliteAuditLog(root / "control.db")
    export_checkpoint(log.sign_checkpoint(key), root)
    log.close()


def _folder_with_exchanges(root: Path, cache: Path) -> None:
    build_small_store(root, ROOT / "policies")
    copy_registry(run_small_grants_stage(cache)[0], root / "grants.db")


def _empty_folder(root: Path) -> None:
    """A control store with no grants, transfers, campaigns or decisions (the 'else' branches)."""
    from provguard.adapters.audit_sqlite import SqliteAuditLog
    from provguard.adapters.control_sqlite import SqlControlStore

    root.mkdir(parents=True)
    SqlControlStore(root / "control.db").engine.dispose()
    SqliteAuditLog(root / "control.db").close()


@pytest.fixture(params=["everything", "exchanges", "empty"])
def dashboard_client(
    request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[TestClient]:
    monkeypatch.delenv("PROVGUARD_AUDIT_KEY", raising=False)
    root = tmp_path / "out"
    if request.param == "everything":
        _folder_with_everything(root)
    elif request.param == "exchanges":
        _folder_with_exchanges(root, tmp_path / "stage")
    else:
        _empty_folder(root)
    settings = ServiceSettings(
        store=root, policy=ROOT / "policies", api_keys=api_keys(), dashboard_refresh=0
    )
    with TestClient(create_app(settings)) as c:
        c.post("/dashboard/login", data={"key": KEYS["auditor"]}, follow_redirects=False)
        yield c


def _render_both(c: TestClient, path: str, monkeypatch: pytest.MonkeyPatch) -> tuple[str, str]:
    shipped = c.get(path)
    assert shipped.status_code == 200, shipped.text
    with monkeypatch.context() as mp:
        mp.setattr(
            dashboard_module,
            "_env",
            dashboard_module._env.overlay(trim_blocks=False, lstrip_blocks=False),
        )
        literal = c.get(path)
    assert literal.status_code == 200
    return shipped.text, literal.text


@pytest.mark.parametrize("path", PAGES)
def test_no_words_run_together(
    dashboard_client: TestClient, path: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    shipped, literal = _render_both(dashboard_client, path, monkeypatch)
    assert words(shipped) == words(literal)
    assert len(words(shipped)) > 20


def test_the_login_page_too(dashboard_client: TestClient, monkeypatch: pytest.MonkeyPatch) -> None:
    c = dashboard_client
    for get in (lambda: c.get("/dashboard/login"),
                lambda: c.post("/dashboard/login", content=b"key=wrong")):  # fmt: skip
        shipped = get()
        with monkeypatch.context() as mp:
            mp.setattr(
                dashboard_module,
                "_env",
                dashboard_module._env.overlay(trim_blocks=False, lstrip_blocks=False),
            )
            literal = get()
        assert words(shipped.text) == words(literal.text)


def test_the_checker_sees_a_swallowed_space() -> None:
    """The check itself: a template whose line ends in a block tag before a word is caught."""
    env = dashboard_module._env
    source = "<p>Entries 3;\n{% if true %}\nsigned{% endif %}\ncheckpoint</p>"
    shipped = env.from_string(source).render()
    literal = env.overlay(trim_blocks=False, lstrip_blocks=False).from_string(source).render()
    assert words(shipped) != words(literal)
    assert "signedcheckpoint" in words(shipped)
