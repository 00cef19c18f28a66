"""A slow Kafka makes the ALS stream wait (stop reading) instead of growing memory; nothing is lost."""

from __future__ import annotations

import asyncio
import os
import signal
from pathlib import Path

import grpc
from envoy.data.accesslog.v3 import accesslog_pb2
from envoy.service.accesslog.v3 import als_pb2

from remixer.kit.shipping.settings import KafkaSettings, ShippingSettings
from tests.realparts.kafka import TansuBroker, consume
from tests.telemetry.harness import running_telemetry

METHOD = "/envoy.service.accesslog.v3.AccessLogService/StreamAccessLogs"
MESSAGES, PER_MESSAGE = 800, 60


def batch(index: int) -> bytes:
    msg = als_pb2.StreamAccessLogsMessage()
    if index == 0:
        msg.identifier.log_name = "http_envoy_accesslog"
        msg.identifier.node.id = "gateway"
    for i in range(PER_MESSAGE):
        e = accesslog_pb2.HTTPAccessLogEntry()
        e.common_properties.upstream_cluster = "outbound|80||api.shop.svc.cluster.local"
        e.request.request_id = f"{index}-{i}"
        e.request.path = "/" + "p" * 200
        e.response.response_code.value = 200
        msg.http_logs.log_entry.append(e)
    return msg.SerializeToString()


async def test_a_stalled_broker_stops_the_stream_not_the_memory(
    tmp_path: Path, kafka_broker: TansuBroker
) -> None:
    queue_bound = 300
    shipping = ShippingSettings(
        queue_max_records=queue_bound,
        kafka=KafkaSettings(
            enabled=True, bootstrap_servers=[kafka_broker.bootstrap], send_timeout_s=60, batch_max_records=200
        ),
    )
    async with running_telemetry(tmp_path, shipping=shipping) as tel:
        received = "remixer_telemetry_entries_received_total"
        sink = tel.hub.sink("access-logs")
        written = 0
        async with grpc.aio.insecure_channel(tel.target) as channel:
            rpc = channel.stream_unary(METHOD, request_serializer=None, response_deserializer=None)()
            await rpc.write(batch(0))
            written = 1
            await tel.wait_for(
                lambda: tel.value("remixer_shipping_records_sent_total", {"stream": "access-logs"}) > 0
            )
            assert kafka_broker.process is not None
            os.kill(kafka_broker.process.pid, signal.SIGSTOP)  # the broker hangs: sends never complete
            try:

                async def writer() -> None:
                    nonlocal written
                    for index in range(1, MESSAGES):
                        await rpc.write(batch(index))
                        written += 1

                task = asyncio.create_task(writer())
                peak = 0
                for _ in range(30):
                    await asyncio.sleep(0.1)
                    peak = max(peak, len(sink.queue))
                # The servicer waits on the full queue, so it stopped reading: entries held in memory stay
                # bounded by the queue (plus the message being queued) and one in-flight Kafka batch.
                assert peak <= queue_bound + PER_MESSAGE
                shipped_before_stall = PER_MESSAGE
                in_flight = 200
                bound = shipped_before_stall + in_flight + queue_bound + 2 * PER_MESSAGE
                assert tel.value(received, {"kind": "http"}) <= bound
                assert not task.done()  # and gRPC flow control reached the client
            finally:
                os.kill(kafka_broker.process.pid, signal.SIGCONT)
            await asyncio.wait_for(task, 60)
            await rpc.done_writing()
            await rpc
        await tel.wait_for(lambda: tel.value(received, {"kind": "http"}) == MESSAGES * PER_MESSAGE, within=60)
        ids = await consume(
            kafka_broker.bootstrap, "remixer-access-logs", until=lambda r: len(r) >= MESSAGES * PER_MESSAGE
        )
        assert len({v for _, v in ids}) >= MESSAGES * PER_MESSAGE
