"""The ``provguard`` command."""

from __future__ import annotations

import typer

from provguard.cli.policy import decide_cmd, instrument_app, policy_app

app = typer.Typer(
    name="provguard",
    help="Record where user data came from and enforce what it may be used for.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)


def _version(value: bool) -> None:
    if value:
        from provguard import __version__

        typer.echo(f"provguard {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(
        False, "--version", callback=_version, is_eager=True, help="Print the version and exit."
    ),
) -> None:
    """Record where user data came from and enforce what it may be used for."""


app.command("decide")(decide_cmd)
app.add_typer(policy_app, name="policy")
app.add_typer(instrument_app, name="instrument")


def _mount() -> None:
    from provguard.cli.audit import audit_app
    from provguard.cli.campaign import campaign_app
    from provguard.cli.data import data_app
    from provguard.cli.data_load import load_cmd  # noqa: F401  (registers `data load`)
    from provguard.cli.grants import grants_app
    from provguard.cli.query import query
    from provguard.cli.recommend import recommend_app
    from provguard.cli.report import report_cmd
    from provguard.cli.run import run_cmd
    from provguard.cli.sandbox import sandbox_app
    from provguard.cli.scan import scan_app
    from provguard.cli.serve import keys_app, serve_cmd

    app.command("run")(run_cmd)
    app.add_typer(sandbox_app, name="sandbox")
    app.add_typer(audit_app, name="audit")
    app.add_typer(scan_app, name="scan")
    app.add_typer(campaign_app, name="campaign")
    app.add_typer(grants_app, name="grants")
    app.command("query")(query)
    app.add_typer(data_app, name="data")
    app.add_typer(recommend_app, name="recommend")
    app.command("report")(report_cmd)
    app.command("serve")(serve_cmd)
    app.add_typer(keys_app, name="keys")


_mount()

if __name__ == "__main__":
    app()
