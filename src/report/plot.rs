//! Figures as PNG and SVG from one description, over `plotters`.
//!
//! Two kinds: [`LineChart`] (named series of (x, y) points, each with an optional mean ± CI band,
//! drawn shaded or as error bars) and [`BarChart`] (one value per category per series, as grouped
//! bars or dodged points, with optional intervals). Both write `stem.png` and `stem.svg`.
//!
//! Text uses DejaVu Sans embedded in the binary (`assets/DejaVuSans.ttf`, registered with
//! plotters' `ab_glyph` feature): no system fonts, no fontconfig. The SVG names the family
//! `sans-serif`, so a viewer draws it with its own sans font (layout was measured with DejaVu Sans).
//!
//! Non-finite values are left out (a line skips them; a NaN bar is not drawn), so a metric that is
//! missing at some steps still plots. Colours follow the Okabe-Ito palette (readable by colour-blind
//! readers), in series order.
use crate::error::{Error, Result};
use plotters::coord::ranged1d::ValueFormatter;
use plotters::coord::Shift;
use plotters::prelude::*;
use std::path::{Path, PathBuf};

/// One line: `points` (x, y) in drawing order; `band`, when given, (x, lo, hi) per x, e.g. a 95%
/// CI around a mean, shaded under the line, or drawn as error bars when `error_bars`.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Series {
    pub name: String,
    pub points: Vec<(f64, f64)>,
    pub band: Option<Vec<(f64, f64, f64)>>,
    /// Draw `band` as error bars at each x instead of a shaded area.
    pub error_bars: bool,
}

impl Series {
    pub fn new(name: impl Into<String>, points: Vec<(f64, f64)>) -> Self {
        Series { name: name.into(), points, band: None, error_bars: false }
    }
    /// With a shaded band (x, lo, hi).
    pub fn with_band(mut self, band: Vec<(f64, f64, f64)>) -> Self {
        self.band = Some(band);
        self
    }
    /// With error bars (x, lo, hi).
    pub fn with_error_bars(mut self, bars: Vec<(f64, f64, f64)>) -> Self {
        self.band = Some(bars);
        self.error_bars = true;
        self
    }
    /// From (x, mean, half-width) triples: the line at the mean and the band mean ± half-width.
    pub fn mean_ci(name: impl Into<String>, rows: &[(f64, f64, f64)]) -> Self {
        let points = rows.iter().map(|&(x, m, _)| (x, m)).collect();
        let band = rows.iter().map(|&(x, m, h)| (x, m - h, m + h)).collect();
        Series::new(name, points).with_band(band)
    }
}

/// Okabe-Ito colours, in the order series get them (yellow last: faint on white).
pub const PALETTE: [RGBColor; 8] = [
    RGBColor(0, 114, 178),   // blue
    RGBColor(213, 94, 0),    // vermillion
    RGBColor(0, 158, 115),   // bluish green
    RGBColor(230, 159, 0),   // orange
    RGBColor(204, 121, 167), // reddish purple
    RGBColor(86, 180, 233),  // sky blue
    RGBColor(0, 0, 0),       // black
    RGBColor(240, 228, 66),  // yellow
];

/// The colour of series `i`.
pub fn color(i: usize) -> RGBColor {
    PALETTE[i % PALETTE.len()]
}

const FONT: &str = "sans-serif";
static DEJAVU_SANS: &[u8] = include_bytes!("../../assets/DejaVuSans.ttf");

/// Registers the embedded font once; every drawing calls it first.
fn register_font() -> Result<()> {
    static DONE: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    let ok = *DONE.get_or_init(|| plotters::style::register_font(FONT, FontStyle::Normal, DEJAVU_SANS).is_ok());
    if ok {
        Ok(())
    } else {
        Err(Error::Input("report::plot: the embedded DejaVuSans.ttf did not parse as a font".into()))
    }
}

/// A line chart's labels and layout. `Default`: 900 x 560 px, ranges fitted to the data (5%
/// margin), markers when every series has at most 40 points.
#[derive(Debug, Clone, PartialEq)]
pub struct LineChart {
    pub title: String,
    pub x_label: String,
    pub y_label: String,
    /// Fixed axis ranges; `None` fits the data (and bands).
    pub x_range: Option<(f64, f64)>,
    pub y_range: Option<(f64, f64)>,
    /// Width, height in pixels (SVG units alike).
    pub size: (u32, u32),
    /// Draw a dot at every point; `None`: when every series has at most 40 points.
    pub markers: Option<bool>,
    /// Horizontal reference lines (e.g. y = 0), drawn dashed grey.
    pub hlines: Vec<f64>,
}

impl Default for LineChart {
    fn default() -> Self {
        LineChart {
            title: String::new(),
            x_label: String::new(),
            y_label: String::new(),
            x_range: None,
            y_range: None,
            size: (900, 560),
            markers: None,
            hlines: vec![],
        }
    }
}

impl LineChart {
    pub fn new(title: impl Into<String>, x_label: impl Into<String>, y_label: impl Into<String>) -> Self {
        LineChart { title: title.into(), x_label: x_label.into(), y_label: y_label.into(), ..Default::default() }
    }

    /// Draws `series` to `stem.png` and `stem.svg` (parent folders created); returns both paths.
    pub fn draw(&self, stem: &Path, series: &[Series]) -> Result<(PathBuf, PathBuf)> {
        for s in series {
            if let Some(b) = &s.band {
                if b.iter().any(|&(_, lo, hi)| lo > hi) {
                    return Err(Error::Input(format!("plot '{}': series '{}' has a band with lo > hi", self.title, s.name)));
                }
            }
        }
        write_both(stem, self.size, &Lines(self, series))
    }

    fn render<DB: DrawingBackend>(&self, root: DrawingArea<DB, Shift>, series: &[Series]) -> std::result::Result<(), String> {
        root.fill(&WHITE).map_err(s)?;
        let xs = series.iter().flat_map(|s| s.points.iter().map(|p| p.0).chain(s.band.iter().flatten().map(|b| b.0)));
        let ys = series.iter().flat_map(|s| s.points.iter().map(|p| p.1).chain(s.band.iter().flatten().flat_map(|b| [b.1, b.2])));
        let xr = self.x_range.unwrap_or_else(|| fit_range(xs, false));
        let yr = self.y_range.unwrap_or_else(|| fit_range(ys.chain(self.hlines.iter().copied()), false));

        let mut chart = ChartBuilder::on(&root)
            .caption(&self.title, (FONT, 22))
            .margin(14)
            .x_label_area_size(50)
            .y_label_area_size(72)
            .build_cartesian_2d(xr.0..xr.1, yr.0..yr.1)
            .map_err(s)?;
        configure_mesh(&mut chart, &self.x_label, &self.y_label, false)?;

        for &y in &self.hlines {
            let grey = RGBColor(120, 120, 120);
            chart.draw_series(DashedLineSeries::new([(xr.0, y), (xr.1, y)], 6, 4, grey.stroke_width(1))).map_err(s)?;
        }
        // Shaded bands first, so lines and markers lie on top.
        for (i, se) in series.iter().enumerate() {
            if let (Some(band), false) = (&se.band, se.error_bars) {
                let band: Vec<_> = band.iter().copied().filter(|b| b.0.is_finite() && b.1.is_finite() && b.2.is_finite()).collect();
                if band.len() >= 2 {
                    let mut poly: Vec<(f64, f64)> = band.iter().map(|b| (b.0, b.2)).collect();
                    poly.extend(band.iter().rev().map(|b| (b.0, b.1)));
                    chart.draw_series(std::iter::once(Polygon::new(poly, color(i).mix(0.18).filled()))).map_err(s)?;
                }
            }
        }
        let markers = self.markers.unwrap_or_else(|| series.iter().all(|s| s.points.len() <= 40));
        for (i, se) in series.iter().enumerate() {
            let c = color(i);
            // A non-finite y breaks the line into segments; each segment is drawn on its own.
            let mut first = true;
            for seg in segments(&se.points) {
                let ann = chart.draw_series(LineSeries::new(seg.iter().copied(), c.stroke_width(2))).map_err(s)?;
                if first && !se.name.is_empty() {
                    ann.label(se.name.clone()).legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 22, y)], c.stroke_width(3)));
                    first = false;
                }
            }
            if markers {
                let pts = se.points.iter().copied().filter(|p| p.0.is_finite() && p.1.is_finite());
                chart.draw_series(pts.map(|p| Circle::new(p, 3, c.filled()))).map_err(s)?;
            }
            if let (Some(band), true) = (&se.band, se.error_bars) {
                let ok = band.iter().copied().filter(|b| b.0.is_finite() && b.1.is_finite() && b.2.is_finite());
                // The bar's centre mark sits on the line where a point has the same x.
                let mid = |x: f64, lo: f64, hi: f64| {
                    se.points.iter().find(|p| p.0 == x && p.1.is_finite()).map(|p| p.1).unwrap_or((lo + hi) / 2.0)
                };
                chart
                    .draw_series(ok.map(|(x, lo, hi)| ErrorBar::new_vertical(x, lo, mid(x, lo, hi), hi, c.stroke_width(1), 8)))
                    .map_err(s)?;
            }
        }
        let pts: Vec<(f64, f64)> = series.iter().flat_map(|s| s.points.iter().copied()).collect();
        if series.iter().any(|s| !s.name.is_empty()) {
            draw_legend(&mut chart, legend_corner(&pts, xr, yr))?;
        }
        root.present().map_err(s)
    }
}

/// Draws a line chart with default layout: see [`LineChart`].
pub fn line_chart(stem: &Path, title: &str, x_label: &str, y_label: &str, series: &[Series]) -> Result<(PathBuf, PathBuf)> {
    LineChart::new(title, x_label, y_label).draw(stem, series)
}

/// One series of a [`BarChart`]: a value per category (NaN: nothing drawn), and optionally an
/// interval (lo, hi) per category.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct BarSeries {
    pub name: String,
    pub values: Vec<f64>,
    pub intervals: Option<Vec<(f64, f64)>>,
}

impl BarSeries {
    pub fn new(name: impl Into<String>, values: Vec<f64>) -> Self {
        BarSeries { name: name.into(), values, intervals: None }
    }
    pub fn with_intervals(mut self, iv: Vec<(f64, f64)>) -> Self {
        self.intervals = Some(iv);
        self
    }
}

/// How a [`BarChart`] marks values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum BarStyle {
    /// Bars from 0 (or the axis floor when 0 is off the range).
    #[default]
    Bars,
    /// A dot per value, dodged within its category like the bars would be.
    Points,
}

/// Grouped values per category: categories along x, one bar (or dot) per series in each.
#[derive(Debug, Clone, PartialEq)]
pub struct BarChart {
    pub title: String,
    pub x_label: String,
    pub y_label: String,
    /// `None`: fitted to values and intervals; bars always include 0.
    pub y_range: Option<(f64, f64)>,
    pub size: (u32, u32),
    pub style: BarStyle,
}

impl BarChart {
    pub fn new(title: impl Into<String>, x_label: impl Into<String>, y_label: impl Into<String>) -> Self {
        BarChart {
            title: title.into(),
            x_label: x_label.into(),
            y_label: y_label.into(),
            y_range: None,
            size: (900, 560),
            style: BarStyle::Bars,
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
        write_both(stem, self.size, &Bars(self, categories, series))
    }

    fn render<DB: DrawingBackend>(
        &self,
        root: DrawingArea<DB, Shift>,
        categories: &[String],
        series: &[BarSeries],
    ) -> std::result::Result<(), String> {
        root.fill(&WHITE).map_err(s)?;
        let n = categories.len();
        let ys = series.iter().flat_map(|se| se.values.iter().copied().chain(se.intervals.iter().flatten().flat_map(|&(lo, hi)| [lo, hi])));
        let yr = self.y_range.unwrap_or_else(|| fit_range(ys, self.style == BarStyle::Bars));
        let xr = (-0.5, n as f64 - 0.5);
        let mut chart = ChartBuilder::on(&root)
            .caption(&self.title, (FONT, 22))
            .margin(14)
            .x_label_area_size(50)
            .y_label_area_size(72)
            .build_cartesian_2d(CategoryAxis(categories.to_vec()), yr.0..yr.1)
            .map_err(s)?;
        configure_mesh(&mut chart, &self.x_label, &self.y_label, true)?;

        // Within a category, series share 80% of the slot side by side.
        let k = series.len().max(1) as f64;
        let w = 0.8 / k;
        let base = if yr.0 <= 0.0 && 0.0 <= yr.1 { 0.0 } else { yr.0 };
        let mut tops = vec![];
        for (j, se) in series.iter().enumerate() {
            let c = color(j);
            let centre = |i: usize| i as f64 - 0.4 + w * (j as f64 + 0.5);
            let vals: Vec<(usize, f64)> = se.values.iter().copied().enumerate().filter(|v| v.1.is_finite()).collect();
            tops.extend(vals.iter().map(|&(i, v)| (centre(i), v)));
            let ann = match self.style {
                BarStyle::Bars => chart
                    .draw_series(vals.iter().map(|&(i, v)| {
                        let x = centre(i);
                        Rectangle::new([(x - w * 0.45, base), (x + w * 0.45, v)], c.filled())
                    }))
                    .map_err(s)?,
                BarStyle::Points => chart.draw_series(vals.iter().map(|&(i, v)| Circle::new((centre(i), v), 5, c.filled()))).map_err(s)?,
            };
            if !se.name.is_empty() {
                ann.label(se.name.clone()).legend(move |(x, y)| Rectangle::new([(x, y - 6), (x + 14, y + 6)], c.filled()));
            }
            if let Some(iv) = &se.intervals {
                let bar_colour = if self.style == BarStyle::Bars { BLACK } else { c };
                let ok = iv.iter().enumerate().filter(|(_, b)| b.0.is_finite() && b.1.is_finite());
                chart
                    .draw_series(ok.map(|(i, &(lo, hi))| {
                        let mid = if se.values[i].is_finite() { se.values[i] } else { (lo + hi) / 2.0 };
                        ErrorBar::new_vertical(centre(i), lo, mid, hi, bar_colour.stroke_width(1), 8)
                    }))
                    .map_err(s)?;
                tops.extend(iv.iter().enumerate().map(|(i, b)| (centre(i), b.1)));
            }
        }
        if series.iter().any(|s| !s.name.is_empty()) {
            draw_legend(&mut chart, legend_corner(&tops, xr, yr))?;
        }
        root.present().map_err(s)
    }
}

/// Draws a grouped bar chart with default layout: see [`BarChart`].
pub fn bar_chart(stem: &Path, title: &str, y_label: &str, categories: &[String], series: &[BarSeries]) -> Result<(PathBuf, PathBuf)> {
    BarChart::new(title, "", y_label).draw(stem, categories, series)
}

/// A categorical x axis: category i sits at x = i, the axis spans [-0.5, n - 0.5], and the tick
/// labels are the names (every k-th when they would not fit).
#[derive(Debug, Clone)]
struct CategoryAxis(Vec<String>);

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
        let step = n.div_ceil(hint.max_num_points().max(1)).max(1);
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

/// `stem` + `.png` and `stem` + `.svg` (appended, so a stem with dots keeps them).
pub fn output_paths(stem: &Path) -> (PathBuf, PathBuf) {
    let with = |ext: &str| {
        let mut s = stem.as_os_str().to_owned();
        s.push(ext);
        PathBuf::from(s)
    };
    (with(".png"), with(".svg"))
}

/// Something drawable on any backend, so one description gives both files.
trait Figure {
    fn render<DB: DrawingBackend>(&self, root: DrawingArea<DB, Shift>) -> std::result::Result<(), String>;
}

struct Lines<'a>(&'a LineChart, &'a [Series]);
impl Figure for Lines<'_> {
    fn render<DB: DrawingBackend>(&self, root: DrawingArea<DB, Shift>) -> std::result::Result<(), String> {
        self.0.render(root, self.1)
    }
}

struct Bars<'a>(&'a BarChart, &'a [String], &'a [BarSeries]);
impl Figure for Bars<'_> {
    fn render<DB: DrawingBackend>(&self, root: DrawingArea<DB, Shift>) -> std::result::Result<(), String> {
        self.0.render(root, self.1, self.2)
    }
}

/// Renders the same figure to PNG and SVG.
fn write_both(stem: &Path, size: (u32, u32), fig: &impl Figure) -> Result<(PathBuf, PathBuf)> {
    register_font()?;
    let (png, svg) = output_paths(stem);
    if let Some(dir) = png.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    }
    let fail =
        |p: &Path, msg: String| Error::Io { path: p.to_path_buf(), source: std::io::Error::other(format!("drawing the plot: {msg}")) };
    fig.render(BitMapBackend::new(&png, size).into_drawing_area()).map_err(|m| fail(&png, m))?;
    fig.render(SVGBackend::new(&svg, size).into_drawing_area()).map_err(|m| fail(&svg, m))?;
    Ok((png, svg))
}

fn s<E: std::fmt::Display>(e: E) -> String {
    e.to_string()
}

type Chart<'a, DB, X> = ChartContext<'a, DB, Cartesian2d<X, plotters::coord::types::RangedCoordf64>>;

fn configure_mesh<DB: DrawingBackend, X: Ranged<ValueType = f64> + ValueFormatter<f64>>(
    chart: &mut Chart<'_, DB, X>,
    x_label: &str,
    y_label: &str,
    categorical: bool,
) -> std::result::Result<(), String> {
    let (xr, yr) = (chart.x_range(), chart.y_range());
    let (xspan, yspan) = (xr.end - xr.start, yr.end - yr.start);
    let xfmt = move |v: &f64| tick_label(*v, xspan);
    let yfmt = move |v: &f64| tick_label(*v, yspan);
    let mut mesh = chart.configure_mesh();
    mesh.x_desc(x_label)
        .y_desc(y_label)
        .label_style((FONT, 14))
        .axis_desc_style((FONT, 16))
        .y_label_formatter(&yfmt)
        .max_light_lines(4)
        .bold_line_style(RGBColor(215, 215, 215))
        .light_line_style(RGBColor(242, 242, 242));
    if categorical {
        mesh.disable_x_mesh();
    } else {
        mesh.x_label_formatter(&xfmt);
    }
    mesh.draw().map_err(s)
}

/// A tick value with as many decimals as an axis spanning `span` needs (ticks are about span / 10
/// apart, at most 3 more digits), trailing zeros trimmed: 20 not 20.0, 0.3 not 0.30000000000000004.
fn tick_label(v: f64, span: f64) -> String {
    let step = (span / 10.0).abs();
    let d = if step > 0.0 && step.is_finite() { (-step.log10().floor()).max(0.0) as usize + 3 } else { 3 };
    let mut t = format!("{v:.d$}");
    if t.contains('.') {
        t = t.trim_end_matches('0').trim_end_matches('.').to_string();
    }
    if t == "-0" {
        t = "0".into();
    }
    t
}

fn draw_legend<'a, DB: DrawingBackend + 'a, X: Ranged<ValueType = f64>>(
    chart: &mut Chart<'a, DB, X>,
    pos: SeriesLabelPosition,
) -> std::result::Result<(), String> {
    chart
        .configure_series_labels()
        .position(pos)
        .margin(12)
        .label_font((FONT, 15))
        .background_style(WHITE.mix(0.85))
        .border_style(RGBColor(160, 160, 160))
        .draw()
        .map_err(s)
}

/// The corner whose quarter of the plot holds the fewest points (the legend covers least there).
fn legend_corner(points: &[(f64, f64)], xr: (f64, f64), yr: (f64, f64)) -> SeriesLabelPosition {
    let (w, h) = ((xr.1 - xr.0).max(f64::MIN_POSITIVE), (yr.1 - yr.0).max(f64::MIN_POSITIVE));
    let mut count = [0usize; 4]; // UR, UL, LR, LL
    for &(x, y) in points.iter().filter(|p| p.0.is_finite() && p.1.is_finite()) {
        let (u, v) = ((x - xr.0) / w, (y - yr.0) / h);
        let right = u > 0.55;
        let left = u < 0.45;
        let top = v > 0.6;
        let bottom = v < 0.4;
        if top && right {
            count[0] += 1;
        }
        if top && left {
            count[1] += 1;
        }
        if bottom && right {
            count[2] += 1;
        }
        if bottom && left {
            count[3] += 1;
        }
    }
    match (0..4).min_by_key(|&i| count[i]) {
        Some(1) => SeriesLabelPosition::UpperLeft,
        Some(2) => SeriesLabelPosition::LowerRight,
        Some(3) => SeriesLabelPosition::LowerLeft,
        _ => SeriesLabelPosition::UpperRight,
    }
}

/// Runs of consecutive finite points.
fn segments(points: &[(f64, f64)]) -> Vec<Vec<(f64, f64)>> {
    let mut out = vec![];
    let mut cur = vec![];
    for &p in points {
        if p.0.is_finite() && p.1.is_finite() {
            cur.push(p);
        } else if !cur.is_empty() {
            out.push(std::mem::take(&mut cur));
        }
    }
    if !cur.is_empty() {
        out.push(cur);
    }
    out
}

/// [min, max] of the finite values with a 5% margin; `with_zero` extends it to include 0. An empty
/// input gives [0, 1]; a single value v gives v ± max(|v| / 10, 0.5).
pub fn fit_range(values: impl IntoIterator<Item = f64>, with_zero: bool) -> (f64, f64) {
    let (mut lo, mut hi) = (f64::INFINITY, f64::NEG_INFINITY);
    for v in values.into_iter().filter(|v| v.is_finite()) {
        lo = lo.min(v);
        hi = hi.max(v);
    }
    if with_zero {
        lo = lo.min(0.0);
        hi = hi.max(0.0);
    }
    if !lo.is_finite() {
        return (0.0, 1.0);
    }
    if hi - lo <= f64::EPSILON * lo.abs().max(1.0) {
        let d = (lo.abs() / 10.0).max(0.5);
        return (lo - d, hi + d);
    }
    let m = (hi - lo) * 0.05;
    let lo = if with_zero && lo == 0.0 { 0.0 } else { lo - m };
    let hi = if with_zero && hi == 0.0 { 0.0 } else { hi + m };
    (lo, hi)
}

#[cfg(test)]
mod tests {
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

    #[test]
    fn legend_avoids_the_crowded_corner() {
        // Points crowd the upper right: the legend goes elsewhere.
        let pts = [(0.9, 0.9), (0.95, 0.8), (0.8, 0.95)];
        let pos = legend_corner(&pts, (0.0, 1.0), (0.0, 1.0));
        assert!(!matches!(pos, SeriesLabelPosition::UpperRight));
    }

    #[test]
    fn writes_png_and_svg() {
        let d = tempfile::tempdir().unwrap();
        let a = Series::mean_ci("a", &[(0.0, 0.1, 0.05), (1.0, 0.4, 0.1), (2.0, 0.5, 0.1)]);
        let b = Series::new("b", vec![(0.0, 0.3), (1.0, f64::NAN), (2.0, 0.2)]).with_error_bars(vec![(0.0, 0.2, 0.4)]);
        let (png, svg) = line_chart(&d.path().join("sub/x"), "t", "x", "y", &[a, b]).unwrap();
        assert!(std::fs::read(&png).unwrap().starts_with(b"\x89PNG"));
        assert!(std::fs::read_to_string(&svg).unwrap().contains("<svg"));
        let cats = vec!["c1".to_string(), "c2".to_string()];
        let bars = BarSeries::new("m", vec![1.0, -0.5]).with_intervals(vec![(0.8, 1.2), (-0.7, -0.3)]);
        bar_chart(&d.path().join("bars"), "t", "y", &cats, std::slice::from_ref(&bars)).unwrap();
        let bad = BarSeries::new("m", vec![1.0]);
        assert!(bar_chart(&d.path().join("bad"), "t", "y", &cats, &[bad]).unwrap_err().to_string().contains("1 values"));
    }

    /// Writes sample figures to `$R2M_PLOT_DEMO` (a folder) for a look:
    /// `R2M_PLOT_DEMO=/tmp/plots cargo test --lib report::plot -- --ignored`.
    #[test]
    #[ignore]
    fn demo_figures() {
        let dir = PathBuf::from(std::env::var("R2M_PLOT_DEMO").expect("set R2M_PLOT_DEMO"));
        let steps: Vec<f64> = (0..=20).map(|i| i as f64 * 10.0).collect();
        let gold: Vec<(f64, f64, f64)> =
            steps.iter().map(|&t| (t, (t / 60.0).tanh() - (t / 200.0).powi(2) * 0.6, 0.05 + t / 4000.0)).collect();
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
        p.draw(&dir.join("points"), &cats, &[a, b]).unwrap();
    }
}
