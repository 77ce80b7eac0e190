use std::process::ExitCode;

use clap::Parser;
use confera::{cli::Cli, error::ConfigError, settings::Settings, RunStatus};

fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Some(code) = confera::cli::generate(&cli) {
        return code;
    }
    let settings = match Settings::from_cli(&cli) {
        Ok(settings) => settings,
        Err(e) => return fatal(&e),
    };
    confera::logging::init(&settings.log_level, settings.log_format);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("the tokio runtime starts");
    let shutdown = {
        let _runtime = runtime.enter();
        confera::shutdown_signal()
    };
    match runtime.block_on(confera::run(&cli, settings, shutdown)) {
        Ok(RunStatus::Success) => ExitCode::SUCCESS,
        Ok(RunStatus::Failed) => ExitCode::from(1),
        Err(e) => fatal(&e),
    }
}

fn fatal(e: &ConfigError) -> ExitCode {
    eprintln!("confera: {e}");
    ExitCode::from(2)
}
