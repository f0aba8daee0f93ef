"""The broker topology, declared in one place and used by every service and by `migrate`.

One durable topic exchange carries all work. Each work queue is a quorum queue with:
- a ladder of delay queues (`<queue>.retry.<n>`): a message that failed transiently is parked
  there and dead-lettered back to its queue when its TTL expires (backoff without a plugin);
- a dead-letter queue (`<queue>.dlq`) where it lands after the last try, to be inspected and
  replayed by an operator (`chatbeto dlq`).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import aio_pika
from aio_pika.abc import AbstractChannel, AbstractExchange

EXCHANGE = "chatbeto"
# Fan-out of stored events to every gateway (live dashboards); transient by nature.
LIVE_EXCHANGE = "chatbeto.live"
# A message redelivered this often (its consumer died each time) is dead-lettered.
MAX_REDELIVERIES = 20
RETRY_DELAYS_MS: tuple[int, ...] = (1_000, 5_000, 20_000, 60_000)


@dataclass(frozen=True)
class WorkQueue:
    name: str
    bindings: tuple[str, ...]
    retry_delays_ms: tuple[int, ...] = field(default=RETRY_DELAYS_MS)

    @property
    def dlq(self) -> str:
        return f"{self.name}.dlq"

    def retry_queue(self, attempt: int) -> str:
        """Delay queue for the given failed attempt (1-based); the last step repeats."""
        index = min(attempt, len(self.retry_delays_ms)) - 1
        return f"{self.name}.retry.{self.retry_delays_ms[index]}ms"


METRICS_INGEST = WorkQueue("metrics.ingest", ("metrics.#",))
OPENAI_REQUESTS = WorkQueue("openai.requests", ("openai.request.#",))
OPENAI_JOBS = WorkQueue("openai.jobs", ("openai.job.#",))
WEBHOOK_DELIVERIES = WorkQueue("webhook.deliveries", ("webhook.#",))

WORK_QUEUES: tuple[WorkQueue, ...] = (
    METRICS_INGEST,
    OPENAI_REQUESTS,
    OPENAI_JOBS,
    WEBHOOK_DELIVERIES,
)


async def declare(channel: AbstractChannel) -> AbstractExchange:
    """Declare exchanges, work queues, delay ladders and dead-letter queues. Idempotent."""
    exchange = await channel.declare_exchange(
        EXCHANGE, aio_pika.ExchangeType.TOPIC, durable=True
    )
    await channel.declare_exchange(LIVE_EXCHANGE, aio_pika.ExchangeType.FANOUT, durable=True)
    for queue in WORK_QUEUES:
        await channel.declare_queue(
            queue.dlq, durable=True, arguments={"x-queue-type": "quorum"}
        )
        main = await channel.declare_queue(
            queue.name,
            durable=True,
            arguments={
                "x-queue-type": "quorum",
                # reject(requeue=False) and crash loops both end in the dead-letter queue.
                "x-dead-letter-exchange": "",
                "x-dead-letter-routing-key": queue.dlq,
                "x-delivery-limit": MAX_REDELIVERIES,
            },
        )
        for key in queue.bindings:
            await main.bind(exchange, routing_key=key)
        for delay_ms in sorted(set(queue.retry_delays_ms)):
            await channel.declare_queue(
                f"{queue.name}.retry.{delay_ms}ms",
                durable=True,
                arguments={
                    "x-message-ttl": delay_ms,
                    # Expired messages go back to the work queue through the default exchange.
                    "x-dead-letter-exchange": "",
                    "x-dead-letter-routing-key": queue.name,
                },
            )
    return exchange
