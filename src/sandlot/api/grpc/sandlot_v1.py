"""The sandlot.v1 gRPC door: the JSON execution request and event stream, typed.

Parsing reuses the door-neutral ``requests.parse_execution`` (so every door
rejects the same mistakes with the same field names); rendering maps each
event and Result one to one. A request that the worker rejects before running
anything (its only event is a ``rejected`` exit) is answered INVALID_ARGUMENT
like any other bad request: request errors are statuses, never events.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import dataclasses
import signal
from collections.abc import AsyncIterator
from typing import Any

from google.protobuf.message import Message

from sandlot.api.grpc.door import TASK_ID_METADATA_KEY, Context, Door
from sandlot.api.grpc.gen.sandlot.v1 import sandlot_pb2 as pb
from sandlot.api.grpc.gen.sandlot.v1 import sandlot_pb2_grpc as pb_grpc
from sandlot.broker import Control, TaskSpec
from sandlot.errors import RejectedError
from sandlot.judge.parse import parse_judge
from sandlot.models import (
    Event,
    ExitEvent,
    NoticeEvent,
    OutputEvent,
    Result,
    StageEvent,
    StageResultEvent,
    Status,
    TestResultEvent,
)
from sandlot.requests import parse_execution

DOOR = "grpc"

_STATUS = {status: pb.Status.Value("STATUS_" + status.name) for status in Status}
_STREAM = {"stdout": pb.STREAM_STDOUT, "stderr": pb.STREAM_STDERR}
# Signals a client may send to its program; the rest could only confuse the box.
_SENDABLE_SIGNALS = frozenset(
    {signal.SIGHUP, signal.SIGINT, signal.SIGQUIT, signal.SIGKILL, signal.SIGUSR1, signal.SIGUSR2, signal.SIGTERM}
)


class SandlotServicer(pb_grpc.SandlotServicer):
    def __init__(self, door: Door) -> None:
        self._door = door
        self._service = door.service

    async def Execute(self, request: pb.ExecuteRequest, context: Context) -> AsyncIterator[pb.Event]:
        async with self._door.call(context, DOOR) as current:
            spec = _spec_from(request, current.tenant)
            await context.send_initial_metadata(((TASK_ID_METADATA_KEY, spec.id),))
            spec = await self._door.submit(current, spec)
            async for event in _checked(self._door.follow(spec)):
                yield _event(event)

    async def Interact(
        self, request_iterator: AsyncIterator[pb.InteractRequest], context: Context
    ) -> AsyncIterator[pb.Event]:
        async with self._door.call(context, DOOR) as current:
            first = await anext(aiter(request_iterator), None)
            if first is None or first.WhichOneof("kind") != "start":
                raise RejectedError("start: the first message must be start", field="start")
            parsed = _spec_from(first.start, current.tenant)
            # Interactive: stdin arrives as control messages, the start's own stdin first.
            spec = dataclasses.replace(parsed, stdin=b"", interactive=True)
            await context.send_initial_metadata(((TASK_ID_METADATA_KEY, spec.id),))
            spec = await self._door.submit(current, spec)
            pump = asyncio.create_task(self._pump(spec, first.start.stdin, request_iterator))
            try:
                async for event in _checked(self._door.follow(spec)):
                    yield _event(event)
            finally:
                pump.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await pump
            mistake = None if pump.cancelled() else pump.result()
            if mistake is not None:  # a bad message after start: the task was cancelled for it
                raise mistake

    async def Judge(self, request: pb.JudgeRequest, context: Context) -> AsyncIterator[pb.Event]:
        async with self._door.call(context, DOOR) as current:
            spec = _judge_spec_from(request, current.tenant)
            await context.send_initial_metadata(((TASK_ID_METADATA_KEY, spec.id),))
            spec = await self._door.submit(current, spec)
            async for event in _checked(self._door.follow(spec)):
                yield _event(event)

    async def ListLanguages(self, request: pb.ListLanguagesRequest, context: Context) -> pb.ListLanguagesResponse:
        async with self._door.call(context, DOOR):
            versions = self._service.versions()
            return pb.ListLanguagesResponse(
                languages=[
                    pb.Language(
                        name=lang.name,
                        display_name=lang.display_name,
                        version=versions.get(lang.name, "unknown"),
                        aliases=lang.aliases,
                        extensions=lang.extensions,
                        compiled=lang.compile is not None,
                    )
                    for lang in self._service.languages.offered()
                ]
            )

    async def _pump(
        self, spec: TaskSpec, stdin: bytes, requests: AsyncIterator[pb.InteractRequest]
    ) -> RejectedError | None:
        """Forward the client's messages to the task; the end of the stream closes stdin.

        A bad message cancels the task and is returned, to be reported once its exit event is out.
        """
        broker = self._service.broker
        try:
            if stdin:
                await broker.control(spec.tenant, spec.id, Control("stdin", stdin))
            async for message in requests:
                control = _control(message)
                if control is not None:
                    await broker.control(spec.tenant, spec.id, control)
        except RejectedError as exc:
            await broker.cancel(spec.tenant, spec.id)
            return exc
        await broker.control(spec.tenant, spec.id, Control("close_stdin"))
        return None


def _control(message: pb.InteractRequest) -> Control | None:
    kind = message.WhichOneof("kind")
    if kind == "stdin":
        return Control("stdin", message.stdin)
    if kind == "close_stdin":
        return Control("close_stdin") if message.close_stdin else None
    if kind == "signal":
        if message.signal not in _SENDABLE_SIGNALS:
            allowed = ", ".join(f"{int(s)} ({s.name})" for s in sorted(_SENDABLE_SIGNALS))
            raise RejectedError(f"signal: {message.signal} is not one of {allowed}", field="signal")
        return Control("signal", signal=message.signal)
    if kind == "start":
        raise RejectedError("start: only the first message may be start", field="start")
    return None  # an empty message: nothing to do


async def _checked(events: AsyncIterator[Event]) -> AsyncIterator[Event]:
    """Pass events through, but turn a task rejected before its first event into RejectedError."""
    first = True
    async for event in events:
        if first and isinstance(event, ExitEvent) and event.result.status is Status.REJECTED:
            raise RejectedError(event.result.message or "the request was rejected")
        first = False
        yield event


# ------------------------------------------------------------------ parsing


def _fields(message: Message) -> dict[str, Any]:
    """The fields a client set (proto3 `optional` keeps unset apart from zero)."""
    return {field.name: value for field, value in message.ListFields()}


def _spec_from(request: pb.ExecuteRequest, tenant: str) -> TaskSpec:
    # Limits and everything else the engine checks are validated by the door's submit (Service.validate).
    return dataclasses.replace(parse_execution(_request_data(request), tenant=tenant), stdin=request.stdin)


def _judge_spec_from(request: pb.JudgeRequest, tenant: str) -> TaskSpec:
    """The same request ``parse_judge`` reads from JSON (so the same mistakes, named the same way)."""
    data = {k: v for k, v in _request_data(request.submission).items() if v != []}
    if request.submission.stdin:
        data["stdin"] = ""  # refused by name: a test has its own stdin
    data["tests"] = [
        {
            "name": t.name,
            "stdin": base64.b64encode(t.stdin).decode(),
            "expected_output": base64.b64encode(t.expected_output).decode() if t.HasField("expected_output") else None,
            "encoding": "base64",
            "args": list(t.args),
            "limits": _fields(t.limits) if t.HasField("limits") else None,
        }
        for t in request.tests
    ]
    if request.HasField("custom_checker"):
        data["checker"] = {"language": request.custom_checker.language, "code": request.custom_checker.code}
    elif request.checker:
        data["checker"] = request.checker
    if request.HasField("interactor"):
        data["interactor"] = {"language": request.interactor.language, "code": request.interactor.code}
    data["stop_on_first_failure"] = request.stop_on_first_failure
    return parse_judge(data, tenant=tenant)


def _request_data(request: pb.ExecuteRequest) -> dict[str, Any]:
    data: dict[str, Any] = {"language": request.language}
    if request.code:
        data["code"] = request.code
    if request.files:
        data["files"] = [
            {"name": f.name, "content": base64.b64encode(f.content).decode(), "encoding": "base64"}
            for f in request.files
        ]
    for key in ("args", "commands", "fetch_files"):
        data[key] = list(getattr(request, key))
    if request.HasField("limits"):
        data["limits"] = _fields(request.limits)
    if request.HasField("compile_limits"):
        data["compile_limits"] = _fields(request.compile_limits)
    if request.session_id:
        data["session_id"] = request.session_id
    if request.isolation:
        data["isolation"] = request.isolation
    if request.environment:
        data["environment"] = request.environment
    return data


# ---------------------------------------------------------------- rendering


def _result(result: Result) -> pb.Result:
    return pb.Result(
        status=_STATUS[result.status],
        exit_code=result.exit_code,
        signal=result.signal,
        stdout=result.stdout,
        stderr=result.stderr,
        compile_output=result.compile_output,
        wall_time=result.wall_time,
        cpu_time=result.cpu_time,
        memory_peak=result.memory_peak,
        truncated=result.truncated,
        language=result.language,
        message=result.message,
    )


def _event(event: Event) -> pb.Event:
    if isinstance(event, StageEvent):
        return pb.Event(seq=event.seq, time=event.time, stage=pb.Stage(name=event.stage))
    if isinstance(event, OutputEvent):
        output = pb.Output(stream=_STREAM[event.stream], data=event.data, stage=event.stage)
        return pb.Event(seq=event.seq, time=event.time, output=output)
    if isinstance(event, StageResultEvent):
        stage_result = pb.StageResult(stage=event.stage, result=_result(event.result))
        return pb.Event(seq=event.seq, time=event.time, stage_result=stage_result)
    if isinstance(event, NoticeEvent):
        return pb.Event(seq=event.seq, time=event.time, notice=pb.Notice(code=event.code, message=event.message))
    if isinstance(event, TestResultEvent):
        test_result = pb.TestResult(
            test=event.test, name=event.name, verdict=event.verdict, result=_result(event.result), comment=event.comment
        )
        return pb.Event(seq=event.seq, time=event.time, test_result=test_result)
    exit_ = pb.Exit(
        result=_result(event.result),
        stages=[pb.StageResult(stage=name, result=_result(r)) for name, r in event.stages],
        files=[pb.File(name=name, content=content) for name, content in event.files],
        value=event.value,  # None (a stateful session's statement cell, any other run) leaves it unset
    )
    return pb.Event(seq=event.seq, time=event.time, exit=exit_)
