//! Tests of the state document and the planner.
