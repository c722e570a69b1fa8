//! Figures as PNG and SVG from one description, over `plotters`.
//!
//! Two kinds: [`LineChart`] (named series of (x, y) points, each with optional thin per-seed lines
//! and a mean ± CI band, shaded or as error bars; one panel, or a column of panels that share
//! their axes: small multiples) and [`BarChart`] (one value per category per series, as grouped
//! or stacked bars or dodged points, upright or lying, with optional intervals). Both write
//! `stem.png` and `stem.svg`, with the legend beside the data, never over it.
//!
//! Text uses DejaVu Sans embedded in the binary (`assets/DejaVuSans.ttf`, registered with
//! plotters' `ab_glyph` feature): no system fonts, no fontconfig. The SVG names the family
//! `sans-serif`, so a viewer draws it with its own sans font (layout was measured with DejaVu Sans).
//!
//! Non-finite values are left out (a line skips them; a NaN bar is not drawn), so a metric that is
//! missing at some steps still plots. Colours come from the Okabe-Ito palette (readable by
//! colour-blind readers): a series keeps a colour it names, the others take the palette's colours
//! that no series of their panel has yet ([`assign_colors`]), so up to 7 series per panel differ.
use crate::error::{Error, Result};
use plotters::coord::ranged1d::ValueFormatter;
use plotters::coord::Shift;
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};
use std::path::{Path, PathBuf};

mod bar;
mod line;

pub use bar::{bar_chart, BarChart, BarSeries, BarStyle};
pub use line::{line_chart, LineChart, Panel};

/// One line: `points` (x, y) in drawing order, drawn bold; `seeds`, thin lines of the same colour
/// under it (the runs it is the mean of); `band`, when given, (x, lo, hi) per x, e.g. a 95% CI
/// around a mean, shaded under the line (clipped to the axes), or drawn as error bars when
/// `error_bars`.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Series {
    pub name: String,
    pub points: Vec<(f64, f64)>,
    pub band: Option<Vec<(f64, f64, f64)>>,
    /// Draw `band` as error bars at each x instead of a shaded area.
    pub error_bars: bool,
    /// Thin lines under the bold one, e.g. each seed of a mean.
    pub seeds: Vec<Vec<(f64, f64)>>,
    /// A fixed colour (e.g. the baseline's, the same in every panel); `None`: from the palette.
    pub color: Option<RGBColor>,
}

impl Series {
    pub fn new(name: impl Into<String>, points: Vec<(f64, f64)>) -> Self {
        Series { name: name.into(), points, ..Default::default() }
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
    /// With thin lines under the bold one.
    pub fn with_seeds(mut self, seeds: Vec<Vec<(f64, f64)>>) -> Self {
        self.seeds = seeds;
        self
    }
    /// In a fixed colour.
    pub fn with_color(mut self, c: RGBColor) -> Self {
        self.color = Some(c);
        self
    }
    /// From (x, mean, half-width) triples: the line at the mean and the band mean ± half-width.
    pub fn mean_ci(name: impl Into<String>, rows: &[(f64, f64, f64)]) -> Self {
        let points = rows.iter().map(|&(x, m, _)| (x, m)).collect();
        let band = rows.iter().map(|&(x, m, h)| (x, m - h, m + h)).collect();
        Series::new(name, points).with_band(band)
    }
}

/// The Okabe-Ito colours by name.
pub mod okabe_ito {
    use plotters::style::RGBColor;
    pub const BLACK: RGBColor = RGBColor(0, 0, 0);
    pub const ORANGE: RGBColor = RGBColor(230, 159, 0);
    pub const SKY_BLUE: RGBColor = RGBColor(86, 180, 233);
    pub const BLUISH_GREEN: RGBColor = RGBColor(0, 158, 115);
    pub const YELLOW: RGBColor = RGBColor(240, 228, 66);
    pub const BLUE: RGBColor = RGBColor(0, 114, 178);
    pub const VERMILLION: RGBColor = RGBColor(213, 94, 0);
    pub const REDDISH_PURPLE: RGBColor = RGBColor(204, 121, 167);
}

/// Okabe-Ito colours, in the order series get them (yellow last: faint on white).
pub const PALETTE: [RGBColor; 8] = [
    okabe_ito::BLUE,
    okabe_ito::VERMILLION,
    okabe_ito::BLUISH_GREEN,
    okabe_ito::ORANGE,
    okabe_ito::REDDISH_PURPLE,
    okabe_ito::SKY_BLUE,
    okabe_ito::BLACK,
    okabe_ito::YELLOW,
];

/// The colour of series `i` when nothing else decides.
pub fn color(i: usize) -> RGBColor {
    PALETTE[i % PALETTE.len()]
}

/// The colours of one panel's series: a fixed colour where given, else the next palette colour no
/// series of the panel has (yellow only when the other seven are taken; then colours repeat).
pub fn assign_colors(fixed: &[Option<RGBColor>]) -> Vec<RGBColor> {
    let mut taken: Vec<RGBColor> = fixed.iter().flatten().copied().collect();
    let mut next = 0;
    fixed
        .iter()
        .map(|f| {
            if let Some(c) = f {
                return *c;
            }
            let free = PALETTE.iter().find(|c| !taken.contains(c)).copied();
            let c = free.unwrap_or_else(|| {
                next += 1;
                color(next - 1)
            });
            taken.push(c);
            c
        })
        .collect()
}

pub(crate) const FONT: &str = "sans-serif";
static DEJAVU_SANS: &[u8] = include_bytes!("../../../assets/DejaVuSans.ttf");
pub(crate) const GREY: RGBColor = RGBColor(90, 90, 90);

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

/// The figure's title (and a grey note under it); returns the area below them.
fn heading<DB: DrawingBackend>(
    root: &DrawingArea<DB, Shift>,
    title: &str,
    note: Option<&str>,
) -> std::result::Result<DrawingArea<DB, Shift>, String> {
    let mut area = root.clone();
    if !title.is_empty() {
        area = area.titled(title, (FONT, 22)).map_err(s)?;
    }
    if let Some(n) = note.filter(|n| !n.is_empty()) {
        let (w, _) = area.dim_in_pixel();
        let style = TextStyle::from((FONT, 14)).color(&GREY).pos(Pos::new(HPos::Center, VPos::Top));
        area.draw_text(n, &style, (w as i32 / 2, 2)).map_err(s)?;
        area = area.split_vertically(24).1;
    }
    Ok(area)
}

/// How a legend entry marks its series.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Mark {
    /// A line of that width.
    Line(RGBColor, u32),
    /// A filled square.
    Box(RGBColor),
    /// A dot.
    Dot(RGBColor),
}

/// The width a legend of these names needs beside the data (mark, gap, text, margins).
fn legend_width<DB: DrawingBackend>(area: &DrawingArea<DB, Shift>, names: &[&str]) -> u32 {
    let style = TextStyle::from((FONT, 14));
    let text = names.iter().map(|n| area.estimate_text_size(n, &style).map(|d| d.0).unwrap_or(8 * n.len() as u32)).max().unwrap_or(0);
    (text + 60).clamp(110, 340)
}

/// A legend in its own area (beside the chart): one entry a row from the top, mark then name.
fn draw_legend<DB: DrawingBackend>(area: &DrawingArea<DB, Shift>, entries: &[(Mark, String)], top: i32) -> std::result::Result<(), String> {
    let style = TextStyle::from((FONT, 14)).pos(Pos::new(HPos::Left, VPos::Center));
    for (i, (mark, name)) in entries.iter().enumerate() {
        let y = top + 10 + 22 * i as i32;
        let (x0, x1) = (8, 34);
        match *mark {
            Mark::Line(c, w) => area.draw(&PathElement::new(vec![(x0, y), (x1, y)], c.stroke_width(w))).map_err(s)?,
            Mark::Box(c) => area.draw(&Rectangle::new([(x0 + 6, y - 7), (x1 - 6, y + 7)], c.filled())).map_err(s)?,
            Mark::Dot(c) => area.draw(&Circle::new(((x0 + x1) / 2, y), 5, c.filled())).map_err(s)?,
        }
        area.draw_text(name, &style, (x1 + 8, y)).map_err(s)?;
    }
    Ok(())
}

type Chart<'a, DB, X, Y> = ChartContext<'a, DB, Cartesian2d<X, Y>>;

/// Which axis of a chart holds categories (its ticks are their names, with no grid lines across).
#[derive(Debug, Clone, Copy, PartialEq)]
enum Categories {
    None,
    X,
    Y,
}

/// Axis labels, tick labels and grid lines.
fn configure_mesh<DB, X, Y>(
    chart: &mut Chart<'_, DB, X, Y>,
    x_label: &str,
    y_label: &str,
    cat: Categories,
) -> std::result::Result<(), String>
where
    DB: DrawingBackend,
    X: Ranged<ValueType = f64> + ValueFormatter<f64>,
    Y: Ranged<ValueType = f64> + ValueFormatter<f64>,
{
    let (xr, yr) = (chart.x_range(), chart.y_range());
    let (xspan, yspan) = (xr.end - xr.start, yr.end - yr.start);
    let xfmt = move |v: &f64| tick_label(*v, xspan);
    let yfmt = move |v: &f64| tick_label(*v, yspan);
    let mut mesh = chart.configure_mesh();
    mesh.x_desc(x_label)
        .y_desc(y_label)
        .label_style((FONT, 14))
        .axis_desc_style((FONT, 16))
        .max_light_lines(4)
        .bold_line_style(RGBColor(215, 215, 215))
        .light_line_style(RGBColor(242, 242, 242));
    if cat == Categories::X {
        mesh.disable_x_mesh();
    } else {
        mesh.x_label_formatter(&xfmt);
    }
    if cat == Categories::Y {
        mesh.disable_y_mesh();
    } else {
        mesh.y_label_formatter(&yfmt);
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

/// The y range of line series: fitted to the lines drawn (means and seeds) and `extra` values
/// (reference lines), not to bands or error bars, which are clipped to it instead: a wide CI must
/// not flatten the lines it surrounds.
pub fn fit_lines_y(series: &[Series], extra: &[f64]) -> (f64, f64) {
    let ys = series.iter().flat_map(|s| s.points.iter().chain(s.seeds.iter().flatten()).map(|p| p.1));
    fit_range(ys.chain(extra.iter().copied()), false)
}

/// A band (x, lo, hi) with lo and hi clamped into `yr` (the points outside the axes drawn at its edge).
fn clip_band(band: &[(f64, f64, f64)], yr: (f64, f64)) -> Vec<(f64, f64, f64)> {
    band.iter()
        .filter(|b| b.0.is_finite() && b.1.is_finite() && b.2.is_finite())
        .map(|&(x, lo, hi)| (x, lo.clamp(yr.0, yr.1), hi.clamp(yr.0, yr.1)))
        .collect()
}

#[cfg(test)]
mod tests;
