//! The report's plots (PNG and SVG in `plots/`): per algorithm gold and proxy vs step, gold vs
//! sqrt(KL) and time per phase; RM accuracy before and after RL.
use super::tables::all_phases;
use crate::error::Result;
use crate::experiment::aggregate::{Aggregate, Cell, CurvePoint};
use crate::experiment::arm::{algo_key, algo_label};
use crate::experiment::format::scaled;
use crate::experiment::stats::Summary;
use crate::report::plot::{BarChart, BarSeries, LineChart, Series};
use std::path::{Path, PathBuf};

/// One figure written (PNG + SVG).
#[derive(Debug, Clone)]
pub(super) struct Figure {
    pub title: String,
    pub caption: String,
    pub png: PathBuf,
    pub svg: PathBuf,
}

pub(super) fn plots(dir: &Path, agg: &Aggregate) -> Result<Vec<Figure>> {
    let mut out = vec![];
    let mut push =
        |title: &str, caption: String, r: (PathBuf, PathBuf)| out.push(Figure { title: title.to_string(), caption, png: r.0, svg: r.1 });
    for algo in agg.algos() {
        let cells: Vec<&Cell> = agg.cells.iter().filter(|c| c.algo == algo).collect();
        let a = algo_label(algo);
        let key = algo_key(algo);
        let band = |f: fn(&CurvePoint) -> Summary, c: &Cell| -> Vec<(f64, f64, f64)> {
            c.curve.iter().map(|p| (p.step as f64, f(p).mean, f(p).ci95)).collect()
        };
        let gold: Vec<Series> = cells.iter().map(|c| Series::mean_ci(c.arm.name(), &band(|p| p.gold, c))).collect();
        let proxy: Vec<Series> = cells.iter().map(|c| Series::mean_ci(c.arm.name(), &band(|p| p.proxy, c))).collect();
        let t = format!("Gold reward vs step ({a}, held-out prompts)");
        let r = LineChart::new(&t, "RL step (-1 = pi_init)", "gold reward (mean over prompts)")
            .draw(&dir.join(format!("gold_vs_step_{key}")), &gold)?;
        push(&t, "Mean over seeds, band = 95% CI. An eval at step t follows update t.".into(), r);
        let t = format!("Proxy reward vs step ({a}, held-out prompts)");
        let r = LineChart::new(&t, "RL step (-1 = pi_init)", "proxy RM score").draw(&dir.join(format!("proxy_vs_step_{key}")), &proxy)?;
        push(
            &t,
            "The frozen proxy RM's score (for online methods not the reward they trained on; older runs without it show that reward)."
                .into(),
            r,
        );
        let kl: Vec<Series> = cells
            .iter()
            .map(|c| {
                let rows: Vec<(f64, f64, f64)> = c.curve.iter().map(|p| (p.sqrt_kl.mean, p.gold.mean, p.gold.ci95)).collect();
                Series::mean_ci(c.arm.name(), &rows)
            })
            .collect();
        let t = format!("Gold vs sqrt(KL) ({a})");
        let r = LineChart::new(&t, "d = sqrt(KL to pi_init)", "gold reward").draw(&dir.join(format!("gold_vs_sqrt_kl_{key}")), &kl)?;
        let d = agg.matched_d.get(&algo).copied().unwrap_or(f64::NAN);
        push(&t, format!("Gao et al.'s picture: each point is one eval step, x = seed-mean sqrt(KL), y = seed-mean gold ± 95% CI. Matched d = {d:.3}."), r);

        let phases: Vec<String> = all_phases(agg).into_iter().filter(|p| p != "time/step").collect();
        if !phases.is_empty() {
            let cats: Vec<String> = phases.iter().map(|p| p.trim_start_matches("time/").to_string()).collect();
            let series: Vec<BarSeries> = cells
                .iter()
                .map(|c| {
                    let s: Vec<Summary> =
                        phases.iter().map(|p| c.times.iter().find(|(q, _)| q == p).map(|(_, s)| *s).unwrap_or(Summary::EMPTY)).collect();
                    BarSeries::new(c.arm.name(), s.iter().map(|s| s.mean).collect())
                        .with_intervals(s.iter().map(|s| s.interval()).collect())
                })
                .collect();
            let t = format!("Time per phase ({a})");
            let r = BarChart::new(&t, "phase", "seconds per step").draw(&dir.join(format!("time_per_phase_{key}")), &cats, &series)?;
            push(&t, "Mean seconds per RL step (total over the run / steps; eval amortized), ± 95% CI over seeds.".into(), r);
        }
    }
    let rm: Vec<&Cell> = agg.cells.iter().filter(|c| c.get("rm_acc_before").n + c.get("rm_acc_after").n > 0).collect();
    if !rm.is_empty() {
        let cats: Vec<String> = rm.iter().map(|c| format!("{} ({})", c.arm, algo_label(c.algo))).collect();
        let pct = |s: Summary| scaled(&s, if s.mean <= 1.0 { 100.0 } else { 1.0 });
        let mk = |name: &str, key: &str| {
            let s: Vec<Summary> = rm.iter().map(|c| pct(c.get(key))).collect();
            BarSeries::new(name, s.iter().map(|s| s.mean).collect()).with_intervals(s.iter().map(|s| s.interval()).collect())
        };
        let t = "RM accuracy on held-out gold pairs";
        let r = BarChart::new(t, "", "accuracy (%)").draw(
            &dir.join("rm_accuracy"),
            &cats,
            &[mk("before RL", "rm_acc_before"), mk("after RL", "rm_acc_after")],
        )?;
        push(t, "Before and after RL (for R2M: with the policy's feedback and w(T)); ± 95% CI where several runs report it.".into(), r);
    }
    Ok(out)
}
