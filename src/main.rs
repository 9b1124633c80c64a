fn main() -> std::process::ExitCode {
    persona_train::device::tune_allocator();
    match persona_train::cli::run(persona_train::cli::parse_args(std::env::args_os())) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
