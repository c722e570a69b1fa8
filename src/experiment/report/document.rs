//! The report as a sequence of blocks (headings, paragraphs, lists, tables, figures): what
//! `report.md` and `report.html` say, in order, before either markup is written.
use super::dir_name;
use super::figures::Figure;
use super::setup::setup_table;
use super::tables::{comparison_md_table, feedback_table, main_table, own_accuracy_table, regime_table, rm_table, time_table};
use crate::experiment::aggregate::{Aggregate, Comparison};
use crate::experiment::arm::algo_label;
use crate::experiment::runs::Grid;
use crate::report::Table;

/// One piece of the report.
pub(super) enum Block {
    H(usize, String),
    P(String),
    List(Vec<String>),
    Table(Table),
    Figure(Figure),
}

pub(super) fn document(grid: &Grid, agg: &Aggregate, verdicts: &[String], figures: &[Figure]) -> Vec<Block> {
    use Block::*;
    let mut b = vec![H(1, format!("R2M experiment report: {}", dir_name(&grid.dir)))];
    b.push(P(format!(
        "{} runs aggregated from {}. Every number is the mean over seeds ± the half-width of its 95% confidence interval \
         (Student t); \"(n=1)\" marks a single seed, where no interval exists. The gold reward plays the human \
         (docs/testbed.md); the proxy is the frozen proxy RM's score of the responses, the same judge for every method \
         (R2M's methods train on their own reward, logged beside it; runs from before that was logged show their own reward).",
        grid.runs.len(),
        grid.dir.display()
    )));
    if !grid.incomplete.is_empty() {
        b.push(P("Incomplete run folders (left out of every number below):".into()));
        b.push(List(grid.incomplete.iter().map(|x| format!("{}: {}", x.name, x.reason)).collect()));
    }
    if grid.runs.is_empty() {
        b.push(P("No complete runs: nothing to report yet.".into()));
        return b;
    }

    b.push(H(2, "Verdict".into()));
    b.push(List(verdicts.to_vec()));

    b.push(H(2, "Setup".into()));
    b.push(Table(setup_table(grid)));
    let ds: Vec<String> =
        agg.algos().iter().filter_map(|a| agg.matched_d.get(a).map(|d| format!("{} d = {d:.3}", algo_label(*a)))).collect();
    b.push(P(format!(
        "Matched KL: gold @ d is each run's eval gold interpolated at d = sqrt(KL) on its curve from pi_init (d = 0), at \
         the first crossing; d per algorithm is the smallest final sqrt(KL) over its runs: {}.",
        ds.join(", ")
    )));

    b.push(H(2, "Results".into()));
    b.push(Table(main_table(agg, true)));
    b.push(P("gold (final): held-out gold at the last eval step. peak gold / peak step: the highest eval gold (pi_init included, \
         step -1) and its step. win rate: share of held-out prompts where the policy's response at the last eval step has \
         higher gold than pi_init's (ties half). LC win rate: length-controlled, sigmoid(intercept) of a logistic regression \
         of those wins on tanh(length difference / its sd) (AlpacaEval 2 LC style). proxy - gold: raw difference at the end \
         (different scales: compare it within a column, not as a level). std. gap: the proxy's rise from pi_init minus \
         gold's rise, each in pi_init standard deviations over the prompts (0 at pi_init; > 0: the proxy credits more \
         than gold confirms). overopt.: the test under Verdict (gold's seed-mean peak is above the final gold by more \
         than the 95% CI of the per-seed drop, while the proxy rose after the peak); where it does not, \
         \"each seed (k/n)\" or \"no (k/n seeds)\" counts the seeds that overoptimize by their own test over their \
         held-out prompts (each seed's own peak, the interval widened for picking it among the eval steps)."
        .into()));
    let over: Vec<String> = agg
        .cells
        .iter()
        .filter_map(|c| c.overopt.as_ref().map(|o| format!("{} {}: {}", c.arm, algo_label(c.algo), o.describe())))
        .collect();
    if !over.is_empty() {
        b.push(H(3, "Overoptimization test, every method".into()));
        b.push(List(over));
    }

    b.push(H(2, "Each method vs vanilla (same algorithm)".into()));
    if agg.vs_vanilla.is_empty() {
        b.push(P("No method has a vanilla run under the same algorithm.".into()));
    } else {
        let cs: Vec<&Comparison> = agg.vs_vanilla.iter().collect();
        b.push(Table(comparison_md_table(&cs, "method", "vanilla")));
        b.push(P("Difference = method - vanilla with the 95% CI of the difference (Welch). The decision uses Welch's two-sided \
             t-test (unequal variances); the paired t-test over shared seeds (same seed: same prompts order and init) is shown \
             beside it."
            .into()));
    }

    b.push(H(2, "Ablations (R2M vs each)".into()));
    if agg.ablations.is_empty() {
        b.push(P("No ablation runs next to an R2M run under the same algorithm.".into()));
    } else {
        let cs: Vec<&Comparison> = agg.ablations.iter().collect();
        b.push(Table(comparison_md_table(&cs, "r2m", "ablation")));
        b.push(P("Difference = r2m - ablation: positive means the full method does better.".into()));
    }

    if !agg.vs_baselines.is_empty() {
        b.push(H(2, "R2M vs the other RL baselines (vanilla REINFORCE++ / ReMax)".into()));
        let cs: Vec<&Comparison> = agg.vs_baselines.iter().collect();
        b.push(Table(comparison_md_table(&cs, "r2m", "baseline")));
        b.push(P("As in the paper's tables, R2M under RLOO / GRPO against vanilla runs of the other algorithms. Gold @ d is not compared: d differs between algorithms.".into()));
    }

    b.push(H(2, "RM accuracy".into()));
    let rm = rm_table(agg);
    if rm.rows.is_empty() {
        b.push(P("No rm_accuracy.json in the grid or its runs.".into()));
    } else {
        let attention = rm.headers.iter().any(|h| h.starts_with("attention entropy"));
        b.push(Table(rm));
        if attention {
            b.push(P("Attention entropy: how R2M's cross-attention spreads over the policy's tokens on these pairs after RL, entropy / ln(tokens) averaged over responses (1 = uniform: H_hat is a linear map of the mean hidden state; near 0: it reads a few tokens). `r2m eval-rm --feedback-from RUN` prints it with the norms and score spreads of H_hat and H_last.".into()));
        }
    }

    let own = own_accuracy_table(agg);
    if !own.rows.is_empty() {
        b.push(H(3, "On the policy's own samples".into()));
        b.push(Table(own));
        b.push(P("At each RL step, the share of pairs inside each prompt's group of rollouts that the reward ranks as gold does \
             (ties half; `gold/group_agree` and `gold/group_agree_frozen_rm` in metrics.jsonl), averaged over the first tenth \
             of the steps (start: the initial policy's samples) and the last tenth (end). A proxy that the policy games loses \
             accuracy on the samples it is trained on while its held-out accuracy above stays put."
            .into()));
    }

    let fb = feedback_table(agg);
    if !fb.rows.is_empty() {
        b.push(H(2, "R2M's feedback term".into()));
        b.push(Table(fb));
        b.push(P("R2M's reward is phi((1 - w) H_hat + w H_last) with a linear phi, so beside the frozen proxy's score of the same response it carries a feedback term, (r - w r_frozen) / (1 - w) = phi(H_hat) plus what the head's drift gives on H_last; H_hat is read from the policy's own hidden states (noise for r2m-noise).".into()));
        b.push(P("Group corr.: at each RL step, the correlation inside each prompt's group of R2M's reward with what the same head gives on H_last alone (`r2m/group_corr_no_hhat` in metrics.jsonl), averaged over groups and over the second half of the steps. It is the correlation of the GRPO advantages with and without the H_hat term: near 1, the policy's feedback changes no ranking; near 0, the H_hat term decides which samples are reinforced.".into()));
        b.push(P("Rise: the feedback term's mean over the held-out responses (eval.jsonl) at the last eval step minus at the first with w < 1; above 0, the policy has climbed it. Corr. with gold: over the held-out responses of the last eval step; below 0, the responses the feedback term favours are the worse ones by gold.".into()));
    }

    let regime = regime_table(agg);
    if !regime.rows.is_empty() {
        b.push(H(2, "The regime R2M runs in".into()));
        b.push(Table(regime));
        b.push(P("From each run's metrics.jsonl, averaged over the first tenth of the RL steps (start: the initial policy's \
             rollouts) and over the last tenth (end), then over seeds. Attention entropy: R2M's cross-attention over the \
             policy's tokens, entropy / ln(tokens) (1 = uniform: H_hat is a linear map of the mean hidden state). |H_last|: \
             the norm of the RM's reward-token embedding (1 for an L2-normalised sentence embedding; a decoder's last hidden \
             state is far larger); |H_hat|: the cross-attention's output. w(t): the blend weight of H_last at the last step. \
             Group corr.: the correlation inside each prompt's group of R2M's reward with what the same head gives on H_last \
             alone (1: the policy's feedback reorders nothing). Methods that do not train R2M's modules log only the group \
             correlation and w."
            .into()));
    }

    b.push(H(2, "Time per phase".into()));
    b.push(Table(time_table(agg)));
    b.push(P("Mean seconds per RL step: each time/* total over the run divided by the steps logged (so eval is amortized); step = the whole step.".into()));

    b.push(H(2, "Plots".into()));
    for f in figures {
        b.push(Figure(f.clone()));
    }
    b
}
