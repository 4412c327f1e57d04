//! The rollout timeline: a fleet's history drawn as a picture. Time runs left to right; each
//! instance is a lane from its launch to its termination, coloured by its image; markers show
//! failed health checks, instances that vanished, rollbacks and circuit-breaker trips; shaded
//! bands show rollouts and dotted lines their waves.
//!
//! Pure: history entries in, an SVG (or an HTML page holding it) out. `Timeline::layout` gives
//! the geometry the SVG is drawn from, so a test can check the picture where it should be.

use crate::events::Change;
use crate::history::{describe, is_breaker_trip, is_rollback, HistoryEntry};
use crate::ids::{FleetName, ImageId, InstanceId};
use crate::model::{Health, RolloutStatus, Timestamp};
use chrono::{DateTime, Duration, Utc};
use std::collections::BTreeMap;
use std::fmt::Write as _;

/// Lane colours, one per image in order of first appearance (Tableau 10 without its red and
/// orange, which the markers use). More images than colours reuse them in order.
pub const IMAGE_COLOURS: [&str; 8] = [
    "#4e79a7", "#59a14f", "#b07aa1", "#76b7b2", "#edc948", "#9c755f", "#ff9da7", "#bab0ac",
];
pub const HEALTH_FAILED_COLOUR: &str = "#e15759";
pub const ROLLBACK_COLOUR: &str = "#f28e2b";
pub const BREAKER_COLOUR: &str = "#1f1f1f";
pub const ROLLOUT_BAND_COLOUR: &str = "#e8edf4";

/// What to draw: the moments between `since` and `until` (either open: from the first entry, to
/// the last).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Window {
    pub since: Option<Timestamp>,
    pub until: Option<Timestamp>,
}

/// One instance's life.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lane {
    pub instance: InstanceId,
    pub image: ImageId,
    pub from: Timestamp,
    /// When it was terminated (or found gone); `None` while it lives.
    pub to: Option<Timestamp>,
    pub healthy_at: Option<Timestamp>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum MarkerKind {
    /// A failed health check (on its instance's lane).
    HealthFailed,
    /// An instance that went away outside phoenix (on its lane).
    Vanished,
    /// A rollout started rolling back (across every lane).
    Rollback,
    /// A circuit breaker stopped replacements (across every lane).
    BreakerTrip,
}

impl MarkerKind {
    pub fn colour(self) -> &'static str {
        match self {
            MarkerKind::HealthFailed | MarkerKind::Vanished => HEALTH_FAILED_COLOUR,
            MarkerKind::Rollback => ROLLBACK_COLOUR,
            MarkerKind::BreakerTrip => BREAKER_COLOUR,
        }
    }
    pub fn name(self) -> &'static str {
        match self {
            MarkerKind::HealthFailed => "health check failed",
            MarkerKind::Vanished => "vanished",
            MarkerKind::Rollback => "rollback",
            MarkerKind::BreakerTrip => "breaker tripped",
        }
    }
    /// Drawn on one lane (else across the whole plot).
    pub fn on_lane(self) -> bool {
        matches!(self, MarkerKind::HealthFailed | MarkerKind::Vanished)
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Marker {
    pub kind: MarkerKind,
    pub at: Timestamp,
    pub instance: Option<InstanceId>,
    /// What happened, for the tooltip.
    pub detail: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RolloutSpan {
    pub id: u64,
    pub from: Option<ImageId>,
    pub to: ImageId,
    pub status: RolloutStatus,
    pub start: Timestamp,
    pub end: Option<Timestamp>,
    /// When each wave started.
    pub waves: Vec<Timestamp>,
}

/// Everything the picture shows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Timeline {
    pub fleet: FleetName,
    pub start: Timestamp,
    pub end: Timestamp,
    /// Images in legend order (first appearance); lane colours follow it.
    pub images: Vec<ImageId>,
    /// Oldest launch first.
    pub lanes: Vec<Lane>,
    pub markers: Vec<Marker>,
    pub rollouts: Vec<RolloutSpan>,
}

fn status_word(s: RolloutStatus) -> String {
    serde_json::to_value(s)
        .ok()
        .and_then(|v| v.as_str().map(|s| s.replace('_', " ")))
        .unwrap_or_default()
}

impl Timeline {
    /// The timeline of `entries` (in version order) within `window`. `None` without entries.
    pub fn from_history(entries: &[HistoryEntry], window: Window) -> Option<Timeline> {
        let entries: Vec<&HistoryEntry> = entries
            .iter()
            .filter(|e| window.until.is_none_or(|u| e.at <= u))
            .collect();
        let first = entries.first()?;
        let fleet = first.fleet.clone();

        let mut lanes: BTreeMap<InstanceId, Lane> = BTreeMap::new();
        let mut markers = Vec::new();
        let mut rollouts: BTreeMap<u64, RolloutSpan> = BTreeMap::new();
        let mut images: Vec<ImageId> = vec![first.state.spec.image.clone()];
        let mut previous_status: Option<(u64, RolloutStatus)> = None;
        for entry in &entries {
            for inst in &entry.instances {
                let lane = lanes.entry(inst.id.clone()).or_insert_with(|| Lane {
                    instance: inst.id.clone(),
                    image: inst.image.clone(),
                    from: inst.launched_at,
                    to: None,
                    healthy_at: None,
                });
                lane.image = inst.image.clone();
                lane.from = inst.launched_at;
                lane.to = inst.terminated_at;
            }
            let mut rollback_here = false;
            for change in &entry.changes {
                match change {
                    Change::HealthChanged {
                        instance,
                        health: Health::Healthy,
                    } => {
                        if let Some(l) = lanes.get_mut(instance) {
                            l.healthy_at.get_or_insert(entry.at);
                        }
                    }
                    Change::HealthChanged {
                        instance,
                        health: Health::Unhealthy { reason },
                    } => markers.push(Marker {
                        kind: MarkerKind::HealthFailed,
                        at: entry.at,
                        instance: Some(instance.clone()),
                        detail: format!(
                            "{instance} failed: {reason} ({}{})",
                            entry.cause.detail_type,
                            entry
                                .cause
                                .event_id
                                .as_deref()
                                .map(|id| format!(" event {id}"))
                                .unwrap_or_default()
                        ),
                    }),
                    Change::Vanished { instance, state } => markers.push(Marker {
                        kind: MarkerKind::Vanished,
                        at: entry.at,
                        instance: Some(instance.clone()),
                        detail: format!("{instance} vanished ({state})"),
                    }),
                    c if is_breaker_trip(c) => markers.push(Marker {
                        kind: MarkerKind::BreakerTrip,
                        at: entry.at,
                        instance: None,
                        detail: describe(c),
                    }),
                    c if is_rollback(c) && !rollback_here => {
                        rollback_here = true;
                        markers.push(Marker {
                            kind: MarkerKind::Rollback,
                            at: entry.at,
                            instance: None,
                            detail: describe(c),
                        });
                    }
                    _ => {}
                }
            }
            if let Some(r) = &entry.state.rollout {
                let span = rollouts.entry(r.id).or_insert_with(|| RolloutSpan {
                    id: r.id,
                    from: r.from.clone(),
                    to: r.to.clone(),
                    status: r.status,
                    start: r.started_at,
                    end: None,
                    waves: Vec::new(),
                });
                span.status = r.status;
                span.end = r.finished_at;
                span.waves = r.waves.iter().map(|w| w.started_at).collect();
                // A rollout that turned to rolling back (or rolled back) without a change saying
                // so is a rollback all the same.
                let turned = matches!(
                    r.status,
                    RolloutStatus::RollingBack | RolloutStatus::RolledBack
                ) && previous_status.is_none_or(|(id, s)| {
                    id != r.id
                        || !matches!(s, RolloutStatus::RollingBack | RolloutStatus::RolledBack)
                });
                if turned && !rollback_here {
                    markers.push(Marker {
                        kind: MarkerKind::Rollback,
                        at: entry.at,
                        instance: None,
                        detail: format!("rollout {} {}", r.id, status_word(r.status)),
                    });
                }
                previous_status = Some((r.id, r.status));
                if !images.contains(&r.to) {
                    images.push(r.to.clone());
                }
            }
        }

        let last_at = entries.last().map_or(first.at, |e| e.at);
        let mut lanes: Vec<Lane> = lanes.into_values().collect();
        lanes.sort_by(|a, b| (a.from, &a.instance).cmp(&(b.from, &b.instance)));
        let earliest = lanes.iter().map(|l| l.from).min().unwrap_or(first.at);
        let start = window.since.unwrap_or(first.at.min(earliest));
        let latest = lanes
            .iter()
            .filter_map(|l| l.to)
            .max()
            .unwrap_or(last_at)
            .max(last_at);
        let mut end = window.until.unwrap_or(latest);
        if end <= start {
            end = start + Duration::seconds(1);
        }
        lanes.retain(|l| l.from <= end && l.to.is_none_or(|t| t >= start));
        for lane in &lanes {
            if !images.contains(&lane.image) {
                images.push(lane.image.clone());
            }
        }
        images.retain(|i| lanes.iter().any(|l| &l.image == i));
        markers.retain(|m| {
            m.at >= start
                && m.at <= end
                && m.instance
                    .as_ref()
                    .is_none_or(|id| lanes.iter().any(|l| &l.instance == id))
        });
        let rollouts = rollouts
            .into_values()
            .filter(|r| r.start <= end && r.end.is_none_or(|e| e >= start))
            .collect();
        Some(Timeline {
            fleet,
            start,
            end,
            images,
            lanes,
            markers,
            rollouts,
        })
    }

    /// The colour of an image's lanes.
    pub fn colour_of(&self, image: &ImageId) -> &'static str {
        let n = self.images.iter().position(|i| i == image).unwrap_or(0);
        IMAGE_COLOURS[n % IMAGE_COLOURS.len()]
    }
}

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
    use crate::events::Cause;
    use crate::model::{Fleet, FleetSpec, Instance, Rollout};
    use chrono::TimeZone;

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
                health: Health::Unhealthy {
                    reason: "503".into(),
                },
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
