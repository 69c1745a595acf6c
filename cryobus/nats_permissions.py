"""Least-privilege NATS permissions for each service, derived from the code.

What a service may publish is read from the code, not written by hand, so the server config
cannot drift from what the services do:

* facts: every event model the service's package constructs (found by reading its source:
  ``JobDiscovered(...)`` in ``services/ingest/recognise.py`` grants
  ``cryobus.events.job.discovered``), plus what the runtime publishes for any handler
  (``artifact.stored``, ``input.missing``, ``<service>.failed``) and its dead letters
  ``cryobus.dlq.<service>``;
* JetStream API: provisioning the three streams (create/update/info, never delete or purge),
  its own durable consumers (named by :meth:`ServiceRuntime.consumer_specs` from the subjects
  its handlers consume, ``Service.subjects``) and acks on them only, its own KV buckets;
* replay (a service whose code calls ``replay``, e.g. render for ``cryobus reprocess``):
  short-lived read consumers on the events stream, whose names are random, so any name is
  allowed except the other services' durables, and no durable may be deleted.

Subscriptions: only ``_INBOX.>`` (API replies and pull-fetch deliveries); services never
subscribe to subjects directly (they consume through durable pull consumers).

These grants are the only source of the services' permissions in deploy/nats/:

* ``permissions.conf``: NATS config variables ``CRYOBUS_PERMISSIONS_<USER>``, included by
  ``auth.conf`` (nkeys + TLS) and ``nats-server.conf`` (compose, passwords);
* ``values.yaml`` (Helm chart): the ``users:`` list of ``config.merge.accounts.CRYOBUS``, between
  its ``# BEGIN GENERATED`` / ``# END GENERATED`` lines (the chart cannot include a file).

``python -m cryobus.nats_permissions --write`` regenerates both, ``--check`` exits 1 naming what
is stale (``--conf`` / ``--helm-values`` pick other files, or only one); without either it prints
``permissions.conf``. tests/security/test_permissions.py checks the shipped files against the code.
"""

from __future__ import annotations

import argparse
import ast
import functools
import importlib
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace

from cryobus.shared.bus.service import Service
from cryobus.shared.bus.topology import COMMANDS_STREAM, DLQ_STREAM, EVENTS_STREAM
from cryobus.shared.events import ArtifactStored, EventData, InputMissing, ProcessingFailed
from cryobus.shared.events.models import EVENT_TYPES

STREAMS = (EVENTS_STREAM, COMMANDS_STREAM, DLQ_STREAM)
CLI_USER = "cli"
DEPLOY_NATS = Path(__file__).resolve().parents[1] / "deploy" / "nats"
HELM_BEGIN = "# BEGIN GENERATED"
HELM_END = "# END GENERATED"
_BY_NAME = {cls.__name__: cls for cls in EVENT_TYPES}


@dataclass(frozen=True)
class Grants:
    """One NATS user's permissions: subject patterns (``*`` one token, ``>`` the rest)."""

    user: str
    publish_allow: tuple[str, ...]
    publish_deny: tuple[str, ...] = ()
    subscribe_allow: tuple[str, ...] = ("_INBOX.>",)
    notes: dict[str, str] = field(default_factory=dict, compare=False)

    def may_publish(self, subject: str) -> bool:
        """What the server decides for a publish on ``subject`` (a deny beats an allow)."""
        return any(subject_matches(p, subject) for p in self.publish_allow) and not any(
            subject_matches(p, subject) for p in self.publish_deny
        )

    def variable(self) -> str:
        return f"CRYOBUS_PERMISSIONS_{self.user.upper().replace('-', '_')}"


def subject_matches(pattern: str, subject: str) -> bool:
    """NATS subject matching: ``*`` matches one token, a final ``>`` one or more.

    Source: NATS docs, "Subject-Based Messaging" (wildcards).
    """
    pat, sub = pattern.split("."), subject.split(".")
    for i, token in enumerate(pat):
        if token == ">":
            return i == len(pat) - 1 and len(sub) > i
        if i >= len(sub) or (token != "*" and token != sub[i]):
            return False
    return len(pat) == len(sub)


# ---------------------------------------------------------------------------------- the code


def _package_dir(service_module: str) -> Path:
    module = importlib.import_module(service_module)
    return Path(module.__file__).resolve().parent  # type: ignore[arg-type]


@functools.cache
def _calls(package: Path) -> frozenset[str]:
    """Names called anywhere in the package's source: ``Foo(...)``, ``x.foo(...)``."""
    names: set[str] = set()
    for path in sorted(package.rglob("*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        for node in ast.walk(tree):
            if isinstance(node, ast.Call):
                func = node.func
                if isinstance(func, ast.Name):
                    names.add(func.id)
                elif isinstance(func, ast.Attribute):
                    names.add(func.attr)
    return frozenset(names)


def published_models(service_module: str) -> list[type[EventData]]:
    """Event models whose constructor the service's package calls (what it can publish).

    ``ProcessingFailed`` is left out: its subject is per service (``cryobus.events.<service>.failed``).
    """
    called = _calls(_package_dir(service_module))
    return sorted(
        (cls for name, cls in _BY_NAME.items() if name in called and cls is not ProcessingFailed),
        key=lambda c: c.static_subject(),
    )


def uses_replay(service_module: str) -> bool:
    """True when the service's code reads past events back (``ctx.replay`` / ``replay(js, ...)``)."""
    return "replay" in _calls(_package_dir(service_module))


def durable_consumers(service: Service) -> list[tuple[str, str]]:
    """(stream, durable) of each consumer the runtime declares for ``service``."""
    from cryobus.shared.bus.runtime import ServiceRuntime
    from cryobus.shared.config import Settings

    # consumer_specs only reads .service and .settings: borrow the runtime's naming rule
    # without opening a store or a connection.
    specs = ServiceRuntime.consumer_specs(SimpleNamespace(service=service, settings=Settings()))  # type: ignore[arg-type]
    return [(s.stream, s.durable) for s in specs]


def _consumer_api(stream: str, durable: str) -> list[str]:
    return [
        f"$JS.API.CONSUMER.CREATE.{stream}.{durable}",
        f"$JS.API.CONSUMER.CREATE.{stream}.{durable}.>",  # single filter subject in the name
        f"$JS.API.CONSUMER.DURABLE.CREATE.{stream}.{durable}",  # what nats-py sends for durable_name
        f"$JS.API.CONSUMER.INFO.{stream}.{durable}",
        f"$JS.API.CONSUMER.MSG.NEXT.{stream}.{durable}",
        f"$JS.ACK.{stream}.{durable}.>",  # ack, nak, in-progress, term
    ]


def _kv_api(bucket: str) -> list[str]:
    stream = f"KV_{bucket}"
    return [
        f"$JS.API.STREAM.CREATE.{stream}",
        f"$JS.API.STREAM.INFO.{stream}",
        f"$JS.API.STREAM.MSG.GET.{stream}",
        f"$JS.API.DIRECT.GET.{stream}.>",
        f"$JS.API.CONSUMER.CREATE.{stream}",  # listing keys: a short-lived ordered consumer
        f"$JS.API.CONSUMER.CREATE.{stream}.>",
        f"$JS.API.CONSUMER.INFO.{stream}.>",
        f"$JS.API.CONSUMER.DELETE.{stream}.>",
        f"$JS.FC.{stream}.>",
        f"$KV.{bucket}.>",
    ]


def service_grants(name: str, registry: dict[str, str] | None = None) -> Grants:
    """The least privilege of service ``name``, from its code (see the module docstring).

    Args:
        name: a registered service (``cryobus.registry.SERVICES``).
        registry: name → module of the service declarations (default: the registry); the other
            services' durables are denied to a replaying service.

    Raises:
        KeyError: unknown service.
    """
    from cryobus.registry import SERVICES

    registry = SERVICES if registry is None else registry
    module = registry[name]
    service: Service = importlib.import_module(module).service
    api = ["$JS.API.STREAM." + op + "." + s for s in STREAMS for op in ("CREATE", "UPDATE", "INFO")]
    for stream, durable in durable_consumers(service):
        api += _consumer_api(stream, durable)
    for bucket in service.kv_buckets:
        api += _kv_api(bucket)
    deny: list[str] = []
    notes = {}
    if uses_replay(module):
        notes["replay"] = "reads past events with short-lived consumers on " + EVENTS_STREAM
        api += [
            f"$JS.API.CONSUMER.CREATE.{EVENTS_STREAM}.*",
            f"$JS.API.CONSUMER.CREATE.{EVENTS_STREAM}.*.>",
            f"$JS.API.CONSUMER.MSG.NEXT.{EVENTS_STREAM}.*",
            f"$JS.API.CONSUMER.DELETE.{EVENTS_STREAM}.*",
        ]
        for other in sorted(registry):
            for stream, durable in durable_consumers(importlib.import_module(registry[other]).service):
                if stream != EVENTS_STREAM:
                    continue
                deny.append(f"$JS.API.CONSUMER.DELETE.{stream}.{durable}")
                if other != name:
                    deny += [
                        f"$JS.API.CONSUMER.CREATE.{stream}.{durable}",
                        f"$JS.API.CONSUMER.CREATE.{stream}.{durable}.>",
                        f"$JS.API.CONSUMER.MSG.NEXT.{stream}.{durable}",
                    ]
    facts = sorted(
        {m.static_subject() for m in published_models(module)}
        | {ArtifactStored.static_subject(), InputMissing.static_subject(), f"cryobus.events.{name}.failed"}
    )
    return Grants(
        user=name,
        publish_allow=tuple(dict.fromkeys(api + facts + [f"cryobus.dlq.{name}"])),
        publish_deny=tuple(sorted(set(deny))),
        notes=notes,
    )


def cli_grants() -> Grants:
    """The operators' user (``cryobus ingest``, ``reprocess``, ``status``, ``dlq``): commands,
    dead-letter replay (which re-publishes facts and commands), reading every stream."""
    return Grants(
        user=CLI_USER,
        publish_allow=("$JS.API.>", "$JS.ACK.>", "cryobus.>"),
        subscribe_allow=("_INBOX.>", "cryobus.>"),
    )


def all_grants() -> list[Grants]:
    """Every registered service's grants, then the cli user's."""
    from cryobus.registry import SERVICES

    return [service_grants(n) for n in sorted(SERVICES)] + [cli_grants()]


# ---------------------------------------------------------------------------------- the config


def _list(items: tuple[str, ...], indent: str) -> str:
    return "[\n" + "".join(f'{indent}  "{s}"\n' for s in items) + f"{indent}]"


def render_permissions_conf(grants: list[Grants]) -> str:
    """NATS server config text defining ``CRYOBUS_PERMISSIONS_<USER> = { publish..., subscribe... }``."""
    out = [
        "# GENERATED by `python -m cryobus.nats_permissions --write` from the services' code; do not edit.",
        "# Least-privilege permissions per NATS user (docs/security.md). Included by auth.conf and",
        "# nats-server.conf:  users: [ { ..., permissions: $CRYOBUS_PERMISSIONS_INGEST } ... ]",
        "",
    ]
    for g in grants:
        out.append(f"# {g.user}" + "".join(f"; {v}" for v in g.notes.values()))
        out.append(f"{g.variable()} = {{")
        publish = f"  publish: {{\n    allow: {_list(g.publish_allow, '    ')}\n"
        if g.publish_deny:
            publish += f"    deny: {_list(g.publish_deny, '    ')}\n"
        out.append(publish + "  }")
        out.append(f"  subscribe: {{ allow: {_list(g.subscribe_allow, '  ')} }}")
        out.append("}")
        out.append("")
    return "\n".join(out)


def helm_users(grants: list[Grants]) -> list[dict]:
    """The Helm chart's ``accounts.CRYOBUS.users``: each user's password from the container
    environment (``<< $NATS_PASSWORD_<USER> >>``, which the chart renders as a NATS variable) and
    its generated permissions."""
    users = []
    for g in grants:
        publish: dict[str, list[str]] = {"allow": list(g.publish_allow)}
        if g.publish_deny:
            publish["deny"] = list(g.publish_deny)
        users.append({
            "user": g.user,
            "password": f"<< $NATS_PASSWORD_{g.user.upper().replace('-', '_')} >>",
            "permissions": {"publish": publish, "subscribe": {"allow": list(g.subscribe_allow)}},
        })
    return users


def render_helm_values(text: str, grants: list[Grants], path: Path | str = "values.yaml") -> str:
    """``text`` (a Helm values file) with the lines between its ``# BEGIN GENERATED`` and
    ``# END GENERATED`` lines replaced by ``users:`` from :func:`helm_users`, at the BEGIN line's
    indentation. Nothing outside the two lines changes.

    Raises:
        ValueError: the file does not have exactly one BEGIN line followed by one END line
            (message names ``path``).
    """
    import yaml  # a dev tool: pyyaml comes with the test and metadata extras

    lines = text.splitlines(keepends=True)
    begins = [i for i, line in enumerate(lines) if line.lstrip().startswith(HELM_BEGIN)]
    ends = [i for i, line in enumerate(lines) if line.lstrip().startswith(HELM_END)]
    if len(begins) != 1 or len(ends) != 1 or ends[0] < begins[0]:
        raise ValueError(f"{path}: expected one '{HELM_BEGIN}' line, then one '{HELM_END}' line, around the users list")
    indent = re.match(r"\s*", lines[begins[0]]).group(0)
    body = yaml.safe_dump({"users": helm_users(grants)}, sort_keys=False, default_flow_style=False, width=1000)
    block = "".join(indent + line + "\n" for line in body.splitlines())
    return "".join(lines[: begins[0] + 1]) + block + "".join(lines[ends[0] :])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m cryobus.nats_permissions", description=__doc__.splitlines()[0])
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--write", action="store_true", help="regenerate the files (default: both in deploy/nats/)")
    mode.add_argument("--check", action="store_true", help="exit 1 when a file differs from what the code needs")
    parser.add_argument("--conf", type=Path, help="the permissions.conf to write or check")
    parser.add_argument("--helm-values", type=Path, help="the Helm values file whose users to write or check")
    args = parser.parse_args(argv)
    grants = all_grants()
    if not (args.write or args.check):
        if args.conf is not None or args.helm_values is not None:
            parser.error("--conf / --helm-values need --write or --check")
        sys.stdout.write(render_permissions_conf(grants))
        return 0
    conf, values = args.conf, args.helm_values
    if conf is None and values is None:
        conf, values = DEPLOY_NATS / "permissions.conf", DEPLOY_NATS / "values.yaml"
    wanted: dict[Path, str] = {}
    if conf is not None:
        wanted[conf] = render_permissions_conf(grants)
    if values is not None:
        try:
            wanted[values] = render_helm_values(values.read_text(), grants, values)
        except ValueError as exc:
            print(exc, file=sys.stderr)
            return 2
    stale = [path for path, text in wanted.items() if not path.exists() or path.read_text() != text]
    fix = "python -m cryobus.nats_permissions --write" + "".join(
        f" {flag} {path}" for flag, path in (("--conf", args.conf), ("--helm-values", args.helm_values)) if path
    )
    for path in stale:
        if args.write:
            path.write_text(wanted[path])
            print(f"wrote {path}", file=sys.stderr)
        else:
            print(f"{path} is out of date: run {fix}", file=sys.stderr)
    return 1 if stale and args.check else 0


if __name__ == "__main__":
    raise SystemExit(main())
