//! Sources: where key-value data comes from (etcd, data files, environment).

pub mod env;
pub mod file;
