"""A bare grpc.aio ``OptimizerService`` that does no work: the transport's ceiling, for comparison.

    python benchmarks/bare_server.py [--listen 127.0.0.1:0]

Answers ``RegisterJob``, ``Suggest`` (a fixed suggestion with a fresh run id) and ``CompleteRun``
(the run echoed back as completed) with the same messages as the real server, without validation,
storage or policy. Logs ``serving on HOST:PORT`` on stderr once bound (like ``powerbandit serve``)
and stops on SIGTERM/SIGINT. Other RPCs answer UNIMPLEMENTED.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys
import uuid
from pathlib import Path
from typing import Any

import grpc

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from powerbandit.v1 import optimizer_pb2 as pb  # noqa: E402
from powerbandit.v1 import optimizer_pb2_grpc as pb_grpc  # noqa: E402


class BareServicer(pb_grpc.OptimizerServiceServicer):
    """Same messages as the real service, no work behind them."""

    async def RegisterJob(self, request: pb.RegisterJobRequest, context: Any) -> pb.RegisterJobResponse:
        return pb.RegisterJobResponse(spec=request.spec, created=True)

    async def Suggest(self, request: pb.SuggestRequest, context: Any) -> pb.SuggestResponse:
        return pb.SuggestResponse(
            run_id=uuid.uuid4().hex,
            batch_size=64,
            power_limit_w=250.0,
            phase=pb.PHASE_EXPLOIT,
            explanation="bare server: fixed answer",
            max_cost=float("inf"),
            max_epochs=20,
            lease_s=300.0,
            max_power_w=request.gpu.max_power_limit_w * max(request.gpu.count, 1),
            eta=0.5,
        )

    async def CompleteRun(self, request: pb.CompleteRunRequest, context: Any) -> pb.CompleteRunResponse:
        return pb.CompleteRunResponse(
            run=pb.Run(
                run_id=request.run_id,
                job_id=request.job_id,
                state=pb.RUN_STATE_COMPLETED,
                batch_size=64,
                power_limit_w=250.0,
                energy_j=request.energy_j,
                time_s=request.time_s,
                epochs=request.epochs,
                reached_target=request.reached_target,
            )
        )


async def serve(listen: str) -> None:
    """Serve until SIGTERM or SIGINT."""
    server = grpc.aio.server()
    pb_grpc.add_OptimizerServiceServicer_to_server(BareServicer(), server)
    port = server.add_insecure_port(listen)
    if port == 0:
        raise OSError(f"cannot listen on {listen}")
    await server.start()
    host = listen.rsplit(":", 1)[0]
    print(f"bare server: serving on {host}:{port}", file=sys.stderr, flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await server.stop(1.0)


def main() -> None:
    """Command-line entry point."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--listen", default="127.0.0.1:0", help="host:port (port 0: any free port)")
    asyncio.run(serve(parser.parse_args().listen))


if __name__ == "__main__":
    main()
