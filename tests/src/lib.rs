//! End-to-end suites of checkpoint; the tests live in `tests/`.
