//! The `switchyard` binary: parses the command line and runs the server.

use std::{io::IsTerminal as _, net::SocketAddr, path::PathBuf};

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use switchyard::config::{Config, DEFAULT_TOML, LogFormat, Overrides};
use tracing_subscriber::EnvFilter;

/// jemalloc, not the system allocator: after a burst of connections closes, glibc's malloc
/// keeps the freed memory (fragmented between the survivors' allocations), while jemalloc's
/// background thread gives it back to the system within seconds (see docs/performance.md).
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// A self-hosted real-time gateway: durable jobs, WebSocket, SSE, HTTP streaming,
/// long-poll and webhooks behind one API.
#[derive(Parser, Debug)]
#[command(name = "switchyard", version, after_long_help = config_help())]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    serve: ServeArgs,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run the gateway (the default when no command is given).
    Serve,
    /// Print the effective configuration (defaults, file, env and flags merged) as TOML.
    Config,
}

#[derive(clap::Args, Debug, Clone, Default)]
struct ServeArgs {
    /// TOML configuration file (see the configuration keys below).
    #[arg(
        short,
        long,
        value_name = "FILE",
        env = "SWITCHYARD_CONFIG",
        global = true
    )]
    config: Option<PathBuf>,
    /// Address to listen on [default: 127.0.0.1:8080] [env: SWITCHYARD_LISTEN]
    #[arg(long, value_name = "ADDR", global = true)]
    listen: Option<SocketAddr>,
    /// Directory for durable data [default: ./switchyard-data] [env: SWITCHYARD_DATA_DIR]
    #[arg(long, value_name = "DIR", global = true)]
    data_dir: Option<PathBuf>,
    /// Log lines on stderr: text (readable) or json (one object per line, for log
    /// shippers) [default: text] [env: SWITCHYARD_LOG_FORMAT]
    #[arg(long, value_name = "FORMAT", global = true)]
    log_format: Option<LogFormatArg>,
}

/// `--log-format`'s values (the library's [`LogFormat`] stays free of clap).
#[derive(clap::ValueEnum, Clone, Copy, Debug)]
enum LogFormatArg {
    Text,
    Json,
}

impl From<LogFormatArg> for LogFormat {
    fn from(arg: LogFormatArg) -> Self {
        match arg {
            LogFormatArg::Text => Self::Text,
            LogFormatArg::Json => Self::Json,
        }
    }
}

fn config_help() -> String {
    format!(
        "Configuration keys (`section.key` is also set by SWITCHYARD_SECTION__KEY; flags beat \
         env, env beats the file). Log level: RUST_LOG (default `info`); log format: `log_format`.\n\n{DEFAULT_TOML}"
    )
}

fn load(args: &ServeArgs) -> anyhow::Result<Config> {
    let overrides = Overrides {
        listen: args.listen,
        data_dir: args.data_dir.clone(),
        log_format: args.log_format.map(LogFormat::from),
    };
    Config::load(args.config.as_deref(), std::env::vars(), &overrides)
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    // The configuration comes first, since the log format is one of its settings: an error
    // in it is one plain `error:` line (the format it asks for is not known).
    let config = match load(&cli.serve) {
        Ok(config) => config,
        Err(e) => return fail(&e, LogFormat::Text),
    };
    if let Some(Command::Config) = cli.command {
        return match toml_string(&config) {
            Ok(text) => {
                print!("{text}");
                std::process::ExitCode::SUCCESS
            }
            Err(e) => fail(&e, LogFormat::Text),
        };
    }
    let format = config.log_format;
    init_logging(format);
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            return fail(
                &anyhow::Error::new(e).context("cannot start the async runtime"),
                format,
            );
        }
    };
    match runtime.block_on(serve(config)) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => fail(&e, format),
    }
}

/// Reports why the process stops, in the log's format (a log shipper reading JSON lines
/// gets the reason as one of them), and the failure exit status.
fn fail(error: &anyhow::Error, format: LogFormat) -> std::process::ExitCode {
    match format {
        // One readable line with its causes; no backtrace for a configuration mistake.
        LogFormat::Text => eprintln!("error: {error:#}"),
        LogFormat::Json => tracing::error!(error = format!("{error:#}"), "switchyard stopped"),
    }
    std::process::ExitCode::FAILURE
}

/// Logs on stderr (stdout is for what a command prints, such as `config`), at the level
/// `RUST_LOG` sets. Text is coloured only on a terminal: escape codes in a log file or a
/// journal are noise. JSON lines carry the request's span (its `request_id`) but not the
/// list of enclosing spans: there is only ever the one.
fn init_logging(format: LogFormat) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let logs = tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(filter);
    match format {
        LogFormat::Text => logs.with_ansi(std::io::stderr().is_terminal()).init(),
        LogFormat::Json => logs
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .with_span_list(false)
            .init(),
    }
}

/// The effective configuration as TOML, secrets redacted (it ends up in terminals and
/// support tickets).
fn toml_string(config: &Config) -> anyhow::Result<String> {
    let shown = Config {
        auth: config.auth.redacted(),
        engine: config.engine_redacted(),
        ..config.clone()
    };
    toml::to_string_pretty(&shown).context("cannot print the configuration")
}

/// Raises the soft open-files limit to the hard one: every connection is a descriptor.
fn raise_open_files_limit(max_connections: usize) {
    match rlimit::increase_nofile_limit(u64::MAX) {
        Ok(limit) if limit < max_connections as u64 + 64 => tracing::warn!(
            limit,
            max_connections,
            "the open-files limit is below limits.max_connections; accepts will fail past it \
             (raise `ulimit -n` / LimitNOFILE, or lower limits.max_connections)"
        ),
        Ok(_) => {}
        Err(e) => tracing::warn!(error = %e, "cannot raise the open-files limit"),
    }
}

async fn serve(config: Config) -> anyhow::Result<()> {
    raise_open_files_limit(config.limits.max_connections);
    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .with_context(|| format!("cannot listen on {}", config.listen))?;
    switchyard::run(listener, config, switchyard::shutdown::signal()).await
}
