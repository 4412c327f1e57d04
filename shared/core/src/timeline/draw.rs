//! Where each part of a timeline goes (`Layout`), and the picture drawn there: a standalone SVG,
//! or an HTML page holding it above the decisions it shows.
//!
//! Pure: a `Timeline` in, text out. `Timeline::layout` gives the geometry the lanes and markers
//! are drawn from, so a test can check the picture where it should be.

use super::lanes::{status_word, MarkerKind, Timeline, ROLLOUT_BAND_COLOUR};
use crate::history::{describe, HistoryEntry};
use crate::ids::{ImageId, InstanceId};
use crate::model::Timestamp;
use chrono::{DateTime, Utc};
use std::fmt::Write as _;

// ---------------------------------------------------------------------------------------------
// Geometry
// ---------------------------------------------------------------------------------------------

pub const WIDTH: f64 = 1000.0;
const PLOT_LEFT: f64 = 170.0;
const PLOT_RIGHT: f64 = 24.0;
const PLOT_TOP: f64 = 104.0;
const LANE_PITCH: f64 = 22.0;
const BAR_HEIGHT: f64 = 12.0;
const AXIS_SPACE: f64 = 44.0;

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Rect {
    pub x: f64,
    pub y: f64,
    pub w: f64,
    pub h: f64,
}

impl Rect {
    pub fn centre(&self) -> (f64, f64) {
        (self.x + self.w / 2.0, self.y + self.h / 2.0)
    }
    pub fn bottom(&self) -> f64 {
        self.y + self.h
    }
    pub fn right(&self) -> f64 {
        self.x + self.w
    }
}

/// Where a lane's bar is, and in which colour.
#[derive(Debug, Clone, PartialEq)]
pub struct LaneBox {
    pub instance: InstanceId,
    pub image: ImageId,
    pub colour: &'static str,
    pub bar: Rect,
}

/// Where a marker is: a point on a lane, or a vertical line across the plot at `x`.
#[derive(Debug, Clone, PartialEq)]
pub struct MarkerPos {
    pub kind: MarkerKind,
    pub x: f64,
    pub y: f64,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Layout {
    pub width: f64,
    pub height: f64,
    /// The area lanes and markers are drawn in (the legend and the axis are outside it).
    pub plot: Rect,
    pub lanes: Vec<LaneBox>,
    pub markers: Vec<MarkerPos>,
}

impl Timeline {
    fn span_secs(&self) -> f64 {
        (self.end - self.start).num_milliseconds().max(1) as f64 / 1000.0
    }

    fn plot(&self) -> Rect {
        Rect {
            x: PLOT_LEFT,
            y: PLOT_TOP,
            w: WIDTH - PLOT_LEFT - PLOT_RIGHT,
            h: (self.lanes.len().max(1) as f64) * LANE_PITCH + 8.0,
        }
    }

    /// The x of a moment, clamped to the plot.
    pub fn x(&self, t: Timestamp) -> f64 {
        let plot = self.plot();
        let secs = (t - self.start).num_milliseconds() as f64 / 1000.0;
        let frac = (secs / self.span_secs()).clamp(0.0, 1.0);
        plot.x + frac * plot.w
    }

    pub fn layout(&self) -> Layout {
        let plot = self.plot();
        let lanes: Vec<LaneBox> = self
            .lanes
            .iter()
            .enumerate()
            .map(|(n, l)| {
                let x0 = self.x(l.from);
                let x1 = l.to.map_or(plot.right(), |t| self.x(t)).max(x0 + 2.0);
                LaneBox {
                    instance: l.instance.clone(),
                    image: l.image.clone(),
                    colour: self.colour_of(&l.image),
                    bar: Rect {
                        x: x0,
                        y: plot.y + 4.0 + n as f64 * LANE_PITCH + (LANE_PITCH - BAR_HEIGHT) / 2.0,
                        w: x1 - x0,
                        h: BAR_HEIGHT,
                    },
                }
            })
            .collect();
        let markers = self
            .markers
            .iter()
            .filter_map(|m| {
                let x = self.x(m.at);
                if m.kind.on_lane() {
                    let lane = lanes
                        .iter()
                        .find(|l| Some(&l.instance) == m.instance.as_ref())?;
                    Some(MarkerPos {
                        kind: m.kind,
                        x,
                        y: lane.bar.centre().1,
                    })
                } else {
                    Some(MarkerPos {
                        kind: m.kind,
                        x,
                        y: plot.y,
                    })
                }
            })
            .collect();
        Layout {
            width: WIDTH,
            height: plot.bottom() + AXIS_SPACE,
            plot,
            lanes,
            markers,
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Drawing
// ---------------------------------------------------------------------------------------------

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

fn hms(t: Timestamp) -> String {
    t.format("%H:%M:%S").to_string()
}

/// Axis ticks: a round step giving at most 8 of them.
fn ticks(start: Timestamp, end: Timestamp) -> (i64, Vec<Timestamp>) {
    const STEPS: [i64; 18] = [
        1, 2, 5, 10, 15, 30, 60, 120, 300, 600, 900, 1800, 3600, 7200, 10800, 21600, 43200, 86400,
    ];
    let span = (end - start).num_seconds().max(1);
    let step = STEPS
        .iter()
        .copied()
        .find(|s| span / s <= 8)
        .unwrap_or(86400 * (span / (86400 * 8) + 1));
    let mut t = (start.timestamp() / step + 1) * step;
    let mut out = Vec::new();
    while t <= end.timestamp() {
        if let Some(ts) = DateTime::<Utc>::from_timestamp(t, 0) {
            out.push(ts);
        }
        t += step;
    }
    (step, out)
}

/// The timeline as a standalone SVG document.
pub fn render_svg(tl: &Timeline) -> String {
    let layout = tl.layout();
    let plot = layout.plot;
    let mut s = String::new();
    let w = |s: &mut String, text: String| {
        s.push_str(&text);
        s.push('\n');
    };
    w(
        &mut s,
        format!(
            r#"<svg xmlns="http://www.w3.org/2000/svg" width="{:.0}" height="{:.0}" viewBox="0 0 {:.0} {:.0}" font-family="DejaVu Sans, Helvetica, Arial, sans-serif" font-size="12">"#,
            layout.width, layout.height, layout.width, layout.height
        ),
    );
    w(
        &mut s,
        format!(
            r##"<rect x="0" y="0" width="{:.0}" height="{:.0}" fill="#ffffff"/>"##,
            layout.width, layout.height
        ),
    );

    // Title and legend.
    w(
        &mut s,
        format!(
            r##"<text x="16" y="24" font-size="16" font-weight="bold" fill="#222">fleet {}</text>"##,
            esc(tl.fleet.as_str())
        ),
    );
    w(
        &mut s,
        format!(
            r##"<text x="16" y="42" fill="#555">{} to {} UTC · {} instances · {} images</text>"##,
            tl.start.format("%Y-%m-%d %H:%M:%S"),
            if tl.start.date_naive() == tl.end.date_naive() {
                hms(tl.end)
            } else {
                tl.end.format("%Y-%m-%d %H:%M:%S").to_string()
            },
            tl.lanes.len(),
            tl.images.len()
        ),
    );
    let mut x = 16.0;
    let legend_y = 62.0;
    s.push_str(r#"<g class="legend">"#);
    s.push('\n');
    for image in &tl.images {
        w(
            &mut s,
            format!(
                r##"<rect x="{x:.1}" y="{:.1}" width="18" height="10" rx="2" fill="{}"/><text x="{:.1}" y="{:.1}" fill="#222">{}</text>"##,
                legend_y - 9.0,
                tl.colour_of(image),
                x + 23.0,
                legend_y,
                esc(image.as_str())
            ),
        );
        x += 23.0 + 7.0 * image.as_str().len() as f64 + 18.0;
    }
    let keys = [
        MarkerKind::HealthFailed,
        MarkerKind::Rollback,
        MarkerKind::BreakerTrip,
    ];
    for kind in keys {
        let glyph = match kind {
            MarkerKind::HealthFailed | MarkerKind::Vanished => format!(
                r##"<circle cx="{:.1}" cy="{:.1}" r="5" fill="{}"/>"##,
                x + 5.0,
                legend_y - 4.0,
                kind.colour()
            ),
            MarkerKind::Rollback => format!(
                r##"<line x1="{:.1}" y1="{:.1}" x2="{:.1}" y2="{:.1}" stroke="{}" stroke-width="3"/>"##,
                x + 5.0,
                legend_y - 11.0,
                x + 5.0,
                legend_y + 2.0,
                kind.colour()
            ),
            MarkerKind::BreakerTrip => format!(
                r##"<line x1="{:.1}" y1="{:.1}" x2="{:.1}" y2="{:.1}" stroke="{}" stroke-width="3" stroke-dasharray="4 2"/>"##,
                x + 5.0,
                legend_y - 11.0,
                x + 5.0,
                legend_y + 2.0,
                kind.colour()
            ),
        };
        w(
            &mut s,
            format!(
                r##"{glyph}<text x="{:.1}" y="{legend_y:.1}" fill="#222">{}</text>"##,
                x + 15.0,
                kind.name()
            ),
        );
        x += 15.0 + 7.0 * kind.name().len() as f64 + 18.0;
    }
    s.push_str("</g>\n");

    // Plot background, rollout bands, waves.
    w(
        &mut s,
        format!(
            r##"<rect class="plot" x="{:.1}" y="{:.1}" width="{:.1}" height="{:.1}" fill="#ffffff" stroke="#d0d5dc"/>"##,
            plot.x, plot.y, plot.w, plot.h
        ),
    );
    for (n, r) in tl.rollouts.iter().enumerate() {
        let x0 = tl.x(r.start);
        let x1 = r.end.map_or(plot.right(), |t| tl.x(t)).max(x0 + 1.0);
        let label_y = plot.y - 8.0 - 14.0 * (n % 2) as f64;
        let from = r
            .from
            .as_ref()
            .map(|i| format!("{i} → "))
            .unwrap_or_default();
        w(
            &mut s,
            format!(
                r##"<g class="rollout"><title>rollout {} {from}{}: {}</title><rect x="{x0:.1}" y="{:.1}" width="{:.1}" height="{:.1}" fill="{ROLLOUT_BAND_COLOUR}"/><text x="{:.1}" y="{label_y:.1}" fill="#445" font-size="11">rollout {}: {from}{} ({})</text></g>"##,
                r.id,
                esc(r.to.as_str()),
                status_word(r.status),
                plot.y + 0.5,
                x1 - x0,
                plot.h - 1.0,
                x0 + 2.0,
                r.id,
                esc(r.to.as_str()),
                status_word(r.status)
            ),
        );
        // Labels of waves too close to the previous label are left out (the line stays).
        let mut last_label = f64::NEG_INFINITY;
        for (k, t) in r.waves.iter().enumerate() {
            let wx = tl.x(*t);
            let label = if wx - last_label >= 20.0 {
                last_label = wx;
                format!(
                    r##"<text x="{:.1}" y="{:.1}" fill="#667" font-size="9">w{}</text>"##,
                    wx + 2.0,
                    plot.y + 9.0,
                    k + 1
                )
            } else {
                String::new()
            };
            w(
                &mut s,
                format!(
                    r##"<g class="wave"><title>wave {} started at {}</title><line x1="{wx:.1}" y1="{:.1}" x2="{wx:.1}" y2="{:.1}" stroke="#9aa5b1" stroke-width="1" stroke-dasharray="2 3"/>{label}</g>"##,
                    k + 1,
                    hms(*t),
                    plot.y,
                    plot.bottom(),
                ),
            );
        }
    }

    // Lanes.
    for (n, lane) in layout.lanes.iter().enumerate() {
        let l = &tl.lanes[n];
        let row_y = lane.bar.centre().1;
        let until = l.to.map(hms).unwrap_or_else(|| "still running".into());
        w(
            &mut s,
            format!(
                r##"<g class="lane" data-instance="{}" data-image="{}"><title>{} on {}: {} to {}{}</title><text x="{:.1}" y="{:.1}" font-family="DejaVu Sans Mono, Menlo, monospace" font-size="11" fill="#333">{}</text><line x1="{:.1}" y1="{row_y:.1}" x2="{:.1}" y2="{row_y:.1}" stroke="#eef0f3"/><rect x="{:.1}" y="{:.1}" width="{:.1}" height="{:.1}" rx="3" fill="{}"/></g>"##,
                esc(lane.instance.as_str()),
                esc(lane.image.as_str()),
                esc(lane.instance.as_str()),
                esc(lane.image.as_str()),
                hms(l.from),
                until,
                l.healthy_at
                    .map(|t| format!(", healthy at {}", hms(t)))
                    .unwrap_or_default(),
                plot.x - 8.0 - 6.6 * lane.instance.as_str().len() as f64,
                row_y + 4.0,
                esc(lane.instance.as_str()),
                plot.x,
                plot.right(),
                lane.bar.x,
                lane.bar.y,
                lane.bar.w,
                lane.bar.h,
                lane.colour
            ),
        );
    }

    // Draining (or held by the terminating hook) until it went: the end of its bar, faded.
    for (n, lane) in layout.lanes.iter().enumerate() {
        let Some(t) = tl.lanes[n].leaving_at else {
            continue;
        };
        let x = tl.x(t).clamp(lane.bar.x, lane.bar.right());
        w(
            &mut s,
            format!(
                r##"<rect class="draining" x="{x:.1}" y="{:.1}" width="{:.1}" height="{:.1}" fill="#ffffff" fill-opacity="0.6"><title>{} out of the load balancers from {}</title></rect>"##,
                lane.bar.y,
                (lane.bar.right() - x).max(0.0),
                lane.bar.h,
                esc(lane.instance.as_str()),
                hms(t),
            ),
        );
    }

    // Markers, on top.
    for (m, pos) in tl.markers.iter().zip(layout.markers.iter()) {
        let title = format!(
            "<title>{} at {}: {}</title>",
            m.kind.name(),
            hms(m.at),
            esc(&m.detail)
        );
        let body = match m.kind {
            MarkerKind::HealthFailed => format!(
                r##"<circle cx="{x:.1}" cy="{y:.1}" r="7" fill="{c}" stroke="#ffffff" stroke-width="1.5"/><path d="M {:.1} {:.1} L {:.1} {:.1} M {:.1} {:.1} L {:.1} {:.1}" stroke="#ffffff" stroke-width="1.8"/>"##,
                pos.x - 3.0,
                pos.y - 3.0,
                pos.x + 3.0,
                pos.y + 3.0,
                pos.x - 3.0,
                pos.y + 3.0,
                pos.x + 3.0,
                pos.y - 3.0,
                x = pos.x,
                y = pos.y,
                c = m.kind.colour()
            ),
            MarkerKind::Vanished => format!(
                r##"<path d="M {:.1} {:.1} L {:.1} {:.1} L {:.1} {:.1} L {:.1} {:.1} Z" fill="{}" stroke="#ffffff" stroke-width="1.5"/>"##,
                pos.x,
                pos.y - 8.0,
                pos.x + 8.0,
                pos.y,
                pos.x,
                pos.y + 8.0,
                pos.x - 8.0,
                pos.y,
                m.kind.colour()
            ),
            MarkerKind::Rollback | MarkerKind::BreakerTrip => format!(
                r##"<line x1="{x:.1}" y1="{:.1}" x2="{x:.1}" y2="{:.1}" stroke="{}" stroke-width="3"{}/><text x="{:.1}" y="{:.1}" fill="{}" font-size="10" font-weight="bold">{}</text>"##,
                plot.y,
                plot.bottom(),
                m.kind.colour(),
                if m.kind == MarkerKind::BreakerTrip {
                    r#" stroke-dasharray="6 3""#
                } else {
                    ""
                },
                pos.x + 4.0,
                plot.bottom() - 4.0,
                m.kind.colour(),
                m.kind.name(),
                x = pos.x
            ),
        };
        w(
            &mut s,
            format!(
                r#"<g class="marker" data-kind="{}">{title}{body}</g>"#,
                m.kind.name()
            ),
        );
    }

    // Time axis.
    let axis_y = plot.bottom();
    let (step, ticks) = ticks(tl.start, tl.end);
    s.push_str(r#"<g class="axis">"#);
    s.push('\n');
    for t in ticks {
        let tx = tl.x(t);
        let label = if step >= 86400 {
            t.format("%m-%d").to_string()
        } else if step >= 60 {
            t.format("%H:%M").to_string()
        } else {
            hms(t)
        };
        w(
            &mut s,
            format!(
                r##"<line x1="{tx:.1}" y1="{axis_y:.1}" x2="{tx:.1}" y2="{:.1}" stroke="#8a939e"/><text x="{tx:.1}" y="{:.1}" text-anchor="middle" fill="#555" font-size="11">{label}</text>"##,
                axis_y + 5.0,
                axis_y + 18.0
            ),
        );
    }
    w(
        &mut s,
        format!(
            r##"<text x="{:.1}" y="{:.1}" text-anchor="end" fill="#777" font-size="10">time (UTC)</text>"##,
            plot.right(),
            axis_y + 34.0
        ),
    );
    s.push_str("</g>\n</svg>\n");
    s
}

/// A standalone HTML page: the timeline and the decisions it shows.
pub fn render_html(tl: &Timeline, entries: &[HistoryEntry]) -> String {
    let mut s = String::new();
    let _ = write!(
        s,
        "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>fleet {} timeline</title>\n\
         <style>body{{font-family:system-ui,sans-serif;margin:24px;color:#222}}\
         table{{border-collapse:collapse;font-size:13px}}td,th{{padding:3px 8px;border-bottom:1px solid #e3e6ea;text-align:left;vertical-align:top}}\
         code{{font-size:12px}}</style></head><body>\n<h1>fleet {}</h1>\n",
        esc(tl.fleet.as_str()),
        esc(tl.fleet.as_str())
    );
    s.push_str(&render_svg(tl));
    s.push_str("<h2>Decisions</h2>\n<table><tr><th>version</th><th>time (UTC)</th><th>cause</th><th>changes</th></tr>\n");
    for e in entries
        .iter()
        .filter(|e| e.at >= tl.start && e.at <= tl.end)
    {
        let changes: Vec<String> = e.changes.iter().map(|c| esc(&describe(c))).collect();
        let _ = writeln!(
            s,
            "<tr><td>v{}</td><td>{}</td><td>{}{}</td><td>{}</td></tr>",
            e.version,
            e.at.format("%Y-%m-%d %H:%M:%S%.3f"),
            esc(&e.cause.detail_type),
            e.cause
                .event_id
                .as_deref()
                .map(|id| format!("<br><code>{}</code>", esc(id)))
                .unwrap_or_default(),
            changes.join("<br>")
        );
    }
    s.push_str("</table>\n</body></html>\n");
    s
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::events::{Cause, Change};
    use crate::model::{Fleet, FleetSpec, Health, Instance, Rollout, RolloutStatus};
    use crate::timeline::lanes::Window;
    use chrono::{Duration, TimeZone};

    fn t(s: i64) -> Timestamp {
        Utc.with_ymd_and_hms(2025, 3, 1, 12, 0, 0).unwrap() + Duration::seconds(s)
    }

    /// Built from the stored form, so fields added later take their defaults.
    fn inst(id: &str, image: &str, from: i64, to: Option<i64>) -> Instance {
        serde_json::from_value(serde_json::json!({
            "id": id,
            "image": image,
            "launched_at": t(from),
            "state": if to.is_some() { "terminated" } else { "running" },
            "health": {"status": "healthy"},
            "token": "web-x-1-0",
            "terminated_at": to.map(t),
        }))
        .unwrap()
    }

    fn entry(
        version: u64,
        at: i64,
        fleet: &Fleet,
        changes: Vec<Change>,
        insts: Vec<Instance>,
    ) -> HistoryEntry {
        let mut state = fleet.clone();
        state.version = version;
        HistoryEntry {
            fleet: fleet.spec.name.clone(),
            version,
            at: t(at),
            cause: Cause::internal("Test"),
            changes,
            state,
            instances: insts,
        }
    }

    fn sample() -> Vec<HistoryEntry> {
        let spec = FleetSpec::from_yaml(
            "name: web\nimage: ami-0000000a\ncapacity: 2\ninstance_type: t3.micro\n",
        )
        .unwrap();
        let mut fleet = Fleet::new(spec, t(0));
        let e1 = entry(1, 0, &fleet, vec![], vec![]);
        let e2 = entry(
            2,
            10,
            &fleet,
            vec![],
            vec![
                inst("i-00000001", "ami-0000000a", 5, None),
                inst("i-00000002", "ami-0000000a", 5, None),
            ],
        );
        fleet.rollout = Some(
            serde_json::from_value::<Rollout>(serde_json::json!({
                "id": 1,
                "from": "ami-0000000a",
                "to": "ami-0000000b",
                "status": "in_progress",
                "started_at": t(20),
                "waves": [{"number": 1, "started_at": t(20), "tokens": [], "launched": []}],
            }))
            .unwrap(),
        );
        let e3 = entry(
            3,
            30,
            &fleet,
            vec![Change::HealthChanged {
                instance: InstanceId::parse("i-00000001").unwrap(),
                health: Health::failed("503"),
            }],
            vec![
                inst("i-00000001", "ami-0000000a", 5, Some(40)),
                inst("i-00000003", "ami-0000000b", 25, None),
            ],
        );
        if let Some(r) = fleet.rollout.as_mut() {
            r.status = RolloutStatus::RollingBack;
        }
        let e4 = entry(4, 50, &fleet, vec![], vec![]);
        vec![e1, e2, e3, e4]
    }

    #[test]
    fn lanes_markers_and_rollouts_come_from_the_history() {
        let tl = Timeline::from_history(&sample(), Window::default()).unwrap();
        assert_eq!(tl.lanes.len(), 3);
        assert_eq!(tl.images.len(), 2);
        assert_ne!(
            tl.colour_of(&tl.lanes[0].image),
            tl.colour_of(&tl.lanes[2].image)
        );
        assert_eq!(tl.lanes[0].to, Some(t(40)));
        let kinds: Vec<MarkerKind> = tl.markers.iter().map(|m| m.kind).collect();
        assert_eq!(kinds, vec![MarkerKind::HealthFailed, MarkerKind::Rollback]);
        assert_eq!(tl.rollouts.len(), 1);
        assert_eq!(tl.rollouts[0].waves.len(), 1);

        let svg = render_svg(&tl);
        assert_eq!(svg.matches(r#"<g class="lane""#).count(), 3);
        assert_eq!(svg.matches(r#"<g class="marker""#).count(), 2);
        assert!(svg.starts_with("<svg") && svg.trim_end().ends_with("</svg>"));
        let html = render_html(&tl, &sample());
        assert!(html.contains("<svg") && html.contains("<td>v3</td>"));
    }

    #[test]
    fn a_window_keeps_only_what_overlaps_it() {
        let window = Window {
            since: Some(t(45)),
            until: Some(t(60)),
        };
        let tl = Timeline::from_history(&sample(), window).unwrap();
        // i-00000001 ended at 40: outside.
        assert_eq!(tl.lanes.len(), 2);
        assert!(tl.markers.iter().all(|m| m.kind == MarkerKind::Rollback));
        let layout = tl.layout();
        assert!(layout
            .lanes
            .iter()
            .all(|l| l.bar.x >= layout.plot.x && l.bar.right() <= layout.plot.right() + 0.01));
    }

    #[test]
    fn axis_ticks_are_round_and_few() {
        let (step, ticks) = ticks(t(0), t(300));
        assert_eq!(step, 60);
        assert_eq!(ticks.len(), 5);
        let (step, _) = ticks_of(7);
        assert_eq!(step, 1);
    }

    fn ticks_of(secs: i64) -> (i64, Vec<Timestamp>) {
        ticks(t(0), t(secs))
    }
}
