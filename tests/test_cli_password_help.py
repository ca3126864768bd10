"""Every flag that takes a URL with a password says, in its --help, where the password goes
instead (a flag's value shows in ps): the environment, or libpq's PGPASSWORD/.pgpass."""

from __future__ import annotations

import subprocess
import sys

import pytest


def help_of(command: str) -> str:
    done = subprocess.run(
        [sys.executable, "-m", "proactive_async.cli", command, "--help"],
        capture_output=True, text=True, timeout=60, env={"COLUMNS": "400", "PATH": "/usr/bin:/bin"},
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    return " ".join(done.stdout.split())


@pytest.mark.parametrize(
    ("command", "flags"),
    [
        ("campaign", ("--redis-url", "--journal")),
        ("enqueue", ("--redis-url", "--journal")),
        ("worker", ("--redis-url", "--journal")),
        ("report", ("--journal",)),
        ("status", ("--journal",)),
        ("cancel", ("--journal",)),
    ],
)
def test_each_url_flag_says_where_its_password_goes_instead(
    command: str, flags: tuple[str, ...]
) -> None:
    text = help_of(command)
    for flag in flags:
        after = text[text.index(f"  {flag} ") if f"  {flag} " in text else text.index(flag) :]
        assert "shows in ps" in after, (command, flag)
    if "--redis-url" in flags:
        assert "put the URL in $PROACTIVE_REDIS_URL instead" in text
    assert "put the URL in $PROACTIVE_JOURNAL" in text
    assert "$PGPASSWORD or ~/.pgpass ($PGPASSFILE)" in text
