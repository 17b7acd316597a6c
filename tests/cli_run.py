"""Run the npedit CLI in process as a user would: the exit code (a SystemExit's too) and what it printed."""

from __future__ import annotations

from npedit.cli import main


def run_cli(capsys, *argv: str) -> tuple[int | str, str, str]:
    """`npedit ARGV...`: (exit code or SystemExit message, stdout, stderr)."""
    try:
        code = main(list(argv))
    except SystemExit as stop:
        code = stop.code
    captured = capsys.readouterr()
    return code, captured.out, captured.err
