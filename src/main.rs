//! The `kabar` command: parses the command line and calls into the library.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};

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

#[derive(Subcommand)]
enum Command {
    /// Run the service.
    Serve {
        #[arg(long, env = "KABAR_CONFIG")]
        config: PathBuf,
        /// error, warn, info, debug or trace (RUST_LOG overrides).
        #[arg(long, default_value = "info")]
        log_level: String,
        #[arg(long, value_enum, default_value = "text")]
        log_format: Format,
    },
    /// Validate the config and render every template against built-in sample alerts.
    Check {
        #[arg(long, env = "KABAR_CONFIG")]
        config: PathBuf,
    },
    /// Print the Chat requests a webhook payload would produce, without sending.
    Render {
        #[arg(long, env = "KABAR_CONFIG")]
        config: PathBuf,
        #[arg(long)]
        payload: PathBuf,
        /// Route to this space instead of by the payload's receiver.
        #[arg(long)]
        space: Option<String>,
    },
    /// List, retry or drop messages kabar gave up on (works while kabar runs).
    #[command(name = "dead-letters", subcommand)]
    DeadLetters(DeadLetterCommand),
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
    #[arg(long, env = "KABAR_CONFIG")]
    config: PathBuf,
    /// Only this space (repeatable).
    #[arg(long = "space", value_name = "NAME")]
    spaces: Vec<String>,
    /// Only this dead letter id (repeatable).
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
            kabar::init_logging(&log_level, format);
            let runtime = match tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()
            {
                Ok(runtime) => runtime,
                Err(e) => {
                    eprintln!("kabar: cannot start the async runtime: {e}");
                    return ExitCode::FAILURE;
                }
            };
            match runtime.block_on(kabar::server::run(config)) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    tracing::error!(error = %e, "kabar stopped with an error");
                    eprintln!("kabar: {e}");
                    ExitCode::FAILURE
                }
            }
        }
        Command::Check { config } => report(kabar::commands::check(&config)),
        Command::Render {
            config,
            payload,
            space,
        } => report(kabar::commands::render(&config, &payload, space.as_deref())),
        Command::DeadLetters(command) => dead_letters(command),
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
    .and_then(|selection| run(&filter.config, action, &selection, all));
    report(result)
}

fn report(result: Result<String, impl std::fmt::Display>) -> ExitCode {
    match result {
        Ok(output) => {
            println!("{}", output.trim_end());
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("kabar: {e}");
            ExitCode::FAILURE
        }
    }
}
