//! The `kabar` command: parses the command line and calls into the library.
//! It must not hold logic of its own: every command is a library function.

#![forbid(unsafe_code)]
// Output goes through kabar::print_out / print_err: println! panics when the reader has gone.
#![deny(clippy::print_stdout, clippy::print_stderr)]

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{CommandFactory as _, Parser, Subcommand, ValueEnum};

/// glibc's malloc was a quarter of kabar's CPU under load (many small, short-lived
/// allocations across threads while parsing, rendering and serving); mimalloc cut the CPU
/// per notification by ~20% (bench/README.md).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(name = "kabar", version = kabar::LONG_VERSION, about = "Prometheus Alertmanager receiver for Google Chat")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

/// The config file, as every command takes it.
#[derive(clap::Args)]
struct ConfigArg {
    /// The kabar config file (YAML).
    #[arg(short = 'c', long, env = "KABAR_CONFIG", value_name = "FILE")]
    config: PathBuf,
}

#[derive(Subcommand)]
enum Command {
    /// Run the service.
    Serve {
        #[command(flatten)]
        config: ConfigArg,
        /// error, warn, info, debug or trace (RUST_LOG overrides).
        #[arg(long, default_value = "info", value_name = "LEVEL")]
        log_level: kabar::LogLevel,
        /// text for people, json for log pipelines.
        #[arg(long, value_enum, default_value = "text")]
        log_format: Format,
    },
    /// Validate config files and render every template against built-in sample alerts.
    Check {
        /// Config files to check (like promtool check config).
        #[arg(value_name = "FILE")]
        files: Vec<PathBuf>,
        /// A config file to check, as the other commands take it (without any file
        /// named, KABAR_CONFIG is checked).
        #[arg(short = 'c', long, value_name = "FILE")]
        config: Option<PathBuf>,
    },
    /// Print the Chat requests a webhook payload would produce, without sending.
    Render {
        #[command(flatten)]
        config: ConfigArg,
        /// The Alertmanager webhook payload (JSON); - reads it from stdin.
        #[arg(long, value_name = "FILE")]
        payload: PathBuf,
        /// Route to this space instead of by the payload's receiver.
        #[arg(long, value_name = "NAME")]
        space: Option<String>,
    },
    /// Post one test message to a space now and report Chat's answer.
    #[command(name = "send-test")]
    SendTest {
        #[command(flatten)]
        config: ConfigArg,
        /// The space to post to (a dry_run space prints the body instead).
        #[arg(long, value_name = "NAME")]
        space: String,
    },
    /// List, retry or drop messages kabar gave up on (works while kabar runs).
    #[command(name = "dead-letters", subcommand)]
    DeadLetters(DeadLetterCommand),
    /// Work on the store itself.
    #[command(subcommand)]
    Store(StoreCommand),
}

#[derive(Subcommand)]
enum StoreCommand {
    /// Copy a single-replica SQLite store (queue in order, episodes, dead letters) into
    /// the PostgreSQL store the config names. Stop the kabar using it first.
    Copy {
        #[command(flatten)]
        config: ConfigArg,
        /// The old state_dir, holding kabar.db.
        #[arg(long, value_name = "DIR")]
        from_sqlite: PathBuf,
        /// Copy even into a PostgreSQL store that already holds kabar data (messages
        /// are added after its queue; episodes of the same alert are replaced).
        #[arg(long)]
        force: bool,
    },
}

#[derive(Subcommand)]
enum DeadLetterCommand {
    /// Show dead letters as a table (or JSON); without filters, all of them.
    List {
        #[command(flatten)]
        filter: DeadLetterFilter,
        /// Print JSON (with each message's body) instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Move dead letters back to the end of their space's outbox queue.
    Retry {
        #[command(flatten)]
        filter: DeadLetterFilter,
        /// Act on every dead letter (required when no filter is given).
        #[arg(long)]
        all: bool,
    },
    /// Delete dead letters for good.
    Drop {
        #[command(flatten)]
        filter: DeadLetterFilter,
        /// Act on every dead letter (required when no filter is given).
        #[arg(long)]
        all: bool,
    },
}

#[derive(clap::Args)]
struct DeadLetterFilter {
    #[command(flatten)]
    config: ConfigArg,
    /// Only this space (repeatable).
    #[arg(long = "space", value_name = "NAME")]
    spaces: Vec<String>,
    /// Only this dead letter id, as `list` and the log show it (repeatable).
    #[arg(long = "id", value_name = "ID")]
    ids: Vec<i64>,
    /// Only those dead-lettered at least this long ago (30m, 4h, 2d).
    #[arg(long, value_name = "DURATION")]
    older_than: Option<String>,
    /// Only those dead-lettered at most this long ago.
    #[arg(long, value_name = "DURATION")]
    newer_than: Option<String>,
}

#[derive(Clone, Copy, ValueEnum)]
enum Format {
    Text,
    Json,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Serve {
            config,
            log_level,
            log_format,
        } => {
            let format = match log_format {
                Format::Text => kabar::LogFormat::Text,
                Format::Json => kabar::LogFormat::Json,
            };
            kabar::init_logging(log_level, format);
            let runtime = match tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()
            {
                Ok(runtime) => runtime,
                Err(e) => {
                    kabar::print_err(&format!("kabar: cannot start the async runtime: {e}\n"));
                    return ExitCode::FAILURE;
                }
            };
            match runtime.block_on(kabar::server::run(config.config)) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    tracing::error!(error = %e, "kabar stopped with an error");
                    kabar::print_err(&format!("kabar: {e}\n"));
                    ExitCode::FAILURE
                }
            }
        }
        Command::Check { files, config } => {
            // KABAR_CONFIG only when no file is named: `kabar check other.yaml` in a shell
            // that exports it checks other.yaml, not both.
            let mut files: Vec<PathBuf> = config.into_iter().chain(files).collect();
            if files.is_empty() {
                files.extend(std::env::var_os("KABAR_CONFIG").map(PathBuf::from));
            }
            if files.is_empty() {
                Cli::command()
                    .error(
                        clap::error::ErrorKind::MissingRequiredArgument,
                        "name the config file(s) to check: kabar check FILE... (or --config FILE, or KABAR_CONFIG)",
                    )
                    .exit();
            }
            let mut all_ok = true;
            for file in &files {
                let result =
                    kabar::commands::check(file).map_err(|e| format!("{}: {e}", file.display()));
                all_ok &= report(result) == ExitCode::SUCCESS;
            }
            if all_ok {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            }
        }
        Command::Render {
            config,
            payload,
            space,
        } => report(kabar::commands::render(
            &config.config,
            &payload,
            space.as_deref(),
        )),
        Command::SendTest { config, space } => {
            report(kabar::send_test::run(&config.config, &space))
        }
        Command::DeadLetters(command) => dead_letters(command),
        Command::Store(StoreCommand::Copy {
            config,
            from_sqlite,
            force,
        }) => report(kabar::copy_store(&config.config, &from_sqlite, force)),
    }
}

fn dead_letters(command: DeadLetterCommand) -> ExitCode {
    use kabar::dead_letters::{Action, Selection, run};
    let (filter, action, all) = match command {
        DeadLetterCommand::List { filter, json } => (filter, Action::List { json }, false),
        DeadLetterCommand::Retry { filter, all } => (filter, Action::Retry, all),
        DeadLetterCommand::Drop { filter, all } => (filter, Action::Drop, all),
    };
    let result = Selection::parse(
        filter.spaces,
        filter.ids,
        filter.older_than.as_deref(),
        filter.newer_than.as_deref(),
    )
    .and_then(|selection| run(&filter.config.config, action, &selection, all));
    report(result)
}

/// Prints a command's answer or error; a closed stdout or stderr is not a panic.
fn report(result: Result<String, impl std::fmt::Display>) -> ExitCode {
    match result {
        Ok(output) => {
            kabar::print_out(&format!("{}\n", output.trim_end()));
            ExitCode::SUCCESS
        }
        Err(e) => {
            kabar::print_err(&format!("kabar: {e}\n"));
            ExitCode::FAILURE
        }
    }
}
