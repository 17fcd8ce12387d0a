"""The error hierarchy and ``classify``: one verdict per class, and each door's table covers every kind.

Pure logic: no sandbox, no server. The doors' own answers (status codes, bodies, gRPC codes) are
checked end to end in test_http_errors, test_grpc, test_judge0 and test_mcp.
"""

from __future__ import annotations

import grpc
import pytest

from sandlot.api.common.errors import ANSWERED, INTERNAL_MESSAGE, Failure, Kind, classify
from sandlot.api.grpc.door import STATUS as GRPC_STATUS
from sandlot.api.grpc.door import status_for
from sandlot.api.http.errors import STATUS as HTTP_STATUS
from sandlot.api.http.errors import ApiError, as_api_error
from sandlot.api.judge0.errors import QUEUE_FULL, as_judge0_error
from sandlot.api.judge0.errors import STATUS as JUDGE0_STATUS
from sandlot.api.judge0.render import InvalidFields
from sandlot.api.judge0.submission import Judge0Invalid
from sandlot.api.mcp.tools import _failure
from sandlot.config import LimitRequest
from sandlot.errors import (
    UNAVAILABLE_RETRY_AFTER_S,
    AtCapacity,
    AuthError,
    BrokerUnavailable,
    ConfigError,
    EnvironmentBuildFailed,
    EnvironmentFetchFailed,
    EnvironmentLimitExceeded,
    EnvironmentNotFound,
    FileBusy,
    FileMissing,
    ImageRejected,
    IsolationUnavailable,
    JudgeFailure,
    NoWorker,
    RejectedError,
    SandboxError,
    SandlotError,
    SessionFilesUnavailable,
    SessionNotFound,
    SessionWorkerGone,
    SpecRejected,
    Superseded,
    UidInUse,
    Unavailable,
)
from sandlot.sandbox.hostfs import validate_relative_path

# One row per class of the hierarchy (AuthError and AtCapacity once per variant): the exception, then the
# Failure classify must make of it.
CASES: list[tuple[BaseException, Failure]] = [
    (ImageRejected("layer 2: leaves the image"), Failure(Kind.REJECTED, "rejected", "layer 2: leaves the image")),
    (
        EnvironmentLimitExceeded("over max_files (10)", limit="max_files"),
        Failure(Kind.REJECTED, "rejected", "over max_files (10)"),
    ),
    (SpecRejected("apt: a bad name"), Failure(Kind.REJECTED, "rejected", "apt: a bad name")),
    (
        EnvironmentNotFound("datasci"),
        Failure(Kind.NOT_FOUND, "not_found", "no environment named 'datasci' (see: sandlot env list)", "environment"),
    ),
    (EnvironmentBuildFailed("pip failed"), Failure(Kind.INTERNAL, "internal_error", "pip failed")),
    (EnvironmentFetchFailed("digest mismatch"), Failure(Kind.INTERNAL, "internal_error", "digest mismatch")),
    (
        RejectedError("limits.time_limit: must be positive", field="limits.time_limit"),
        Failure(Kind.REJECTED, "rejected", "limits.time_limit: must be positive", "limits.time_limit"),
    ),
    (
        SessionNotFound("session 'x' not found or expired", field="session_id"),
        Failure(Kind.NOT_FOUND, "not_found", "session 'x' not found or expired", "session_id"),
    ),
    (FileMissing("a.txt: no such file"), Failure(Kind.NOT_FOUND, "not_found", "a.txt: no such file")),
    (
        FileBusy("files.name: 'a' was recreated by the running program; retry"),
        Failure(Kind.CONFLICT, "conflict", "files.name: 'a' was recreated by the running program; retry"),
    ),
    (
        SessionFilesUnavailable("not in distributed mode", field="session_id"),
        Failure(Kind.REJECTED, "rejected", "not in distributed mode", "session_id"),
    ),
    (AuthError(401, "unauthorized", "key?"), Failure(Kind.UNAUTHORIZED, "unauthorized", "key?")),
    (AuthError(403, "forbidden", "unknown API key"), Failure(Kind.FORBIDDEN, "forbidden", "unknown API key")),
    (
        AuthError(429, "rate_limited", "too often", retry_after_s=2.5),
        Failure(Kind.RATE_LIMITED, "rate_limited", "too often", retry_after_s=2.5),
    ),
    (
        AuthError(429, "too_many_executions", "2 in flight", retry_after_s=1.0),
        Failure(Kind.RATE_LIMITED, "too_many_executions", "2 in flight", retry_after_s=1.0),
    ),
    (AtCapacity("pool", "9 waiting"), Failure(Kind.BUSY, "pool_full", "9 waiting", retry_after_s=1.0)),
    (
        AtCapacity("queue", "9 queued", retry_after_s=30.0),
        Failure(Kind.BUSY, "queue_full", "9 queued", retry_after_s=30.0),
    ),
    (
        Unavailable("not now"),
        Failure(Kind.UNAVAILABLE, "unavailable", "not now", retry_after_s=UNAVAILABLE_RETRY_AFTER_S),
    ),
    (
        BrokerUnavailable("redis is unreachable"),
        Failure(Kind.UNAVAILABLE, "unavailable", "redis is unreachable", retry_after_s=UNAVAILABLE_RETRY_AFTER_S),
    ),
    (
        SessionWorkerGone("the worker holding session 'x' did not answer"),
        Failure(
            Kind.UNAVAILABLE,
            "unavailable",
            "the worker holding session 'x' did not answer",
            retry_after_s=UNAVAILABLE_RETRY_AFTER_S,
        ),
    ),
    (
        NoWorker("gvisor"),
        Failure(Kind.UNAVAILABLE, "unavailable", str(NoWorker("gvisor")), retry_after_s=UNAVAILABLE_RETRY_AFTER_S),
    ),
    (
        IsolationUnavailable("gvisor", "runsc not found"),
        Failure(
            Kind.UNAVAILABLE,
            "unavailable",
            "isolation 'gvisor' is unavailable here: runsc not found",
            retry_after_s=UNAVAILABLE_RETRY_AFTER_S,
        ),
    ),
    (SandboxError("cgroup: cannot read x"), Failure(Kind.INTERNAL, "internal_error", "cgroup: cannot read x")),
    (UidInUse("uid 5 is held"), Failure(Kind.INTERNAL, "internal_error", "uid 5 is held")),
    (JudgeFailure("the checker failed"), Failure(Kind.INTERNAL, "internal_error", "the checker failed")),
    (ConfigError("no bwrap"), Failure(Kind.INTERNAL, "internal_error", "no bwrap")),
    (Superseded("task moved on"), Failure(Kind.INTERNAL, "internal_error", "task moved on")),
    (SandlotError("ours"), Failure(Kind.INTERNAL, "internal_error", "ours")),
    (ValueError("a bug's detail"), Failure(Kind.INTERNAL, "internal_error", INTERNAL_MESSAGE)),
    (
        Judge0Invalid({"source_code": ["can't be blank"]}),
        Failure(Kind.REJECTED, "rejected", "source_code: can't be blank"),
    ),
    (InvalidFields(["nope"]), Failure(Kind.REJECTED, "rejected", "invalid fields: [nope]", "fields")),
]


@pytest.mark.parametrize(("exc", "expected"), CASES, ids=lambda v: type(v).__name__)
def test_classify(exc: BaseException, expected: Failure) -> None:
    assert classify(exc) == expected


def test_every_class_of_the_hierarchy_has_a_case() -> None:
    def subclasses(cls: type[BaseException]) -> set[type[BaseException]]:
        found = set(cls.__subclasses__())
        return found.union(*(subclasses(sub) for sub in found))

    covered = {type(exc) for exc, _ in CASES}
    missing = subclasses(SandlotError) - covered
    assert not missing, f"classify has no case for {sorted(c.__name__ for c in missing)}"


def test_a_new_subclass_is_classified_as_its_parent_with_no_door_edited() -> None:
    class QuotaSpent(AtCapacity):
        pass

    assert classify(QuotaSpent("queue", "spent")).kind is Kind.BUSY
    assert as_api_error(QuotaSpent("queue", "spent")).status == 429


def test_answered_are_exactly_the_classes_that_are_not_internal() -> None:
    for exc, failure in CASES:
        assert isinstance(exc, ANSWERED) == (failure.kind is not Kind.INTERNAL), exc


def test_an_empty_unavailable_still_says_something() -> None:
    assert classify(Unavailable()).message


def test_for_field_keeps_the_class_and_the_message() -> None:
    moved = FileMissing("a.txt: no such file", field="files.name").for_field("path")
    assert (type(moved), str(moved), moved.field) == (FileMissing, "a.txt: no such file", "path")
    busy = FileBusy.at("files.name", "'a' was recreated by the running program; retry").for_field("path")
    assert (type(busy), str(busy), busy.field) == (
        FileBusy,
        "path: 'a' was recreated by the running program; retry",
        "path",
    )
    limit = RejectedError.at("limits.time_limit", "1000 exceeds the maximum of 60 s", separator=" ").for_field(
        "time_limit"
    )
    assert (str(limit), limit.field) == ("time_limit 1000 exceeds the maximum of 60 s", "time_limit")


# ------------------------------------------------------------------ each door's table


def test_every_door_table_covers_every_kind() -> None:
    assert set(HTTP_STATUS) == set(Kind)
    assert set(GRPC_STATUS) == set(Kind)
    assert set(JUDGE0_STATUS) == set(Kind) - {Kind.INTERNAL}  # ours: the app's 500 answers it


def test_http_renders_each_kind() -> None:
    rendered = {type(exc).__name__ + str(getattr(exc, "status", "")): as_api_error(exc) for exc, _ in CASES}
    assert (rendered["SessionNotFound"].status, rendered["SessionNotFound"].code) == (404, "not_found")
    assert (rendered["FileBusy"].status, rendered["FileBusy"].code) == (409, "conflict")
    assert (rendered["AuthError429"].status, rendered["AuthError429"].code) == (429, "too_many_executions")
    assert rendered["AtCapacity"].headers() == {"Retry-After": "30"}
    assert rendered["IsolationUnavailable"].status == 503
    assert rendered["AuthError401"].headers() == {"WWW-Authenticate": "Bearer"}
    internal = rendered["SandboxError"]
    assert (internal.status, internal.code, internal.message) == (500, "internal_error", INTERNAL_MESSAGE)
    given = ApiError(413, "payload_too_large", "too big")
    assert as_api_error(given) is given


def test_grpc_status_of_each_kind() -> None:
    assert status_for(SessionNotFound("x")) is grpc.StatusCode.NOT_FOUND
    assert status_for(RejectedError("x")) is grpc.StatusCode.INVALID_ARGUMENT
    assert status_for(AuthError(401, "unauthorized", "x")) is grpc.StatusCode.UNAUTHENTICATED
    assert status_for(AuthError(403, "forbidden", "x")) is grpc.StatusCode.PERMISSION_DENIED
    assert status_for(AuthError(429, "rate_limited", "x")) is grpc.StatusCode.RESOURCE_EXHAUSTED
    assert status_for(AtCapacity("pool", "x")) is grpc.StatusCode.RESOURCE_EXHAUSTED
    assert status_for(NoWorker("jail")) is grpc.StatusCode.UNAVAILABLE
    assert status_for(SandboxError("x")) is grpc.StatusCode.INTERNAL


def test_judge0_answers_in_its_own_words() -> None:
    full = as_judge0_error(AtCapacity("pool", "9 waiting for a box"))
    assert full is not None
    assert (full.status, full.body, full.headers) == (503, {"error": QUEUE_FULL}, {"Retry-After": "1"})
    invalid = as_judge0_error(Judge0Invalid({"language_id": ["can't be blank"]}))
    assert invalid is not None and (invalid.status, invalid.body) == (422, {"language_id": ["can't be blank"]})
    missing = as_judge0_error(SessionNotFound("gone"))
    assert missing is not None and (missing.status, missing.body) == (400, {"error": "gone"})
    down = as_judge0_error(BrokerUnavailable("redis is unreachable"))
    assert down is not None and down.status == 503 and down.headers["Retry-After"] == "5"
    assert as_judge0_error(SandboxError("x")) is None  # the app's handler: a 500 without detail


def test_mcp_codes_and_messages() -> None:
    assert _failure(FileMissing("a: no such file"), "read_file") == ("not_found", "a: no such file")
    assert _failure(FileBusy("a: retry"), "write_file") == ("rejected", "a: retry")
    assert _failure(AtCapacity("queue", "full", retry_after_s=2.2), "run_code") == ("busy", "full; retry in 3 s")
    limited = AuthError(429, "too_many_executions", "2 in flight", retry_after_s=1.0)
    assert _failure(limited, "run_code") == ("too_many_executions", "2 in flight; retry in 1 s")
    assert _failure(NoWorker("jail"), "run_code") == ("unavailable", str(NoWorker("jail")))
    assert _failure(SandboxError("detail"), "run_code") == ("internal_error", "internal error (the server logged it)")


def test_a_door_renames_the_file_layers_field_without_reading_the_message() -> None:
    with pytest.raises(RejectedError) as refused:
        validate_relative_path("../escape", field="files.name")
    moved = refused.value.for_field("path")
    assert (str(moved), moved.field) == ("path: path must stay inside the workdir: '../escape'", "path")
    with pytest.raises(RejectedError) as not_a_number:
        LimitRequest.from_mapping({"time_limit": "fast"})
    assert str(not_a_number.value.for_field("time_limit")) == "time_limit: must be a number"
