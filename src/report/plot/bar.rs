//! Bar charts: one value per category per series, as grouped or stacked bars or dodged points,
//! upright (categories along x) or lying (categories down the y axis, names readable at any
//! length), with the legend to the right.
use super::{
    assign_colors, configure_mesh, draw_legend, fit_range, heading, legend_width, s, write_both, Categories, Chart, Figure, Mark, FONT,
};
use crate::error::{Error, Result};
use plotters::coord::ranged1d::ValueFormatter;
use plotters::coord::Shift;
use plotters::prelude::*;
use std::path::{Path, PathBuf};

/// One series of a [`BarChart`]: a value per category (NaN: nothing drawn), and optionally an
/// interval (lo, hi) per category.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct BarSeries {
    pub name: String,
    pub values: Vec<f64>,
    pub intervals: Option<Vec<(f64, f64)>>,
    /// A fixed colour; `None`: from the palette.
    pub color: Option<RGBColor>,
}

impl BarSeries {
    pub fn new(name: impl Into<String>, values: Vec<f64>) -> Self {
        BarSeries { name: name.into(), values, ..Default::default() }
    }
    pub fn with_intervals(mut self, iv: Vec<(f64, f64)>) -> Self {
        self.intervals = Some(iv);
        self
    }
}

/// How a [`BarChart`] marks values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum BarStyle {
    /// Bars from 0 (or the axis floor when 0 is off the range), side by side within a category.
    #[default]
    Bars,
    /// A dot per value, dodged within its category like the bars would be.
    Points,
    /// One bar per category, the series' values stacked in series order (positive values only;
    /// intervals are not drawn: see [`BarChart::totals`]).
    Stacked,
}

/// Grouped values per category: one bar (or dot, or stack segment) per series in each.
#[derive(Debug, Clone, PartialEq)]
pub struct BarChart {
    pub title: String,
    /// A line under the title, in grey.
    pub note: Option<String>,
    /// The category axis' label.
    pub x_label: String,
    /// The value axis' label.
    pub y_label: String,
    /// The value axis' range; `None`: fitted to values and intervals (bars and stacks include 0).
    pub y_range: Option<(f64, f64)>,
    /// Width, height in pixels; a lying chart's height follows its categories instead (a row each).
    pub size: (u32, u32),
    pub style: BarStyle,
    /// Categories down the y axis, the first on top, values along x.
    pub horizontal: bool,
    /// For [`BarStyle::Stacked`]: an interval per category drawn as a whisker (e.g. the total's CI).
    pub totals: Option<Vec<(f64, f64)>>,
}

impl BarChart {
    pub fn new(title: impl Into<String>, x_label: impl Into<String>, y_label: impl Into<String>) -> Self {
        BarChart {
            title: title.into(),
            note: None,
            x_label: x_label.into(),
            y_label: y_label.into(),
            y_range: None,
            size: (900, 560),
            style: BarStyle::Bars,
            horizontal: false,
            totals: None,
        }
    }

    /// Draws to `stem.png` and `stem.svg`. Every series needs one value (and interval) per category.
    pub fn draw(&self, stem: &Path, categories: &[String], series: &[BarSeries]) -> Result<(PathBuf, PathBuf)> {
        if categories.is_empty() {
            return Err(Error::Input(format!("plot '{}': no categories", self.title)));
        }
        for se in series {
            let n_iv = se.intervals.as_ref().map(|v| v.len()).unwrap_or(categories.len());
            if se.values.len() != categories.len() || n_iv != categories.len() {
                return Err(Error::Input(format!(
                    "plot '{}': series '{}' has {} values and {} intervals for {} categories",
                    self.title,
                    se.name,
                    se.values.len(),
                    n_iv,
                    categories.len()
                )));
            }
        }
        if self.totals.as_ref().is_some_and(|t| t.len() != categories.len()) {
            return Err(Error::Input(format!("plot '{}': totals need one interval per category", self.title)));
        }
        let mut size = self.size;
        if self.horizontal {
            // Lying, the height follows the categories: a row each, bars 10 px thick at least.
            let per = match self.style {
                BarStyle::Bars => (12 * series.len() as u32 + 14).max(30),
                _ => 34,
            };
            let head = if self.title.is_empty() { 0 } else { 40 } + if self.note.is_some() { 24 } else { 0 };
            size.1 = (head + 100 + per * categories.len() as u32).max(220);
        }
        write_both(stem, size, &Bars(self, categories, series))
    }

    /// The value axis: given, or fitted (bars and stacks from 0).
    pub fn value_range(&self, n: usize, series: &[BarSeries]) -> (f64, f64) {
        if let Some(r) = self.y_range {
            return r;
        }
        let intervals = || series.iter().flat_map(|se| se.intervals.iter().flatten().flat_map(|&(lo, hi)| [lo, hi]));
        match self.style {
            BarStyle::Stacked => {
                let tops = (0..n).map(|i| series.iter().map(|se| se.values[i]).filter(|v| v.is_finite() && *v > 0.0).sum::<f64>());
                let whiskers = self.totals.iter().flatten().flat_map(|&(lo, hi)| [lo, hi]);
                fit_range(tops.chain(whiskers), true)
            }
            BarStyle::Bars => fit_range(series.iter().flat_map(|se| se.values.iter().copied()).chain(intervals()), true),
            BarStyle::Points => fit_range(series.iter().flat_map(|se| se.values.iter().copied()).chain(intervals()), false),
        }
    }

    fn render<DB: DrawingBackend>(
        &self,
        root: DrawingArea<DB, Shift>,
        categories: &[String],
        series: &[BarSeries],
    ) -> std::result::Result<(), String> {
        root.fill(&WHITE).map_err(s)?;
        let area = heading(&root, &self.title, self.note.as_deref())?;
        let names: Vec<&str> = series.iter().map(|s| s.name.as_str()).filter(|n| !n.is_empty()).collect();
        let lw = if names.is_empty() { 0 } else { legend_width(&area, &names) };
        let (w, _) = area.dim_in_pixel();
        let (plot, legend) = area.split_horizontally(w.saturating_sub(lw));
        let n = categories.len();
        let vr = self.value_range(n, series);
        let colors = assign_colors(&series.iter().map(|s| s.color).collect::<Vec<_>>());
        if self.horizontal {
            // The first category on top: category i sits at y = n - 1 - i.
            let axis = CategoryAxis(categories.iter().rev().cloned().collect(), true);
            let style = TextStyle::from((FONT, 14));
            let label_w = categories.iter().map(|c| plot.estimate_text_size(c, &style).map(|d| d.0).unwrap_or(8 * c.len() as u32)).max();
            let mut chart = ChartBuilder::on(&plot)
                .margin(12)
                .x_label_area_size(50)
                .y_label_area_size(label_w.unwrap_or(40) + 18)
                .build_cartesian_2d(vr.0..vr.1, axis)
                .map_err(s)?;
            configure_mesh(&mut chart, &self.y_label, &self.x_label, Categories::Y)?;
            self.marks(&mut chart, series, &colors, vr, |i| (n - 1 - i) as f64, true)?;
        } else {
            let mut chart = ChartBuilder::on(&plot)
                .margin(12)
                .x_label_area_size(50)
                .y_label_area_size(72)
                .build_cartesian_2d(CategoryAxis(categories.to_vec(), false), vr.0..vr.1)
                .map_err(s)?;
            configure_mesh(&mut chart, &self.x_label, &self.y_label, Categories::X)?;
            self.marks(&mut chart, series, &colors, vr, |i| i as f64, false)?;
        }
        if lw > 0 {
            let mark = |c| if self.style == BarStyle::Points { Mark::Dot(c) } else { Mark::Box(c) };
            let entries: Vec<(Mark, String)> =
                series.iter().zip(&colors).filter(|(se, _)| !se.name.is_empty()).map(|(se, &c)| (mark(c), se.name.clone())).collect();
            draw_legend(&legend, &entries, 12)?;
        }
        root.present().map_err(s)
    }

    /// Bars, dots or stacks and their intervals; `pos(i)` is category i's place on its axis and
    /// `lying` swaps the axes (values along x).
    fn marks<DB, X, Y>(
        &self,
        chart: &mut Chart<'_, DB, X, Y>,
        series: &[BarSeries],
        colors: &[RGBColor],
        vr: (f64, f64),
        pos: impl Fn(usize) -> f64,
        lying: bool,
    ) -> std::result::Result<(), String>
    where
        DB: DrawingBackend,
        X: Ranged<ValueType = f64>,
        Y: Ranged<ValueType = f64>,
    {
        // (place on the category axis, value) to chart coordinates.
        let pt = |c: f64, v: f64| if lying { (v, c) } else { (c, v) };
        let base = if vr.0 <= 0.0 && 0.0 <= vr.1 { 0.0 } else { vr.0 };
        let n = series.first().map_or(0, |s| s.values.len());
        if self.style == BarStyle::Stacked {
            let mut end = vec![base; n];
            for (se, &c) in series.iter().zip(colors) {
                for (i, &v) in se.values.iter().enumerate().filter(|(_, v)| v.is_finite() && **v > 0.0) {
                    let (a, b) = (end[i], end[i] + v);
                    let r = Rectangle::new([pt(pos(i) - 0.35, a), pt(pos(i) + 0.35, b)], c.filled());
                    chart.draw_series(std::iter::once(r)).map_err(s)?;
                    end[i] = b;
                }
            }
            if let Some(t) = &self.totals {
                let ok = t.iter().enumerate().filter(|(_, b)| b.0.is_finite() && b.1.is_finite());
                chart.draw_series(ok.flat_map(|(i, &(lo, hi))| whisker(&pt, pos(i), lo, hi, 0.18, BLACK.stroke_width(1)))).map_err(s)?;
            }
            return Ok(());
        }
        // Within a category, series share 80% of the slot side by side.
        let k = series.len().max(1) as f64;
        let w = 0.8 / k;
        for (j, (se, &c)) in series.iter().zip(colors).enumerate() {
            // Lying, the first series is on top within its category.
            let off = if lying { 0.4 - w * (j as f64 + 0.5) } else { -0.4 + w * (j as f64 + 0.5) };
            let centre = |i: usize| pos(i) + off;
            let vals: Vec<(usize, f64)> = se.values.iter().copied().enumerate().filter(|v| v.1.is_finite()).collect();
            match self.style {
                BarStyle::Points => {
                    chart.draw_series(vals.iter().map(|&(i, v)| Circle::new(pt(centre(i), v), 5, c.filled()))).map_err(s)?;
                }
                _ => {
                    let rect =
                        |&(i, v): &(usize, f64)| Rectangle::new([pt(centre(i) - w * 0.45, base), pt(centre(i) + w * 0.45, v)], c.filled());
                    chart.draw_series(vals.iter().map(rect)).map_err(s)?;
                }
            }
            if let Some(iv) = &se.intervals {
                let style = if self.style == BarStyle::Bars { BLACK } else { c }.stroke_width(1);
                let ok = iv.iter().enumerate().filter(|(_, b)| b.0.is_finite() && b.1.is_finite());
                let half = (w * 0.3).min(0.15);
                chart.draw_series(ok.flat_map(|(i, &(lo, hi))| whisker(&pt, centre(i), lo, hi, half, style))).map_err(s)?;
            }
        }
        Ok(())
    }
}

/// An interval from `lo` to `hi` at `at` on the category axis, capped `half` category units either
/// side; `pt` maps (category place, value) to the chart's coordinates.
fn whisker(pt: &impl Fn(f64, f64) -> (f64, f64), at: f64, lo: f64, hi: f64, half: f64, style: ShapeStyle) -> [PathElement<(f64, f64)>; 3] {
    [
        PathElement::new(vec![pt(at, lo), pt(at, hi)], style),
        PathElement::new(vec![pt(at - half, lo), pt(at + half, lo)], style),
        PathElement::new(vec![pt(at - half, hi), pt(at + half, hi)], style),
    ]
}

struct Bars<'a>(&'a BarChart, &'a [String], &'a [BarSeries]);
impl Figure for Bars<'_> {
    fn render<DB: DrawingBackend>(&self, root: DrawingArea<DB, Shift>) -> std::result::Result<(), String> {
        self.0.render(root, self.1, self.2)
    }
}

/// Draws a grouped bar chart with default layout: see [`BarChart`].
pub fn bar_chart(stem: &Path, title: &str, y_label: &str, categories: &[String], series: &[BarSeries]) -> Result<(PathBuf, PathBuf)> {
    BarChart::new(title, "", y_label).draw(stem, categories, series)
}

/// A categorical axis: category i sits at i, the axis spans [-0.5, n - 0.5], and the tick labels
/// are the names: all of them when `.1` (the chart gave each its row), else every k-th when they
/// would not fit.
#[derive(Debug, Clone)]
struct CategoryAxis(Vec<String>, bool);

impl Ranged for CategoryAxis {
    type FormatOption = plotters::coord::ranged1d::NoDefaultFormatting;
    type ValueType = f64;
    fn map(&self, v: &f64, limit: (i32, i32)) -> i32 {
        let r = self.range();
        let u = (v - r.start) / (r.end - r.start);
        limit.0 + (u * f64::from(limit.1 - limit.0)).round() as i32
    }
    fn key_points<H: plotters::coord::ranged1d::KeyPointHint>(&self, hint: H) -> Vec<f64> {
        let n = self.0.len();
        let step = if self.1 { 1 } else { n.div_ceil(hint.max_num_points().max(1)).max(1) };
        (0..n).step_by(step).map(|i| i as f64).collect()
    }
    fn range(&self) -> std::ops::Range<f64> {
        -0.5..self.0.len() as f64 - 0.5
    }
}

impl ValueFormatter<f64> for CategoryAxis {
    fn format_ext(&self, v: &f64) -> String {
        let i = v.round();
        if (v - i).abs() < 1e-6 && i >= 0.0 && (i as usize) < self.0.len() {
            self.0[i as usize].clone()
        } else {
            String::new()
        }
    }
}
