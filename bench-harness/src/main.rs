//! `loss-bench`: verifies every backend against the conformance vectors, measures cross-checked
//! throughput, draws it, compares runs, and recommends a backend per shape.

use std::path::PathBuf;
use std::process::ExitCode;

use bench_harness::ab::{self, AbOptions};
use bench_harness::backends::{self, BackendConfig};
use bench_harness::error::Error;
use bench_harness::format::{self, Format};
use bench_harness::options::RunOptions;
use bench_harness::run;
use bench_harness::schema::RunReport;
use bench_harness::{compare, counts, plot, verify, worker};
use clap::{Args, Parser, Subcommand};
use loss_core::Reduction;
use loss_core::conformance::{self, VectorFile};

#[derive(Parser)]
#[command(
    name = "loss-bench",
    version,
    about,
    args_conflicts_with_subcommands = true
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    /// With no subcommand, `run` with these arguments.
    #[command(flatten)]
    run: RunArgs,
}

#[derive(Subcommand)]
enum Command {
    /// Run every backend on every case of the vendored vectors and of each --vectors file.
    Verify(VerifyArgs),
    /// Time every backend over a grid of batch × class sizes, cross-checked against the reference.
    Run(RunArgs),
    /// Draw a result file: throughput against classes, with the bandwidth ceilings.
    Plot(PlotArgs),
    /// Compare two result files (timings or counts); exit 1 on a regression.
    Compare(CompareArgs),
    /// The fastest agreeing backend per region of shapes, as a profile code can load.
    Recommend(RecommendArgs),
    /// Time this build against another loss-bench in one run, interleaved sample by sample.
    Ab(AbArgs),
    /// The device backends and their adapters, one line each: `NAME<TAB>hardware|software<TAB>
    /// description` (exit 1 when none can run). Scripts use it to refuse timing a software
    /// adapter as if it were a GPU.
    Devices,
    /// Serve `ab` requests on standard input (one side of an A/B run).
    #[command(hide = true)]
    Worker,
    /// Count a plan under Valgrind (the child of `run --counts`).
    #[command(hide = true)]
    CountsChild {
        /// The plan.
        plan: PathBuf,
        /// Where to write the checks.
        out: PathBuf,
    },
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

#[derive(Args, Clone)]
struct RunArgs {
    /// Batch sizes, comma-separated.
    #[arg(long, value_delimiter = ',')]
    batch: Vec<usize>,
    /// Class counts, comma-separated.
    #[arg(long, value_delimiter = ',')]
    classes: Vec<usize>,
    /// Explicit cells `NxC`, comma-separated (`1024x10,64x128256`); they replace the grid.
    #[arg(long, value_delimiter = ',')]
    cells: Vec<String>,
    /// Backends to time (repeatable; default: every backend but the reference).
    #[arg(long = "backend")]
    backend: Vec<String>,
    /// Operations, comma-separated: forward, backward, forward_backward, or all.
    #[arg(long, default_value = "all")]
    op: String,
    /// Thread counts for parallel backends, comma-separated (default: all cores).
    #[arg(long, value_delimiter = ',')]
    threads: Vec<usize>,
    /// Run without class weights.
    #[arg(long)]
    unweighted: bool,
    /// Reduction: none, sum or mean.
    #[arg(long, default_value = "mean")]
    reduction: String,
    /// Element types of the logits (and of the gradient), comma-separated: a grid axis.
    #[arg(long, value_delimiter = ',', default_value = "f32")]
    dtype: Vec<String>,
    /// z-loss coefficient (PaLM: 1e-4).
    #[arg(long)]
    z_loss: Option<f32>,
    /// Logit soft-cap (Gemma 2: 30).
    #[arg(long)]
    softcap: Option<f32>,
    /// Per-position weights (uniform in [0, 2)).
    #[arg(long)]
    position_weights: bool,
    /// Skip cells whose logits exceed this many MiB (default 1024; 32 with --quick).
    #[arg(long)]
    max_mib: Option<usize>,
    /// Short timings and a small grid: the whole run in under a minute.
    #[arg(long)]
    quick: bool,
    /// Do not run the Python peers (PyTorch, JAX).
    #[arg(long)]
    no_peers: bool,
    /// Run the Python peers on cells up to this many logits (default 64Mi; 1Mi with --quick).
    #[arg(long)]
    peer_max_elements: Option<usize>,
    /// Input seed.
    #[arg(long, default_value_t = 0x5eed)]
    seed: u64,
    /// Output format.
    #[arg(long, value_enum, default_value = "table")]
    format: Format,
    /// Write the output here instead of standard output.
    #[arg(long)]
    out: Option<PathBuf>,
    /// Also write results.json, results.md and results.svg into this folder.
    #[arg(long)]
    out_dir: Option<PathBuf>,
    /// Count instructions and simulated cache misses under Valgrind instead of timing.
    #[arg(long)]
    counts: bool,
    /// Calls counted per configuration with --counts.
    #[arg(long, default_value_t = counts::DEFAULT_CALLS)]
    count_calls: usize,
}

#[derive(Args)]
struct AbArgs {
    /// The other build's loss-bench binary (default: this one, with `--against-backend`).
    #[arg(long, required_unless_present = "against_backend")]
    against: Option<PathBuf>,
    /// Compare with another backend instead of another build: the other side runs this backend
    /// on every configuration's cell and op (`--backend rayon --threads 2 --against-backend cpu`).
    #[arg(long)]
    against_backend: Option<String>,
    /// The other side's thread count with `--against-backend`.
    #[arg(long, default_value_t = 1, requires = "against_backend")]
    against_threads: usize,
    /// Exit 1 when a configuration is slower than this with confidence (`5%`).
    #[arg(long)]
    fail_above: Option<String>,
    /// Differences inside this band are `same`.
    #[arg(long, default_value = "3%")]
    min_effect: String,
    /// The grid, backends and output, as for `run`.
    #[command(flatten)]
    run: RunArgs,
}

#[derive(Args)]
struct PlotArgs {
    /// A result file of `loss-bench run --format json`.
    results: PathBuf,
    /// The SVG to write.
    #[arg(long)]
    out: PathBuf,
    /// The batch size to plot (default: the one measured at the most class counts).
    #[arg(long)]
    batch: Option<usize>,
}

#[derive(Args)]
struct CompareArgs {
    /// The baseline result file.
    baseline: PathBuf,
    /// The current result file.
    current: PathBuf,
    /// Largest tolerated regression (`10%`, `0.1`); default 10% for timings, 2% for counts.
    #[arg(long)]
    max_regression: Option<String>,
}

#[derive(Args)]
struct RecommendArgs {
    /// A result file of `loss-bench run --format json`.
    results: PathBuf,
    /// Write the profile (JSON) here.
    #[arg(long)]
    out: Option<PathBuf>,
}

fn verify(args: VerifyArgs) -> ExitCode {
    let mut paths = conformance::vendored_vectors_paths();
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
                ok &= outcome.passed(!args.backend.is_empty());
            }
        }
    }
    if ok {
        println!("verify: every case passed on every backend that ran");
        ExitCode::SUCCESS
    } else {
        println!("verify: FAILED");
        ExitCode::FAILURE
    }
}

fn run_options(args: &RunArgs) -> Result<RunOptions, Error> {
    let mut opts = RunOptions::default();
    if args.quick {
        opts.batch = vec![1, 256, 2048];
        opts.classes = vec![10, 1000, 32000];
        opts.quick = true;
        opts.max_bytes = 32 << 20;
        opts.peer_max_elements = 1 << 20;
    }
    if !args.batch.is_empty() {
        opts.batch = args.batch.clone();
    }
    if !args.classes.is_empty() {
        opts.classes = args.classes.clone();
    }
    if !args.threads.is_empty() {
        opts.threads = args.threads.clone();
    }
    opts.cells = args
        .cells
        .iter()
        .map(|c| {
            let (n, k) = c
                .split_once('x')
                .ok_or_else(|| Error::Usage(format!("--cells {c:?}: expected NxC")))?;
            let parse = |v: &str| {
                v.trim()
                    .parse::<usize>()
                    .map_err(|e| Error::Usage(format!("--cells {c:?}: {e}")))
            };
            Ok((parse(n)?, parse(k)?))
        })
        .collect::<Result<_, Error>>()?;
    opts.backends = args.backend.clone();
    opts.ops = bench_harness::schema::parse_ops(&args.op)?;
    opts.weighted = !args.unweighted;
    opts.reduction = Reduction::parse(&args.reduction).map_err(|e| Error::Usage(e.to_string()))?;
    opts.dtypes = args
        .dtype
        .iter()
        .map(|d| {
            loss_core::DType::parse(d.trim())
                .ok_or_else(|| Error::Usage(format!("--dtype {d:?}: expected f32, bf16 or f16")))
        })
        .collect::<Result<_, Error>>()?;
    opts.z_loss = args.z_loss;
    opts.softcap = args.softcap;
    opts.position_weights = args.position_weights;
    opts.validate_extensions()?;
    if let Some(mib) = args.max_mib {
        opts.max_bytes = mib << 20;
    }
    opts.python_peers = !args.no_peers;
    if let Some(n) = args.peer_max_elements {
        opts.peer_max_elements = n;
    }
    opts.seed = args.seed;
    opts.worker = Some(std::env::current_exe().map_err(|e| Error::io("loss-bench", e))?);
    Ok(opts)
}

fn write_out(text: &str, out: Option<&PathBuf>) -> Result<(), Error> {
    match out {
        None => {
            print!("{text}");
            Ok(())
        }
        Some(p) => std::fs::write(p, text).map_err(|e| Error::io(p, e)),
    }
}

fn run_cmd(args: RunArgs) -> Result<ExitCode, Error> {
    let mut opts = run_options(&args)?;
    let report = if args.counts {
        opts.threads = vec![1];
        counts::run(&opts, args.count_calls)?
    } else {
        run::run(&opts)
    };
    write_out(&format::render(&report, args.format), args.out.as_ref())?;
    if let Some(out) = &args.out {
        eprintln!("wrote {}", out.display());
        if args.format != Format::Table {
            eprint!("{}", format::table(&report));
        }
    }
    if let Some(dir) = &args.out_dir {
        std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
        for (name, f) in [
            ("results.json", Format::Json),
            ("results.md", Format::Markdown),
        ] {
            let path = dir.join(name);
            std::fs::write(&path, format::render(&report, f)).map_err(|e| Error::io(&path, e))?;
        }
        if !report.is_counts() && !report.results.is_empty() {
            plot::plot(&report, None, &dir.join("results.svg"))?;
        }
        eprintln!("wrote {}/results.{{json,md,svg}}", dir.display());
    }
    let disagreeing: Vec<_> = report.results.iter().filter(|r| !r.agrees).collect();
    if disagreeing.is_empty() {
        Ok(ExitCode::SUCCESS)
    } else {
        for r in &disagreeing {
            eprintln!(
                "DISAGREES with the reference: {} {} {}x{} (max rel err {:.2e}){}",
                r.label(),
                r.op,
                r.batch,
                r.classes,
                r.max_rel_error,
                r.note.as_ref().map_or(String::new(), |n| format!(": {n}"))
            );
        }
        Ok(ExitCode::FAILURE)
    }
}

fn ab_cmd(args: AbArgs) -> Result<ExitCode, Error> {
    if args.run.counts {
        return Err(Error::Usage(
            "ab times; for counts, run --counts with each build and compare".into(),
        ));
    }
    let current = std::env::current_exe().map_err(|e| Error::io("loss-bench", e))?;
    let opts = AbOptions {
        run: run_options(&args.run)?,
        against: args.against.unwrap_or_else(|| current.clone()),
        against_backend: args.against_backend.map(|b| (b, args.against_threads)),
        current,
        min_effect: compare::parse_threshold(&args.min_effect)?,
        fail_above: args
            .fail_above
            .as_deref()
            .map(compare::parse_threshold)
            .transpose()?,
    };
    let report = ab::ab(&opts)?;
    write_out(&ab::render(&report, args.run.format), args.run.out.as_ref())?;
    if let Some(out) = &args.run.out {
        eprintln!("wrote {}", out.display());
        if args.run.format != Format::Table {
            eprint!("{}", ab::render(&report, Format::Table));
        }
    }
    if report.failed() {
        for r in report
            .results
            .iter()
            .filter(|r| r.fails || r.verdict == ab::Verdict::Disagrees)
        {
            eprintln!(
                "ab: {} {}",
                r.describe(),
                if r.fails {
                    "is slower beyond --fail-above"
                } else {
                    "DISAGREES with its reference"
                }
            );
        }
        Ok(ExitCode::FAILURE)
    } else {
        Ok(ExitCode::SUCCESS)
    }
}

/// A timings file, or why it is not one.
fn load_timings(path: &std::path::Path) -> Result<RunReport, Error> {
    let report = RunReport::load(path)?;
    if report.is_counts() {
        return Err(Error::Mismatch(format!(
            "{}: a counts file (run --counts) has no timings",
            path.display()
        )));
    }
    Ok(report)
}

fn plot_cmd(args: PlotArgs) -> Result<ExitCode, Error> {
    let report = load_timings(&args.results)?;
    plot::plot(&report, args.batch, &args.out)?;
    eprintln!("wrote {}", args.out.display());
    Ok(ExitCode::SUCCESS)
}

fn compare_cmd(args: CompareArgs) -> Result<ExitCode, Error> {
    let threshold = args
        .max_regression
        .as_deref()
        .map(compare::parse_threshold)
        .transpose()?;
    let base = RunReport::load(&args.baseline)?;
    let cur = RunReport::load(&args.current)?;
    let c = compare::compare(&base, &cur, threshold)?;
    print!("{}", compare::render(&c));
    let mut regressed: Vec<_> = c.regressions().map(|x| x.cell.clone()).collect();
    regressed.dedup();
    if regressed.is_empty() {
        println!("compare: no regression beyond {:.1}%", c.threshold * 100.0);
        Ok(ExitCode::SUCCESS)
    } else {
        println!(
            "compare: {} regressed cell(s): {}",
            regressed.len(),
            regressed.join("; ")
        );
        Ok(ExitCode::FAILURE)
    }
}

fn recommend_cmd(args: RecommendArgs) -> Result<ExitCode, Error> {
    let report = load_timings(&args.results)?;
    let profile = bench_harness::profile::profile_of(&report);
    print!("{}", profile.render());
    if let Some(out) = &args.out {
        profile.save(out)?;
        eprintln!("wrote {}", out.display());
    }
    Ok(ExitCode::SUCCESS)
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Some(Command::Verify(args)) => Ok(verify(args)),
        Some(Command::Run(args)) => run_cmd(args),
        Some(Command::Plot(args)) => plot_cmd(args),
        Some(Command::Compare(args)) => compare_cmd(args),
        Some(Command::Recommend(args)) => recommend_cmd(args),
        Some(Command::Ab(args)) => ab_cmd(args),
        Some(Command::Devices) => {
            let mut any = false;
            for spec in backends::registry().into_iter().filter(|s| s.device) {
                match (spec.build)(spec.name, BackendConfig { threads: None }) {
                    Ok(built) => {
                        if let Some(d) = built.device {
                            any = true;
                            let kind = if d.timing_caveat().is_some() {
                                "software"
                            } else {
                                "hardware"
                            };
                            println!("{}\t{kind}\t{}", spec.name, d.describe_device());
                        }
                    }
                    Err(e) => eprintln!("{}: {e}", spec.name),
                }
            }
            Ok(if any {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            })
        }
        Some(Command::Worker) => {
            let stdin = std::io::stdin();
            worker::serve(stdin.lock(), std::io::stdout().lock()).map(|()| ExitCode::SUCCESS)
        }
        Some(Command::CountsChild { plan, out }) => {
            counts::child_main(&plan, &out).map(|()| ExitCode::SUCCESS)
        }
        None => run_cmd(cli.run),
    };
    result.unwrap_or_else(|e| {
        eprintln!("error: {e}");
        ExitCode::from(2)
    })
}
