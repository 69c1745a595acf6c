"""Per-service least privilege: derived from the code, the one source of every shipped config,
enforced by a real nats-server.

cryobus.nats_permissions reads each service's handler registrations and the events its code
constructs; ``python -m cryobus.nats_permissions --write`` writes the grants to
deploy/nats/permissions.conf (included by auth.conf and the compose nats-server.conf) and to the
users of the Helm values.yaml. This file is the one place that checks the shipped configs match
the code. Against auth.conf run as shipped (nkey users, mutual TLS), each service does its whole
job — provision, consume, ack, KV, replay, publish every fact its code can emit and its dead
letters — and the server refuses it another service's facts, commands, others' consumers,
deleting or purging streams. tests/deploy/test_nats_permissions.py runs the same exercise
(:func:`exercise_service_user`) against the compose and Helm configs, whose users have passwords.
"""

from __future__ import annotations

import asyncio
import re
import uuid
from collections.abc import Callable
from pathlib import Path

import nats
import pytest
import yaml

from cryobus.nats_permissions import (
    CLI_USER,
    Grants,
    all_grants,
    durable_consumers,
    helm_users,
    main as permissions_main,
    render_helm_values,
    render_permissions_conf,
    service_grants,
    uses_replay,
)
from cryobus.registry import SERVICES, load_service
from cryobus.shared.bus.connection import connect_options, connect_with_retry
from cryobus.shared.bus.replay import replay
from cryobus.shared.bus.runtime import ServiceRuntime
from cryobus.shared.bus.topology import COMMANDS_STREAM, DLQ_STREAM, EVENTS_STREAM
from cryobus.shared.config import Settings
from cryobus.shared.events import ArtifactStored
from tests.security.conftest import NATS_DEPLOY, registered_services

SHARED_FACTS = {"cryobus.events.artifact.stored", "cryobus.events.input.missing"}
STALE = "deploy/nats is out of date with the code: run python -m cryobus.nats_permissions --write"


def own_facts(g: Grants) -> set[str]:
    return {s for s in g.publish_allow if s.startswith("cryobus.events.")} - SHARED_FACTS


def forbidden_for(name: str) -> list[str]:
    """Subjects service ``name`` must never publish: others' facts, dead letters, consumers and
    acks; commands; deleting or purging a stream; deleting a durable consumer."""
    out = ["cryobus.commands.ingest.requested", "cryobus.commands.render.requested",
           f"$JS.API.STREAM.DELETE.{EVENTS_STREAM}", f"$JS.API.STREAM.PURGE.{EVENTS_STREAM}",
           f"$JS.API.STREAM.DELETE.{DLQ_STREAM}"]
    own = load_service(name)
    out += [f"$JS.API.CONSUMER.DELETE.{stream}.{durable}" for stream, durable in durable_consumers(own)]
    for other in registered_services():
        if other == name:
            continue
        out += sorted(own_facts(service_grants(other)))
        out.append(f"cryobus.dlq.{other}")
        for stream, durable in durable_consumers(load_service(other)):
            out += [f"$JS.API.CONSUMER.MSG.NEXT.{stream}.{durable}", f"$JS.ACK.{stream}.{durable}.1.1.1.0.0",
                    f"$JS.API.CONSUMER.DURABLE.CREATE.{stream}.{durable}", f"$JS.API.CONSUMER.CREATE.{stream}.{durable}"]
        for bucket in load_service(other).kv_buckets:
            if bucket not in own.kv_buckets:
                out.append(f"$KV.{bucket}.forged")
    return out


def example(pattern: str) -> str:
    """A concrete subject a pattern stands for (a replay consumer's random name for ``*``)."""
    return ".".join("replay-0a1b2c3d4e5f" if t == "*" else "probe" if t == ">" else t for t in pattern.split("."))


# ---------------------------------------------------------------------------------- the code


def test_grants_follow_the_handlers_and_the_events_the_code_builds():
    for name in registered_services():
        g, service = service_grants(name), load_service(name)
        # every consumer the runtime declares (from Service.subjects) can be created, fetched, acked
        for stream, durable in durable_consumers(service):
            for op in ("DURABLE.CREATE", "INFO", "MSG.NEXT"):
                assert g.may_publish(f"$JS.API.CONSUMER.{op}.{stream}.{durable}"), (name, op, durable)
            assert g.may_publish(f"$JS.ACK.{stream}.{durable}.1.2.3.4.0")
        assert g.may_publish(f"cryobus.events.{name}.failed") and g.may_publish(f"cryobus.dlq.{name}")
        assert g.may_publish(f"$JS.API.CONSUMER.CREATE.{EVENTS_STREAM}.replay-0a1b2c3d4e5f") == uses_replay(SERVICES[name])
        for subject in forbidden_for(name):
            assert not g.may_publish(subject), (name, subject)
    # what the services' code builds, as read from it (a fact has exactly one producing service)
    facts = {n: own_facts(service_grants(n)) for n in registered_services()}
    assert {"cryobus.events.exposure.discovered", "cryobus.events.job.discovered"} <= facts["ingest"]
    assert "cryobus.events.render.completed" in facts["render"]
    assert {"cryobus.events.metadata.updated", "cryobus.events.cryoet.written"} <= facts["metadata"]
    assert {"cryobus.events.label.recorded", "cryobus.events.training_set.exported"} <= facts["labelling"]
    assert "cryobus.events.particles.converted" in facts["convert"]
    for a in facts:
        for b in facts:
            assert a == b or not (facts[a] & facts[b]), (a, b, facts[a] & facts[b])
    assert service_grants("render").notes.get("replay")  # `cryobus reprocess` re-reads past events


# ---------------------------------------------------------------------------------- the shipped configs


def test_permissions_conf_and_the_helm_users_are_what_the_code_generates():
    grants = all_grants()
    assert (NATS_DEPLOY / "permissions.conf").read_text() == render_permissions_conf(grants), STALE
    values = (NATS_DEPLOY / "values.yaml").read_text()
    assert values == render_helm_values(values, grants), STALE
    assert permissions_main(["--check"]) == 0  # what CI runs


def test_every_shipped_config_takes_each_users_permissions_from_the_generated_ones():
    users = [g.user for g in all_grants()]
    assert users == [*registered_services(), CLI_USER]

    # compose: password users, permissions by variable from the included permissions.conf
    compose = (NATS_DEPLOY / "nats-server.conf").read_text()
    assert re.search(r'^include "permissions\.conf"', compose, re.M)
    assert "publish" not in re.sub(r"#.*", "", compose), "nats-server.conf must not write permissions out"
    entries = re.findall(
        r"\{\s*user:\s*([\w-]+),\s*password:\s*\$NATS_PASSWORD_(\w+),\s*permissions:\s*\$CRYOBUS_PERMISSIONS_(\w+)\s*\}",
        compose,
    )
    assert sorted(entries) == sorted((u, u.upper(), u.upper()) for u in users)

    # auth.conf: nkey users, the same variables
    auth = (NATS_DEPLOY / "auth.conf").read_text()
    assert re.search(r'^include "permissions\.conf"', auth, re.M)
    keyed = re.findall(r"\{\s*nkey:\s*\$NKEY_(\w+),\s*permissions:\s*\$CRYOBUS_PERMISSIONS_(\w+)\s*\}", auth)
    assert sorted(keyed) == sorted((u.upper(), u.upper()) for u in users)

    # Helm: the generated users sit where the chart reads them, each password from its Secret key
    values = yaml.safe_load((NATS_DEPLOY / "values.yaml").read_text())
    assert values["config"]["merge"]["accounts"]["CRYOBUS"]["users"] == helm_users(all_grants())
    env = values["container"]["env"]
    for user in users:
        assert env[f"NATS_PASSWORD_{user.upper()}"]["valueFrom"]["secretKeyRef"]["key"] == user


def test_helm_values_rewrite_replaces_the_users_list_and_nothing_else(tmp_path):
    shipped = (NATS_DEPLOY / "values.yaml").read_text()
    stale = shipped.replace("- cryobus.dlq.render\n", "- cryobus.>\n", 1).replace(
        "  cluster:\n", "  # an operator's note\n  cluster:\n", 1)
    assert stale != shipped
    path = tmp_path / "values.yaml"
    path.write_text(stale)
    assert permissions_main(["--check", "--helm-values", str(path)]) == 1
    assert permissions_main(["--write", "--helm-values", str(path)]) == 0
    assert path.read_text() == shipped.replace("  cluster:\n", "  # an operator's note\n  cluster:\n", 1)
    assert permissions_main(["--check", "--helm-values", str(path)]) == 0

    path.write_text(shipped.replace("# END GENERATED", "# (end)"))
    with pytest.raises(ValueError, match=re.escape(str(path))):
        render_helm_values(path.read_text(), all_grants(), path)
    assert permissions_main(["--check", "--helm-values", str(path)]) == 2


# ---------------------------------------------------------------------------------- the real server


async def _refused(nc, errors: list[str], subject: str) -> bool:
    """Publish once; True when the server answered with a permissions violation for it. The
    server's -ERR precedes its PONG on the connection, so after flush() the error is in."""
    before = len(errors)
    await nc.publish(subject, b"{}")
    await nc.flush(timeout=5)
    for _ in range(50):
        if any("permissions violation" in e.lower() and f'"{subject.lower()}"' in e.lower() for e in errors[before:]):
            return True
        await asyncio.sleep(0.02)
    return False


async def exercise_service_user(fields: Callable[[str], dict[str, object]], name: str, tmp: Path) -> None:
    """Connected as service ``name`` (``fields(user)``: the Settings fields of ``user``'s
    connection), do the whole job the code needs, then check the server refuses each subject of
    :func:`forbidden_for`. Uses the ``cli`` user to feed its consumers."""
    service = load_service(name)
    grants = service_grants(name)
    settings = Settings(**fields(name), connect_timeout_s=10.0, store_url=(tmp / "store").as_uri(),
                        state_dir=tmp / "state")
    rt = ServiceRuntime(service, settings)
    rt.nc = await connect_with_retry(settings, f"probe-{name}")
    rt.js = rt.nc.jetstream()
    cli = await connect_with_retry(Settings(**fields(CLI_USER), connect_timeout_s=10.0), "probe-cli")
    cli_js = cli.jetstream()
    try:
        # What the runtime does at start, twice (idempotent): streams, its consumers, its KV.
        await rt.provision()
        await rt.provision()
        for bucket in service.kv_buckets:
            await rt.kv_put(bucket, "probe.key", b"v")
            assert await rt.kv_get(bucket, "probe.key") == b"v"
            assert set(await rt.kv_items(bucket, "probe.")) == {"probe.key"}

        # A message on each of its consumers: fetch, heartbeat, ack.
        for spec in rt.consumer_specs():
            subject = example(spec.filter_subjects[0])
            await cli_js.publish(subject, b"{}", stream=spec.stream)
            sub = await rt.js.pull_subscribe_bind(spec.durable, stream=spec.stream)
            # (other services' probes may have left messages for this consumer too: take them all)
            msgs = await sub.fetch(100, timeout=5)
            await msgs[0].in_progress()
            for msg in msgs:
                await msg.ack_sync()
            await sub.unsubscribe()
            assert (await rt.js.consumer_info(spec.stream, spec.durable)).num_ack_pending == 0

        # Every fact its code can publish, and its dead letters, are stored (publish acks).
        for subject in sorted(s for s in grants.publish_allow if s.startswith("cryobus.events.")):
            assert (await rt.js.publish(subject, b"{}", stream=EVENTS_STREAM)).seq >= 1
        assert (await rt.js.publish(f"cryobus.dlq.{name}", b"{}", stream=DLQ_STREAM)).seq >= 1

        # A replaying service reads past events back (render: `cryobus reprocess`).
        if grants.notes.get("replay"):
            probe = ArtifactStored(dataset="probe", uri="file:///x", key="probe/x", size_bytes=1, sha256="0" * 64,
                                   media_type="text/plain", producer=name, role="probe", inputs=[])
            env = await rt.publish(probe, id=f"probe-{uuid.uuid4().hex}")
            replayed = await replay(rt.js, EVENTS_STREAM, ["cryobus.events.artifact.stored"])
            assert env.id in {e.id for e in replayed}

        # ...and nothing else: the server refuses each forbidden subject.
        errors: list[str] = []

        async def on_error(exc: Exception) -> None:
            errors.append(str(exc))

        raw = await nats.connect(**{**connect_options(settings, f"raw-{name}"), "allow_reconnect": False}, error_cb=on_error)
        try:
            assert not await _refused(raw, errors, f"cryobus.events.{name}.failed")  # the detector's control
            for subject in forbidden_for(name):
                assert await _refused(raw, errors, subject), f"{name} may publish {subject}: {errors}"
        finally:
            await raw.close()
    finally:
        await cli.close()
        await rt.nc.close()


@pytest.mark.parametrize("name", registered_services())
def test_each_service_user_does_its_job_and_nothing_more_on_the_shipped_server(hardened, name, tmp_path):
    asyncio.run(exercise_service_user(hardened.fields, name, tmp_path))


def test_a_service_key_cannot_publish_commands_but_the_cli_key_can(hardened):
    async def main() -> None:
        ingest = await connect_with_retry(Settings(**hardened.fields("ingest"), connect_timeout_s=10), "probe")
        cli = await connect_with_retry(Settings(**hardened.fields("cli"), connect_timeout_s=10), "probe")
        try:
            with pytest.raises(nats.errors.TimeoutError):  # denied: no stream ever answers
                await ingest.jetstream().publish("cryobus.commands.render.requested", b"{}", timeout=1)
            assert (await cli.jetstream().publish("cryobus.commands.render.requested", b"{}", stream=COMMANDS_STREAM)).seq
        finally:
            await ingest.close()
            await cli.close()

    asyncio.run(main())
