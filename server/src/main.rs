//! The dedicated game server binary: parse the command line, set up
//! logging, build the app, run it.

use std::process::ExitCode;

use bevy_app::AppExit;
use server::config::{AuditArgs, Cli, Command, RunArgs, ServerConfig, TokenArgs};
use tracing::{error, info};

fn main() -> ExitCode {
    let cli = match Cli::parse_argv(std::env::args_os()) {
        Ok(cli) => cli,
        Err(error) => {
            let _ = error.print();
            let argv: Vec<_> = std::env::args_os().collect();
            if let Some(note) =
                server::config::env_note(&error, &argv, |name| std::env::var_os(name))
            {
                eprintln!("note: {note}");
            }
            return ExitCode::from(u8::try_from(error.exit_code()).unwrap_or(2));
        }
    };
    match cli.into_command() {
        Command::Run(args) => run(&args),
        Command::Token(args) => token(&args),
        Command::Audit(args) => audit(&args),
    }
}

/// `server audit`: JSON on stdout; exit 0 when the store is intact and
/// balanced and consistent, 1 when a check fails, 2 when the store cannot be
/// read. Items not in the catalogue (`unknown_items`) are a finding, not a
/// failed check.
fn audit(args: &AuditArgs) -> ExitCode {
    let config = match ServerConfig::load(&args.run_args()) {
        Ok(config) => config,
        Err(error) => {
            eprintln!("error: {error}");
            return ExitCode::from(2);
        }
    };
    let data_dir = &config.data_dir;
    if !data_dir.join(server::persistence::DB_FILE).is_file() {
        eprintln!(
            "error: no {} in {}",
            server::persistence::DB_FILE,
            data_dir.display()
        );
        return ExitCode::from(2);
    }
    // The catalogue this binary runs with: items the store holds that it
    // does not define are listed.
    let catalogue = match server::inventory::Catalogue::embedded() {
        Ok(catalogue) => catalogue,
        Err(error) => {
            eprintln!("error: {error}");
            return ExitCode::from(2);
        }
    };
    match server::persistence::audit(data_dir, &catalogue) {
        Ok(report) => {
            match serde_json::to_string_pretty(&report) {
                Ok(json) => println!("{json}"),
                Err(error) => {
                    eprintln!("error: {error}");
                    return ExitCode::from(2);
                }
            }
            if report.integrity_ok && report.balanced && report.consistent {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            }
        }
        Err(error) => {
            eprintln!("error: {error}");
            ExitCode::from(2)
        }
    }
}

fn token(args: &TokenArgs) -> ExitCode {
    let config = match ServerConfig::load(&args.run_args()) {
        Ok(config) => config,
        Err(error) => {
            eprintln!("error: {error}");
            return ExitCode::from(2);
        }
    };
    let key = match &config.key_file {
        Some(path) => match server::load_production_key(path) {
            Ok(key) => key,
            Err(error) => {
                eprintln!("error: {error}");
                return ExitCode::from(2);
            }
        },
        None => {
            eprintln!("warning: no --key-file: minting with the public development key");
            shared::keys::dev_key()
        }
    };
    let servers = args.servers.clone();
    match shared::keys::mint_token(&key, servers, args.client_id, args.expires, args.timeout) {
        Ok(token) => {
            println!("{}", token.to_base64());
            ExitCode::SUCCESS
        }
        Err(error) => {
            eprintln!("error: cannot mint token: {error}");
            ExitCode::from(2)
        }
    }
}

fn run(args: &RunArgs) -> ExitCode {
    let config = match ServerConfig::load(args) {
        Ok(config) => config,
        Err(error) => {
            eprintln!("error: {error}");
            return ExitCode::from(2);
        }
    };
    if args.print_config {
        print!("{}", config.to_toml());
        return ExitCode::SUCCESS;
    }
    let _flush_logs = match server::logging::init(config.log_format, &config.log_filter) {
        Ok(guard) => guard,
        Err(error) => {
            eprintln!("error: {error}");
            return ExitCode::from(2);
        }
    };
    info!(
        version = env!("CARGO_PKG_VERSION"),
        bind = %config.bind(),
        tick_hz = config.tick_rate.hz(),
        max_clients = config.max_clients,
        data_dir = %config.data_dir.display(),
        "starting server"
    );
    let mut app = match server::build_app(&config) {
        Ok(app) => app,
        Err(server::StartupError::Interrupted) => {
            info!("shutdown requested while starting; stopped before serving");
            return ExitCode::SUCCESS;
        }
        Err(error) => {
            error!(%error, "startup failed");
            if !tracing::enabled!(tracing::Level::ERROR) {
                // The filter turned error lines off: the reason must still show.
                eprintln!("error: startup failed: {error}");
            }
            return ExitCode::FAILURE;
        }
    };
    let exit = app.run();
    server::console::flush_answers(std::time::Duration::from_millis(200));
    match exit {
        AppExit::Success => {
            info!("server stopped");
            ExitCode::SUCCESS
        }
        AppExit::Error(code) => {
            error!(code = code.get(), "server stopped with an error");
            ExitCode::from(code.get())
        }
    }
}
