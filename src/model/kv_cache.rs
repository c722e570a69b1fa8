//! A preallocated per-layer K/V cache, written in place and passed explicitly to the forward
//! (weights stay `&self`, so one model serves generation and training).
use tch::{Device, Kind, Tensor};

pub struct LayerCache {
    pub k: Tensor, // (B, n_kv, S_max, hd)
    pub v: Tensor, // (B, n_kv, S_max, hd)
}

pub struct KvCache {
    pub layers: Vec<LayerCache>,
    /// Number of slots written so far (the same for every row: left padding keeps rows aligned).
    pub len: i64,
    pub max_len: i64,
}

impl KvCache {
    pub fn new(n_layers: i64, batch: i64, n_kv: i64, max_len: i64, head_dim: i64, kind: Kind, device: Device) -> Self {
        let layers = (0..n_layers)
            .map(|_| LayerCache {
                k: Tensor::zeros([batch, n_kv, max_len, head_dim], (kind, device)),
                v: Tensor::zeros([batch, n_kv, max_len, head_dim], (kind, device)),
            })
            .collect();
        KvCache { layers, len: 0, max_len }
    }
}

impl LayerCache {
    /// Writes k, v (B, n_kv, T, hd) at slots [start, start + T) and returns views of slots [0, start + T).
    pub fn append(&mut self, start: i64, k: &Tensor, v: &Tensor) -> (Tensor, Tensor) {
        let t = k.size()[2];
        self.k.narrow(2, start, t).copy_(k);
        self.v.narrow(2, start, t).copy_(v);
        (self.k.narrow(2, 0, start + t), self.v.narrow(2, 0, start + t))
    }
}
