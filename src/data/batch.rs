//! From records to tensors: TRL's rendering rule, tokenizing with truncation, padding, and the seeded
//! minibatch order that lets a resumed run restart mid-epoch.
use super::{PreferenceExample, Text};
use crate::error::{Error, Result};
use crate::tokenizer::{Message, Tokenizer};
use rand_chacha::rand_core::{RngCore, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};
use tch::{Device, Tensor};

/// The full chosen and rejected texts of a pair, as TRL's RewardTrainer (`_prepare_dataset`) builds them:
/// - plain text: `prompt + chosen` (no separator), then the tokenizer's EOS token appended unless
///   `chosen` already ends with it (TRL's `add_eos`, non-conversational datasets only);
/// - conversational: the chat template over `prompt ++ chosen` messages, `add_generation_prompt`
///   false (TRL concatenates the lists, then `apply_chat_template`).
///
/// Without a prompt (implicit format) the prompt is empty. Likewise for `rejected`.
pub fn render_preference(tok: &Tokenizer, ex: &PreferenceExample) -> Result<(String, String)> {
    match (&ex.prompt, &ex.chosen, &ex.rejected) {
        (None | Some(Text::Plain(_)), Text::Plain(c), Text::Plain(r)) => {
            let p = match &ex.prompt {
                Some(Text::Plain(p)) => p.as_str(),
                _ => "",
            };
            let full = |x: &str| {
                let mut s = format!("{p}{x}");
                if let Some(eos) = tok.eos_token() {
                    if !x.ends_with(eos) {
                        s.push_str(eos);
                    }
                }
                s
            };
            Ok((full(c), full(r)))
        }
        (None | Some(Text::Chat(_)), Text::Chat(c), Text::Chat(r)) => {
            let p: &[Message] = match &ex.prompt {
                Some(Text::Chat(m)) => m,
                _ => &[],
            };
            let full =
                |x: &[Message]| tok.apply_chat_template(&[p, x].concat(), false).map_err(|e| Error::Input(format!("{}: {e}", ex.origin)));
            Ok((full(c)?, full(r)?))
        }
        _ => Err(Error::Input(format!("{}: one record can't mix plain text and messages", ex.origin))),
    }
}

/// The text a policy continues for an RL prompt: plain text as is; messages through the chat
/// template with `add_generation_prompt` true (TRL `maybe_apply_chat_template` on prompt-only data).
/// Tokenize it with `encode(text, false)` for chat prompts (the template holds its special tokens).
pub fn render_prompt(tok: &Tokenizer, prompt: &Text) -> Result<String> {
    match prompt {
        Text::Plain(s) => Ok(s.clone()),
        Text::Chat(m) => tok.apply_chat_template(m, true),
    }
}

/// Token ids of preference pairs, in the order of the examples given.
#[derive(Debug, Clone, PartialEq)]
pub struct TokenizedPairs {
    /// (chosen ids, rejected ids) per example.
    pub pairs: Vec<(Vec<i64>, Vec<i64>)>,
    /// Indices of the examples whose chosen or rejected ids were cut to `max_length`.
    pub truncated: Vec<usize>,
}

/// Tokenizes each pair's [`render_preference`] texts. Plain text is encoded with special tokens
/// (BOS when the tokenizer's `add_bos` is set, as `tokenizer(text)` in TRL); chat text without
/// them (transformers' `apply_chat_template(tokenize=True)`: the template already holds them).
///
/// With `max_length`, longer sequences keep their first `max_length` tokens (TRL's
/// `truncation_mode="keep_start"`) and their indices are listed in `truncated`. Note that TRL's
/// RewardTrainer drops such pairs instead (`filter(len <= max_length)`); to match it, remove the
/// `truncated` indices, which are exactly the pairs that exceeded `max_length`.
pub fn tokenize_pairs(tok: &Tokenizer, examples: &[PreferenceExample], max_length: Option<usize>) -> Result<TokenizedPairs> {
    if max_length == Some(0) {
        return Err(Error::Input("tokenize_pairs: max_length must be at least 1".into()));
    }
    let mut texts = Vec::with_capacity(examples.len());
    for ex in examples {
        texts.push(render_preference(tok, ex)?);
    }
    // Two batched encodes (plain with special tokens, chat without), scattered back in order.
    let mut ids: Vec<Option<(Vec<i64>, Vec<i64>)>> = vec![None; examples.len()];
    for chat in [false, true] {
        let which: Vec<usize> = (0..examples.len()).filter(|&i| examples[i].chosen.is_chat() == chat).collect();
        if which.is_empty() {
            continue;
        }
        let flat: Vec<&str> = which.iter().flat_map(|&i| [texts[i].0.as_str(), texts[i].1.as_str()]).collect();
        let enc = tok.encode_batch(&flat, !chat)?;
        let to_i64 = |v: &Vec<u32>| v.iter().map(|&t| i64::from(t)).collect::<Vec<i64>>();
        for (k, &i) in which.iter().enumerate() {
            ids[i] = Some((to_i64(&enc[2 * k]), to_i64(&enc[2 * k + 1])));
        }
    }
    let mut out = TokenizedPairs { pairs: Vec::with_capacity(examples.len()), truncated: Vec::new() };
    for (i, pair) in ids.into_iter().enumerate() {
        // Every index is either plain or chat, so both passes above filled every slot.
        let (mut c, mut r) = pair.ok_or_else(|| Error::Input(format!("tokenize_pairs: example {i} not encoded")))?;
        if let Some(m) = max_length {
            if c.len() > m || r.len() > m {
                c.truncate(m);
                r.truncate(m);
                out.truncated.push(i);
            }
        }
        out.pairs.push((c, r));
    }
    Ok(out)
}

/// Which end gets the padding: `Left` for generation (prompts end at the same column), `Right` for
/// scoring and training (TRL's preference collator).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PadSide {
    Left,
    Right,
}

/// Padded token ids and their attention mask (1 on tokens, 0 on padding), both (B, T) i64 with
/// T the longest sequence.
#[derive(Debug)]
pub struct TokenBatch {
    pub ids: Tensor,
    pub mask: Tensor,
}

impl TokenBatch {
    pub fn to_device(&self, dev: Device) -> TokenBatch {
        TokenBatch { ids: self.ids.to_device(dev), mask: self.mask.to_device(dev) }
    }
}

/// Pads `seqs` to the longest with `pad_id` on `side`. An empty list gives (0, 0) tensors.
pub fn pad_batch(seqs: &[Vec<i64>], pad_id: i64, side: PadSide) -> TokenBatch {
    let t = seqs.iter().map(Vec::len).max().unwrap_or(0);
    let mut ids = Vec::with_capacity(seqs.len() * t);
    let mut mask = Vec::with_capacity(seqs.len() * t);
    for s in seqs {
        let pad = t - s.len();
        if side == PadSide::Left {
            ids.extend(std::iter::repeat_n(pad_id, pad));
            mask.extend(std::iter::repeat_n(0i64, pad));
        }
        ids.extend_from_slice(s);
        mask.extend(std::iter::repeat_n(1i64, s.len()));
        if side == PadSide::Right {
            ids.extend(std::iter::repeat_n(pad_id, pad));
            mask.extend(std::iter::repeat_n(0i64, pad));
        }
    }
    let shape = [seqs.len() as i64, t as i64];
    TokenBatch { ids: Tensor::from_slice(&ids).view(shape), mask: Tensor::from_slice(&mask).view(shape) }
    // (B, T)
}

/// The reward-model batch of pairs `idx`: (2B, T), chosen rows first then rejected rows, padded
/// right, as TRL's `DataCollatorForPreference` (`input_ids = chosen_ids + rejected_ids`).
pub fn collate_pairs(pairs: &[(Vec<i64>, Vec<i64>)], idx: &[usize], pad_id: i64) -> Result<TokenBatch> {
    if let Some(&bad) = idx.iter().find(|&&i| i >= pairs.len()) {
        return Err(Error::Input(format!("collate_pairs: index {bad} out of range ({} pairs)", pairs.len())));
    }
    let seqs: Vec<Vec<i64>> = idx.iter().map(|&i| pairs[i].0.clone()).chain(idx.iter().map(|&i| pairs[i].1.clone())).collect();
    Ok(pad_batch(&seqs, pad_id, PadSide::Right))
}

/// A seeded permutation of `0..n`: Fisher-Yates from the last index down; for i = n-1 ..= 1, swap
/// i with j = floor(u * (i + 1) / 2^64), where u is the next `u64` of
/// `ChaCha8Rng::seed_from_u64(seed)` on stream `stream` (`set_stream`). Defined here rather than
/// through `rand::seq::SliceRandom`, whose algorithm may change between `rand` versions.
pub(crate) fn permutation(n: usize, seed: u64, stream: u64) -> Vec<usize> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    rng.set_stream(stream);
    let mut p: Vec<usize> = (0..n).collect();
    for i in (1..n).rev() {
        let j = ((u128::from(rng.next_u64()) * (i as u128 + 1)) >> 64) as usize;
        p.swap(i, j);
    }
    p
}

/// The order in which epoch `epoch` visits `n` examples: [`permutation`] on ChaCha8 stream
/// `epoch`, so each epoch's order is a pure function of (n, seed, epoch) and can be recomputed on
/// resume without replaying earlier epochs.
pub fn epoch_order(n: usize, seed: u64, epoch: u64) -> Vec<usize> {
    permutation(n, seed, epoch)
}

/// Where a stream of minibatches stands: the next batch is batch `batch` of epoch `epoch`. Saved
/// in checkpoints; [`Batcher::batches_from`] resumes from it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Cursor {
    pub epoch: u64,
    pub batch: usize,
}

/// Minibatches of indices into `n` examples: each epoch visits them in [`epoch_order`] and cuts
/// that order into consecutive `batch_size` chunks. The last, shorter chunk is kept unless
/// `drop_last` (TRL/transformers' `dataloader_drop_last`, default false).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Batcher {
    n: usize,
    batch_size: usize,
    seed: u64,
    drop_last: bool,
}

impl Batcher {
    pub fn new(n: usize, batch_size: usize, seed: u64, drop_last: bool) -> Result<Self> {
        if batch_size == 0 {
            return Err(Error::Input("batcher: batch_size must be at least 1".into()));
        }
        if n == 0 || (drop_last && n < batch_size) {
            return Err(Error::Input(format!(
                "batcher: {n} examples make no batch of {batch_size}{}",
                if drop_last { " with drop_last" } else { "" }
            )));
        }
        Ok(Batcher { n, batch_size, seed, drop_last })
    }

    /// Number of examples.
    pub fn n(&self) -> usize {
        self.n
    }
    pub fn batch_size(&self) -> usize {
        self.batch_size
    }
    pub fn seed(&self) -> u64 {
        self.seed
    }

    /// Batches per epoch.
    pub fn batches_per_epoch(&self) -> usize {
        if self.drop_last {
            self.n / self.batch_size
        } else {
            self.n.div_ceil(self.batch_size)
        }
    }

    /// All batches of epoch `epoch`, in order.
    pub fn epoch(&self, epoch: u64) -> Vec<Vec<usize>> {
        let order = epoch_order(self.n, self.seed, epoch);
        (0..self.batches_per_epoch()).map(|b| self.chunk(&order, b).to_vec()).collect()
    }

    fn chunk<'a>(&self, order: &'a [usize], b: usize) -> &'a [usize] {
        &order[b * self.batch_size..((b + 1) * self.batch_size).min(self.n)]
    }

    /// An endless stream of (position, indices) starting at `at`, rolling over into later epochs.
    /// `at.batch == batches_per_epoch()` means the start of the next epoch.
    pub fn batches_from(&self, at: Cursor) -> Result<Batches> {
        let per = self.batches_per_epoch();
        if at.batch > per {
            return Err(Error::Input(format!(
                "batcher: resume position batch {} of epoch {} is past the epoch's {per} batches",
                at.batch, at.epoch
            )));
        }
        Ok(Batches { b: *self, order: epoch_order(self.n, self.seed, at.epoch), at })
    }
}

/// Iterator from [`Batcher::batches_from`]; never ends.
#[derive(Debug, Clone)]
pub struct Batches {
    b: Batcher,
    order: Vec<usize>,
    at: Cursor,
}

impl Batches {
    /// The position of the next batch: save it to resume after the batches taken so far.
    pub fn position(&self) -> Cursor {
        self.at
    }
}

impl Iterator for Batches {
    type Item = (Cursor, Vec<usize>);
    fn next(&mut self) -> Option<Self::Item> {
        if self.at.batch >= self.b.batches_per_epoch() {
            self.at = Cursor { epoch: self.at.epoch + 1, batch: 0 };
            self.order = epoch_order(self.b.n, self.b.seed, self.at.epoch);
        }
        let here = self.at;
        let idx = self.b.chunk(&self.order, here.batch).to_vec();
        self.at.batch += 1;
        Some((here, idx))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::Origin;

    #[test]
    fn epoch_order_is_a_deterministic_permutation() {
        for n in [0, 1, 2, 7, 100] {
            let a = epoch_order(n, 42, 3);
            let mut s = a.clone();
            s.sort();
            assert_eq!(s, (0..n).collect::<Vec<_>>());
            assert_eq!(a, epoch_order(n, 42, 3));
        }
        let a = epoch_order(100, 42, 0);
        assert_ne!(a, epoch_order(100, 42, 1), "epochs differ");
        assert_ne!(a, epoch_order(100, 43, 0), "seeds differ");
        assert_ne!(a, (0..100).collect::<Vec<_>>());
        // Pinned: a change of algorithm or rng would silently change every run's data order.
        assert_eq!(epoch_order(10, 0, 0), PINNED);
    }
    const PINNED: [usize; 10] = [6, 1, 8, 3, 2, 9, 0, 5, 4, 7];

    #[test]
    fn permutation_is_roughly_uniform() {
        // Position of element 0 over many seeds: each of 4 slots about 1/4 of the time.
        let mut count = [0usize; 4];
        for seed in 0..4000 {
            let p = epoch_order(4, seed, 0);
            count[p.iter().position(|&x| x == 0).unwrap()] += 1;
        }
        assert!(count.iter().all(|&c| (850..1150).contains(&c)), "{count:?}");
    }

    #[test]
    fn batcher_resumes_mid_epoch() {
        let b = Batcher::new(10, 4, 9, false).unwrap();
        assert_eq!(b.batches_per_epoch(), 3);
        let e0 = b.epoch(0);
        assert_eq!(e0.iter().map(Vec::len).collect::<Vec<_>>(), [4, 4, 2]);
        assert_eq!(e0.concat(), epoch_order(10, 9, 0));
        let all: Vec<_> = b.batches_from(Cursor::default()).unwrap().take(7).collect();
        assert_eq!(all[3], (Cursor { epoch: 1, batch: 0 }, b.epoch(1)[0].clone()));
        // Stop after 5 batches, save the position, resume: the same stream continues.
        let mut it = b.batches_from(Cursor::default()).unwrap();
        it.by_ref().take(5).for_each(drop);
        let pos = it.position();
        assert_eq!(pos, Cursor { epoch: 1, batch: 2 });
        let resumed: Vec<_> = b.batches_from(pos).unwrap().take(2).collect();
        assert_eq!(resumed, all[5..7]);
        // End-of-epoch position rolls over.
        let next = b.batches_from(Cursor { epoch: 0, batch: 3 }).unwrap().next().unwrap();
        assert_eq!(next.0, Cursor { epoch: 1, batch: 0 });
        assert!(b.batches_from(Cursor { epoch: 0, batch: 4 }).is_err());

        let d = Batcher::new(10, 4, 9, true).unwrap();
        assert_eq!(d.epoch(0), e0[..2]);
        assert!(Batcher::new(3, 4, 0, true).is_err());
        assert!(Batcher::new(3, 0, 0, false).is_err());
    }

    #[test]
    fn padding_sides() {
        let seqs = vec![vec![5, 6, 7], vec![8], vec![]];
        let r = pad_batch(&seqs, 0, PadSide::Right);
        assert_eq!(r.ids.size(), [3, 3]);
        assert_eq!(Vec::<i64>::try_from(r.ids.view(-1)).unwrap(), [5, 6, 7, 8, 0, 0, 0, 0, 0]);
        assert_eq!(Vec::<i64>::try_from(r.mask.view(-1)).unwrap(), [1, 1, 1, 1, 0, 0, 0, 0, 0]);
        let l = pad_batch(&seqs, -1, PadSide::Left);
        assert_eq!(Vec::<i64>::try_from(l.ids.view(-1)).unwrap(), [5, 6, 7, -1, -1, 8, -1, -1, -1]);
        assert_eq!(Vec::<i64>::try_from(l.mask.view(-1)).unwrap(), [1, 1, 1, 0, 0, 1, 0, 0, 0]);
        assert_eq!(l.ids.kind(), tch::Kind::Int64);
        // Same as generation's left_pad.
        let (ids, mask) = crate::model::generate::left_pad(&seqs, -1, Device::Cpu);
        assert!(ids.equal(&l.ids) && mask.equal(&l.mask));
        assert_eq!(pad_batch(&[], 0, PadSide::Left).ids.size(), [0, 0]);
    }

    #[test]
    fn collate_puts_chosen_first() {
        let pairs = vec![(vec![1, 2], vec![3]), (vec![4], vec![5, 6, 7])];
        let b = collate_pairs(&pairs, &[1, 0], 0).unwrap();
        assert_eq!(b.ids.size(), [4, 3]);
        assert_eq!(Vec::<i64>::try_from(b.ids.view(-1)).unwrap(), [4, 0, 0, 1, 2, 0, 5, 6, 7, 3, 0, 0]);
        assert!(collate_pairs(&pairs, &[2], 0).is_err());
    }

    #[test]
    fn render_rejects_mixed_examples() {
        // The loader never builds these; code might.
        let tok = tiny_tokenizer();
        let ex = PreferenceExample {
            prompt: Some(Text::Chat(vec![Message::user("hi")])),
            chosen: Text::Plain("a".into()),
            rejected: Text::Plain("b".into()),
            origin: Origin { file: "x.jsonl".into(), line: 4 },
        };
        let e = render_preference(&tok, &ex).unwrap_err().to_string();
        assert!(e.contains("x.jsonl:4: one record can't mix"), "{e}");
    }

    /// A word-level tokenizer over a few words, with `<s>` and `</s>`; enough for rendering and
    /// truncation tests (SmolLM2 runs in tests/it/data.rs).
    pub(crate) fn tiny_tokenizer() -> Tokenizer {
        let dir = tempfile::tempdir().unwrap();
        let words = ["<unk>", "<s>", "</s>", "a", "b", "c", "d", "e"];
        let vocab: String = words.iter().enumerate().map(|(i, w)| format!("\"{w}\": {i}")).collect::<Vec<_>>().join(", ");
        let tj = format!(
            r#"{{"version": "1.0", "truncation": null, "padding": null,
            "added_tokens": [{{"id": 1, "content": "<s>", "single_word": false, "lstrip": false, "rstrip": false, "normalized": false, "special": true}},
                             {{"id": 2, "content": "</s>", "single_word": false, "lstrip": false, "rstrip": false, "normalized": false, "special": true}}],
            "normalizer": null, "pre_tokenizer": {{"type": "Whitespace"}}, "post_processor": null, "decoder": null,
            "model": {{"type": "WordLevel", "vocab": {{{vocab}}}, "unk_token": "<unk>"}}}}"#
        );
        std::fs::write(dir.path().join("tokenizer.json"), tj).unwrap();
        std::fs::write(dir.path().join("tokenizer_config.json"), r#"{"bos_token": "<s>", "eos_token": "</s>", "add_bos_token": true}"#)
            .unwrap();
        let mut tok = Tokenizer::from_hf_dir(dir.path()).unwrap();
        tok.set_add_bos(true).unwrap();
        tok
    }

    #[test]
    fn plain_render_and_truncation() {
        let tok = tiny_tokenizer();
        let ex = |p: Option<&str>, c: &str, r: &str| PreferenceExample {
            prompt: p.map(|p| Text::Plain(p.into())),
            chosen: Text::Plain(c.into()),
            rejected: Text::Plain(r.into()),
            origin: Origin { file: "x.jsonl".into(), line: 1 },
        };
        let exs = [ex(Some("e a"), " b", " c d</s>"), ex(None, "a b c d e", "a")];
        // TRL: prompt + chosen, EOS appended unless already there.
        assert_eq!(render_preference(&tok, &exs[0]).unwrap(), ("e a b</s>".to_string(), "e a c d</s>".to_string()));
        assert_eq!(render_preference(&tok, &exs[1]).unwrap().0, "a b c d e</s>");
        let t = tokenize_pairs(&tok, &exs, None).unwrap();
        assert!(tok.add_bos());
        assert_eq!(t.pairs[0], (vec![1, 7, 3, 4, 2], vec![1, 7, 3, 5, 6, 2]));
        assert!(t.truncated.is_empty());
        let t = tokenize_pairs(&tok, &exs, Some(5)).unwrap();
        assert_eq!(t.pairs[0], (vec![1, 7, 3, 4, 2], vec![1, 7, 3, 5, 6]), "keeps the start");
        assert_eq!(t.pairs[1], (vec![1, 3, 4, 5, 6], vec![1, 3, 2]));
        assert_eq!(t.truncated, [0, 1]);
        assert!(tokenize_pairs(&tok, &exs, Some(0)).is_err());
    }
}
