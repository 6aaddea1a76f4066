//! A small SVG line chart for training curves (no plotting dependency needed).

/// One named line of (x, y) points.
pub struct Series<'a> {
    /// Legend label.
    pub name: &'a str,
    /// Points in drawing order; non-finite values are skipped.
    pub points: Vec<(f64, f64)>,
}

const COLORS: [&str; 6] = [
    "#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b",
];

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// Panels side by side, each `(title, x label, series)`, as one SVG document.
pub fn line_charts_svg(title: &str, panels: &[(&str, &str, Vec<Series<'_>>)]) -> String {
    let (pw, ph, pad) = (420.0, 300.0, 50.0);
    let width = pw * panels.len().max(1) as f64;
    let mut s = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{width}\" height=\"{}\" font-family=\"sans-serif\" font-size=\"12\">\n<rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n<text x=\"10\" y=\"18\" font-size=\"14\">{}</text>\n",
        ph + 30.0,
        esc(title)
    );
    for (k, (ptitle, xlabel, series)) in panels.iter().enumerate() {
        let ox = k as f64 * pw;
        let pts = series
            .iter()
            .flat_map(|l| l.points.iter())
            .filter(|(x, y)| x.is_finite() && y.is_finite());
        let (mut x0, mut x1, mut y0, mut y1) = (
            f64::INFINITY,
            f64::NEG_INFINITY,
            f64::INFINITY,
            f64::NEG_INFINITY,
        );
        for &(x, y) in pts {
            x0 = x0.min(x);
            x1 = x1.max(x);
            y0 = y0.min(y);
            y1 = y1.max(y);
        }
        if !x0.is_finite() {
            (x0, x1, y0, y1) = (0.0, 1.0, 0.0, 1.0);
        }
        if x1 <= x0 {
            x1 = x0 + 1.0;
        }
        if y1 <= y0 {
            y1 = y0 + 1.0;
        }
        let (l, r, t, b) = (ox + pad, ox + pw - 15.0, 40.0, ph);
        let sx = |x: f64| l + (x - x0) / (x1 - x0) * (r - l);
        let sy = |y: f64| b - (y - y0) / (y1 - y0) * (b - t);
        s += &format!(
            "<text x=\"{}\" y=\"34\">{}</text>\n<rect x=\"{l}\" y=\"{t}\" width=\"{}\" height=\"{}\" fill=\"none\" stroke=\"#999\"/>\n",
            l,
            esc(ptitle),
            r - l,
            b - t
        );
        for i in 0..=4 {
            let fy = y0 + (y1 - y0) * i as f64 / 4.0;
            let fx = x0 + (x1 - x0) * i as f64 / 4.0;
            s += &format!(
                "<text x=\"{}\" y=\"{}\" text-anchor=\"end\">{:.3}</text>\n",
                l - 4.0,
                sy(fy) + 4.0,
                fy
            );
            s += &format!(
                "<text x=\"{}\" y=\"{}\" text-anchor=\"middle\">{}</text>\n",
                sx(fx),
                b + 14.0,
                fx.round()
            );
        }
        s += &format!(
            "<text x=\"{}\" y=\"{}\" text-anchor=\"middle\">{}</text>\n",
            (l + r) / 2.0,
            b + 28.0,
            esc(xlabel)
        );
        for (j, line) in series.iter().enumerate() {
            let c = COLORS[j % COLORS.len()];
            let path: Vec<String> = line
                .points
                .iter()
                .filter(|(x, y)| x.is_finite() && y.is_finite())
                .map(|&(x, y)| format!("{:.1},{:.1}", sx(x), sy(y)))
                .collect();
            s += &format!(
                "<polyline fill=\"none\" stroke=\"{c}\" stroke-width=\"1.5\" points=\"{}\"/>\n",
                path.join(" ")
            );
            s += &format!(
                "<text x=\"{}\" y=\"{}\" fill=\"{c}\" text-anchor=\"end\">{}</text>\n",
                r - 6.0,
                t + 16.0 + 14.0 * j as f64,
                esc(line.name)
            );
        }
    }
    s + "</svg>\n"
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn draws_every_series_and_escapes_text() {
        let svg = line_charts_svg(
            "a<b",
            &[(
                "loss",
                "step",
                vec![
                    Series {
                        name: "train",
                        points: vec![(0.0, 2.0), (1.0, 1.0), (2.0, f64::NAN)],
                    },
                    Series {
                        name: "val",
                        points: vec![],
                    },
                ],
            )],
        );
        assert!(svg.starts_with("<svg") && svg.ends_with("</svg>\n"));
        assert_eq!(svg.matches("<polyline").count(), 2);
        assert!(svg.contains("a&lt;b"));
    }
}
