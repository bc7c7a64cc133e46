//! The `tiering` binary: thin subcommands over the library. See `tiering --help`.

mod cli;

fn main() -> std::process::ExitCode {
    cli::main()
}
