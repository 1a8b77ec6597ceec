//! The report charts: well-formed SVG with one line (or one set of bars) per series, in the
//! series' colour, and a legend entry each; a run's charts drawn from its metrics log.

mod common;

use common::{palette_hex as hex, svg_elements_by_colour as by_colour};
use qpeft::plot::{
    BarChart, BarSeries, LineChart, REFERENCE, Reference, Series, WHISKER, bar_chart_svg,
    line_chart_svg,
};

/// The left edge of the legend's frame (its one black-stroked, unfilled rectangle).
fn legend_left(svg: &str) -> f64 {
    let doc = roxmltree::Document::parse(svg).unwrap();
    let frames: Vec<f64> = doc
        .descendants()
        .filter(|n| n.tag_name().name() == "rect")
        .filter(|n| n.attribute("stroke") == Some("#000000") && n.attribute("fill") == Some("none"))
        .map(|n| n.attribute("x").unwrap().parse().unwrap())
        .collect();
    assert_eq!(frames.len(), 1, "one legend frame");
    frames[0]
}

/// The `x`, `y`, `width` and `height` of the rectangles filled with `fill`, in document order.
fn rects(svg: &str, fill: &str) -> Vec<[f64; 4]> {
    let doc = roxmltree::Document::parse(svg).unwrap();
    let attr = |n: &roxmltree::Node, a: &str| -> f64 { n.attribute(a).unwrap().parse().unwrap() };
    doc.descendants()
        .filter(|n| n.tag_name().name() == "rect" && n.attribute("fill") == Some(fill))
        .map(|n| ["x", "y", "width", "height"].map(|a| attr(&n, a)))
        .collect()
}

/// The left and right edges of the rectangles filled with `fill`.
fn rect_spans(svg: &str, fill: &str) -> Vec<(f64, f64)> {
    rects(svg, fill)
        .iter()
        .map(|[x, _, w, _]| (*x, x + w))
        .collect()
}

/// The x coordinates of a polyline's points.
fn xs(points: &str) -> Vec<f64> {
    points
        .split_whitespace()
        .map(|p| p.split(',').next().unwrap().parse().unwrap())
        .collect()
}

fn texts(svg: &str) -> Vec<String> {
    let doc = roxmltree::Document::parse(svg).unwrap();
    doc.descendants()
        .filter(|n| n.tag_name().name() == "text")
        .filter_map(|n| n.text().map(|t| t.trim().to_string()))
        .collect()
}

#[test]
fn line_chart_has_one_polyline_per_series_and_a_legend() {
    let chart = LineChart {
        title: "stsb: training loss and learning rate".into(),
        x_label: "optimizer step".into(),
        y_label: "training loss".into(),
        series: vec![
            Series {
                name: "loss".into(),
                points: (1..=30).map(|s| (s as f64, 4.0 / s as f64)).collect(),
            },
            Series {
                name: "other".into(),
                points: vec![(1.0, 1.0), (15.0, f64::NAN), (30.0, 2.0)],
            },
        ],
        secondary: Some((
            "learning rate".into(),
            vec![Series {
                name: "learning rate".into(),
                points: (1..=30)
                    .map(|s| (s as f64, 3e-4 * (30 - s) as f64 / 30.0))
                    .collect(),
            }],
        )),
    };
    let svg = line_chart_svg(&chart).unwrap();
    if let Ok(dir) = std::env::var("QPEFT_PLOT_DEMO") {
        std::fs::write(format!("{dir}/line.svg"), &svg).unwrap();
    }
    let lines = by_colour(&svg, "polyline", "stroke");
    for (i, expected_points) in [(0, 30), (1, 2), (2, 30)] {
        let found = lines.get(&hex(i)).map(Vec::as_slice).unwrap_or_default();
        // The series' line and its legend sample.
        assert_eq!(found.len(), 2, "series {i}: {found:?}");
        let longest = found.iter().map(|p| p.split_whitespace().count()).max();
        assert_eq!(
            longest,
            Some(expected_points),
            "series {i}: NaN points are left out"
        );
    }
    // The legend stands beside the plot: each series' line left of its frame, its sample inside.
    let legend = legend_left(&svg);
    for i in 0..3 {
        let (inside, beside): (Vec<_>, Vec<_>) = lines[&hex(i)]
            .iter()
            .map(|p| xs(p))
            .partition(|x| x.iter().all(|&x| x > legend));
        assert_eq!((inside.len(), beside.len()), (1, 1), "series {i}");
        assert!(beside[0].iter().all(|&x| x < legend), "series {i}");
    }
    // Besides the series, only the black axes.
    assert_eq!(lines.len(), 4, "colours: {:?}", lines.keys());
    assert!(lines.contains_key("#000000"));
    let texts = texts(&svg);
    for label in [
        "loss",
        "other",
        "learning rate",
        "optimizer step",
        "training loss",
    ] {
        assert!(
            texts.iter().any(|t| t == label),
            "no '{label}' in {texts:?}"
        );
    }
}

#[test]
fn bar_chart_has_one_bar_per_value_and_error_bars_where_seeds_vary() {
    let chart = BarChart {
        title: "GLUE dev scores".into(),
        y_label: "dev score".into(),
        groups: vec!["rte".into(), "mrpc".into(), "stsb".into()],
        series: vec![
            BarSeries {
                name: "lora".into(),
                values: vec![
                    Some((60.0, Some(2.0))),
                    Some((81.0, Some(1.0))),
                    Some((83.0, None)),
                ],
            },
            BarSeries {
                name: "qera-exact".into(),
                values: vec![Some((52.0, Some(3.0))), None, Some((53.2, Some(5.3)))],
            },
        ],
        reference: None,
    };
    let svg = bar_chart_svg(&chart).unwrap();
    if let Ok(dir) = std::env::var("QPEFT_PLOT_DEMO") {
        std::fs::write(format!("{dir}/bars.svg"), &svg).unwrap();
    }
    let rects = by_colour(&svg, "rect", "fill");
    // Bars plus one legend swatch.
    assert_eq!(rects.get(&hex(0)).map(Vec::len), Some(3 + 1));
    assert_eq!(rects.get(&hex(1)).map(Vec::len), Some(2 + 1));
    // No bar under the legend: each series' bars left of its frame, its swatch inside.
    let legend = legend_left(&svg);
    for (i, bars) in [(0, 3), (1, 2)] {
        let spans = rect_spans(&svg, &hex(i));
        let left = spans.iter().filter(|&&(_, right)| right < legend).count();
        let inside = spans.iter().filter(|&&(left, _)| left > legend).count();
        assert_eq!((left, inside), (bars, 1), "series {i}: {spans:?}");
    }
    let whiskers = by_colour(&svg, "polyline", "stroke");
    let whisker = format!("#{:02X}{:02X}{:02X}", WHISKER.0, WHISKER.1, WHISKER.2);
    // One per value with a spread: a bar's centre line and its two caps in one path.
    let found = whiskers
        .get(&whisker)
        .map(Vec::as_slice)
        .unwrap_or_default();
    assert_eq!(found.len(), 4, "{whiskers:?}");
    assert!(found.iter().all(|p| p.split_whitespace().count() == 6));
    let texts = texts(&svg);
    for label in ["rte", "mrpc", "stsb", "lora", "qera-exact"] {
        assert!(
            texts.iter().any(|t| t == label),
            "no '{label}' in {texts:?}"
        );
    }
}

#[test]
fn bar_chart_draws_the_reference_level_dashed_across_each_group_that_has_one() {
    let chart = BarChart {
        title: "GLUE dev scores".into(),
        y_label: "dev score × 100".into(),
        groups: vec!["mrpc".into(), "cola".into(), "stsb".into()],
        series: vec![
            BarSeries {
                name: "lora".into(),
                values: vec![Some((74.8, None)), Some((30.0, None)), Some((86.2, None))],
            },
            BarSeries {
                name: "qera".into(),
                values: vec![Some((76.5, None)), Some((14.8, None)), Some((74.4, None))],
            },
        ],
        reference: Some(Reference {
            name: "majority class".into(),
            levels: vec![Some(74.8), Some(0.0), None],
        }),
    };
    let svg = bar_chart_svg(&chart).unwrap();
    if let Ok(dir) = std::env::var("QPEFT_PLOT_DEMO") {
        std::fs::write(format!("{dir}/bars-reference.svg"), &svg).unwrap();
    }
    // lora's mrpc bar is as high as mrpc's level, and its cola bar stands on cola's level (0).
    let lora = rects(&svg, &hex(0));
    let (mrpc_top, cola_bottom) = (lora[0][1], lora[1][1] + lora[1][3]);
    let black = format!("#{:02X}{:02X}{:02X}", REFERENCE.0, REFERENCE.1, REFERENCE.2);
    // The axes and ticks are black too, 1 px wide; the level's dashes are 2 px.
    let doc = roxmltree::Document::parse(&svg).unwrap();
    let dashes: Vec<Vec<(f64, f64)>> = doc
        .descendants()
        .filter(|n| n.tag_name().name() == "polyline")
        .filter(|n| n.attribute("stroke") == Some(black.as_str()))
        .filter(|n| n.attribute("stroke-width") == Some("2"))
        .map(|n| {
            n.attribute("points")
                .unwrap()
                .split_whitespace()
                .map(|xy| {
                    let (x, y) = xy.split_once(',').unwrap();
                    (x.parse().unwrap(), y.parse().unwrap())
                })
                .collect()
        })
        .collect();
    let legend = legend_left(&svg);
    let spans = rect_spans(&svg, &hex(0))
        .into_iter()
        .chain(rect_spans(&svg, &hex(1)))
        .filter(|&(_, right)| right < legend)
        .collect::<Vec<_>>();
    // Each group's dashes lie at its level, between its first bar's left edge and its last
    // bar's right edge (here lora's and qera's bars of that group), and add up to about half
    // the group's width (dash and gap are equal).
    let groups = [(0, mrpc_top), (1, cola_bottom)];
    for (g, y) in groups {
        let (left, right) = (spans[g].0, spans[3 + g].1);
        let on: Vec<_> = dashes
            .iter()
            .filter(|d| d.iter().all(|&(x, _)| x >= left - 1.0 && x <= right + 1.0))
            .filter(|d| d.iter().all(|&(_, dy)| (dy - y).abs() <= 1.0))
            .collect();
        let drawn: f64 = on.iter().map(|d| d[d.len() - 1].0 - d[0].0).sum();
        let width = right - left;
        assert!(on.len() >= 5, "group {g}: {} dashes at y {y}", on.len());
        assert!(
            (drawn - width / 2.0).abs() < 0.1 * width,
            "group {g}: {drawn} of {width} px drawn"
        );
    }
    // Nothing over stsb (no level), one swatch in the legend; its name is listed.
    let stsb = (spans[2].0 + 1.0, spans[5].1);
    assert!(
        !dashes
            .iter()
            .flatten()
            .any(|&(x, _)| x > stsb.0 && x < stsb.1),
        "a dash over stsb"
    );
    let in_legend = dashes.iter().filter(|d| d[0].0 > legend).count();
    assert!(in_legend >= 2, "{in_legend} dashes in the legend");
    assert!(texts(&svg).iter().any(|t| t == "majority class"));
}
