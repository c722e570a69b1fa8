//! `Params`: a model's parameters by HF name, in creation order (deterministic, unlike a HashMap),
//! the unit of freezing, saving and optimising. Layers hold shallow clones of the same tensors.
use crate::error::{Error, Result};
use crate::model::load::WeightMap;
use tch::{Device, Kind, Tensor};

/// How a parameter is initialised when it is not loaded: HF's `_init_weights` for Llama/BERT.
#[derive(Debug, Clone, Copy)]
pub enum Init {
    Normal(f64),
    Ones,
    Zeros,
}

/// Where the weights come from: a checkpoint, or seeded random init (tests, fresh heads).
pub enum Source {
    Load(WeightMap),
    Random,
}

#[derive(Default)]
pub struct Params {
    vars: Vec<(String, Tensor)>,
}

impl Params {
    /// Adds `name` from `src` (loaded, shape-checked) or initialised by `init`, on `device`, trainable.
    pub fn get(&mut self, src: &mut Source, name: &str, shape: &[i64], init: Init, device: Device) -> Result<Tensor> {
        let t = match src {
            Source::Load(w) => w.take(name, shape)?,
            Source::Random => init_tensor(shape, init),
        };
        Ok(self.add(name, t.to_device(device)))
    }

    /// Registers `t` as a trainable parameter called `name`.
    pub fn add(&mut self, name: &str, t: Tensor) -> Tensor {
        let t = t.detach().set_requires_grad(true);
        self.vars.push((name.to_string(), t.shallow_clone()));
        t
    }

    pub fn named(&self) -> &[(String, Tensor)] {
        &self.vars
    }

    pub fn get_named(&self, name: &str) -> Option<&Tensor> {
        self.vars.iter().find(|(n, _)| n == name).map(|(_, t)| t)
    }

    pub fn trainable(&self) -> Vec<(String, Tensor)> {
        self.vars.iter().filter(|(_, t)| t.requires_grad()).map(|(n, t)| (n.clone(), t.shallow_clone())).collect()
    }

    /// Sets `requires_grad` on every parameter from `keep(name)`.
    pub fn set_trainable(&self, keep: impl Fn(&str) -> bool) {
        for (n, t) in &self.vars {
            let _ = t.set_requires_grad(keep(n));
        }
    }

    pub fn freeze(&self) {
        self.set_trainable(|_| false);
    }

    pub fn zero_grad(&self) {
        for (_, t) in &self.vars {
            let mut g = t.grad();
            if g.defined() {
                let _ = g.detach_().zero_();
            }
        }
    }

    /// Converts every floating-point parameter to `kind` in place (`Tensor::set_data`: the layers'
    /// shallow clones see the new values). Gradients, if any, are dropped.
    pub fn to_kind_(&self, kind: Kind) {
        convert_(self.vars.iter().map(|(_, t)| t), kind);
    }

    pub fn num_params(&self) -> i64 {
        self.vars.iter().map(|(_, t)| t.numel() as i64).sum()
    }

    /// Copies values from `tensors` (by name) into the parameters, in place. Every parameter must
    /// be present with its shape; used to restore checkpoints.
    pub fn load_values(&self, tensors: &[(String, Tensor)], source: &std::path::Path) -> Result<()> {
        let _guard = tch::no_grad_guard();
        for (n, t) in &self.vars {
            let src = tensors
                .iter()
                .find(|(m, _)| m == n)
                .map(|(_, s)| s)
                .ok_or_else(|| Error::MissingTensors { path: source.into(), names: n.clone() })?;
            if src.size() != t.size() {
                return Err(Error::ShapeMismatch { path: source.into(), name: n.clone(), got: src.size(), want: t.size() });
            }
            check_stored_kind(source, n, src.kind(), t.kind(), "the dtype").map_err(Error::Input)?;
            let mut dst = t.shallow_clone();
            dst.copy_(src);
        }
        Ok(())
    }
}

/// A checkpointed value stored as `stored` may be copied into a parameter of kind `param` only if
/// the two agree: copying would silently widen or round it. The error names the file, the tensor,
/// both kinds and the `setting` that chooses the dtype.
pub fn check_stored_kind(file: &std::path::Path, name: &str, stored: Kind, param: Kind, setting: &str) -> std::result::Result<(), String> {
    if stored == param {
        return Ok(());
    }
    Err(format!(
        "{}: '{name}' is stored as {stored:?}, the model computes in {param:?}: {setting} differs from the run that wrote the checkpoint",
        file.display()
    ))
}

/// Converts every floating-point tensor of `ts` to `kind` in place (`Tensor::set_data`, so every
/// shallow clone of it sees the new values).
pub fn convert_<'a>(ts: impl IntoIterator<Item = &'a Tensor>, kind: Kind) {
    let _guard = tch::no_grad_guard();
    for t in ts {
        if t.is_floating_point() && t.kind() != kind {
            let mut t = t.shallow_clone();
            t.set_data(&t.to_kind(kind));
        }
    }
}

fn init_tensor(shape: &[i64], init: Init) -> Tensor {
    let opts = (Kind::Float, Device::Cpu);
    match init {
        Init::Normal(std) => Tensor::randn(shape, opts) * std,
        Init::Ones => Tensor::ones(shape, opts),
        Init::Zeros => Tensor::zeros(shape, opts),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `to_kind_` converts the parameters the layers hold (their shallow clones see f64), and a
    /// checkpoint written in another precision is refused, naming the tensor and both kinds.
    #[test]
    fn to_kind_converts_in_place_and_load_values_refuses_another_kind() {
        let mut p = Params::default();
        let held = p.add("w", Tensor::from_slice(&[0.1f32, 0.2]));
        p.to_kind_(Kind::Double);
        assert_eq!(held.kind(), Kind::Double, "a layer's shallow clone sees the conversion");
        assert_eq!(Vec::<f64>::try_from(&held).unwrap(), vec![0.1f32 as f64, 0.2f32 as f64]);
        assert!(held.requires_grad());
        let f32_ck = vec![("w".to_string(), Tensor::from_slice(&[1.0f32, 2.0]))];
        let e = p.load_values(&f32_ck, std::path::Path::new("ck/param.safetensors")).unwrap_err().to_string();
        assert!(e.contains("ck/param.safetensors") && e.contains("'w'") && e.contains("Float") && e.contains("Double"), "{e}");
        let f64_ck = vec![("w".to_string(), Tensor::from_slice(&[1.0f64, 2.0]))];
        p.load_values(&f64_ck, std::path::Path::new("ck")).unwrap();
        assert_eq!(Vec::<f64>::try_from(&held).unwrap(), vec![1.0, 2.0]);
    }
}
