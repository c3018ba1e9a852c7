//! The dedicated game server binary: parse the command line, set up
//! logging, build the app, run it.

use std::process::ExitCode;

use bevy_app::AppExit;
use clap::Parser;
use server::config::{Cli, Command, RunArgs, ServerConfig};
use tracing::{error, info};

fn main() -> ExitCode {
    match Cli::parse().into_command() {
        Command::Run(args) => run(&args),
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
    if let Err(error) = server::logging::init(config.log_format, &config.log_filter) {
        eprintln!("error: {error}");
        return ExitCode::from(2);
    }
    info!(
        version = env!("CARGO_PKG_VERSION"),
        bind = %config.bind,
        tick_hz = config.tick_rate.hz(),
        max_clients = config.max_clients,
        data_dir = %config.data_dir.display(),
        "starting server"
    );
    let mut app = match server::build_app(&config) {
        Ok(app) => app,
        Err(error) => {
            error!(%error, "startup failed");
            return ExitCode::FAILURE;
        }
    };
    match app.run() {
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
