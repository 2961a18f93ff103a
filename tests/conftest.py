from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from provguard.config import RunSettings
from provguard.grants.crypto import KEY_ENV
from provguard.job.run import run_main_job

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return ROOT


@pytest.fixture(scope="session")
def injunction_path() -> Path:
    return ROOT / "policies" / "cn-tj-binhai-2019-douyin-duoshan.yaml"


@pytest.fixture(scope="session")
def small_job_folder(tmp_path_factory: pytest.TempPathFactory, repo_root: Path) -> Path:
    """The main job on the first 600 lines of ego-Facebook under the shipped policy, with no
    registry or audit key from the environment. Read only: tests edit a copy (``folder``)."""
    work = tmp_path_factory.mktemp("small-job")
    lines = (repo_root / "data/graphs/snap-ego-facebook.txt").read_text().splitlines()
    graph = work / "ego-facebook-600.txt"
    graph.write_text("\n".join(lines[:600]) + "\n")
    out = work / "demo"
    with pytest.MonkeyPatch.context() as mp:
        mp.delenv(KEY_ENV, raising=False)
        mp.delenv("PROVGUARD_AUDIT_KEY", raising=False)
        run_main_job(RunSettings(out=out, graph=graph, policy=repo_root / "policies"))
    return out


@pytest.fixture
def folder(small_job_folder: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A copy of :func:`small_job_folder` a test may edit."""
    monkeypatch.delenv(KEY_ENV, raising=False)
    monkeypatch.delenv("PROVGUARD_AUDIT_KEY", raising=False)
    out = tmp_path / "copy"
    shutil.copytree(small_job_folder, out)
    return out
