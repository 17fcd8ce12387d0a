"""Judge mode: many tests per submission with one compile, checkers, interactors and exact verdicts.

Theory of operation
-------------------
A judge request is an ordinary task (``TaskSpec``) with ``judge`` set: the JSON of a
``model.JudgeSpec`` (its tests, checker, interactor, stop_on_first_failure). So it
travels like any task (memory or Redis broker), is admitted against the caller's key
like any task, and its events reach every door the same way. The modules:

- ``model``: verdicts, the request's frozen dataclasses, the summary (pure);
- ``parse``: a door's JSON -> TaskSpec (pure; doors import this and ``model`` only);
- ``validate``: the bounds (``judge_max_tests``, ``judge_max_test_bytes``), the
  checker's and interactor's languages, each test's limits: run by the door (4xx)
  and again by the worker;
- ``checkers``: built-in comparisons and testlib's exit-code convention (pure);
- ``flow``: what a worker runs (``Judge.run``): one compile, tests in fresh boxes in
  parallel within a share of the pool, a ``TestResultEvent`` per test as it finishes,
  then one ExitEvent whose message is the summary;
- ``interact``: an interactive test, two boxes cross-connected through the host.

The doors answer with ``model.summarize`` over the test events: the first failing
test's verdict (by test order), passed/total, the largest CPU time and memory.
"""
