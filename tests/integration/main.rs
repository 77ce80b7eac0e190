//! confera's integration tests: the built binary against real etcd, BIRD,
//! files and signals. One binary, one module per topic.

mod support;

mod bird_e2e;
mod bird_socket;
mod corpus;
mod crash;
mod drift;
mod etcd_keys;
mod example;
mod faults;
mod fixtures_selftest;
mod least_privilege;
mod migration;
mod onetime;
mod operations;
mod security;
mod watch;
