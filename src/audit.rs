//! `confera check`: audits a confdir without a backend and without
//! rendering: everything parsed and compiled, and what each unit reads.
//! It never writes anything.

use crate::config::Config;
use crate::RunStatus;

/// `confera check`: everything parsed and compiled; list what each unit reads.
pub fn audit(config: &Config) -> RunStatus {
    for unit in &config.units {
        for t in &unit.templates {
            let keys: Vec<String> = t
                .keys
                .iter()
                .map(|k| crate::store::relative_key(&t.prefix, k))
                .collect();
            crate::cli::print_line(format_args!(
                "{}: {} -> {} (prefix {}, keys {})",
                unit.name,
                t.src,
                t.dest.display(),
                t.prefix,
                if keys.is_empty() {
                    "none".to_string()
                } else {
                    keys.join(", ")
                }
            ));
        }
    }
    RunStatus::Success
}
