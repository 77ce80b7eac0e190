use std::process::ExitCode;

use clap::Parser;
use confera::{cli::Cli, settings::Settings, RunStatus};

fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Some(command) = &cli.command {
        match confera::cli::print_generated(command) {
            Ok(true) => return ExitCode::SUCCESS,
            Ok(false) => {}
            Err(e) => {
                eprintln!("confera: {e}");
                return ExitCode::from(1);
            }
        }
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
    match runtime.block_on(confera::run(
        cli.command,
        settings,
        confera::shutdown_signal(),
    )) {
        Ok(RunStatus::Success) => ExitCode::SUCCESS,
        Ok(RunStatus::Failed) => ExitCode::from(1),
        Err(e) => fatal(&e),
    }
}

fn fatal(e: &confera::error::ConfigError) -> ExitCode {
    eprintln!("confera: {e}");
    ExitCode::from(2)
}
