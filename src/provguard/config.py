"""Typed settings of the main job."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, field_validator

DEFAULT_GRAPH = Path("data/graphs/snap-ego-facebook.txt")
DEFAULT_POLICY = Path("policies")
GRAPH_CITATIONS = {
    "snap-ego-facebook.txt": "J. McAuley and J. Leskovec. Learning to Discover Social Circles "
    "in Ego "
    "Networks. NIPS 2012 (SNAP ego-Facebook).",
    "snap-collegemsg.txt": "P. Panzarasa, T. Opsahl, K. M. Carley. Patterns and dynamics of users' "
    "behavior and interaction: Network analysis of an online community. JASIST 60(5), 2009 "
    "(SNAP CollegeMsg).",
}


class RunSettings(BaseModel):
    """Settings of ``provguard run``.

    ``as_of`` is the time the policy is evaluated at (timezone-aware; default 2019-06-30, the
    sandbox snapshot, when the 2019 order is in force). ``k`` recommendations per user;
    ``holdout`` the share of edges held out to measure recommendation quality. ``platform``: a
    platform export folder (one Parquet file per table of
    :data:`provguard.sandbox.schema.SCHEMAS`, as ``provguard sandbox build`` writes it) read
    instead of building the sandbox platform on ``graph`` with ``seed``. ``store_masks``: after
    writing ``profiles``, normalise its labels and store the masks of every (app, purpose) pair
    the policy serves (:func:`provguard.job.run.finish_profiles_store`); False keeps the table
    as written (raw labels, no stored masks).
    """

    model_config = ConfigDict(frozen=True)

    out: Path
    graph: Path = DEFAULT_GRAPH
    policy: Path = DEFAULT_POLICY
    seed: int = 7
    as_of: datetime = datetime(2019, 6, 30, tzinfo=UTC)
    k: int = Field(default=10, ge=1, le=100)
    holdout: float = Field(default=0.1, gt=0, lt=1)
    app: str = "douyin"
    platform: Path | None = None
    store_masks: bool = True

    @field_validator("as_of")
    @classmethod
    def _aware(cls, v: datetime) -> datetime:
        return v if v.tzinfo else v.replace(tzinfo=UTC)

    @property
    def citation(self) -> str:
        if self.platform is not None:
            return f"Platform export {self.platform} (not a bundled graph)."
        return GRAPH_CITATIONS.get(self.graph.name, str(self.graph))
