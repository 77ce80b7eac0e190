//! confera's integration tests: the built binary against real etcd, BIRD,
//! files and signals. One binary, one module per topic.

mod support;

mod audit;
mod bird_e2e;
mod bird_socket;
mod calico;
mod confd_compat;
mod corpus;
mod crash;
mod deploy;
mod drift;
mod example;
mod fabric_lab;
mod faults;
mod fixtures_selftest;
mod injection;
mod migration;
mod onetime;
mod operations;
mod pid_files;
mod security;
mod symlinks;
mod watch;
