//! The rollout timeline: a fleet's history drawn as a picture. Time runs left to right; each
//! instance is a lane from its launch to its termination, coloured by its image; markers show
//! failed health checks, instances that vanished, rollbacks and circuit-breaker trips; shaded
//! bands show rollouts and dotted lines their waves.
//!
//! Pure: history entries in, an SVG (or an HTML page holding it) out. Two files: `lanes` reads
//! what to show from the history (`Timeline::from_history`), `draw` places it (`Layout`) and
//! draws it (`render_svg`, `render_html`).

mod draw;
mod lanes;

pub use draw::{render_html, render_svg, LaneBox, Layout, MarkerPos, Rect, WIDTH};
pub use lanes::{
    Lane, Marker, MarkerKind, RolloutSpan, Timeline, Window, BREAKER_COLOUR, HEALTH_FAILED_COLOUR,
    IMAGE_COLOURS, ROLLBACK_COLOUR, ROLLOUT_BAND_COLOUR,
};
