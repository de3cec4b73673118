//! The picture's layout and drawing: where every row goes, the colours, the time axis, and
//! the SVG text.

use std::collections::BTreeMap;
use std::fmt::{self, Write as _};
use std::time::Duration;

use super::GpuRow;
use super::record::{Hold, Record, distinct_ids};

/// `record` over GPUs `gpus` as a standalone SVG document, titled `title`.
pub(super) fn draw(title: &str, gpus: &[GpuRow], record: &Record) -> String {
    let mut svg = Svg(String::new());
    Picture::new(title, gpus, record).draw(&mut svg);
    svg.0
}

/// A fill and the text colour that reads on it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct Colour {
    /// 0xRRGGBB.
    rgb: u32,
    ink: &'static str,
}

impl Colour {
    /// The fill as SVG writes it, `#rrggbb`.
    pub(super) fn fill(self) -> String {
        format!("#{:06x}", self.rgb)
    }
}

/// Job `rank`'s colour: hues a golden angle (137.5°) apart, so that each next job lands in the
/// widest gap left, and three lightnesses in turn, so that the jobs whose hues come close again
/// (8 or 13 apart) still differ in lightness. Twenty jobs side by side all differ (a test
/// checks how much); the bars also carry the job's name or number where it fits.
pub(super) fn colour_of(rank: usize) -> Colour {
    const GOLDEN_ANGLE: f64 = 137.507_764;
    const LIGHTNESS: [f64; 3] = [0.45, 0.62, 0.34];
    let hue = (rank as f64 * GOLDEN_ANGLE).rem_euclid(360.0) / 360.0;
    let (r, g, b) = hsl_to_rgb(hue, 0.62, LIGHTNESS[rank % LIGHTNESS.len()]);
    // Relative luminance (sRGB weights, ignoring gamma): dark text on light fills.
    let luminance = 0.2126 * r + 0.7152 * g + 0.0722 * b;
    let byte = |x: f64| (x * 255.0).round().clamp(0.0, 255.0) as u32;
    Colour { rgb: byte(r) << 16 | byte(g) << 8 | byte(b), ink: if luminance > 0.5 { "#1a1a1a" } else { "#ffffff" } }
}

/// HSL (each 0..=1) to RGB (each 0..=1).
fn hsl_to_rgb(h: f64, s: f64, l: f64) -> (f64, f64, f64) {
    let q = if l < 0.5 { l * (1.0 + s) } else { l + s - l * s };
    let p = 2.0 * l - q;
    let channel = |t: f64| {
        let t = t.rem_euclid(1.0);
        if t < 1.0 / 6.0 {
            p + (q - p) * 6.0 * t
        } else if t < 0.5 {
            q
        } else if t < 2.0 / 3.0 {
            p + (q - p) * (2.0 / 3.0 - t) * 6.0
        } else {
            p
        }
    };
    (channel(h + 1.0 / 3.0), channel(h), channel(h - 1.0 / 3.0))
}

const UNKNOWN: Colour = Colour { rgb: 0xbab0ac, ink: "#1a1a1a" };

const WIDTH: f64 = 1200.0;
const MARGIN: f64 = 20.0;
const PLOT_LEFT: f64 = 230.0;
const PLOT_RIGHT: f64 = WIDTH - 30.0;
const GPU_PITCH: f64 = 32.0;
const GPU_BAR: f64 = 26.0;
const CLIENT_PITCH: f64 = 20.0;
const CLIENT_BAR: f64 = 14.0;
const UTIL_HEIGHT: f64 = 80.0;
const SECTION_GAP: f64 = 30.0;
const LEGEND_COLUMNS: usize = 4;
const LEGEND_PITCH: f64 = 22.0;
/// Characters that fit: row labels left of the plot, legend entries, the title.
const LABEL_CHARS: usize = 30;
const LEGEND_CHARS: usize = 40;
const TITLE_CHARS: usize = 100;
/// Average advance of a character of 11 px sans-serif, to decide whether a name fits a bar.
const CHAR_WIDTH_11PX: f64 = 6.4;

/// The SVG being written.
struct Svg(String);

impl Svg {
    fn put(&mut self, line: fmt::Arguments<'_>) {
        // Writing into a String cannot fail.
        let _ = self.0.write_fmt(line);
        self.0.push('\n');
    }
}

/// Where everything goes: y positions computed up front, so the time grid can be drawn first
/// and lie under the bars.
struct Picture<'a> {
    title: &'a str,
    gpus: &'a [GpuRow],
    record: &'a Record,
    /// The time the plot's width stands for: the record's span, or one second if it has none.
    span: f64,
    colours: BTreeMap<u64, Colour>,
    gpu_top: f64,
    client_top: f64,
    util_top: f64,
    legend_top: f64,
    height: f64,
}

impl<'a> Picture<'a> {
    fn new(title: &'a str, gpus: &'a [GpuRow], record: &'a Record) -> Self {
        let colours = record.clients.keys().enumerate().map(|(rank, &client)| (client, colour_of(rank))).collect();
        let gpu_top = 96.0;
        let client_top = gpu_top + GPU_PITCH * gpus.len().max(1) as f64 + SECTION_GAP;
        let util_top = client_top + CLIENT_PITCH * record.clients.len().max(1) as f64 + SECTION_GAP;
        let legend_top = util_top + UTIL_HEIGHT + 62.0;
        let legend_rows = (record.clients.len() + usize::from(!record.lost.is_empty())).max(1).div_ceil(LEGEND_COLUMNS);
        let height = legend_top + LEGEND_PITCH * legend_rows as f64 + 8.0;
        let span = if record.span() > 0.0 { record.span() } else { 1.0 };
        Picture { title, gpus, record, span, colours, gpu_top, client_top, util_top, legend_top, height }
    }

    fn x(&self, t: f64) -> f64 {
        PLOT_LEFT + (t - self.record.start) / self.span * (PLOT_RIGHT - PLOT_LEFT)
    }

    fn colour(&self, client: u64) -> Colour {
        self.colours.get(&client).copied().unwrap_or(UNKNOWN)
    }

    fn job(&self, client: u64) -> &str {
        self.record.clients.get(&client).map_or("", String::as_str)
    }

    fn draw(&self, svg: &mut Svg) {
        let height = self.height;
        svg.put(format_args!(
            r#"<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH:.0}" height="{height:.0}" viewBox="0 0 {WIDTH:.0} {height:.0}" font-family="DejaVu Sans, Helvetica, Arial, sans-serif" font-size="12">"#
        ));
        self.draw_defs(svg);
        svg.put(format_args!(r##"<rect width="100%" height="100%" fill="#ffffff"/>"##));
        self.draw_heading(svg);
        self.draw_rows(svg);
        self.draw_time_axis(svg);
        self.draw_gpus(svg);
        self.draw_clients(svg);
        self.draw_utilisation(svg);
        self.draw_legend(svg);
        svg.0.push_str("</svg>");
    }

    fn draw_defs(&self, svg: &mut Svg) {
        svg.put(format_args!("<defs>"));
        for rank in 0..self.record.clients.len() {
            let fill = colour_of(rank).fill();
            svg.put(format_args!(
                r##"<pattern id="wait{rank}" patternUnits="userSpaceOnUse" width="6" height="6" patternTransform="rotate(45)"><rect width="6" height="6" fill="#ffffff"/><rect width="3" height="6" fill="{fill}"/></pattern>"##
            ));
        }
        svg.put(format_args!(
            r##"<pattern id="lost" patternUnits="userSpaceOnUse" width="8" height="8"><rect width="8" height="8" fill="#f4d4d4"/><path d="M0 0L8 8M8 0L0 8" stroke="#b22222" stroke-width="1.2"/></pattern>"##
        ));
        svg.put(format_args!("</defs>"));
    }

    fn draw_heading(&self, svg: &mut Svg) {
        let title = escape(&truncate(self.title, TITLE_CHARS));
        svg.put(format_args!(
            r##"<text x="{MARGIN}" y="32" font-size="20" font-weight="bold" fill="#1a1a1a">{title}</text>"##
        ));
        let record = self.record;
        let held = record.held_fraction(self.gpus) * 100.0;
        // Held and computing both: a GPU held through its job's CPU phases is held, not used.
        let usage = if record.busy.is_empty() {
            format!("GPUs held {held:.1}% (computing not recorded)")
        } else {
            let computing = record.computing_fraction(self.gpus) * 100.0;
            format!("GPUs held {held:.1}%, computing {computing:.1}%")
        };
        let gpus = plural(distinct_ids(self.gpus).len(), "GPU", "GPUs");
        let jobs = plural(record.clients.len(), "job", "jobs");
        let summary = if record.events == 0 {
            "empty record: no events".to_owned()
        } else {
            format!(
                "{usage} of {gpus} over {} (from {} to {}), {jobs}, {}",
                duration(record.span()),
                duration(record.start),
                duration(record.end),
                plural(record.events, "event", "events"),
            )
        };
        let summary = escape(&summary);
        svg.put(format_args!(r##"<text x="{MARGIN}" y="56" font-size="14" fill="#444444">{summary}</text>"##));
    }

    /// Section titles, row labels and row backgrounds.
    fn draw_rows(&self, svg: &mut Svg) {
        let plot_width = PLOT_RIGHT - PLOT_LEFT;
        let label_x = PLOT_LEFT - 8.0;
        let section = |svg: &mut Svg, y: f64, text: &str| {
            let y = y - 10.0;
            svg.put(format_args!(
                r##"<text x="{MARGIN}" y="{y:.1}" font-size="13" font-weight="bold" fill="#333333">{text}</text>"##
            ));
        };

        let computing = !self.record.busy.is_empty();
        section(
            svg,
            self.gpu_top,
            if computing {
                "GPUs: which job holds each GPU (solid: computing, pale: held but idle)"
            } else {
                "GPUs: which job holds each GPU"
            },
        );
        for (i, gpu) in self.gpus.iter().enumerate() {
            let y = self.gpu_top + GPU_PITCH * i as f64;
            let text_y = y + GPU_BAR / 2.0 + 4.0;
            let label = escape(&truncate(&gpu.label, LABEL_CHARS));
            let full = escape(&gpu.label);
            svg.put(format_args!(
                r##"<rect x="{PLOT_LEFT}" y="{y:.1}" width="{plot_width:.1}" height="{GPU_BAR}" fill="#f2f2f2"/>"##
            ));
            svg.put(format_args!(
                r##"<text x="{label_x:.1}" y="{text_y:.1}" text-anchor="end" fill="#1a1a1a"><title>{full}</title>{label}</text>"##
            ));
        }
        if self.gpus.is_empty() {
            let y = self.gpu_top + GPU_BAR / 2.0 + 4.0;
            svg.put(format_args!(r##"<text x="{PLOT_LEFT}" y="{y:.1}" fill="#888888">(no GPUs)</text>"##));
        }

        section(svg, self.client_top, "Clients: solid = holds a GPU, hatched = waits for one");
        for (i, (&client, job)) in self.record.clients.iter().enumerate() {
            let y = self.client_top + CLIENT_PITCH * i as f64;
            let text_y = y + CLIENT_BAR / 2.0 + 4.0;
            let label = escape(&truncate(&format!("{job} #{client}"), LABEL_CHARS));
            let full = escape(&format!("{job} (client #{client})"));
            svg.put(format_args!(
                r##"<rect x="{PLOT_LEFT}" y="{y:.1}" width="{plot_width:.1}" height="{CLIENT_BAR}" fill="#f6f6f6"/>"##
            ));
            svg.put(format_args!(
                r##"<text x="{label_x:.1}" y="{text_y:.1}" text-anchor="end" fill="#1a1a1a"><title>{full}</title>{label}</text>"##
            ));
        }
        if self.record.clients.is_empty() {
            let y = self.client_top + CLIENT_BAR / 2.0 + 4.0;
            svg.put(format_args!(r##"<text x="{PLOT_LEFT}" y="{y:.1}" fill="#888888">(no clients)</text>"##));
        }

        let gpus = distinct_ids(self.gpus).len();
        let what = if computing { "computing" } else { "held" };
        section(svg, self.util_top, &format!("Utilisation: GPUs {what} / {}", plural(gpus, "GPU", "GPUs")));
        let top = self.util_top;
        svg.put(format_args!(
            r##"<rect x="{PLOT_LEFT}" y="{top:.1}" width="{plot_width:.1}" height="{UTIL_HEIGHT}" fill="#f2f2f2"/>"##
        ));
        for (fraction, text) in [(1.0, "100%"), (0.5, "50%"), (0.0, "0%")] {
            let y = top + UTIL_HEIGHT * (1.0 - fraction);
            let text_y = y + 4.0;
            svg.put(format_args!(
                r##"<line x1="{PLOT_LEFT}" y1="{y:.1}" x2="{PLOT_RIGHT}" y2="{y:.1}" stroke="#cccccc" stroke-width="1"/>"##
            ));
            svg.put(format_args!(
                r##"<text x="{label_x:.1}" y="{text_y:.1}" text-anchor="end" fill="#444444">{text}</text>"##
            ));
        }
    }

    /// Grid lines through all rows, tick labels under the utilisation row.
    fn draw_time_axis(&self, svg: &mut Svg) {
        let (unit, ticks) = time_ticks(self.record.start, self.span);
        let top = self.gpu_top;
        let bottom = self.util_top + UTIL_HEIGHT;
        let tick_end = bottom + 5.0;
        let text_y = bottom + 19.0;
        for (at, text) in ticks {
            let x = self.x(at);
            svg.put(format_args!(
                r##"<line x1="{x:.1}" y1="{top:.1}" x2="{x:.1}" y2="{tick_end:.1}" stroke="#d0d0d0" stroke-width="1"/>"##
            ));
            svg.put(format_args!(
                r##"<text x="{x:.1}" y="{text_y:.1}" text-anchor="middle" fill="#333333">{text}</text>"##
            ));
        }
        // Under the tick labels: a tick at the plot's left edge would overlap it otherwise.
        let (label_x, label_y) = (PLOT_LEFT - 8.0, text_y + 14.0);
        svg.put(format_args!(
            r##"<text x="{label_x:.1}" y="{label_y:.1}" text-anchor="end" fill="#444444">time ({unit})</text>"##
        ));
    }

    fn draw_gpus(&self, svg: &mut Svg) {
        for (i, gpu) in self.gpus.iter().enumerate() {
            let row_top = self.gpu_top + GPU_PITCH * i as f64;
            for lost in self.record.lost.iter().filter(|l| l.gpu == gpu.id && l.to > l.from) {
                let (x, width) = (self.x(lost.from), self.x(lost.to) - self.x(lost.from));
                let tip = format!("{} lost (unhealthy) {}", gpu.label, interval(lost.from, lost.to));
                let tip = escape(&tip);
                svg.put(format_args!(
                    r#"<rect x="{x:.1}" y="{row_top:.1}" width="{width:.1}" height="{GPU_BAR}" fill="url(#lost)"><title>{tip}</title></rect>"#
                ));
            }

            // Leases that overlap on one GPU (shared under memory fences) get a lane each.
            let mut lane_ends: Vec<f64> = Vec::new();
            let mut placed: Vec<(usize, &Hold)> = Vec::new();
            for hold in self.record.holds.iter().filter(|h| h.to > h.from && h.gpus.contains(&gpu.id)) {
                let lane = match lane_ends.iter().position(|&end| end <= hold.from) {
                    Some(lane) => lane,
                    None => {
                        lane_ends.push(hold.from);
                        lane_ends.len() - 1
                    }
                };
                if let Some(end) = lane_ends.get_mut(lane) {
                    *end = hold.to;
                }
                placed.push((lane, hold));
            }
            let lane_height = GPU_BAR / lane_ends.len().max(1) as f64;
            for (lane, hold) in placed {
                let y = row_top + lane_height * lane as f64;
                self.draw_hold_bar(svg, hold, Some(gpu.id), y, lane_height, true);
            }
        }
    }

    /// Solid bars where `hold`'s GPU (`gpu`, or any of its GPUs) computed.
    fn draw_busy(&self, svg: &mut Svg, hold: &Hold, gpu: Option<u32>, y: f64, height: f64) {
        let fill = self.colour(hold.client).fill();
        for &(id, from, to) in &self.record.busy {
            let mine = gpu.is_none_or(|g| g == id) && hold.gpus.contains(&id);
            let midpoint = (from + to) / 2.0;
            if !mine || self.record.holder(id, midpoint).is_none_or(|h| h.lease != hold.lease) {
                continue;
            }
            let x = self.x(from);
            let width = (self.x(to) - x).max(1.0);
            let tip = escape(&format!("{} computing on GPU {id}: {}", self.job(hold.client), interval(from, to)));
            svg.put(format_args!(
                r#"<rect class="busy" x="{x:.1}" y="{y:.1}" width="{width:.1}" height="{height:.1}" fill="{fill}" pointer-events="visiblePainted"><title>{tip}</title></rect>"#
            ));
        }
    }

    /// A hold's bar, with its computing inside when known (on GPU `gpu`, or on any of its GPUs).
    fn draw_hold_bar(&self, svg: &mut Svg, hold: &Hold, gpu: Option<u32>, y: f64, height: f64, named: bool) {
        let Colour { ink, .. } = self.colour(hold.client);
        let (fill, mut ink) = (self.colour(hold.client).fill(), ink);
        let x = self.x(hold.from);
        // A sliver stays visible, however short the hold.
        let width = (self.x(hold.to) - x).max(1.0);
        let job = self.job(hold.client);
        let tip = format!(
            "{job} (client #{}), lease #{} on GPU {:?}: {}",
            hold.client,
            hold.lease,
            hold.gpus,
            interval(hold.from, hold.to)
        );
        let tip = escape(&tip);
        let opacity = if self.record.busy.is_empty() { 1.0 } else { 0.3 };
        svg.put(format_args!(
            r##"<rect x="{x:.1}" y="{y:.1}" width="{width:.1}" height="{height:.1}" fill="{fill}" fill-opacity="{opacity}" stroke="#ffffff" stroke-width="1"><title>{tip}</title></rect>"##
        ));
        if !self.record.busy.is_empty() {
            self.draw_busy(svg, hold, gpu, y, height);
            // The label goes over pale and solid stretches alike: dark on a white halo.
            ink = "#1a1a1a";
        }
        // The job's name where it fits, else its client number, else only the colour.
        let fits = |text: &str| !text.is_empty() && text.chars().count() as f64 * CHAR_WIDTH_11PX + 6.0 <= width;
        let short = format!("#{}", hold.client);
        let label = if fits(job) {
            Some(job)
        } else if fits(&short) {
            Some(short.as_str())
        } else {
            None
        };
        let halo = if self.record.busy.is_empty() {
            ""
        } else {
            r##" stroke="#ffffff" stroke-width="3" paint-order="stroke""##
        };
        if let (true, true, Some(label)) = (named, height >= 12.0, label) {
            let (text_x, text_y) = (x + width / 2.0, y + height / 2.0 + 4.0);
            let job = escape(label);
            svg.put(format_args!(
                r##"<text x="{text_x:.1}" y="{text_y:.1}" text-anchor="middle" font-size="11" fill="{ink}"{halo} pointer-events="none">{job}</text>"##
            ));
        }
    }

    fn draw_clients(&self, svg: &mut Svg) {
        for (rank, &client) in self.record.clients.keys().enumerate() {
            let y = self.client_top + CLIENT_PITCH * rank as f64;
            // One pattern per client, in its colour.
            let pattern = rank;
            let stroke = self.colour(client).fill();
            for wait in self.record.waits.iter().filter(|w| w.client == client && w.to > w.from) {
                let x = self.x(wait.from);
                let width = (self.x(wait.to) - x).max(1.0);
                let tip = format!(
                    "{} (client #{client}) waits, request #{}: {}",
                    self.job(client),
                    wait.request,
                    interval(wait.from, wait.to)
                );
                let tip = escape(&tip);
                svg.put(format_args!(
                    r#"<rect x="{x:.1}" y="{y:.1}" width="{width:.1}" height="{CLIENT_BAR}" fill="url(#wait{pattern})" stroke="{stroke}" stroke-width="0.8"><title>{tip}</title></rect>"#
                ));
            }
            for hold in self.record.holds.iter().filter(|h| h.client == client && h.to > h.from) {
                self.draw_hold_bar(svg, hold, None, y, CLIENT_BAR, false);
            }
        }
    }

    fn draw_utilisation(&self, svg: &mut Svg) {
        let ids = distinct_ids(self.gpus);
        let bottom = self.util_top + UTIL_HEIGHT;
        let count = ids.len().max(1) as f64;
        let y = |level: i64| bottom - UTIL_HEIGHT * (level as f64 / count).clamp(0.0, 1.0);
        let mut path = format!("M{:.1} {bottom:.1}", self.x(self.record.start));
        let mut level = 0;
        for (at, next) in self.record.steps(&ids) {
            let x = self.x(at);
            let _ = write!(path, " L{x:.1} {:.1} L{x:.1} {:.1}", y(level), y(next));
            level = next;
        }
        let end = self.x(self.record.end);
        let _ = write!(path, " L{end:.1} {:.1} L{end:.1} {bottom:.1} Z", y(level));
        svg.put(format_args!(
            r##"<path d="{path}" fill="#4e79a7" fill-opacity="0.35" stroke="#2f5d8a" stroke-width="1.5" stroke-linejoin="miter"/>"##
        ));
    }

    fn draw_legend(&self, svg: &mut Svg) {
        let top = self.legend_top;
        let heading_y = top - 10.0;
        svg.put(format_args!(
            r##"<text x="{MARGIN}" y="{heading_y:.1}" font-size="13" font-weight="bold" fill="#333333">Jobs</text>"##
        ));
        let column_width = (WIDTH - 2.0 * MARGIN) / LEGEND_COLUMNS as f64;
        let place = |i: usize| {
            let (row, column) = (i / LEGEND_COLUMNS, i % LEGEND_COLUMNS);
            (MARGIN + column_width * column as f64, top + LEGEND_PITCH * row as f64)
        };
        for (i, (&client, job)) in self.record.clients.iter().enumerate() {
            let (x, y) = place(i);
            let fill = self.colour(client).fill();
            let (text_x, text_y) = (x + 20.0, y + 11.0);
            let text = escape(&truncate(&format!("{job} (client #{client})"), LEGEND_CHARS));
            svg.put(format_args!(
                r##"<g class="legend-job"><rect x="{x:.1}" y="{y:.1}" width="14" height="14" fill="{fill}"/><text x="{text_x:.1}" y="{text_y:.1}" fill="#1a1a1a">{text}</text></g>"##
            ));
        }
        let mut next = self.record.clients.len();
        if !self.record.lost.is_empty() {
            let (x, y) = place(next);
            let (text_x, text_y) = (x + 20.0, y + 11.0);
            svg.put(format_args!(
                r##"<g class="legend-lost"><rect x="{x:.1}" y="{y:.1}" width="14" height="14" fill="url(#lost)"/><text x="{text_x:.1}" y="{text_y:.1}" fill="#1a1a1a">GPU lost (unhealthy)</text></g>"##
            ));
            next += 1;
        }
        if next == 0 {
            svg.put(format_args!(
                r##"<text x="{MARGIN}" y="{:.1}" fill="#888888">(no jobs in the record)</text>"##,
                top + 11.0
            ));
        }
    }
}

/// Tick positions (seconds) and labels for a time axis over `start..start + span`, with the
/// unit the labels are in: seconds up to five minutes, minutes up to three hours, then hours.
fn time_ticks(start: f64, span: f64) -> (&'static str, Vec<(f64, String)>) {
    let (unit, name) = if span <= 300.0 {
        (1.0, "s")
    } else if span <= 3.0 * 3600.0 {
        (60.0, "min")
    } else {
        (3600.0, "h")
    };
    let (from, to) = (start / unit, (start + span) / unit);
    let width = to - from;
    if !width.is_finite() || width <= 0.0 {
        return (name, Vec::new());
    }
    // Steps of 1, 2 or 5 times a power of ten, at most ten of them.
    let exponent = (width / 8.0).log10().floor();
    let magnitude = 10f64.powf(exponent);
    let (mantissa, step) = [1.0, 2.0, 5.0, 10.0]
        .into_iter()
        .map(|m| (m, m * magnitude))
        .find(|&(_, step)| width / step <= 10.0)
        .unwrap_or((10.0, 10.0 * magnitude));
    let exponent = exponent as i64 + i64::from(mantissa >= 10.0);
    let decimals = usize::try_from(-exponent).unwrap_or(0);
    let first = (from / step - 1e-9).ceil();
    let last = (to / step + 1e-9).floor();
    // A float count, bounded before the cast: precision trouble gives few ticks, never many.
    let count = (last - first + 1.0).clamp(0.0, 50.0) as usize;
    let ticks = (0..count)
        .map(|i| {
            let value = (first + i as f64) * step;
            (value * unit, format!("{value:.decimals$}"))
        })
        .collect();
    (name, ticks)
}

/// A time or duration for people, one decimal, in the units [`time_ticks`] picks.
fn duration(secs: f64) -> String {
    acb_core::units::Human(Duration::try_from_secs_f64(secs.max(0.0)).unwrap_or(Duration::MAX)).to_string()
}

fn interval(from: f64, to: f64) -> String {
    format!("{from:.3} s to {to:.3} s ({:.3} s)", to - from)
}

fn plural(n: usize, one: &str, many: &str) -> String {
    format!("{n} {}", if n == 1 { one } else { many })
}

/// At most `max` characters, an ellipsis marking a cut.
fn truncate(text: &str, max: usize) -> String {
    if text.chars().count() <= max {
        return text.to_owned();
    }
    let mut cut: String = text.chars().take(max.saturating_sub(1)).collect();
    cut.push('…');
    cut
}

/// Text safe inside an XML element or attribute: markup characters become entities, and
/// characters XML 1.0 forbids (controls, U+FFFE, U+FFFF) become U+FFFD; labels are one line.
pub(super) fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            '\t' | '\n' | '\r' => out.push(' '),
            c if c < ' ' || c == '\u{7f}' || c == '\u{fffe}' || c == '\u{ffff}' => out.push('\u{fffd}'),
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ticks_are_round_and_in_a_readable_unit() {
        let (unit, ticks) = time_ticks(0.0, 10.0);
        assert_eq!(unit, "s");
        let labels: Vec<&str> = ticks.iter().map(|(_, l)| l.as_str()).collect();
        assert_eq!(labels, ["0", "1", "2", "3", "4", "5", "6", "7", "8", "9", "10"]);
        let (unit, ticks) = time_ticks(0.0, 1800.0);
        assert_eq!(unit, "min");
        assert_eq!(ticks.first().map(|(_, l)| l.as_str()), Some("0"));
        assert!(ticks.len() <= 11);
        let (_, ticks) = time_ticks(0.0, 0.25);
        assert_eq!(ticks.get(1).map(|(_, l)| l.as_str()), Some("0.05"));
        assert!(time_ticks(1e18, 1e-9).1.len() <= 50);
    }
}
