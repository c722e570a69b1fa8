//! Where a step's time goes: named timings in the order they were taken (metric names `time/*`).
use serde_json::{json, Map, Value};
use std::time::Instant;

/// Timings of one step, in seconds (metric names `time/*`), in the order they were taken.
#[derive(Default)]
pub struct Clock(pub Vec<(String, f64)>);

impl Clock {
    pub fn time<T>(&mut self, name: impl Into<String>, f: impl FnOnce() -> T) -> T {
        let t0 = Instant::now();
        let out = f();
        self.0.push((name.into(), t0.elapsed().as_secs_f64()));
        out
    }

    /// Seconds taken since entry `from`, by entries named `name` (all of them with `None`).
    pub(crate) fn since(&self, from: usize, name: Option<&str>) -> f64 {
        self.0[from..].iter().filter(|x| name.is_none_or(|n| x.0 == n)).map(|x| x.1).sum()
    }

    /// Adds every timing to `m` (timings of the same name add up).
    pub fn add_to(&self, m: &mut Map<String, Value>) {
        for (name, s) in &self.0 {
            let e = m.entry(name.clone()).or_insert(json!(0.0));
            *e = json!(e.as_f64().unwrap_or(0.0) + s);
        }
    }
}
