use std::ffi::OsString;
use std::io::IsTerminal;
use std::process::ExitCode;

use clap::Parser;
use tracing_subscriber::EnvFilter;

use vla_launch::app;
use vla_launch::cli::Cli;

/// https://no-color.org: NO_COLOR set and not empty turns colour off.
fn no_color() -> bool {
    std::env::var_os("NO_COLOR").is_some_and(|v| !v.is_empty())
}

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
        // No log line quotes a credential back (a `--set` value that is a token).
        .with_writer(|| {
            vla_launch::launch::command::RedactingWriter(vla_launch::launch::term::LossyStderr)
        })
        .with_ansi(std::io::stderr().is_terminal() && !no_color())
        .with_target(false)
        .without_time()
        .init();
}

/// `vla-launch -v gpus`: clap refuses any argument before a subcommand (the launch form's flags
/// conflict with subcommands), so -v/-q written before the subcommand's name are moved after it.
fn hoist_global_flags(args: Vec<OsString>) -> Vec<OsString> {
    let is_global = |a: &OsString| {
        let Some(a) = a.to_str() else { return false };
        matches!(a, "--verbose" | "--quiet" | "-q")
            || (a.len() > 1 && a.starts_with('-') && a[1..].bytes().all(|b| b == b'v'))
    };
    let flags = args.iter().skip(1).take_while(|a| is_global(a)).count();
    let Some(sub) = args.get(1 + flags).and_then(|a| a.to_str()) else {
        return args;
    };
    let cmd = <Cli as clap::CommandFactory>::command();
    let is_sub = sub == "help" || cmd.get_subcommands().any(|c| c.get_name() == sub);
    if flags == 0 || !is_sub {
        return args;
    }
    let mut out = vec![args[0].clone(), args[1 + flags].clone()];
    out.extend_from_slice(&args[1..1 + flags]);
    out.extend_from_slice(&args[2 + flags..]);
    out
}

fn main() -> ExitCode {
    // The watchdog of a supervised run is this binary re-executed (see launch::watchdog).
    vla_launch::launch::watchdog::main_if_requested();
    vla_launch::launch::watchdog::enable_self_exec();
    let cli = match Cli::try_parse_from(hoist_global_flags(std::env::args_os().collect())) {
        Ok(cli) => cli,
        Err(e) => {
            // clap quotes the offending argument whole: bound what it echoes (help and version
            // output, and ordinary errors, are printed as clap prints them).
            let rendered = e.render().to_string();
            let plain = vla_launch::launch::command::redact_text(&rendered);
            if plain == rendered && plain.lines().all(|l| l.chars().count() <= 300) {
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
            let message = format!("{:#}", anyhow::Error::from(err));
            vla_launch::eprintln_lossy!(
                "error: {}",
                vla_launch::launch::command::redact_text(&message)
            );
            code
        }
    };
    ExitCode::from(code.code().clamp(0, 255) as u8)
}
