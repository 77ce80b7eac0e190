//! The binary: parse the command line, resolve the settings, set up logging,
//! run, and map the outcome to an exit code (0 ok, 1 a resource failed, 2 a
//! configuration error, 3 a file would change under `--noop --exit-code`). It writes nothing itself but a fatal error.

use std::process::ExitCode;

use confera::{cli::Cli, error::ConfigError, logging, settings::Settings, RunStatus};

fn main() -> ExitCode {
    let cli = Cli::parse_args(std::env::args_os());
    if let Some(code) = confera::cli::generate(&cli) {
        return code;
    }
    let settings = match Settings::from_cli(&cli) {
        Ok(settings) => settings,
        // The settings file may be what failed: only the command line can
        // say which log format to use.
        Err(e) => return fatal(cli.logging.log_format.unwrap_or_default(), &e),
    };
    logging::init(&settings.log_level, settings.log_format);
    keep_the_heap_small();
    let format = settings.log_format;
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
        Ok(RunStatus::WouldChange) => ExitCode::from(3),
        Ok(RunStatus::Child(code)) => ExitCode::from(code),
        Err(e) => fatal(format, &e),
    }
}

/// glibc raises its mmap threshold each time a large block is freed, so
/// after the first render the next render's output buffer and file reads
/// (a megabyte at 20,000 keys) come from the heap and stay there: a
/// watcher kept ~8 MB more resident. Fixed thresholds return large blocks
/// and a free heap top to the system. (mimalloc rendered ~10% faster but
/// kept 2.5 times the memory of a watcher, with a fresh render thread each
/// time; see BENCHMARKS.md.)
fn keep_the_heap_small() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        use nix::libc::{mallopt, M_MMAP_THRESHOLD, M_TRIM_THRESHOLD};
        const THRESHOLD: i32 = 128 * 1024;
        // SAFETY: mallopt only sets malloc parameters; called before any
        // other thread runs.
        unsafe {
            mallopt(M_MMAP_THRESHOLD, THRESHOLD);
            mallopt(M_TRIM_THRESHOLD, THRESHOLD);
        }
    }
}

fn fatal(format: confera::cli::LogFormat, e: &ConfigError) -> ExitCode {
    logging::fatal(format, e);
    ExitCode::from(2)
}
