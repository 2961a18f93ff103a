"""policy check / diff / can / explain and instrument events, through the CLI and the API."""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime
from pathlib import Path

import typer
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from policy_gen import policy_sets, requests
from typer.testing import CliRunner

from provguard.cli.policy import decide_cmd, instrument_app, policy_app
from provguard.decide import CompiledPolicy
from provguard.decide.analysis import AXES, Verdict, diff, lint
from provguard.policy import PolicySet, load_bundle_text

app = typer.Typer()
app.command("decide")(decide_cmd)
app.add_typer(policy_app, name="policy")
app.add_typer(instrument_app, name="instrument")
runner = CliRunner()
INJ = "cn-tj-binhai-2019-douyin-duoshan"
REC = ["--app", "douyin", "--action", "use", "--category", "user.avatar", "--origin", "wechat"]


def run(*args: str | Path) -> tuple[int, str]:
    res = runner.invoke(app, [str(a) for a in args], env={"COLUMNS": "250"})
    return res.exit_code, res.output


def test_final_judgment_event_via_store(tmp_path: Path, injunction_path: Path) -> None:
    from provguard.adapters.audit_sqlite import SqliteAuditLog
    from provguard.adapters.control_sqlite import SqlControlStore

    store = tmp_path / "control.sqlite"
    code, out = run(
        "instrument", "event", "final_judgment", "--instrument", INJ, "--date", "2020-01-01",
        "--store", store, "--policy", injunction_path,
    )  # fmt: skip
    assert code == 2 and "no control store" in out  # a mistyped path creates nothing
    assert not store.exists()
    SqlControlStore(store).engine.dispose()  # what `provguard run` creates
    code, out = run(
        "instrument", "event", "final_judgment", "--instrument", INJ, "--date", "2020-01-01",
        "--store", store, "--policy", injunction_path,
    )  # fmt: skip
    assert code == 0, out
    with SqliteAuditLog(store, create=False) as log:  # the event is evidence, in the chain
        (entry,) = list(log.entries(kind="instrument_event"))
        assert entry.payload["date"] == "2020-01-01" and log.verify().ok
    code, out = run(
        "instrument", "event", "final_judgment", "--instrument", INJ, "--date", "2021-01-01",
        "--store", store, "--policy", injunction_path,
    )  # fmt: skip
    assert code == 2 and "already recorded on 2020-01-01" in " ".join(out.split())
    purpose: list[str | Path] = [
        "--purpose",
        "social.friend_recommendation",
        "--policy",
        injunction_path,
    ]
    code, out = run("decide", *REC, *purpose, "--at", "2019-12-31", "--store", store)
    assert code == 1 and "DENY" in out  # history stays
    code, out = run("decide", *REC, *purpose, "--at", "2020-01-01", "--store", store)
    assert code == 0 and "NOT_APPLICABLE" in out
    code, out = run("decide", *REC, *purpose, "--at", "2020-01-01")
    assert code == 1  # without the store, the order is still in force
    code, out = run("instrument", "events", "--store", store)
    assert "final_judgment" in out and "2020-01-01" in out
    code, out = run(
        "instrument", "event", "contract_terminated", "--instrument", INJ, "--date",
        "2020-01-01", "--store", store, "--policy", injunction_path,
    )  # fmt: skip
    assert code == 2 and "does not end on event 'contract_terminated'" in out


def test_check_reports_hints_and_rules_that_never_fire(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text(
        "instrument: {id: t, kind: internal_policy, issuer: me, effective_from: 2019-01-01}\n"
        "rules:\n  - {id: r, efect: deny, actions: [use], purposes: [socail]}\n"
    )
    code, out = run("policy", "check", "--policy", bad)
    assert code == 2
    assert "bad.yaml:3:13: unknown key 'efect'; hint: did you mean 'effect'?" in out
    assert "missing required key 'effect'" in out
    ok = tmp_path / "ok.yaml"
    ok.write_text(
        "instrument: {id: t, kind: internal_policy, issuer: me, effective_from: 2019-01-01,\n"
        "             effective_until: {event: final_judgment}}\n"
        "rules:\n"
        "  - {id: wide, effect: deny, actions: [use, derive], data: {origins: [wechat, qq]}}\n"
        "  - {id: narrow, effect: permit, actions: [use], apps: [douyin],\n"
        "     data: {categories: [user.avatar], origins: [wechat]}}\n"
        "  - {id: nothing, effect: deny, actions: [use], data: {origins: []}}\n"
    )
    code, out = run("policy", "check", "--policy", ok)
    assert code == 0, out
    text = " ".join(out.split())
    assert "shadowed: t rule 'narrow'" in text and "denied by rule 'wide'" in text
    assert "empty_target: t rule 'nothing'" in text
    assert "3 warning(s)" in text  # 'nothing' is also covered by 'wide' (redundant)
    code, _ = run("policy", "check", "--policy", ok, "--strict")
    assert code == 1
    from datetime import date

    from provguard.adapters.control_sqlite import SqlControlStore

    store = tmp_path / "c.sqlite"
    SqlControlStore(store).engine.dispose()
    code, out = run(
        "instrument", "event", "final_judgment", "--instrument", "t", "--date", "2018-06-01",
        "--store", store, "--policy", ok,
    )  # fmt: skip
    assert code == 2 and "before the instrument took effect" in " ".join(out.split())
    # an end event before the start can still reach a store by other means: check flags it
    SqlControlStore(store).record_event("t", "final_judgment", date(2018, 6, 1))
    code, out = run("policy", "check", "--policy", ok, "--store", store)
    assert "validity_never_starts" in out


def test_diff_of_the_injunction_without_rule_three(tmp_path: Path, injunction_path: Path) -> None:
    text = injunction_path.read_text()
    cut = text[: text.index("  - id: duoshan-no-platform-profile")]
    b = tmp_path / "b.yaml"
    b.write_text(cut)
    code, out = run("policy", "diff", injunction_path, b, "--json", "--full")
    assert code == 0, out
    data = json.loads(out)
    assert data["rows"] and data["exact"] and data["changed"] == len(data["rows"])
    for row in data["rows"]:  # machine values: lists of members, verdicts as records
        assert row["before"] == {
            "effect": "deny",
            "excepted": False,
            "rules": ["duoshan-no-platform-profile"],
        }
        assert row["after"] == {"effect": "not_applicable", "excepted": False, "rules": []}
        # the order starts at Beijing midnight (machine value: the instant with its offset)
        assert row["app"] == ["duoshan"] and row["from"] == ["2019-03-20T00:00:00+08:00"]
        assert set(row["action"]) <= {"use", "derive", "display"}
        # the rule's categories and, since it is a deny, their ancestors (user.name, user)
        assert set(row["category"]) <= {"user.avatar", "user.name.nickname", "user.name", "user"}
        assert row["origins"] and all({"wechat", "qq"} & set(o) for o in row["origins"])
    assert {c for row in data["rows"] for c in row["category"]} == {
        "user.avatar",
        "user.name.nickname",
        "user.name",
        "user",
    }
    # the compact form: the same classes in one group per way of changing
    code, out = run("policy", "diff", injunction_path, b, "--json")
    compact = json.loads(out)
    assert sum(r["classes"] for r in compact["rows"]) == data["changed"]
    assert len(compact["rows"]) < len(data["rows"])
    assert all(r["controller"] == "any" and r["recipient"] == "any" for r in compact["rows"])
    code, out = run("policy", "diff", injunction_path, b)
    assert code == 0 and "classes" in out and "any" in out
    code, out = run("policy", "diff", injunction_path, injunction_path, "--json")
    assert json.loads(out)["rows"] == []


def test_diff_of_the_shipped_bundles_is_compact(repo_root: Path) -> None:
    """The injunction against the extra bundles: ~300,000 classes (with the context the extra
    bundles read: three context attributes and consents), 41 distinct ways of changing, a table
    of a few hundred rows."""
    from provguard.policy import load_policy_dir

    result = diff(
        load_policy_dir(repo_root / "policies"), load_policy_dir(repo_root / "policies/extra")
    )
    groups = result.compact()
    ways = {(g.before, g.after) for g in groups}
    assert result.exact and result.changed > 100_000
    assert len(ways) == len({(c[1], c[2]) for c in result.cubes})
    assert len(groups) <= 6 * len(ways)
    assert sum(g.count for g in groups) == result.changed


@settings(max_examples=5, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(policy_sets(max_bundles=1, max_rules=2), policy_sets(max_bundles=1, max_rules=2))
def test_compact_groups_cover_exactly_the_changed_classes(a: PolicySet, b: PolicySet) -> None:
    result = diff(a, b)
    changed = {r.index: r.verdicts for r in result.rows}
    covered: dict[tuple[int, ...], object] = {}
    for g in result.compact():
        axes = [
            range(result.axis_size(ax)) if v is None else v
            for ax, v in zip(AXES, g.values, strict=True)
        ]
        n = 0
        for idx in __import__("itertools").product(*axes):
            if not result.is_class(idx):  # a consent witness of another request shape
                continue
            assert idx not in covered  # groups do not overlap
            covered[idx] = (g.before, g.after)
            n += 1
        assert n == g.count
    assert covered == changed


def test_unknown_app_is_an_error_with_a_hint(injunction_path: Path) -> None:
    purpose: list[str | Path] = [
        "--purpose",
        "social.friend_recommendation",
        "--policy",
        injunction_path,
    ]
    args: list[str | Path] = [
        *("--action", "use", "--category", "user.avatar", "--origin", "wechat"),
        *purpose,
    ]
    code, out = run("decide", "--app", "douyinn", *args)
    text = " ".join(out.split())
    assert code == 2 and "unknown app 'douyinn'" in text and "did you mean 'douyin'?" in text
    code, out = run("decide", "--app", "kuaishou", "--any-app", *args)
    assert code == 0 and "NOT_APPLICABLE" in out
    code, out = run("decide", "--app", "douyin", *args)
    assert code == 1 and "DENY" in out  # exit code 1 on deny
    code, out = run("policy", "can", "--app", "duoshn", "--category", "user.avatar",
                    "--origin", "qq", *purpose)  # fmt: skip
    assert code == 2 and "did you mean 'duoshan'?" in " ".join(out.split())
    code, out = run("decide", "--help")
    assert "Exit codes" in out and "1 - deny" in out


def test_known_apps_declared_by_a_bundle(tmp_path: Path) -> None:
    f = tmp_path / "k.yaml"
    f.write_text(
        "instrument: {id: k, kind: internal_policy, issuer: me, effective_from: 2019-01-01}\n"
        "known_apps: [toutiao]\n"
        "rules:\n  - {id: r, effect: deny, actions: [store], apps: [douyin],"
        " recipients: {not: [xigua]}}\n"
    )
    from provguard.policy import load_policy_dir

    assert load_policy_dir(f).known_apps() == {"toutiao", "douyin", "xigua"}
    code, out = run("decide", "--app", "toutiao", "--action", "store", "--category", "user",
                    "--origin", "qq", "--policy", f)  # fmt: skip
    assert code == 0, out
    f.write_text(f.read_text().replace("known_apps: [toutiao]", "known_apps: toutiao"))
    code, out = run("policy", "check", "--policy", f)
    assert code == 2 and "k.yaml:2:13" in out


@settings(max_examples=8, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    policy_sets(max_bundles=1, max_rules=3),
    policy_sets(max_bundles=1, max_rules=3),
    st.lists(requests(rich=False), min_size=5, max_size=20),
)
def test_diff_is_exact(a: PolicySet, b: PolicySet, reqs: list) -> None:  # type: ignore[type-arg]
    result = diff(a, b)
    why = result.domain.why_inexact if result.domain else []
    if not result.exact:
        # the one documented bound: enumerating request context past MAX_CONTEXT_REQUESTS
        # (more likely since `unknown` is an origin class of its own under fail-closed rules)
        assert why and all("MAX_CONTEXT_REQUESTS" in w for w in why), why
        assume(False)
    ca, cb = CompiledPolicy(a), CompiledPolicy(b)
    for r in reqs:  # grant first-use times are enumerated (bins), the rest is absent
        da, db = ca.decide(r), cb.decide(r)
        if Verdict.of(da) != Verdict.of(db):
            assert result.rows, (r, da, db)
    assert diff(a, a).rows == []


def test_can_and_explain(injunction_path: Path) -> None:
    code, out = run(
        "policy", "can", "--app", "douyin", "--category", "user.avatar", "--origin", "wechat",
        "--purpose", "social.friend_recommendation", "--policy", injunction_path,
    )  # fmt: skip
    assert code == 0, out
    assert re.search(r"2019-03-20 .*deny \[no-platform-profile-in-friend-recommendation\]", out)
    assert "yes" in out  # before the order took effect, nothing forbade it
    code, out = run(
        "policy", "can", "--app", "douyin", "--category", "grant.login", "--origin", "qq",
        "--purpose", "account.login", "--action", "transfer", "--policy", injunction_path,
    )  # fmt: skip
    text = " ".join(out.split())
    assert code == 0 and "first used before 2019-03-20" in text
    assert "permit (excepted) [no-login-grant-transfer]" in text
    code, out = run(
        "policy", "explain", *REC, "--purpose", "profile.display", "--at", "2019-06-01",
        "--policy", injunction_path,
    )  # fmt: skip
    assert code == 0
    text = " ".join(out.split())
    assert "NOT_APPLICABLE" in text
    assert "purpose 'profile.display' is not covered by social.friend_recommendation" in text
    assert "action 'use' is not in transfer" in text
    assert "app 'douyin' is not in duoshan" in text


def test_lint_on_shipped_bundles_is_clean(repo_root: Path) -> None:
    for folder in ("policies", "policies/extra"):
        from provguard.policy import load_policy_dir

        assert lint(load_policy_dir(repo_root / folder)) == []


def test_explain_with_conditions_and_shadow() -> None:
    from provguard.decide import Request
    from provguard.decide.analysis import explain_rules

    ps = PolicySet.of(
        [
            load_bundle_text(
                "instrument: {id: t, kind: internal_policy, issuer: me,"
                " effective_from: 2019-01-01}\n"
                "rules:\n"
                "  - {id: c, effect: deny, actions: [use],"
                " when: [{field: subject.age, below: 14}]}\n"
                "  - {id: s, effect: deny, mode: shadow, actions: [use]}\n"
            )
        ]
    )
    r = Request(
        "douyin", "use", "user", frozenset({"qq"}), datetime(2020, 1, 1, tzinfo=UTC), "social",
        subject={"age": 20},
    )  # fmt: skip
    traces = {t.rule_id: t for t in explain_rules(ps, r)}
    assert (
        traces["c"].status == "condition_failed" and "subject.age below 14.0" in traces["c"].detail
    )
    assert traces["s"].status == "shadow" and "would deny" in traces["s"].detail
