"""The ``provguard`` command."""

from __future__ import annotations

import typer

from provguard.cli.policy import decide_cmd, policy_app

app = typer.Typer(
    name="provguard",
    help="Record where user data came from and enforce what it may be used for.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
app.command("decide")(decide_cmd)
app.add_typer(policy_app, name="policy")


def _mount_optional() -> None:
    from provguard.cli.audit import audit_app
    from provguard.cli.run import run_cmd
    from provguard.cli.sandbox import sandbox_app

    app.add_typer(audit_app, name="audit")
    app.add_typer(sandbox_app, name="sandbox")
    app.command("run")(run_cmd)


_mount_optional()

if __name__ == "__main__":
    app()
