"""Generic reprocessing for services whose work is fully described by the events they consume.

``cryobus reprocess --dataset D --stage S [--since T]`` publishes a ``reprocess.requested``
command. A service that called :func:`enable_reprocessing` receives it on its command consumer;
if it is the named stage it replays, from the event stream, the events it consumes for ``D``
(published since ``T``) and runs its own handlers on them again:

* each replayed event is handled under a new id derived from (command, original event), with the
  command's correlation id, so follow-up events are new facts of the reprocessing run, not
  duplicates the server would drop;
* a marker per (stage, dataset, params, original event) in the service's KV bucket records what
  was reprocessed, so the same request twice does no duplicate work, and a command redelivered
  after a crash resumes where it stopped;
* bad input in one replayed event is reported (``<service>.failed``) and the others go on.

Render does not use this module: its reprocessing takes render parameters and writes beside the
default images (see services/render/service.py, ``render.requested``).
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

from cryobus.shared.bus.service import HandlerContext, Service
from cryobus.shared.errors import InputError
from cryobus.shared.events import Envelope, ReprocessRequested, stable_event_id


def marker_bucket(service: Service) -> str:
    """The KV bucket holding a service's reprocessing markers."""
    return f"cryobus_reprocess_{service.name}"


def enable_reprocessing(service: Service, *, accepts_params: bool = False) -> None:
    """Let ``service`` redo its work on ``reprocess.requested`` for its stage.

    Args:
        service: the declaration; its handlers are what gets re-run.
        accepts_params: whether its handlers read ``ctx.reprocess_params``; if not, a request with
            parameters is refused (``InputError`` on field ``params``) rather than silently ignored.
    """
    bucket = marker_bucket(service)
    if bucket not in service.kv_buckets:
        service.kv_buckets.append(bucket)

    @service.handler(ReprocessRequested)
    def on_reprocess(event: Envelope[ReprocessRequested], ctx: HandlerContext) -> None:
        reprocess(service, event, ctx, accepts_params=accepts_params)


def reprocess(service: Service, event: Envelope[ReprocessRequested], ctx: HandlerContext, *, accepts_params: bool) -> None:
    """Replay ``service``'s consumed events of the request's dataset through its handlers (see module doc).

    Raises:
        InputError: parameters given to a stage that takes none (field ``params``), or a bad ``since``.
    """
    request = event.data
    if request.stage != service.name:
        return  # another stage's request: every enabled service sees it
    if request.params and not accepts_params:
        raise InputError(f"the {service.name} stage takes no parameters, got {sorted(request.params)}", field="params")
    params_json = json.dumps(request.params, sort_keys=True, default=str)
    subjects = service.subjects("event")
    done = skipped = 0
    for original in ctx.replay(subjects, since=request.since):
        if getattr(original.data, "dataset", None) != request.dataset:
            continue
        handler = service.handler_for(original.type)
        if handler is None:
            continue
        marker = "done." + hashlib.sha256(
            f"{service.name}\0{request.dataset}\0{params_json}\0{original.id}".encode()
        ).hexdigest()[:48]
        if ctx.kv_get(marker_bucket(service), marker) is not None:
            skipped += 1
            continue
        _run_one(handler, original, event, ctx, request.params)
        ctx.kv_put(marker_bucket(service), marker, event.id.encode())
        done += 1
    ctx.log.info("reprocessed %d events of %s (%d already done with these parameters)", done, request.dataset, skipped)


def _run_one(handler, original: Envelope[Any], command: Envelope[ReprocessRequested], ctx: HandlerContext,
             params: dict[str, object]) -> None:
    """Handle one replayed event as part of the reprocessing run and publish its follow-ups now."""
    replayed = original.model_copy(update={
        "id": stable_event_id("reprocess", command.id, original.id),
        "correlation_id": command.correlation_id,
        "causation_id": command.id,
    })
    sub = ctx.derived(replayed)
    sub.reprocess_params = params
    try:
        handler(replayed, sub)
    except InputError as exc:
        ctx.fail_item(exc.reason, file=exc.file, field=exc.field, dataset=command.data.dataset)
        return
    sub.publish_pending()
