//! ZeRO stage 1: AdamW's two moments sharded over the ranks, so that each rank holds 1/N of the
//! optimiser state instead of all of it (the parameters and gradients stay whole on every rank).
//!
//! The trained parameters are laid out in the flat buckets the data parallel all-reduce uses
//! (one dtype, at most [`BUCKET_BYTES`](super::dp::BUCKET_BYTES) each), and each bucket, padded
//! to a multiple of N elements, is cut into N equal shards: rank r owns shard r of every bucket,
//! and the moments of those elements only. One update ([`Zero1::step`]):
//! 1. each bucket's gradients, flattened, are **reduce-scattered**: rank r receives the sum over
//!    ranks of its shard (half the bytes of an all-reduce);
//! 2. the global gradient norm is the square root of the all-reduced sum of the shards' squares,
//!    and every rank scales its shard by the same clip coefficient (torch's `clip_grad_norm_`);
//! 3. libtorch's fused AdamW updates the rank's shard in place (views into the parameters, the
//!    weight decay per parameter as in [`AdamW`]);
//! 4. the updated shards are **all-gathered** into every rank's parameters.
//!
//! The arithmetic per element is plain AdamW's, so the result equals the replicated optimiser's
//! up to the summation order of the gradient norm. Checkpoints hold the whole moments under
//! [`AdamW::state`]'s names ([`Zero1::full_state`] gathers them), so a run saved with ZeRO-1 on N
//! ranks resumes with or without it, on any number of ranks.
use super::dp::{buckets, ensure_grads, BUCKET_BYTES};
use super::{Group, ReduceOp};
use crate::train::{ensure_finite, AdamW};
use anyhow::{Context, Result};
use tch::{Kind, Tensor};

/// A run of one parameter's elements inside this rank's shard of a bucket.
#[derive(Debug, Clone, PartialEq)]
struct Segment {
    /// Index into the optimiser's parameters.
    param: usize,
    /// First element within the (flattened) parameter.
    start: i64,
    len: i64,
    /// First element within the shard.
    at: i64,
}

/// One bucket: its parameters in order, its elements, this rank's shard and that shard's moments.
struct Bucket {
    params: Vec<usize>,
    numel: i64,
    /// Elements per shard (the bucket padded to world x shard).
    shard: i64,
    segments: Vec<Segment>,
    exp_avg: Tensor,
    exp_avg_sq: Tensor,
}

/// The segments of the parameters of sizes `sizes` (laid out back to back) that fall in shard
/// `rank` of `shard` elements.
fn segments(params: &[usize], sizes: &[i64], rank: usize, shard: i64) -> Vec<Segment> {
    let (lo, hi) = (rank as i64 * shard, (rank as i64 + 1) * shard);
    let mut out = vec![];
    let mut off = 0i64;
    for (&param, &n) in params.iter().zip(sizes) {
        let (a, b) = (off.max(lo), (off + n).min(hi));
        if a < b {
            out.push(Segment { param, start: a - off, len: b - a, at: a - lo });
        }
        off += n;
    }
    out
}

/// AdamW's moments for this rank's shards; the optimiser's hyper-parameters, step counter and
/// parameters stay in the [`AdamW`] it was made from (whose whole moments it releases).
pub struct Zero1 {
    rank: usize,
    world: usize,
    buckets: Vec<Bucket>,
}

impl Zero1 {
    /// Shards `opt`'s moments over `world` ranks (this one is `rank`), taking this rank's part of
    /// the moments `opt` holds (zeros for a fresh optimiser) and releasing the rest.
    pub fn new(opt: &mut AdamW, rank: usize, world: usize) -> Result<Zero1> {
        anyhow::ensure!(world >= 1 && rank < world, "ZeRO-1: rank {rank} of {world}");
        let ts: Vec<Tensor> = opt.params.iter().map(|(_, p)| p.shallow_clone()).collect();
        let whole = (!opt.moments_released()).then(|| (std::mem::take(&mut opt.exp_avg), std::mem::take(&mut opt.exp_avg_sq)));
        let mut out = Zero1 { rank, world, buckets: vec![] };
        for params in buckets(&ts, BUCKET_BYTES) {
            let sizes: Vec<i64> = params.iter().map(|&i| ts[i].numel() as i64).collect();
            let numel: i64 = sizes.iter().sum();
            let shard = (numel + world as i64 - 1) / world as i64;
            let opts = (ts[params[0]].kind(), ts[params[0]].device());
            out.buckets.push(Bucket {
                segments: segments(&params, &sizes, rank, shard),
                params,
                numel,
                shard,
                exp_avg: Tensor::zeros([shard], opts),
                exp_avg_sq: Tensor::zeros([shard], opts),
            });
        }
        if let Some((m, v)) = whole {
            out.take_shards(|i| m[i].shallow_clone(), |i| v[i].shallow_clone())?;
        }
        opt.release_moments();
        Ok(out)
    }

    /// The bytes of optimiser state this rank holds (the moments' shards).
    pub fn state_bytes(&self) -> usize {
        self.buckets.iter().map(|b| 2 * b.shard as usize * b.exp_avg.kind().elt_size_in_bytes()).sum()
    }

    /// Copies this rank's slices of whole per-parameter moments into the shards.
    fn take_shards(&mut self, m: impl Fn(usize) -> Tensor, v: impl Fn(usize) -> Tensor) -> Result<()> {
        let _g = tch::no_grad_guard();
        for b in &mut self.buckets {
            for s in &b.segments {
                let (mi, vi) = (m(s.param), v(s.param));
                b.exp_avg.narrow(0, s.at, s.len).copy_(&mi.reshape([-1]).narrow(0, s.start, s.len));
                b.exp_avg_sq.narrow(0, s.at, s.len).copy_(&vi.reshape([-1]).narrow(0, s.start, s.len));
            }
        }
        Ok(())
    }

    /// One optimiser update of the data parallel job on `group` (see the module's steps): sums the
    /// gradients over the ranks, clips them to `max_norm` by their global norm, checks that norm
    /// is finite (`what` names the update in the error), steps AdamW at `lr` on this rank's shard
    /// and gathers the parameters. Returns the norm before clipping. Every rank must call it.
    pub fn step(&mut self, opt: &mut AdamW, group: &Group, max_norm: f64, lr: f64, what: &str) -> Result<f64> {
        anyhow::ensure!(
            group.rank() == self.rank && group.world() == self.world,
            "ZeRO-1: the shards were cut for rank {} of {}, the group is rank {} of {}",
            self.rank,
            self.world,
            group.rank(),
            group.world()
        );
        // Every parameter has a gradient (zeros where this rank's backward did not reach), so that
        // every rank joins the same collectives.
        ensure_grads(&opt.params);
        let _g = tch::no_grad_guard();
        // 1. This rank's shard of the summed gradients, bucket by bucket.
        let mut grads = Vec::with_capacity(self.buckets.len());
        for b in &self.buckets {
            let mut parts: Vec<Tensor> = b.params.iter().map(|&i| opt.params[i].1.grad().reshape([-1])).collect();
            let pad = b.shard * self.world as i64 - b.numel;
            if pad > 0 {
                parts.push(Tensor::zeros([pad], (b.exp_avg.kind(), b.exp_avg.device())));
            }
            let flat = Tensor::cat(&parts, 0);
            let mut mine = Tensor::zeros([b.shard], (b.exp_avg.kind(), b.exp_avg.device()));
            group.reduce_scatter(&mut mine, &flat, ReduceOp::Sum).with_context(|| format!("{what}: summing the gradients"))?;
            grads.push(mine);
        }
        // 2. The global norm from the shards' sums of squares; the same clip on every rank.
        let local: f64 = grads.iter().map(|g| g.to_kind(Kind::Double).square().sum(Kind::Double).double_value(&[])).sum();
        let norm = group.sum_f64(&[local])?[0].sqrt();
        ensure_finite(norm, &format!("gradient norm ({what})"))?;
        let coef = (max_norm / (norm + 1e-6)).min(1.0);
        if coef < 1.0 {
            for g in &mut grads {
                let _ = g.g_mul_scalar_(coef);
            }
        }
        // 3. AdamW on the shard: views into the parameters, grouped by dtype and weight decay.
        opt.step += 1;
        let c = opt.cfg.clone();
        let mut groups: Vec<((Kind, bool), Vec<(usize, usize)>)> = vec![];
        for (bi, b) in self.buckets.iter().enumerate() {
            for (si, s) in b.segments.iter().enumerate() {
                let key = (b.exp_avg.kind(), opt.no_decay(s.param));
                match groups.iter_mut().find(|(k, _)| *k == key) {
                    Some((_, v)) => v.push((bi, si)),
                    None => groups.push((key, vec![(bi, si)])),
                }
            }
        }
        for ((_, no_decay), ix) in groups {
            let (mut p, mut g, mut m, mut v) = (vec![], vec![], vec![], vec![]);
            for &(bi, si) in &ix {
                let (b, s) = (&self.buckets[bi], &self.buckets[bi].segments[si]);
                p.push(opt.params[s.param].1.detach().view([-1]).narrow(0, s.start, s.len));
                g.push(grads[bi].narrow(0, s.at, s.len));
                m.push(b.exp_avg.narrow(0, s.at, s.len));
                v.push(b.exp_avg_sq.narrow(0, s.at, s.len));
            }
            let step = Tensor::from(opt.step as f32).to_device(b_device(&self.buckets));
            let wd = if no_decay { 0.0 } else { c.weight_decay };
            c.fused_step(&p, &g, &m, &v, &step, lr, wd)
                .map_err(|e| anyhow::anyhow!("{what}: AdamW step {} on rank {}'s shard (fused kernel): {e}", opt.step, self.rank))?;
        }
        // 4. Every rank's updated shard into every rank's parameters.
        for b in &self.buckets {
            let kind = (b.exp_avg.kind(), b.exp_avg.device());
            let mine = Tensor::zeros([b.shard], kind);
            for s in &b.segments {
                mine.narrow(0, s.at, s.len).copy_(&opt.params[s.param].1.detach().view([-1]).narrow(0, s.start, s.len));
            }
            let mut all = Tensor::zeros([b.shard * self.world as i64], kind);
            group.all_gather(&mut all, &mine).with_context(|| format!("{what}: gathering the updated parameters"))?;
            let mut off = 0i64;
            for &i in &b.params {
                let p = &opt.params[i].1;
                let n = p.numel() as i64;
                p.detach().copy_(&all.narrow(0, off, n).view_as(p));
                off += n;
            }
        }
        Ok(norm)
    }

    /// The whole moments, gathered from every rank, named as [`AdamW::state`] names them (with
    /// `step`): what a checkpoint holds. Every rank must call it; every rank gets the whole.
    pub fn full_state(&self, opt: &AdamW, group: &Group) -> Result<Vec<(String, Tensor)>> {
        let _g = tch::no_grad_guard();
        let mut m: Vec<Option<Tensor>> = opt.params.iter().map(|_| None).collect();
        let mut v: Vec<Option<Tensor>> = opt.params.iter().map(|_| None).collect();
        for b in &self.buckets {
            for (shard, out) in [(&b.exp_avg, &mut m), (&b.exp_avg_sq, &mut v)] {
                let mut all = Tensor::zeros([b.shard * self.world as i64], (shard.kind(), shard.device()));
                group.all_gather(&mut all, shard).context("ZeRO-1: gathering AdamW's moments")?;
                let mut off = 0i64;
                for &i in &b.params {
                    let p = &opt.params[i].1;
                    let n = p.numel() as i64;
                    out[i] = Some(all.narrow(0, off, n).view_as(p).copy());
                    off += n;
                }
            }
        }
        let mut state = vec![("step".to_string(), Tensor::from(opt.step))];
        for (i, (n, _)) in opt.params.iter().enumerate() {
            let (mi, vi) = (m[i].take(), v[i].take());
            state.push((format!("{n}.exp_avg"), mi.context("ZeRO-1: a parameter in no bucket")?));
            state.push((format!("{n}.exp_avg_sq"), vi.context("ZeRO-1: a parameter in no bucket")?));
        }
        Ok(state)
    }

    /// Loads this rank's shards (and the step counter into `opt`) from whole moments named as
    /// [`AdamW::state`] names them (a checkpoint written with or without ZeRO-1, on any number of
    /// ranks); `source` names the file in errors.
    pub fn load_full_state(&mut self, opt: &mut AdamW, state: &[(String, Tensor)], source: &std::path::Path) -> Result<()> {
        let find = |k: &str| -> Result<Tensor> {
            state.iter().find(|(n, _)| n == k).map(|(_, t)| t.shallow_clone()).with_context(|| format!("{}: lacks '{k}'", source.display()))
        };
        let mut m = vec![];
        let mut v = vec![];
        for (n, p) in &opt.params {
            let (mi, vi) = (find(&format!("{n}.exp_avg"))?, find(&format!("{n}.exp_avg_sq"))?);
            for (what, t) in [("exp_avg", &mi), ("exp_avg_sq", &vi)] {
                anyhow::ensure!(
                    t.size() == p.size(),
                    "{}: '{n}.{what}' has shape {:?}, the parameter {:?}",
                    source.display(),
                    t.size(),
                    p.size()
                );
            }
            m.push(mi);
            v.push(vi);
        }
        self.take_shards(|i| m[i].shallow_clone(), |i| v[i].shallow_clone())?;
        opt.step = find("step")?.int64_value(&[]);
        Ok(())
    }
}

/// The device of the shards (every bucket's; CPU when there are none).
fn b_device(buckets: &[Bucket]) -> tch::Device {
    buckets.first().map_or(tch::Device::Cpu, |b| b.exp_avg.device())
}

/// One optimiser update of a job: the gradients summed over the ranks of `group` (none: one
/// process), clipped to `max_norm` by their global norm, the norm checked finite (`what` names
/// the update), then AdamW at `lr`, through the moments' shards when `zero` holds them. Returns
/// the norm before clipping.
pub fn update(opt: &mut AdamW, zero: Option<&mut Zero1>, group: Option<&Group>, max_norm: f64, lr: f64, what: &str) -> Result<f64> {
    match (zero, group) {
        (Some(z), Some(g)) => z.step(opt, g, max_norm, lr, what),
        (Some(_), None) => anyhow::bail!("{what}: AdamW's moments are sharded (ZeRO-1) but the update has no process group"),
        (None, group) => {
            if let Some(g) = group {
                super::dp::all_reduce_grads(g, &opt.params)?;
            }
            let gn = crate::train::clip_grad_norm(&opt.params, max_norm).double_value(&[]);
            ensure_finite(gn, &format!("gradient norm ({what})"))?;
            opt.step(lr)?;
            Ok(gn)
        }
    }
}

/// The bytes of optimiser state this rank holds: its shards, or `opt`'s whole moments.
pub fn held_bytes(opt: &AdamW, zero: Option<&Zero1>) -> usize {
    match zero {
        Some(z) => z.state_bytes(),
        None => opt.exp_avg.iter().chain(&opt.exp_avg_sq).map(|t| t.numel() * t.kind().elt_size_in_bytes()).sum(),
    }
}

/// The optimiser's whole state for a checkpoint: [`AdamW::state`], or gathered from the shards
/// (a collective: every rank calls it).
pub fn optimizer_state(opt: &AdamW, zero: Option<&Zero1>, group: Option<&Group>) -> Result<Vec<(String, Tensor)>> {
    match (zero, group) {
        (Some(z), Some(g)) => z.full_state(opt, g),
        (Some(_), None) => anyhow::bail!("AdamW's moments are sharded (ZeRO-1) but there is no process group to gather them"),
        (None, _) => Ok(opt.state()),
    }
}

/// Loads a checkpoint's optimiser state (whole moments, written with or without ZeRO-1) into
/// `opt`, or into this rank's shards when `zero` holds them.
pub fn load_optimizer_state(opt: &mut AdamW, zero: Option<&mut Zero1>, state: &[(String, Tensor)], source: &std::path::Path) -> Result<()> {
    match zero {
        Some(z) => z.load_full_state(opt, state, source),
        None => Ok(opt.load_state(state, source)?),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dist::{dp, Store};
    use crate::train::AdamWConfig;
    use std::time::Duration;

    #[test]
    fn shards_cover_every_element_once() {
        let sizes = [5i64, 1, 7, 3];
        let params = [0usize, 1, 2, 3];
        for world in 1..5usize {
            let shard = (16 + world as i64 - 1) / world as i64;
            let mut seen = [0usize; 16];
            for rank in 0..world {
                for s in segments(&params, &sizes, rank, shard) {
                    let off: i64 = sizes[..s.param].iter().sum::<i64>() + s.start;
                    assert_eq!(off, rank as i64 * shard + s.at, "world {world} rank {rank}: {s:?}");
                    for e in off..off + s.len {
                        seen[e as usize] += 1;
                    }
                }
            }
            assert!(seen.iter().all(|&n| n == 1), "world {world}: {seen:?}");
        }
    }

    /// Fixed f64 parameters (a matrix that decays, a vector and a norm weight that do not) and
    /// per-step gradients that differ by rank.
    fn params() -> Vec<(String, Tensor)> {
        let t = |n: i64, shape: &[i64], s: f64| {
            (Tensor::arange(n, (Kind::Double, tch::Device::Cpu)) * s).sin().view(shape).set_requires_grad(true)
        };
        vec![("w".into(), t(12, &[3, 4], 0.3)), ("b".into(), t(5, &[5], 0.7)), ("norm.weight".into(), t(3, &[3], 1.1))]
    }

    fn set_grads(p: &[(String, Tensor)], rank: usize, step: usize) {
        dp::ensure_grads(p);
        let _g = tch::no_grad_guard();
        for (i, (_, t)) in p.iter().enumerate() {
            let n = t.numel() as i64;
            let g = (Tensor::arange(n, (Kind::Double, tch::Device::Cpu)) * (0.11 + 0.05 * (rank + i + step) as f64)).cos().view_as(t) * 3.0;
            t.grad().copy_(&g);
        }
    }

    type Out = (Vec<Vec<f64>>, Vec<(String, Vec<f64>)>, Vec<f64>);

    /// Two ranks, three steps (the norm clips on some): ZeRO-1's parameters, gathered moments and
    /// norms equal plain AdamW's on the summed gradients within 1e-12; both ranks bitwise equal.
    #[test]
    fn zero1_on_two_ranks_equals_adamw_on_the_summed_gradients() {
        let cfg = AdamWConfig { lr: 0.05, weight_decay: 0.1, ..Default::default() };
        let max_norm = 4.0;
        let mut plain = AdamW::new(params(), cfg.clone());
        let mut want_norms = vec![];
        for step in 0..3 {
            set_grads(&plain.params, 0, step);
            let g1: Vec<Tensor> = {
                let p1 = params();
                set_grads(&p1, 1, step);
                p1.iter().map(|(_, t)| t.grad().copy()).collect()
            };
            for ((_, p), g) in plain.params.iter().zip(&g1) {
                let _ = p.grad().g_add_(g);
            }
            want_norms.push(update(&mut plain, None, None, max_norm, 0.05, "test").unwrap());
        }
        let want_w: Vec<Vec<f64>> = plain.params.iter().map(|(_, t)| Vec::<f64>::try_from(t.detach().reshape([-1])).unwrap()).collect();
        let want_state = plain.state();

        let port = crate::dist::launch::free_port().unwrap();
        let cfg2 = cfg.clone();
        let handles: Vec<_> = (0..2usize)
            .map(|rank| {
                let cfg = cfg2.clone();
                std::thread::spawn(move || -> Result<Out> {
                    let t = Duration::from_secs(20);
                    let store = Store::tcp("127.0.0.1", port, rank == 0, 2, t)?;
                    let g = Group::gloo(&store, rank, 2, t, Some("127.0.0.1"))?;
                    let mut opt = AdamW::new(params(), cfg);
                    let mut z = Zero1::new(&mut opt, rank, 2)?;
                    assert!(opt.moments_released());
                    let mut norms = vec![];
                    for step in 0..3 {
                        set_grads(&opt.params, rank, step);
                        norms.push(update(&mut opt, Some(&mut z), Some(&g), max_norm, 0.05, "test")?);
                    }
                    let st = optimizer_state(&opt, Some(&z), Some(&g))?;
                    let st = st.iter().skip(1).map(|(n, t)| (n.clone(), Vec::<f64>::try_from(t.reshape([-1])).unwrap())).collect();
                    let w = opt.params.iter().map(|(_, t)| Vec::<f64>::try_from(t.detach().reshape([-1])).unwrap()).collect();
                    Ok((w, st, norms))
                })
            })
            .collect();
        let out: Vec<Out> = handles.into_iter().map(|h| h.join().unwrap().unwrap()).collect();
        assert_eq!(out[0].0, out[1].0, "both ranks hold bitwise the same parameters");
        assert!(want_norms.iter().any(|&n| n > max_norm), "the test clips at least once: {want_norms:?}");
        for (a, b) in out[0].2.iter().zip(&want_norms) {
            assert!((a - b).abs() < 1e-12 * b, "norm {a} vs {b}");
        }
        for (w, want) in out[0].0.iter().zip(&want_w) {
            for (a, b) in w.iter().zip(want) {
                assert!((a - b).abs() < 1e-12, "parameter {a} vs {b}");
            }
        }
        for ((n, got), (wn, want)) in out[0].1.iter().zip(want_state.iter().skip(1)) {
            assert_eq!(n, wn);
            let want = Vec::<f64>::try_from(want.reshape([-1])).unwrap();
            for (a, b) in got.iter().zip(&want) {
                assert!((a - b).abs() < 1e-12, "{n}: {a} vs {b}");
            }
        }
    }

    /// Moments saved whole load into the shards of any world size, and gather back unchanged; a
    /// checkpoint missing a moment is an error naming the file and the tensor.
    #[test]
    fn whole_moments_round_trip_through_the_shards() {
        let mut opt = AdamW::new(params(), AdamWConfig::default());
        for (i, m) in opt.exp_avg.iter_mut().enumerate() {
            let _ = m.copy_(&(m.ones_like() * (i as f64 + 0.5)));
        }
        opt.step = 7;
        let state = opt.state();
        for world in [1usize, 2, 3] {
            for rank in 0..world {
                let mut o = AdamW::new(params(), AdamWConfig::default());
                let mut z = Zero1::new(&mut o, rank, world).unwrap();
                z.load_full_state(&mut o, &state, std::path::Path::new("optimizer.safetensors")).unwrap();
                assert_eq!(o.step, 7);
                for b in &z.buckets {
                    for s in &b.segments {
                        let want = state[1 + 2 * s.param].1.reshape([-1]).double_value(&[s.start]);
                        assert_eq!(b.exp_avg.double_value(&[s.at]), want);
                    }
                }
                assert_eq!(z.state_bytes(), 2 * 8 * (12 + 5 + 3usize).div_ceil(world), "world {world}");
            }
        }
        let mut o = AdamW::new(params(), AdamWConfig::default());
        let mut z = Zero1::new(&mut o, 0, 2).unwrap();
        let partial: Vec<(String, Tensor)> =
            state.iter().filter(|(n, _)| n != "b.exp_avg_sq").map(|(n, t)| (n.clone(), t.shallow_clone())).collect();
        let err = z.load_full_state(&mut o, &partial, std::path::Path::new("ck/optimizer.safetensors")).unwrap_err().to_string();
        assert!(err.contains("ck/optimizer.safetensors") && err.contains("b.exp_avg_sq"), "{err}");
        assert!(o.step(0.1).is_err(), "plain AdamW steps are refused once the moments are sharded");
    }
}
