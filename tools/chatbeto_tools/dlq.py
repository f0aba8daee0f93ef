"""`chatbeto dlq`: see what was dead-lettered and replay it once the cause is fixed."""

from __future__ import annotations

import argparse
import asyncio
from typing import Any

import aio_pika
from chatbeto.broker import Publisher, connect
from chatbeto.consumer import ATTEMPT_HEADER
from chatbeto.settings import BaseServiceSettings, load


async def _counts(settings: BaseServiceSettings) -> list[tuple[str, int]]:
    connection = await connect(settings.amqp_url)
    async with connection:
        channel = await connection.channel()
        await settings.topology.declare(channel)
        out = []
        for queue in settings.topology.work_queues:
            declared = await channel.declare_queue(queue.dlq, passive=True)
            out.append((queue.name, declared.declaration_result.message_count or 0))
        return out


async def _peek(settings: BaseServiceSettings, base: str, limit: int) -> list[dict[str, Any]]:
    """Read up to `limit` dead letters without removing them (they are requeued)."""
    queue_def = settings.topology.queue(base)
    connection = await connect(settings.amqp_url)
    seen: list[dict[str, Any]] = []
    async with connection:
        channel = await connection.channel()
        await settings.topology.declare(channel)
        queue = await channel.declare_queue(queue_def.dlq, passive=True)
        held = []
        for _ in range(limit):
            message = await queue.get(no_ack=False, fail=False)
            if message is None:
                break
            held.append(message)
            deaths = (message.headers or {}).get("x-death")
            first = deaths[0] if isinstance(deaths, list) and deaths else None
            reason = first.get("reason") if isinstance(first, dict) else None
            # A worker that dead-lettered one record of a message says why in `x-error`.
            error = (message.headers or {}).get("x-error")
            if isinstance(error, bytes):
                error = error.decode("utf-8", "replace")
            if isinstance(error, str):
                error = " ".join(error.split())  # one line per dead letter
            seen.append(
                {
                    "message_id": message.message_id,
                    "type": message.type,
                    "attempt": (message.headers or {}).get(ATTEMPT_HEADER, 1),
                    "reason": error if error is not None else reason,
                    "bytes": len(message.body),
                }
            )
        for message in held:
            await message.nack(requeue=True)
    return seen


async def replay(settings: BaseServiceSettings, base: str, limit: int | None = None) -> int:
    """Move dead letters back to their work queue: each is confirmed there before it is acked
    here, so a crash mid-way duplicates at worst (consumers are idempotent), never loses."""
    queue_def = settings.topology.queue(base)
    connection = await connect(settings.amqp_url)
    moved = 0
    async with connection:
        channel = await connection.channel()
        await settings.topology.declare(channel)
        queue = await channel.declare_queue(queue_def.dlq, passive=True)
        # Only what is there now: a record that fails again comes back while we replay, and
        # must not be replayed round and round.
        present = queue.declaration_result.message_count or 0
        limit = present if limit is None else min(limit, present)
        publisher = Publisher(connection, settings.topology)
        while moved < limit:
            message = await queue.get(no_ack=False, fail=False)
            if message is None:
                break
            headers = {
                k: v
                for k, v in (message.headers or {}).items()
                if not k.startswith("x-death")
                and k
                not in (
                    "x-first-death-exchange",
                    "x-first-death-queue",
                    "x-first-death-reason",
                    "x-delivery-count",
                    "x-error",
                )
            }
            headers[ATTEMPT_HEADER] = 1
            await publisher.publish(
                aio_pika.Message(
                    body=message.body,
                    headers=headers,
                    content_type=message.content_type,
                    message_id=message.message_id,
                    type=message.type,
                    delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
                    correlation_id=message.correlation_id,
                    timestamp=message.timestamp,
                ),
                queue_def.name,
                exchange="",
            )
            await message.ack()
            moved += 1
        await publisher.close()
    return moved


def _queue_names() -> list[str]:
    from chatbeto import topology

    return sorted(topology.QUEUE_BINDINGS)


def cmd_list(args: argparse.Namespace) -> int:
    settings = load(BaseServiceSettings)
    for name, count in asyncio.run(_counts(settings)):
        print(f"{name}.dlq\t{count}")
    return 0


def cmd_peek(args: argparse.Namespace) -> int:
    settings = load(BaseServiceSettings)
    for item in asyncio.run(_peek(settings, args.queue, args.limit)):
        print("\t".join(f"{k}={v}" for k, v in item.items()))
    return 0


def cmd_replay(args: argparse.Namespace) -> int:
    settings = load(BaseServiceSettings)
    moved = asyncio.run(replay(settings, args.queue, args.limit))
    print(f"replayed {moved} message(s) to {args.queue}")
    return 0


def register(sub: Any) -> None:
    dlq = sub.add_parser("dlq", help="inspect and replay dead-lettered messages")
    actions = dlq.add_subparsers(dest="action", required=True)
    actions.add_parser("list", help="dead letters per queue").set_defaults(func=cmd_list)
    peek = actions.add_parser("peek", help="show dead letters (metadata, not contents)")
    peek.add_argument("queue", choices=_queue_names(), help="the work queue whose dead letters")
    peek.add_argument("--limit", type=int, default=20, help="show at most this many (20)")
    peek.set_defaults(func=cmd_peek)
    rep = actions.add_parser("replay", help="move dead letters back to their queue")
    rep.add_argument("queue", choices=_queue_names(), help="the work queue to replay into")
    rep.add_argument("--limit", type=int, help="replay at most this many (default: all)")
    rep.set_defaults(func=cmd_replay)
