"""``python -m services.cli``: the `promptgen` command (how `promptgen up` starts each service)."""

from services.cli.main import app

app()
