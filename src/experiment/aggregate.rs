//! A grid's runs aggregated over seeds: per arm x algorithm ([`Cell`]) the mean and 95% CI over
//! seeds of every metric of [`RunStats`], the mean eval curve and the overoptimization test
//! ([`Overopt`]); then every arm against vanilla under the same algorithm, R2M against its
//! ablations, and R2M against the other algorithms' vanilla baselines ([`Comparison`]: Welch
//! t-test, the paired t-test beside it).
//!
//! Missing methods or algorithms are simply absent. Gold is compared at a matched d = sqrt(KL) per
//! algorithm: given ([`AggregateOptions::matched_d`]) or the smallest final sqrt(KL) over its runs.
use super::arm::{Arm, ABLATIONS, BASELINE, FULL, OTHER_BASELINES};
use super::run_stats::{eval_curve, run_stats, EvalPoint, RunStats, COMPARED, METRICS};
use super::runs::{AggregateOptions, EvalRow, Grid, RmAccuracy, Run};
use super::stats::{self, summarize, Summary, TTest};
use crate::rl::config::Algo;
use std::collections::{BTreeMap, BTreeSet};

/// One step of a cell's mean eval curve: summaries over the seeds that have that step.
#[derive(Debug, Clone, PartialEq)]
pub struct CurvePoint {
    pub step: i64,
    pub gold: Summary,
    pub proxy: Summary,
    pub sqrt_kl: Summary,
}

/// The overoptimization test of one cell (arm x algo), on its eval curves.
///
/// t* = the step where the seed-mean gold peaks (pi_init included). Per seed: drop = gold(t*) -
/// gold(final), rise = proxy(final) - proxy(t*). Overoptimized when t* is before the last step, the
/// 95% CI of the mean drop lies above 0 (final gold is below the peak by more than its CI), and the
/// mean proxy rise is > 0 (the proxy still climbed after gold peaked). t* is chosen on the same
/// data, which favours a positive drop a little; with few eval points and seeds read it as a
/// screening test, next to the plots. With one seed the held-out prompts are the replicates and
/// the interval is widened for that choice, as in each seed's own test ([`SeedOveropt`]).
#[derive(Debug, Clone, PartialEq)]
pub struct Overopt {
    pub peak_step: i64,
    pub last_step: i64,
    pub peak_gold: f64,
    pub final_gold: f64,
    pub drop: Summary,
    /// The half-width of the drop's interval the test uses: `drop.ci95` over seeds; with one seed,
    /// over its prompts and widened for the choice of t* among the steps before the last.
    pub drop_ci: f64,
    pub proxy_rise: Summary,
    /// Some(true/false) when decidable; None with fewer than 2 seeds (no CI), unless the one
    /// seed's held-out prompts are the replicates.
    pub overoptimized: Option<bool>,
    /// With one seed: the number of held-out prompts `drop` and `proxy_rise` run over (each
    /// prompt's gold at the peak step against its gold at the last step, paired). None: over seeds.
    pub over_prompts: Option<usize>,
    /// Each seed's own test over its held-out prompts, in seed order.
    pub per_seed: Vec<SeedOveropt>,
}

impl Overopt {
    /// (seeds whose own test says overoptimized, seeds tested).
    pub fn seeds_shown(&self) -> (usize, usize) {
        (self.per_seed.iter().filter(|s| s.overoptimized == Some(true)).count(), self.per_seed.len())
    }
    /// Every seed overoptimizes by its own test, and there are at least 2.
    pub fn in_every_seed(&self) -> bool {
        let (k, n) = self.seeds_shown();
        n >= 2 && k == n
    }
}

/// One seed's own overoptimization test, over its held-out prompts: its peak is its highest mean
/// gold among the eval steps before the last (pi_init included); per prompt, drop = gold at the
/// peak - gold at the last step and rise = the proxy's change between them, paired. Overoptimized
/// when the mean rise is > 0 and the drop's interval lies above 0. The peak is picked among
/// `candidates` steps on the same data, which favours a positive drop, so the interval is widened
/// for that choice (Bonferroni: t at 1 - 0.05 / (2 candidates)).
#[derive(Debug, Clone, PartialEq)]
pub struct SeedOveropt {
    pub seed: u64,
    pub peak_step: i64,
    pub candidates: usize,
    /// Over the prompts scored at both steps (`drop.ci95`: the plain 95% CI).
    pub drop: Summary,
    /// The half-width of the drop's interval widened for the choice of the peak.
    pub drop_ci: f64,
    pub proxy_rise: Summary,
    /// None with fewer than 2 prompts scored at both steps.
    pub overoptimized: Option<bool>,
}

/// [`SeedOveropt`] of one run, from its eval curve; None without an eval step before its last.
fn seed_overopt(run: &Run, curve: &[EvalPoint]) -> Option<SeedOveropt> {
    let curve: Vec<&EvalPoint> = curve.iter().filter(|p| p.gold.is_finite()).collect();
    let last = curve.iter().filter(|p| p.step >= 0).map(|p| p.step).max()?;
    let before: Vec<&EvalPoint> = curve.iter().copied().filter(|p| p.step < last).collect();
    let peak = before.iter().fold(None::<&EvalPoint>, |b, p| match b {
        Some(b) if b.gold >= p.gold => Some(b),
        _ => Some(p),
    })?;
    let (drop, rise) = prompt_changes(run, peak.step, last).unwrap_or_default();
    let (drop, rise) = (summarize(&drop), summarize(&rise));
    let candidates = before.len();
    let drop_ci = widened_ci(&drop, candidates);
    let overoptimized = (drop.n >= 2).then(|| drop.mean - drop_ci > 0.0 && rise.mean > 0.0);
    Some(SeedOveropt { seed: run.seed, peak_step: peak.step, candidates, drop, drop_ci, proxy_rise: rise, overoptimized })
}

/// The 95% half-width of `drop`'s mean when its peak was picked among `candidates` steps on the
/// same data (Bonferroni: t at 1 - 0.05 / (2 candidates)); NaN with fewer than 2 values.
fn widened_ci(drop: &Summary, candidates: usize) -> f64 {
    if drop.n < 2 {
        return f64::NAN;
    }
    stats::t_quantile(1.0 - 0.05 / (2.0 * candidates.max(1) as f64), (drop.n - 1) as f64) * drop.std / (drop.n as f64).sqrt()
}

/// Aggregates of one arm x algo over its seeds.
#[derive(Debug, Clone)]
pub struct Cell {
    pub arm: Arm,
    pub algo: Algo,
    /// Indices into [`Grid::runs`], and their seeds, in seed order.
    pub runs: Vec<usize>,
    pub seeds: Vec<u64>,
    /// Per-run values, aligned with `runs`.
    pub run_stats: Vec<RunStats>,
    /// Summary over seeds of each of [`METRICS`].
    pub summaries: Vec<(&'static str, Summary)>,
    /// Mean seconds per step of each phase, over seeds.
    pub times: Vec<(String, Summary)>,
    /// The d of gold @ d (per algorithm).
    pub matched_d: f64,
    /// RM accuracy from the grid-level file when the runs have none (n = 1: no CI).
    pub rm_grid: Option<RmAccuracy>,
    pub curve: Vec<CurvePoint>,
    pub overopt: Option<Overopt>,
}

impl Cell {
    /// The summary of one of [`METRICS`] (EMPTY for an unknown key).
    pub fn get(&self, key: &str) -> Summary {
        self.summaries.iter().find(|(k, _)| *k == key).map(|(_, s)| *s).unwrap_or(Summary::EMPTY)
    }
    /// The per-seed values of one metric, in seed order.
    pub fn values(&self, key: &str) -> Vec<f64> {
        self.run_stats.iter().map(|r| r.get(key)).collect()
    }
}

/// `a` (an arm) against `b` (a baseline) on one metric; under one algorithm, except R2M against
/// the other algorithms' vanilla baselines ([`Aggregate::vs_baselines`]).
#[derive(Debug, Clone, PartialEq)]
pub struct Comparison {
    /// The arm's algorithm.
    pub algo: Algo,
    pub arm: Arm,
    pub baseline: Arm,
    /// The baseline's algorithm (= `algo` except in [`Aggregate::vs_baselines`]).
    pub baseline_algo: Algo,
    pub metric: &'static str,
    pub a: Summary,
    pub b: Summary,
    /// Welch two-sided t-test of a - b (the decision).
    pub welch: TTest,
    /// Paired t-test over the seeds both have (supplementary; same seed = same prompts and init).
    pub paired: TTest,
}

impl Comparison {
    /// p < 0.05 by Welch.
    pub fn significant(&self) -> bool {
        self.welch.significant(0.05)
    }
}

/// Everything the report needs.
#[derive(Debug, Clone)]
pub struct Aggregate {
    /// Sorted by algo, then arm.
    pub cells: Vec<Cell>,
    /// Per algo: the matched d.
    pub matched_d: BTreeMap<Algo, f64>,
    /// Every arm vs vanilla, same algo.
    pub vs_vanilla: Vec<Comparison>,
    /// r2m vs each ablation, same algo (a = r2m, b = the ablation).
    pub ablations: Vec<Comparison>,
    /// R2M under each algorithm vs vanilla ReMax and REINFORCE++ (a = r2m, b = that baseline).
    pub vs_baselines: Vec<Comparison>,
}

impl Aggregate {
    /// The cell of an arm (a method, or a variant) under `algo`.
    pub fn cell(&self, arm: impl Into<Arm>, algo: Algo) -> Option<&Cell> {
        let arm = arm.into();
        self.cells.iter().find(|c| c.arm == arm && c.algo == algo)
    }
    /// The algorithms present, in table order.
    pub fn algos(&self) -> Vec<Algo> {
        let s: BTreeSet<Algo> = self.cells.iter().map(|c| c.algo).collect();
        s.into_iter().collect()
    }
    /// The arms present, in table order.
    pub fn arms(&self) -> Vec<Arm> {
        let s: BTreeSet<&Arm> = self.cells.iter().map(|c| &c.arm).collect();
        s.into_iter().cloned().collect()
    }
}

fn compare(a: &Cell, b: &Cell, metric: &'static str) -> Comparison {
    let (va, vb) = (a.values(metric), b.values(metric));
    // Pairs by seed.
    let (mut pa, mut pb) = (vec![], vec![]);
    for (i, s) in a.seeds.iter().enumerate() {
        if let Some(j) = b.seeds.iter().position(|t| t == s) {
            pa.push(va[i]);
            pb.push(vb[j]);
        }
    }
    Comparison {
        algo: a.algo,
        arm: a.arm.clone(),
        baseline: b.arm.clone(),
        baseline_algo: b.algo,
        metric,
        a: summarize(&va),
        b: summarize(&vb),
        welch: stats::welch(&va, &vb),
        paired: stats::paired(&pa, &pb),
    }
}

fn overopt(grid: &Grid, idx: &[usize]) -> Option<Overopt> {
    let curves: Vec<Vec<EvalPoint>> = idx.iter().map(|&i| eval_curve(&grid.runs[i])).collect();
    // Steps every seed has, with finite gold.
    let mut common: Option<BTreeSet<i64>> = None;
    for c in &curves {
        let s: BTreeSet<i64> = c.iter().filter(|p| p.gold.is_finite()).map(|p| p.step).collect();
        common = Some(match common {
            None => s,
            Some(prev) => prev.intersection(&s).copied().collect(),
        });
    }
    let common: Vec<i64> = common?.into_iter().collect();
    let last = *common.iter().filter(|s| **s >= 0).max()?;
    let at = |c: &[EvalPoint], s: i64| c.iter().find(|p| p.step == s).copied();
    let mean_gold = |s: i64| stats::mean(&curves.iter().filter_map(|c| at(c, s)).map(|p| p.gold).collect::<Vec<_>>());
    let peak = common.iter().copied().fold(None::<(i64, f64)>, |b, s| {
        let g = mean_gold(s);
        match b {
            Some(b) if b.1 >= g => Some(b),
            _ => Some((s, g)),
        }
    })?;
    let mut drop: Vec<f64> = curves.iter().filter_map(|c| Some(at(c, peak.0)?.gold - at(c, last)?.gold)).collect();
    let mut rise: Vec<f64> = curves.iter().filter_map(|c| Some(at(c, last)?.proxy - at(c, peak.0)?.proxy)).collect();
    let mut over_prompts = None;
    if let [i] = idx {
        if let Some((d, r)) = prompt_changes(&grid.runs[*i], peak.0, last) {
            over_prompts = Some(d.len());
            (drop, rise) = (d, r);
        }
    }
    let (drop, rise) = (summarize(&drop), summarize(&rise));
    let drop_ci = match over_prompts {
        Some(_) => widened_ci(&drop, common.iter().filter(|s| **s < last).count()),
        None => drop.ci95,
    };
    let overoptimized = if peak.0 >= last {
        Some(false)
    } else if drop.n < 2 {
        None
    } else {
        Some(drop.mean - drop_ci > 0.0 && rise.mean > 0.0)
    };
    Some(Overopt {
        peak_step: peak.0,
        last_step: last,
        peak_gold: peak.1,
        final_gold: mean_gold(last),
        drop,
        drop_ci,
        proxy_rise: rise,
        overoptimized,
        over_prompts,
        per_seed: idx.iter().zip(&curves).filter_map(|(&i, c)| seed_overopt(&grid.runs[i], c)).collect(),
    })
}

/// One run's per-prompt change between steps `from` and `to` of its eval: gold's fall and the
/// proxy's rise on each held-out prompt scored at both (None without two such prompts).
fn prompt_changes(run: &Run, from: i64, to: i64) -> Option<(Vec<f64>, Vec<f64>)> {
    let at = |s: i64| -> BTreeMap<i64, &EvalRow> {
        run.eval.iter().filter(|r| r.step == s && r.gold.is_finite()).map(|r| (r.prompt, r)).collect()
    };
    let (a, b) = (at(from), at(to));
    let pairs: Vec<(&EvalRow, &EvalRow)> = a.iter().filter_map(|(p, x)| Some((*x, *b.get(p)?))).collect();
    (pairs.len() >= 2).then(|| pairs.iter().map(|(x, y)| (x.gold - y.gold, y.proxy() - x.proxy())).unzip())
}

fn mean_curve(grid: &Grid, idx: &[usize]) -> Vec<CurvePoint> {
    let mut by: BTreeMap<i64, Vec<EvalPoint>> = BTreeMap::new();
    for &i in idx {
        for p in eval_curve(&grid.runs[i]) {
            by.entry(p.step).or_default().push(p);
        }
    }
    by.into_iter()
        .map(|(step, ps)| CurvePoint {
            step,
            gold: summarize(&ps.iter().map(|p| p.gold).collect::<Vec<_>>()),
            proxy: summarize(&ps.iter().map(|p| p.proxy).collect::<Vec<_>>()),
            sqrt_kl: summarize(&ps.iter().map(|p| if p.step == -1 { 0.0 } else { p.sqrt_kl() }).collect::<Vec<_>>()),
        })
        .collect()
}

/// Aggregates a grid: cells, matched d per algorithm, comparisons vs vanilla and the ablations.
pub fn aggregate(grid: &Grid, opts: &AggregateOptions) -> Aggregate {
    // Run indices by (algo, arm): cells come out in table order.
    let mut groups: BTreeMap<(Algo, &Arm), Vec<usize>> = BTreeMap::new();
    for (i, r) in grid.runs.iter().enumerate() {
        groups.entry((r.algo, &r.arm)).or_default().push(i);
    }
    // Matched d per algorithm: the smallest final sqrt(KL) over its runs.
    let mut matched_d: BTreeMap<Algo, f64> = BTreeMap::new();
    for r in &grid.runs {
        let d = match opts.matched_d {
            Some(d) => d,
            None => eval_curve(r).iter().rfind(|p| p.step >= 0).map(|p| p.sqrt_kl()).unwrap_or(f64::NAN),
        };
        let e = matched_d.entry(r.algo).or_insert(f64::INFINITY);
        if d.is_finite() {
            *e = e.min(d);
        }
    }
    matched_d.values_mut().for_each(|d| {
        if !d.is_finite() {
            *d = f64::NAN;
        }
    });

    let mut cells = vec![];
    for ((algo, arm), mut idx) in groups {
        idx.sort_by_key(|&i| grid.runs[i].seed);
        let d = matched_d.get(&algo).copied().unwrap_or(f64::NAN);
        let run_stats: Vec<RunStats> = idx.iter().map(|&i| run_stats(&grid.runs[i], d)).collect();
        let rm_grid = if run_stats.iter().all(|r| !r.rm_acc_after.is_finite() && !r.rm_acc_before.is_finite()) {
            // Grid-level: an entry for this method and algo, else one for the method with no algo.
            grid.rm_accuracy
                .iter()
                .find(|r| arm.is(r.method) && r.algo == Some(algo))
                .or_else(|| grid.rm_accuracy.iter().find(|r| arm.is(r.method) && r.algo.is_none()))
                .cloned()
        } else {
            None
        };
        let mut summaries: Vec<(&'static str, Summary)> =
            METRICS.iter().map(|(k, _)| (*k, summarize(&run_stats.iter().map(|r| r.get(k)).collect::<Vec<_>>()))).collect();
        if let Some(g) = &rm_grid {
            for (k, s) in summaries.iter_mut() {
                if *k == "rm_acc_before" {
                    *s = summarize(&[g.before]);
                } else if *k == "rm_acc_after" {
                    *s = summarize(&[g.after]);
                } else if *k == "attn_entropy_after" {
                    *s = summarize(&[g.attn_entropy]);
                }
            }
        }
        let phases: BTreeSet<String> = run_stats.iter().flat_map(|r| r.times.keys().cloned()).collect();
        let times = phases
            .into_iter()
            .map(|p| {
                let v: Vec<f64> = run_stats.iter().map(|r| r.times.get(&p).copied().unwrap_or(0.0)).collect();
                (p, summarize(&v))
            })
            .collect();
        cells.push(Cell {
            seeds: idx.iter().map(|&i| grid.runs[i].seed).collect(),
            curve: mean_curve(grid, &idx),
            overopt: overopt(grid, &idx),
            arm: arm.clone(),
            algo,
            runs: idx,
            run_stats,
            summaries,
            times,
            matched_d: d,
            rm_grid,
        });
    }

    let mut vs_vanilla = vec![];
    let mut ablations = vec![];
    for c in &cells {
        if !c.arm.is(BASELINE) {
            if let Some(base) = cells.iter().find(|b| b.arm.is(BASELINE) && b.algo == c.algo) {
                for m in COMPARED {
                    vs_vanilla.push(compare(c, base, m));
                }
                vs_vanilla.push(compare(c, base, "rm_acc_after"));
            }
        }
        if matches!(c.arm, Arm::Method(m) if ABLATIONS.contains(&m)) {
            if let Some(full) = cells.iter().find(|f| f.arm.is(FULL) && f.algo == c.algo) {
                for m in COMPARED {
                    ablations.push(compare(full, c, m));
                }
            }
        }
    }
    // RM accuracy after RL is compared only where runs carry it (a grid-level single value has no spread).
    vs_vanilla.retain(|c| c.metric != "rm_acc_after" || (c.a.n >= 2 && c.b.n >= 2));
    // R2M (under each algorithm) against the vanilla runs of the other baselines (the paper's
    // ReMax and REINFORCE++ rows). Gold @ d is left out: d differs between algorithms.
    let mut vs_baselines = vec![];
    for c in cells.iter().filter(|c| c.arm.is(FULL)) {
        for b in cells.iter().filter(|b| b.arm.is(BASELINE) && b.algo != c.algo && OTHER_BASELINES.contains(&b.algo)) {
            for m in ["gold_final", "win_rate", "lc_win_rate"] {
                vs_baselines.push(compare(c, b, m));
            }
        }
    }
    Aggregate { cells, matched_d, vs_vanilla, ablations, vs_baselines }
}
