//! End-to-end suite; see tests/tests.
