"""Throughput and latency of the ZeroMQ output on loopback.

    .venv/bin/python -m bench.perf.publish [--messages 5000] [--acks 2000]

1. PUB→SUB: decision + 256×256 uint8 map (from a float32 model map) published as fast as the caller
   can, a subscriber in another process decoding everything. Reports the caller's cost per publish,
   the rate the subscriber received at, and what it lost (counted from sequence numbers).
2. Reliable channel: a bridge process (ReliableClient) acks every decision as soon as it arrives.
   Ack round trip (publisher send → ACK processed, measured by the publisher's I/O thread) one
   decision at a time, p50/p99; then decisions/s with the channel pipelined (publish N, wait until
   all are acknowledged).
"""

import argparse
import json
import multiprocessing
import platform
import time

import numpy as np

from tests.integration.bridge_parts import free_port
from edge.transport import wire
from edge.transport.publisher import PublishConfig
from edge.transport.publisher import Publisher


def _decision(frame_id: int) -> wire.Decision:
    return wire.Decision("cam1", frame_id, "ok", "", 0.2, 0.5, 0, 1_000, 2_000_000, 2.0, "f" * 64, "v1")


def _subscriber(endpoint: str, expected: int, ready, result) -> None:
    from edge.transport.subscriber import Subscriber

    with Subscriber(endpoint, cameras=["cam1"]) as sub:
        while not isinstance(sub.recv(timeout=10), wire.Heartbeat):
            pass
        ready.send(True)
        decisions = maps = 0
        start = None
        last = time.perf_counter()
        while True:
            message = sub.recv(timeout=2)
            if message is None:
                break
            last = time.perf_counter()
            start = start or last
            if isinstance(message, wire.Decision):
                decisions += 1
            elif isinstance(message, wire.MapMessage):
                maps += 1
            elif isinstance(message, wire.Heartbeat) and message.state == "stopping":
                break
        result.send({"decisions": decisions, "maps": maps, "seconds": last - (start or last),
                     "lost_decisions": sub.lost[("cam1", "decision")], "lost_maps": sub.lost[("cam1", "map")]})


def _bridge(endpoint: str, expected: int) -> None:
    from edge.transport.subscriber import ReliableClient

    with ReliableClient(endpoint) as bridge:
        received = 0
        while received < expected:
            decision = bridge.recv(timeout=10)
            if decision is None:
                return
            bridge.ack(decision)
            received += 1
        time.sleep(0.5)  # let the last ACKs leave


def _handshake(publisher, ready) -> None:
    end = time.monotonic() + 10
    while not ready.poll(0.02):
        publisher.heartbeat()
        if time.monotonic() > end:
            raise SystemExit("subscriber never saw a heartbeat")
    ready.recv()


def bench_pubsub(messages: int) -> dict:
    publisher = Publisher("cam1", PublishConfig(endpoint=f"tcp://127.0.0.1:{free_port()}", map_size=(256, 256)))
    ready_recv, ready_send = multiprocessing.Pipe(duplex=False)
    result_recv, result_send = multiprocessing.Pipe(duplex=False)
    child = multiprocessing.Process(target=_subscriber, args=(publisher.endpoint, messages, ready_send, result_send))
    child.start()
    _handshake(publisher, ready_recv)
    anomaly_map = np.random.default_rng(0).random((256, 256), dtype=np.float32)
    start = time.perf_counter()
    for frame_id in range(1, messages + 1):
        publisher.publish_decision(_decision(frame_id), anomaly_map)
    publish_s = time.perf_counter() - start
    publisher.close()
    outcome = result_recv.recv()
    child.join()
    return {"messages": messages, "publish_us_per_decision_and_map": publish_s / messages * 1e6,
            "caller_rate_per_s": messages / publish_s,
            "received_decisions_per_s": outcome["decisions"] / outcome["seconds"] if outcome["seconds"] else 0.0,
            "received_MiB_per_s": outcome["maps"] * 65536 / 2**20 / outcome["seconds"] if outcome["seconds"] else 0.0,
            **outcome}


def bench_reliable(acks: int) -> dict:
    ack_rtts_ns = []
    publisher = Publisher("cam1", PublishConfig(endpoint=f"tcp://127.0.0.1:{free_port()}",
                                                reliable_endpoint=f"tcp://127.0.0.1:{free_port()}",
                                                reliable_capacity=max(1000, acks)), on_ack_rtt_ns=ack_rtts_ns.append)
    child = multiprocessing.Process(target=_bridge, args=(publisher.reliable_endpoint, 1 + 2 * acks))
    child.start()
    publisher.publish_decision(_decision(0))  # warm-up: wait until the bridge is connected and acking
    while publisher.reliable_stats()["acked"] < 1:
        time.sleep(0.001)
    ack_rtts_ns.clear()
    for frame_id in range(1, acks + 1):  # one at a time: the round trip without queueing
        publisher.publish_decision(_decision(frame_id))
        while publisher.reliable_stats()["acked"] < frame_id + 1:
            time.sleep(0)
    rtts = np.array(ack_rtts_ns, dtype=np.float64) / 1e3
    start = time.perf_counter()
    for frame_id in range(acks + 1, 2 * acks + 1):  # pipelined: how many the channel sustains
        publisher.publish_decision(_decision(frame_id))
    while publisher.reliable_stats()["acked"] < 2 * acks + 1:
        time.sleep(0.0005)
    pipelined_s = time.perf_counter() - start
    stats = publisher.reliable_stats()
    publisher.close()
    child.join()
    return {"acks": acks, "rtt_us_p50": float(np.percentile(rtts, 50)), "rtt_us_p99": float(np.percentile(rtts, 99)),
            "rtt_us_max": float(rtts.max()), "pipelined_decisions_per_s": acks / pipelined_s,
            "resent": stats["resent"], "evicted": stats["evicted"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--messages", type=int, default=5000)
    parser.add_argument("--acks", type=int, default=2000)
    args = parser.parse_args()
    import zmq

    print(json.dumps({"machine": f"{platform.machine()} {platform.processor() or ''} "
                                 f"{multiprocessing.cpu_count()} cores", "python": platform.python_version(),
                      "pyzmq": zmq.__version__, "libzmq": zmq.zmq_version()}))
    print(json.dumps({"pubsub": bench_pubsub(args.messages)}))
    print(json.dumps({"reliable": bench_reliable(args.acks)}))


if __name__ == "__main__":
    main()
