//! A span profiler for eager code on the CPU: where the milliseconds of a call go.
//!
//! Hot paths mark their parts with [`span`]; while nothing is recording (the default) a span costs
//! one thread-local flag read. [`record`] runs a closure with recording on for the current thread
//! and returns what each span took: its inclusive time, its self time (inclusive minus the spans
//! opened inside it) and how often it ran. libtorch runs CPU ops synchronously, so a span around
//! an op measures the op (its intra-op threads included); on a GPU a span measures the launch
//! only, so profiles are for CPU runs.
//!
//! ```
//! let (out, prof) = r2m::profile::record(|| {
//!     let _s = r2m::profile::span("outer");
//!     let _t = r2m::profile::span("inner");
//!     2 + 2
//! });
//! assert_eq!(out, 4);
//! assert_eq!(prof.get("inner").unwrap().calls, 1);
//! ```
use std::cell::{Cell, RefCell};
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

/// What one span name accumulated.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Totals {
    /// Wall time inside the span, nested spans included.
    pub inclusive: Duration,
    /// Wall time inside the span minus the time inside spans opened within it.
    pub own: Duration,
    pub calls: u64,
}

/// The spans of one [`record`]ed call, by name, and the call's wall time.
#[derive(Clone, Debug, Default)]
pub struct Profile {
    pub spans: BTreeMap<&'static str, Totals>,
    pub wall: Duration,
}

impl Profile {
    pub fn get(&self, name: &str) -> Option<&Totals> {
        self.spans.get(name)
    }

    /// Wall time outside every span.
    pub fn unmarked(&self) -> Duration {
        let marked: Duration = self.spans.values().map(|t| t.own).sum();
        self.wall.saturating_sub(marked)
    }

    /// Spans by decreasing self time.
    pub fn by_own_time(&self) -> Vec<(&'static str, Totals)> {
        let mut v: Vec<_> = self.spans.iter().map(|(k, t)| (*k, *t)).collect();
        v.sort_by(|a, b| b.1.own.cmp(&a.1.own).then(a.0.cmp(b.0)));
        v
    }
}

struct Open {
    name: &'static str,
    start: Instant,
    /// Time spent in spans opened inside this one (closed so far).
    nested: Duration,
}

thread_local! {
    static ON: Cell<bool> = const { Cell::new(false) };
    static STACK: RefCell<Vec<Open>> = const { RefCell::new(Vec::new()) };
    static SPANS: RefCell<BTreeMap<&'static str, Totals>> = const { RefCell::new(BTreeMap::new()) };
}

/// Marks the scope until the guard drops as `name` (when recording on this thread).
pub fn span(name: &'static str) -> Span {
    let on = ON.with(Cell::get);
    if on {
        STACK.with(|s| s.borrow_mut().push(Open { name, start: Instant::now(), nested: Duration::ZERO }));
    }
    Span { on }
}

/// Closes its span when dropped.
#[must_use = "a span measures until its guard drops"]
pub struct Span {
    on: bool,
}

impl Drop for Span {
    fn drop(&mut self) {
        if !self.on {
            return;
        }
        STACK.with(|s| {
            let mut s = s.borrow_mut();
            let Some(open) = s.pop() else { return };
            let took = open.start.elapsed();
            if let Some(parent) = s.last_mut() {
                parent.nested += took;
            }
            SPANS.with(|m| {
                let mut m = m.borrow_mut();
                let t = m.entry(open.name).or_default();
                t.inclusive += took;
                t.own += took.saturating_sub(open.nested);
                t.calls += 1;
            });
        });
    }
}

/// Runs `f` with recording on for this thread and returns its result with the spans it opened.
/// Calls nest: an inner `record` gets its own spans, and the outer one sees none of them.
pub fn record<T>(f: impl FnOnce() -> T) -> (T, Profile) {
    let was_on = ON.with(|o| o.replace(true));
    let outer_stack = STACK.with(|s| std::mem::take(&mut *s.borrow_mut()));
    let outer_spans = SPANS.with(|m| std::mem::take(&mut *m.borrow_mut()));
    let start = Instant::now();
    let out = f();
    let wall = start.elapsed();
    let spans = SPANS.with(|m| std::mem::replace(&mut *m.borrow_mut(), outer_spans));
    STACK.with(|s| *s.borrow_mut() = outer_stack);
    ON.with(|o| o.set(was_on));
    (out, Profile { spans, wall })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::thread::sleep;

    #[test]
    fn self_time_excludes_nested_spans() {
        let ((), p) = record(|| {
            let _a = span("outer");
            sleep(Duration::from_millis(20));
            for _ in 0..2 {
                let _b = span("inner");
                sleep(Duration::from_millis(15));
            }
        });
        let (outer, inner) = (p.get("outer").unwrap(), p.get("inner").unwrap());
        assert_eq!((outer.calls, inner.calls), (1, 2));
        assert!(inner.own >= Duration::from_millis(30) && inner.own == inner.inclusive);
        // Self time is exactly the inclusive time less the nested spans'.
        assert_eq!(outer.own + inner.inclusive, outer.inclusive);
        assert!(outer.own >= Duration::from_millis(20), "{outer:?}");
        assert!(p.wall >= outer.inclusive);
        assert!(p.unmarked() < Duration::from_millis(50), "{:?}", p.unmarked());
        let order = p.by_own_time();
        assert_eq!(order.len(), 2);
        assert!(order[0].1.own >= order[1].1.own);
    }

    #[test]
    fn nothing_is_kept_outside_record() {
        {
            let _a = span("ignored");
        }
        let ((), p) = record(|| {
            let _a = span("kept");
        });
        assert!(p.get("ignored").is_none() && p.get("kept").is_some());
        // The inner record's spans stay out of the outer one's.
        let ((), outer) = record(|| {
            let _o = span("o");
            let ((), inner) = record(|| {
                let _i = span("i");
            });
            assert!(inner.get("i").is_some() && inner.get("o").is_none());
        });
        assert!(outer.get("i").is_none() && outer.get("o").is_some());
        assert!(!ON.with(Cell::get));
    }
}
