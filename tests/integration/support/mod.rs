//! Shared fixtures: real processes on loopback, stopped by pid on Drop.
//!
//! Every fixture owns its temp dir and its child processes; nothing binds a
//! fixed port or writes outside its temp dir, so tests run in parallel.

// Each test module uses a different subset of the fixtures.
#![allow(dead_code)]

pub mod bird;
pub mod cmd;
pub mod confdir;
pub mod daemon;
pub mod etcd;
pub mod manifest;
pub mod netns;
pub mod relay;
pub mod user;
