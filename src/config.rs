//! The loaded configuration: every resource unit parsed from `conf.d/` and
//! every template compiled. Loading never touches a backend or a destination.

use std::path::PathBuf;

use crate::error::ConfigError;
use crate::pipeline::stage;
use crate::render::Renderer;
use crate::resource::{self, Layout, Unit};
use crate::settings::Settings;

/// The loaded configuration: every unit and the compiled templates.
pub struct Config {
    pub units: Vec<Unit>,
    pub renderer: std::sync::Arc<Renderer>,
    /// Each unit's first destination: whoever owns it may run the daemon a
    /// `process_name` names.
    pub daemon_files: std::sync::Arc<DaemonFiles>,
}

/// Unit name → its first destination and whether that may be a trusted link.
pub type DaemonFiles = std::collections::HashMap<String, (std::path::PathBuf, bool)>;

impl Config {
    pub fn load(settings: &Settings) -> Result<Config, ConfigError> {
        let layout = Layout {
            confdir: &settings.confdir,
            prefix: &settings.prefix,
            exec: settings.exec.is_some(),
        };
        let units = resource::load_all(&layout)?;
        let renderer = std::sync::Arc::new(Renderer::load(&layout.templates_dir(), &units)?);
        let daemon_files = units
            .iter()
            .map(|u| {
                let first = &u.templates[0];
                (u.name.clone(), (first.dest.clone(), first.follow_symlink))
            })
            .collect();
        Ok(Config {
            units,
            renderer,
            daemon_files: std::sync::Arc::new(daemon_files),
        })
    }

    /// Every prefix any unit reads.
    pub fn prefixes(&self) -> Vec<String> {
        let mut prefixes: Vec<String> = self
            .units
            .iter()
            .flat_map(|u| u.prefixes().map(str::to_string))
            .collect();
        prefixes.sort();
        prefixes.dedup();
        prefixes
    }

    /// Removes staging directories that a crashed run left beside the
    /// destinations.
    pub fn remove_stale_stages(&self) {
        for unit in &self.units {
            let mut dirs: Vec<PathBuf> = unit
                .templates
                .iter()
                .map(|t| stage::parent_of(&t.dest))
                .collect();
            dirs.sort();
            dirs.dedup();
            for dir in dirs {
                stage::remove_stale(&dir, &unit.name);
            }
        }
    }
}
