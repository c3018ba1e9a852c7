//! A self-contained SVG chart of a run: connected bots, RTT percentiles and
//! the server's tick time, one sample per second, three panels sharing the
//! time axis.

use std::fmt::Write as _;

/// One sample per second.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Sample {
    /// Seconds since the start.
    pub(crate) t: f64,
    /// Bots connected.
    pub(crate) connected: f64,
    /// RTT p50/p95/p99 over the last second, ms.
    pub(crate) rtt: [Option<f64>; 3],
    /// Server tick p50/p99 over the last second, ms.
    pub(crate) tick: [Option<f64>; 2],
}

const WIDTH: f64 = 900.0;
const PANEL: f64 = 200.0;
const LEFT: f64 = 70.0;
const RIGHT: f64 = 150.0;
const TOP: f64 = 40.0;
const GAP: f64 = 50.0;

struct Series<'a> {
    label: &'a str,
    color: &'a str,
    points: Vec<(f64, Option<f64>)>,
}

/// The chart as SVG text.
pub(crate) fn render(title: &str, samples: &[Sample]) -> String {
    let t_max = samples.iter().map(|s| s.t).fold(1.0, f64::max);
    let height = TOP + 3.0 * (PANEL + GAP);
    let mut svg = String::new();
    let _ = writeln!(
        svg,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{height}" font-family="sans-serif" font-size="12">"#
    );
    let _ = writeln!(
        svg,
        r#"<rect width="100%" height="100%" fill="white"/><text x="{LEFT}" y="22" font-size="15">{}</text>"#,
        escape(title)
    );
    let panels: [(&str, Vec<Series<'_>>); 3] = [
        (
            "connected bots",
            vec![Series {
                label: "connected",
                color: "#1f77b4",
                points: samples.iter().map(|s| (s.t, Some(s.connected))).collect(),
            }],
        ),
        (
            "RTT (ms)",
            ["p50", "p95", "p99"]
                .into_iter()
                .zip(["#2ca02c", "#ff7f0e", "#d62728"])
                .enumerate()
                .map(|(i, (label, color))| Series {
                    label,
                    color,
                    points: samples.iter().map(|s| (s.t, s.rtt[i])).collect(),
                })
                .collect(),
        ),
        (
            "server tick (ms)",
            ["p50", "p99"]
                .into_iter()
                .zip(["#9467bd", "#8c564b"])
                .enumerate()
                .map(|(i, (label, color))| Series {
                    label,
                    color,
                    points: samples.iter().map(|s| (s.t, s.tick[i])).collect(),
                })
                .collect(),
        ),
    ];
    for (index, (name, series)) in panels.iter().enumerate() {
        let top = TOP + index as f64 * (PANEL + GAP);
        panel(&mut svg, top, name, series, t_max);
    }
    svg.push_str("</svg>\n");
    svg
}

fn panel(svg: &mut String, top: f64, name: &str, series: &[Series<'_>], t_max: f64) {
    let plot_w = WIDTH - LEFT - RIGHT;
    let y_max = series
        .iter()
        .flat_map(|s| s.points.iter().filter_map(|p| p.1))
        .fold(0.0, f64::max);
    let y_max = nice_ceiling(y_max);
    let bottom = top + PANEL;
    let _ = writeln!(
        svg,
        r##"<text x="{LEFT}" y="{}" font-weight="bold">{}</text><rect x="{LEFT}" y="{top}" width="{plot_w}" height="{PANEL}" fill="none" stroke="#999"/>"##,
        top - 6.0,
        escape(name)
    );
    for step in 0..=4 {
        let v = y_max * f64::from(step) / 4.0;
        let y = bottom - PANEL * f64::from(step) / 4.0;
        let _ = writeln!(
            svg,
            r##"<line x1="{LEFT}" x2="{}" y1="{y:.1}" y2="{y:.1}" stroke="#eee"/><text x="{}" y="{:.1}" text-anchor="end">{}</text>"##,
            LEFT + plot_w,
            LEFT - 6.0,
            y + 4.0,
            short(v)
        );
    }
    for step in 0..=5 {
        let t = t_max * f64::from(step) / 5.0;
        let x = LEFT + plot_w * f64::from(step) / 5.0;
        let _ = writeln!(
            svg,
            r#"<text x="{x:.1}" y="{:.1}" text-anchor="middle">{t:.0} s</text>"#,
            bottom + 16.0
        );
    }
    if series
        .iter()
        .all(|s| s.points.iter().all(|p| p.1.is_none()))
    {
        let _ = writeln!(
            svg,
            r##"<text x="{:.1}" y="{:.1}" text-anchor="middle" fill="#999">no data</text>"##,
            LEFT + plot_w / 2.0,
            top + PANEL / 2.0
        );
    }
    for (i, s) in series.iter().enumerate() {
        let mut path = String::new();
        let mut pen_down = false;
        for &(t, v) in &s.points {
            match v {
                Some(v) => {
                    let x = LEFT + plot_w * t / t_max;
                    let y = bottom - if y_max > 0.0 { PANEL * v / y_max } else { 0.0 };
                    let _ = write!(path, "{}{x:.1},{y:.1} ", if pen_down { "L" } else { "M" });
                    pen_down = true;
                }
                None => pen_down = false,
            }
        }
        if !path.is_empty() {
            let _ = writeln!(
                svg,
                r#"<path d="{}" fill="none" stroke="{}" stroke-width="1.5"/>"#,
                path.trim_end(),
                s.color
            );
        }
        let ly = top + 14.0 + 18.0 * i as f64;
        let lx = LEFT + plot_w + 12.0;
        let _ = writeln!(
            svg,
            r#"<line x1="{lx}" x2="{}" y1="{ly}" y2="{ly}" stroke="{}" stroke-width="3"/><text x="{}" y="{}">{}</text>"#,
            lx + 18.0,
            s.color,
            lx + 24.0,
            ly + 4.0,
            escape(s.label)
        );
    }
}

/// 1, 2 or 5 times a power of ten, at least `v`.
fn nice_ceiling(v: f64) -> f64 {
    if !(v.is_finite() && v > 0.0) {
        return 1.0;
    }
    let magnitude = 10f64.powf(v.log10().floor());
    for m in [1.0, 2.0, 5.0, 10.0] {
        if m * magnitude >= v {
            return m * magnitude;
        }
    }
    10.0 * magnitude
}

fn short(v: f64) -> String {
    if v >= 100.0 || v == v.trunc() {
        format!("{v:.0}")
    } else {
        format!("{v:.2}")
    }
}

fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_chart_is_a_standalone_svg_with_every_series() {
        let samples: Vec<Sample> = (0..10)
            .map(|i| Sample {
                t: f64::from(i),
                connected: f64::from(i * 10),
                rtt: [Some(1.0), Some(2.0), if i == 5 { None } else { Some(3.0) }],
                tick: [Some(0.5), Some(0.9)],
            })
            .collect();
        let svg = render("run <1>", &samples);
        assert!(svg.starts_with("<svg xmlns=\"http://www.w3.org/2000/svg\""));
        assert!(svg.trim_end().ends_with("</svg>"));
        assert!(svg.contains("run &lt;1&gt;"));
        // 1 + 3 + 2 series, the p99 RTT line broken in two by the gap.
        assert_eq!(svg.matches("<path").count(), 6);
        assert!(!svg.contains("http://") || svg.matches("http://").count() == 1);
    }

    #[test]
    fn axes_round_up_to_readable_values() {
        assert_eq!(nice_ceiling(0.0), 1.0);
        assert_eq!(nice_ceiling(3.2), 5.0);
        assert_eq!(nice_ceiling(180.0), 200.0);
        assert_eq!(nice_ceiling(1000.0), 1000.0);
    }

    #[test]
    fn an_empty_run_still_renders() {
        let svg = render("empty", &[]);
        assert!(svg.contains("no data"));
    }
}
