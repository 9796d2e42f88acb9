fn main() -> std::process::ExitCode {
    sce_train::cli::main()
}
