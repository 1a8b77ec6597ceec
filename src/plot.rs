//! SVG charts for the reports: line charts (a run's loss and learning rate per step, its dev
//! metric per epoch) and grouped bar charts with error bars (`qpeft glue`'s rows × tasks). Drawn
//! with `plotters`' SVG backend, which writes text as `<text>` for the viewer to render: no fonts
//! or system libraries are needed. Each series is one `<polyline>` (lines) or one set of
//! `<rect>`s (bars) in one colour of [`PALETTE`], and appears once in the legend, a column of its
//! own right of the plot; a bar chart's reference level (the majority class) is a dashed line in
//! [`REFERENCE`] across each group, with a legend entry of its own.

use std::path::Path;

use plotters::coord::Shift;
use plotters::element::DashedPathElement;
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};

use crate::error::{Error, Result};
use crate::files::replace_file;

/// Series colours, in order (Tableau 10: distinct in print and for common colour blindness).
pub const PALETTE: [RGBColor; 10] = [
    RGBColor(31, 119, 180),
    RGBColor(255, 127, 14),
    RGBColor(44, 160, 44),
    RGBColor(214, 39, 40),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
    RGBColor(227, 119, 194),
    RGBColor(127, 127, 127),
    RGBColor(188, 189, 34),
    RGBColor(23, 190, 207),
];

/// The error bars' colour (the axes are black).
pub const WHISKER: RGBColor = RGBColor(64, 64, 64);

/// A bar chart's reference level's colour, drawn dashed.
pub const REFERENCE: RGBColor = RGBColor(0, 0, 0);

const SIZE: (u32, u32) = (880, 480);

fn colour(i: usize) -> RGBColor {
    PALETTE[i % PALETTE.len()]
}

/// One line: its legend name and its (x, y) points, in x order.
#[derive(Debug, Clone, PartialEq)]
pub struct Series {
    pub name: String,
    pub points: Vec<(f64, f64)>,
}

/// A line chart; `secondary` series are drawn against a right-hand axis of their own (a
/// learning rate beside a loss).
#[derive(Debug, Clone, PartialEq)]
pub struct LineChart {
    pub title: String,
    pub x_label: String,
    pub y_label: String,
    pub series: Vec<Series>,
    pub secondary: Option<(String, Vec<Series>)>,
}

/// Bars of one series (a row of `qpeft glue`), one entry per group: the height and, when there
/// are several seeds, the half-length of its error bar; `None` where the series has no value.
#[derive(Debug, Clone, PartialEq)]
pub struct BarSeries {
    pub name: String,
    pub values: Vec<Option<(f64, Option<f64>)>>,
}

/// A level to read the bars against (a task's majority-class score): its legend name and, per
/// group, the level (`None`: the group has none), drawn as a dashed line across the group's bars.
#[derive(Debug, Clone, PartialEq)]
pub struct Reference {
    pub name: String,
    pub levels: Vec<Option<f64>>,
}

/// Grouped bars: for each group (a task), one bar per series.
#[derive(Debug, Clone, PartialEq)]
pub struct BarChart {
    pub title: String,
    pub y_label: String,
    pub groups: Vec<String>,
    pub series: Vec<BarSeries>,
    pub reference: Option<Reference>,
}

fn plot_error(title: &str, e: impl std::fmt::Display) -> Error {
    Error::Plot(format!("drawing '{title}': {e}"))
}

/// The range of `values`, widened by 5% each side (and to a unit interval when flat or empty).
fn padded_range(values: impl Iterator<Item = f64>) -> (f64, f64) {
    let (lo, hi) = values
        .filter(|v| v.is_finite())
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), v| {
            (lo.min(v), hi.max(v))
        });
    if lo > hi {
        return (0.0, 1.0);
    }
    let pad = if hi > lo { 0.05 * (hi - lo) } else { 0.5 };
    (lo - pad, hi + pad)
}

fn finite_points(series: &Series) -> Vec<(f64, f64)> {
    series
        .points
        .iter()
        .copied()
        .filter(|(x, y)| x.is_finite() && y.is_finite())
        .collect()
}

/// A chart of per-module errors (`qpeft init`, `qpeft quantize`): one line per named list of
/// values, the modules numbered 1.. in the report's order along x.
pub fn per_module_chart(title: String, y_label: &str, series: Vec<(&str, Vec<f64>)>) -> LineChart {
    LineChart {
        title,
        x_label: "module (the report's order)".into(),
        y_label: y_label.into(),
        series: series
            .into_iter()
            .map(|(name, values)| Series {
                name: name.into(),
                points: values
                    .into_iter()
                    .enumerate()
                    .map(|(i, v)| ((i + 1) as f64, v))
                    .collect(),
            })
            .collect(),
        secondary: None,
    }
}

/// The per-module error chart of `qpeft init` and `qpeft quantize`, beside their report.json.
pub const ERRORS_CHART: &str = "errors.svg";

/// The chart as an SVG document.
pub fn line_chart_svg(chart: &LineChart) -> Result<String> {
    render(&chart.title, |root| draw_line_chart(root, chart))
}

/// What `draw` puts on a blank SVG canvas, as a document.
fn render(
    title: &str,
    draw: impl FnOnce(&DrawingArea<SVGBackend<'_>, Shift>) -> DrawResult,
) -> Result<String> {
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, SIZE).into_drawing_area();
        draw(&root).map_err(|e| plot_error(title, e))?;
        root.present().map_err(|e| plot_error(title, e))?;
    }
    Ok(svg)
}

type DrawResult = std::result::Result<(), Box<dyn std::error::Error>>;

fn draw_line_chart(root: &DrawingArea<SVGBackend<'_>, Shift>, chart: &LineChart) -> DrawResult {
    root.fill(&WHITE)?;
    let secondary = chart.secondary.as_ref();
    let all = || {
        chart
            .series
            .iter()
            .chain(secondary.into_iter().flat_map(|s| &s.1))
    };
    let (x0, x1) = padded_range(all().flat_map(|s| s.points.iter().map(|p| p.0)));
    let (y0, y1) = padded_range(
        chart
            .series
            .iter()
            .flat_map(|s| s.points.iter().map(|p| p.1)),
    );
    let legend = Legend {
        entries: all()
            .enumerate()
            .map(|(i, s)| (s.name.as_str(), colour(i), Swatch::Line))
            .collect(),
    };
    let mut builder = ChartBuilder::on(root);
    builder
        .caption(&chart.title, ("sans-serif", 20))
        .margin(14)
        .margin_right(14 + legend.width())
        .x_label_area_size(44)
        .y_label_area_size(70);
    if secondary.is_some() {
        builder.right_y_label_area_size(80);
    }
    let mut ctx = builder
        .build_cartesian_2d(x0..x1, y0..y1)?
        .set_secondary_coord(x0..x1, {
            let (s0, s1) = padded_range(
                secondary
                    .into_iter()
                    .flat_map(|s| &s.1)
                    .flat_map(|s| s.points.iter().map(|p| p.1)),
            );
            s0..s1
        });
    // Epochs and module numbers are whole: one tick at each, while they fit.
    let whole = all().flat_map(|s| &s.points).all(|p| p.0.fract() == 0.0);
    let span = (x1 - x0).round() as usize;
    let mut mesh = ctx.configure_mesh();
    mesh.x_desc(chart.x_label.as_str())
        .y_desc(chart.y_label.as_str())
        .light_line_style(WHITE);
    let whole_ticks = |x: &f64| match x.fract().abs() < 1e-9 {
        true => format!("{x:.0}"),
        false => String::new(),
    };
    if whole && span <= 40 {
        mesh.x_labels(span + 1).x_label_formatter(&whole_ticks);
    }
    mesh.draw()?;
    for (i, series) in chart.series.iter().enumerate() {
        let c = colour(i);
        ctx.draw_series(LineSeries::new(finite_points(series), c.stroke_width(2)))?;
    }
    if let Some((label, series)) = secondary {
        ctx.configure_secondary_axes()
            .y_desc(label.as_str())
            .y_label_formatter(&|v| format!("{v:.1e}"))
            .draw()?;
        for (j, series) in series.iter().enumerate() {
            let c = colour(chart.series.len() + j);
            ctx.draw_secondary_series(LineSeries::new(finite_points(series), c.stroke_width(2)))?;
        }
    }
    legend.draw(root)
}

/// How a legend entry shows its series.
#[derive(Clone, Copy)]
enum Swatch {
    Line,
    Dashed,
    Bar,
}

/// A dashed line's dash and gap, in pixels.
const DASH: i32 = 5;

/// The series' names and colours, boxed in a column of their own right of the chart (and of a
/// right-hand axis), so that the legend never covers a bar or a line.
struct Legend<'a> {
    entries: Vec<(&'a str, RGBColor, Swatch)>,
}

impl Legend<'_> {
    const ROW: i32 = 18;
    const TOP: i32 = 40;

    /// The column's width: a 20 px sample, padding, and the longest name at 12 px sans-serif
    /// counted at 7 px a character (an upper estimate: the viewer picks the font).
    fn width(&self) -> u32 {
        let longest = self.entries.iter().map(|(n, ..)| n.chars().count()).max();
        50 + 7 * longest.unwrap_or(0) as u32
    }

    /// Draws the column against the canvas's right edge.
    fn draw(&self, root: &DrawingArea<SVGBackend<'_>, Shift>) -> DrawResult {
        let left = (root.dim_in_pixel().0 - self.width()) as i32;
        let right = root.dim_in_pixel().0 as i32 - 4;
        let bottom = Self::TOP + 8 + Self::ROW * self.entries.len() as i32;
        let frame = [(left, Self::TOP), (right, bottom)];
        root.draw(&Rectangle::new(frame, WHITE.mix(0.85).filled()))?;
        root.draw(&Rectangle::new(frame, BLACK))?;
        let font = TextStyle::from(("sans-serif", 12)).pos(Pos::new(HPos::Left, VPos::Center));
        for (i, &(name, c, swatch)) in self.entries.iter().enumerate() {
            let y = Self::TOP + 4 + Self::ROW * i as i32 + Self::ROW / 2;
            match swatch {
                Swatch::Line => root.draw(&PathElement::new(
                    vec![(left + 8, y), (left + 28, y)],
                    c.stroke_width(2),
                ))?,
                Swatch::Dashed => root.draw(&DashedPathElement::new(
                    vec![(left + 8, y), (left + 28, y)],
                    DASH,
                    DASH,
                    c.stroke_width(2),
                ))?,
                Swatch::Bar => root.draw(&Rectangle::new(
                    [(left + 11, y - 5), (left + 25, y + 5)],
                    c.filled(),
                ))?,
            }
            root.draw(&Text::new(name, (left + 36, y), &font))?;
        }
        Ok(())
    }
}

/// The chart as an SVG document.
pub fn bar_chart_svg(chart: &BarChart) -> Result<String> {
    render(&chart.title, |root| draw_bar_chart(root, chart))
}

fn draw_bar_chart(root: &DrawingArea<SVGBackend<'_>, Shift>, chart: &BarChart) -> DrawResult {
    root.fill(&WHITE)?;
    let tops = chart.series.iter().flat_map(|s| {
        s.values
            .iter()
            .flatten()
            .flat_map(|&(v, e)| [v + e.unwrap_or(0.0), v - e.unwrap_or(0.0)])
    });
    let references = chart
        .reference
        .iter()
        .flat_map(|r| r.levels.iter().flatten());
    let (lo, hi) = padded_range(tops.chain(references.copied()).chain([0.0]));
    // Bars stand on 0: no margin below it unless a bar goes below.
    let lo = if lo < 0.0
        && chart
            .series
            .iter()
            .flat_map(|s| s.values.iter().flatten())
            .all(|&(v, e)| v - e.unwrap_or(0.0) >= 0.0)
    {
        0.0
    } else {
        lo
    };
    let n_groups = chart.groups.len().max(1);
    let legend = Legend {
        entries: (chart.series.iter().enumerate())
            .map(|(j, s)| (s.name.as_str(), colour(j), Swatch::Bar))
            .chain((chart.reference.iter()).map(|r| (r.name.as_str(), REFERENCE, Swatch::Dashed)))
            .collect(),
    };
    let mut ctx = ChartBuilder::on(root)
        .caption(&chart.title, ("sans-serif", 20))
        .margin(14)
        .margin_right(14 + legend.width())
        .x_label_area_size(44)
        .y_label_area_size(70)
        .build_cartesian_2d(0.0..n_groups as f64, lo..hi)?;
    let groups = chart.groups.clone();
    ctx.configure_mesh()
        .disable_x_mesh()
        .x_labels(n_groups * 2 + 1)
        .x_label_formatter(&move |x| {
            // Only the groups' centres carry a name.
            let i = x.floor();
            if (x - i - 0.5).abs() < 1e-9 {
                groups.get(i as usize).cloned().unwrap_or_default()
            } else {
                String::new()
            }
        })
        .y_desc(chart.y_label.as_str())
        .light_line_style(WHITE)
        .draw()?;
    let n_series = chart.series.len().max(1);
    let width = 0.8 / n_series as f64;
    // Series j's bar in group g spans [bar_left(g, j), bar_left(g, j) + 0.9 width].
    let bar_left = |g: usize, j: usize| g as f64 + 0.1 + j as f64 * width;
    for (j, series) in chart.series.iter().enumerate() {
        let c = colour(j);
        let bars = series.values.iter().enumerate().filter_map(|(g, v)| {
            let (value, _) = (*v)?;
            let left = bar_left(g, j);
            Some(Rectangle::new(
                [(left, 0.0), (left + 0.9 * width, value)],
                c.filled(),
            ))
        });
        ctx.draw_series(bars)?;
        let whiskers = series.values.iter().enumerate().filter_map(|(g, v)| {
            let (value, Some(error)) = (*v)? else {
                return None;
            };
            let centre = bar_left(g, j) + 0.45 * width;
            let cap = 0.2 * width;
            Some(PathElement::new(
                vec![
                    (centre - cap, value - error),
                    (centre + cap, value - error),
                    (centre, value - error),
                    (centre, value + error),
                    (centre - cap, value + error),
                    (centre + cap, value + error),
                ],
                WHISKER.stroke_width(1),
            ))
        });
        ctx.draw_series(whiskers)?;
    }
    // Over the bars, from the group's first bar's left edge to its last bar's right edge.
    if let Some(reference) = &chart.reference {
        let lines = reference
            .levels
            .iter()
            .enumerate()
            .filter_map(|(g, level)| {
                let (level, right) = ((*level)?, bar_left(g, n_series - 1) + 0.9 * width);
                Some(DashedPathElement::new(
                    vec![(bar_left(g, 0), level), (right, level)],
                    DASH,
                    DASH,
                    REFERENCE.stroke_width(2),
                ))
            });
        ctx.draw_series(lines)?;
    }
    legend.draw(root)
}

/// Writes `svg` to `path`, whole or not at all.
pub fn write_svg(path: &Path, svg: &str) -> Result<()> {
    replace_file(path, svg.as_bytes())
}
