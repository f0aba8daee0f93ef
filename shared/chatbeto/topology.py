"""The broker topology, declared in one place and used by every service and by `migrate`.

One durable topic exchange carries all work. Each work queue is a quorum queue with:
- a ladder of delay queues (`<queue>.retry.<ms>ms`): a message that failed transiently is parked
  there and dead-lettered back to its queue when its TTL expires (backoff without a plugin);
- a dead-letter queue (`<queue>.dlq`) where it lands after the last try or when rejected as
  invalid, to be inspected and replayed by an operator (`chatbeto dlq`).

Deployments sharing a broker are kept apart by the vhost in AMQP_URL. `AMQP_NAMESPACE` (default
empty) prefixes every name as well; the tests use it to give each test its own names.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import aio_pika
from aio_pika.abc import AbstractChannel, AbstractExchange, AbstractQueue

# A message redelivered this often (its consumer died each time) is dead-lettered.
MAX_REDELIVERIES = 20
RETRY_DELAYS_MS: tuple[int, ...] = (1_000, 5_000, 20_000, 60_000)


@dataclass(frozen=True)
class WorkQueue:
    name: str
    bindings: tuple[str, ...]
    retry_delays_ms: tuple[int, ...] = field(default=RETRY_DELAYS_MS)
    # Work whose caller is waiting and retries (request/reply): a classic queue of transient
    # messages, no fsync per message. What the work produces is durable elsewhere (Postgres,
    # committed before the caller is answered); a broker restart loses only requests whose
    # callers get a 504. No delivery limit on a classic queue: a crash-looping request ends
    # when its deadline passes (the worker skips it).
    transient: bool = False

    @property
    def dlq(self) -> str:
        return f"{self.name}.dlq"

    def retry_queue(self, attempt: int) -> str:
        """Delay queue for the given failed attempt (1-based); the last step repeats."""
        index = min(attempt, len(self.retry_delays_ms)) - 1
        return f"{self.name}.retry.{self.retry_delays_ms[index]}ms"

    @property
    def retry_queues(self) -> list[str]:
        return [f"{self.name}.retry.{ms}ms" for ms in sorted(set(self.retry_delays_ms))]


METRICS_INGEST = "metrics.ingest"
OPENAI_REQUESTS = "openai.calls"
# Work queues of earlier releases, removed by `declare` (`chatbeto migrate`): `openai.requests`
# was a quorum queue of persistent requests, each one fsynced before the gateway went on.
LEGACY_QUEUES = ("openai.requests",)
TRANSIENT_QUEUES = frozenset({OPENAI_REQUESTS})
OPENAI_JOBS = "openai.jobs"
WEBHOOK_DELIVERIES = "webhook.deliveries"
IMPORTS = "imports"

QUEUE_BINDINGS: dict[str, tuple[str, ...]] = {
    METRICS_INGEST: ("metrics.#",),
    OPENAI_REQUESTS: ("openai.request.#",),
    OPENAI_JOBS: ("openai.job.#",),
    WEBHOOK_DELIVERIES: ("webhook.#",),
    IMPORTS: ("import.#",),
}


@dataclass(frozen=True)
class Topology:
    namespace: str = ""

    @property
    def exchange(self) -> str:
        return f"{self.namespace}chatbeto"

    @property
    def live_exchange(self) -> str:
        """Fan-out of stored events to every gateway (live dashboards); transient by nature."""
        return f"{self.namespace}chatbeto.live"

    @property
    def replies_exchange(self) -> str:
        """Direct exchange for request/reply answers, routed to one gateway's reply queue."""
        return f"{self.namespace}chatbeto.replies"

    def queue(self, base: str) -> WorkQueue:
        return WorkQueue(
            f"{self.namespace}{base}", QUEUE_BINDINGS[base], transient=base in TRANSIENT_QUEUES
        )

    @property
    def work_queues(self) -> list[WorkQueue]:
        return [self.queue(base) for base in QUEUE_BINDINGS]

    async def declare(self, channel: AbstractChannel) -> AbstractExchange:
        """Declare exchanges, work queues, delay ladders and dead-letter queues. Idempotent."""
        exchange = await self.declare_exchanges(channel)
        for queue in self.work_queues:
            await self.declare_work_queue(channel, queue, exchange)
        for legacy in LEGACY_QUEUES:  # bound to the same keys, nobody consumes it any more
            await channel.queue_delete(f"{self.namespace}{legacy}")
        return exchange

    async def declare_exchanges(self, channel: AbstractChannel) -> AbstractExchange:
        """The three exchanges; returns the work exchange."""
        exchange = await channel.declare_exchange(
            self.exchange, aio_pika.ExchangeType.TOPIC, durable=True
        )
        await channel.declare_exchange(
            self.live_exchange, aio_pika.ExchangeType.FANOUT, durable=True
        )
        await channel.declare_exchange(
            self.replies_exchange, aio_pika.ExchangeType.DIRECT, durable=True
        )
        return exchange

    async def declare_work_queue(
        self, channel: AbstractChannel, queue: WorkQueue, exchange: AbstractExchange
    ) -> AbstractQueue:
        """One work queue with its dead-letter queue and delay ladder; returns the work queue.

        A consumer must consume from the queue object returned here: a robust channel
        re-declares (with these same arguments) and re-consumes only queues it declared itself.
        """
        await channel.declare_queue(queue.dlq, durable=True, arguments={"x-queue-type": "quorum"})
        arguments: dict[str, Any] = {
            # reject(requeue=False) and crash loops both end in the dead-letter queue.
            "x-dead-letter-exchange": "",
            "x-dead-letter-routing-key": queue.dlq,
        }
        if queue.transient:
            arguments["x-queue-type"] = "classic"
        else:
            arguments |= {"x-queue-type": "quorum", "x-delivery-limit": MAX_REDELIVERIES}
        main = await channel.declare_queue(queue.name, durable=True, arguments=arguments)
        for key in queue.bindings:
            await main.bind(exchange, routing_key=key)
        for delay_name, delay_ms in zip(
            queue.retry_queues, sorted(set(queue.retry_delays_ms)), strict=True
        ):
            await channel.declare_queue(
                delay_name,
                durable=True,
                arguments={
                    "x-message-ttl": delay_ms,
                    # Expired messages go back to the work queue via the default exchange.
                    "x-dead-letter-exchange": "",
                    "x-dead-letter-routing-key": queue.name,
                },
            )
        return main

    def reply_queue_name(self, process_id: str) -> str:
        return f"{self.namespace}chatbeto.replies.{process_id}"

    async def declare_reply_queue(self, channel: AbstractChannel, process_id: str) -> AbstractQueue:
        """One gateway process's own reply queue: exclusive, so it dies with the connection
        (answers nobody waits for anymore are dropped), bound by its name on the replies
        exchange so only this process receives its replies."""
        name = self.reply_queue_name(process_id)
        queue = await channel.declare_queue(name, exclusive=True, auto_delete=True)
        await queue.bind(self.replies_exchange, routing_key=name)
        return queue

    def live_queue_name(self, process_id: str) -> str:
        return f"{self.live_exchange}.{process_id}"

    async def declare_live_queue(self, channel: AbstractChannel, process_id: str) -> AbstractQueue:
        """One gateway process's subscription to the live fan-out: exclusive (dies with the
        connection) and bounded, so a stalled gateway drops old live events, not memory."""
        queue = await channel.declare_queue(
            self.live_queue_name(process_id),
            exclusive=True,
            auto_delete=True,
            arguments={"x-max-length": 10_000, "x-overflow": "drop-head"},
        )
        await queue.bind(self.live_exchange)
        return queue

    async def delete(self, channel: AbstractChannel) -> None:
        """Remove everything `declare` made (tests clean up their namespace with it)."""
        for queue in self.work_queues:
            for name in (queue.name, queue.dlq, *queue.retry_queues):
                await channel.queue_delete(name)
        for legacy in LEGACY_QUEUES:
            await channel.queue_delete(f"{self.namespace}{legacy}")
        for name in (self.exchange, self.live_exchange, self.replies_exchange):
            await channel.exchange_delete(name)
