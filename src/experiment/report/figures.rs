//! The report's plots (PNG and SVG in `plots/`): per algorithm gold and proxy vs step, gold vs
//! sqrt(KL) and time per phase; RM accuracy before and after RL.
//!
//! The line plots show each arm as its seed mean (bold) over its seeds (thin), with the 95% CI
//! shaded and cut at the axes, which follow the lines. With more arms than one panel reads well
//! (6 lines), they become small multiples: vanilla and R2M, in the same colours, in every panel as
//! the reference, and the other baselines, R2M's ablations and the variants each in a panel of
//! their own.
use super::tables::all_phases;
use crate::error::Result;
use crate::experiment::aggregate::{Aggregate, Cell, CurvePoint};
use crate::experiment::arm::{algo_key, algo_label, Arm, ABLATIONS, BASELINE, FULL};
use crate::experiment::format::scaled;
use crate::experiment::run_stats::{eval_curve, EvalPoint};
use crate::experiment::runs::Grid;
use crate::experiment::stats::Summary;
use crate::report::plot::{okabe_ito, BarChart, BarSeries, BarStyle, LineChart, Panel, Series};
use plotters::style::RGBColor;
use std::path::{Path, PathBuf};

/// One figure written (PNG + SVG).
#[derive(Debug, Clone)]
pub(super) struct Figure {
    pub title: String,
    pub caption: String,
    pub png: PathBuf,
    pub svg: PathBuf,
}

/// Lines one panel holds at most.
const PER_PANEL: usize = 6;
/// Phases a time plot shows on their own (the others summed as "other").
const PHASES_SHOWN: usize = 5;
const NOTE: &str = "bold: mean over seeds · thin: each seed · shaded: 95% CI, cut at the axes";

/// The colour an arm has in every figure, where it has one: vanilla black, R2M vermillion.
fn arm_color(arm: &Arm) -> Option<RGBColor> {
    if arm.is(BASELINE) {
        Some(okabe_ito::BLACK)
    } else if arm.is(FULL) {
        Some(okabe_ito::VERMILLION)
    } else {
        None
    }
}

/// The panels of one algorithm's line plots: all its arms in one when they fit, else vanilla and
/// R2M in each, with the other baselines, the ablations and the variants (by at most
/// `PER_PANEL` lines a panel).
pub(super) fn panels<'a>(cells: &[&'a Cell]) -> Vec<(String, Vec<&'a Cell>)> {
    if cells.len() <= PER_PANEL {
        return vec![(String::new(), cells.to_vec())];
    }
    let refs: Vec<&Cell> = cells.iter().copied().filter(|c| c.arm.is(BASELINE) || c.arm.is(FULL)).collect();
    let kind = |c: &Cell| match &c.arm {
        Arm::Variant { .. } => 2,
        Arm::Method(m) if ABLATIONS.contains(m) => 1,
        _ => 0,
    };
    let titles = ["the other baselines", "R2M's ablations", "variants"];
    let room = PER_PANEL.saturating_sub(refs.len()).max(1);
    let mut out = vec![];
    for (k, title) in titles.iter().enumerate() {
        let group: Vec<&Cell> = cells.iter().copied().filter(|c| !refs.iter().any(|r| r.arm == c.arm) && kind(c) == k).collect();
        let chunks: Vec<&[&Cell]> = group.chunks(room).collect();
        for (i, chunk) in chunks.iter().enumerate() {
            let mut t = title.to_string();
            if chunks.len() > 1 {
                t.push_str(&format!(" ({}/{})", i + 1, chunks.len()));
            }
            out.push((t, refs.iter().copied().chain(chunk.iter().copied()).collect()));
        }
    }
    out
}

/// An arm's line: the seed mean of `f` at each step, the seeds' own lines, the 95% CI band.
fn step_series(grid: &Grid, c: &Cell, f: fn(&CurvePoint) -> Summary, g: fn(&EvalPoint) -> f64) -> Series {
    let rows: Vec<(f64, f64, f64)> = c.curve.iter().map(|p| (p.step as f64, f(p).mean, f(p).ci95)).collect();
    let seeds = c.runs.iter().map(|&i| eval_curve(&grid.runs[i]).iter().map(|p| (p.step as f64, g(p))).collect()).collect();
    let s = Series::mean_ci(c.arm.name(), &rows).with_seeds(seeds);
    match arm_color(&c.arm) {
        Some(col) => s.with_color(col),
        None => s,
    }
}

/// Gold against sqrt(KL): the seed means at each eval step (pi_init at d = 0), each seed's own
/// curve, the CI of gold as error bars (the points' x move, so no band).
fn kl_series(grid: &Grid, c: &Cell) -> Series {
    let d = |p: &EvalPoint| if p.step == -1 { 0.0 } else { p.sqrt_kl() };
    let points = c.curve.iter().map(|p| (p.sqrt_kl.mean, p.gold.mean)).collect();
    let bars = c.curve.iter().map(|p| (p.sqrt_kl.mean, p.gold.mean - p.gold.ci95, p.gold.mean + p.gold.ci95)).collect();
    let seeds = c.runs.iter().map(|&i| eval_curve(&grid.runs[i]).iter().map(|p| (d(p), p.gold)).collect()).collect();
    let s = Series::new(c.arm.name(), points).with_error_bars(bars).with_seeds(seeds);
    match arm_color(&c.arm) {
        Some(col) => s.with_color(col),
        None => s,
    }
}

pub(super) fn plots(dir: &Path, grid: &Grid, agg: &Aggregate) -> Result<Vec<Figure>> {
    let mut out = vec![];
    let mut push =
        |title: &str, caption: String, r: (PathBuf, PathBuf)| out.push(Figure { title: title.to_string(), caption, png: r.0, svg: r.1 });
    for algo in agg.algos() {
        let cells: Vec<&Cell> = agg.cells.iter().filter(|c| c.algo == algo).collect();
        let groups = panels(&cells);
        let (a, key) = (algo_label(algo), algo_key(algo));
        let lines = |make: &dyn Fn(&Cell) -> Series| -> Vec<Panel> {
            groups.iter().map(|(t, cs)| Panel::new(t.clone(), cs.iter().map(|c| make(c)).collect())).collect()
        };
        let chart = |title: &str, x: &str, y: &str, note: &str| {
            let mut c = LineChart::new(title, x, y);
            c.note = Some(note.to_string());
            c
        };
        let t = format!("Gold reward vs step ({a}, held-out prompts)");
        let gold = lines(&|c| step_series(grid, c, |p| p.gold, |p| p.gold));
        let r = chart(&t, "RL step (-1 = pi_init)", "gold reward (mean over prompts)", NOTE)
            .draw_panels(&dir.join(format!("gold_vs_step_{key}")), &gold)?;
        push(&t, "Mean over seeds, band = 95% CI. An eval at step t follows update t.".into(), r);
        let t = format!("Proxy reward vs step ({a}, held-out prompts)");
        let proxy = lines(&|c| step_series(grid, c, |p| p.proxy, |p| p.proxy));
        let r =
            chart(&t, "RL step (-1 = pi_init)", "proxy RM score", NOTE).draw_panels(&dir.join(format!("proxy_vs_step_{key}")), &proxy)?;
        push(
            &t,
            "The frozen proxy RM's score (for online methods not the reward they trained on; older runs without it show that reward)."
                .into(),
            r,
        );
        let t = format!("Gold vs sqrt(KL) ({a})");
        let kl = lines(&|c| kl_series(grid, c));
        let note = "bold: seed means at each eval step ± 95% CI · thin: each seed's own curve";
        let r = chart(&t, "d = sqrt(KL to pi_init)", "gold reward", note).draw_panels(&dir.join(format!("gold_vs_sqrt_kl_{key}")), &kl)?;
        let d = agg.matched_d.get(&algo).copied().unwrap_or(f64::NAN);
        push(&t, format!("Gao et al.'s picture: each point is one eval step, x = seed-mean sqrt(KL), y = seed-mean gold ± 95% CI. Matched d = {d:.3}."), r);

        let phases: Vec<String> = all_phases(agg).into_iter().filter(|p| p != "time/step").collect();
        if !phases.is_empty() {
            let t = format!("Time per phase ({a})");
            let (cats, series, totals) = time_bars(&cells, &phases);
            let mut chart = BarChart::new(&t, "", "seconds per step");
            (chart.style, chart.horizontal, chart.totals) = (BarStyle::Stacked, true, Some(totals));
            chart.note = Some("one bar per arm, its phases stacked · whisker: 95% CI of the whole step over seeds".into());
            let r = chart.draw(&dir.join(format!("time_per_phase_{key}")), &cats, &series)?;
            push(&t, "Mean seconds per RL step (total over the run / steps; eval amortized), ± 95% CI over seeds.".into(), r);
        }
    }
    let rm: Vec<&Cell> = agg.cells.iter().filter(|c| c.get("rm_acc_before").n + c.get("rm_acc_after").n > 0).collect();
    if !rm.is_empty() {
        let cats: Vec<String> = rm.iter().map(|c| format!("{} ({})", c.arm, algo_label(c.algo))).collect();
        let pct = |s: Summary| scaled(&s, if s.mean <= 1.0 { 100.0 } else { 1.0 });
        let mk = |name: &str, key: &str, col: RGBColor| {
            let s: Vec<Summary> = rm.iter().map(|c| pct(c.get(key))).collect();
            let mut b = BarSeries::new(name, s.iter().map(|s| s.mean).collect()).with_intervals(s.iter().map(|s| s.interval()).collect());
            b.color = Some(col);
            b
        };
        let t = "RM accuracy on held-out gold pairs";
        let mut chart = BarChart::new(t, "", "accuracy (%)");
        (chart.style, chart.horizontal) = (BarStyle::Points, true);
        chart.note = Some("dot: mean over seeds · whisker: 95% CI".into());
        let r = chart.draw(
            &dir.join("rm_accuracy"),
            &cats,
            &[mk("before RL", "rm_acc_before", okabe_ito::BLUE), mk("after RL", "rm_acc_after", okabe_ito::VERMILLION)],
        )?;
        push(t, "Before and after RL (for R2M: with the policy's feedback and w(T)); ± 95% CI where several runs report it.".into(), r);
    }
    Ok(out)
}

/// Time per phase as stacks, one per arm: the `PHASES_SHOWN` phases that take longest (most
/// seconds in some arm) in step order, the rest summed as "other"; and around each stack's end the
/// 95% CI of the whole step.
fn time_bars(cells: &[&Cell], phases: &[String]) -> (Vec<String>, Vec<BarSeries>, Vec<(f64, f64)>) {
    let mean = |c: &Cell, p: &str| c.times.iter().find(|(q, _)| q == p).map(|(_, s)| s.mean).filter(|v| v.is_finite()).unwrap_or(0.0);
    let peak = |p: &String| cells.iter().map(|c| mean(c, p)).fold(0.0, f64::max);
    let mut by_size: Vec<&String> = phases.iter().filter(|p| peak(p) > 0.0).collect();
    by_size.sort_by(|a, b| peak(b).total_cmp(&peak(a)));
    let shown: Vec<&String> = phases.iter().filter(|p| by_size.iter().take(PHASES_SHOWN).any(|q| q == p)).collect();
    let rest: Vec<&String> = phases.iter().filter(|p| !shown.contains(p)).collect();
    let mut series: Vec<BarSeries> =
        shown.iter().map(|p| BarSeries::new(p.trim_start_matches("time/"), cells.iter().map(|c| mean(c, p)).collect())).collect();
    if rest.iter().any(|p| peak(p) > 0.0) {
        let mut other = BarSeries::new("other", cells.iter().map(|c| rest.iter().map(|p| mean(c, p)).sum()).collect());
        other.color = Some(RGBColor(170, 170, 170));
        series.push(other);
    }
    let totals = cells
        .iter()
        .enumerate()
        .map(|(i, c)| {
            let end: f64 = series.iter().map(|s| s.values[i]).sum();
            let ci = c.get("time_step").ci95;
            (end - ci, end + ci)
        })
        .collect();
    (cells.iter().map(|c| c.arm.name()).collect(), series, totals)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::r2m::Method;
    use crate::rl::config::Algo;

    fn cell(arm: Arm) -> Cell {
        Cell {
            arm,
            algo: Algo::Grpo,
            runs: vec![],
            seeds: vec![],
            run_stats: vec![],
            summaries: vec![],
            times: vec![],
            matched_d: f64::NAN,
            rm_grid: None,
            curve: vec![],
            overopt: None,
        }
    }

    #[test]
    fn many_arms_become_panels_with_vanilla_and_r2m_in_each() {
        let mut arms: Vec<Arm> = Method::all().into_iter().map(Arm::Method).collect();
        for v in ["r2m-batch-std", "r2m-rank-frozen", "r2m-sharp-attn", "vanilla-batch-std"] {
            arms.push(Arm::variant(v, Method::R2m));
        }
        let cells: Vec<Cell> = arms.into_iter().map(cell).collect();
        let refs: Vec<&Cell> = cells.iter().collect();
        let p = panels(&refs);
        let names: Vec<(String, Vec<String>)> = p.iter().map(|(t, cs)| (t.clone(), cs.iter().map(|c| c.arm.name()).collect())).collect();
        assert_eq!(names.len(), 3, "{names:?}");
        assert_eq!(names[0].1, ["vanilla", "r2m", "pretrained-rm", "iterative-head"]);
        assert_eq!(names[1].1, ["vanilla", "r2m", "r2m-no-train", "r2m-noise", "r2m-no-bt", "r2m-no-gre"]);
        assert_eq!(names[2].0, "variants");
        for (_, cs) in &p {
            assert!(cs.len() <= PER_PANEL);
            // Vanilla and R2M keep their colours; the others get distinct ones from the palette.
            let fixed: Vec<Option<RGBColor>> = cs.iter().map(|c| arm_color(&c.arm)).collect();
            let colors = crate::report::plot::assign_colors(&fixed);
            assert_eq!((colors[0], colors[1]), (okabe_ito::BLACK, okabe_ito::VERMILLION));
            assert!(colors.iter().enumerate().all(|(i, a)| colors[i + 1..].iter().all(|b| b != a)), "{colors:?}");
        }
        // Few arms: one panel with all of them.
        assert_eq!(panels(&refs[..5]).len(), 1);
        // Many variants: as many panels as they need.
        let many: Vec<Cell> = (0..9).map(|i| cell(Arm::variant(format!("v{i}"), Method::R2m))).collect();
        let p = panels(&many.iter().collect::<Vec<_>>());
        assert_eq!(p.iter().map(|(t, cs)| (t.as_str(), cs.len())).collect::<Vec<_>>(), [("variants (1/2)", 6), ("variants (2/2)", 3)]);
    }
}
