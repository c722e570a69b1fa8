//! What a grid runs and its report compares: an [`Arm`] (one of R2M's methods, or a named variant
//! of one) under an algorithm ([`Algo`]), and the names both go by in files and text.
//!
//! Inside `experiment` arms and algorithms are these enums; strings appear only where files and
//! text are written or read: run folders `{arm}-{algo}-s{seed}` ([`run_name`], [`parse_run_name`]),
//! CSV columns (the serde names: `r2m-no-bt`, `reinforce_pp`, [`algo_key`]) and the report's
//! labels (`RLOO`, `REINFORCE++`: [`algo_label`]).
use crate::r2m::Method;
use crate::rl::config::Algo;
use std::cmp::Ordering;
use std::fmt;

/// What a run runs: one of the methods, or a variant of one (a method with some settings of the
/// run changed, `[[variants]]` of the grid) that is reported under its own name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Arm {
    Method(Method),
    Variant {
        name: String,
        /// The method it changes settings of.
        method: Method,
    },
}

impl Arm {
    pub fn variant(name: impl Into<String>, method: Method) -> Arm {
        Arm::Variant { name: name.into(), method }
    }

    /// The name of its run folders and table rows: the method's (`r2m-no-bt`) or the variant's.
    pub fn name(&self) -> String {
        match self {
            Arm::Method(m) => m.name(),
            Arm::Variant { name, .. } => name.clone(),
        }
    }

    /// The method it runs (a variant's own method).
    pub fn method(&self) -> Method {
        match self {
            Arm::Method(m) | Arm::Variant { method: m, .. } => *m,
        }
    }

    /// The variant's name, for a variant.
    pub fn variant_name(&self) -> Option<&str> {
        match self {
            Arm::Method(_) => None,
            Arm::Variant { name, .. } => Some(name),
        }
    }

    /// Whether this is the method `m` itself (not a variant of it).
    pub fn is(&self, m: Method) -> bool {
        *self == Arm::Method(m)
    }

    /// Table order: the methods in the paper's order (docs/method.md "Baselines and ablations"), then
    /// the variants by name.
    fn rank(&self) -> (usize, &str, usize) {
        match self {
            Arm::Method(m) => (method_index(*m), "", 0),
            Arm::Variant { name, method } => (Method::all().len(), name, method_index(*method)),
        }
    }
}

impl From<Method> for Arm {
    fn from(m: Method) -> Arm {
        Arm::Method(m)
    }
}

impl Ord for Arm {
    fn cmp(&self, other: &Arm) -> Ordering {
        self.rank().cmp(&other.rank())
    }
}

impl PartialOrd for Arm {
    fn partial_cmp(&self, other: &Arm) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl fmt::Display for Arm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.name())
    }
}

/// The place of `m` in [`Method::all`] (the paper's order).
pub fn method_index(m: Method) -> usize {
    Method::all().iter().position(|x| *x == m).unwrap_or(Method::all().len())
}

/// The method of a config name (`"r2m-no-bt"`), if it is one.
pub fn parse_method(name: &str) -> Option<Method> {
    Method::all().into_iter().find(|m| m.name() == name)
}

/// Every algorithm, in table order (`Algo`'s order).
pub const ALGOS: [Algo; 4] = [Algo::Rloo, Algo::Grpo, Algo::ReinforcePp, Algo::Remax];

/// An algorithm's config name (its serde name): `reinforce_pp`.
pub fn algo_key(a: Algo) -> &'static str {
    match a {
        Algo::Rloo => "rloo",
        Algo::Grpo => "grpo",
        Algo::ReinforcePp => "reinforce_pp",
        Algo::Remax => "remax",
    }
}

/// The algorithm of a config name (`"reinforce_pp"`), if it is one.
pub fn parse_algo(key: &str) -> Option<Algo> {
    ALGOS.into_iter().find(|a| algo_key(*a) == key)
}

/// An algorithm's name in text: `RLOO`, `REINFORCE++`.
pub fn algo_label(a: Algo) -> &'static str {
    match a {
        Algo::Rloo => "RLOO",
        Algo::Grpo => "GRPO",
        Algo::ReinforcePp => "REINFORCE++",
        Algo::Remax => "ReMax",
    }
}

/// The baseline every arm is compared with.
pub const BASELINE: Method = Method::Vanilla;
/// The full method.
pub const FULL: Method = Method::R2m;
/// The ablations R2M is compared with (docs/method.md), in the report's order.
pub const ABLATIONS: [Method; 4] = [Method::R2mNoBt, Method::R2mNoGre, Method::R2mNoise, Method::R2mNoTrain];
/// Algorithms the paper runs only as vanilla baselines (R2M under RLOO/GRPO is compared with them).
pub const OTHER_BASELINES: [Algo; 2] = [Algo::ReinforcePp, Algo::Remax];

/// A run folder's name: `{arm}-{algo}-s{seed}`.
pub fn run_name(arm: &Arm, algo: Algo, seed: u64) -> String {
    format!("{arm}-{}-s{seed}", algo_key(algo))
}

/// Splits `{arm}-{algo}-s{seed}` into the arm's name, the algorithm and the seed (algorithm names
/// have no '-').
pub fn parse_run_name(name: &str) -> Option<(&str, Algo, u64)> {
    let (rest, seed) = name.rsplit_once("-s")?;
    let seed = seed.parse().ok()?;
    let (arm, algo) = rest.rsplit_once('-')?;
    if arm.is_empty() {
        return None;
    }
    Some((arm, parse_algo(algo)?, seed))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_the_serde_names() {
        for a in ALGOS {
            assert_eq!(serde_json::to_value(a).unwrap(), algo_key(a), "{a:?}");
            assert_eq!(parse_algo(algo_key(a)), Some(a));
        }
        assert!(ALGOS.windows(2).all(|w| w[0] < w[1]), "table order is Algo's order");
        for m in Method::all() {
            assert_eq!(parse_method(&m.name()), Some(m));
            assert_eq!(Arm::Method(m).name(), m.name());
        }
        assert_eq!(parse_method("r3m"), None);
    }

    #[test]
    fn run_names_round_trip() {
        assert_eq!(parse_run_name("r2m-no-bt-rloo-s2"), Some(("r2m-no-bt", Algo::Rloo, 2)));
        assert_eq!(parse_run_name("vanilla-reinforce_pp-s10"), Some(("vanilla", Algo::ReinforcePp, 10)));
        assert_eq!(parse_run_name("plots"), None);
        assert_eq!(parse_run_name("-rloo-s1"), None);
        assert_eq!(parse_run_name("vanilla-ppo-s1"), None);
        let v = Arm::variant("r2m-lr1e-5", Method::R2m);
        assert_eq!(run_name(&v, Algo::Grpo, 0), "r2m-lr1e-5-grpo-s0");
        assert_eq!(parse_run_name(&run_name(&v, Algo::Grpo, 0)), Some(("r2m-lr1e-5", Algo::Grpo, 0)));
    }

    #[test]
    fn arms_sort_methods_first_in_the_papers_order() {
        let mut arms = vec![
            Arm::variant("b", Method::Vanilla),
            Arm::Method(Method::R2m),
            Arm::variant("a", Method::R2m),
            Arm::Method(Method::Vanilla),
        ];
        arms.sort();
        let names: Vec<String> = arms.iter().map(Arm::name).collect();
        assert_eq!(names, ["vanilla", "r2m", "a", "b"]);
        assert!(arms[0].is(Method::Vanilla) && !Arm::variant("v", Method::Vanilla).is(Method::Vanilla));
        assert_eq!(arms[2].method(), Method::R2m);
    }
}
