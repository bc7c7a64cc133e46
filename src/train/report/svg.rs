//! Inline SVG charts: linear scales, "nice" ticks, axes, a horizontal bar chart and a line chart
//! with several series (used for ROC curves, silhouette vs k and the reliability diagram).
//!
//! Every coordinate goes through [`px`], which never prints NaN or infinity, and every scale
//! survives empty, flat or non-finite data, so a chart of bad numbers is empty rather than broken.

use super::fmt::{escape, num, pct};
use std::fmt::Write;

/// Ink colours shared with the page's CSS.
pub(crate) const INK: &str = "#1d2330";
pub(crate) const MUTED: &str = "#5b6475";
const GRID: &str = "#e6e9ee";
const AXIS: &str = "#9aa3b2";
const FONT: f64 = 12.0;

/// Categorical colours (Tableau 10): distinct, print well, and survive most colour blindness.
pub(crate) const PALETTE: [&str; 10] = [
    "#4e79a7", "#f28e2b", "#e15759", "#76b7b2", "#59a14f", "#edc948", "#b07aa1", "#ff9da7",
    "#9c755f", "#bab0ac",
];

/// A coordinate or length for an SVG attribute: at most one decimal, never NaN or infinite.
pub(crate) fn px(v: f64) -> String {
    let v = if v.is_finite() {
        v.clamp(-1e6, 1e6)
    } else {
        0.0
    };
    let r = (v * 10.0).round() / 10.0;
    if r.fract() == 0.0 {
        format!("{}", r as i64)
    } else {
        format!("{r:.1}")
    }
}

/// Rough rendered width of `s` at `size` px: CJK characters are square, Latin ones narrower.
pub(crate) fn text_width(s: &str, size: f64) -> f64 {
    s.chars()
        .map(|c| match c {
            c if u32::from(c) >= 0x2E80 => 1.0,
            'A'..='Z' | 'm' | 'w' | '%' => 0.72,
            'i' | 'l' | 'j' | '.' | ',' | ':' | ';' | '\'' | '|' | '!' | ' ' => 0.3,
            _ => 0.56,
        })
        .sum::<f64>()
        * size
}

/// `s` shortened with an ellipsis to fit `max` px; the flag says whether it was shortened.
fn fit(s: &str, size: f64, max: f64) -> (String, bool) {
    // A little slack: callers pass widths computed as (measured + margin) - margin.
    let max = max + 0.01;
    if text_width(s, size) <= max {
        return (s.to_string(), false);
    }
    let mut out = String::new();
    for c in s.chars() {
        let next = format!("{out}{c}…");
        if text_width(&next, size) > max {
            break;
        }
        out.push(c);
    }
    out.push('…');
    (out, true)
}

/// A finite, non-empty domain: swaps reversed ends, widens a single value, replaces garbage.
fn sane_domain(lo: f64, hi: f64) -> (f64, f64) {
    let (lo, hi) = match (lo.is_finite(), hi.is_finite()) {
        (true, true) => (lo.min(hi), lo.max(hi)),
        (true, false) => (lo, lo),
        (false, true) => (hi, hi),
        (false, false) => (0.0, 1.0),
    };
    if hi - lo > 1e-12 * lo.abs().max(hi.abs()).max(1.0) {
        (lo, hi)
    } else {
        let pad = if lo == 0.0 { 1.0 } else { lo.abs() * 0.1 };
        (lo - pad, hi + pad)
    }
}

/// Linear map from a data domain to a pixel range; values outside the domain are clamped.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Scale {
    d0: f64,
    d1: f64,
    r0: f64,
    r1: f64,
}

impl Scale {
    pub(crate) fn new(domain: (f64, f64), range: (f64, f64)) -> Scale {
        let (d0, d1) = sane_domain(domain.0, domain.1);
        Scale {
            d0,
            d1,
            r0: range.0,
            r1: range.1,
        }
    }

    pub(crate) fn map(&self, v: f64) -> f64 {
        let t = (v - self.d0) / (self.d1 - self.d0);
        let t = if t.is_nan() { 0.0 } else { t.clamp(0.0, 1.0) };
        self.r0 + t * (self.r1 - self.r0)
    }

    pub(crate) fn domain(&self) -> (f64, f64) {
        (self.d0, self.d1)
    }
}

/// A round step (1, 2 or 5 × 10^n) giving about `target` intervals over `span`.
fn nice_step(span: f64, target: usize) -> f64 {
    if !(span.is_finite() && span > 0.0) {
        return 1.0;
    }
    let raw = span / target.max(1) as f64;
    let mag = 10f64.powf(raw.log10().floor());
    let norm = raw / mag;
    let m = if norm < 1.5 {
        1.0
    } else if norm < 3.0 {
        2.0
    } else if norm < 7.0 {
        5.0
    } else {
        10.0
    };
    let step = m * mag;
    if step.is_finite() && step > 0.0 {
        step
    } else {
        1.0
    }
}

/// How tick labels are written.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) enum Fmt {
    #[default]
    Num,
    /// Fractions as percentages.
    Pct,
    /// Whole numbers only (ticks are at least 1 apart).
    Int,
}

/// Tick positions inside `[lo, hi]` and the step between them.
pub(crate) fn ticks(lo: f64, hi: f64, target: usize, fmt: Fmt) -> (Vec<f64>, f64) {
    let (lo, hi) = sane_domain(lo, hi);
    let mut step = nice_step(hi - lo, target);
    if fmt == Fmt::Int {
        step = step.max(1.0).round();
    }
    let start = (lo / step - 1e-9).ceil() * step;
    let mut out = Vec::new();
    for i in 0..=60 {
        let t = start + f64::from(i) * step;
        if t > hi + step * 1e-9 {
            break;
        }
        out.push(if t.abs() < step * 1e-9 { 0.0 } else { t });
    }
    (out, step)
}

/// Widens `[lo, hi]` outward to whole tick steps, so the frame ends on a labelled gridline.
fn nice_domain(lo: f64, hi: f64, target: usize, fmt: Fmt) -> (f64, f64) {
    let (lo, hi) = sane_domain(lo, hi);
    let (_, step) = ticks(lo, hi, target, fmt);
    (
        (lo / step + 1e-9).floor() * step,
        (hi / step - 1e-9).ceil() * step,
    )
}

fn tick_label(v: f64, step: f64, fmt: Fmt) -> String {
    let decimals = |step: f64| -> usize {
        if !step.is_finite() || step >= 1.0 {
            0
        } else {
            ((-step.log10().floor()) as usize).min(6)
        }
    };
    match fmt {
        Fmt::Num => num(v, decimals(step)),
        Fmt::Pct => pct(v, decimals(step * 100.0)),
        Fmt::Int => num(v, 0),
    }
}

fn open_svg(out: &mut String, width: f64, height: f64, label: &str) {
    let _ = write!(
        out,
        r#"<svg class="chart" viewBox="0 0 {w} {h}" width="{w}" height="{h}" role="img" aria-label="{l}" font-size="{f}" fill="{INK}"><title>{l}</title>"#,
        w = px(width),
        h = px(height),
        l = escape(label),
        f = px(FONT),
    );
}

fn text(out: &mut String, x: f64, y: f64, anchor: &str, extra: &str, s: &str) {
    let _ = write!(
        out,
        r#"<text x="{}" y="{}" text-anchor="{anchor}"{extra}>{}</text>"#,
        px(x),
        px(y),
        escape(s)
    );
}

fn line(out: &mut String, (x1, y1): (f64, f64), (x2, y2): (f64, f64), stroke: &str, extra: &str) {
    let _ = write!(
        out,
        r#"<line x1="{}" y1="{}" x2="{}" y2="{}" stroke="{stroke}"{extra}/>"#,
        px(x1),
        px(y1),
        px(x2),
        px(y2)
    );
}

/// One axis of a plot: where the ticks are and how they read.
struct Axis<'a> {
    scale: Scale,
    ticks: Vec<f64>,
    step: f64,
    fmt: Fmt,
    label: &'a str,
}

impl<'a> Axis<'a> {
    fn new(
        domain: (f64, f64),
        range: (f64, f64),
        target: usize,
        fmt: Fmt,
        label: &'a str,
    ) -> Axis<'a> {
        let scale = Scale::new(domain, range);
        let (d0, d1) = scale.domain();
        let (ticks, step) = ticks(d0, d1, target, fmt);
        Axis {
            scale,
            ticks,
            step,
            fmt,
            label,
        }
    }

    fn labels(&self) -> impl Iterator<Item = (f64, String)> + '_ {
        self.ticks
            .iter()
            .map(|&t| (t, tick_label(t, self.step, self.fmt)))
    }
}

/// Gridlines, tick labels and axis titles around the plot box `[x0, x1] × [y0, y1]`.
/// `x_text_y` is where x tick labels sit (below the plot, or below a strip under it).
fn draw_axes(
    out: &mut String,
    x: &Axis,
    y: &Axis,
    (x0, x1, y0, y1): (f64, f64, f64, f64),
    x_text_y: f64,
) {
    for (t, label) in y.labels() {
        let py = y.scale.map(t);
        line(out, (x0, py), (x1, py), GRID, "");
        text(out, x0 - 6.0, py + 4.0, "end", "", &label);
    }
    for (t, label) in x.labels() {
        let pxx = x.scale.map(t);
        line(out, (pxx, y0), (pxx, y1), GRID, "");
        text(out, pxx, x_text_y, "middle", "", &label);
    }
    line(out, (x0, y1), (x1, y1), AXIS, "");
    line(out, (x0, y0), (x0, y1), AXIS, "");
    if !x.label.is_empty() {
        let fill = format!(r#" fill="{MUTED}""#);
        text(
            out,
            (x0 + x1) / 2.0,
            x_text_y + 18.0,
            "middle",
            &fill,
            x.label,
        );
    }
    if !y.label.is_empty() {
        let (cx, cy) = (14.0, (y0 + y1) / 2.0);
        let extra = format!(
            r#" fill="{MUTED}" transform="rotate(-90 {} {})""#,
            px(cx),
            px(cy)
        );
        text(out, cx, cy, "middle", &extra, y.label);
    }
}

/// One line of a line chart.
#[derive(Debug, Clone)]
pub(crate) struct Series {
    pub name: String,
    pub color: String,
    pub points: Vec<(f64, f64)>,
    pub width: f64,
    pub dashed: bool,
    /// Draw a dot at each point; `radii` (if as long as `points`) sizes them individually.
    pub markers: bool,
    pub radii: Vec<f64>,
    /// Tooltips per point (optional, same length as `points`).
    pub tips: Vec<String>,
}

impl Series {
    pub(crate) fn new(
        name: impl Into<String>,
        color: impl Into<String>,
        points: Vec<(f64, f64)>,
    ) -> Series {
        Series {
            name: name.into(),
            color: color.into(),
            points,
            width: 2.0,
            dashed: false,
            markers: false,
            radii: Vec::new(),
            tips: Vec::new(),
        }
    }
}

/// Where a line chart puts its legend (inside the plot, where the data usually is not).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) enum Legend {
    #[default]
    None,
    BottomRight,
}

/// A bar strip under the plot sharing its x axis, e.g. users per calibration bin:
/// (from x, to x, value) per bar.
#[derive(Debug, Clone, Default)]
pub(crate) struct Strip {
    pub label: String,
    pub bins: Vec<(f64, f64, f64)>,
}

/// A line chart's frame: size, axes, reference lines.
#[derive(Debug, Clone)]
pub(crate) struct LineChart<'a> {
    /// Accessible name (also the SVG `<title>`).
    pub label: &'a str,
    pub width: f64,
    pub height: f64,
    pub x_label: &'a str,
    pub y_label: &'a str,
    /// Fixed domains (e.g. 0..1 for probabilities); otherwise taken from the data, widened to ticks.
    pub x_domain: Option<(f64, f64)>,
    pub y_domain: Option<(f64, f64)>,
    pub x_fmt: Fmt,
    pub y_fmt: Fmt,
    /// Dashed y = x reference (ROC chance line, perfect calibration).
    pub diagonal: bool,
    pub legend: Legend,
    /// A vertical marker with a caption, e.g. the chosen k.
    pub x_mark: Option<(f64, String)>,
    pub strip: Option<Strip>,
}

impl Default for LineChart<'_> {
    fn default() -> Self {
        LineChart {
            label: "",
            width: 480.0,
            height: 320.0,
            x_label: "",
            y_label: "",
            x_domain: None,
            y_domain: None,
            x_fmt: Fmt::Num,
            y_fmt: Fmt::Num,
            diagonal: false,
            legend: Legend::None,
            x_mark: None,
            strip: None,
        }
    }
}

fn finite_extent(values: impl Iterator<Item = f64>) -> Option<(f64, f64)> {
    values
        .filter(|v| v.is_finite())
        .fold(None, |acc, v| match acc {
            None => Some((v, v)),
            Some((lo, hi)) => Some((lo.min(v), hi.max(v))),
        })
}

/// A line chart of several series over shared axes.
pub(crate) fn line_chart(spec: &LineChart, series: &[Series]) -> String {
    let all = || series.iter().flat_map(|s| s.points.iter().copied());
    let x_dom = spec.x_domain.unwrap_or_else(|| {
        let (lo, hi) = finite_extent(all().map(|p| p.0)).unwrap_or((0.0, 1.0));
        if spec.x_fmt == Fmt::Int {
            sane_domain(lo, hi)
        } else {
            nice_domain(lo, hi, 6, spec.x_fmt)
        }
    });
    let y_dom = spec.y_domain.unwrap_or_else(|| {
        let (lo, hi) = finite_extent(all().map(|p| p.1)).unwrap_or((0.0, 1.0));
        let pad = (hi - lo) * 0.08;
        nice_domain(lo - pad, hi + pad, 5, spec.y_fmt)
    });

    // Room for y tick labels: measure the widest one.
    let probe = Axis::new(y_dom, (0.0, 1.0), 5, spec.y_fmt, spec.y_label);
    let y_text = probe
        .labels()
        .map(|(_, l)| text_width(&l, FONT))
        .fold(0.0, f64::max);
    let left = 8.0 + y_text + if spec.y_label.is_empty() { 4.0 } else { 22.0 };
    // Room on the right for half of the last x tick label, which is centred on the frame's edge.
    let x_probe = Axis::new(x_dom, (0.0, 1.0), 6, spec.x_fmt, spec.x_label);
    let last_x = x_probe
        .labels()
        .last()
        .map_or(0.0, |(_, l)| text_width(&l, FONT));
    let (top, right) = (12.0, (last_x / 2.0 + 6.0).max(14.0));
    let strip_h = if spec.strip.is_some() { 42.0 } else { 0.0 };
    let below = 22.0 + if spec.x_label.is_empty() { 0.0 } else { 18.0 };
    let (x0, x1) = (left, spec.width - right);
    let (y0, y1) = (top, spec.height - below - strip_h);
    let xa = Axis::new(x_dom, (x0, x1), 6, spec.x_fmt, spec.x_label);
    let ya = Axis::new(y_dom, (y1, y0), 5, spec.y_fmt, spec.y_label);

    let mut out = String::new();
    open_svg(&mut out, spec.width, spec.height, spec.label);
    draw_axes(
        &mut out,
        &xa,
        &ya,
        (x0, x1, y0, y1),
        spec.height - below + 14.0,
    );

    if let Some(strip) = &spec.strip {
        draw_strip(
            &mut out,
            strip,
            &xa.scale,
            (x0, y1 + 6.0, y1 + strip_h - 2.0),
        );
    }
    if spec.diagonal {
        let (d0, d1) = xa.scale.domain();
        let (e0, e1) = ya.scale.domain();
        let (lo, hi) = (d0.max(e0), d1.min(e1));
        if lo < hi {
            let a = (xa.scale.map(lo), ya.scale.map(lo));
            let b = (xa.scale.map(hi), ya.scale.map(hi));
            line(&mut out, a, b, AXIS, r#" stroke-dasharray="5 4""#);
        }
    }
    if let Some((mx, caption)) = &spec.x_mark {
        if mx.is_finite() {
            let p = xa.scale.map(*mx);
            line(
                &mut out,
                (p, y0),
                (p, y1),
                INK,
                r#" stroke-dasharray="3 3""#,
            );
            let w = text_width(caption, FONT);
            let (tx, anchor) = if p + 6.0 + w > x1 {
                (p - 5.0, "end")
            } else {
                (p + 5.0, "start")
            };
            text(
                &mut out,
                tx,
                y0 + 12.0,
                anchor,
                r#" font-weight="600""#,
                caption,
            );
        }
    }
    for s in series {
        draw_series(&mut out, s, &xa.scale, &ya.scale);
    }
    if spec.legend != Legend::None && !series.is_empty() {
        draw_legend(&mut out, series, (x0, x1, y1));
    }
    out.push_str("</svg>");
    out
}

fn draw_series(out: &mut String, s: &Series, x: &Scale, y: &Scale) {
    // The path breaks at non-finite points and skips points that land on the same pixel.
    let mut d = String::new();
    let mut pen_down = false;
    let mut last = (String::new(), String::new());
    for &(vx, vy) in &s.points {
        if !(vx.is_finite() && vy.is_finite()) {
            pen_down = false;
            continue;
        }
        let p = (px(x.map(vx)), px(y.map(vy)));
        if pen_down && p == last {
            continue;
        }
        let _ = write!(d, "{}{} {}", if pen_down { "L" } else { "M" }, p.0, p.1);
        pen_down = true;
        last = p;
    }
    if !d.is_empty() {
        let dash = if s.dashed {
            r#" stroke-dasharray="6 4""#
        } else {
            ""
        };
        let _ = write!(
            out,
            r#"<path d="{d}" fill="none" stroke="{}" stroke-width="{}" stroke-linejoin="round" stroke-linecap="round"{dash}/>"#,
            escape(&s.color),
            px(s.width)
        );
    }
    if s.markers {
        for (i, &(vx, vy)) in s.points.iter().enumerate() {
            if !(vx.is_finite() && vy.is_finite()) {
                continue;
            }
            let r = s
                .radii
                .get(i)
                .copied()
                .filter(|r| r.is_finite() && *r > 0.0)
                .unwrap_or(3.5);
            let _ = write!(
                out,
                r##"<circle cx="{}" cy="{}" r="{}" fill="{}" fill-opacity="0.85" stroke="#fff" stroke-width="1">"##,
                px(x.map(vx)),
                px(y.map(vy)),
                px(r),
                escape(&s.color)
            );
            if let Some(tip) = s.tips.get(i) {
                let _ = write!(out, "<title>{}</title>", escape(tip));
            }
            out.push_str("</circle>");
        }
    }
}

/// Legend box in the bottom-right corner of the plot `[x0, x1] × [.., y1]`.
fn draw_legend(out: &mut String, series: &[Series], (x0, x1, y1): (f64, f64, f64)) {
    let row = 17.0;
    let text_w = series
        .iter()
        .map(|s| text_width(&s.name, FONT))
        .fold(0.0, f64::max);
    let w = (text_w + 40.0).min(x1 - x0 - 16.0);
    let h = row * series.len() as f64 + 10.0;
    let (bx, by) = (x1 - 8.0 - w, y1 - 8.0 - h);
    let _ = write!(
        out,
        r##"<rect x="{}" y="{}" width="{}" height="{}" rx="4" fill="#ffffff" fill-opacity="0.92" stroke="{GRID}"/>"##,
        px(bx),
        px(by),
        px(w),
        px(h)
    );
    for (i, s) in series.iter().enumerate() {
        let cy = by + 5.0 + row * (i as f64 + 0.5);
        let dash = if s.dashed {
            r#" stroke-dasharray="5 3""#
        } else {
            ""
        };
        let extra = format!(r#" stroke-width="{}"{dash}"#, px(s.width.max(2.0)));
        line(
            out,
            (bx + 8.0, cy),
            (bx + 26.0, cy),
            &escape(&s.color),
            &extra,
        );
        let (name, _) = fit(&s.name, FONT, w - 40.0);
        text(out, bx + 32.0, cy + 4.0, "start", "", &name);
    }
}

fn draw_strip(out: &mut String, strip: &Strip, x: &Scale, (left, top, bottom): (f64, f64, f64)) {
    let max = strip
        .bins
        .iter()
        .map(|b| b.2)
        .filter(|v| v.is_finite())
        .fold(0.0, f64::max);
    let h = bottom - top;
    line(out, (left, bottom), (x.map(x.domain().1), bottom), AXIS, "");
    if !strip.label.is_empty() {
        let fill = format!(r#" fill="{MUTED}""#);
        text(
            out,
            left - 6.0,
            (top + bottom) / 2.0 + 4.0,
            "end",
            &fill,
            &strip.label,
        );
    }
    if max <= 0.0 {
        return;
    }
    for &(lo, hi, v) in &strip.bins {
        if !(v.is_finite() && v > 0.0 && lo.is_finite() && hi.is_finite()) {
            continue;
        }
        let (a, b) = (x.map(lo), x.map(hi));
        let bh = (v / max) * h;
        let _ = write!(
            out,
            r##"<rect x="{}" y="{}" width="{}" height="{}" fill="#b8c4d6"><title>{}</title></rect>"##,
            px(a.min(b) + 0.5),
            px(bottom - bh),
            px(((b - a).abs() - 1.0).max(0.5)),
            px(bh),
            escape(&num(v, 0))
        );
    }
}

/// One bar of a horizontal bar chart.
#[derive(Debug, Clone)]
pub(crate) struct Bar {
    pub label: String,
    pub value: f64,
    /// What is written after the bar, e.g. "23.4% · 1,204 users".
    pub text: String,
    pub color: String,
}

/// A horizontal bar chart's frame.
#[derive(Debug, Clone)]
pub(crate) struct BarChart<'a> {
    pub label: &'a str,
    pub width: f64,
    /// Tick format of the value axis.
    pub fmt: Fmt,
    /// Fixed end of the value axis (e.g. 1.0 for rates); otherwise the largest value, rounded up.
    pub max: Option<f64>,
    /// Draw a value axis with gridlines under the bars.
    pub axis: bool,
}

impl Default for BarChart<'_> {
    fn default() -> Self {
        BarChart {
            label: "",
            width: 480.0,
            fmt: Fmt::Num,
            max: None,
            axis: true,
        }
    }
}

/// Horizontal bars with labels on the left and values on the right. No bars: a short note.
pub(crate) fn bar_chart(spec: &BarChart, bars: &[Bar]) -> String {
    if bars.is_empty() {
        return r#"<p class="empty">No data.</p>"#.to_string();
    }
    let (row, bar_h, top) = (24.0, 15.0, 4.0);
    let label_w = bars
        .iter()
        .map(|b| text_width(&b.label, FONT))
        .fold(0.0, f64::max)
        .clamp(30.0, spec.width * 0.38)
        + 12.0;
    let value_w = bars
        .iter()
        .map(|b| text_width(&b.text, FONT))
        .fold(0.0, f64::max)
        .min(spec.width * 0.3)
        + 12.0;
    let (x0, x1) = (label_w, (spec.width - value_w).max(label_w + 20.0));
    let rows_h = row * bars.len() as f64;
    let height = top + rows_h + if spec.axis { 24.0 } else { 4.0 };

    let (lo, hi) = finite_extent(bars.iter().map(|b| b.value)).unwrap_or((0.0, 1.0));
    let lo = lo.min(0.0);
    let hi = spec
        .max
        .filter(|m| m.is_finite() && *m > lo)
        .unwrap_or_else(|| {
            let hi = hi.max(0.0);
            if hi > lo {
                nice_domain(lo, hi, 4, spec.fmt).1
            } else {
                lo + 1.0
            }
        });
    let axis = Axis::new((lo, hi), (x0, x1), 4, spec.fmt, "");
    let x = axis.scale;

    let mut out = String::new();
    open_svg(&mut out, spec.width, height, spec.label);
    if spec.axis {
        for (t, label) in axis.labels() {
            let p = x.map(t);
            line(&mut out, (p, top), (p, top + rows_h), GRID, "");
            let fill = format!(r#" fill="{MUTED}""#);
            text(&mut out, p, top + rows_h + 16.0, "middle", &fill, &label);
        }
    }
    let zero = x.map(0.0);
    for (i, b) in bars.iter().enumerate() {
        let cy = top + row * (i as f64 + 0.5);
        let (label, cut) = fit(&b.label, FONT, label_w - 12.0);
        let _ = write!(
            out,
            r#"<text x="{}" y="{}" text-anchor="end">"#,
            px(x0 - 8.0),
            px(cy + 4.0)
        );
        if cut {
            let _ = write!(out, "<title>{}</title>", escape(&b.label));
        }
        let _ = write!(out, "{}</text>", escape(&label));
        let end = if b.value.is_finite() {
            x.map(b.value)
        } else {
            zero
        };
        let (a, c) = (zero.min(end), zero.max(end));
        if c - a > 0.0 {
            let _ = write!(
                out,
                r#"<rect x="{}" y="{}" width="{}" height="{}" rx="2" fill="{}"/>"#,
                px(a),
                px(cy - bar_h / 2.0),
                px((c - a).max(1.0)),
                px(bar_h),
                escape(&b.color)
            );
        }
        let fill = format!(r#" fill="{INK}""#);
        text(&mut out, c + 5.0, cy + 4.0, "start", &fill, &b.text);
    }
    line(&mut out, (zero, top), (zero, top + rows_h), AXIS, "");
    out.push_str("</svg>");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn px_never_prints_nan_or_infinity() {
        assert_eq!(px(f64::NAN), "0");
        assert_eq!(px(f64::INFINITY), "0");
        assert_eq!(px(2e9), "1000000");
        assert_eq!(px(-0.01), "0");
        assert_eq!(px(12.345), "12.3");
    }

    #[test]
    fn scales_survive_flat_and_broken_domains() {
        for (lo, hi) in [
            (1.0, 1.0),
            (0.0, 0.0),
            (f64::NAN, f64::NAN),
            (f64::NEG_INFINITY, 3.0),
            (5.0, 2.0),
        ] {
            let s = Scale::new((lo, hi), (0.0, 100.0));
            for v in [lo, hi, 0.0, f64::NAN, f64::INFINITY, 1e308] {
                assert!(s.map(v).is_finite(), "{lo}..{hi} maps {v} to {}", s.map(v));
            }
        }
    }

    #[test]
    fn ticks_are_round_and_inside_the_domain() {
        let (t, step) = ticks(0.0, 1.0, 5, Fmt::Pct);
        assert_eq!(step, 0.2);
        assert_eq!(t.len(), 6);
        assert_eq!(tick_label(0.6000000000000001, step, Fmt::Pct), "60%");
        let (t, _) = ticks(2.0, 10.0, 6, Fmt::Int);
        assert!(t.iter().all(|v| v.fract() == 0.0));
        let (t, _) = ticks(f64::NAN, f64::NAN, 5, Fmt::Num);
        assert!(!t.is_empty() && t.iter().all(|v| v.is_finite()));
    }

    #[test]
    fn long_labels_are_shortened_with_an_ellipsis() {
        let (s, cut) = fit("a very long label that does not fit", 12.0, 60.0);
        assert!(cut && s.ends_with('…') && text_width(&s, 12.0) <= 60.0);
        assert_eq!(fit("short", 12.0, 60.0), ("short".to_string(), false));
    }

    #[test]
    fn bar_chart_of_nothing_is_a_note_not_an_empty_svg() {
        assert!(bar_chart(&BarChart::default(), &[]).contains("No data"));
    }
}
