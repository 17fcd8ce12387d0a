"""The Judge0-compatible door: submissions, batches, callbacks and Judge0's status model."""
