//! The paper's motivating analysis (R2M, Figures 1-2): do a policy's hidden states separate
//! chosen from rejected responses, and does their similarity track reward similarity "beyond
//! semantics"?
//!
//! For a causal LM and N preference pairs, every layer l = 0..L of HF's `hidden_states` (0 = the
//! embeddings, L = after the final norm) is mean-pooled over each response's tokens, giving c_i^l
//! (chosen) and r_i^l (rejected). Per layer:
//! - intra-category similarity: mean cosine over distinct chosen pairs (c_i, c_j), i < j, and
//!   over distinct rejected pairs (r_i, r_j); `intra` is the mean of the two (equal counts);
//! - cross-category similarity: mean cosine over (c_i, r_j), i != j (different prompts);
//! - matched similarity: mean of cos(c_i, r_i) (same prompt, the two responses);
//! - gap = intra - cross: > 0 when the layer groups responses by preference label;
//! - with a reward model: Pearson and Spearman correlation across pairs between cos(c_i^l, r_i^l)
//!   and |r(c_i) - r(r_i)|. The paper's reading predicts a negative correlation: the more alike the
//!   two responses look to the policy, the closer their rewards.
//!
//! Pooling over the response only: the prompt is shared by both responses of a pair, so prompt
//! tokens would pull every matched cosine towards 1 and hide the responses' differences. Where the
//! response starts: the prompt is rendered alone (plain text as is; messages through the chat
//! template with the generation prompt, TRL's `maybe_apply_chat_template`) and tokenized the way
//! the full text is; the response starts after the longest common token prefix of the two. A token
//! that BPE merges across the boundary thus counts as response. Implicit-prompt pairs: messages
//! take the common leading messages of chosen and rejected as the prompt (TRL `extract_prompt`);
//! plain text takes the common token prefix of the chosen and rejected ids. The EOS token that
//! plain-text rendering appends (TRL `add_eos`), and the end-of-turn tokens that a chat template
//! writes after the assistant message, belong to the response.
//!
//! Cosines use x / max(|x|, 1e-12) (PyTorch `F.normalize`), in f64.
use crate::data::{self, LoadOptions, PreferenceExample, Text};
use crate::error::{Error, Result};
use crate::model::causal_lm::CausalLm;
use crate::model::generate::left_pad;
use crate::report::plot::{LineChart, Series};
use crate::report::{csv_num, fmt_num, Table};
use crate::reward::train::render_pair;
use crate::reward::RewardModel;
use crate::tokenizer::{Message, Tokenizer};
use serde::Serialize;
use std::path::{Path, PathBuf};
use tch::{Device, Kind, Tensor};

/// What `r2m analyze-hidden` runs. `Default` holds the CLI defaults.
#[derive(Debug, Clone)]
pub struct HiddenConfig {
    /// The causal LM whose hidden states are analysed (path or alias).
    pub model: String,
    /// Preference pairs (TRL formats, JSONL or Parquet).
    pub data: PathBuf,
    /// A reward model for the correlation columns; none: those columns are absent.
    pub rm: Option<String>,
    /// The first `max_pairs` pairs of the file. Default 64.
    pub max_pairs: usize,
    /// Sequences per forward pass. Default 8.
    pub batch: usize,
    /// Full texts are cut to their first `max_length` tokens (also for the RM); a pair whose
    /// response would then be empty is skipped and listed. Default 1024.
    pub max_length: usize,
    pub device: Device,
    pub skip_invalid: bool,
    /// Where the CSV, JSON and plots go.
    pub out: PathBuf,
}

impl Default for HiddenConfig {
    fn default() -> Self {
        HiddenConfig {
            model: "smollm2-135m-instruct".into(),
            data: PathBuf::new(),
            rm: None,
            max_pairs: 64,
            batch: 8,
            max_length: 1024,
            device: Device::Cpu,
            skip_invalid: false,
            out: PathBuf::from("runs/analyze-hidden"),
        }
    }
}

/// One pair's sequences for the model: full ids and where the response starts.
#[derive(Debug, Clone, PartialEq)]
pub struct PairTokens {
    pub chosen: Vec<i64>,
    pub rejected: Vec<i64>,
    pub chosen_start: usize,
    pub rejected_start: usize,
}

/// Length of the longest common prefix.
pub fn common_prefix<T: PartialEq>(a: &[T], b: &[T]) -> usize {
    a.iter().zip(b).take_while(|(x, y)| x == y).count()
}

fn ids_of(tok: &Tokenizer, text: &str, special: bool) -> Result<Vec<i64>> {
    Ok(tok.encode(text, special)?.into_iter().map(i64::from).collect())
}

/// Tokenizes a pair for `tok` (rendered as TRL's RewardTrainer does: [`data::render_preference`])
/// and finds where each response starts (see the module docs). Texts are cut to `max_length`.
/// `Err(reason)` inside `Ok` when the pair has no response tokens left (it is then skipped).
pub fn tokenize_pair(tok: &Tokenizer, ex: &PreferenceExample, max_length: usize) -> Result<std::result::Result<PairTokens, String>> {
    let (c_text, r_text) = data::render_preference(tok, ex)?;
    let chat = ex.chosen.is_chat();
    let special = !chat; // chat renderings carry their own special tokens
    let mut c = ids_of(tok, &c_text, special)?;
    let mut r = ids_of(tok, &r_text, special)?;
    let (cs, rs) = match (&ex.prompt, &ex.chosen, &ex.rejected) {
        (Some(Text::Plain(p)), ..) => {
            let p = ids_of(tok, p, true)?;
            (common_prefix(&p, &c), common_prefix(&p, &r))
        }
        (Some(Text::Chat(m)), ..) => {
            let p = ids_of(tok, &tok.apply_chat_template(m, true)?, false)?;
            (common_prefix(&p, &c), common_prefix(&p, &r))
        }
        (None, Text::Chat(cm), Text::Chat(rm)) => {
            let k = common_prefix(cm, rm);
            if k == 0 {
                (0, 0)
            } else {
                let prompt: &[Message] = &cm[..k];
                let p = ids_of(tok, &tok.apply_chat_template(prompt, true)?, false)?;
                (common_prefix(&p, &c), common_prefix(&p, &r))
            }
        }
        (None, ..) => {
            let k = common_prefix(&c, &r);
            (k, k)
        }
    };
    c.truncate(max_length);
    r.truncate(max_length);
    if cs >= c.len() || rs >= r.len() {
        let which = if cs >= c.len() { "chosen" } else { "rejected" };
        let why = if c.len() == max_length || r.len() == max_length {
            format!("{which} response starts at or after token {max_length} (max_length)")
        } else {
            format!("{which} response has no tokens after the prompt")
        };
        return Ok(Err(why));
    }
    Ok(Ok(PairTokens { chosen: c, rejected: r, chosen_start: cs, rejected_start: rs }))
}

/// Response-pooled hidden states of N pairs.
pub struct Pooled {
    /// (L+1, N, D) f32 on the CPU: layer l, pair i -> c_i^l.
    pub chosen: Tensor,
    /// (L+1, N, D): r_i^l.
    pub rejected: Tensor,
}

/// Mean of each layer's hidden states over the response tokens of each sequence:
/// (L+1, S, D) f32 on the CPU, rows in the order of `seqs` (ids, response start). Batches of
/// `batch` sequences (sorted by length, to pad little), left-padded, without gradients.
pub fn pool_responses(model: &CausalLm, pad_id: i64, seqs: &[(Vec<i64>, usize)], batch: usize) -> Result<Tensor> {
    if seqs.is_empty() {
        return Err(Error::Input("pool_responses: no sequences".into()));
    }
    for (i, (ids, start)) in seqs.iter().enumerate() {
        if *start >= ids.len() {
            return Err(Error::Input(format!("pool_responses: sequence {i} has no response tokens ({start} >= {})", ids.len())));
        }
    }
    let _g = tch::no_grad_guard();
    let mut order: Vec<usize> = (0..seqs.len()).collect();
    order.sort_by_key(|&i| std::cmp::Reverse(seqs[i].0.len()));
    let mut out: Vec<Option<Tensor>> = (0..seqs.len()).map(|_| None).collect();
    for chunk in order.chunks(batch.max(1)) {
        let ids: Vec<Vec<i64>> = chunk.iter().map(|&i| seqs[i].0.clone()).collect();
        let (ids_t, mask) = left_pad(&ids, pad_id, model.device);
        let t = ids_t.size()[1] as usize;
        // Response mask in left-padded columns: row b holds its n tokens at [t - n, t).
        let mut m = vec![0f32; chunk.len() * t];
        for (b, &i) in chunk.iter().enumerate() {
            let (n, start) = (seqs[i].0.len(), seqs[i].1);
            m[b * t + (t - n + start)..(b + 1) * t].iter_mut().for_each(|x| *x = 1.0);
        }
        let m = Tensor::from_slice(&m).view([chunk.len() as i64, t as i64, 1]).to_device(model.device); // (B, T, 1)
        let count = m.sum_dim_intlist([1i64].as_slice(), false, Kind::Float); // (B, 1)
        let h = model.forward_hidden(&ids_t, &mask, true)?;
        let all = h.all.ok_or_else(|| Error::Input("forward_hidden returned no hidden states".into()))?;
        let pooled: Vec<Tensor> = all
            .iter()
            .map(|x| (x.to_kind(Kind::Float) * &m).sum_dim_intlist([1i64].as_slice(), false, Kind::Float) / &count) // (B, D)
            .collect();
        let pooled = Tensor::stack(&pooled, 0).to_device(Device::Cpu); // (L+1, B, D)
        for (b, &i) in chunk.iter().enumerate() {
            out[i] = Some(pooled.select(1, b as i64));
        }
    }
    let rows: Vec<Tensor> = out
        .into_iter()
        .map(|t| t.ok_or_else(|| Error::Input("pool_responses: a sequence was not pooled".into())))
        .collect::<Result<_>>()?;
    Ok(Tensor::stack(&rows, 1)) // (L+1, S, D)
}

/// Cosine-similarity summary of one layer. See the module docs.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct CosineStats {
    pub intra_chosen: f64,
    pub intra_rejected: f64,
    pub intra: f64,
    pub cross: f64,
    pub matched: f64,
    /// cos(c_i, r_i) per pair.
    pub matched_per_pair: Vec<f64>,
}

/// Rows scaled to unit norm (x / max(|x|, 1e-12)), in f64: (N, D).
fn unit_rows(x: &Tensor) -> Tensor {
    let x = x.to_kind(Kind::Double);
    let n = x.norm_scalaropt_dim(2, [1i64].as_slice(), true).clamp_min(1e-12);
    x / n
}

/// Mean of the off-diagonal entries of a square (N, N) matrix.
fn offdiag_mean(s: &Tensor) -> f64 {
    let n = s.size()[0];
    let total = s.sum(Kind::Double).double_value(&[]);
    let diag = s.diagonal(0, 0, 1).sum(Kind::Double).double_value(&[]);
    (total - diag) / (n * (n - 1)) as f64
}

/// Intra-, cross- and matched-pair cosine similarity of chosen `c` and rejected `r`, both (N, D)
/// with N >= 2, row i of each from pair i.
pub fn cosine_stats(c: &Tensor, r: &Tensor) -> Result<CosineStats> {
    let (cs, rs) = (c.size(), r.size());
    if cs.len() != 2 || cs != rs || cs[0] < 2 {
        return Err(Error::Input(format!("cosine_stats: chosen {cs:?} and rejected {rs:?} must both be (N, D) with N >= 2")));
    }
    let (c, r) = (unit_rows(c), unit_rows(r));
    let cc = c.matmul(&c.tr()); // (N, N)
    let rr = r.matmul(&r.tr());
    let cr = c.matmul(&r.tr()); // [i, j] = cos(c_i, r_j)
                                // Symmetric matrices: the off-diagonal mean equals the mean over i < j.
    let (intra_chosen, intra_rejected) = (offdiag_mean(&cc), offdiag_mean(&rr));
    let matched_per_pair = Vec::<f64>::try_from(cr.diagonal(0, 0, 1).contiguous())?;
    let matched = matched_per_pair.iter().sum::<f64>() / matched_per_pair.len() as f64;
    Ok(CosineStats {
        intra_chosen,
        intra_rejected,
        intra: (intra_chosen + intra_rejected) / 2.0,
        cross: offdiag_mean(&cr),
        matched,
        matched_per_pair,
    })
}

/// Pearson's r; `None` with fewer than 2 points, unequal lengths, a constant input or a
/// non-finite value.
pub fn pearson(x: &[f64], y: &[f64]) -> Option<f64> {
    let n = x.len();
    if n < 2 || y.len() != n || x.iter().chain(y).any(|v| !v.is_finite()) {
        return None;
    }
    let mx = x.iter().sum::<f64>() / n as f64;
    let my = y.iter().sum::<f64>() / n as f64;
    let (mut sxy, mut sxx, mut syy) = (0.0, 0.0, 0.0);
    for (a, b) in x.iter().zip(y) {
        let (dx, dy) = (a - mx, b - my);
        sxy += dx * dy;
        sxx += dx * dx;
        syy += dy * dy;
    }
    if sxx <= 0.0 || syy <= 0.0 {
        return None;
    }
    Some((sxy / (sxx * syy).sqrt()).clamp(-1.0, 1.0))
}

/// 1-based ranks, ties sharing the mean of the ranks they span (scipy `rankdata(method="average")`).
pub fn ranks(x: &[f64]) -> Vec<f64> {
    let mut idx: Vec<usize> = (0..x.len()).collect();
    idx.sort_by(|&a, &b| x[a].total_cmp(&x[b]));
    let mut out = vec![0.0; x.len()];
    let mut i = 0;
    while i < idx.len() {
        let mut j = i;
        while j + 1 < idx.len() && x[idx[j + 1]] == x[idx[i]] {
            j += 1;
        }
        let avg = (i + j) as f64 / 2.0 + 1.0;
        for &k in &idx[i..=j] {
            out[k] = avg;
        }
        i = j + 1;
    }
    out
}

/// Spearman's rho: Pearson's r of the average ranks (scipy `spearmanr`).
pub fn spearman(x: &[f64], y: &[f64]) -> Option<f64> {
    if x.len() != y.len() || x.iter().chain(y).any(|v| !v.is_finite()) {
        return None;
    }
    pearson(&ranks(x), &ranks(y))
}

/// 95% interval of Pearson's r by the Fisher transform: tanh(atanh(r) ± 1.96 / sqrt(n - 3)); needs n > 3.
pub fn pearson_ci95(r: f64, n: usize) -> Option<(f64, f64)> {
    if n <= 3 || !r.is_finite() {
        return None;
    }
    let z = r.clamp(-1.0 + 1e-12, 1.0 - 1e-12).atanh();
    let h = 1.959963984540054 / ((n - 3) as f64).sqrt();
    Some(((z - h).tanh(), (z + h).tanh()))
}

/// One row of the table: a layer's similarities, and with rewards, their correlations.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct LayerRow {
    /// 0 = embeddings, L = final (normed) hidden state.
    pub layer: usize,
    pub intra: f64,
    pub intra_chosen: f64,
    pub intra_rejected: f64,
    pub cross: f64,
    pub gap: f64,
    pub matched: f64,
    /// corr(cos(c_i, r_i), |r(c_i) - r(r_i)|) across pairs; `None` without an RM or when undefined.
    pub pearson: Option<f64>,
    pub pearson_ci95: Option<(f64, f64)>,
    pub spearman: Option<f64>,
}

/// Per-layer rows from pooled states (L+1, N, D) and, optionally, |reward gap| per pair (N).
/// Also returns cos(c_i^l, r_i^l) as [layer][pair].
pub fn layer_rows(chosen: &Tensor, rejected: &Tensor, abs_gap: Option<&[f64]>) -> Result<(Vec<LayerRow>, Vec<Vec<f64>>)> {
    let s = chosen.size();
    if s.len() != 3 || rejected.size() != s {
        return Err(Error::Input(format!("layer_rows: chosen {s:?} and rejected {:?} must both be (L+1, N, D)", rejected.size())));
    }
    if let Some(g) = abs_gap {
        if g.len() as i64 != s[1] {
            return Err(Error::Input(format!("layer_rows: {} reward gaps for {} pairs", g.len(), s[1])));
        }
    }
    let (mut rows, mut matched) = (vec![], vec![]);
    for l in 0..s[0] {
        let st = cosine_stats(&chosen.get(l), &rejected.get(l))?;
        let (pearson, spearman) = match abs_gap {
            Some(g) => (pearson(&st.matched_per_pair, g), spearman(&st.matched_per_pair, g)),
            None => (None, None),
        };
        rows.push(LayerRow {
            layer: l as usize,
            intra: st.intra,
            intra_chosen: st.intra_chosen,
            intra_rejected: st.intra_rejected,
            cross: st.cross,
            gap: st.intra - st.cross,
            matched: st.matched,
            pearson,
            pearson_ci95: pearson.and_then(|r| pearson_ci95(r, st.matched_per_pair.len())),
            spearman,
        });
        matched.push(st.matched_per_pair);
    }
    Ok((rows, matched))
}

/// Reward-model scores of the pairs' chosen and rejected texts (rendered for the RM: [`render_pair`]).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Rewards {
    pub chosen: Vec<f64>,
    pub rejected: Vec<f64>,
    /// Fraction of pairs with r(chosen) > r(rejected).
    pub accuracy: f64,
    pub mean_abs_gap: f64,
}

impl Rewards {
    pub fn abs_gaps(&self) -> Vec<f64> {
        self.chosen.iter().zip(&self.rejected).map(|(c, r)| (c - r).abs()).collect()
    }
}

/// Scores every pair's chosen and rejected text with `rm` (no gradients).
pub fn score_pairs(rm: &RewardModel, exs: &[&PreferenceExample], max_length: usize, batch: usize) -> Result<Rewards> {
    let n = exs.len();
    let (mut chosen, mut rejected) = (vec![f64::NAN; n], vec![f64::NAN; n]);
    // Plain text and chat renderings tokenize differently (special tokens): score each kind apart.
    let mut groups: [(Vec<usize>, Vec<String>); 2] = Default::default();
    for (i, ex) in exs.iter().enumerate() {
        let (c, r, special) = render_pair(rm, ex).map_err(|e| Error::Input(format!("{}: {e:#}", ex.origin)))?;
        let g = &mut groups[usize::from(special)];
        g.0.push(i);
        g.1.extend([c, r]);
    }
    for (special, (idx, texts)) in groups.iter().enumerate() {
        if idx.is_empty() {
            continue;
        }
        let s = rm.score_texts(texts, special == 1, max_length, batch)?;
        let s = Vec::<f64>::try_from(s.to_kind(Kind::Double))?;
        for (k, &i) in idx.iter().enumerate() {
            chosen[i] = s[2 * k];
            rejected[i] = s[2 * k + 1];
        }
    }
    let wins = chosen.iter().zip(&rejected).filter(|(c, r)| c > r).count();
    let mean_abs_gap = chosen.iter().zip(&rejected).map(|(c, r)| (c - r).abs()).sum::<f64>() / n.max(1) as f64;
    Ok(Rewards { chosen, rejected, accuracy: wins as f64 / n.max(1) as f64, mean_abs_gap })
}

/// A pair left out, and why.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Skipped {
    pub origin: String,
    pub reason: String,
}

/// A pair analysed: where it came from and how many response tokens were pooled.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PairInfo {
    pub origin: String,
    pub chosen_response_tokens: usize,
    pub rejected_response_tokens: usize,
}

/// Everything the analysis found; written as JSON.
#[derive(Debug, Clone, Serialize)]
pub struct HiddenReport {
    pub model: String,
    pub data: String,
    pub rm: Option<String>,
    /// Pairs analysed (N).
    pub pairs: usize,
    /// Decoder layers L: the table has L + 1 rows.
    pub num_layers: usize,
    pub hidden_size: usize,
    pub max_length: usize,
    pub pooling: String,
    pub layers: Vec<LayerRow>,
    pub rewards: Option<Rewards>,
    pub pair_info: Vec<PairInfo>,
    /// Malformed records (with `skip_invalid`) and pairs without response tokens.
    pub skipped: Vec<Skipped>,
    /// cos(c_i^l, r_i^l) as [layer][pair].
    pub matched_cos: Vec<Vec<f64>>,
}

impl HiddenReport {
    /// The terminal table: layer, intra, cross, gap, matched cosine, and the correlations with an RM.
    pub fn table(&self) -> Table {
        let rm = self.rm.is_some();
        let mut h = vec!["layer", "intra", "cross", "gap", "matched"];
        if rm {
            h.extend(["pearson", "spearman"]);
        }
        let mut t = Table::new(h);
        let opt = |v: Option<f64>| fmt_num(v.unwrap_or(f64::NAN), 3);
        for r in &self.layers {
            let mut row = vec![r.layer.to_string(), fmt_num(r.intra, 4), fmt_num(r.cross, 4), fmt_num(r.gap, 4), fmt_num(r.matched, 4)];
            if rm {
                row.extend([opt(r.pearson), opt(r.spearman)]);
            }
            // One cell per header, by construction.
            t.rows.push(row);
        }
        t
    }

    /// Every column, full precision, for the CSV file.
    pub fn csv_table(&self) -> Table {
        let mut t = Table::new([
            "layer",
            "intra",
            "intra_chosen",
            "intra_rejected",
            "cross",
            "gap",
            "matched",
            "pearson",
            "pearson_lo",
            "pearson_hi",
            "spearman",
        ]);
        let opt = |v: Option<f64>| v.map(csv_num).unwrap_or_default();
        for r in &self.layers {
            t.rows.push(vec![
                r.layer.to_string(),
                csv_num(r.intra),
                csv_num(r.intra_chosen),
                csv_num(r.intra_rejected),
                csv_num(r.cross),
                csv_num(r.gap),
                csv_num(r.matched),
                opt(r.pearson),
                opt(r.pearson_ci95.map(|c| c.0)),
                opt(r.pearson_ci95.map(|c| c.1)),
                opt(r.spearman),
            ]);
        }
        t
    }

    /// Writes `hidden_similarity.{csv,json}`, `similarity_by_layer.{png,svg}` and, with an RM,
    /// `reward_correlation_by_layer.{png,svg}` into `out`; returns the paths written.
    pub fn write(&self, out: &Path) -> Result<Vec<PathBuf>> {
        std::fs::create_dir_all(out).map_err(|e| Error::io(out, e))?;
        let csv = out.join("hidden_similarity.csv");
        self.csv_table().write_csv(&csv)?;
        let json = out.join("hidden_similarity.json");
        let v = serde_json::to_value(self).map_err(|e| Error::parse(&json, e))?;
        crate::model::export::write_json(&json, &v)?;
        let mut files = vec![csv, json];

        let xs = |f: &dyn Fn(&LayerRow) -> f64| self.layers.iter().map(|r| (r.layer as f64, f(r))).collect::<Vec<_>>();
        let n = self.pairs as f64;
        // 95% interval of the matched mean over pairs (normal approximation).
        let matched_band: Vec<(f64, f64, f64)> = self
            .matched_cos
            .iter()
            .zip(&self.layers)
            .map(|(v, r)| {
                let sd = (v.iter().map(|x| (x - r.matched).powi(2)).sum::<f64>() / (n - 1.0).max(1.0)).sqrt();
                let h = 1.96 * sd / n.sqrt();
                (r.layer as f64, r.matched - h, r.matched + h)
            })
            .collect();
        let title = format!("Response-pooled hidden states: cosine similarity ({} pairs)", self.pairs);
        let (png, svg) = LineChart::new(title, "layer (0 = embeddings)", "mean cosine similarity").draw(
            &out.join("similarity_by_layer"),
            &[
                Series::new("intra: chosen-chosen, rejected-rejected", xs(&|r| r.intra)),
                Series::new("cross: chosen_i vs rejected_j (i != j)", xs(&|r| r.cross)),
                Series::new("matched: chosen_i vs rejected_i (95% CI)", xs(&|r| r.matched)).with_band(matched_band),
            ],
        )?;
        files.extend([png, svg]);
        if self.rm.is_some() {
            let pearson: Vec<(f64, f64)> = xs(&|r| r.pearson.unwrap_or(f64::NAN));
            let band: Vec<(f64, f64, f64)> =
                self.layers.iter().filter_map(|r| r.pearson_ci95.map(|(lo, hi)| (r.layer as f64, lo, hi))).collect();
            let mut chart = LineChart::new(
                format!("corr(cos(chosen_i, rejected_i), |reward gap|) by layer ({} pairs)", self.pairs),
                "layer (0 = embeddings)",
                "correlation across pairs",
            );
            chart.hlines = vec![0.0];
            let (png, svg) = chart.draw(
                &out.join("reward_correlation_by_layer"),
                &[
                    Series::new("Pearson (95% CI, Fisher z)", pearson).with_band(band),
                    Series::new("Spearman", xs(&|r| r.spearman.unwrap_or(f64::NAN))),
                ],
            )?;
            files.extend([png, svg]);
        }
        Ok(files)
    }
}

/// Loads the model, the pairs and (optionally) the RM, pools, computes the rows. Writes nothing.
pub fn analyze(cfg: &HiddenConfig) -> Result<HiddenReport> {
    if cfg.max_pairs < 2 {
        return Err(Error::Input(format!("max_pairs = {}: the similarities need at least 2 pairs", cfg.max_pairs)));
    }
    if cfg.max_length < 2 || cfg.batch == 0 {
        return Err(Error::Input(format!("max_length = {} must be >= 2 and batch = {} >= 1", cfg.max_length, cfg.batch)));
    }
    let loaded = data::load_preferences(&cfg.data, &LoadOptions { skip_invalid: cfg.skip_invalid })?;
    let mut skipped: Vec<Skipped> = loaded.skipped.iter().map(|(o, why)| Skipped { origin: o.to_string(), reason: why.clone() }).collect();
    let exs: Vec<&PreferenceExample> = loaded.items.iter().take(cfg.max_pairs).collect();

    let lm = CausalLm::load_path(&cfg.model, cfg.device)?;
    let (model, tok) = (lm.model, lm.tokenizer);
    let max_length = cfg.max_length.min(usize::try_from(model.config.max_position_embeddings).unwrap_or(usize::MAX));
    let (mut kept, mut seqs, mut info) = (vec![], vec![], vec![]);
    for ex in &exs {
        match tokenize_pair(&tok, ex, max_length)? {
            Ok(p) => {
                info.push(PairInfo {
                    origin: ex.origin.to_string(),
                    chosen_response_tokens: p.chosen.len() - p.chosen_start,
                    rejected_response_tokens: p.rejected.len() - p.rejected_start,
                });
                seqs.push((p.chosen, p.chosen_start));
                seqs.push((p.rejected, p.rejected_start));
                kept.push(*ex);
            }
            Err(reason) => skipped.push(Skipped { origin: ex.origin.to_string(), reason }),
        }
    }
    if kept.len() < 2 {
        return Err(Error::Input(format!(
            "{}: {} usable pair(s) among the first {}; the similarities need at least 2",
            cfg.data.display(),
            kept.len(),
            exs.len()
        )));
    }
    let pooled = pool_responses(&model, i64::from(tok.pad_id()), &seqs, cfg.batch)?; // (L+1, 2N, D)
    let n = kept.len() as i64;
    let idx = |off: i64| Tensor::arange_start_step(off, 2 * n, 2, (Kind::Int64, Device::Cpu));
    let (chosen, rejected) = (pooled.index_select(1, &idx(0)), pooled.index_select(1, &idx(1))); // (L+1, N, D)
    drop(model);

    let rewards = match &cfg.rm {
        Some(spec) => {
            let rm = RewardModel::load(spec, 0, cfg.device)?;
            Some(score_pairs(&rm, &kept, cfg.max_length, cfg.batch)?)
        }
        None => None,
    };
    let gaps = rewards.as_ref().map(|r| r.abs_gaps());
    let (layers, matched_cos) = layer_rows(&chosen, &rejected, gaps.as_deref())?;
    let s = chosen.size();
    Ok(HiddenReport {
        model: cfg.model.clone(),
        data: cfg.data.display().to_string(),
        rm: cfg.rm.clone(),
        pairs: kept.len(),
        num_layers: (s[0] - 1) as usize,
        hidden_size: s[2] as usize,
        max_length,
        pooling: "mean over response tokens (prompt excluded), per layer of hidden_states".into(),
        layers,
        rewards,
        pair_info: info,
        skipped,
        matched_cos,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(rows: &[&[f64]]) -> Tensor {
        let d = rows[0].len() as i64;
        let flat: Vec<f64> = rows.iter().flat_map(|r| r.iter().copied()).collect();
        Tensor::from_slice(&flat).view([rows.len() as i64, d])
    }

    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() < 1e-9
    }

    #[test]
    fn cosine_stats_by_hand() {
        // c = [e1, e2], r = [e1, (1,1)/.. unnormalised (2, 2)]:
        // intra_chosen = cos(e1, e2) = 0; intra_rejected = cos(e1, (2,2)) = 1/sqrt2;
        // cross = mean(cos(c0, r1), cos(c1, r0)) = mean(1/sqrt2, 0); matched = mean(1, 1/sqrt2).
        let c = t(&[&[1.0, 0.0], &[0.0, 3.0]]);
        let r = t(&[&[5.0, 0.0], &[2.0, 2.0]]);
        let s = cosine_stats(&c, &r).unwrap();
        let h = std::f64::consts::FRAC_1_SQRT_2;
        assert!(close(s.intra_chosen, 0.0), "{s:?}");
        assert!(close(s.intra_rejected, h));
        assert!(close(s.intra, h / 2.0));
        assert!(close(s.cross, h / 2.0));
        assert!(close(s.matched, (1.0 + h) / 2.0));
        assert!(close(s.matched_per_pair[0], 1.0) && close(s.matched_per_pair[1], h));
        // Three pairs: intra over 3 distinct pairs, cross over 6 ordered (i != j) entries.
        let c = t(&[&[1.0, 0.0], &[1.0, 0.0], &[0.0, 1.0]]);
        let r = t(&[&[0.0, 1.0], &[0.0, 1.0], &[0.0, 1.0]]);
        let s = cosine_stats(&c, &r).unwrap();
        assert!(close(s.intra_chosen, 1.0 / 3.0) && close(s.intra_rejected, 1.0));
        // cos(c_i, r_j), i != j: c0.r1 = 0, c0.r2 = 0, c1.r0 = 0, c1.r2 = 0, c2.r0 = 1, c2.r1 = 1.
        assert!(close(s.cross, 2.0 / 6.0));
        assert!(close(s.matched, 1.0 / 3.0));
        // A zero vector has cosine 0 with everything (F.normalize's eps), not NaN.
        let z = cosine_stats(&t(&[&[0.0, 0.0], &[1.0, 0.0]]), &t(&[&[1.0, 0.0], &[1.0, 0.0]])).unwrap();
        assert!(z.matched.is_finite() && close(z.matched, 0.5));
        assert!(cosine_stats(&t(&[&[1.0, 0.0]]), &t(&[&[1.0, 0.0]])).is_err());
    }

    #[test]
    fn pearson_spearman_by_hand() {
        // x = 1..5, y = (2, 4, 5, 4, 5): sxy = 6, sxx = 10, syy = 6 -> r = 6 / sqrt(60).
        let x = [1.0, 2.0, 3.0, 4.0, 5.0];
        let y = [2.0, 4.0, 5.0, 4.0, 5.0];
        assert!(close(pearson(&x, &y).unwrap(), 6.0 / 60f64.sqrt()));
        assert!(close(pearson(&x, &[5.0, 4.0, 3.0, 2.0, 1.0]).unwrap(), -1.0));
        assert_eq!(pearson(&x, &[1.0; 5]), None);
        assert_eq!(pearson(&[1.0], &[2.0]), None);
        // Ties: y ranks (1, 2.5, 4.5, 2.5, 4.5); scipy.stats.spearmanr(x, y) = 0.7378647873726218.
        assert_eq!(ranks(&y), vec![1.0, 2.5, 4.5, 2.5, 4.5]);
        assert!(close(spearman(&x, &y).unwrap(), 0.7378647873726218));
        // Monotone but not linear: Spearman 1.
        assert!(close(spearman(&x, &[1.0, 8.0, 27.0, 64.0, 125.0]).unwrap(), 1.0));
        assert_eq!(spearman(&x, &[1.0, f64::NAN, 2.0, 3.0, 4.0]), None);
        // Fisher z interval: r = 0.5, n = 28 -> atanh(0.5) ± 1.96/5.
        let (lo, hi) = pearson_ci95(0.5, 28).unwrap();
        let z = 0.5f64.atanh();
        assert!(close(lo, (z - 1.959963984540054 / 5.0).tanh()) && close(hi, (z + 1.959963984540054 / 5.0).tanh()));
        assert_eq!(pearson_ci95(0.5, 3), None);
    }

    #[test]
    fn layer_rows_correlate_matched_cos_with_reward_gaps() {
        // Two layers, three pairs; layer 1 = layer 0 scaled (cosines unchanged).
        let c0 = t(&[&[1.0, 0.0], &[1.0, 0.0], &[1.0, 0.0]]);
        let r0 = t(&[&[1.0, 0.0], &[1.0, 1.0], &[0.0, 1.0]]); // matched cos 1, 1/sqrt2, 0
        let c = Tensor::stack(&[&c0, &(&c0 * 2.0)], 0);
        let r = Tensor::stack(&[&r0, &(&r0 * 3.0)], 0);
        let gaps = [0.0, 1.0, 2.0];
        let (rows, m) = layer_rows(&c, &r, Some(&gaps)).unwrap();
        assert_eq!(rows.len(), 2);
        assert_eq!(m.len(), 2);
        assert!(close(rows[0].spearman.unwrap(), -1.0));
        // x = (1, h, 0), y = (0, 1, 2): sxy = -1, syy = 2, sxx = sum (x - mean)^2.
        let h = std::f64::consts::FRAC_1_SQRT_2;
        let m = (1.0 + h) / 3.0;
        let sxx = (1.0 - m).powi(2) + (h - m).powi(2) + m * m;
        assert!(close(rows[0].pearson.unwrap(), -1.0 / (2.0 * sxx).sqrt()));
        assert!(close(rows[1].matched, rows[0].matched));
        assert!(close(rows[0].gap, rows[0].intra - rows[0].cross));
        assert!(layer_rows(&c, &r, Some(&gaps[..2])).is_err());
        let (rows, _) = layer_rows(&c, &r, None).unwrap();
        assert_eq!(rows[0].pearson, None);
    }

    #[test]
    fn common_prefix_counts() {
        assert_eq!(common_prefix(&[1, 2, 3], &[1, 2, 4, 5]), 2);
        assert_eq!(common_prefix::<i64>(&[], &[1]), 0);
    }
}
