//! The policy and the reward model in different process groups (the R2M paper's deployment,
//! its section 6.1): the frozen reward model runs on a rank of its own (in a real deployment, its
//! own node), and what crosses between it and the policy's ranks is small. The policy's ranks send
//! the texts to score (prompt and response, as JSON); the reward-model rank sends back each
//! response's reward-token embedding (RTE: the RM's last hidden state H_last, D_rm floats) and
//! its frozen score. The policy's hidden states, B x S x D_p floats a step, never leave its ranks:
//! R2M's cross-attention runs where they are.
//!
//! Every exchange is a collective over the link group (every policy rank and the reward-model
//! rank, the last rank of the job), so the policy's ranks call [`RmLink::embed`] in step (once per
//! annotation, evaluation chunk and ReMax baseline: the same on every rank):
//! 1. an all-gather of each rank's header `[op, bytes, rows]` (`op` 1: score, 0: the run ended);
//! 2. an all-gather of each rank's JSON payload, padded to the longest;
//! 3. the reward-model rank embeds each policy rank's rows in chunks of `reward.batch_size` (the
//!    chunks one process would use) and broadcasts `(rows, D_rm + 1)` floats: H_last and the score.
use super::Group;
use crate::data::PromptExample;
use crate::reward::model::RewardModel;
use anyhow::{bail, ensure, Context, Result};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use tch::{Device, Kind, Tensor};

/// What a policy rank asks of the reward-model rank.
const OP_END: i64 = 0;
const OP_EMBED: i64 = 1;

/// The policy ranks' end of the link to the reward-model rank.
pub struct RmLink {
    group: Group,
    /// The reward-model rank in `group` (the last).
    rm_rank: usize,
    /// Bytes this rank sent to the reward-model rank (its texts) and received from it (its rows'
    /// H_last and scores): the payloads, as the paper counts them.
    sent: AtomicU64,
    received: AtomicU64,
}

impl RmLink {
    /// The link over `group`, whose last rank serves the reward model.
    pub fn new(group: Group) -> RmLink {
        let rm_rank = group.world() - 1;
        RmLink { group, rm_rank, sent: 0.into(), received: 0.into() }
    }

    pub fn group(&self) -> &Group {
        &self.group
    }

    pub fn is_rm_rank(&self) -> bool {
        self.group.rank() == self.rm_rank
    }

    /// (bytes sent to the reward model, bytes received from it) by this rank so far.
    pub fn traffic(&self) -> (u64, u64) {
        (self.sent.load(Relaxed), self.received.load(Relaxed))
    }

    /// The reward model's scoring head (1, D_rm), from the reward-model rank (its
    /// [`serve`] sends it first): R2M's head starts from it and the frozen scores of cached
    /// embeddings apply it. Every policy rank calls it once, before anything else.
    pub fn head(&self) -> Result<Tensor> {
        let mut d = Tensor::zeros([1], (Kind::Int64, Device::Cpu));
        self.group.broadcast(&mut d, self.rm_rank).context("receiving the reward model's width")?;
        let mut head = Tensor::zeros([1, d.int64_value(&[0])], (Kind::Float, Device::Cpu));
        self.group.broadcast(&mut head, self.rm_rank).context("receiving the reward model's head")?;
        Ok(head)
    }

    /// H_last (B, D_rm) and the frozen scores (B) of `(prompt, response)` pairs, from the
    /// reward-model rank, f32 on the CPU.
    pub fn embed(&self, prompts: &[&PromptExample], responses: &[String]) -> Result<(Tensor, Tensor)> {
        let items: Vec<serde_json::Value> =
            prompts.iter().zip(responses).map(|(p, r)| serde_json::json!({"prompt": p.prompt, "response": r})).collect();
        let payload = serde_json::to_vec(&items)?;
        let headers = self.headers([OP_EMBED, payload.len() as i64, items.len() as i64])?;
        self.gather_payloads(&payload, &headers)?;
        let total: i64 = headers.iter().map(|h| h[2]).sum();
        let before: i64 = headers[..self.group.rank()].iter().map(|h| h[2]).sum();
        let mut d = Tensor::zeros([1], (Kind::Int64, Device::Cpu));
        self.group.broadcast(&mut d, self.rm_rank).context("receiving the embeddings' width")?;
        let width = d.int64_value(&[0]);
        let mut out = Tensor::zeros([total, width + 1], (Kind::Float, Device::Cpu));
        self.group.broadcast(&mut out, self.rm_rank).context("receiving H_last and the scores from the reward-model rank")?;
        let mine = out.narrow(0, before, items.len() as i64);
        self.sent.fetch_add(payload.len() as u64, Relaxed);
        self.received.fetch_add((mine.numel() * 4) as u64, Relaxed);
        Ok((mine.narrow(1, 0, width).contiguous(), mine.select(1, width).contiguous()))
    }

    /// Tells the reward-model rank that this rank's run has ended (every policy rank calls it once).
    pub fn finish(&self) -> Result<()> {
        let headers = self.headers([OP_END, 0, 0])?;
        self.gather_payloads(&[], &headers).map(|_| ())
    }

    /// Every rank's header, rank order (the reward-model rank's is all zeros).
    fn headers(&self, mine: [i64; 3]) -> Result<Vec<[i64; 3]>> {
        let w = self.group.world();
        let mut all = Tensor::zeros([3 * w as i64], (Kind::Int64, Device::Cpu));
        self.group.all_gather(&mut all, &Tensor::from_slice(&mine)).context("the reward-model link's request headers")?;
        let v = Vec::<i64>::try_from(&all)?;
        Ok(v.chunks(3).map(|c| [c[0], c[1], c[2]]).collect())
    }

    /// Every rank's payload (padded to the longest), rank order.
    fn gather_payloads(&self, mine: &[u8], headers: &[[i64; 3]]) -> Result<Vec<Vec<u8>>> {
        let most = headers.iter().map(|h| h[1]).max().unwrap_or(0);
        if most == 0 {
            return Ok(vec![vec![]; headers.len()]);
        }
        let mut padded = mine.to_vec();
        padded.resize(most as usize, 0);
        let mut all = Tensor::zeros([most * headers.len() as i64], (Kind::Uint8, Device::Cpu));
        self.group.all_gather(&mut all, &Tensor::from_slice(&padded)).context("the reward-model link's request payloads")?;
        let v = Vec::<u8>::try_from(&all)?;
        Ok(headers.iter().enumerate().map(|(r, h)| v[r * most as usize..r * most as usize + h[1] as usize].to_vec()).collect())
    }
}

/// What the reward-model rank did: requests, rows embedded, bytes received and sent.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Served {
    pub requests: u64,
    pub rows: u64,
    pub bytes_in: u64,
    pub bytes_out: u64,
}

/// The reward-model rank's loop: sends `rm`'s head, then embeds each request's rows (each policy
/// rank's in chunks of `batch_size`, truncated to `max_length` tokens) until every policy rank has
/// said its run ended. A request the policy ranks disagree on is an error naming them.
pub fn serve(link: &RmLink, rm: &RewardModel, max_length: usize, batch_size: usize) -> Result<Served> {
    ensure!(link.is_rm_rank(), "serve: rank {} is not the reward-model rank {}", link.group.rank(), link.rm_rank);
    let _g = tch::no_grad_guard();
    let head = rm.head.detach().to_device(Device::Cpu).to_kind(Kind::Float).contiguous();
    let mut d = Tensor::from_slice(&[rm.embed_dim()]);
    link.group.broadcast(&mut d, link.rm_rank)?;
    let mut h = head.shallow_clone();
    link.group.broadcast(&mut h, link.rm_rank)?;
    let mut served = Served::default();
    loop {
        let headers = link.headers([OP_END, 0, 0])?;
        let policy = &headers[..link.rm_rank];
        let payloads = link.gather_payloads(&[], &headers)?;
        if policy.iter().all(|h| h[0] == OP_END) {
            return Ok(served);
        }
        if let Some(r) = policy.iter().position(|h| h[0] != OP_EMBED) {
            bail!("reward-model link: policy rank {r} ended its run while the others asked for scores (the ranks are out of step)");
        }
        let mut rows = vec![];
        for (r, p) in payloads[..link.rm_rank].iter().enumerate() {
            let items: Vec<serde_json::Value> =
                serde_json::from_slice(p).with_context(|| format!("reward-model link: policy rank {r}'s request"))?;
            ensure!(
                items.len() as i64 == policy[r][2],
                "reward-model link: policy rank {r} sent {} rows, its header says {}",
                items.len(),
                policy[r][2]
            );
            let mut texts = vec![];
            let mut special = true;
            for it in &items {
                let prompt =
                    crate::data::parse_text("prompt", it["prompt"].clone()).map_err(|e| anyhow::anyhow!("policy rank {r}: {e}"))?;
                let response = it["response"].as_str().with_context(|| format!("policy rank {r}: a row without a response"))?;
                let (t, s) = crate::reward::source::rm_text(rm, &prompt, response)?;
                special = s;
                texts.push(t);
            }
            for chunk in texts.chunks(batch_size.max(1)) {
                let b = rm.tokenize(chunk, special, max_length)?;
                let e = rm.embed(&b)?;
                let s = rm.score_embedding(&e);
                rows.push(Tensor::cat(&[e.to_kind(Kind::Float), s.to_kind(Kind::Float).unsqueeze(1)], 1).to_device(Device::Cpu));
            }
            served.bytes_in += p.len() as u64;
        }
        let mut d = Tensor::from_slice(&[rm.embed_dim()]);
        link.group.broadcast(&mut d, link.rm_rank)?;
        let mut out = if rows.is_empty() {
            Tensor::zeros([0, rm.embed_dim() + 1], (Kind::Float, Device::Cpu))
        } else {
            Tensor::cat(&rows, 0).contiguous()
        };
        link.group.broadcast(&mut out, link.rm_rank)?;
        served.requests += 1;
        served.rows += out.size()[0] as u64;
        served.bytes_out += (out.numel() * 4) as u64;
    }
}
