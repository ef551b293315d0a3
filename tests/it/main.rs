//! tidegate's integration tests: one binary (one link step), real processes, real clients.
//! See docs/testing.md for what each module covers and how to run one test.

mod cli;
mod layering;
mod store;
mod support;
