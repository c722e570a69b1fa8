//! Experiments: a grid of runs (arm x algo x seed), read back and reported.
//!
//! Running a grid (`r2m experiment`, `r2m demo`):
//! - [`arm`]: what runs are of: an arm (a method or a named variant) under an algorithm, and their
//!   names in folders, files and text.
//! - [`config`]: the grid's config: arms, algorithms, seeds, each run's config.
//! - [`shared`]: the artefacts every run shares (pairs, proxy RM, RM accuracy before RL).
//! - [`grid`]: the runner: shared artefacts, one `r2m rl` run per arm x algo x seed, resume, RM
//!   accuracy after RL, the report; [`finish`]: what follows a run's training; `pool`: runs side
//!   by side as child processes; [`progress`]: progress lines.
//! - [`archive`]: a grid's results kept where `out` does not survive (the repository): finished
//!   runs' metrics, the pairs, RM fingerprints and the report, restored on a fresh machine.
//!
//! Reporting a grid folder:
//! - [`runs`]: run folders read; [`run_stats`]: per run, its curves and numbers.
//! - [`stats`]: mean, 95% CI (Student t), Welch and paired t-tests, interpolation at a matched
//!   sqrt(KL), the length-controlled win rate.
//! - [`aggregate`]: per arm x algo aggregates over seeds, comparisons with vanilla, the ablations.
//! - [`format`]: numbers as text; [`verdict`]: the verdict in words.
//! - [`report`]: `results.csv`, `runs.csv`, `comparisons.csv`, plots, `report.md`, `report.html`
//!   ([`write_report`]).
pub mod aggregate;
pub mod archive;
pub mod arm;
pub mod config;
pub mod finish;
pub mod format;
pub mod grid;
mod pool;
pub mod progress;
pub mod report;
pub mod run_stats;
pub mod runs;
pub mod shared;
pub mod stats;
pub mod verdict;

pub use aggregate::aggregate;
pub use arm::Arm;
pub use config::ExperimentConfig;
pub use grid::{run_grid, GridOutcome};
pub use report::{write_report, write_report_with, ReportSummary};
pub use runs::load_grid;
pub use runs::AggregateOptions;
