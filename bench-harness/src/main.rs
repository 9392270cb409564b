//! `loss-bench`: verifies every backend against the conformance vectors and measures throughput.

use std::path::PathBuf;
use std::process::ExitCode;

use bench_harness::backends::{self, BackendConfig};
use bench_harness::verify;
use clap::{Args, Parser, Subcommand};
use loss_core::conformance::{self, VectorFile};

#[derive(Parser)]
#[command(name = "loss-bench", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Run every backend on every case of the vendored vectors and of each --vectors file.
    Verify(VerifyArgs),
}

#[derive(Args)]
struct VerifyArgs {
    /// Another vector file of the same format (repeatable). The vendored file always runs.
    #[arg(long = "vectors")]
    vectors: Vec<PathBuf>,
    /// Backends to check (repeatable; default: all).
    #[arg(long = "backend")]
    backend: Vec<String>,
    /// Threads for parallel backends.
    #[arg(long)]
    threads: Option<usize>,
}

fn verify(args: VerifyArgs) -> ExitCode {
    let mut paths = vec![conformance::vendored_vectors_path()];
    paths.extend(args.vectors);
    let backends = backends::resolve(
        &args.backend,
        BackendConfig {
            threads: args.threads,
        },
    );
    let mut ok = true;
    for path in paths {
        match VectorFile::load(&path) {
            Err(e) => {
                eprintln!("error: {e}");
                ok = false;
            }
            Ok(file) => {
                let outcome = verify::verify_file(&file, &backends);
                print!("{}", verify::render(&outcome));
                ok &= outcome.passed();
            }
        }
    }
    if ok {
        println!("verify: every case passed on every backend");
        ExitCode::SUCCESS
    } else {
        println!("verify: FAILED");
        ExitCode::FAILURE
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Some(Command::Verify(args)) => verify(args),
        None => verify(VerifyArgs {
            vectors: vec![],
            backend: vec![],
            threads: None,
        }),
    }
}
