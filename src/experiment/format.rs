//! Numbers in the report's text: "mean ± CI" ([`pm`]), p-values ([`fmt_p`]), and each metric's
//! decimals, scale (win rates and accuracies in percent) and label.
use super::aggregate::Cell;
use super::run_stats::METRICS;
use super::stats::Summary;

/// How a metric is shown: decimals and a scale (win rates and accuracies in percent).
pub fn metric_format(key: &str) -> (usize, f64) {
    match key {
        "win_rate" | "lc_win_rate" => (1, 100.0),
        "rm_acc_before" | "rm_acc_after" => (1, 100.0),
        "peak_step" => (1, 1.0),
        "length_final" | "length_init" => (1, 1.0),
        "kl_final" => (2, 1.0),
        "time_step" => (2, 1.0),
        _ => (3, 1.0),
    }
}

/// `s` in other units: mean, std and CI times `scale`.
pub fn scaled(s: &Summary, scale: f64) -> Summary {
    Summary { n: s.n, mean: s.mean * scale, std: s.std * scale, ci95: s.ci95 * scale }
}

/// A cell's metric as "mean ± ci" in its display format.
pub fn show(c: &Cell, key: &str) -> String {
    let (d, k) = metric_format(key);
    pm(&scaled(&c.get(key), k), d)
}

/// A metric's column label, with "(%)" where it is shown in percent.
pub fn label(key: &str) -> String {
    let base = METRICS.iter().find(|(k, _)| *k == key).map(|(_, l)| l.to_string()).unwrap_or_else(|| key.to_string());
    match key {
        "win_rate" | "lc_win_rate" | "rm_acc_before" | "rm_acc_after" => format!("{base} (%)"),
        _ => base,
    }
}

/// "mean ± ci" with `digits` decimals; "mean (n=1)" when there is no CI; "n/a" with no data.
pub fn pm(s: &Summary, digits: usize) -> String {
    if s.n == 0 || !s.mean.is_finite() {
        "n/a".into()
    } else if s.ci95.is_finite() {
        format!("{:.digits$} ± {:.digits$}", s.mean, s.ci95)
    } else {
        format!("{:.digits$} (n={})", s.mean, s.n)
    }
}

/// A p-value for text: 3 significant digits, "< 0.001" below.
pub fn fmt_p(p: f64) -> String {
    if !p.is_finite() {
        "n/a".into()
    } else if p < 0.001 {
        "< 0.001".into()
    } else {
        format!("{p:.3}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::experiment::stats::summarize;

    #[test]
    fn plus_minus() {
        assert_eq!(pm(&summarize(&[1.0, 2.0, 4.0]), 2), "2.33 ± 3.79");
        assert_eq!(pm(&summarize(&[0.5]), 2), "0.50 (n=1)");
        assert_eq!(pm(&Summary::EMPTY, 2), "n/a");
        assert_eq!(fmt_p(0.0004), "< 0.001");
        assert_eq!(fmt_p(0.41234), "0.412");
    }

    #[test]
    fn win_rates_and_accuracies_in_percent() {
        assert_eq!(metric_format("lc_win_rate"), (1, 100.0));
        assert_eq!(label("rm_acc_after"), "RM acc after (%)");
        assert_eq!(label("gold_final"), "gold (final)");
        assert_eq!(pm(&scaled(&summarize(&[0.5, 0.7]), 100.0), 1), "60.0 ± 127.1");
    }
}
