use std::io::IsTerminal;
use std::process::ExitCode;

use clap::Parser;
use tracing_subscriber::EnvFilter;

use vla_launch::app;
use vla_launch::cli::Cli;

fn init_tracing(verbose: u8, quiet: bool) {
    // RUST_LOG wins; otherwise -v/-q pick the level. Logs always go to stderr.
    let default = match (quiet, verbose) {
        (true, _) => "warn",
        (false, 0) => "info",
        (false, 1) => "debug",
        (false, _) => "trace",
    };
    let filter = EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| EnvFilter::new(format!("vla_launch={default},warn")));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(|| vla_launch::launch::term::LossyStderr)
        .with_ansi(std::io::stderr().is_terminal())
        .with_target(false)
        .without_time()
        .init();
}

fn main() -> ExitCode {
    // The watchdog of a supervised run is this binary re-executed (see launch::watchdog).
    vla_launch::launch::watchdog::main_if_requested();
    vla_launch::launch::watchdog::enable_self_exec();
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            // clap quotes the offending argument whole: bound what it echoes (help and version
            // output, and ordinary errors, are printed as clap prints them).
            let plain = e.render().to_string();
            if plain.lines().all(|l| l.chars().count() <= 300) {
                e.exit();
            }
            vla_launch::eprint_lossy!("{}", vla_launch::input::bound_lines(&plain, 300));
            return ExitCode::from(e.exit_code().clamp(0, 255) as u8);
        }
    };
    init_tracing(cli.verbose, cli.quiet);
    let code = match app::run(cli) {
        Ok(code) => code,
        Err(err) => {
            let code = err.exit_code();
            // anyhow prints the error with its causes, as one line.
            vla_launch::eprintln_lossy!("error: {:#}", anyhow::Error::from(err));
            code
        }
    };
    ExitCode::from(code.code().clamp(0, 255) as u8)
}
