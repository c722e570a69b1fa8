//! Data parallel building blocks: every rank holds the whole model, works on its share of each
//! batch, and the ranks sum their gradients before the (identical) optimiser step.
//! - [`share`]: rank r's contiguous slice of a list, the same on every rank for every size;
//! - [`broadcast_params`]: rank 0's weights to every rank, in flat buckets;
//! - [`all_reduce_grads`]: the sum of every rank's gradients, in flat buckets.
//!
//! A loss that is a mean over a batch splits as a sum: rank r's part is the sum of its rows'
//! terms over the whole batch's count, so that the summed gradient equals one process's on the
//! whole batch whatever the number of ranks.
use super::{Group, ReduceOp};
use anyhow::Result;
use tch::{Kind, Tensor};

/// Flat buckets of at most this many bytes (like DDP's 25 MB).
pub const BUCKET_BYTES: usize = 25 << 20;

/// Rank `rank`'s contiguous share of `items` (the first `len % world` ranks get one more).
pub fn share<T>(items: &[T], rank: usize, world: usize) -> &[T] {
    let (n, w) = (items.len(), world.max(1));
    let (base, extra) = (n / w, n % w);
    let start = rank * base + rank.min(extra);
    let len = base + usize::from(rank < extra);
    &items[start.min(n)..(start + len).min(n)]
}

/// How a data parallel run deals `rows` rows, sampled in calls of `call` rows (each call with its
/// own seed), to `world` ranks: whole calls, in order ([`share`]), so that every row is sampled as
/// one process samples it. Each rank's rows and the index of its first call (its seed's offset);
/// a rank without a call gets an empty range.
pub fn deal_calls(rows: usize, call: usize, world: usize) -> Vec<(std::ops::Range<usize>, u64)> {
    let g = call.clamp(1, rows.max(1));
    let calls: Vec<usize> = (0..rows.div_ceil(g)).collect();
    (0..world.max(1))
        .map(|r| match share(&calls, r, world) {
            [] => (rows..rows, 0),
            c => (c[0] * g..((c[c.len() - 1] + 1) * g).min(rows), c[0] as u64),
        })
        .collect()
}

/// Groups `ts` into runs of one dtype of at most `bucket_bytes` each (a tensor larger than that
/// is a bucket of its own).
pub(crate) fn buckets(ts: &[Tensor], bucket_bytes: usize) -> Vec<Vec<usize>> {
    let mut out: Vec<Vec<usize>> = vec![];
    let mut bytes = 0usize;
    for (i, t) in ts.iter().enumerate() {
        let b = t.numel() * t.kind().elt_size_in_bytes();
        let same_kind = out.last().and_then(|v| v.first()).is_some_and(|&j| ts[j].kind() == t.kind());
        if out.is_empty() || !same_kind || bytes + b > bucket_bytes {
            out.push(vec![]);
            bytes = 0;
        }
        out.last_mut().expect("pushed").push(i);
        bytes += b;
    }
    out
}

/// Runs `f` on each bucket of `ts` flattened into one tensor, then copies the result back.
fn bucketed(ts: &[Tensor], bucket_bytes: usize, mut f: impl FnMut(&mut Tensor) -> Result<()>) -> Result<()> {
    let _g = tch::no_grad_guard();
    for b in buckets(ts, bucket_bytes) {
        let flat: Vec<Tensor> = b.iter().map(|&i| ts[i].detach().reshape([-1])).collect();
        let mut buf = Tensor::cat(&flat, 0);
        f(&mut buf)?;
        let mut off = 0i64;
        for &i in &b {
            let n = ts[i].numel() as i64;
            ts[i].shallow_clone().copy_(&buf.narrow(0, off, n).view_as(&ts[i]));
            off += n;
        }
    }
    Ok(())
}

/// Copies rank `root`'s values of `params` into every rank's (in place, without autograd).
pub fn broadcast_params(group: &Group, params: &[(String, Tensor)], root: usize) -> Result<()> {
    if group.world() == 1 {
        return Ok(());
    }
    let ts: Vec<Tensor> = params.iter().map(|(_, p)| p.shallow_clone()).collect();
    bucketed(&ts, BUCKET_BYTES, |buf| group.broadcast(buf, root))
}

/// Gives every parameter a gradient (zeros where this rank's backward did not reach it, e.g. a
/// rank with no rows in a batch), so that every rank joins the same collectives.
pub fn ensure_grads(params: &[(String, Tensor)]) {
    let missing: Vec<&Tensor> = params.iter().map(|(_, p)| p).filter(|p| !p.grad().defined()).collect();
    if let Some(z) = missing.iter().map(|p| p.sum(Kind::Float) * 0.0).reduce(|a, b| a + b) {
        z.backward();
    }
}

/// Replaces every parameter's gradient with the sum over ranks (flat buckets, one all-reduce
/// each). Every rank then holds bitwise the same gradients.
pub fn all_reduce_grads(group: &Group, params: &[(String, Tensor)]) -> Result<()> {
    if group.world() == 1 {
        return Ok(());
    }
    ensure_grads(params);
    let grads: Vec<Tensor> = params.iter().map(|(_, p)| p.grad()).collect();
    bucketed(&grads, BUCKET_BYTES, |buf| group.all_reduce(buf, ReduceOp::Sum))
}

/// Every rank's rows of `t` (dim 0) stacked in rank order, on every rank: rank r holds
/// `counts[r]` rows; the other dims must agree across ranks (pad them first).
pub fn all_gather_rows(group: &Group, t: &Tensor, counts: &[usize]) -> Result<Tensor> {
    let (rank, world) = (group.rank(), group.world());
    anyhow::ensure!(counts.len() == world, "all_gather_rows: {} counts for {world} ranks", counts.len());
    let b = t.size()[0];
    anyhow::ensure!(b as usize == counts[rank], "all_gather_rows: rank {rank} holds {b} rows, counts say {}", counts[rank]);
    if world == 1 {
        return Ok(t.shallow_clone());
    }
    let most = counts.iter().copied().max().unwrap_or(0) as i64;
    let mut shape = t.size();
    let padded = if most > b {
        shape[0] = most - b;
        Tensor::cat(&[t.contiguous(), Tensor::zeros(shape.as_slice(), (t.kind(), t.device()))], 0)
    } else {
        t.contiguous()
    };
    shape[0] = most * world as i64;
    let mut out = Tensor::zeros(shape.as_slice(), (t.kind(), t.device()));
    group.all_gather(&mut out, &padded)?;
    let parts: Vec<Tensor> = counts.iter().enumerate().map(|(r, &c)| out.narrow(0, r as i64 * most, c as i64)).collect();
    Ok(Tensor::cat(&parts, 0))
}

/// Pads dim 1 of `t` with zeros (on the right) to `width` columns.
pub fn pad_cols(t: &Tensor, width: i64) -> Tensor {
    let n = t.size()[1];
    if n >= width {
        return t.shallow_clone();
    }
    let mut shape = t.size();
    shape[1] = width - n;
    Tensor::cat(&[t.shallow_clone(), Tensor::zeros(shape.as_slice(), (t.kind(), t.device()))], 1)
}

/// The ranks' metrics, each the mean of the ranks' values weighted by `weight` (e.g. the rows a
/// rank's values are means over): every rank gets the same map. Every rank must log the same
/// numeric keys; other values are kept as this rank has them.
pub fn mean_over_ranks(
    group: &Group,
    m: &serde_json::Map<String, serde_json::Value>,
    weight: f64,
) -> Result<serde_json::Map<String, serde_json::Value>> {
    if group.world() == 1 {
        return Ok(m.clone());
    }
    let mut keys: Vec<&String> = m.iter().filter(|(_, v)| v.is_number()).map(|(k, _)| k).collect();
    keys.sort();
    let mut vals: Vec<f64> = keys.iter().map(|k| m[k.as_str()].as_f64().unwrap_or(f64::NAN) * weight).collect();
    vals.push(weight);
    let s = group.sum_f64(&vals)?;
    let total = s[keys.len()];
    let mut out = m.clone();
    for (k, v) in keys.iter().zip(&s) {
        out.insert((*k).clone(), serde_json::json!(v / total));
    }
    Ok(out)
}

/// Checks that every rank holds bitwise the same `tensors` (a SHA-256 of their bytes, gathered):
/// an error naming the first rank that differs from rank 0, and `what`.
pub fn check_in_sync(group: &Group, tensors: &[(String, Tensor)], what: &str) -> Result<()> {
    use sha2::{Digest, Sha256};
    if group.world() == 1 {
        return Ok(());
    }
    let mut h = Sha256::new();
    for (name, t) in tensors {
        let bytes = Vec::<u8>::try_from(t.detach().to_device(tch::Device::Cpu).contiguous().reshape([-1]).view_dtype(Kind::Uint8))?;
        h.update(name.as_bytes());
        h.update(&bytes);
    }
    let digest = Tensor::from_slice(h.finalize().as_slice());
    let all = all_gather_rows(group, &digest, &vec![32; group.world()])?;
    let all = Vec::<u8>::try_from(all)?;
    if let Some(r) = (1..group.world()).find(|&r| all[r * 32..(r + 1) * 32] != all[..32]) {
        anyhow::bail!("{what}: rank {r}'s copy differs from rank 0's (the ranks are out of step)");
    }
    Ok(())
}

/// Writes a checkpoint in a job: once every rank holds bitwise the same `held` tensors (each
/// named set checked with [`check_in_sync`]), rank 0 runs `write` and every rank returns once it
/// has (rank 0 joins the barrier even when its write failed, so the others are not left waiting).
/// Without a group, just `write`.
pub fn write_on_rank0(dist: Option<&super::Dist>, held: &[(&str, &[(String, Tensor)])], write: impl FnOnce() -> Result<()>) -> Result<()> {
    let Some(d) = dist else { return write() };
    for (what, tensors) in held {
        check_in_sync(&d.group, tensors, what)?;
    }
    let written = if d.is_main() { write() } else { Ok(()) };
    let synced = d.group.barrier();
    written?;
    synced
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dist::Store;
    use std::time::Duration;

    #[test]
    fn shares_cover_the_list_once_in_order() {
        for n in 0..12 {
            for w in 1..5 {
                let v: Vec<usize> = (0..n).collect();
                let all: Vec<usize> = (0..w).flat_map(|r| share(&v, r, w).to_vec()).collect();
                assert_eq!(all, v, "n {n} world {w}");
                let lens: Vec<usize> = (0..w).map(|r| share(&v, r, w).len()).collect();
                assert!(lens.iter().max().unwrap() - lens.iter().min().unwrap() <= 1);
            }
        }
    }

    #[test]
    fn calls_are_dealt_whole_and_in_order() {
        let ranges = |rows, call, world| deal_calls(rows, call, world);
        assert_eq!(ranges(12, 4, 2), vec![(0..8, 0), (8..12, 2)]);
        assert_eq!(ranges(10, 4, 2), vec![(0..8, 0), (8..10, 2)]);
        assert_eq!(ranges(6, 4, 2), vec![(0..4, 0), (4..6, 1)]);
        assert_eq!(ranges(12, 4, 3), vec![(0..4, 0), (4..8, 1), (8..12, 2)]);
        // Fewer calls than ranks: the last rank samples nothing; a call larger than the rows is one call.
        assert_eq!(ranges(3, 4, 2), vec![(0..3, 0), (3..3, 0)]);
        // Every row once, in order, for any sizes.
        for (rows, call, world) in [(1, 1, 1), (7, 2, 3), (40, 3, 4), (5, 8, 3), (9, 1, 9)] {
            let got: Vec<usize> = ranges(rows, call, world).into_iter().flat_map(|(r, _)| r).collect();
            assert_eq!(got, (0..rows).collect::<Vec<_>>(), "{rows} rows in calls of {call} on {world} ranks");
        }
    }

    #[test]
    fn buckets_split_by_size_and_dtype() {
        let f = |n: i64| Tensor::zeros([n], (Kind::Float, tch::Device::Cpu));
        let d = Tensor::zeros([2], (Kind::Double, tch::Device::Cpu));
        let ts = vec![f(2), f(2), f(5), d, f(1)];
        assert_eq!(buckets(&ts, 16), vec![vec![0, 1], vec![2], vec![3], vec![4]]);
    }

    type Values = Vec<Vec<f64>>;

    /// Two ranks each take half of a batch of a tiny regression (a mean loss split as a sum);
    /// their summed gradients equal one process's on the whole batch, and both ranks end bitwise
    /// equal after an AdamW step.
    #[test]
    fn two_ranks_sum_to_the_whole_batch_gradient() {
        // Fixed values (torch's global RNG is shared with the tests running beside this one).
        let x = (Tensor::arange(21, (Kind::Double, tch::Device::Cpu)) * 0.37).sin().view([7, 3]);
        let y = (Tensor::arange(7, (Kind::Double, tch::Device::Cpu)) * 1.3).cos();
        let start_w = |seed: i64| Tensor::from_slice(&[0.5 * seed as f64, -0.25, 0.125 * seed as f64]);
        let make = |seed: i64| {
            let w = start_w(seed).set_requires_grad(true);
            let b = Tensor::zeros([1], (Kind::Double, tch::Device::Cpu)).set_requires_grad(true);
            vec![("w".to_string(), w), ("b".to_string(), b)]
        };
        let loss = |p: &[(String, Tensor)], rows: &[i64], n: i64| -> Tensor {
            let ix = Tensor::from_slice(rows);
            let pred = x.index_select(0, &ix).matmul(&p[0].1) + &p[1].1;
            (pred - y.index_select(0, &ix)).square().sum(Kind::Double) / n as f64
        };
        let one = make(1);
        loss(&one, &(0..7).collect::<Vec<_>>(), 7).backward();
        let want: Vec<Vec<f64>> = one.iter().map(|(_, p)| Vec::<f64>::try_from(p.grad()).unwrap()).collect();

        let port = crate::dist::launch::free_port().unwrap();
        let handles: Vec<_> = (0..2usize)
            .map(|rank| {
                let (x, y) = (x.copy(), y.copy());
                std::thread::spawn(move || -> Result<(Values, Values)> {
                    let t = Duration::from_secs(20);
                    let store = Store::tcp("127.0.0.1", port, rank == 0, 2, t)?;
                    let g = Group::gloo(&store, rank, 2, t, Some("127.0.0.1"))?;
                    // Rank 1 starts from different weights: the broadcast makes them rank 0's.
                    let p: Vec<(String, Tensor)> = vec![
                        ("w".to_string(), start_w(1 + rank as i64).set_requires_grad(true)),
                        ("b".to_string(), Tensor::zeros([1], (Kind::Double, tch::Device::Cpu)).set_requires_grad(true)),
                    ];
                    broadcast_params(&g, &p, 0)?;
                    let rows: Vec<i64> = (0..7).collect();
                    let mine = share(&rows, rank, 2);
                    let ix = Tensor::from_slice(mine);
                    let pred = x.index_select(0, &ix).matmul(&p[0].1) + &p[1].1;
                    ((pred - y.index_select(0, &ix)).square().sum(Kind::Double) / 7.0).backward();
                    all_reduce_grads(&g, &p)?;
                    let grads = p.iter().map(|(_, t)| Vec::<f64>::try_from(t.grad()).unwrap()).collect();
                    let mut opt = crate::train::AdamW::new(p, crate::train::AdamWConfig { lr: 0.1, ..Default::default() });
                    opt.step(0.1)?;
                    let w = opt.params.iter().map(|(_, t)| Vec::<f64>::try_from(t.detach()).unwrap()).collect();
                    Ok((grads, w))
                })
            })
            .collect();
        let out: Vec<_> = handles.into_iter().map(|h| h.join().unwrap().unwrap()).collect();
        for (grads, _) in &out {
            for (g, w) in grads.iter().zip(&want) {
                for (a, b) in g.iter().zip(w) {
                    assert!((a - b).abs() < 1e-12, "{a} vs {b}");
                }
            }
        }
        assert_eq!(out[0].0, out[1].0, "both ranks hold bitwise the same gradients");
        assert_eq!(out[0].1, out[1].1, "and the same weights after the step");
    }
}
