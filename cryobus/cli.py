"""The ``cryobus`` command line: up, run, ingest, convert, reprocess, dlq, demo, schema, status."""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from pathlib import Path

from cryobus.registry import DEFAULT_SERVICES, SERVICES
from cryobus.shared.secret_files import ConfigError


def _settings(args: argparse.Namespace, **extra: object):
    """Settings from the environment, overridden by the flags that were given."""
    from cryobus.shared.config import Settings

    overrides: dict[str, object] = {k: v for k, v in extra.items() if v is not None}
    if getattr(args, "nats", None):
        overrides["nats_url"] = args.nats
    if getattr(args, "store", None):
        overrides["store_url"] = args.store
    if getattr(args, "watch", None):
        overrides["watch"] = [Path(w).resolve() for w in args.watch]
    if getattr(args, "root", None):
        overrides["roots"] = [Path(r).resolve() for r in args.root]
    if getattr(args, "dataset", None):
        overrides["dataset"] = args.dataset
    if getattr(args, "state_dir", None):
        overrides["state_dir"] = Path(args.state_dir)
    if getattr(args, "http_port", None) is not None:
        overrides["labelling_port"] = args.http_port
    if getattr(args, "http_host", None):
        overrides["labelling_host"] = args.http_host
    return Settings(**overrides)  # type: ignore[arg-type]


def _parse_replicas(items: list[str]) -> dict[str, int]:
    out = {}
    for item in items:
        name, _, n = item.partition("=")
        if name not in SERVICES or not n.isdigit() or int(n) < 1:
            raise SystemExit(f"--replicas expects SERVICE=N with SERVICE in {sorted(SERVICES)}, got {item!r}")
        out[name] = int(n)
    return out


def cmd_up(args: argparse.Namespace) -> int:
    from cryobus.supervisor import Supervisor

    settings = _settings(args)
    services = args.services.split(",") if args.services else list(DEFAULT_SERVICES)
    sup = Supervisor(
        settings=settings,
        services=services,
        replicas=_parse_replicas(args.replicas or []),
        nats=args.nats,
        exit_when_idle=args.exit_when_idle,
        idle_timeout_s=args.idle_timeout,
    )
    return sup.run()


def cmd_run(args: argparse.Namespace) -> int:
    from cryobus.registry import load_service
    from cryobus.shared.bus.runtime import run_service
    from cryobus.shared.logging import configure_logging

    settings = _settings(args)
    configure_logging(args.service, settings.log_level)
    return run_service(load_service(args.service), settings)


def _publish_command(settings, data) -> tuple[str, int]:
    """Publish one command event (with publish ack); returns (event id, stream sequence)."""
    from cryobus.shared.bus.connection import connect_with_retry
    from cryobus.shared.bus.topology import ensure_streams
    from cryobus.shared.events import Envelope

    settings = settings.model_copy(update={"connect_timeout_s": 10.0})

    async def main() -> tuple[str, int]:
        nc = await connect_with_retry(settings, "cryobus-cli")
        try:
            js = nc.jetstream()
            await ensure_streams(js, replicas=settings.stream_replicas, update_existing=False)
            env = Envelope.wrap(data, source="/cryobus/cli")
            ack = await js.publish(env.nats_subject, env.to_json(), headers={"Nats-Msg-Id": env.id})
            return env.id, ack.seq
        finally:
            await nc.close()

    return asyncio.run(main())


def cmd_ingest(args: argparse.Namespace) -> int:
    from cryobus.shared.events import IngestRequested

    cmd = IngestRequested(paths=[str(Path(p).resolve()) for p in args.paths], dataset=args.dataset)
    event_id, seq = _publish_command(_settings(args), cmd)
    print(f"ingest requested for {len(cmd.paths)} path(s): event {event_id} (stream seq {seq})")
    return 0


def _parse_params(items: list[str]) -> dict[str, object]:
    """``key=value`` pairs; values are JSON when they parse (2048, false, [1, 99]), else strings."""
    out: dict[str, object] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise SystemExit(f"--param expects key=value, got {item!r}")
        try:
            out[key] = json.loads(value)
        except json.JSONDecodeError:
            out[key] = value
    return out


def cmd_reprocess(args: argparse.Namespace) -> int:
    from cryobus.shared.bus.replay import parse_since
    from cryobus.shared.errors import InputError
    from cryobus.shared.events import RenderRequested, ReprocessRequested

    params = _parse_params(args.param or [])
    try:
        parse_since(args.since)
        if args.stage == "render":
            from cryobus.services.render.params import RenderParams

            RenderParams.parse(params)  # refuse bad parameters here, not in the service's dead letters
            cmd = RenderRequested(dataset=args.dataset, since=args.since, params=params)
        else:
            cmd = ReprocessRequested(stage=args.stage, dataset=args.dataset, since=args.since, params=params)
    except InputError as exc:
        raise SystemExit(f"cryobus reprocess: {exc.reason}") from exc
    event_id, seq = _publish_command(_settings(args), cmd)
    print(f"{args.stage} reprocessing requested for dataset {args.dataset}: event {event_id} (stream seq {seq})")
    return 0


def cmd_schema(args: argparse.Namespace) -> int:
    from cryobus.shared.events.schema import write_schemas

    paths = write_schemas(Path(args.out))
    for p in paths:
        print(p)
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    from cryobus.status import print_status

    settings = _settings(args).model_copy(update={"connect_timeout_s": 5.0})
    return asyncio.run(print_status(settings))


def cmd_dlq(args: argparse.Namespace) -> int:
    from cryobus import dlq
    from cryobus.shared.bus.connection import connect_with_retry
    from cryobus.shared.bus.topology import ensure_streams

    settings = _settings(args).model_copy(update={"connect_timeout_s": 5.0})

    async def main() -> int:
        nc = await connect_with_retry(settings, "cryobus-dlq")
        try:
            js = nc.jetstream()
            await ensure_streams(js, replicas=settings.stream_replicas, update_existing=False)
            if args.action == "purge":
                n = await dlq.purge_dead_letters(js, service=args.service)
                print(f"purged {n} dead letter(s)")
                return 0
            seqs = {int(i) for i in args.ids} if args.ids else None
            letters = await dlq.read_dead_letters(js, service=args.service, since=args.since, seqs=seqs)
            if args.action == "list":
                print(f"{len(letters)} dead letter(s)")
                for letter in letters:
                    print(dlq.describe(letter))
            elif args.action == "show":
                if not letters:
                    print(f"no dead letter {', '.join(args.ids)}", file=sys.stderr)
                    return 1
                for letter in letters:
                    print(dlq.describe(letter, full=True))
            elif args.action == "replay":
                for dlq_seq, seq in await dlq.replay_dead_letters(js, letters):
                    print(f"replayed dead letter {dlq_seq} (commands stream seq {seq})")
                print(f"replayed {len(letters)} dead letter(s)")
            return 0
        finally:
            await nc.close()

    return asyncio.run(main())


def cmd_demo(args: argparse.Namespace) -> int:
    from cryobus.demo.run import run_demo

    return run_demo(data=Path(args.data) if args.data else None, out=Path(args.out), keep_state=args.keep_state)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="cryobus", description=__doc__)
    sub = p.add_subparsers(dest="command", required=True)

    def common(sp: argparse.ArgumentParser) -> None:
        sp.add_argument("--nats", help="NATS URL (default: $CRYOBUS_NATS_URL; for `up`: start an embedded server)")
        sp.add_argument("--store", help="artifact store URL: file:///dir or s3://bucket/prefix")
        sp.add_argument("--state-dir", help="local state folder (embedded NATS data, ingest ledger, logs)")

    up = sub.add_parser("up", help="run NATS and every service on this machine")
    common(up)
    up.add_argument("--watch", action="append", metavar="DIR", help="folder to watch (repeatable)")
    up.add_argument("--root", action="append", metavar="DIR",
                    help="folder `cryobus ingest` may read without watching it (repeatable)")
    up.add_argument("--dataset", help="dataset name for every watched folder (default: the folder's name)")
    up.add_argument("--services", help=f"comma-separated services of {','.join(SERVICES)} (default: {','.join(DEFAULT_SERVICES)})")
    up.add_argument("--replicas", action="append", metavar="SERVICE=N", help="replicas of a service (repeatable)")
    up.add_argument("--exit-when-idle", action="store_true", help="stop once all discovered input is processed")
    up.add_argument("--idle-timeout", type=float, default=3600.0, help="give up waiting for idle after this many s")
    up.add_argument("--http-port", type=int, metavar="PORT",
                    help="port of the labelling web app (default: $CRYOBUS_LABELLING_PORT or 8080; 0: a free one)")
    up.add_argument("--http-host", metavar="ADDR",
                    help="address the labelling web app binds (default: 127.0.0.1, this machine only)")
    up.set_defaults(func=cmd_up)

    run = sub.add_parser("run", help="run one service replica (the container entry point)")
    common(run)
    run.add_argument("service", choices=sorted(SERVICES))
    run.add_argument("--watch", action="append", metavar="DIR")
    run.add_argument("--root", action="append", metavar="DIR")
    run.add_argument("--dataset")
    run.set_defaults(func=cmd_run)

    ing = sub.add_parser("ingest", help="ask ingest to scan PATH once")
    common(ing)
    ing.add_argument("paths", nargs="+", metavar="PATH")
    ing.add_argument("--dataset")
    ing.set_defaults(func=cmd_ingest)

    rep = sub.add_parser("reprocess", help="redo a stage's work for a dataset, with new parameters")
    common(rep)
    rep.add_argument("--dataset", required=True)
    rep.add_argument("--stage", required=True, choices=["render", "metadata", "labelling"],
                     help="convert: run `cryobus convert ...` with the new parameters and a new --out instead")
    rep.add_argument("--since", help="only inputs discovered since this ISO 8601 time")
    rep.add_argument("--param", action="append", metavar="KEY=VALUE",
                     help="a parameter of the stage (repeatable), e.g. max_size=2048, clip_percentiles=[1,99]")
    rep.set_defaults(func=cmd_reprocess)

    sch = sub.add_parser("schema", help="write the JSON Schema of every event")
    sch.add_argument("--out", default="docs/schemas")
    sch.set_defaults(func=cmd_schema)

    dl = sub.add_parser("dlq", help="dead letters: list | show ID | replay [ID...] | purge")
    common(dl)
    dl.add_argument("action", choices=["list", "show", "replay", "purge"])
    dl.add_argument("ids", nargs="*", metavar="ID", help="dead-letter ids (their DLQ stream sequence), for show/replay")
    dl.add_argument("--service", help="only this service's dead letters")
    dl.add_argument("--since", help="only dead letters since this ISO 8601 time")
    dl.set_defaults(func=cmd_dlq)

    st = sub.add_parser("status", help="streams, consumer lag, dead letters")
    common(st)
    st.set_defaults(func=cmd_status)

    demo = sub.add_parser("demo", help="run the whole system on a synthetic (or given) acquisition")
    demo.add_argument("--data", help="a project folder to process (default: generate a synthetic acquisition)")
    demo.add_argument("--out", default="demo-out", help="where artifacts (and run state) go")
    demo.add_argument("--keep-state", action="store_true", help="reuse the previous run's NATS/ingest state")
    demo.set_defaults(func=cmd_demo)

    from cryobus import convert_cli

    convert_cli.add_parser(sub, common)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        return 130
    except (KeyError, FileNotFoundError, ConnectionError, ConfigError) as exc:
        print(f"cryobus: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
