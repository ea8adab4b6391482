//! The `writeback` command. All of the work happens in the library; see [`writeback::cli`].

fn main() {
    std::process::exit(writeback::cli::run());
}
