use clap::Parser;

fn main() -> std::process::ExitCode {
    match persona_train::cli::run(persona_train::cli::Cli::parse()) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
