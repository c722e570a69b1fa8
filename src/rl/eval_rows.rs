//! Evaluation rows kept across runs and resumes, always checked before they are trusted:
//!
//! - pi_init's evaluation is written once and read back on resume; a run may take it from
//!   another run of the same seed (`rl.pi_init_eval_from`) once its own first sampling call agrees
//!   with that run's rows (but for the rare token that float rounding turns);
//! - an evaluation that grew after it was made (`rl.final_eval_prompts` raised, `data.testbed_test`
//!   with it) is extended rather than redone: a resumed run samples only the new prompts, each
//!   sampling call with the seed it has in the whole evaluation, after the last call made earlier
//!   is sampled again and agrees with its stored rows. pi_init's evaluation grows on resume; the
//!   last step's grows when a finished run is resumed from its final checkpoint, and that step's
//!   eval metrics are recomputed over all its rows.
use crate::checkpoint::write_atomic;
use crate::metrics::{read_jsonl, MetricsSink};
use crate::rl::eval::eval_means;
use crate::rl::trainer::{judged, win_rate, Run};
use anyhow::{bail, ensure, Context, Result};
use serde_json::{json, Map, Value};
use std::path::Path;

type Row = Map<String, Value>;

/// pi_init's eval rows (step -1), the baseline of the win rates: written once; on resume read
/// back from eval.jsonl, so that a run stopped before its first checkpoint does not evaluate
/// pi_init again (recomputed, deterministically, where rows are missing; rewritten where a stop
/// cut them short before any checkpoint). Returns their judged scores.
pub(super) fn initial_eval(run: &mut Run, resumed: bool, eval_path: &Path, eval_sink: Option<&mut MetricsSink>) -> Result<Vec<f64>> {
    let kept: Vec<Row> = if resumed && eval_path.exists() { step_rows(eval_path, -1)? } else { vec![] };
    let want = run.eval_size(-1);
    let mut have = kept.len() == want && want > 0;
    if let Some(d) = run.dist {
        // The ranks evaluate together (each its share, or each asking the reward-model rank in
        // step): they skip it only if every rank read the rows back.
        have = d.group.sum_f64(&[f64::from(u8::from(have))])?[0] == d.group.world() as f64;
    }
    if have {
        return Ok(judged(run, &kept));
    }
    let shared = match run.cfg.rl.pi_init_eval_from.clone() {
        Some(from) if kept.is_empty() => shared_init_eval(run, &from, want)?,
        _ => None,
    };
    let rows = match shared {
        Some(rows) => rows,
        None => run.evaluate(-1)?.1,
    };
    // Only pi_init's rows can be in the file without a checkpoint: a partial set is replaced.
    let only_init = kept.len() == read_jsonl(eval_path).map(|v| v.len()).unwrap_or(0);
    if let (true, Some(sink)) = (kept.is_empty() || only_init, eval_sink) {
        if !kept.is_empty() {
            *sink = MetricsSink::open(eval_path, None)?;
        }
        for r in &rows {
            sink.write(r)?;
        }
    }
    Ok(judged(run, &rows))
}

/// pi_init's evaluation extended where it grew since the run checkpointed (`rl.final_eval_prompts`
/// raised): called before the checkpoint is loaded, while the run holds pi_init (its policy and
/// its reward source as built). Nothing to do where pi_init's evaluation has its rows.
pub(super) fn extend_init_eval(run: &mut Run) -> Result<()> {
    let eval_path = run.cfg.out.join("eval.jsonl");
    if !eval_path.exists() {
        return Ok(());
    }
    let kept = step_rows(&eval_path, -1)?;
    if kept.is_empty() || kept.len() >= run.eval_size(-1) {
        return Ok(());
    }
    let from = run.cfg.rl.pi_init_eval_from.clone();
    let rows = extended(run, -1, kept, from.as_deref())?;
    replace_step_rows(&eval_path, -1, &rows)
}

/// A finished run resumed from its final checkpoint after its last evaluation grew: the new
/// prompts' rows of the last step's evaluation, and that step's eval metrics in `metrics.jsonl`
/// recomputed over all its rows (the win rate against `init`, pi_init's judged scores, too).
/// Nothing to do where the last step's evaluation has its rows.
pub(super) fn extend_last_eval(run: &mut Run, init: &[f64]) -> Result<()> {
    let t = run.cfg.rl.steps - 1;
    let out = run.cfg.out.clone();
    let eval_path = out.join("eval.jsonl");
    let kept = step_rows(&eval_path, t)?;
    let want = run.eval_size(t);
    if kept.is_empty() || kept.len() >= want {
        return Ok(());
    }
    let rows = extended(run, t, kept, None)?;
    replace_step_rows(&eval_path, t, &rows)?;
    let metrics_path = out.join("metrics.jsonl");
    let mut records = read_jsonl(&metrics_path)?;
    let rec = records
        .iter_mut()
        .rev()
        .find(|r| r.get("step").and_then(Value::as_i64) == Some(t))
        .with_context(|| format!("{}: no record of step {t}, the one whose evaluation grew", metrics_path.display()))?;
    rec.extend(eval_means(&rows, run.metric.as_ref().map(|m| m.name())));
    let now = judged(run, &rows);
    if let Some(w) = win_rate(&now, &init[..now.len().min(init.len())]) {
        rec.insert("eval/win_rate".into(), json!(w));
    }
    write_jsonl_atomic(&metrics_path, &records)
}

/// The evaluation at step `t` grown from the rows `kept` made earlier (its first prompts) to
/// `run.eval_size(t)` prompts, in one process. From another run's rows at step `t` (`from`) where
/// they are the whole evaluation and agree with `kept`; else the new prompts sampled and scored
/// here, from the last whole sampling call of `kept`, which is sampled again and must agree with
/// its stored rows ([`disagreement`]: the same prompts, lengths and finished flags, scores within
/// rounding, in all but a tenth of them at most): a checkpoint or a build that does not reproduce
/// them is an error, and nothing is written. Rows of a last call that was cut short (fewer than
/// `rl.generation_batch` prompts) are sampled again in a whole call, as an evaluation of the new
/// size samples them.
fn extended(run: &mut Run, t: i64, kept: Vec<Row>, from: Option<&Path>) -> Result<Vec<Row>> {
    let (k, want) = (kept.len(), run.eval_size(t));
    ensure!(
        run.dist.is_none(),
        "the evaluation at step {t} grew from {k} to {want} prompts: extending it runs in one process (resume without --nproc)"
    );
    if let Some(from) = from {
        let theirs = step_rows(from, t).with_context(|| format!("rl.pi_init_eval_from = {}", from.display()))?;
        match (theirs.len() == want).then(|| disagreement(&kept, &theirs)) {
            Some(None) => {
                eprintln!(
                    "rl: the evaluation at step {t} grew from {k} to {want} prompts: the new rows are {}'s, whose first {k} agree",
                    from.display()
                );
                let mut rows = kept;
                rows.extend(theirs.into_iter().skip(k));
                return Ok(rows);
            }
            Some(Some(why)) => eprintln!("rl: not extending the evaluation at step {t} from {}: {why}", from.display()),
            None => {
                eprintln!("rl: not extending the evaluation at step {t} from {}: it has {} rows, not {want}", from.display(), theirs.len())
            }
        }
    }
    let gb = run.budget.generation_batch.max(1);
    let whole = k - k % gb;
    let lo = whole.saturating_sub(gb);
    eprintln!(
        "rl: the evaluation at step {t} grew from {k} to {want} prompts: sampling prompts {lo}..{whole} again to check them, then \
         evaluating prompts {whole}..{want}"
    );
    // The check first, alone: rows that disagree end it before the new prompts are sampled.
    let check = run.evaluate_rows(t, lo..whole)?;
    if let Some(why) = disagreement(&check, &kept[lo..whole]) {
        bail!(
            "the evaluation at step {t} cannot be extended: prompts {lo}..{whole} sampled again: {why}; the checkpoint or this build \
             is not the one that made the evaluation: evaluate it in a new run folder"
        );
    }
    let mut rows = kept;
    rows.truncate(whole);
    rows.extend(run.evaluate_rows(t, whole..want)?);
    Ok(rows)
}

/// pi_init's evaluation rows from another run's `eval.jsonl` (`rl.pi_init_eval_from`), after
/// this run's own first sampling call of that evaluation agrees with them ([`disagreement`]: the
/// same prompts, finished flags and lengths, scores within rounding, in all but a tenth of the
/// rows at most; that run may have been made on another CPU type). Where that run evaluated
/// fewer prompts, its rows are extended as [`extended`] extends a run's own. None, with the
/// reason on stderr, where they do not agree or the file has more rows than this evaluation:
/// pi_init is then evaluated in full.
fn shared_init_eval(run: &mut Run, from: &Path, want: usize) -> Result<Option<Vec<Row>>> {
    ensure!(
        run.dist.is_none(),
        "rl.pi_init_eval_from = {}: one process only (a data parallel run evaluates pi_init itself)",
        from.display()
    );
    let theirs = step_rows(from, -1).with_context(|| format!("rl.pi_init_eval_from = {}", from.display()))?;
    let not_shared = |why: String| {
        eprintln!("rl: pi_init's evaluation is not shared with {}: {why}; evaluating it in full", from.display());
        Ok(None)
    };
    if !theirs.is_empty() && theirs.len() < want {
        // A smaller evaluation of pi_init: its whole sampling calls are this evaluation's first
        // rows, taken after its last whole call is sampled here again and agrees.
        eprintln!("rl: pi_init's evaluation starts from the {} rows of {}", theirs.len(), from.display());
        return match extended(run, -1, theirs, None) {
            Ok(rows) => Ok(Some(rows)),
            Err(e) => not_shared(format!("{e:#}")),
        };
    }
    if theirs.len() != want {
        return not_shared(format!("it has {} rows of pi_init, this run evaluates {want}", theirs.len()));
    }
    let mine = run.first_call_rows()?;
    if let Some(why) = disagreement(&mine, &theirs) {
        return not_shared(why);
    }
    eprintln!("rl: pi_init's evaluation is shared with {} ({} of its {want} rows checked here)", from.display(), mine.len());
    Ok(Some(theirs))
}

/// Why two eval rows of one prompt differ (None: the same keys, equal non-numbers, numbers within
/// 1e-4 relative to max(1, |x|), the KL column within 1e-5 per response token more). The KL
/// column sums a response's worth of log-prob rounding: about 1e-5 in all between two processes on
/// one machine, up to ~2e-4 between two CPU types (an AMD EPYC's and an Intel Xeon's GEMMs round
/// differently), where pi_init's KL itself is below ~2e-4.
fn row_difference(a: &Row, b: &Row) -> Option<String> {
    let prompt = a.get("prompt").cloned().unwrap_or(Value::Null);
    if a.keys().ne(b.keys()) {
        return Some(format!("prompt {prompt}: columns {:?} vs {:?}", a.keys().collect::<Vec<_>>(), b.keys().collect::<Vec<_>>()));
    }
    let tokens = a.get("length").and_then(Value::as_f64).unwrap_or(0.0);
    for (k, x) in a {
        let y = &b[k];
        let same = match (x.as_f64(), y.as_f64()) {
            (Some(p), Some(q)) if x.is_f64() || y.is_f64() => {
                let per_token = if k == "kl" { KL_ROUNDING_PER_TOKEN * tokens } else { 0.0 };
                (p - q).abs() <= 1e-4 * p.abs().max(1.0) + per_token
            }
            _ => x == y,
        };
        if !same {
            return Some(format!("prompt {prompt}: {k} {x} vs {y}"));
        }
    }
    None
}

/// The KL column's allowance for rounding, per response token (see [`row_difference`]).
const KL_ROUNDING_PER_TOKEN: f64 = 1e-5;

/// Why rows sampled here (`mine`) do not reproduce stored rows of the same prompts (`theirs`):
/// None where at most a tenth of them differ. Float rounding (a GEMM's blocking, memory alignment,
/// another CPU type) turns a sampled token now and then, about 1.5 % of pi_init's rows between an
/// AMD EPYC and an Intel Xeon; another checkpoint or build changes nearly every row. The stored
/// rows are then kept as they are: each is one sample of the same policy on its prompt.
fn disagreement(mine: &[Row], theirs: &[Row]) -> Option<String> {
    let differ: Vec<String> = mine.iter().zip(theirs).filter_map(|(a, b)| row_difference(a, b)).collect();
    let (first, n) = (differ.first()?, mine.len().min(theirs.len()));
    if differ.len() * 10 > n {
        return Some(format!("{} of {n} rows differ ({first})", differ.len()));
    }
    eprintln!(
        "rl: {} of {n} rows differ from the rows made earlier, as float rounding turns a sampled token now and then ({first}); the rows \
         made earlier are kept",
        differ.len()
    );
    None
}

/// The rows of step `t` in the eval file `path`.
fn step_rows(path: &Path, t: i64) -> Result<Vec<Row>> {
    Ok(read_jsonl(path)?.into_iter().filter(|r| r.get("step").and_then(Value::as_i64) == Some(t)).collect())
}

/// The eval file `path` with its rows of step `t` replaced by `rows` (the file is in step order),
/// written atomically.
fn replace_step_rows(path: &Path, t: i64, rows: &[Row]) -> Result<()> {
    let all = read_jsonl(path)?;
    let step = |r: &Row| r.get("step").and_then(Value::as_i64).unwrap_or(i64::MIN);
    let before = all.iter().filter(|r| step(r) < t);
    let after = all.iter().filter(|r| step(r) > t);
    let records: Vec<Row> = before.chain(rows).chain(after).cloned().collect();
    write_jsonl_atomic(path, &records)
}

/// `records` as JSON lines, replacing `path` atomically.
fn write_jsonl_atomic(path: &Path, records: &[Row]) -> Result<()> {
    let mut text = String::new();
    for r in records {
        text.push_str(&serde_json::to_string(r)?);
        text.push('\n');
    }
    Ok(write_atomic(path, text.as_bytes())?)
}

/// Whether the finished run in `dir` evaluated pi_init or its last step on fewer held-out prompts
/// than `rc` asks for (`rl.final_eval_prompts` raised since): resumed from its final checkpoint,
/// it extends them.
pub fn evaluation_grew(dir: &Path, rc: &crate::rl::config::RlConfig) -> Result<bool> {
    let path = dir.join("eval.jsonl");
    if rc.rl.eval_every == 0 || !path.exists() {
        return Ok(false);
    }
    let want = final_eval_size(rc)?;
    let rows = read_jsonl(&path)?;
    let count = |t: i64| rows.iter().filter(|r| r.get("step").and_then(Value::as_i64) == Some(t)).count();
    Ok(count(-1) < want || count(rc.rl.steps - 1) < want)
}

/// How many prompts `rc`'s evaluations of pi_init and of the last step take (`AlgoConfig::eval_size`
/// at step -1, over the held-out prompts `rc` loads).
pub fn final_eval_size(rc: &crate::rl::config::RlConfig) -> Result<usize> {
    Ok(rc.rl.eval_size(-1, crate::sources::prompts(rc)?.eval.len()))
}

/// How many rows of pi_init's evaluation the eval file `path` holds (0 where it cannot be read).
pub fn init_rows(path: &Path) -> usize {
    step_rows(path, -1).map_or(0, |r| r.len())
}

/// Whether the evaluation rows in `path` carry the frozen reward model's score
/// (`reward_frozen_rm`): those of a reward source that [reports it](crate::r2m::Method::reports_frozen_scores).
/// False for a file without rows.
pub fn rows_report_frozen_scores(path: &Path) -> bool {
    let Ok(text) = std::fs::read_to_string(path) else { return false };
    text.lines().next().and_then(|l| serde_json::from_str::<Row>(l).ok()).is_some_and(|r| r.contains_key("reward_frozen_rm"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(prompt: i64, length: f64, gold: f64, kl: f64) -> Row {
        let v = json!({"finished": true, "gold": gold, "kl": kl, "length": length, "prompt": prompt, "reward": 0.5, "step": -1});
        v.as_object().unwrap().clone()
    }

    #[test]
    fn pi_init_kl_rounding_between_cpu_types_is_no_difference() {
        // Prompt 896 of pi_init's evaluation, seed 2, made on an Intel Xeon and on an AMD EPYC:
        // the same response of 51 tokens, KL 1.03e-5 against 1.11e-4.
        assert_eq!(row_difference(&row(896, 51.0, 10.0, 1.027e-5), &row(896, 51.0, 10.0, 1.115e-4)), None);
        // Past a response's worth of rounding, and any other score or length, is a difference.
        assert!(row_difference(&row(1, 10.0, 6.5, 1e-5), &row(1, 10.0, 6.5, 3e-4)).unwrap().contains("kl"));
        assert!(row_difference(&row(1, 49.0, 6.5, 1e-5), &row(1, 49.0, 6.6, 1e-5)).unwrap().contains("gold"));
        assert!(row_difference(&row(1, 49.0, 6.5, 1e-5), &row(1, 48.0, 6.5, 1e-5)).unwrap().contains("length"));
        let mut extra = row(1, 49.0, 6.5, 1e-5);
        extra.insert("reward_frozen_rm".into(), json!(0.5));
        assert!(row_difference(&row(1, 49.0, 6.5, 1e-5), &extra).unwrap().contains("columns"));
    }

    #[test]
    fn rows_agree_unless_more_than_a_tenth_differ() {
        let theirs: Vec<Row> = (0..128).map(|p| row(p, 40.0, 7.0, 1e-5)).collect();
        let turned = |n: i64| -> Vec<Row> { (0..128).map(|p| row(p, 40.0, if p < n { 3.0 } else { 7.0 }, 1e-5)).collect() };
        assert_eq!(disagreement(&theirs, &theirs), None);
        assert_eq!(disagreement(&turned(12), &theirs), None);
        let why = disagreement(&turned(13), &theirs).unwrap();
        assert!(why.starts_with("13 of 128 rows differ (prompt 0: gold"), "{why}");
        // Rows compared with a longer file: only the first rows count.
        assert_eq!(disagreement(&turned(1)[..10], &theirs), None);
        assert!(disagreement(&turned(2)[..10], &theirs).is_some());
    }
}
