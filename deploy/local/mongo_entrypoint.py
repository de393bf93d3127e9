"""Entrypoint of the local MongoDB stand-in (SecantusDB), doing what the mongo image's does.

On a data directory whose users were never made, it first runs the server without
authentication, on 127.0.0.1 and a port of its own (so nothing outside the container
reaches it open), creates the root user (MONGO_INITDB_ROOT_USERNAME and
MONGO_INITDB_ROOT_PASSWORD_FILE, as the mongo image reads them) and the services' user
(what deploy/mongo/create-promptgen-user.js does there: mongosh cannot run here), stops it,
and marks the directory done. Then it becomes the container's command, which runs with --auth.
A start interrupted before the mark makes the users again (an existing one gets its password
and roles updated), so a half-made directory never runs with auth and no users.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pymongo
from pymongo.database import Database
from pymongo.errors import PyMongoError

# The services' user of deploy/mongo/create-promptgen-user.js: promptgen's database, nothing else.
PROMPTGEN_USER = {
    "db": "promptgen",
    "user": "promptgen",
    "roles": [{"role": "readWrite", "db": "promptgen"}],
    "password_file": "/run/secrets/mongo_promptgen_password",
}
MARK = "promptgen-users-created"
SETUP_PORT = os.environ.get("MONGO_SETUP_PORT") or "27018"  # inside the container: nothing else there
SETUP_TIMEOUT_SECONDS = 60


def log(message: str) -> None:
    print(f"mongo-entrypoint: {message}", file=sys.stderr, flush=True)


def option(argv: list[str], name: str, default: str) -> str:
    return argv[argv.index(name) + 1] if name in argv and argv.index(name) + 1 < len(argv) else default


def with_option(argv: list[str], name: str, value: str) -> list[str]:
    if name in argv:
        i = argv.index(name)
        return [*argv[: i + 1], value, *argv[i + 2:]]
    return [*argv, name, value]


def secret(env_name: str, default_file: str | None = None) -> str:
    """A value from `<env_name>_FILE` (or default_file), else from `<env_name>`; never empty."""
    path = os.environ.get(f"{env_name}_FILE") or default_file
    value = Path(path).read_text().strip() if path and Path(path).exists() else os.environ.get(env_name, "")
    if not value:
        raise SystemExit(f"mongo-entrypoint: {env_name}_FILE or {env_name} is required to make the users")
    return value


def ensure_user(db: Database, user: str, password: str, roles: list) -> None:
    exists = db.command("usersInfo", user)["users"]
    db.command("updateUser" if exists else "createUser", user, pwd=password, roles=roles)
    log(f"user {user} on {db.name}: {'updated' if exists else 'created'}")


def make_users(server: list[str]) -> None:
    """Run ``server`` open on 127.0.0.1:SETUP_PORT, make the two users, stop it."""
    root_user = os.environ.get("MONGO_INITDB_ROOT_USERNAME", "")
    if not root_user:
        raise SystemExit("mongo-entrypoint: MONGO_INITDB_ROOT_USERNAME is required to make the users")
    root_password = secret("MONGO_INITDB_ROOT_PASSWORD")
    promptgen_password = secret("MONGO_PROMPTGEN_PASSWORD", PROMPTGEN_USER["password_file"])
    setup = [a for a in server if a != "--auth"]
    setup = with_option(with_option(setup, "--host", "127.0.0.1"), "--port", SETUP_PORT)
    proc = subprocess.Popen(setup)
    try:
        client = pymongo.MongoClient(f"mongodb://127.0.0.1:{SETUP_PORT}/?directConnection=true",
                                     serverSelectionTimeoutMS=1000)
        deadline = time.monotonic() + SETUP_TIMEOUT_SECONDS
        while True:
            try:
                client.admin.command("ping")
                break
            except PyMongoError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise SystemExit(f"mongo-entrypoint: the server did not start for the set-up "
                                     f"(exit {proc.poll()})") from None
        ensure_user(client.admin, root_user, root_password, [{"role": "root", "db": "admin"}])
        ensure_user(client[PROMPTGEN_USER["db"]], PROMPTGEN_USER["user"], promptgen_password,
                    PROMPTGEN_USER["roles"])
        client.close()
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def main(argv: list[str]) -> None:
    if not argv:
        raise SystemExit("mongo-entrypoint: no command")
    if Path(argv[0]).name == "secantusd-py":
        storage = Path(option(argv, "--storage-path", "./secantus-data"))
        if not (storage / MARK).exists():
            log(f"first start on {storage}: making the root and promptgen users")
            make_users(argv)
            (storage / MARK).write_text("the users of deploy/local/mongo_entrypoint.py were made\n")
    os.execvp(argv[0], argv)


if __name__ == "__main__":
    main(sys.argv[1:])
