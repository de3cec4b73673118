use super::svg::{colour_of, escape};
use super::*;
use acb_core::record::{EventKind, YieldReason};

/// Builds a record as a story: `at(seconds, kind)` in order, numbered as the assigner does.
struct Story(Vec<Event>);

impl Story {
    fn new() -> Self {
        Story(Vec::new())
    }

    fn at(mut self, secs: f64, kind: EventKind) -> Self {
        let seq = self.0.len() as u64 + 1;
        self.0.push(Event { seq, at: Duration::from_secs_f64(secs), kind });
        self
    }
}

fn connected(client: u64, job: &str) -> EventKind {
    EventKind::Connected { client, job: job.to_owned() }
}

fn requested(client: u64, job: &str, request: u64) -> EventKind {
    EventKind::Requested {
        client,
        job: job.to_owned(),
        request,
        gpus: 1,
        memory_per_gpu: None,
        priority: 0,
        group: None,
    }
}

fn granted(client: u64, job: &str, request: u64, lease: u64, gpus: &[u32]) -> EventKind {
    EventKind::Granted {
        client,
        job: job.to_owned(),
        request,
        lease,
        gpus: gpus.to_vec(),
        memory_per_gpu: 80 << 30,
        waited: Duration::ZERO,
    }
}

fn released(client: u64, lease: u64) -> EventKind {
    EventKind::Released { client, lease, by_disconnect: false }
}

fn one_gpu() -> Vec<GpuRow> {
    vec![GpuRow { id: 0, label: "gpu0 (simulated, 80 GiB)".to_owned() }]
}

/// Two jobs, one GPU: A holds it 0..4 s; B asks at 1 s, waits, holds it 6..8 s; the record
/// ends at 10 s. Held 6 of 10 seconds.
fn two_jobs_one_gpu() -> Vec<Event> {
    Story::new()
        .at(0.0, connected(1, "train-a"))
        .at(0.0, requested(1, "train-a", 1))
        .at(0.0, granted(1, "train-a", 1, 1, &[0]))
        .at(1.0, connected(2, "infer-b"))
        .at(1.0, requested(2, "infer-b", 2))
        .at(3.0, EventKind::YieldAsked { client: 1, lease: 1, reason: YieldReason::Contended })
        .at(4.0, released(1, 1))
        .at(6.0, granted(2, "infer-b", 2, 2, &[0]))
        .at(8.0, released(2, 2))
        .0
}

/// A minimal well-formedness check: tags nest and close, and no text holds a raw `<`.
fn assert_well_formed(svg: &str) {
    let mut open: Vec<String> = Vec::new();
    let mut rest = svg;
    while let Some(start) = rest.find('<') {
        let len = rest[start..].find('>');
        assert!(len.is_some(), "unclosed tag in {svg}");
        let len = len.unwrap_or_default();
        let tag = &rest[start + 1..start + len];
        assert!(!tag.contains('<'), "raw '<' inside markup: {tag}");
        if let Some(name) = tag.strip_prefix('/') {
            assert_eq!(open.pop().as_deref(), Some(name), "mismatched close tag");
        } else if !tag.ends_with('/') {
            open.push(tag.split_whitespace().next().unwrap_or_default().to_owned());
        }
        rest = &rest[start + len + 1..];
    }
    assert!(open.is_empty(), "unclosed elements: {open:?}");
}

#[test]
fn two_jobs_on_one_gpu_held_six_of_ten_seconds() {
    let events = two_jobs_one_gpu();
    let u = utilisation(&one_gpu(), &events, Duration::from_secs(10));
    assert!((u - 0.6).abs() < 1e-9, "utilisation {u}");

    let svg = render_svg("two jobs (simulated)", &one_gpu(), &events, Some(Duration::from_secs(10)));
    assert!(svg.contains("GPUs held 60.0% (computing not recorded) of 1 GPU over 10.0 s"), "{svg}");
    assert!(svg.contains("two jobs (simulated)"));
    // B's wait, 1..6 s, is drawn hatched in its row.
    assert!(svg.contains("infer-b (client #2) waits, request #2: 1.000 s to 6.000 s"));
    assert_well_formed(&svg);
}

#[test]
fn computing_inside_holds_is_the_utilisation_when_known() {
    // A computes 1..2 s of its 0..4 s hold, B 6..7 s of its 6..8 s; a busy report outside
    // every hold (9..9.5 s) counts towards utilisation but is drawn for no lease.
    let busy =
        |from: f64, to: f64| Busy { gpu: 0, from: Duration::from_secs_f64(from), to: Duration::from_secs_f64(to) };
    let computing = [busy(1.0, 2.0), busy(6.0, 7.0), busy(9.0, 9.5)];
    let span = (Duration::ZERO, Duration::from_secs(10));
    let svg = render_svg_with_busy("two jobs (simulated)", &one_gpu(), &two_jobs_one_gpu(), span, &computing);
    assert!(svg.contains("GPUs held 60.0%, computing 25.0% of 1 GPU over 10.0 s"), "{svg}");
    assert!(svg.contains("solid: computing, pale: held but idle"));
    assert!(svg.contains("Utilisation: GPUs computing / 1 GPU"));
    // Each computing stretch inside a hold is drawn in the GPU's row and in its client's.
    assert_eq!(svg.matches(r#"class="busy""#).count(), 4, "{svg}");
    assert!(svg.contains("train-a computing on GPU 0: 1.000 s to 2.000 s"));
    assert!(svg.contains("infer-b computing on GPU 0: 6.000 s to 7.000 s"));
    assert!(!svg.contains("9.500 s"));
    assert!(svg.contains(r#"fill-opacity="0.3""#));
    assert_well_formed(&svg);
}

#[test]
fn a_span_given_starts_the_picture_before_the_first_event() {
    let events = Story::new().at(5.0, connected(1, "late")).at(5.0, granted(1, "late", 1, 1, &[0])).0;
    let svg =
        render_svg_with_busy("late (simulated)", &one_gpu(), &events, (Duration::ZERO, Duration::from_secs(10)), &[]);
    // Held 5 of 10 seconds, not all of the 5 seconds after the first event.
    assert!(
        svg.contains("GPUs held 50.0% (computing not recorded) of 1 GPU over 10.0 s (from 0 ms to 10.0 s)"),
        "{svg}"
    );
    assert!(!svg.contains("class=\"busy\""));
    assert_well_formed(&svg);
}

#[test]
fn a_lease_never_released_holds_to_the_end() {
    let events = Story::new().at(0.0, granted(1, "a", 1, 1, &[0])).at(5.0, connected(2, "b")).0;
    assert!((utilisation(&one_gpu(), &events, Duration::from_secs(5)) - 1.0).abs() < 1e-9);
    // Without an end, the record ends at its last event.
    let svg = render_svg("t", &one_gpu(), &events, None);
    assert!(svg.contains("GPUs held 100.0%"));
}

#[test]
fn a_gpu_shared_by_two_leases_counts_once() {
    let two = vec![GpuRow { id: 0, label: "gpu0".to_owned() }, GpuRow { id: 1, label: "gpu1".to_owned() }];
    let events = Story::new()
        .at(0.0, granted(1, "a", 1, 1, &[0]))
        .at(2.0, granted(2, "b", 2, 2, &[0]))
        .at(6.0, released(1, 1))
        .at(8.0, released(2, 2))
        .0;
    // GPU 0 held 0..8 s, GPU 1 never: 8 of 20 GPU-seconds.
    assert!((utilisation(&two, &events, Duration::from_secs(10)) - 0.4).abs() < 1e-9);
    assert_well_formed(&render_svg("shared", &two, &events, Some(Duration::from_secs(10))));
}

#[test]
fn job_names_are_escaped() {
    let evil = r#"<script>&"it's"</script>"#;
    let events = Story::new().at(0.0, connected(1, evil)).at(1.0, granted(1, evil, 1, 1, &[0])).0;
    let gpus = vec![GpuRow { id: 0, label: "gpu <0> & \"1\"".to_owned() }];
    let svg = render_svg("a <b> & c", &gpus, &events, Some(Duration::from_secs(60)));
    assert!(!svg.contains("<script>"));
    assert!(svg.contains("&lt;script&gt;&amp;&quot;it&apos;s&quot;&lt;/script&gt;"));
    assert!(svg.contains("a &lt;b&gt; &amp; c"));
    assert!(svg.contains("gpu &lt;0&gt; &amp; &quot;1&quot;"));
    assert_well_formed(&svg);
    assert_eq!(escape("bell\u{7}\ttab\u{fffe}"), "bell\u{fffd} tab\u{fffd}");
}

#[test]
fn empty_input_is_a_valid_svg() {
    for gpus in [Vec::new(), one_gpu()] {
        for end in [None, Some(Duration::ZERO), Some(Duration::from_secs(3))] {
            let svg = render_svg("", &gpus, &[], end);
            assert!(svg.starts_with("<svg"), "{svg}");
            assert!(svg.ends_with("</svg>"), "{svg}");
            assert_well_formed(&svg);
            assert_eq!(utilisation(&gpus, &[], end.unwrap_or_default()), 0.0);
        }
    }
}

#[test]
fn one_legend_entry_per_job() {
    let svg = render_svg("t", &one_gpu(), &two_jobs_one_gpu(), None);
    assert_eq!(svg.matches(r#"class="legend-job""#).count(), 2);
    assert!(svg.contains("train-a (client #1)"));
    assert!(svg.contains("infer-b (client #2)"));
    // Each job has its own colour.
    assert!(svg.contains(&colour_of(0).fill()) && svg.contains(&colour_of(1).fill()));
}

#[test]
fn odd_records_draw_without_panicking() {
    let events = Story::new()
        .at(5.0, released(9, 99)) // released without a grant
        .at(4.0, granted(1, "", 1, 1, &[7, 0, 0])) // out of order, unknown and repeated ids
        .at(4.0, granted(1, "", 1, 1, &[0])) // the same lease granted twice
        .at(6.0, EventKind::Cancelled { client: 3, request: 3 })
        .at(6.0, requested(3, "c", 3))
        .at(6.5, EventKind::ClientGone { client: 3 })
        .at(7.0, EventKind::GpuHealth { gpu: 0, healthy: false })
        .at(7.5, EventKind::Rejected { client: 4, request: 1, reason: "no".to_owned() })
        .at(1e6, requested(5, "late", 1))
        .0;
    let gpus = one_gpu();
    for end in [None, Some(Duration::ZERO), Some(Duration::from_secs(2)), Some(Duration::MAX)] {
        let svg = render_svg("odd", &gpus, &events, end);
        assert!(svg.starts_with("<svg") && svg.ends_with("</svg>"));
        assert_well_formed(&svg);
        let u = utilisation(&gpus, &events, end.unwrap_or_default());
        assert!((0.0..=1.0).contains(&u), "utilisation {u}");
    }
    // Many clients wrap the palette.
    let mut story = Story::new();
    for client in 0..40 {
        story = story.at(client as f64, granted(client, "j", client, client, &[0]));
    }
    assert_well_formed(&render_svg("many", &gpus, &story.0, None));
}

#[test]
fn twenty_jobs_side_by_side_get_twenty_colours_far_apart() {
    // The palette used to repeat after twelve. Distance in RGB (0..=441): 40 is a clearly
    // visible difference; the golden-angle hues with three lightnesses give at least that.
    let rgb = |rank: usize| {
        let fill = colour_of(rank).fill();
        let channel = |i: usize| f64::from(u8::from_str_radix(&fill[i..i + 2], 16).unwrap_or_default());
        (channel(1), channel(3), channel(5))
    };
    let colours: Vec<(f64, f64, f64)> = (0..20).map(rgb).collect();
    for (i, a) in colours.iter().enumerate() {
        for (j, b) in colours.iter().enumerate().skip(i + 1) {
            let d = ((a.0 - b.0).powi(2) + (a.1 - b.1).powi(2) + (a.2 - b.2).powi(2)).sqrt();
            assert!(d >= 40.0, "jobs {i} and {j}: {:?} and {:?} are {d:.1} apart", colour_of(i), colour_of(j));
        }
    }
}
