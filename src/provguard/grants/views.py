"""One read-only view over the two grant stores of an output folder.

``provguard run`` leaves OAuth grants in two places:

* ``control.db``, table ``grants`` -- the **sandbox** grants (``grt_...``), one per generated
  sign-in of the sandbox platform; the transfer audit (report section 3) decides their onward
  transfers;
* the **registry** (:class:`~provguard.adapters.grant_store.SqlGrantStore`; ``grants.db`` in the
  folder, or the database given to ``provguard serve --grant-db``) -- the real sign-ins over
  HTTP of the grants stage (authorization-code flow with PKCE), their token exchanges (RFC 8693)
  and revocations.

:class:`GrantViews` reads both without writing anything (no table is created, nothing
migrated) and labels every row with its ``store`` (``"sandbox"`` / ``"registry"``). Listing is
per client app: a caller passes the app it acts for and sees the grants it *holds* and nothing
else (tenant isolation):

* its **own** grants (``relation="own"``): the users' sign-ins to that app;
* the grants it **received** (``relation="received"``): another app's grant passed to it by a
  *permitted* onward transfer -- in the registry an RFC 8693 token exchange or an account link
  (table ``transfer_attempts``, ``effect = 'permit'``, ``to_app`` = the app: the tokens issued
  to it as audience, RFC 8693 section 2.2.1), a ``unionid`` join; in the sandbox a transfer of
  ``control.db``'s ``transfers`` decided ``permit`` (grandfathered). A received row keeps the
  holder's ``app_id`` and the grant's status (so the recipient learns of a revocation), names
  how and when it was received (``received_via``, ``received_at``), and hides the holder's
  ``openid`` (an identifier the provider issued to the *other* app). A denied attempt gives the
  recipient nothing, so it lists nothing.

The counting methods are for auditors (all apps). No secret is read: tokens stay in the
registry, encrypted.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

from sqlalchemy import (
    ColumnElement,
    Select,
    Table,
    create_engine,
    false,
    func,
    inspect,
    or_,
    select,
)
from sqlalchemy.engine import Connection, Engine, make_url
from sqlalchemy.exc import SQLAlchemyError

from provguard.adapters import control_sqlite as cs
from provguard.adapters.grant_store import (
    client_apps,
    login_sessions,
    oauth_grants,
    transfer_attempts,
)
from provguard.adapters.sql_engine import store_url
from provguard.errors import StoreError

__all__ = ["GrantEntry", "GrantRelation", "GrantStoreName", "GrantViews", "find_registry"]

GrantStoreName = Literal["sandbox", "registry"]
GrantRelation = Literal["own", "received"]
STORES: tuple[GrantStoreName, ...] = ("sandbox", "registry")
SANDBOX_TRANSFER = "sandbox_transfer"
"""``received_via`` of a grant received by a permitted transfer of the sandbox (``control.db``)."""


@dataclass(frozen=True)
class GrantEntry:
    """One grant of either store. ``subject_id``: the sandbox's data-subject number (``None``
    for a registry grant, whose subject is the provider's ``openid`` for the app); ``granted_at``
    is timezone-aware (UTC); ``status``: ``active`` / ``revoked`` / ``expired`` (sandbox) or
    ``active`` / ``revoked`` / ``purged`` (registry).

    ``relation``: ``own`` (a sign-in to the listing app) or ``received`` (another app's grant
    passed to the listing app by a permitted transfer; ``app_id`` is then the holder,
    ``openid`` is ``None``, ``received_via`` the sorted transfer kinds -- ``token_exchange``,
    ``account_link``, ``unionid_join`` or ``sandbox_transfer`` -- and ``received_at`` the first
    permitted transfer's time, UTC; for the sandbox the time the recipient first used it)."""

    store: GrantStoreName
    grant_id: str
    provider: str
    app_id: str
    subject_id: int | None
    openid: str | None
    scopes: str
    granted_at: datetime
    status: str
    relation: GrantRelation = "own"
    received_via: tuple[str, ...] = ()
    received_at: datetime | None = None


def _utc(value: Any) -> datetime:
    if isinstance(value, datetime):
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)
    return datetime.fromisoformat(str(value)).replace(tzinfo=UTC)


def _engine(url: str) -> Engine:
    if url.startswith("sqlite"):
        return create_engine(url, connect_args={"timeout": 30})
    return create_engine(url, pool_pre_ping=True)


def _has_table(engine: Engine, name: str, shown: str) -> bool:
    try:
        with engine.connect() as conn:
            return bool(inspect(conn).has_table(name))
    except SQLAlchemyError as exc:
        raise StoreError(f"cannot read {shown}: {type(exc).__name__}: {exc}") from exc


def find_registry(root: str | Path, grant_db: str | None = None) -> str | None:
    """Where the grant registry of the output folder ``root`` is: ``grant_db`` (a SQLAlchemy
    URL or SQLite file) when given; else ``root/control.db`` if it holds the registry's
    ``oauth_grants`` table; else ``root/grants.db`` if that file exists; else ``None``. Raises
    :class:`StoreError` when ``control.db`` cannot be inspected."""
    if grant_db:
        return grant_db
    folder = Path(root)
    control = folder / "control.db"
    if control.is_file():
        engine = _engine(store_url(control))
        try:
            if _has_table(engine, "oauth_grants", str(control)):
                return str(control)
        finally:
            engine.dispose()
    registry = folder / "grants.db"
    return str(registry) if registry.is_file() else None


class GrantViews:
    """Read-only view over the sandbox grants (``control_db``) and the grant registry
    (``registry``: URL or SQLite path; ``None`` = no registry). Either may be absent; a store
    without its table reads as empty. Raises :class:`StoreError` (with the password of a URL
    hidden) when a store cannot be read."""

    def __init__(self, control_db: str | Path | None, registry: str | None) -> None:
        self._control = _engine(store_url(control_db)) if control_db is not None else None
        self._control_shown = str(control_db)
        self.registry_url = store_url(registry) if registry is not None else None
        self._registry = _engine(self.registry_url) if self.registry_url is not None else None
        self._present: dict[tuple[str, str], bool] = {}

    @classmethod
    def of_folder(cls, root: str | Path, grant_db: str | None = None) -> GrantViews:
        """The views of an output folder (``control.db`` and :func:`find_registry`)."""
        control = Path(root) / "control.db"
        return cls(control if control.is_file() else None, find_registry(root, grant_db))

    @property
    def registry_source(self) -> str | None:
        """The registry's location as shown to people (a URL's password hidden; a SQLite
        file as its path), or ``None`` without a registry."""
        if self.registry_url is None:
            return None
        url = make_url(self.registry_url)
        if url.drivername.startswith("sqlite"):
            return str(url.database)
        return url.render_as_string(hide_password=True)

    def close(self) -> None:
        """Release the connections."""
        for engine in (self._control, self._registry):
            if engine is not None:
                engine.dispose()

    # ------------------------------------------------------------------------------ plumbing

    def _store(self, store: GrantStoreName) -> tuple[Engine | None, Table, str]:
        if store == "sandbox":
            return self._control, cs.grants, self._control_shown
        return self._registry, oauth_grants, self.registry_source or "(none)"

    @contextmanager
    def _conn(self, store: GrantStoreName, table: str) -> Iterator[Connection | None]:
        """A connection to ``store`` if it holds ``table`` (else ``None``)."""
        engine, _t, shown = self._store(store)
        if engine is None:
            yield None
            return
        key = (store, table)
        if key not in self._present:
            self._present[key] = _has_table(engine, table, shown)
        if not self._present[key]:
            yield None
            return
        try:
            with engine.connect() as conn:
                yield conn
        except SQLAlchemyError as exc:
            raise StoreError(f"cannot read grants in {shown}: {type(exc).__name__}") from exc

    def _received(self, store: GrantStoreName, app: str) -> Select[Any] | None:
        """``(grant_id, at)`` per grant of the permitted transfers of ``store`` to ``app``
        (``at``: the first), or ``None`` when the store has no transfer table."""
        engine, _t, shown = self._store(store)
        if engine is None:
            return None
        if store == "sandbox":
            tt = cs.transfers
            query: Select[Any] = select(
                tt.c.grant_id,
                func.min(tt.c.first_used_at).label("at"),
            ).where(tt.c.to_app == app, tt.c.decision == "permit")
        else:
            tt = transfer_attempts
            query = select(tt.c.grant_id, func.min(tt.c.at).label("at")).where(
                tt.c.to_app == app, tt.c.effect == "permit"
            )
        key = (store, tt.name)
        if key not in self._present:
            self._present[key] = _has_table(engine, tt.name, shown)
        return query.group_by(tt.c.grant_id) if self._present[key] else None

    def _held(
        self, store: GrantStoreName, app: str, relation: GrantRelation | None
    ) -> ColumnElement[bool]:
        """The condition on ``store``'s grant table for the grants ``app`` holds (own and/or
        received, as ``relation`` says)."""
        _e, t, _s = self._store(store)
        own = t.c.app_id == app
        received = self._received(store, app)
        got = (
            t.c.grant_id.in_(select(received.subquery().c.grant_id))
            if received is not None
            else None
        )
        if relation == "own":
            return own
        if relation == "received":
            return (t.c.app_id != app) & got if got is not None else false()
        return or_(own, got) if got is not None else own

    def _received_details(
        self, conn: Connection, store: GrantStoreName, app: str, grant_ids: list[str]
    ) -> dict[str, tuple[tuple[str, ...], datetime]]:
        """For the received ``grant_ids``: ``(sorted kinds, first time)`` of their permitted
        transfers to ``app``."""
        if not grant_ids:
            return {}
        if store == "sandbox":
            tt = cs.transfers
            rows = conn.execute(
                select(tt.c.grant_id, func.min(tt.c.first_used_at))
                .where(tt.c.to_app == app, tt.c.decision == "permit", tt.c.grant_id.in_(grant_ids))
                .group_by(tt.c.grant_id)
            ).all()
            return {str(r[0]): ((SANDBOX_TRANSFER,), _utc(r[1])) for r in rows}
        ta = transfer_attempts
        out: dict[str, tuple[set[str], datetime]] = {}
        for gid, kind, at in conn.execute(
            select(ta.c.grant_id, ta.c.kind, ta.c.at).where(
                ta.c.to_app == app, ta.c.effect == "permit", ta.c.grant_id.in_(grant_ids)
            )
        ).all():
            kinds, first = out.setdefault(str(gid), (set(), _utc(at)))
            kinds.add(str(kind))
            out[str(gid)] = (kinds, min(first, _utc(at)))
        return {g: (tuple(sorted(k)), at) for g, (k, at) in out.items()}

    def _entries(
        self, conn: Connection, store: GrantStoreName, app: str, rows: list[Any]
    ) -> list[GrantEntry]:
        foreign = [str(r.grant_id) for r in rows if str(r.app_id) != app]
        details = self._received_details(conn, store, app, foreign)
        return [self._entry(store, r, app, details) for r in rows]

    @staticmethod
    def _entry(
        store: GrantStoreName,
        row: Any,
        app: str | None = None,
        details: dict[str, tuple[tuple[str, ...], datetime]] | None = None,
    ) -> GrantEntry:
        sandbox = store == "sandbox"
        received = app is not None and str(row.app_id) != app
        via, at = (details or {}).get(str(row.grant_id), ((), None)) if received else ((), None)
        return GrantEntry(
            store=store,
            grant_id=str(row.grant_id),
            provider=str(row.provider),
            app_id=str(row.app_id),
            subject_id=int(row.subject_id) if sandbox else None,
            openid=None if sandbox or received else str(row.openid),
            scopes=str(row.scopes),
            granted_at=_utc(row.granted_at),
            status=str(row.status),
            relation="received" if received else "own",
            received_via=via,
            received_at=at,
        )

    # ------------------------------------------------------------------------------ per app

    def page(
        self,
        app: str,
        *,
        status: str | None = None,
        store: GrantStoreName | None = None,
        relation: GrantRelation | None = None,
        limit: int = 100,
        offset: int = 0,
    ) -> tuple[list[GrantEntry], dict[str, int]]:
        """The grants ``app`` holds (its own and those it received, see the module docstring),
        sandbox first then registry, each by grant id; ``limit`` rows from ``offset`` of that
        sequence. Returns ``(rows, totals)`` with ``totals`` the matching count per store
        (``{"sandbox": n, "registry": m}``; a store left out by ``store`` is 0). ``status``
        filters on the stored status, ``relation`` on ``own`` / ``received``."""
        out: list[GrantEntry] = []
        totals: dict[str, int] = {}
        skip = offset
        for name in STORES:
            totals[name] = 0
            if store is not None and name != store:
                continue
            _e, t, _s = self._store(name)
            with self._conn(name, t.name) as conn:
                if conn is None:
                    continue
                cond = [self._held(name, app, relation)]
                cond += [t.c.status == status] if status is not None else []
                total = int(
                    conn.execute(select(func.count()).select_from(t).where(*cond)).scalar_one()
                )
                totals[name] = total
                want = limit - len(out)
                if want > 0 and skip < total:
                    rows = conn.execute(
                        select(t).where(*cond).order_by(t.c.grant_id).limit(want).offset(skip)
                    ).all()
                    out.extend(self._entries(conn, name, app, list(rows)))
                skip = max(0, skip - total)
        return out, totals

    def get(self, app: str, grant_id: str) -> GrantEntry | None:
        """Grant ``grant_id`` as ``app`` holds it (own or received) from whichever store holds
        it; ``None`` when ``app`` does not hold it (another app's grant is indistinguishable
        from a missing one)."""
        for name in STORES:
            _e, t, _s = self._store(name)
            with self._conn(name, t.name) as conn:
                if conn is None:
                    continue
                row = conn.execute(
                    select(t).where(t.c.grant_id == grant_id, self._held(name, app, None))
                ).first()
                if row is not None:
                    return self._entries(conn, name, app, [row])[0]
        return None

    def received_grant_ids(self, app: str) -> set[str]:
        """Ids of the registry grants ``app`` received by a permitted transfer (empty without a
        registry): whose revocations it must learn of."""
        query = self._received("registry", app)
        if query is None:
            return set()
        with self._conn("registry", "transfer_attempts") as conn:
            if conn is None:
                return set()
            return {str(r[0]) for r in conn.execute(query).all()}

    # ------------------------------------------------------------------------------ auditors

    def counts(self) -> list[dict[str, Any]]:
        """Grants of all apps by ``(store, app, provider, status)``: dicts with those keys and
        ``count``, sandbox first, each sorted."""
        out: list[dict[str, Any]] = []
        for name in STORES:
            _e, t, _s = self._store(name)
            with self._conn(name, t.name) as conn:
                if conn is None:
                    continue
                rows = conn.execute(
                    select(t.c.app_id, t.c.provider, t.c.status, func.count())
                    .group_by(t.c.app_id, t.c.provider, t.c.status)
                    .order_by(t.c.app_id, t.c.provider, t.c.status)
                ).all()
            out.extend(
                {"store": name, "app": r[0], "provider": r[1], "status": r[2], "count": int(r[3])}
                for r in rows
            )
        return out

    def sign_ins(self) -> list[dict[str, Any]] | None:
        """Registry sign-ins by ``(provider, app)``: ``started`` login sessions, ``completed``
        (grants recorded) and the grants by ``statuses`` now; ``None`` without a registry."""
        if self._registry is None:
            return None
        acc: dict[tuple[str, str], dict[str, Any]] = {}

        def cell(provider: str, app: str) -> dict[str, Any]:
            return acc.setdefault(
                (provider, app),
                {"provider": provider, "app": app, "started": 0, "completed": 0, "statuses": {}},
            )

        with self._conn("registry", "login_sessions") as conn:
            if conn is not None:
                s = login_sessions
                for r in conn.execute(
                    select(s.c.provider, s.c.app_id, func.count()).group_by(
                        s.c.provider, s.c.app_id
                    )
                ).all():
                    cell(r[0], r[1])["started"] = int(r[2])
        with self._conn("registry", "oauth_grants") as conn:
            if conn is None:
                return None
            g = oauth_grants
            for r in conn.execute(
                select(g.c.provider, g.c.app_id, g.c.status, func.count()).group_by(
                    g.c.provider, g.c.app_id, g.c.status
                )
            ).all():
                c = cell(r[0], r[1])
                c["completed"] += int(r[3])
                c["statuses"][str(r[2])] = int(r[3])
        return [acc[k] for k in sorted(acc)]

    def exchanges(self) -> list[dict[str, Any]]:
        """Registry transfer attempts by ``(from_app, to_app, kind, effect, excepted, rule_id,
        instrument_id)`` with ``count``, sorted; empty without a registry."""
        t = transfer_attempts
        keys = [t.c.from_app, t.c.to_app, t.c.kind, t.c.effect, t.c.excepted]
        keys += [t.c.rule_id, t.c.instrument_id]
        with self._conn("registry", "transfer_attempts") as conn:
            if conn is None:
                return []
            rows = conn.execute(select(*keys, func.count()).group_by(*keys)).all()
        out = [
            {
                "from_app": r[0],
                "to_app": r[1],
                "kind": r[2],
                "effect": r[3],
                "excepted": bool(r[4]),
                "rule_id": r[5],
                "instrument_id": r[6],
                "count": int(r[7]),
            }
            for r in rows
        ]
        return sorted(out, key=lambda d: tuple(str(d[k]) for k in d))

    def client_apps(self) -> list[str]:
        """The client apps registered in the registry (sorted; empty without a registry)."""
        with self._conn("registry", "client_apps") as conn:
            if conn is None:
                return []
            rows = conn.execute(select(client_apps.c.app_id).order_by(client_apps.c.app_id))
            return [str(r[0]) for r in rows]
