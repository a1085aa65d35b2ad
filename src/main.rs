//! The `kirimhook` binary: parse the command line, then hand over to the library.

use std::process::ExitCode;

use clap::Parser as _;
use kirimhook::cli::{Cli, Command};
use kirimhook::config::{Config, MissingFiles};
use kirimhook::ops::{accounts, admin_cli, send, tail};
use kirimhook::{app, check, shutdown, systemd, telemetry};

/// jemalloc instead of glibc's malloc: the receive path allocates and frees small buffers on
/// every request across threads, where glibc's allocator took about a sixth of the daemon's
/// CPU. Measured in the receive bench against glibc and mimalloc: jemalloc cost the least CPU
/// per request, and unlike mimalloc it did not raise peak RSS (README, Performance).
///
/// Its settings are compiled in from `.cargo/config.toml` (`JEMALLOC_SYS_WITH_MALLOC_CONF`):
/// one arena per CPU, and a background thread that gives freed pages back to the system
/// within about a second, so memory goes back after a burst or a drained backlog. `_RJEM_MALLOC_CONF` in the
/// environment overrides them.
#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(code) => code,
        Err(e) => {
            // Not `eprintln!`: it panics when stderr is gone.
            telemetry::stderr_line(&format!("error: {e:#}"));
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Serve { config } => {
            telemetry::init(cli.log_format);
            let path = config;
            let config = Config::load(&path)?;
            // Before the runtime starts its threads: this edits the environment.
            let activated = systemd::take_activated_listener()?;
            let runtime = tokio::runtime::Runtime::new()?;
            runtime.block_on(async {
                let signals = shutdown::on_signals()?;
                app::run(config, path, activated, signals).await
            })?;
            Ok(ExitCode::SUCCESS)
        }
        Command::CheckConfig {
            config,
            skip_missing_secrets,
        } => {
            let missing = if skip_missing_secrets {
                MissingFiles::Skip
            } else {
                MissingFiles::Refuse
            };
            let checked = Config::check(&config, missing)?;
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            let store = runtime.block_on(check::store(&checked))?;
            telemetry::stderr_line(check::report(&checked, &store).trim_end_matches('\n'));
            Ok(ExitCode::SUCCESS)
        }
        Command::Sign {
            secret,
            timestamp,
            file,
        } => {
            let secret = send::signing_secret(&secret)?;
            let body = std::fs::read(&file)
                .map_err(|e| anyhow::anyhow!("cannot read {}: {e}", file.display()))?;
            let signature = secret.sign(timestamp.unwrap_or_else(send::unix_now), &body);
            print_stdout(format!("{signature}\n"))?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Send(args) => {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            let (status, body) = runtime.block_on(send::send(&args))?;
            print_stdout(format!("{status}\n{body}\n"))?;
            Ok(if (200..300).contains(&status) {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            })
        }
        Command::Accounts(args) => {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            let list = runtime.block_on(accounts::list(&args))?;
            if args.json {
                print_stdout(accounts::to_json(&list))?;
            } else {
                print_stdout(accounts::to_table(&list))?;
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Tail(args) => {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            let ended = runtime.block_on(tail::run(&args, telemetry::stderr_line))?;
            if ended == tail::Ended::DaemonStopped {
                telemetry::stderr_line("the daemon closed the stream (it is stopping)");
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Completions { shell } => {
            print_stdout(kirimhook::cli::completion_script(shell))?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Man {
            out_dir: Some(dir), ..
        } => {
            for (file, page) in kirimhook::cli::man_pages()? {
                let path = dir.join(&file);
                std::fs::write(&path, page)
                    .map_err(|e| anyhow::anyhow!("cannot write {}: {e}", path.display()))?;
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Man { command, .. } => match kirimhook::cli::man_page(command.as_deref())? {
            Some(page) => {
                print_stdout(page)?;
                Ok(ExitCode::SUCCESS)
            }
            None => {
                telemetry::stderr_line(&format!(
                    "error: no command named `{}`; commands: {}",
                    command.unwrap_or_default(),
                    kirimhook::cli::command_names().join(", ")
                ));
                Ok(ExitCode::FAILURE)
            }
        },
        Command::Admin(command) => {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            let answer = runtime.block_on(admin_cli::run(&command))?;
            print_stdout(&answer.stdout)?;
            match answer.unmatched {
                Some(problem) => {
                    telemetry::stderr_line(&format!("error: {problem}"));
                    Ok(ExitCode::FAILURE)
                }
                None => Ok(ExitCode::SUCCESS),
            }
        }
    }
}

/// Writes a command's output to stdout. A reader that has gone (`kirimhook ... | head -1`) is
/// not an error of the command's (`print!` would panic); any other write error is.
fn print_stdout(text: impl AsRef<[u8]>) -> std::io::Result<()> {
    use std::io::Write as _;
    let mut stdout = std::io::stdout().lock();
    match stdout
        .write_all(text.as_ref())
        .and_then(|()| stdout.flush())
    {
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
        other => other,
    }
}
