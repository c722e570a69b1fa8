//! The experiment report: CSVs, plots and a Markdown + self-contained HTML report, written into
//! the grid folder by [`write_report`].
//!
//! Files (all in the grid folder):
//! - `results.csv`: one row per arm x algo, every aggregate as mean and 95% CI half-width.
//! - `runs.csv`: one row per run folder (incomplete ones too, with their reason).
//! - `comparisons.csv`: each arm vs vanilla and R2M vs each ablation (Welch and paired tests).
//! - `plots/`: gold and proxy vs step, gold vs sqrt(KL) (one figure per algo), RM accuracy, time
//!   per phase; PNG and SVG.
//! - `report.md` (plots linked) and `report.html` (plots embedded as base64 PNG; no external
//!   references), with the setup, every number with its CI, the comparisons and a plain verdict.
//!
//! Here: [`tables`] (the CSVs and the report's tables), [`setup`] (the runs' settings), [`figures`]
//! (the plots), [`document`] (the report as blocks) and [`markup`] (blocks to Markdown and HTML).
use super::aggregate::aggregate;
use super::runs::AggregateOptions;
use super::runs::{load_grid, Incomplete};
use super::verdict::verdicts;
use crate::error::Result;
use document::document;
use figures::plots;
use markup::{to_html, to_markdown};
use std::path::{Path, PathBuf};
use tables::{comparisons_table, main_table, results_table, runs_table};

mod document;
mod figures;
mod markup;
mod setup;
mod tables;

/// What [`write_report`] wrote, and the main table for printing.
#[derive(Debug, Clone)]
pub struct ReportSummary {
    pub grid_dir: PathBuf,
    pub results_csv: PathBuf,
    pub runs_csv: PathBuf,
    pub comparisons_csv: PathBuf,
    pub report_md: PathBuf,
    pub report_html: PathBuf,
    /// Every plot file (PNG and SVG).
    pub plots: Vec<PathBuf>,
    /// The main results table, aligned for the terminal.
    pub table: String,
    /// The plain-language verdict lines.
    pub verdicts: Vec<String>,
    /// Run folders left out of the aggregates.
    pub incomplete: Vec<Incomplete>,
    /// Runs aggregated.
    pub n_runs: usize,
}

/// Reads the grid folder, aggregates it with the default options (matched d = the smallest final
/// sqrt(KL) per algorithm) and writes every report file into it.
pub fn write_report(grid_dir: &Path) -> Result<ReportSummary> {
    write_report_with(grid_dir, &AggregateOptions::default())
}

/// [`write_report`] with options.
pub fn write_report_with(grid_dir: &Path, opts: &AggregateOptions) -> Result<ReportSummary> {
    let grid = load_grid(grid_dir, opts)?;
    let agg = aggregate(&grid, opts);

    let results_csv = grid_dir.join("results.csv");
    results_table(&agg).write_csv(&results_csv)?;
    let runs_csv = grid_dir.join("runs.csv");
    runs_table(&grid, &agg).write_csv(&runs_csv)?;
    let comparisons_csv = grid_dir.join("comparisons.csv");
    comparisons_table(&agg).write_csv(&comparisons_csv)?;

    let figures = plots(&grid_dir.join("plots"), &grid, &agg)?;
    let verdicts = verdicts(&agg);
    let blocks = document(&grid, &agg, &verdicts, &figures);
    let report_md = grid_dir.join("report.md");
    crate::checkpoint::write_atomic(&report_md, to_markdown(&blocks).as_bytes())?;
    let report_html = grid_dir.join("report.html");
    let title = format!("R2M experiment report: {}", dir_name(grid_dir));
    crate::checkpoint::write_atomic(&report_html, to_html(&title, &blocks)?.as_bytes())?;

    Ok(ReportSummary {
        grid_dir: grid_dir.to_path_buf(),
        results_csv,
        runs_csv,
        comparisons_csv,
        report_md,
        report_html,
        plots: figures.iter().flat_map(|f| [f.png.clone(), f.svg.clone()]).collect(),
        table: main_table(&agg, false).to_text(),
        verdicts,
        incomplete: grid.incomplete.clone(),
        n_runs: grid.runs.len(),
    })
}

pub(crate) fn dir_name(p: &Path) -> String {
    p.file_name().map(|s| s.to_string_lossy().into_owned()).unwrap_or_else(|| p.display().to_string())
}
