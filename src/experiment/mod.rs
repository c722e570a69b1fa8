//! Experiments: a grid of runs (method x algo x seed), read back and reported.
//!
//! - [`grid`]: the runner (`r2m experiment`, `r2m demo`): shared artefacts (pairs, proxy RM),
//!   one `r2m rl` run per method x algo x seed, resume, RM accuracy before/after, the report.
//! - [`stats`]: mean, 95% CI (Student t), Welch and paired t-tests, interpolation at a matched
//!   sqrt(KL), the length-controlled win rate.
//! - [`aggregate`]: a grid folder -> runs -> per method x algo aggregates over seeds, comparisons
//!   with vanilla and the ablation table.
//! - [`archive`]: a grid's results kept where `out` does not survive (the repository): finished
//!   runs' metrics, the pairs, RM fingerprints and the report, restored on a fresh machine.
//! - [`report`]: `results.csv`, `runs.csv`, `comparisons.csv`, plots, `report.md`, `report.html`
//!   ([`write_report`]).
pub mod aggregate;
pub mod archive;
pub mod grid;
pub mod report;
pub mod stats;

pub use aggregate::{aggregate, load_grid, AggregateOptions};
pub use grid::{run_grid, ExperimentConfig, GridOutcome};
pub use report::{write_report, write_report_with, ReportSummary};
