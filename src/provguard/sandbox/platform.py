"""The sandbox platform: subjects, provider profiles, apps, grants, app profiles, transfers.

:func:`build_platform` lays a realistic Douyin/Duoshan platform over a real social graph, with the
distributions of :class:`provguard.sandbox.params.SandboxParams` (documented in
``docs/sandbox.md``). It is deterministic for a seed: the seed feeds one
``numpy.random.SeedSequence`` whose spawned children drive independent streams (subjects,
handles, grants and dates, pictures, ids), so the same seed gives byte-identical tables.

The story it encodes (every subject is a graph node):

* every subject has a douyin account; its login is ``wechat``/``qq`` (a douyin **grant** with the
  provider's scopes, dated 2017-01-01 .. snapshot; the provider holds a **provider profile** with
  the subject's nickname and picture) or ``none`` (phone sign-up, user-typed handle and picture);
* some subjects also have a duoshan account (launched 2019-01-15): most wechat/qq users created
  it by reusing the douyin login (a **transfer**, recorded with the douyin grant id and the time
  duoshan first used it), the others and all ``none`` users signed up directly (no grant);
* an app profile's handle/picture either came from the provider through the login (``provider``)
  or was typed/uploaded by the user (``user_input``) — and a user-typed value can still be a
  re-typed copy of the provider's; ``handle_edit``/``avatar_edit`` record the ground truth.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime
from typing import Final

import numpy as np
import pyarrow as pa
from PIL import Image

from provguard.adapters.graph_files import EdgeList, undirected_simple_edges
from provguard.sandbox import schema
from provguard.sandbox.handles import draw_edit, edit_handle, nickname, to_traditional
from provguard.sandbox.names import real_names
from provguard.sandbox.params import SandboxParams
from provguard.sandbox.pictures import EncodedPicture, base_avatar, edit_picture
from provguard.sandbox.schema import DOUYIN_EPOCH, DUOSHAN_LAUNCH, ORDER_DATE, SNAPSHOT

__all__ = ["APPS", "SCOPES", "Platform", "build_platform"]

SCOPES: Final = {"wechat": "snsapi_login snsapi_userinfo", "qq": "get_user_info"}
"""Scopes a douyin login grant holds, per provider (space separated)."""

APPS: Final = (
    {
        "app_id": "douyin",
        "name": "Douyin",
        "controller_id": "sandbox-microlive",
        "controller_name": "Sandbox Microlive Vision Technology Co., Ltd. (fictional)",
    },
    {
        "app_id": "duoshan",
        "name": "Duoshan",
        "controller_id": "sandbox-duoshan",
        "controller_name": "Sandbox Duoshan Network Technology Co., Ltd. (fictional)",
    },
)
"""The two client apps and their (different) controllers."""

_B64URL: Final = np.frombuffer(
    b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_", dtype=np.uint8
)
_EXT: Final = {"jpeg": "jpg", "png": "png"}


@dataclass(frozen=True)
class Platform:
    """The sandbox platform: one pyarrow Table per concept, schemas in :mod:`.schema`.

    Construction checks every table against its schema (``ValueError`` on mismatch).
    """

    subjects: pa.Table
    provider_profiles: pa.Table
    apps: pa.Table
    grants: pa.Table
    app_profiles: pa.Table
    transfers: pa.Table
    edges: pa.Table
    pictures: pa.Table

    def __post_init__(self) -> None:
        for name, table in self.tables().items():
            schema.check_schema(name, table)

    def tables(self) -> dict[str, pa.Table]:
        """Table name → table, in :data:`provguard.sandbox.schema.TABLE_NAMES` order."""
        return {name: getattr(self, name) for name in schema.TABLE_NAMES}

    def equals(self, other: Platform) -> bool:
        """True when every table equals ``other``'s (values and schema)."""
        return all(t.equals(getattr(other, n)) for n, t in self.tables().items())

    def summary(self) -> dict[str, int]:
        """Ground-truth counts, flat ``"dotted.key" → count``.

        Keys: ``subjects``, ``subjects.login.<login>``, ``provider_profiles.<provider>``,
        ``grants``, ``grants.status.<status>``, ``grants.before_order`` / ``grants.after_order``
        (granted before / on-or-after 2019-03-20), ``accounts.<app>``,
        ``accounts.<app>.grant_backed``, ``transfers``, ``transfers.before_order`` /
        ``transfers.after_order`` (first used before / on-or-after 2019-03-20),
        ``transfers.<provider>``, ``<app>.handle_source.<src>``, ``<app>.handle_edit.<edit>``,
        ``<app>.avatar_source.<src>``, ``<app>.avatar_edit.<edit>``,
        ``<app>.handle_copies`` / ``<app>.avatar_copies`` (edit != ``user_input``),
        ``<app>.handle_is_real_name``, ``edges``, ``pictures``.
        """
        out: dict[str, int] = {"subjects": self.subjects.num_rows}
        for key, count in sorted(Counter(self.subjects["login"].to_pylist()).items()):
            out[f"subjects.login.{key}"] = count
        for key, count in sorted(Counter(self.provider_profiles["provider"].to_pylist()).items()):
            out[f"provider_profiles.{key}"] = count
        out["grants"] = self.grants.num_rows
        for key, count in sorted(Counter(self.grants["status"].to_pylist()).items()):
            out[f"grants.status.{key}"] = count
        granted = self.grants["granted_at"].to_pylist()
        out["grants.before_order"] = sum(1 for t in granted if t < ORDER_DATE)
        out["grants.after_order"] = len(granted) - out["grants.before_order"]
        apps = self.app_profiles["app_id"].to_pylist()
        grant_ids = self.app_profiles["grant_id"].to_pylist()
        for app in ("douyin", "duoshan"):
            out[f"accounts.{app}"] = apps.count(app)
            out[f"accounts.{app}.grant_backed"] = sum(
                1 for a, g in zip(apps, grant_ids, strict=True) if a == app and g is not None
            )
        out["transfers"] = self.transfers.num_rows
        used = self.transfers["first_used_at"].to_pylist()
        out["transfers.before_order"] = sum(1 for t in used if t < ORDER_DATE)
        out["transfers.after_order"] = len(used) - out["transfers.before_order"]
        for key, count in sorted(Counter(self.transfers["provider"].to_pylist()).items()):
            out[f"transfers.{key}"] = count
        for column in ("handle_source", "handle_edit", "avatar_source", "avatar_edit"):
            values = self.app_profiles[column].to_pylist()
            for (app, value), count in sorted(Counter(zip(apps, values, strict=True)).items()):
                out[f"{app}.{column}.{value}"] = count
        real = self.app_profiles["handle_is_real_name"].to_pylist()
        h_edit = self.app_profiles["handle_edit"].to_pylist()
        a_edit = self.app_profiles["avatar_edit"].to_pylist()
        for app in ("douyin", "duoshan"):
            rows = [i for i, a in enumerate(apps) if a == app]
            out[f"{app}.handle_copies"] = sum(1 for i in rows if h_edit[i] != "user_input")
            out[f"{app}.avatar_copies"] = sum(1 for i in rows if a_edit[i] != "user_input")
            out[f"{app}.handle_is_real_name"] = sum(1 for i in rows if real[i])
        out["edges"] = self.edges.num_rows
        out["pictures"] = self.pictures.num_rows
        return out


# --------------------------------------------------------------------------------------------
# builder


@dataclass
class _Ids:
    """Unique random identifiers (hex / base64url / digits) drawn from one stream."""

    rng: np.random.Generator
    taken: set[str] = field(default_factory=set)

    def _claim(self, token: str) -> bool:
        if token in self.taken:
            return False
        self.taken.add(token)
        return True

    def hex(self, prefix: str, nbytes: int = 8, *, upper: bool = False) -> str:
        """``prefix`` + ``2 * nbytes`` hex digits."""
        while True:
            body = self.rng.bytes(nbytes).hex()
            token = prefix + (body.upper() if upper else body)
            if self._claim(token):
                return token

    def b64(self, prefix: str, length: int) -> str:
        """``prefix`` + ``length`` url-safe base64 characters."""
        while True:
            idx = self.rng.integers(0, 64, length)
            token = prefix + _B64URL[idx].tobytes().decode("ascii")
            if self._claim(token):
                return token

    def digits(self, prefix: str, ndigits: int) -> str:
        """``prefix`` + a number of exactly ``ndigits`` digits."""
        while True:
            number = int(self.rng.integers(10 ** (ndigits - 1), 10**ndigits))
            token = f"{prefix}{number}"
            if self._claim(token):
                return token


def _openid(ids: _Ids, provider: str) -> str:
    # WeChat openids are 28 url-safe characters starting with "o"; QQ's are 32 upper-case hex.
    return ids.b64("o", 27) if provider == "wechat" else ids.hex("", 16, upper=True)


def _unionid(ids: _Ids, provider: str) -> str:
    return ids.b64("o", 27) if provider == "wechat" else ids.hex("UID_", 16, upper=True)


def _to_us(dt: datetime) -> int:
    return round(dt.timestamp()) * 1_000_000


def _uniform_us(rng: np.random.Generator, lo: int, hi: int) -> int:
    """A uniform time in ``[lo, hi)`` microseconds, at whole-second resolution."""
    span_s = max(1, (hi - lo) // 1_000_000)
    return lo + int(rng.integers(0, span_s)) * 1_000_000


@dataclass
class _Pictures:
    """Accumulates the ``pictures`` table; keys are ``<owner>/avatars/<16 hex>.<jpg|png>``."""

    ids: _Ids
    keys: list[str] = field(default_factory=list)
    formats: list[str] = field(default_factory=list)
    widths: list[int] = field(default_factory=list)
    heights: list[int] = field(default_factory=list)
    data: list[bytes] = field(default_factory=list)

    def add(self, owner: str, pic: EncodedPicture) -> str:
        key = self.ids.hex(f"{owner}/avatars/") + "." + _EXT[pic.format]
        self.keys.append(key)
        self.formats.append(pic.format)
        self.widths.append(pic.width)
        self.heights.append(pic.height)
        self.data.append(pic.data)
        return key

    def table(self) -> pa.Table:
        return pa.Table.from_arrays(
            [
                pa.array(self.keys, pa.string()),
                pa.array(self.formats, pa.string()),
                pa.array(self.widths, pa.int32()),
                pa.array(self.heights, pa.int32()),
                pa.array(self.data, pa.binary()),
            ],
            schema=schema.PICTURES,
        )


def _columns(sch: pa.Schema) -> dict[str, list[object]]:
    return {f.name: [] for f in sch}


def _table(sch: pa.Schema, columns: dict[str, list[object]]) -> pa.Table:
    return pa.Table.from_arrays([pa.array(columns[f.name], f.type) for f in sch], schema=sch)


@dataclass
class _Subject:
    """What the builder knows about one subject while making their accounts."""

    subject_id: int
    real_name: str
    chinese: bool
    provider: str | None = None
    nickname: str | None = None
    picture: tuple[Image.Image, EncodedPicture] | None = None
    grant_id: str | None = None
    granted_us: int = 0


@dataclass
class _Builder:
    """Holds the random streams and the growing tables of one :func:`build_platform` call."""

    params: SandboxParams
    r_handle: np.random.Generator
    r_pic: np.random.Generator
    ids: _Ids
    pictures: _Pictures
    profiles: dict[str, list[object]] = field(default_factory=lambda: _columns(schema.APP_PROFILES))

    def user_handle(self, s: _Subject) -> tuple[str, str, str]:
        """A user-typed handle: ``(handle, "user_input", edit)``; may re-type the nickname."""
        p, rng = self.params, self.r_handle
        if s.nickname is not None and rng.random() < p.handle_retype_prob:
            handle, edit = edit_handle(s.nickname, rng, p.handle_retype_edits)
            return handle, "user_input", edit
        while True:
            handle = nickname(
                rng, s.real_name, s.chinese, p.handle_style, real_name_prob=p.user_real_name_prob
            )
            if handle != s.nickname:
                return handle, "user_input", "user_input"

    def user_avatar(self, s: _Subject, app: str) -> tuple[str, str, str]:
        """A user-uploaded picture: ``(key, "user_input", edit)``; may re-upload the provider's."""
        p, rng = self.params, self.r_pic
        if s.picture is not None and rng.random() < p.avatar_reupload_prob:
            edit = draw_edit(rng, p.avatar_reupload_edits)
            pic = edit_picture(s.picture[0], s.picture[1], edit, rng)
            return self.pictures.add(app, pic), "user_input", edit
        _, pic = base_avatar(rng)
        return self.pictures.add(app, pic), "user_input", "user_input"

    def account(self, s: _Subject, app: str, grant_id: str | None, created_us: int) -> None:
        """Add one ``app_profiles`` row; ``grant_id`` set means logged in through the provider."""
        p = self.params
        if grant_id is not None and s.nickname is not None and s.picture is not None:
            if self.r_handle.random() < p.handle_provider_prob:
                handle, h_edit = edit_handle(s.nickname, self.r_handle, p.handle_provider_edits)
                h_src = "provider"
            else:
                handle, h_src, h_edit = self.user_handle(s)
            if self.r_pic.random() < p.avatar_provider_prob:
                a_edit = draw_edit(self.r_pic, p.avatar_provider_edits)
                pic = edit_picture(s.picture[0], s.picture[1], a_edit, self.r_pic)
                a_key, a_src = self.pictures.add(app, pic), "provider"
            else:
                a_key, a_src, a_edit = self.user_avatar(s, app)
        else:
            handle, h_src, h_edit = self.user_handle(s)
            a_key, a_src, a_edit = self.user_avatar(s, app)
        row: dict[str, object] = {
            "app_id": app,
            "subject_id": s.subject_id,
            "account_id": self.ids.digits("dy" if app == "douyin" else "ds", 10),
            "handle": handle,
            "handle_source": h_src,
            "handle_edit": h_edit,
            "avatar_key": a_key,
            "avatar_source": a_src,
            "avatar_edit": a_edit,
            "grant_id": grant_id,
            "created_at": created_us,
            "handle_is_real_name": handle in (s.real_name, to_traditional(s.real_name)),
        }
        for key, value in row.items():
            self.profiles[key].append(value)


def build_platform(
    edges: EdgeList,
    *,
    seed: int = 7,
    snapshot: datetime = SNAPSHOT,
    params: SandboxParams | None = None,
) -> Platform:
    """Build the sandbox platform on the graph ``edges`` (one subject per node id).

    Args:
        edges: the graph; ``edges.nodes`` become subjects (in id order), the undirected simple
            edge set becomes the ``edges`` table (the apps' follow graph).
        seed: the random seed; the same seed, graph, snapshot and params give identical tables.
        snapshot: timezone-aware time of the snapshot; every timestamp lies before it. Must be
            after 2017-01-01; a snapshot before duoshan's launch (2019-01-15) gives no duoshan
            accounts and no transfers.
        params: the distributions; defaults to ``SandboxParams()``.

    Returns:
        The :class:`Platform`.

    Raises:
        ValueError: ``snapshot`` naive or not after 2017-01-01, or a graph with no nodes.
    """
    p = params if params is not None else SandboxParams()
    if snapshot.tzinfo is None:
        raise ValueError("snapshot must be timezone-aware")
    if snapshot <= DOUYIN_EPOCH:
        raise ValueError(f"snapshot {snapshot.isoformat()} is not after {DOUYIN_EPOCH.date()}")
    if edges.num_nodes == 0:
        raise ValueError("the graph has no nodes")

    r_subj, r_handle, r_time, r_pic, r_id, r_key = (
        np.random.default_rng(s) for s in np.random.SeedSequence(seed).spawn(6)
    )
    ids = _Ids(r_id)
    b = _Builder(p, r_handle, r_pic, ids, _Pictures(_Ids(r_key)))
    snap_us, epoch_us, launch_us = _to_us(snapshot), _to_us(DOUYIN_EPOCH), _to_us(DUOSHAN_LAUNCH)

    nodes = edges.nodes
    n = int(nodes.shape[0])
    login_names = list(p.login_probs)
    login_p = np.array([p.login_probs[k] for k in login_names], dtype=np.float64)
    login = [login_names[k] for k in r_subj.choice(len(login_names), size=n, p=login_p)]
    chinese = r_subj.random(n) < p.chinese_name_prob
    names = real_names(r_subj, chinese)
    has_duoshan = (r_subj.random(n) < p.duoshan_prob) & (snap_us > launch_us)
    transfer_draw = r_subj.random(n) < p.duoshan_transfer_prob
    revoked = r_subj.random(n) < p.grant_revoked_prob

    prov = _columns(schema.PROVIDER_PROFILES)
    grants = _columns(schema.GRANTS)
    transfers = _columns(schema.TRANSFERS)

    for i in range(n):
        s = _Subject(int(nodes[i]), names[i], bool(chinese[i]))
        if login[i] != "none":
            provider = login[i]
            s.provider = provider
            s.nickname = nickname(r_handle, s.real_name, s.chinese, p.handle_style)
            s.picture = base_avatar(r_pic)
            unionid = _unionid(ids, provider)
            for key, value in (
                ("provider", provider),
                ("subject_id", s.subject_id),
                ("unionid", unionid),
                ("nickname", s.nickname),
                ("avatar_key", b.pictures.add(provider, s.picture[1])),
            ):
                prov[key].append(value)
            s.grant_id = ids.hex("grt_")
            s.granted_us = _uniform_us(r_time, epoch_us, snap_us)
            for key, value in (
                ("grant_id", s.grant_id),
                ("subject_id", s.subject_id),
                ("provider", provider),
                ("app_id", "douyin"),
                ("openid", _openid(ids, provider)),
                ("unionid", unionid),
                ("scopes", SCOPES[provider]),
                ("granted_at", s.granted_us),
                ("status", "revoked" if revoked[i] else "active"),
            ):
                grants[key].append(value)
            b.account(s, "douyin", s.grant_id, s.granted_us)
        else:
            b.account(s, "douyin", None, _uniform_us(r_time, epoch_us, snap_us))

        if not has_duoshan[i]:
            continue
        if s.provider is not None and s.grant_id is not None and transfer_draw[i]:
            used_us = _uniform_us(r_time, max(launch_us, s.granted_us), snap_us)
            for key, value in (
                ("transfer_id", ids.hex("trf_")),
                ("grant_id", s.grant_id),
                ("subject_id", s.subject_id),
                ("provider", s.provider),
                ("from_app", "douyin"),
                ("to_app", "duoshan"),
                ("first_used_at", used_us),
            ):
                transfers[key].append(value)
            b.account(s, "duoshan", s.grant_id, used_us)
        else:
            b.account(s, "duoshan", None, _uniform_us(r_time, launch_us, snap_us))

    e_src, e_dst = undirected_simple_edges(edges)
    subjects: dict[str, list[object]] = {
        "subject_id": [int(x) for x in nodes],
        "real_name": list(names),
        "login": list(login),
    }
    return Platform(
        subjects=_table(schema.SUBJECTS, subjects),
        provider_profiles=_table(schema.PROVIDER_PROFILES, prov),
        apps=pa.Table.from_pylist([dict(a) for a in APPS], schema=schema.APPS),
        grants=_table(schema.GRANTS, grants),
        app_profiles=_table(schema.APP_PROFILES, b.profiles),
        transfers=_table(schema.TRANSFERS, transfers),
        edges=pa.Table.from_arrays(
            [pa.array(e_src, pa.int64()), pa.array(e_dst, pa.int64())], schema=schema.EDGES
        ),
        pictures=b.pictures.table(),
    )
