//! confera's integration tests: the built binary against real etcd, BIRD,
//! files and signals. One binary, one module per topic.

mod support;

mod audit;
mod bird_e2e;
mod bird_socket;
mod calico;
mod cli;
mod confd_compat;
mod corpus;
mod crash;
mod deploy;
mod drift;
mod dry_run;
mod etcd_keys;
mod example;
mod exec;
mod fabric_lab;
mod faults;
mod fixtures_selftest;
mod history;
mod injection;
mod isolation;
mod least_privilege;
mod logs;
mod migration;
mod onetime;
mod operations;
mod pid_files;
mod rejected;
mod secret_fields;
mod security;
mod symlinks;
mod walkthrough;
mod watch;
