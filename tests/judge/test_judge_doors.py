"""Judge mode through the gRPC door (sandlot.v1 Judge, server-streaming) and the MCP door (the judge tool)."""

from __future__ import annotations

import asyncio
import json

import grpc
import pytest
from websockets.asyncio.client import connect

from sandlot.api.grpc.gen.sandlot.v1 import sandlot_pb2 as pb
from sandlot.api.http.app import create_app
from sandlot.broker.redis import RedisBroker
from sandlot.config import ServerSettings
from sandlot.service import Service
from tests.api.grpc.test_grpc import grpc_serving
from tests.api.http.test_http import asgi_client, running_service
from tests.api.http.test_http_live import base_fixture, service_fixture
from tests.api.mcp.test_mcp import _error, _stdio, _structured
from tests.judge import programs
from tests.nodes import RedisServer

__all__ = ["base_fixture", "service_fixture"]  # fixtures (base: a uvicorn server on a service), used by name
_BOUND_S = 300.0  # turns a hang into a failure; never a measurement


async def test_grpc_judge_streams_a_test_result_per_test_then_exit() -> None:
    async with grpc_serving(ServerSettings(gvisor_pool_size=0, pool_size=2)) as env:
        tests = [pb.JudgeTest(stdin=f"{i} 7\n".encode(), expected_output=f"{i + 7}\n".encode()) for i in range(1, 9)]
        request = pb.JudgeRequest(
            submission=pb.ExecuteRequest(language="cpp", code=programs.CPP_SUM_WRONG), tests=tests, checker="tokens"
        )
        async with asyncio.timeout(_BOUND_S):
            events = [event async for event in env.sandlot.Judge(request)]
        kinds = [event.WhichOneof("kind") for event in events]
        assert kinds.count("stage") == 1 and kinds.count("test_result") == 8 and kinds[-1] == "exit"
        verdicts = {e.test_result.test: e.test_result.verdict for e in events if e.WhichOneof("kind") == "test_result"}
        assert verdicts == {i: "wrong_answer" if i == 7 else "accepted" for i in range(1, 9)}
        assert events[-1].exit.result.message == "wrong_answer: 7/8 tests passed (first failure: test 7)"
        bad = pb.JudgeRequest(submission=pb.ExecuteRequest(language="python", code="1", args=["x"]), tests=tests)
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            async with asyncio.timeout(_BOUND_S):
                _ = [event async for event in env.sandlot.Judge(bad)]
        assert caught.value.code() is grpc.StatusCode.INVALID_ARGUMENT
        assert "args: not a judge request's field" in str(caught.value.details())


@pytest.mark.root
async def test_mcp_judge_tool() -> None:
    async with _stdio() as client:
        tests = [{"stdin": f"{i} {i}\n", "expected_output": f"{2 * i}\n"} for i in range(3)]
        arguments = {"language": "python", "code": programs.PY_SUM, "tests": tests, "time_limit": 2}
        answer = _structured(await client.call_tool("judge", arguments))
        assert (answer["verdict"], answer["passed"], answer["total"]) == ("accepted", 3, 3)
        assert [t["verdict"] for t in answer["tests"]] == ["accepted"] * 3
        message = await _error(client, "judge", {"language": "python", "code": "1", "tests": []})
        assert "tests" in message


async def test_judging_through_the_redis_broker(fresh_redis: RedisServer) -> None:
    """The distributed mode's broker carries the judge spec to the worker and each test's event back."""
    broker = RedisBroker(fresh_redis.url, max_queued=64)
    async with running_service(broker=broker) as service, asgi_client(create_app(service)) as client:
        tests = [{"stdin": f"{i} 7\n", "expected_output": f"{i + 7}\n"} for i in range(1, 9)]
        body = {"language": "cpp", "code": programs.CPP_SUM_WRONG, "tests": tests}
        response = await client.post("/api/v1/judge", json=body, timeout=_BOUND_S)
        assert response.status_code == 200, response.text
        answer = response.json()
        assert (answer["verdict"], answer["passed"], answer["first_failure"]) == ("wrong_answer", 7, 7)


async def test_websocket_judge_sends_a_test_result_per_test(service: Service, base: str) -> None:
    tests = [{"stdin": f"{i} {i}\n", "expected_output": f"{2 * i}\n"} for i in range(4)]
    async with connect(f"ws://{base}/api/v1/ws") as ws:
        await ws.send(json.dumps({"type": "judge", "language": "python", "code": programs.PY_SUM, "tests": tests}))
        messages = []
        async with asyncio.timeout(_BOUND_S):
            while not messages or messages[-1]["type"] != "exit":
                messages.append(json.loads(await ws.recv()))
    tested = [m for m in messages if m["type"] == "test_result"]
    assert sorted(m["test"] for m in tested) == [1, 2, 3, 4] and {m["verdict"] for m in tested} == {"accepted"}
    assert messages[-1]["result"]["message"] == "accepted: 4/4 tests passed"
