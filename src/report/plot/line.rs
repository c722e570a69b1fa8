//! Line charts: one panel, or a column of panels sharing their axes (small multiples), each with
//! its legend to its right.
use super::{
    assign_colors, clip_band, configure_mesh, draw_legend, fit_lines_y, fit_range, heading, legend_width, s, segments, write_both,
    Categories, Figure, Mark, Series, FONT,
};
use crate::error::{Error, Result};
use plotters::coord::Shift;
use plotters::prelude::*;
use std::path::{Path, PathBuf};

/// One panel of a [`LineChart`]: its own title (may be empty) and series.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Panel {
    pub title: String,
    pub series: Vec<Series>,
}

impl Panel {
    pub fn new(title: impl Into<String>, series: Vec<Series>) -> Self {
        Panel { title: title.into(), series }
    }
}

/// A line chart's labels and layout. `Default`: one panel of 900 x 560 px (more panels: 330 px
/// each), ranges fitted to the lines (5% margin; bands are clipped to them), markers when every
/// series has at most 40 points.
#[derive(Debug, Clone, PartialEq)]
pub struct LineChart {
    pub title: String,
    /// A line under the title, in grey (how to read the figure).
    pub note: Option<String>,
    pub x_label: String,
    pub y_label: String,
    /// Fixed axis ranges; `None` fits the lines (see [`super::fit_lines_y`]).
    pub x_range: Option<(f64, f64)>,
    pub y_range: Option<(f64, f64)>,
    /// Width, height in pixels (SVG units alike) of a figure of one panel.
    pub size: (u32, u32),
    /// Height of each panel of a figure of several.
    pub panel_height: u32,
    /// Draw a dot at every point; `None`: when every series has at most 40 points.
    pub markers: Option<bool>,
    /// Horizontal reference lines (e.g. y = 0), drawn dashed grey.
    pub hlines: Vec<f64>,
}

impl Default for LineChart {
    fn default() -> Self {
        LineChart {
            title: String::new(),
            note: None,
            x_label: String::new(),
            y_label: String::new(),
            x_range: None,
            y_range: None,
            size: (900, 560),
            panel_height: 330,
            markers: None,
            hlines: vec![],
        }
    }
}

impl LineChart {
    pub fn new(title: impl Into<String>, x_label: impl Into<String>, y_label: impl Into<String>) -> Self {
        LineChart { title: title.into(), x_label: x_label.into(), y_label: y_label.into(), ..Default::default() }
    }

    /// Draws `series` in one panel to `stem.png` and `stem.svg` (parent folders created); returns
    /// both paths.
    pub fn draw(&self, stem: &Path, series: &[Series]) -> Result<(PathBuf, PathBuf)> {
        self.draw_panels(stem, &[Panel::new("", series.to_vec())])
    }

    /// Draws the panels one under the other, on shared axes.
    pub fn draw_panels(&self, stem: &Path, panels: &[Panel]) -> Result<(PathBuf, PathBuf)> {
        for s in panels.iter().flat_map(|p| &p.series) {
            if let Some(b) = &s.band {
                if b.iter().any(|&(_, lo, hi)| lo > hi) {
                    return Err(Error::Input(format!("plot '{}': series '{}' has a band with lo > hi", self.title, s.name)));
                }
            }
        }
        let size = if panels.len() <= 1 {
            self.size
        } else {
            let head = if self.title.is_empty() { 0 } else { 40 } + if self.note.is_some() { 24 } else { 0 };
            (self.size.0, head + self.panel_height * panels.len() as u32)
        };
        write_both(stem, size, &Lines(self, panels))
    }

    /// The axes' ranges: given, or fitted to every panel's lines.
    fn ranges(&self, panels: &[Panel]) -> ((f64, f64), (f64, f64)) {
        let all: Vec<Series> = panels.iter().flat_map(|p| p.series.iter().cloned()).collect();
        let xs = all
            .iter()
            .flat_map(|s| s.points.iter().chain(s.seeds.iter().flatten()).map(|p| p.0).chain(s.band.iter().flatten().map(|b| b.0)));
        let xr = self.x_range.unwrap_or_else(|| fit_range(xs, false));
        let yr = self.y_range.unwrap_or_else(|| fit_lines_y(&all, &self.hlines));
        (xr, yr)
    }

    fn render<DB: DrawingBackend>(&self, root: DrawingArea<DB, Shift>, panels: &[Panel]) -> std::result::Result<(), String> {
        root.fill(&WHITE).map_err(s)?;
        let area = heading(&root, &self.title, self.note.as_deref())?;
        let (xr, yr) = self.ranges(panels);
        let names: Vec<&str> = panels.iter().flat_map(|p| p.series.iter().map(|s| s.name.as_str())).filter(|n| !n.is_empty()).collect();
        let lw = if names.is_empty() { 0 } else { legend_width(&area, &names) };
        let markers = self.markers.unwrap_or_else(|| panels.iter().flat_map(|p| &p.series).all(|s| s.points.len() <= 40));
        for (panel, row) in panels.iter().zip(area.split_evenly((panels.len().max(1), 1))) {
            let (w, _) = row.dim_in_pixel();
            let (plot, legend) = row.split_horizontally(w.saturating_sub(lw));
            let colors = assign_colors(&panel.series.iter().map(|s| s.color).collect::<Vec<_>>());
            let mut builder = ChartBuilder::on(&plot);
            if !panel.title.is_empty() {
                builder.caption(&panel.title, (FONT, 17));
            }
            let mut chart =
                builder.margin(12).x_label_area_size(46).y_label_area_size(72).build_cartesian_2d(xr.0..xr.1, yr.0..yr.1).map_err(s)?;
            configure_mesh(&mut chart, &self.x_label, &self.y_label, Categories::None)?;
            for &y in &self.hlines {
                let grey = RGBColor(120, 120, 120);
                chart.draw_series(DashedLineSeries::new([(xr.0, y), (xr.1, y)], 6, 4, grey.stroke_width(1))).map_err(s)?;
            }
            // Bands first, then the seeds' thin lines, then the bold lines on top.
            for (se, &c) in panel.series.iter().zip(&colors) {
                if let (Some(band), false) = (&se.band, se.error_bars) {
                    let band = clip_band(band, yr);
                    if band.len() >= 2 {
                        let mut poly: Vec<(f64, f64)> = band.iter().map(|b| (b.0, b.2)).collect();
                        poly.extend(band.iter().rev().map(|b| (b.0, b.1)));
                        // Fainter over seeds' lines, which show the spread too.
                        let alpha = if se.seeds.is_empty() { 0.16 } else { 0.08 };
                        chart.draw_series(std::iter::once(Polygon::new(poly, c.mix(alpha).filled()))).map_err(s)?;
                    }
                }
            }
            for (se, &c) in panel.series.iter().zip(&colors) {
                for seed in &se.seeds {
                    for seg in segments(seed) {
                        chart.draw_series(LineSeries::new(seg, c.mix(0.45).stroke_width(1))).map_err(s)?;
                    }
                }
            }
            // The first series (the reference, in the report) on top.
            for (se, &c) in panel.series.iter().zip(&colors).rev() {
                let width = if se.seeds.is_empty() { 2 } else { 3 };
                // One path per pair of points: the bitmap backend joins the corners of a thick path
                // with miters, which at a sharp turn shoot far past the point.
                for seg in segments(&se.points) {
                    let pairs = seg.windows(2).map(|w| PathElement::new(w.to_vec(), c.stroke_width(width)));
                    chart.draw_series(pairs).map_err(s)?;
                }
                if markers {
                    let pts = se.points.iter().copied().filter(|p| p.0.is_finite() && p.1.is_finite());
                    chart.draw_series(pts.map(|p| Circle::new(p, 3, c.filled()))).map_err(s)?;
                }
                if let (Some(band), true) = (&se.band, se.error_bars) {
                    // Clipped to the axes like a band: a cap only where the bar ends inside them.
                    let (faint, half) = (c.mix(0.55).stroke_width(1), (xr.1 - xr.0) * 0.005);
                    let mut parts = vec![];
                    for (&(x, lo, hi), &(_, clo, chi)) in
                        band.iter().filter(|b| b.0.is_finite() && b.1.is_finite() && b.2.is_finite()).zip(&clip_band(band, yr))
                    {
                        if chi > clo || (clo > yr.0 && clo < yr.1) {
                            parts.push(PathElement::new(vec![(x, clo), (x, chi)], faint));
                            for (end, clipped) in [(clo, lo < yr.0), (chi, hi > yr.1)] {
                                if !clipped {
                                    parts.push(PathElement::new(vec![(x - half, end), (x + half, end)], faint));
                                }
                            }
                        }
                    }
                    chart.draw_series(parts).map_err(s)?;
                }
            }
            let entries: Vec<(Mark, String)> = panel
                .series
                .iter()
                .zip(&colors)
                .filter(|(se, _)| !se.name.is_empty())
                .map(|(se, &c)| (Mark::Line(c, 3), se.name.clone()))
                .collect();
            if lw > 0 {
                draw_legend(&legend, &entries, if panel.title.is_empty() { 12 } else { 40 })?;
            }
        }
        root.present().map_err(s)
    }
}

struct Lines<'a>(&'a LineChart, &'a [Panel]);
impl Figure for Lines<'_> {
    fn render<DB: DrawingBackend>(&self, root: DrawingArea<DB, Shift>) -> std::result::Result<(), String> {
        self.0.render(root, self.1)
    }
}

/// Draws a line chart with default layout: see [`LineChart`].
pub fn line_chart(stem: &Path, title: &str, x_label: &str, y_label: &str, series: &[Series]) -> Result<(PathBuf, PathBuf)> {
    LineChart::new(title, x_label, y_label).draw(stem, series)
}
