//! confera's integration tests: the built binary against real etcd, BIRD,
//! files and signals. One binary, one module per topic.

mod support;

mod bird_socket;
mod fixtures_selftest;
mod corpus;
mod onetime;
mod bird_e2e;
mod example;
mod drift;
mod watch;
mod migration;
mod operations;
mod crash;
mod faults;
mod security;
