//! The transports plot, written as SVG by hand (no plotting crate): four panels of horizontal
//! bars, one bar (or two) per transport: bytes per delivered message and server CPU per message on
//! log scales (they span orders of magnitude), HTTP requests per message on a linear one (WebSocket's
//! is 0), and latency p50 / p99 on a log scale.

use std::fmt::Write as _;

use super::Settings;
use super::load::Transport;
use super::report::{Summary, figure, label};
use crate::harness::markdown::thousands;

const WIDTH: f64 = 820.0;
const LEFT: f64 = 190.0;
const PLOT: f64 = 520.0;
const ROW: f64 = 24.0;
const PANEL_TOP: f64 = 44.0;
const PANEL_BOTTOM: f64 = 34.0;
const FONT: &str = "font-family=\"DejaVu Sans, Helvetica, Arial, sans-serif\"";

/// The bar colour of a transport.
fn colour(t: Transport) -> &'static str {
    match t {
        Transport::Websocket => "#2b8a3e",
        Transport::Sse => "#1c7ed6",
        Transport::LongPoll => "#e8590c",
        Transport::Poll => "#c92a2a",
        Transport::SocketioPolling => "#7048e8",
    }
}

/// How a panel maps values to x.
#[derive(Clone, Copy)]
enum Scale {
    /// From 0 to the maximum.
    Linear { max: f64 },
    /// From 10^lo to 10^hi.
    Log { lo: i32, hi: i32 },
}

impl Scale {
    fn for_values(log: bool, values: &[f64]) -> Scale {
        let finite = values.iter().copied().filter(|v| v.is_finite() && *v > 0.0);
        let max = finite.clone().fold(0.0, f64::max);
        if !log {
            // A round top: 1, 2 or 5 × a power of ten.
            let max = if max > 0.0 { max } else { 1.0 };
            let power = 10f64.powf(max.log10().floor());
            let top = [1.0, 2.0, 5.0, 10.0]
                .iter()
                .map(|m| m * power)
                .find(|t| *t >= max)
                .unwrap_or(10.0 * power);
            return Scale::Linear { max: top };
        }
        let min = finite.fold(f64::INFINITY, f64::min);
        if !min.is_finite() {
            return Scale::Log { lo: 0, hi: 1 };
        }
        let lo = min.log10().floor() as i32;
        let hi = (max.log10().ceil() as i32).max(lo + 1);
        Scale::Log { lo, hi }
    }

    /// x offset (0..PLOT) of `v`; values at or below the scale's start give 0.
    fn x(self, v: f64) -> f64 {
        if !v.is_finite() || v <= 0.0 {
            return 0.0;
        }
        let f = match self {
            Scale::Linear { max } => v / max,
            Scale::Log { lo, hi } => (v.log10() - f64::from(lo)) / f64::from(hi - lo),
        };
        f.clamp(0.0, 1.0) * PLOT
    }

    /// The gridlines: (value, label).
    fn ticks(self) -> Vec<(f64, String)> {
        match self {
            Scale::Linear { max } => (0..=4)
                .map(|i| {
                    let v = max * f64::from(i) / 4.0;
                    (v, figure(v))
                })
                .collect(),
            Scale::Log { lo, hi } => (lo..=hi)
                .map(|p| {
                    let v = 10f64.powi(p);
                    (v, if p < 0 { format!("{v}") } else { thousands(v) })
                })
                .collect(),
        }
    }
}

/// One bar of a row: its value, its text, and whether it is the lighter second bar.
struct Bar {
    value: f64,
    text: String,
    light: bool,
}

/// Draws one panel at `top`; returns its height.
fn panel(
    out: &mut String,
    top: f64,
    title: &str,
    scale: Scale,
    rows: &[(Transport, Vec<Bar>)],
) -> f64 {
    let bars_per_row = rows.iter().map(|(_, b)| b.len()).max().unwrap_or(1).max(1);
    let row_h = ROW * if bars_per_row > 1 { 1.5 } else { 1.0 };
    let height = PANEL_TOP + row_h * rows.len() as f64 + PANEL_BOTTOM;
    let plot_top = top + PANEL_TOP;
    let plot_bottom = plot_top + row_h * rows.len() as f64;
    let _ = writeln!(
        out,
        "<text x=\"16\" y=\"{:.1}\" {FONT} font-size=\"15\" font-weight=\"bold\">{}</text>",
        top + 24.0,
        escape(title)
    );
    for (v, text) in scale.ticks() {
        let x = LEFT + scale.x(v);
        let _ = writeln!(
            out,
            "<line x1=\"{x:.1}\" y1=\"{plot_top:.1}\" x2=\"{x:.1}\" y2=\"{plot_bottom:.1}\" stroke=\"#dee2e6\"/>\n\
             <text x=\"{x:.1}\" y=\"{:.1}\" {FONT} font-size=\"11\" fill=\"#495057\" text-anchor=\"middle\">{}</text>",
            plot_bottom + 15.0,
            escape(&text)
        );
    }
    for (i, (t, bars)) in rows.iter().enumerate() {
        let y = plot_top + row_h * i as f64;
        let _ = writeln!(
            out,
            "<text x=\"{:.1}\" y=\"{:.1}\" {FONT} font-size=\"12\" text-anchor=\"end\">{}</text>",
            LEFT - 8.0,
            y + row_h / 2.0 + 4.0,
            escape(label(*t))
        );
        let bar_h = (row_h - 6.0) / bars.len().max(1) as f64;
        for (j, bar) in bars.iter().enumerate() {
            let by = y + 3.0 + bar_h * j as f64;
            let w = scale
                .x(bar.value)
                .max(if bar.value > 0.0 { 1.0 } else { 0.0 });
            let opacity = if bar.light { "0.45" } else { "1" };
            let _ = writeln!(
                out,
                "<rect x=\"{LEFT:.1}\" y=\"{by:.1}\" width=\"{w:.1}\" height=\"{:.1}\" fill=\"{}\" fill-opacity=\"{opacity}\"/>\n\
                 <text x=\"{:.1}\" y=\"{:.1}\" {FONT} font-size=\"11\">{}</text>",
                bar_h - 1.0,
                colour(*t),
                LEFT + w + 5.0,
                by + bar_h / 2.0 + 3.5,
                escape(&bar.text)
            );
        }
    }
    let _ = writeln!(
        out,
        "<line x1=\"{LEFT:.1}\" y1=\"{plot_top:.1}\" x2=\"{LEFT:.1}\" y2=\"{plot_bottom:.1}\" stroke=\"#868e96\"/>"
    );
    height
}

fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// The whole SVG document.
pub fn plot(sums: &[Summary], s: &Settings) -> String {
    let mut body = String::new();
    let mut top = 50.0;
    let single = |f: &dyn Fn(&Summary) -> f64, text: &dyn Fn(f64) -> String| {
        sums.iter()
            .map(|x| {
                let value = f(x);
                (
                    x.transport,
                    vec![Bar {
                        value,
                        text: text(value),
                        light: false,
                    }],
                )
            })
            .collect::<Vec<_>>()
    };

    let rows = single(&|x| x.bytes_per_msg, &|v| format!("{} B", thousands(v)));
    let values: Vec<f64> = sums.iter().map(|x| x.bytes_per_msg).collect();
    top += panel(
        &mut body,
        top,
        "Bytes on the wire per delivered message (both ways, HTTP heads included; log scale)",
        Scale::for_values(true, &values),
        &rows,
    );

    let rows = single(&|x| x.requests_per_msg, &|v| {
        if v == 0.0 {
            "0 (one upgrade, then frames)".into()
        } else {
            figure(v)
        }
    });
    let values: Vec<f64> = sums.iter().map(|x| x.requests_per_msg).collect();
    top += panel(
        &mut body,
        top,
        "HTTP requests per delivered message",
        Scale::for_values(false, &values),
        &rows,
    );

    let cpu_us = |x: &Summary| x.cpu_s_per_1k.map_or(f64::NAN, |c| c * 1000.0);
    let rows = single(&cpu_us, &|v| format!("{} µs", figure(v)));
    let values: Vec<f64> = sums.iter().map(cpu_us).collect();
    top += panel(
        &mut body,
        top,
        "Server CPU per delivered message (user + system; log scale)",
        Scale::for_values(true, &values),
        &rows,
    );

    let ms = |us: u64| us as f64 / 1000.0;
    let rows: Vec<(Transport, Vec<Bar>)> = sums
        .iter()
        .map(|x| {
            (
                x.transport,
                vec![
                    Bar {
                        value: ms(x.p50_us),
                        text: format!("p50 {} ms", super::report::ms(x.p50_us)),
                        light: false,
                    },
                    Bar {
                        value: ms(x.p99_us),
                        text: format!("p99 {} ms", super::report::ms(x.p99_us)),
                        light: true,
                    },
                ],
            )
        })
        .collect();
    let values: Vec<f64> = sums
        .iter()
        .flat_map(|x| [ms(x.p50_us), ms(x.p99_us)])
        .collect();
    top += panel(
        &mut body,
        top,
        "Delivery latency, publish to receive, p50 and p99 (ms; log scale)",
        Scale::for_values(true, &values),
        &rows,
    );

    let height = top + 10.0;
    let mut out = String::new();
    let _ = writeln!(
        out,
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{WIDTH}\" height=\"{height:.0}\" \
         viewBox=\"0 0 {WIDTH} {height:.0}\">\n\
         <rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n\
         <text x=\"16\" y=\"28\" {FONT} font-size=\"18\" font-weight=\"bold\">Why WebSocket, measured: \
         {} clients in one room, {} message/s</text>",
        thousands(s.clients as f64),
        s.rate
    );
    out.push_str(&body);
    let _ = writeln!(
        out,
        "<text x=\"16\" y=\"{:.0}\" {FONT} font-size=\"10\" fill=\"#868e96\">switchboard-bench transports \
         (crates/bench); ajax polling every {} s; docs/benchmarks.md has the method</text>\n</svg>",
        height - 4.0,
        s.poll_interval
    );
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_scale_spans_whole_decades() {
        let Scale::Log { lo, hi } = Scale::for_values(true, &[35.0, 1_200.0]) else {
            panic!("log expected");
        };
        assert_eq!((lo, hi), (1, 4));
        let scale = Scale::Log { lo: 1, hi: 4 };
        assert!((scale.x(100.0) - PLOT / 3.0).abs() < 1e-9);
        assert_eq!(scale.x(0.0), 0.0);
        let Scale::Linear { max } = Scale::for_values(false, &[0.0, 1.3]) else {
            panic!("linear expected");
        };
        assert_eq!(max, 2.0);
    }

    #[test]
    fn escapes_text() {
        assert_eq!(escape("a < b & c"), "a &lt; b &amp; c");
    }
}
