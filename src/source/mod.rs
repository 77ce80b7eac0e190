//! Sources: where key-value data comes from. Each gives a consistent
//! snapshot of the requested prefixes; etcd can then stream changes.

pub mod env;
pub mod etcd;
pub mod file;

use std::path::PathBuf;

use crate::cli::Backend;
use crate::error::SourceError;
use crate::settings::Settings;
use crate::store::Store;

/// A connected source.
pub enum Source {
    Etcd(Box<etcd::Etcd>),
    File(Vec<PathBuf>),
    Env,
}

impl Source {
    /// Connects to the configured backend; for etcd this proves the
    /// endpoint answers.
    pub async fn connect(settings: &Settings) -> Result<Source, SourceError> {
        Ok(match settings.backend {
            Backend::Etcd | Backend::Etcdv3 => {
                Source::Etcd(Box::new(etcd::Etcd::connect(etcd_config(settings)).await?))
            }
            Backend::File => Source::File(settings.files.clone()),
            Backend::Env => Source::Env,
        })
    }

    /// A snapshot of everything at or under `prefixes`.
    pub async fn snapshot(&mut self, prefixes: &[String]) -> Result<Store, SourceError> {
        match self {
            Source::Etcd(etcd) => etcd.snapshot(prefixes).await,
            Source::File(paths) => file::load(paths),
            Source::Env => Ok(env::load(prefixes)),
        }
    }
}

pub fn etcd_config(settings: &Settings) -> etcd::EtcdConfig {
    let mut config = etcd::EtcdConfig::new(settings.nodes.clone());
    config.username = settings.username.clone();
    config.password = settings.password.clone();
    config.tls = settings.tls.clone();
    config
}
