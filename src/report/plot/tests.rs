use super::*;

#[test]
fn ranges_and_segments() {
    assert_eq!(fit_range([], false), (0.0, 1.0));
    assert_eq!(fit_range([2.0], false), (1.5, 2.5));
    let (lo, hi) = fit_range([0.0, 10.0, f64::NAN], false);
    assert!((lo + 0.5).abs() < 1e-12 && (hi - 10.5).abs() < 1e-12);
    assert_eq!(fit_range([1.0, 3.0], true).0, 0.0);
    let seg = segments(&[(0.0, 1.0), (1.0, f64::NAN), (2.0, 2.0), (3.0, 3.0)]);
    assert_eq!(seg, vec![vec![(0.0, 1.0)], vec![(2.0, 2.0), (3.0, 3.0)]]);
    assert_eq!(tick_label(20.0, 200.0), "20");
    assert_eq!(tick_label(0.1 + 0.2, 2.0), "0.3");
    assert_eq!(tick_label(0.25, 1.0), "0.25");
    assert_eq!(tick_label(-0.0, 1.0), "0");
    let (p, v) = output_paths(Path::new("a/fig.v1"));
    assert_eq!((p, v), (PathBuf::from("a/fig.v1.png"), PathBuf::from("a/fig.v1.svg")));
}

/// A metric that lives in 0..8 with a CI band of -15..+20 (3 seeds, t = 4.3): the axis follows
/// the means and the seeds' lines, and the band is cut at the axis.
#[test]
fn the_y_axis_fits_the_lines_and_clips_the_bands() {
    let rows: Vec<(f64, f64, f64)> = (0..10).map(|t| (t as f64, 7.0 - 0.5 * t as f64, 2.0 + 2.0 * t as f64)).collect();
    let mean = Series::mean_ci("vanilla", &rows);
    let (lo, hi) = fit_lines_y(std::slice::from_ref(&mean), &[]);
    assert!((lo - (2.5 - 0.225)).abs() < 1e-9 && (hi - (7.0 + 0.225)).abs() < 1e-9, "{lo} {hi}");
    // A seed below the mean widens the axis: every line drawn is on it.
    let seeded = mean.clone().with_seeds(vec![vec![(0.0, 7.0), (9.0, 1.0)], vec![(0.0, 7.1), (9.0, 4.0)]]);
    let (lo, hi) = fit_lines_y(&[seeded.clone()], &[0.0]);
    assert!(lo < 0.0 && lo > -0.5 && hi < 7.5, "{lo} {hi}");
    // Error bars do not stretch it either; reference lines do.
    let bars = Series::new("b", vec![(0.0, 1.0), (1.0, 2.0)]).with_error_bars(vec![(0.0, -50.0, 50.0)]);
    assert!(fit_lines_y(std::slice::from_ref(&bars), &[]).1 < 3.0);
    assert!(fit_lines_y(&[bars], &[10.0]).1 > 10.0);
    // Bands are clamped into the axis, non-finite rows dropped.
    let band = clip_band(&[(0.0, -15.0, 20.0), (1.0, 3.0, 4.0), (2.0, f64::NAN, 1.0)], (0.0, 8.0));
    assert_eq!(band, [(0.0, 0.0, 8.0), (1.0, 3.0, 4.0)]);
}

#[test]
fn colors_differ_within_a_panel() {
    let auto = assign_colors(&[None; 7]);
    for (i, a) in auto.iter().enumerate() {
        assert!(auto[i + 1..].iter().all(|b| b != a), "colour {i} repeats: {auto:?}");
    }
    assert!(!auto.contains(&okabe_ito::YELLOW), "yellow only beyond seven series");
    // Fixed colours stay and are not handed to another series of the panel.
    let fixed = [Some(okabe_ito::BLACK), None, Some(okabe_ito::VERMILLION), None, None, None, None];
    let got = assign_colors(&fixed);
    assert_eq!((got[0], got[2]), (okabe_ito::BLACK, okabe_ito::VERMILLION));
    for (i, a) in got.iter().enumerate() {
        assert!(got[i + 1..].iter().all(|b| b != a), "colour {i} repeats: {got:?}");
    }
    // Every colour is one of Okabe-Ito's.
    assert!(got.iter().all(|c| PALETTE.contains(c)));
    // Beyond the palette, colours repeat rather than fail.
    assert_eq!(assign_colors(&[None; 10]).len(), 10);
}

#[test]
fn writes_png_and_svg() {
    let d = tempfile::tempdir().unwrap();
    let a = Series::mean_ci("a", &[(0.0, 0.1, 0.05), (1.0, 0.4, 0.1), (2.0, 0.5, 0.1)]);
    let b = Series::new("b", vec![(0.0, 0.3), (1.0, f64::NAN), (2.0, 0.2)]).with_error_bars(vec![(0.0, 0.2, 0.4)]);
    let (png, svg) = line_chart(&d.path().join("sub/x"), "t", "x", "y", &[a.clone(), b]).unwrap();
    assert!(std::fs::read(&png).unwrap().starts_with(b"\x89PNG"));
    assert!(std::fs::read_to_string(&svg).unwrap().contains("<svg"));
    let panels = [Panel::new("one", vec![a.clone()]), Panel::new("two", vec![a.with_seeds(vec![vec![(0.0, 0.0), (2.0, 1.0)]])])];
    let mut c = LineChart::new("panels", "x", "y");
    c.note = Some("thin: seeds".into());
    let (png, _) = c.draw_panels(&d.path().join("panels"), &panels).unwrap();
    assert!(std::fs::read(&png).unwrap().starts_with(b"\x89PNG"));
    let cats = vec!["c1".to_string(), "c2".to_string()];
    let bars = BarSeries::new("m", vec![1.0, -0.5]).with_intervals(vec![(0.8, 1.2), (-0.7, -0.3)]);
    bar_chart(&d.path().join("bars"), "t", "y", &cats, std::slice::from_ref(&bars)).unwrap();
    let mut lying = BarChart::new("t", "", "y");
    lying.horizontal = true;
    lying.draw(&d.path().join("lying"), &cats, std::slice::from_ref(&bars)).unwrap();
    lying.style = BarStyle::Stacked;
    lying.totals = Some(vec![(0.9, 1.1), (f64::NAN, f64::NAN)]);
    lying.draw(&d.path().join("stacked"), &cats, &[bars.clone(), bars]).unwrap();
    let bad = BarSeries::new("m", vec![1.0]);
    assert!(bar_chart(&d.path().join("bad"), "t", "y", &cats, &[bad]).unwrap_err().to_string().contains("1 values"));
}

#[test]
fn stacks_start_at_zero_and_reach_the_largest_total() {
    let mut c = BarChart::new("t", "", "s");
    c.style = BarStyle::Stacked;
    let series = [BarSeries::new("a", vec![1.0, 2.0]), BarSeries::new("b", vec![3.0, f64::NAN])];
    let (lo, hi) = c.value_range(2, &series);
    assert_eq!(lo, 0.0);
    assert!((hi - 4.2).abs() < 1e-9, "{hi}");
}

/// Writes sample figures to `$R2M_PLOT_DEMO` (a folder) for a look:
/// `R2M_PLOT_DEMO=/tmp/plots cargo test --lib report::plot -- --ignored`.
#[test]
#[ignore]
fn demo_figures() {
    let dir = PathBuf::from(std::env::var("R2M_PLOT_DEMO").expect("set R2M_PLOT_DEMO"));
    let steps: Vec<f64> = (0..=20).map(|i| i as f64 * 10.0).collect();
    let gold: Vec<(f64, f64, f64)> = steps.iter().map(|&t| (t, (t / 60.0).tanh() - (t / 200.0).powi(2) * 0.6, 0.05 + t / 4000.0)).collect();
    let proxy: Vec<(f64, f64, f64)> = steps.iter().map(|&t| (t, t / 100.0, 0.04)).collect();
    let r2m: Vec<(f64, f64)> = steps.iter().map(|&t| (t, (t / 60.0).tanh() * 1.1)).collect();
    let mut c = LineChart::new("Gold and proxy reward vs step", "RL step", "reward");
    c.hlines = vec![0.0];
    c.draw(
        &dir.join("lines"),
        &[
            Series::mean_ci("gold (vanilla RM)", &gold),
            Series::mean_ci("proxy (vanilla RM)", &proxy),
            Series::new("gold (R2M)", r2m)
                .with_error_bars(steps.iter().map(|&t| (t, (t / 60.0).tanh() * 1.1 - 0.08, (t / 60.0).tanh() * 1.1 + 0.08)).collect()),
        ],
    )
    .unwrap();
    let cats: Vec<String> = ["generate", "logprobs", "ref", "reward", "policy", "r2m"].iter().map(|s| s.to_string()).collect();
    let a = BarSeries::new("vanilla", vec![4.1, 1.2, 1.1, 0.6, 2.5, f64::NAN]);
    let b = BarSeries::new("R2M", vec![4.2, 1.2, 1.1, 0.7, 2.6, 0.3]).with_intervals(vec![
        (4.0, 4.4),
        (1.1, 1.3),
        (1.0, 1.2),
        (0.6, 0.8),
        (2.4, 2.8),
        (0.25, 0.35),
    ]);
    BarChart::new("Time per phase", "phase", "seconds per step").draw(&dir.join("bars"), &cats, &[a.clone(), b.clone()]).unwrap();
    let mut p = BarChart::new("Time per phase (points)", "phase", "seconds per step");
    p.style = BarStyle::Points;
    p.horizontal = true;
    p.draw(&dir.join("points"), &cats, &[a, b]).unwrap();
}
