//! Runs any program under the supervisor, as the launcher runs torchrun; for benchmarks and
//! manual checks: `supervise LOG_PATH PROGRAM [ARGS...]`. Output is relayed to this process's
//! stdout/stderr, the log goes to LOG_PATH, the summary line to stderr.

use std::path::PathBuf;

use vla_launch::launch::command::{AllocConf, AllocConfSource, LaunchCommand};
use vla_launch::launch::status::Tracker;
use vla_launch::launch::supervisor::{SuperviseOptions, run_blocking, summary_line};

fn main() {
    let mut args = std::env::args_os().skip(1);
    let (Some(log), Some(program)) = (args.next(), args.next()) else {
        eprintln!("usage: supervise LOG_PATH PROGRAM [ARGS...]");
        std::process::exit(2);
    };
    let cmd = LaunchCommand {
        program: PathBuf::from(program),
        args: args.collect(),
        env: vec![],
        cwd: std::env::current_dir().expect("current directory"),
        alloc_conf: AllocConf {
            value: String::new(),
            source: AllocConfSource::User,
        },
    };
    let mut opts = SuperviseOptions::new(PathBuf::from(log));
    // As `vla-launch` does: the progress is read from every chunk (no status line off a terminal).
    opts.progress = Some(Tracker::new(None));
    match run_blocking(&cmd, &opts) {
        Ok(outcome) => {
            eprintln!("{}", summary_line(&outcome));
            // The launcher's own CPU time, its children's left out (scripts/bench-*.sh read it).
            // SAFETY: getrusage fills the struct we pass.
            let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
            unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut ru) };
            let secs = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
            eprintln!(
                "supervise cpu: user {:.3} s sys {:.3} s",
                secs(ru.ru_utime),
                secs(ru.ru_stime)
            );
            std::process::exit(outcome.process_exit_code());
        }
        Err(e) => {
            let e = vla_launch::app::AppError::from(e);
            eprintln!("error: {e}");
            std::process::exit(e.exit_code().code());
        }
    }
}
